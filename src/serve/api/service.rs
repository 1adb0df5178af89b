//! The endpoints around the records: health for probes, metrics, the OpenAPI document,
//! the per-route request counter and the answer to an unknown path (audited, then 404).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::super::request::{ApiError, Caller, event, record};
use super::access::Shared;
use crate::audit::{self, Outcome};

/// The OpenAPI document of this API, kept in the repository.
const OPENAPI: &str = include_str!("../../../openapi/ckvault-v1.json");

/// Counts each routed request by route template and status for `/metrics`.
pub(super) async fn count_requests(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    state.metrics.request(&route, resp.status().as_u16());
    resp
}

/// Any other path: authenticated (401 otherwise) and audited, then 404.
pub(super) async fn unknown(
    State(state): State<Shared>,
    caller: Caller,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let shown: String = uri.path().chars().take(256).collect();
    let ev = event(&caller, audit::Action::Request, Outcome::Denied)
        .with_detail(format!("no such endpoint {shown:?}"));
    record(&state, ev).await?;
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no-such-endpoint",
        format!("no endpoint {shown:?}; see /v1/openapi.json"),
    ))
}

/// Health for probes (unauthenticated, not audited: it must answer when the log cannot be
/// written). Says which part is down, never why (the server's log says why), and the audit
/// head a verifier can pin (`ckvault audit verify --expect-head`).
pub(super) async fn healthz(State(state): State<Shared>) -> Response {
    let store = state.store.health().await;
    let st = state.clone();
    let audit: Result<(), Box<dyn std::error::Error + Send + Sync>> =
        match tokio::task::spawn_blocking(move || st.audit.health()).await {
            Ok(health) => health.map_err(Into::into),
            Err(join) => Err(join.into()),
        };
    state
        .metrics
        .note_health("store", store.as_ref().err().map(|e| e as _));
    state
        .metrics
        .note_health("audit", audit.as_ref().err().map(|e| &**e as _));
    let ok = store.is_ok() && audit.is_ok();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    // With a bucket: whether this replica's uploads (its audit segments, trigger seals) go
    // through. Failing uploads do not stop reads (200), but the status is not "ok".
    let upload_status = state.uploader.as_ref().map(|u| u.status());
    let uploads_stuck = upload_status.as_ref().map(|s| s.stuck.len());
    let uploads = upload_status.map(|s| {
        if s.state.is_empty() {
            "starting".to_owned()
        } else {
            s.state
        }
    });
    let uploads_ok = uploads
        .as_deref()
        .is_none_or(|s| s == "ok" || s == "starting");
    let head = state.audit.head().map(|h| format!("{}:{}", h.size, h.hash));
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "status": if ok && uploads_ok {"ok"} else {"degraded"},
            "store": word(store.is_ok()),
            "audit": word(audit.is_ok()),
            "uploads": uploads,
            "uploads_stuck": uploads_stuck,
            "audit_head": head,
        })),
    )
        .into_response()
}

pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    let records = state.store.count().await.unwrap_or(0);
    let mut text = state
        .metrics
        .render(records, state.audit.head().map(|h| (h.size, h.hash)));
    if let Some(r) = &state.receivers {
        r.incidents.metrics().render(&mut text);
        if let Some(f) = &r.fleet {
            f.metrics.render(&mut text);
        }
    }
    if matches!(state.store, crate::store::Store::Bucket(_)) {
        crate::store::s3::client::REQUESTS.render(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
