//! The alert receivers (`[alerts] enabled = true`): `POST /v1/alerts/alertmanager`
//! (Alertmanager's webhook, version 4), `POST /v1/alerts/falco` (Falco's `http_output`, one
//! event per request), `POST /v1/alerts/webhook` (ours, with a bearer token or client
//! certificate like every call, or an HMAC signature of a configured sender), and
//! `GET /v1/captures/{id}`. Thin: bodies are capped and parsed by
//! [`crate::capture::alert`], each alert goes to the use case
//! ([`crate::capture::incident::Incidents`]), which decides, audits and captures in the
//! background; the answer (202) lists each alert's capture ID and state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::request::{ApiError, Caller, event, record};
use crate::audit::{self, Actor, Outcome};
use crate::capture::alert::{self, AlertParseError, alertmanager, falco, webhook};
use crate::capture::fleet::FleetLink;
use crate::capture::incident::{Incidents, Requester, Taken};
use crate::policy::access::Principal;

/// What the receivers need besides the use case.
pub(crate) struct Receivers {
    /// The use case.
    pub(crate) incidents: Incidents,
    /// Its part in capture across a fleet (`[fleet]`), if it takes one: the use case's
    /// forwarder, and the link `GET /v1/captures/ID`, the node agent and `/metrics` use.
    pub(crate) fleet: Option<Arc<FleetLink>>,
    /// `[alerts] enabled`: the receivers answer (without it, only `[fleet]` built the use
    /// case, for the requests a node agent claims, and `GET /v1/captures/ID`).
    pub(crate) accept_alerts: bool,
    /// Label names that name the container in an Alertmanager alert.
    pub(crate) labels: alertmanager::TargetLabels,
    /// `[alerts] max_alerts`.
    pub(crate) max_alerts: usize,
    /// `[alerts] max_body`.
    pub(crate) max_body: usize,
    /// HMAC senders by name: their secret and the principal they act as.
    pub(crate) senders: HashMap<String, (Vec<u8>, Principal)>,
    /// `[alerts] signature_max_age`.
    pub(crate) max_age: Duration,
    /// Signatures seen within `max_age`.
    pub(crate) replay: webhook::ReplayGuard,
}

impl Receivers {
    /// The receivers `config` describes (`[alerts]`, `[capture]`, `[[trigger]]`,
    /// `[[notify]]`), capturing through `checkpointer` (none: every alert is answered "no
    /// runtime"), checking free space in `disks` (staging, the store).
    pub(crate) fn build(
        config: &crate::config::Config,
        checkpointer: Option<crate::capture::checkpoint::Checkpointer>,
        custody: crate::vault::Custody,
        audit: Arc<crate::audit::AuditLog>,
        disks: Vec<std::path::PathBuf>,
        fleet: Option<FleetLink>,
    ) -> Result<Self, ReceiversError> {
        let mut senders = HashMap::new();
        for s in &config.alerts.sender {
            let secret =
                webhook::read_secret(&s.secret_file).map_err(|source| ReceiversError::Secret {
                    sender: s.name.clone(),
                    source,
                })?;
            let principal = Principal {
                user: s.user.clone(),
                groups: s.groups.clone(),
                via: "hmac",
            };
            senders.insert(s.name.clone(), (secret, principal));
        }
        let a = &config.alerts;
        let mut incidents = Incidents::from_config(config, checkpointer, custody, audit, disks)?;
        let fleet = fleet.map(Arc::new);
        if let Some(link) = &fleet {
            incidents = incidents.with_forwarder(link.clone());
        }
        Ok(Self {
            incidents,
            fleet,
            accept_alerts: a.enabled,
            labels: alertmanager::TargetLabels::from_config(a),
            max_alerts: a.max_alerts,
            max_body: usize::try_from(a.max_body.bytes()).unwrap_or(usize::MAX),
            senders,
            max_age: a.signature_max_age,
            replay: webhook::ReplayGuard::new(
                a.signature_max_age,
                webhook::DEFAULT_REPLAY_CAPACITY,
            ),
        })
    }
}

/// Why the receivers could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiversError {
    /// A `[[notify]]` webhook.
    #[error(transparent)]
    Notify(#[from] crate::capture::notify::NotifyError),
    /// A sender's secret file.
    #[error("[[alerts.sender]] {sender}: {source}")]
    Secret {
        /// The sender.
        sender: String,
        /// Why.
        #[source]
        source: webhook::SecretError,
    },
}

/// The sender header of a signed webhook request.
pub(crate) const SENDER_HEADER: &str = "X-Ckvault-Sender";

fn receivers(state: &AppState) -> Result<&Receivers, ApiError> {
    state
        .receivers
        .as_ref()
        .filter(|r| r.accept_alerts)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "the alert receivers are not enabled ([alerts] enabled = true)",
            )
        })
}

/// Audits a body that did not parse and answers 400 with why.
async fn bad_body(
    state: &Arc<AppState>,
    actor: &Actor,
    what: &str,
    e: AlertParseError,
) -> Result<Response, ApiError> {
    let ev = audit::EventInput::new(actor, audit::Action::Alert, Outcome::Denied)
        .with_detail(format!("{what}: {e}"));
    record(state, ev).await?;
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad-alert",
        format!("{what}: {e}"),
    ))
}

/// Hands each alert to the use case and answers 202 with what became of each.
async fn take(
    state: &Arc<AppState>,
    principal: &Principal,
    actor: &Actor,
    alerts: Vec<alert::Alert>,
    group_key: Option<String>,
) -> Result<Response, ApiError> {
    let r = receivers(state)?;
    let policy = state.policy();
    let mut taken: Vec<Taken> = Vec::with_capacity(alerts.len());
    for a in alerts {
        let who = Requester { principal, actor };
        let t = r
            .incidents
            .receive(who, &policy, a)
            .await
            .map_err(|e| super::request::audit_unavailable(state, &e))?;
        taken.push(t);
    }
    super::request::mark_audited();
    let mut body = serde_json::json!({ "captures": taken });
    if let Some(k) = group_key {
        body["group_key"] = serde_json::Value::String(k);
    }
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /v1/alerts/alertmanager`.
pub(crate) async fn alertmanager(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = receivers(&state)?;
    let actor = caller.actor();
    match alertmanager::parse(&body, &r.labels, r.max_alerts) {
        Ok(batch) => {
            take(
                &state,
                &caller.principal,
                &actor,
                batch.alerts,
                Some(batch.group_key),
            )
            .await
        }
        Err(e) => bad_body(&state, &actor, "alertmanager payload", e).await,
    }
}

/// `POST /v1/alerts/falco`.
pub(crate) async fn falco(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = caller.actor();
    match falco::parse(&body) {
        Ok(a) => take(&state, &caller.principal, &actor, vec![a], None).await,
        Err(e) => bad_body(&state, &actor, "falco event", e).await,
    }
}

/// `POST /v1/alerts/webhook`: a bearer token or client certificate, or an HMAC signature
/// (`X-Ckvault-Sender`, `X-Ckvault-Timestamp`, `X-Ckvault-Signature`).
pub(crate) async fn webhook(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let r = receivers(&state)?;
    let (mut parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let signed = header(webhook::SIGNATURE_HEADER);
    let body = match axum::body::to_bytes(body, r.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!(
                    "the body is larger than {} bytes ([alerts] max_body)",
                    r.max_body
                ),
            ));
        }
    };
    let (principal, actor, _caller) = match signed {
        None => {
            let caller = Caller::from_request_parts(&mut parts, &state).await?;
            let actor = caller.actor();
            (caller.principal.clone(), actor, Some(caller))
        }
        Some(signature) => {
            let remote = parts
                .extensions
                .get::<super::tls::ConnInfo>()
                .map(|c| c.peer.to_string());
            let sender = header(SENDER_HEADER).unwrap_or_default();
            let timestamp = header(webhook::TIMESTAMP_HEADER).unwrap_or_default();
            let shown: String = crate::inspect::escape_control(&sender)
                .chars()
                .take(64)
                .collect();
            let anonymous = Actor {
                name: format!("hmac:{shown}"),
                groups: vec![],
                remote: remote.clone(),
            };
            let now = SystemTime::now();
            let checked = match r.senders.get(&sender) {
                None => Err(format!("unknown sender {shown:?} ({SENDER_HEADER})")),
                Some((secret, principal)) => {
                    webhook::verify_signature(secret, &signature, &timestamp, &body, now, r.max_age)
                        .and_then(|()| r.replay.admit(&signature, &timestamp, now))
                        .map(|()| principal.clone())
                        .map_err(|e| e.to_string())
                }
            };
            match checked {
                Ok(principal) => {
                    let actor = Actor {
                        name: principal.actor(),
                        groups: principal.groups.clone(),
                        remote,
                    };
                    (principal, actor, None)
                }
                Err(why) => {
                    let ev = audit::EventInput::new(
                        &anonymous,
                        audit::Action::Authenticate,
                        Outcome::Denied,
                    )
                    .with_detail(format!("signed webhook refused: {why}"));
                    record(&state, ev).await?;
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "bad-signature",
                        format!("signed webhook refused: {why}"),
                    ));
                }
            }
        }
    };
    match webhook::parse(&body) {
        Ok(a) => take(&state, &principal, &actor, vec![a], None).await,
        Err(e) => bad_body(&state, &actor, "webhook body", e).await,
    }
}

/// `GET /v1/captures/{id}`: for the caller who asked, and for those who may read the
/// namespace's audit. Anyone else is told it does not exist.
pub(crate) async fn capture(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = state.receivers.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "the alert receivers are not enabled ([alerts] enabled = true)",
        )
    })?;
    let shown: String = crate::inspect::escape_control(&id)
        .chars()
        .take(64)
        .collect();
    // A request through the bucket is answered from there (its outcome, else its claim).
    let found = match crate::capture::fleet::current(&r.incidents, r.fleet.as_ref(), &id).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a capture request's state from the bucket");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "bucket-unavailable",
                "the capture's state is in the bucket, which did not answer; try again",
            ));
        }
    };
    let allowed = found.as_ref().is_some_and(|c| {
        c.trigger.requested_by == caller.principal.actor()
            || state.policy().allows(
                &caller.principal,
                crate::policy::Action::ReadAudit,
                c.namespace.as_deref(),
            )
    });
    let outcome = if allowed {
        Outcome::Ok
    } else {
        Outcome::Denied
    };
    let mut ev = event(&caller, audit::Action::ReadAudit, outcome)
        .with_namespace(found.as_ref().and_then(|c| c.namespace.clone()))
        .with_detail(format!("capture {shown}"));
    ev.record = found.as_ref().and_then(|c| c.record.clone());
    record(&state, ev).await?;
    match found {
        Some(c) if allowed => Ok(Json(c).into_response()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!(
                "no capture {shown} (captures are kept in memory, the newest [capture] history of them)"
            ),
        )),
    }
}
