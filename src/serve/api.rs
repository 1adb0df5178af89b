//! The HTTP API (JSON, versioned under `/v1`; see `openapi/ckvault-v1.json`). Every
//! request is authenticated (client certificate or bearer token), authorized against the
//! access policy (deny by default) and recorded in the audit log *before* anything is
//! served: a request the audit log cannot record is refused (503). Requests no handler
//! records (405, unparsable paths or queries, unknown endpoints) are recorded by
//! `request::audit_every_request` with their true outcome; only `/healthz` and `/metrics`, which
//! carry no record data and must answer while the log cannot be written, are not; failed
//! authentications past the first per address and interval are recorded as a count.
//! A download is recorded again when its body ends (`download-end`, the bytes handed over).
//! Error bodies never carry paths or internal messages (the server's log does).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::range::{self, RangeDecision};
use super::request::{ApiError, Caller, event, record};
use super::stream::{FileCheck, Mismatch, Verify, blob_body, file_body, watched_body};
use crate::audit::{self, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::policy::Action;
use crate::vault::CustodyError;
use crate::vault::download::{self, AccessError, Download, DownloadError, Span, Vault};
use crate::vault::query::RecordQuery;

type Shared = Arc<AppState>;

/// The OpenAPI document of this API, kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("../../openapi/ckvault-v1.json");

/// Builds the router.
pub(crate) fn router(state: Shared) -> Router {
    // An alert body is capped at `[alerts] max_body` (413 past it).
    let alert_body = axum::extract::DefaultBodyLimit::max(
        state.receivers.as_ref().map_or(1 << 20, |r| r.max_body),
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/checkpoints", get(list))
        .route("/v1/checkpoints/{id}", get(show).delete(delete))
        .route("/v1/checkpoints/{id}/archive", get(download))
        .route("/v1/checkpoints/{id}/signing-key", get(signing_key))
        .route("/v1/checkpoints/{id}/hold", put(hold).delete(release))
        .route("/v1/audit", get(audit))
        .route(
            "/checkpoint/{namespace}/{pod}/{container}",
            axum::routing::post(super::trigger::checkpoint),
        )
        .route(
            "/v1/alerts/alertmanager",
            axum::routing::post(super::alerts::alertmanager).layer(alert_body),
        )
        .route(
            "/v1/alerts/falco",
            axum::routing::post(super::alerts::falco).layer(alert_body),
        )
        .route(
            "/v1/alerts/webhook",
            axum::routing::post(super::alerts::webhook).layer(alert_body),
        )
        .route("/v1/captures/{id}", get(super::alerts::capture))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::request::audit_every_request,
        ))
        .with_state(state)
}

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
fn vault<'a>(state: &'a Shared, policy: &'a crate::policy::PolicySet) -> Vault<'a> {
    Vault {
        store: &state.store,
        policy,
        verified: &state.verified,
    }
}

/// Loads a record's manifest and checks that `caller` may do `action` on it (403, or 404
/// for a namespace the caller may not see, each audited): [`download::authorized`].
async fn authorized_manifest(
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
        super::request::span_record(&m.id);
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

/// Counts each routed request by route template and status for `/metrics`.
async fn count_requests(
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
async fn unknown(
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
async fn healthz(State(state): State<Shared>) -> Response {
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

async fn metrics(State(state): State<Shared>) -> Response {
    let records = state.store.count().await.unwrap_or(0);
    let mut text = state
        .metrics
        .render(records, state.audit.head().map(|h| (h.size, h.hash)));
    if let Some(r) = &state.receivers {
        r.incidents.metrics().render(&mut text);
        if let Some(f) = r.incidents.fleet() {
            f.metrics.render(&mut text);
        }
    }
    if matches!(state.store, crate::store::Store::Bucket(_)) {
        crate::store::s3::client::REQUESTS.render(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

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

async fn list(
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

async fn show(
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
async fn signing_key(
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

/// Query of a download.
#[derive(Debug, Deserialize)]
pub(crate) struct DownloadQuery {
    purpose: Option<String>,
}

async fn download(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
    conn: Option<axum::Extension<super::tls::ConnInfo>>,
) -> Result<Response, ApiError> {
    let conn_downloads = conn.map(|c| c.0.downloads.clone());
    let manifest = authorized_manifest(&state, &caller, &id, Action::Download).await?;
    // A place among the downloads streaming now, held by the body until its last byte.
    let download_slot = match state.downloads.try_acquire(&caller.identity_key()) {
        Ok(slot) => slot,
        Err(limit) => {
            state
                .metrics
                .downloads_limited
                .fetch_add(1, Ordering::Relaxed);
            let ev = event(&caller, audit::Action::Download, Outcome::Denied)
                .about(&manifest)
                .with_detail(format!(
                    "too many downloads at once: {limit} ([server] max_downloads_per_identity, max_downloads)"
                ));
            record(&state, ev).await?;
            return Err(super::request::too_many(
                "too-many-downloads",
                format!("too many downloads at once ({limit}); retry when one has finished"),
            ));
        }
    };
    let len = manifest.sealed.size;
    let etag = format!("\"sha256-{}\"", manifest.sealed.sha256);
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let span = match if_range_ok {
        true => match range::decide(range_header, len) {
            RangeDecision::Full => Span::All,
            RangeDecision::Partial { start, end } => Span::Bytes { start, end },
            RangeDecision::Unsatisfiable => Span::Unsatisfiable,
        },
        false => Span::All,
    };
    let purpose = q.purpose.or_else(|| {
        headers
            .get("ckvault-purpose")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let policy = state.policy();
    let who = download::Caller {
        principal: &caller.principal,
        actor: caller.actor(),
    };
    let prepared = download::prepare(
        &vault(&state, &policy),
        &Rec(&state),
        &who,
        manifest,
        span,
        purpose,
    )
    .await;
    let download = prepared.map_err(|e| match e {
        DownloadError::Audit(e) => e,
        DownloadError::Store(e) => ApiError::from(e),
        DownloadError::Integrity { record, .. } => {
            state
                .metrics
                .integrity_failures
                .fetch_add(1, Ordering::Relaxed);
            integrity_error(&record)
        }
    })?;
    serve_download(&state, download, &etag, download_slot, conn_downloads).await
}

/// The answer to an audited [`Download`]: its headers, and its body checked as it goes,
/// recorded again when it ends (`download-end`).
async fn serve_download(
    state: &Shared,
    mut download: Download,
    etag: &str,
    slot: super::limits::Slot<String>,
    conn_downloads: Option<Arc<super::limits::Downloads>>,
) -> Result<Response, ApiError> {
    let manifest = download.manifest.clone();
    let len = manifest.sealed.size;
    let digest_raw = hex::decode(&manifest.sealed.sha256).unwrap_or_default();
    let repr_digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest_raw)
    );
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header("repr-digest", repr_digest)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.age\"", manifest.id),
        );
    let (start, count) = (download.start(), download.count());
    let status = match download.span {
        Span::All => StatusCode::OK,
        Span::Bytes { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            StatusCode::PARTIAL_CONTENT
        }
        Span::Unsatisfiable => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default());
        }
    };
    let events = download.events();
    let on_mismatch: Box<dyn FnOnce(&Mismatch) + Send> = {
        let (state, id, events) = (state.clone(), manifest.id.clone(), events.clone());
        Box::new(move |why: &Mismatch| {
            state.verified.forget(&id);
            state
                .metrics
                .integrity_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(record = %id, %why, "integrity: download cut off");
            let ev = events.mismatch(why);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = state.audit.append(ev) {
                    tracing::error!(error = %e, "could not record the integrity failure");
                }
            });
        })
    };
    let id = manifest.id.clone();
    let sha256 = manifest.sealed.sha256.clone();
    let body = match download.take_blob() {
        download::Blob::Local {
            file,
            identity,
            check,
        } => {
            let counter = match check {
                FileCheck::Digest(_) => &state.metrics.downloads_hashed,
                FileCheck::Unchanged => &state.metrics.downloads_identity_checked,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let began = download.began;
            let on_verified: Box<dyn FnOnce() + Send> = match check {
                FileCheck::Digest(_) => {
                    let (state, id) = (state.clone(), id.clone());
                    Box::new(move || state.verified.remember(&id, identity, began))
                }
                FileCheck::Unchanged => Box::new(|| {}),
            };
            let verify = Verify {
                on_verified,
                on_mismatch,
            };
            file_body(file, identity, start, count, check, verify)
        }
        download::Blob::Bucket | download::Blob::None => {
            // A bucket's blob: every full download is re-hashed; a span was verified first.
            let reader = state.store.blob(&id, start, count).await?;
            if status == StatusCode::OK {
                state
                    .metrics
                    .downloads_hashed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let verify = (status == StatusCode::OK).then(|| {
                let verify = Verify {
                    on_verified: Box::new(|| {}),
                    on_mismatch,
                };
                (sha256, verify)
            });
            blob_body(reader, verify)
        }
    };
    state.metrics.downloads.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .download_bytes
        .fetch_add(count, Ordering::Relaxed);
    let body = {
        let progress = conn_downloads.map(|d| d.start());
        let state = state.clone();
        watched_body(body, count, progress, slot, move |sent| {
            if sent < count {
                state
                    .metrics
                    .downloads_incomplete
                    .fetch_add(1, Ordering::Relaxed);
            }
            let ev = events.end(sent);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = state.audit.append(ev) {
                    tracing::error!(error = %e, "could not record the end of a download");
                }
            });
        })
    };
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .map_err(ApiError::internal)
}

/// The answer for a record that failed an integrity check (the refusal is audited).
fn integrity_error(id: &RecordId) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity",
        format!(
            "record {id} failed its integrity check and is not served; an operator must run `ckvault verify {id}`"
        ),
    )
}

/// Records and answers a record that failed an integrity check (nothing is served).
async fn integrity_refusal(
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
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity",
        format!(
            "record {} failed its integrity check and is not served; an operator must run `ckvault verify {}`",
            manifest.id, manifest.id
        ),
    )
}

/// Query or body carrying a reason.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ReasonQuery {
    reason: Option<String>,
}

async fn delete(
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

async fn hold(
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

async fn release(
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
    super::request::mark_audited();
    result.map_err(|e| match e {
        CustodyError::Held { .. } => ApiError::new(StatusCode::CONFLICT, "held", e.to_string()),
        CustodyError::Locked { .. } => {
            ApiError::new(StatusCode::CONFLICT, "object-locked", e.to_string())
        }
        CustodyError::NotHeld(_) => ApiError::new(StatusCode::CONFLICT, "not-held", e.to_string()),
        CustodyError::NoReason => {
            ApiError::new(StatusCode::BAD_REQUEST, "reason-required", e.to_string())
        }
        CustodyError::Audit(a) => super::request::audit_unavailable(state, &a),
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

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    record: Option<String>,
    limit: Option<usize>,
}

async fn audit(
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
