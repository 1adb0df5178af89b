//! Custody actions (delete, hold, release) over [`crate::vault::Custody`], which records
//! each in the audit log first; here, only the reason's parsing and the answers.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::super::request::{ApiError, Caller, event, record};
use super::access::{Shared, authorized_manifest};
use crate::audit::{self, Outcome};
use crate::manifest::RecordId;
use crate::policy::Action;
use crate::vault::CustodyError;

/// Query or body carrying a reason.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ReasonQuery {
    reason: Option<String>,
}

pub(super) async fn delete(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ReasonQuery>,
) -> Result<Response, ApiError> {
    let manifest = authorized_manifest(&state, &caller, &id, Action::Delete).await?;
    let result = state
        .custody
        .delete(
            &caller.actor(),
            &manifest,
            Some(&state.policy()),
            q.reason.as_deref(),
        )
        .await;
    custody_done(&state, result)?;
    state.verified.forget(&manifest.id);
    state.metrics.deletions.fetch_add(1, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn hold(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ReasonQuery>,
    body: Option<Json<ReasonQuery>>,
) -> Result<Response, ApiError> {
    let Some(reason) = q
        .reason
        .or(body.and_then(|Json(b)| b.reason))
        .filter(|r| !r.trim().is_empty())
    else {
        no_reason(&state, &caller, audit::Action::Hold, &id).await?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason-required",
            "a legal hold needs a reason (?reason= or {\"reason\": ...})",
        ));
    };
    let manifest = authorized_manifest(&state, &caller, &id, Action::Hold).await?;
    let result = state
        .custody
        .hold(&caller.actor(), &manifest, &reason)
        .await;
    let hold = custody_done(&state, result)?;
    Ok(Json(hold).into_response())
}

pub(super) async fn release(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ReasonQuery>,
) -> Result<Response, ApiError> {
    let Some(reason) = q.reason.filter(|r| !r.trim().is_empty()) else {
        no_reason(&state, &caller, audit::Action::Release, &id).await?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason-required",
            "releasing a hold needs ?reason=",
        ));
    };
    let manifest = authorized_manifest(&state, &caller, &id, Action::Hold).await?;
    let result = state
        .custody
        .release(&caller.actor(), &manifest, &reason)
        .await;
    // Releasing a record that is not held answers `released: false` (the refusal is
    // audited by the custody action like any other outcome).
    let released = match result {
        Err(CustodyError::NotHeld(_)) => Ok(false),
        other => other.map(|()| true),
    };
    let released = custody_done(&state, released)?;
    Ok(Json(serde_json::json!({ "released": released })).into_response())
}

/// Translates the outcome of a custody action (already recorded in the audit log by
/// [`crate::vault::Custody`]) into the answer.
fn custody_done<T>(state: &Shared, result: Result<T, CustodyError>) -> Result<T, ApiError> {
    super::super::request::mark_audited();
    result.map_err(|e| match e {
        CustodyError::Held { .. } => ApiError::new(StatusCode::CONFLICT, "held", e.to_string()),
        CustodyError::Locked { .. } => {
            ApiError::new(StatusCode::CONFLICT, "object-locked", e.to_string())
        }
        CustodyError::NotHeld(_) => ApiError::new(StatusCode::CONFLICT, "not-held", e.to_string()),
        CustodyError::NoReason => {
            ApiError::new(StatusCode::BAD_REQUEST, "reason-required", e.to_string())
        }
        CustodyError::Audit(a) => super::super::request::audit_unavailable(state, &a),
        CustodyError::Store(s) => ApiError::from(s),
    })
}

/// Audits a hold or release refused for want of a reason.
async fn no_reason(
    state: &Shared,
    caller: &Caller,
    action: audit::Action,
    id: &str,
) -> Result<(), ApiError> {
    let mut ev = event(caller, action, Outcome::Denied).with_detail("no reason given");
    ev.record = id.parse::<RecordId>().ok().map(|r| r.to_string());
    record(state, ev).await
}
