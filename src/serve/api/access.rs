//! What every record handler shares: the server state they run on, the audit log as the
//! use cases write to it, the vault as this server holds it now, the audited access check
//! (403, or 404 for a namespace the caller may not see) and the audited integrity refusal.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;

use super::super::AppState;
use super::super::request::{ApiError, Caller, event, record};
use crate::audit::{self, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::policy::Action;
use crate::vault::download::{self, AccessError, Vault};

/// The server's state, as every handler holds it.
pub(super) type Shared = Arc<AppState>;

/// The server's audit log as the use cases write to it: [`record`] (fail closed, the
/// log's health tracked, the request marked recorded).
pub(super) struct Rec<'a>(pub(super) &'a Shared);

impl crate::vault::download::Recorder for Rec<'_> {
    type Error = ApiError;
    async fn record(&self, event: audit::EventInput) -> Result<(), ApiError> {
        record(self.0, event).await
    }
}

/// The vault the use cases read, as this server holds it now.
pub(super) fn vault<'a>(state: &'a Shared, policy: &'a crate::policy::PolicySet) -> Vault<'a> {
    Vault {
        store: &state.store,
        policy,
        verified: &state.verified,
    }
}

/// Loads a record's manifest and checks that `caller` may do `action` on it (403, or 404
/// for a namespace the caller may not see, each audited): [`download::authorized`].
pub(super) async fn authorized_manifest(
    state: &Shared,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<Manifest, ApiError> {
    let policy = state.policy();
    let who = download::Caller {
        principal: &caller.principal,
        actor: caller.actor(),
    };
    let result = download::authorized(&vault(state, &policy), &Rec(state), &who, id, action).await;
    if let Ok(m) = &result {
        super::super::request::span_record(&m.id);
    }
    result.map_err(|e| match e {
        AccessError::Audit(e) => e,
        AccessError::BadId(shown) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{shown:?} is not a record ID"),
        ),
        AccessError::Store(e) => ApiError::from(e),
        AccessError::Hidden(id) => {
            state.metrics.denied.fetch_add(1, Ordering::Relaxed);
            ApiError::not_found(id.as_str())
        }
        e @ AccessError::Forbidden { .. } => {
            state.metrics.denied.fetch_add(1, Ordering::Relaxed);
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
    })
}

/// The answer for a record that failed an integrity check (the refusal is audited).
pub(super) fn integrity_error(id: &RecordId) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity",
        format!(
            "record {id} failed its integrity check and is not served; an operator must run `ckvault verify {id}`"
        ),
    )
}

/// Records and answers a record that failed an integrity check (nothing is served).
pub(super) async fn integrity_refusal(
    state: &Shared,
    caller: &Caller,
    manifest: &Manifest,
    why: &str,
) -> ApiError {
    state
        .metrics
        .integrity_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(record = %manifest.id, why, "integrity: record not served");
    let ev = event(caller, audit::Action::Download, Outcome::Error)
        .about(manifest)
        .with_detail(format!("integrity: {why}"));
    if let Err(e) = record(state, ev).await {
        return e;
    }
    integrity_error(&manifest.id)
}
