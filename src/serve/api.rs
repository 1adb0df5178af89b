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
use super::stream::{FILE_CHUNK, FileCheck, Mismatch, Verify, blob_body, file_body, watched_body};
use crate::audit::{self, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::policy::Action;
use crate::store::backend::FileIdentity;
use crate::vault::CustodyError;

type Shared = Arc<AppState>;

/// The OpenAPI document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../../openapi/ckvault-v1.json");

/// Builds the router.
pub fn router(state: Shared) -> Router {
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

/// Loads a record's manifest and checks that `caller` may do `action` on it (403 and an
/// audited denial otherwise). Malformed IDs are refused (400) and audited too.
async fn authorized_manifest(
    state: &Shared,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<Manifest, ApiError> {
    let Ok(rid) = id.parse::<RecordId>() else {
        let ev = event(caller, action.into(), Outcome::Denied).with_detail(format!(
            "malformed record ID {:?}",
            id.chars().take(64).collect::<String>()
        ));
        record(state, ev).await?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!(
                "{:?} is not a record ID",
                id.chars().take(64).collect::<String>()
            ),
        ));
    };
    super::request::span_record(&rid);
    let manifest = match state.store.manifest(&rid).await.map_err(ApiError::from) {
        Ok(m) => m,
        Err(e) => {
            let ev = event(caller, action.into(), Outcome::Error)
                .with_record(id)
                .with_detail(e.message.clone());
            record(state, ev).await?;
            return Err(e);
        }
    };
    let policy = state.policy();
    if !policy.allows(&caller.principal, action, manifest.namespace.as_deref()) {
        state.metrics.denied.fetch_add(1, Ordering::Relaxed);
        record(
            state,
            event(caller, action.into(), Outcome::Denied).about(&manifest),
        )
        .await?;
        // Whether a record exists is only told to callers who may see its namespace.
        if !policy
            .access
            .sees(&caller.principal, manifest.namespace.as_deref())
        {
            return Err(ApiError::not_found(manifest.id.as_str()));
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not {} records of namespace {}",
                caller.principal.actor(),
                action.as_str(),
                manifest.namespace.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    Ok(manifest)
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
    let audit = tokio::task::spawn_blocking(move || st.audit.health())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    state.metrics.note_health("store", store.as_ref().err());
    state.metrics.note_health("audit", audit.as_ref().err());
    let ok = store.is_ok() && audit.is_ok();
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
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
            "store": word(&store),
            "audit": word(&audit),
            "uploads": uploads,
            "uploads_stuck": uploads_stuck,
            "audit_head": head,
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    let records = state.store.count().await.unwrap_or(0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state
            .metrics
            .render(records, state.audit.head().map(|h| (h.size, h.hash))),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Query of `GET /v1/checkpoints`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    node: Option<String>,
    /// RFC 3339: only records sealed at or after this time.
    since: Option<String>,
    limit: Option<usize>,
}

/// One row of a listing.
#[derive(Debug, Serialize)]
pub struct ListItem {
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
}

async fn list(
    State(state): State<Shared>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let since = match &q.since {
        Some(s) => {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => Some(t),
                Err(e) => {
                    let ev = event(&caller, audit::Action::List, Outcome::Denied).with_detail(
                        format!("bad since {:?}", s.chars().take(64).collect::<String>()),
                    );
                    record(&state, ev).await?;
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad-since",
                        format!("since must be RFC 3339: {e}"),
                    ));
                }
            }
        }
        None => None,
    };
    let policy = state.policy();
    if !policy.access.grants_any(&caller.principal, Action::List) {
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
    let manifests = state.store.list().await?;
    let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    let limit = q.limit.unwrap_or(10_000).min(100_000);
    let items: Vec<ListItem> = manifests
        .into_iter()
        .rev() // newest first
        .filter(|m| policy.allows(&caller.principal, Action::List, m.namespace.as_deref()))
        .filter(|m| {
            eq(&q.namespace, &m.namespace)
                && eq(&q.pod, &m.pod)
                && eq(&q.container, &m.container)
                && eq(&q.node, &m.node)
        })
        .filter(|m| {
            since.is_none_or(|t| {
                time::OffsetDateTime::parse(
                    &m.sealed_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|s| s >= t)
            })
        })
        .take(limit)
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
        })
        .collect();
    let ev = event(&caller, audit::Action::List, Outcome::Ok)
        .with_namespace(q.namespace.clone())
        .with_detail(format!("{} records", items.len()));
    record(&state, ev).await?;
    Ok(Json(serde_json::json!({ "items": items })).into_response())
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
pub struct DownloadQuery {
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
    // Serve only records whose manifest still verifies.
    if let Err(e) = state.store.verify_manifest(&manifest).await {
        return Err(integrity_refusal(&state, &caller, &manifest, &e.to_string()).await);
    }
    let len = manifest.sealed.size;
    let etag = format!("\"sha256-{}\"", manifest.sealed.sha256);
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let decision = if if_range_ok {
        range::decide(range_header, len)
    } else {
        RangeDecision::Full
    };
    // A local blob is opened once: its identity is taken from the open file, and the bytes
    // served are that file's. `began` precedes the identity, as `remember` needs.
    let began = std::time::SystemTime::now();
    let local = state.store.open_blob_file(&manifest.id).await?;
    if let Some((_, identity)) = &local
        && identity.size != len
    {
        state.verified.forget(&manifest.id);
        let why = Mismatch::SignedSize {
            size: identity.size,
            signed: len,
        };
        return Err(integrity_refusal(&state, &caller, &manifest, &why.to_string()).await);
    }
    // A range cannot be checked against the digest on its own: serve it only from a blob
    // whose every byte matched since it last changed.
    if let RangeDecision::Partial { .. } = decision
        && let Err(why) = ensure_verified(&state, &manifest, local.as_ref(), began).await?
    {
        return Err(integrity_refusal(&state, &caller, &manifest, &why.to_string()).await);
    }
    let purpose = q.purpose.or_else(|| {
        headers
            .get("ckvault-purpose")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let mut ev = event(&caller, audit::Action::Download, Outcome::Ok).about(&manifest);
    ev.purpose = purpose;
    ev.bytes = Some(match decision {
        RangeDecision::Full => len,
        RangeDecision::Partial { start, end } => end - start + 1,
        RangeDecision::Unsatisfiable => 0,
    });
    ev.detail = match decision {
        RangeDecision::Partial { start, end } => Some(format!("bytes {start}-{end}/{len}")),
        RangeDecision::Unsatisfiable => Some(format!("unsatisfiable range {range_header:?}")),
        RangeDecision::Full => None,
    };
    record(&state, ev).await?;

    let digest_raw = hex::decode(&manifest.sealed.sha256).unwrap_or_default();
    let repr_digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(digest_raw)
    );
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header("repr-digest", repr_digest)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.age\"", manifest.id),
        );
    let (start, count, status) = match decision {
        RangeDecision::Full => (0, len, StatusCode::OK),
        RangeDecision::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (start, end - start + 1, StatusCode::PARTIAL_CONTENT)
        }
        RangeDecision::Unsatisfiable => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default());
        }
    };
    let on_mismatch: Box<dyn FnOnce(&Mismatch) + Send> = {
        let state = state.clone();
        let id = manifest.id.clone();
        let mut ev = event(&caller, audit::Action::Download, Outcome::Error).about(&manifest);
        Box::new(move |why: &Mismatch| {
            state.verified.forget(&id);
            state
                .metrics
                .integrity_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(record = %id, why = %why, "integrity: blob failed its check; download cut off");
            ev.detail = Some(format!(
                "integrity: {why}; the download was cut off before its end"
            ));
            tokio::task::spawn_blocking(move || {
                if let Err(e) = state.audit.append(ev) {
                    tracing::error!(error = %e, "could not record the integrity failure");
                }
            });
        })
    };
    let body = match local {
        Some((file, identity)) => {
            // Every local download is checked: a full one is hashed unless its blob was
            // verified since it last changed, in which case (as for a range) the file must
            // keep the identity it was verified with until the last byte is read.
            let check =
                if status == StatusCode::OK && !state.verified.holds(&manifest.id, &identity) {
                    FileCheck::Digest(manifest.sealed.sha256.clone())
                } else {
                    FileCheck::Unchanged
                };
            let counter = match check {
                FileCheck::Digest(_) => &state.metrics.downloads_hashed,
                FileCheck::Unchanged => &state.metrics.downloads_identity_checked,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let on_verified: Box<dyn FnOnce() + Send> = match check {
                FileCheck::Digest(_) => {
                    let (state, id) = (state.clone(), manifest.id.clone());
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
        None => {
            // A bucket's blob: every full download is re-hashed; a range was verified first.
            let reader = state.store.blob(&manifest.id, start, count).await?;
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
                (manifest.sealed.sha256.clone(), verify)
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
        let mut ev = event(&caller, audit::Action::DownloadEnd, Outcome::Ok).about(&manifest);
        watched_body(body, count, progress, download_slot, move |sent| {
            if sent < count {
                state
                    .metrics
                    .downloads_incomplete
                    .fetch_add(1, Ordering::Relaxed);
                ev.outcome = Outcome::Error;
                ev.detail = Some(format!(
                    "ended early: {sent} of {count} bytes handed to the connection"
                ));
            }
            ev.bytes = Some(sent);
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

/// Hashes the whole blob unless it was verified since it last changed (same identity);
/// `Ok(Err(why))` if its bytes do not match the manifest. A bucket's blob (`local` is
/// `None`) has no identity: it is hashed every time.
async fn ensure_verified(
    state: &Shared,
    manifest: &Manifest,
    local: Option<&(std::fs::File, FileIdentity)>,
    began: std::time::SystemTime,
) -> Result<Result<(), Mismatch>, ApiError> {
    let Some((file, identity)) = local else {
        return hash_bucket_blob(state, manifest).await;
    };
    if state.verified.holds(&manifest.id, identity) {
        return Ok(Ok(()));
    }
    let file = file.try_clone().map_err(ApiError::internal)?;
    let (identity, expected) = (*identity, manifest.sealed.sha256.clone());
    let verdict = tokio::task::spawn_blocking(move || -> std::io::Result<Result<(), Mismatch>> {
        use std::os::unix::fs::FileExt;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; FILE_CHUNK];
        let mut offset = 0u64;
        loop {
            let n = file.read_at(&mut buf, offset)?;
            let Some(read) = buf.get(..n).filter(|r| !r.is_empty()) else {
                break;
            };
            sha2::Digest::update(&mut hasher, read);
            offset += n as u64;
        }
        let got = hex::encode(sha2::Digest::finalize(hasher));
        if FileIdentity::of(&file)? != identity {
            return Ok(Err(Mismatch::ChangedWhileVerified));
        }
        if got != expected || offset != identity.size {
            return Ok(Err(Mismatch::Blob { size: offset, got }));
        }
        Ok(Ok(()))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    match &verdict {
        Ok(()) => state.verified.remember(&manifest.id, identity, began),
        Err(_) => state.verified.forget(&manifest.id),
    }
    Ok(verdict)
}

/// Hashes a bucket's blob whole; `Ok(Err(why))` if it does not match the manifest.
async fn hash_bucket_blob(
    state: &Shared,
    manifest: &Manifest,
) -> Result<Result<(), Mismatch>, ApiError> {
    let mut reader = state
        .store
        .blob(&manifest.id, 0, manifest.sealed.size)
        .await?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        use tokio::io::AsyncReadExt;
        let n = reader.read(&mut buf).await.map_err(ApiError::internal)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        sha2::Digest::update(&mut hasher, buf.get(..n).unwrap_or_default());
    }
    let got = hex::encode(sha2::Digest::finalize(hasher));
    if got != manifest.sealed.sha256 || total != manifest.sealed.size {
        return Ok(Err(Mismatch::Blob { size: total, got }));
    }
    Ok(Ok(()))
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
pub struct ReasonQuery {
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
pub struct AuditQuery {
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
