//! Reading the audit log (`GET /v1/audit`): the events of the namespaces the caller may
//! read the audit of, the read itself audited first.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::super::request::{ApiError, Caller, event, record};
use super::access::Shared;
use crate::audit::{self, Outcome};
use crate::policy::Action;

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    record: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn audit(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let policy = state.policy();
    let principal = caller.principal.clone();
    if !policy.access.grants_any(&principal, Action::ReadAudit) {
        state.metrics.denied.fetch_add(1, Ordering::Relaxed);
        let mut ev = event(&caller, audit::Action::ReadAudit, Outcome::Denied)
            .with_detail("no read-audit grant in any namespace");
        ev.record = q.record.clone();
        record(&state, ev).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not read the audit log of any namespace",
                principal.actor()
            ),
        ));
    }
    let mut ev = event(&caller, audit::Action::ReadAudit, Outcome::Ok);
    ev.record = q.record.clone();
    record(&state, ev).await?;
    let st = state.clone();
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let events = tokio::task::spawn_blocking(move || {
        st.audit.read(
            &|e| {
                q.record
                    .as_deref()
                    .is_none_or(|r| e.input.record.as_deref() == Some(r))
                    && policy.allows(&principal, Action::ReadAudit, e.input.namespace.as_deref())
            },
            limit,
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "items": events })).into_response())
}
