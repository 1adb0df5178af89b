//! Reading records' descriptions: the listing (`GET /v1/checkpoints`, on
//! [`crate::vault::query`]), one record's manifest and the key it verifies with.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::super::request::{ApiError, Caller, event, record};
use super::access::{Shared, authorized_manifest, integrity_refusal};
use crate::audit::{self, Outcome};
use crate::manifest::RecordId;
use crate::policy::Action;
use crate::vault::query::RecordQuery;

/// Query of `GET /v1/checkpoints` ([`RecordQuery`]'s fields).
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    node: Option<String>,
    /// RFC 3339: only records sealed at or after this time.
    since: Option<String>,
    /// RFC 3339: only records sealed before this time.
    until: Option<String>,
    /// Only records under a legal hold (`true`) or not (`false`).
    held: Option<bool>,
    /// Only records of this `source.kind`.
    source: Option<String>,
    /// Only records of this `trigger.kind`.
    trigger: Option<String>,
    /// The `next` of the page before.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// One row of a listing.
#[derive(Debug, Serialize)]
pub(crate) struct ListItem {
    id: String,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    node: Option<String>,
    image: Option<String>,
    checkpointed_at: Option<String>,
    sealed_at: String,
    size: u64,
    sealed_size: u64,
    inspection: String,
    /// The record's `trigger.kind` (why it was captured), null when it has none.
    trigger: Option<String>,
}

pub(super) async fn list(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let bad = |what: &'static str, value: &str, why: String| {
        let ev = event(&caller, audit::Action::List, Outcome::Denied).with_detail(format!(
            "bad {what} {:?}",
            value.chars().take(64).collect::<String>()
        ));
        Box::new((ev, ApiError::new(StatusCode::BAD_REQUEST, "bad-query", why)))
    };
    let time = |what: &'static str, value: &Option<String>| match value {
        None => Ok(None),
        Some(s) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(Some)
            .map_err(|e| bad(what, s, format!("{what} must be RFC 3339: {e}"))),
    };
    type Refused = Box<(audit::EventInput, ApiError)>;
    let parsed = (|| -> Result<RecordQuery, Refused> {
        Ok(RecordQuery {
            namespace: q.namespace.clone(),
            pod: q.pod.clone(),
            container: q.container.clone(),
            node: q.node.clone(),
            since: time("since", &q.since)?,
            until: time("until", &q.until)?,
            held: q.held,
            source: q.source.clone(),
            trigger: q.trigger.clone(),
            cursor: match &q.cursor {
                None => None,
                Some(c) => Some(c.parse::<RecordId>().map_err(|_| {
                    bad("cursor", c, "cursor must be the `next` of a listing".into())
                })?),
            },
            limit: q.limit,
        })
    })();
    let query = match parsed {
        Ok(query) => query,
        Err(refusal) => {
            let (ev, answer) = *refusal;
            record(&state, ev).await?;
            return Err(answer);
        }
    };
    let policy = state.policy();
    if !crate::vault::query::may_list(&policy, &caller.principal) {
        state.metrics.denied.fetch_add(1, Ordering::Relaxed);
        let ev = event(&caller, audit::Action::List, Outcome::Denied)
            .with_namespace(q.namespace.clone())
            .with_detail("no list grant in any namespace");
        record(&state, ev).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not list records in any namespace",
                caller.principal.actor()
            ),
        ));
    }
    let page =
        crate::vault::query::visible(&state.store, &policy, &caller.principal, &query).await?;
    let items: Vec<ListItem> = page
        .records
        .iter()
        .map(|m| ListItem {
            id: m.id.to_string(),
            namespace: m.namespace.clone(),
            pod: m.pod.clone(),
            container: m.container.clone(),
            node: m.node.clone(),
            image: m.image.clone(),
            checkpointed_at: m.checkpointed_at.clone(),
            sealed_at: m.sealed_at.clone(),
            size: m.plaintext.size,
            sealed_size: m.sealed.size,
            inspection: m.inspection.code.clone().unwrap_or_else(|| "ok".into()),
            trigger: m.trigger.as_ref().map(|t| t.kind.to_string()),
        })
        .collect();
    let ev = event(&caller, audit::Action::List, Outcome::Ok)
        .with_namespace(q.namespace.clone())
        .with_detail(format!("{} records", items.len()));
    record(&state, ev).await?;
    let mut answer = serde_json::json!({ "items": items });
    if let Some(next) = page.next {
        answer["next"] = serde_json::Value::String(next.to_string());
    }
    Ok(Json(answer).into_response())
}

pub(super) async fn show(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let manifest = authorized_manifest(&state, &caller, &id, Action::ReadManifest).await?;
    let ev = event(&caller, audit::Action::ReadManifest, Outcome::Ok).about(&manifest);
    record(&state, ev).await?;
    let held = state.store.hold(&manifest.id).await?;
    let mut resp = Json(&manifest).into_response();
    resp.headers_mut().insert(
        "ckvault-legal-hold",
        HeaderValue::from_static(if held.is_some() { "true" } else { "false" }),
    );
    Ok(resp)
}

/// The public key (SPKI PEM) the record's manifest verifies with, for a client that pins
/// the vault's key on first use (`ckvault fetch`); the same grant as the manifest.
pub(super) async fn signing_key(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let manifest = authorized_manifest(&state, &caller, &id, Action::ReadManifest).await?;
    let key = match state.store.manifest_key(&manifest).await {
        Ok(k) => k,
        Err(e) => return Err(integrity_refusal(&state, &caller, &manifest, &e.to_string()).await),
    };
    let pem = key
        .to_pem()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let ev = event(&caller, audit::Action::ReadManifest, Outcome::Ok)
        .about(&manifest)
        .with_detail(format!("signing key {}", key.key_id()));
    record(&state, ev).await?;
    let mut resp = pem.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(resp)
}
