//! What every request goes through before and after its handler: the caller's identity
//! ([`Caller`]: verified client certificate or bearer token, holding one of its identity's
//! `max_requests_per_identity` places; a 401 otherwise, audited at once or folded into a
//! per-address count by `authentication_failed`, 429 past the failure limits), the
//! audit record that must be written before anything is served (`record`, fail closed),
//! the catch-all record of requests no handler recorded (`audit_every_request`), and the
//! error answer ([`ApiError`]), whose body never carries paths or internal messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::limits::Slot;
use super::tls::ConnInfo;
use crate::audit::{self, Actor, EventInput, Outcome};
use crate::policy::Principal;
use crate::store::StoreError;

type Shared = Arc<AppState>;

/// An error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub(super) fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no record {id} that you may see"),
        )
    }
    /// A 500 whose cause is logged, not shown (it may name paths or internals).
    pub(super) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server's log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ckvault\""),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::not_found(id.as_str()),
            StoreError::Held { .. } => Self::new(StatusCode::CONFLICT, "held", e.to_string()),
            StoreError::Locked { .. } => {
                Self::new(StatusCode::CONFLICT, "object-locked", e.to_string())
            }
            StoreError::Unreachable { .. }
            | StoreError::Credentials { .. }
            | StoreError::NoCredentials { .. } => {
                tracing::warn!(error = %e, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "the record store cannot be reached; try again later",
                )
            }
            other => Self::internal(other),
        }
    }
}

/// The authenticated caller of a request, holding one of its identity's
/// `max_requests_per_identity` places for as long as the handler runs.
pub(crate) struct Caller {
    /// Who.
    pub principal: Principal,
    /// From where.
    pub remote: String,
    _request: Slot<String>,
}

impl Caller {
    /// Who acts, as the audit log records it: the principal, its groups, the remote address.
    pub(crate) fn actor(&self) -> Actor {
        Actor {
            name: self.principal.actor(),
            groups: self.principal.groups.clone(),
            remote: Some(self.remote.clone()),
        }
    }

    /// The key its limits are counted under: the certificate subject or the token.
    pub(crate) fn identity_key(&self) -> String {
        identity_key(&self.principal)
    }
}

fn identity_key(p: &Principal) -> String {
    format!("{}:{}", p.via, p.user)
}

/// A 429 with `Retry-After`, its cause said in the body.
pub(super) fn too_many(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let conn = parts.extensions.get::<ConnInfo>().cloned();
        let remote = conn
            .as_ref()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        let peer_ip = conn.as_ref().map(|c| c.peer.ip());
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer);
        // A certificate the CRLs list now, on a connection opened before they did.
        let revoked = conn.as_ref().is_some_and(|c| {
            c.cert_key
                .as_ref()
                .zip(state.client_auth.as_ref())
                .is_some_and(|(key, auth)| auth.is_revoked(key))
        });
        let found = match conn.and_then(|c| c.cert_identity) {
            _ if revoked => None,
            Some(p) => Some(p),
            None => bearer.and_then(|t| state.tokens().authenticate(t)),
        };
        match found {
            Some(principal) => {
                let key = identity_key(&principal);
                let mut acquired = state.requests.try_acquire(&key);
                // An alert sender bursts (Alertmanager delivers every group at once, on
                // connections of its own): its requests wait a while for a slot rather
                // than be refused, since a refused alert is evidence not captured.
                if acquired.is_err() && parts.uri.path().starts_with("/v1/alerts/") {
                    let deadline = tokio::time::Instant::now() + ALERT_SLOT_WAIT;
                    let mut pause = std::time::Duration::from_millis(5);
                    while acquired.is_err() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_millis(100));
                        acquired = state.requests.try_acquire(&key);
                    }
                }
                let request = match acquired {
                    Ok(slot) => slot,
                    Err(limit) => {
                        state
                            .metrics
                            .requests_limited
                            .fetch_add(1, Ordering::Relaxed);
                        let by = Actor {
                            name: principal.actor(),
                            groups: principal.groups.clone(),
                            remote: Some(remote),
                        };
                        record(
                            state,
                            EventInput::new(&by, audit::Action::Request, Outcome::Denied)
                                .with_detail(format!(
                                    "too many requests in progress: {limit} ([server] max_requests_per_identity)"
                                )),
                        )
                        .await?;
                        let message = format!(
                            "this identity has too many requests in progress ({limit}); retry when some have finished"
                        );
                        // Alertmanager retries a 5xx and drops a 4xx (Falco retries neither).
                        if parts.uri.path().starts_with("/v1/alerts/") {
                            return Err(ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "too-many-requests",
                                message,
                            ));
                        }
                        return Err(too_many("too-many-requests", message));
                    }
                };
                tracing::Span::current().record("caller", principal.actor().as_str());
                Ok(Caller {
                    principal,
                    remote,
                    _request: request,
                })
            }
            None => {
                state.metrics.denied.fetch_add(1, Ordering::Relaxed);
                let detail = if revoked {
                    "revoked client certificate"
                } else if bearer.is_some() {
                    "invalid token"
                } else {
                    "no credentials"
                };
                let shown = format!("{detail}: {} {}", parts.method, parts.uri.path());
                Err(authentication_failed(state, peer_ip, remote, shown).await?)
            }
        }
    }
}

/// How long an alert request waits for its identity's request slot before it is refused.
const ALERT_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest part of what an unauthenticated caller sent that its audit event keeps.
const SHOWN_UNAUTHENTICATED: usize = 128;

/// The answer to a request without valid credentials from `peer`: audited at once if it
/// is the first from its address this interval, else counted into the summary
/// [`audit_folded_failures`] writes; 401, or 429 past the failure limits. The caller's
/// request (`shown`) is cut short before it is recorded.
pub(super) async fn authentication_failed(
    state: &Shared,
    peer: Option<std::net::IpAddr>,
    remote: String,
    shown: String,
) -> Result<ApiError, ApiError> {
    use super::limits::FailureVerdict;
    let verdict = state
        .auth_failures
        .note(peer.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])));
    // Fail closed: a failure folded into a later count is answered only while the log
    // can take that count.
    let log_ok = match state.auth_failures.log_known_healthy() {
        _ if verdict == FailureVerdict::Record => true,
        Some(ok) => ok,
        None => {
            let st = state.clone();
            let ok = tokio::task::spawn_blocking(move || st.audit.health())
                .await
                .is_ok_and(|h| h.is_ok());
            state.auth_failures.note_log_health(ok);
            ok
        }
    };
    if !log_ok {
        mark_audited();
        state.metrics.audit_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit-unavailable",
            "the audit log cannot record this request, so it is refused; try again later",
        ));
    }
    match verdict {
        FailureVerdict::Record => {
            let mut shown = shown;
            if shown.len() > SHOWN_UNAUTHENTICATED {
                let mut cut = SHOWN_UNAUTHENTICATED;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
                shown.push_str("...");
            }
            let by = Actor {
                remote: Some(remote),
                ..Actor::named("anonymous")
            };
            record(
                state,
                EventInput::new(&by, audit::Action::Authenticate, Outcome::Denied)
                    .with_detail(shown),
            )
            .await?;
        }
        FailureVerdict::Fold => {
            mark_audited();
            state
                .metrics
                .auth_failures_folded
                .fetch_add(1, Ordering::Relaxed);
        }
        FailureVerdict::Limit => {
            mark_audited();
            state
                .metrics
                .auth_failures_limited
                .fetch_add(1, Ordering::Relaxed);
            return Ok(too_many(
                "too-many-failures",
                "too many failed authentications from here; present valid credentials".into(),
            ));
        }
    }
    Ok(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "present a client certificate signed by the configured CA, or Authorization: Bearer <token>",
    ))
}

/// Every `interval`, audits what [`authentication_failed`] folded: one `authenticate`
/// `denied` event per source with its count (and one for the sources beyond the tracked
/// ones). Runs for the life of the server.
pub(super) async fn audit_folded_failures(state: Shared, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        for folded in state.auth_failures.take() {
            let by = Actor {
                remote: Some(folded.source.map_or_else(
                    || {
                        format!(
                            "more than {} sources",
                            super::limits::AuthFailures::MAX_SOURCES
                        )
                    },
                    |ip| ip.to_string(),
                )),
                ..Actor::named("anonymous")
            };
            let event = EventInput::new(&by, audit::Action::Authenticate, Outcome::Denied)
                .with_detail(format!(
                    "{} more failed authentications in the last {}s, folded ({} answered 429)",
                    folded.count,
                    interval.as_secs(),
                    folded.limited
                ));
            let st = state.clone();
            match tokio::task::spawn_blocking(move || st.audit.append(event)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    audit_unavailable(&state, &e);
                }
                Err(e) => tracing::error!(error = %e, "could not audit folded failures"),
            }
        }
    }
}

/// Parses `Bearer TOKEN` (RFC 6750, case-insensitive scheme, one space or more).
pub(crate) fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    let ok = !token.is_empty()
        && token.len() <= 512
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    ok.then_some(token)
}

tokio::task_local! {
    /// Set once a handler has recorded the request (see [`audit_every_request`]).
    static AUDITED: std::cell::Cell<bool>;
}

/// Appends an audit event; an audit failure refuses the request (fail closed). The cause
/// goes to the server's log (once per change of health), not to the client.
pub(crate) async fn record(state: &Shared, event: EventInput) -> Result<(), ApiError> {
    let _ = AUDITED.try_with(|a| a.set(true));
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || st.audit.append(event))
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok(_) => {
            state.metrics.note_health("audit", None);
            Ok(())
        }
        Err(e) => Err(audit_unavailable(state, &e)),
    }
}

/// The answer to a request the audit log could not record (503, the cause logged).
pub(super) fn audit_unavailable(state: &Shared, e: &crate::audit::AuditError) -> ApiError {
    state.metrics.audit_failures.fetch_add(1, Ordering::Relaxed);
    state.metrics.note_health("audit", Some(e));
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit-unavailable",
        "the audit log cannot record this request, so it is refused; try again later",
    )
}

/// Notes that the request was recorded by a lower layer (so [`audit_every_request`] does
/// not record it again).
pub(super) fn mark_audited() {
    let _ = AUDITED.try_with(|a| a.set(true));
}

/// Records every request that reached the HTTP layer and that no handler recorded (a
/// 405, a path or query that does not parse, an unknown endpoint), with its true outcome:
/// `ok` for 2xx/3xx, `denied` for 4xx, `error` for 5xx. If that record cannot be written
/// the answer becomes 503 (no handler acted on such a request, so nothing was served).
///
/// Every request runs in a `request` span: its ID (a ULID made here), method, path (at
/// most 128 characters), peer, and, once known, the caller and the record it concerns. Never
/// its query, headers or body.
pub(super) async fn audit_every_request(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let path = req.uri().path();
    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer);
    let span = tracing::info_span!(
        "request",
        request = %ulid::Ulid::generate(),
        method = %req.method(),
        path = ?path.chars().take(128).collect::<String>(),
        peer = peer.map(tracing::field::display),
        caller = tracing::field::Empty,
        record = tracing::field::Empty,
    );
    let resp = audit_request(state, req, next)
        .instrument(span.clone())
        .await;
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "answered"));
    resp
}

/// Notes the record a request concerns in its `request` span.
pub(super) fn span_record(id: &crate::manifest::RecordId) {
    tracing::Span::current().record("record", id.as_str());
}

async fn audit_request(
    state: Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(req).await;
    }
    let shown = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    let conn = req.extensions().get::<ConnInfo>().cloned();
    let token_principal = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_bearer)
        .and_then(|t| state.tokens().authenticate(t));
    let (resp, audited) = AUDITED
        .scope(std::cell::Cell::new(false), async {
            let resp = next.run(req).await;
            (resp, AUDITED.with(std::cell::Cell::get))
        })
        .await;
    if audited {
        return resp;
    }
    let status = resp.status();
    let principal = conn
        .as_ref()
        .and_then(|c| c.cert_identity.clone())
        .or(token_principal);
    if principal.is_none() && status.is_client_error() {
        // An anonymous request no handler took: a failed authentication as any other.
        let peer = conn.as_ref().map(|c| c.peer.ip());
        let remote = conn
            .as_ref()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        return match authentication_failed(
            &state,
            peer,
            remote,
            format!("{shown} -> {}", status.as_u16()),
        )
        .await
        {
            Ok(limited) if limited.status == StatusCode::TOO_MANY_REQUESTS => {
                limited.into_response()
            }
            Ok(_) => resp,
            Err(e) => e.into_response(),
        };
    }
    let by = Actor {
        name: principal
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), Principal::actor),
        groups: principal.map(|p| p.groups).unwrap_or_default(),
        remote: conn.map(|c| c.peer.to_string()),
    };
    let outcome = if status.is_server_error() {
        Outcome::Error
    } else if status.is_client_error() {
        Outcome::Denied
    } else {
        Outcome::Ok
    };
    let event = EventInput::new(&by, audit::Action::Request, outcome)
        .with_detail(format!("{shown} -> {}", status.as_u16()));
    match record(&state, event).await {
        Ok(()) => resp,
        Err(e) => e.into_response(),
    }
}

/// An event of `caller` doing `action`, ending in `outcome`.
pub(crate) fn event(caller: &Caller, action: audit::Action, outcome: Outcome) -> EventInput {
    EventInput::new(&caller.actor(), action, outcome)
}
