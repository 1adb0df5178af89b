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
//!
//! By job, each handler an adapter over the vault's use cases: `records` (listing, a
//! manifest, its signing key), `download`, `custody` (delete, hold, release), `audit_log`
//! (reading the log), `service` (health, metrics, OpenAPI, unknown paths), on what
//! `access` shares (the audited access check, integrity refusals).

mod access;
mod audit_log;
mod custody;
mod download;
mod records;
mod service;

use axum::Router;
use axum::routing::{get, put};

use self::access::Shared;

/// Builds the router.
pub(crate) fn router(state: Shared) -> Router {
    // An alert body is capped at `[alerts] max_body` (413 past it).
    let alert_body = axum::extract::DefaultBodyLimit::max(
        state.receivers.as_ref().map_or(1 << 20, |r| r.max_body),
    );
    Router::new()
        .route("/healthz", get(service::healthz))
        .route("/metrics", get(service::metrics))
        .route("/v1/openapi.json", get(service::openapi))
        .route("/v1/checkpoints", get(records::list))
        .route(
            "/v1/checkpoints/{id}",
            get(records::show).delete(custody::delete),
        )
        .route("/v1/checkpoints/{id}/archive", get(download::download))
        .route(
            "/v1/checkpoints/{id}/signing-key",
            get(records::signing_key),
        )
        .route(
            "/v1/checkpoints/{id}/hold",
            put(custody::hold).delete(custody::release),
        )
        .route("/v1/audit", get(audit_log::audit))
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
            service::count_requests,
        ))
        .fallback(service::unknown)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::request::audit_every_request,
        ))
        .with_state(state)
}
