//! Downloads (`GET /v1/checkpoints/{id}/archive`): the HTTP side only (ranges and
//! `If-Range`, the per-identity slot, headers, body framing and metrics) over
//! [`crate::vault::download`], which checks, audits and chooses the body's check.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;

use super::super::range::{self, RangeDecision};
use super::super::request::{ApiError, Caller, event, record};
use super::super::stream::{FileCheck, Mismatch, Verify, blob_body, file_body, watched_body};
use super::access::{Rec, Shared, authorized_manifest, integrity_error, vault};
use crate::audit::{self, Outcome};
use crate::policy::Action;
use crate::vault::download::{self, Download, DownloadError, Span};

/// Query of a download.
#[derive(Debug, Deserialize)]
pub(crate) struct DownloadQuery {
    purpose: Option<String>,
}

pub(super) async fn download(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
    conn: Option<axum::Extension<super::super::tls::ConnInfo>>,
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
            return Err(super::super::request::too_many(
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
    slot: super::super::limits::Slot<String>,
    conn_downloads: Option<Arc<super::super::limits::Downloads>>,
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
