//! The kubelet-compatible trigger API: `POST /checkpoint/{namespace}/{pod}/{container}
//! ?timeout=SECONDS`, with the kubelet's status codes (404 for an unknown pod or container
//! or an unparsable timeout, 401/403, 500 for any runtime failure), authorized by the
//! `checkpoint` action on the namespace and audited. Names are resolved through the runtime
//! ([`crate::capture::resolve`]: running containers only); the archive
//! goes to private staging and is sealed; the answer names the sealed records.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::request::{ApiError, Caller, event, record};
use crate::audit::{self, Outcome};
use crate::capture::checkpoint::{CheckpointError, CheckpointRequest};
use crate::capture::cri::redact_paths;
use crate::capture::resolve::{self, ResolveError, Wanted};
use crate::manifest::SourceKind;
use crate::policy::Action;

/// The kubelet's default runtime request timeout; the deadline is the larger of it and the
/// requested timeout.
const RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Parses the `timeout` query parameter the way the kubelet does: the last one wins; one
/// that is not a non-negative integer is an error.
pub(crate) fn parse_timeout(query: Option<&str>) -> Result<Option<u64>, String> {
    let mut last = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "timeout" {
            last = Some(v);
        }
    }
    let max = crate::capture::checkpoint::MAX_DEADLINE.as_secs();
    match last {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(Some(n)),
            Ok(_) => Err(format!("timeout must be at most {max} seconds")),
            Err(_) => Err(format!(
                "cannot parse timeout {:?}",
                v.chars().take(32).collect::<String>()
            )),
        },
    }
}

/// Records `ev` as an error, then answers with `err`: every failed trigger is audited.
async fn fail(
    state: &Arc<AppState>,
    mut ev: crate::audit::EventInput,
    err: ApiError,
) -> Result<Response, ApiError> {
    ev.outcome = Outcome::Error;
    record(state, ev).await?;
    Err(err)
}

/// `POST /checkpoint/{namespace}/{pod}/{container}`.
pub(crate) async fn checkpoint(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut ev = event(&caller, audit::Action::Checkpoint, Outcome::Denied)
        .with_namespace(Some(namespace.clone()))
        .with_detail(format!("{pod}/{container}"));
    if !state
        .policy()
        .allows(&caller.principal, Action::Checkpoint, Some(&namespace))
    {
        record(&state, ev).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not checkpoint in namespace {namespace}",
                caller.principal.actor()
            ),
        ));
    }
    let not_found = |msg: String| ApiError::new(StatusCode::NOT_FOUND, "not-found", msg);
    let timeout = match parse_timeout(query.as_deref()) {
        Ok(t) => t,
        Err(msg) => return fail(&state, ev, not_found(msg)).await,
    };
    let Some(checkpointer) = state.checkpointer.clone() else {
        let err = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not-implemented",
            format!(
                "checkpointing of {namespace}/{pod}/{container} failed (no runtime configured: set [cri] upstream)"
            ),
        );
        return fail(&state, ev, err).await;
    };
    // The answer says what failed without the paths a runtime's message carries (its
    // staging location, its own directories); the audit event keeps the message whole.
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "checkpoint-failed",
            format!(
                "checkpointing of {namespace}/{pod}/{container} failed ({})",
                redact_paths(&e.to_string())
            ),
        )
    };
    let wanted = Wanted::Names {
        namespace: &namespace,
        pod: &pod,
        container: &container,
    };
    let target = match resolve::running(checkpointer.runtime(), wanted).await {
        Ok(t) => t,
        Err(ResolveError::Runtime(e)) => return fail(&state, ev, failed(&e)).await,
        Err(e) => return fail(&state, ev, not_found(e.to_string())).await,
    };
    let deadline = RUNTIME_REQUEST_TIMEOUT.max(Duration::from_secs(timeout.unwrap_or(0)));
    match checkpointer
        .checkpoint(CheckpointRequest {
            container_id: target.id.clone(),
            deadline,
            source: SourceKind::Trigger,
            location: None,
            actor: caller.principal.actor(),
            // A person asked directly: no trigger, the record stays v1 byte for byte.
            trigger: None,
        })
        .await
    {
        Ok(manifest) => {
            super::request::span_record(&manifest.id);
            let ok = event(&caller, audit::Action::Checkpoint, Outcome::Ok)
                .with_namespace(Some(namespace.clone()))
                .with_record(manifest.id.to_string())
                .with_detail(format!("{pod}/{container}"));
            record(&state, ok).await?;
            Ok(Json(serde_json::json!({
                "items": [format!("/v1/checkpoints/{}", manifest.id)]
            }))
            .into_response())
        }
        Err(e) => {
            ev.detail = Some(format!("{pod}/{container}: {e}"));
            let err = match e {
                CheckpointError::Runtime(s) => failed(&format_args!(
                    "rpc error: code = {} desc = {}",
                    s.code as i32, s.message
                )),
                other => failed(&other),
            };
            fail(&state, ev, err).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::capture::cri::redact_paths;

    #[test]
    fn error_bodies_carry_no_paths() {
        let m = "rpc error: code = Unknown desc = open /var/lib/ckvault/staging/01MABC.tar: permission denied; see \"/run/containerd/x\" (path=/a/b)";
        let r = redact_paths(m);
        assert!(
            !r.contains("/var") && !r.contains("/run") && !r.contains("/a/b"),
            "{r}"
        );
        assert!(r.contains("permission denied"), "{r}");
        assert_eq!(redact_paths("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert!(redact_paths(&"x".repeat(5000)).len() < 600);
    }

    #[test]
    fn timeouts_parse_like_the_kubelet() {
        assert_eq!(parse_timeout(None), Ok(None));
        assert_eq!(parse_timeout(Some("timeout=30")), Ok(Some(30)));
        assert_eq!(parse_timeout(Some("timeout=30&timeout=5")), Ok(Some(5)));
        assert!(parse_timeout(Some("timeout=abc")).is_err());
        assert!(parse_timeout(Some("timeout=5&timeout=-1")).is_err());
        assert_eq!(parse_timeout(Some("other=1")), Ok(None));
        assert_eq!(parse_timeout(Some("timeout=3600")), Ok(Some(3600)));
        assert!(parse_timeout(Some("timeout=360000000000")).is_err());
        assert!(parse_timeout(Some("timeout=3601")).is_err());
    }
}
