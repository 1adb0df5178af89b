//! Counters exposed at `/metrics` in the Prometheus text format, and the server's health
//! transitions (logged once per change).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Downloads started.
    pub downloads: AtomicU64,
    /// Bytes promised by started downloads.
    pub download_bytes: AtomicU64,
    /// Requests refused because the audit log could not record them.
    pub audit_failures: AtomicU64,
    /// Requests denied by policy or authentication.
    pub denied: AtomicU64,
    /// Records deleted through the API.
    pub deletions: AtomicU64,
    /// Records deleted by retention.
    pub retention_deletions: AtomicU64,
    /// TLS handshakes that failed (refused client certificate, protocol error, timeout).
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed for idling (no request head in time, or no traffic).
    pub connections_timed_out: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections closed at once because their address had `max_connections_per_address` open.
    pub connections_refused_per_address: AtomicU64,
    /// Idle connections closed to make room for a newcomer at `max_connections`.
    pub connections_evicted: AtomicU64,
    /// Connections closed because a download on them moved nothing within `stall_timeout`.
    pub downloads_stalled: AtomicU64,
    /// Requests refused (429) because their identity had `max_requests_per_identity` in progress.
    pub requests_limited: AtomicU64,
    /// Downloads refused (429) at `max_downloads_per_identity` or `max_downloads`.
    pub downloads_limited: AtomicU64,
    /// Downloads that ended before their last byte (client gone, stalled, cut off).
    pub downloads_incomplete: AtomicU64,
    /// Failed authentications counted into a per-source summary instead of an event each.
    pub auth_failures_folded: AtomicU64,
    /// Failed authentications answered 429 (per-source or overall limit).
    pub auth_failures_limited: AtomicU64,
    /// Downloads cut off because the blob's bytes did not match the signed digest.
    pub integrity_failures: AtomicU64,
    /// Downloads whose bytes were hashed while they streamed (full downloads of a blob not
    /// verified since it last changed, and every full download from a bucket).
    pub downloads_hashed: AtomicU64,
    /// Downloads checked by the identity of a local blob verified since it last changed
    /// (full downloads of such a blob, and ranges).
    pub downloads_identity_checked: AtomicU64,
    health: Mutex<BTreeMap<&'static str, bool>>,
}

impl Metrics {
    /// Counts one request on `route` answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_owned(), status)).or_default() += 1;
    }

    /// Notes the health of one part; a change is logged (once, not on every probe).
    pub fn note_health(&self, part: &'static str, error: Option<&dyn std::error::Error>) {
        let mut map = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let was_ok = map.insert(part, error.is_none()).unwrap_or(true);
        match error {
            Some(e) if was_ok => tracing::warn!(part, error = %e, "health: unavailable"),
            None if !was_ok => tracing::info!(part, "health: ok again"),
            _ => {}
        }
    }

    /// Renders every metric; `records` is the current record count, `head` the audit log's
    /// latest signed head (size, hash).
    pub fn render(&self, records: u64, head: Option<(u64, String)>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ckvault_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE ckvault_http_requests_total counter");
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "ckvault_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        for (name, help, value) in [
            (
                "ckvault_downloads_total",
                "Downloads started.",
                &self.downloads,
            ),
            (
                "ckvault_download_bytes_total",
                "Bytes of sealed blobs sent or being sent.",
                &self.download_bytes,
            ),
            (
                "ckvault_audit_failures_total",
                "Requests refused because the audit log could not record them.",
                &self.audit_failures,
            ),
            (
                "ckvault_denied_total",
                "Requests refused by authentication or policy.",
                &self.denied,
            ),
            (
                "ckvault_deletions_total",
                "Records deleted through the API.",
                &self.deletions,
            ),
            (
                "ckvault_retention_deletions_total",
                "Records deleted by retention.",
                &self.retention_deletions,
            ),
            (
                "ckvault_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (refused client certificates among them).",
                &self.tls_handshake_failures,
            ),
            (
                "ckvault_connections_refused_total",
                "Connections closed at once because max_connections were open.",
                &self.connections_refused,
            ),
            (
                "ckvault_connections_timed_out_total",
                "Connections closed for idling (request head or traffic too slow).",
                &self.connections_timed_out,
            ),
            (
                "ckvault_connections_refused_per_address_total",
                "Connections closed at once because their address had max_connections_per_address open.",
                &self.connections_refused_per_address,
            ),
            (
                "ckvault_connections_evicted_total",
                "Idle connections closed to make room for a new one at max_connections.",
                &self.connections_evicted,
            ),
            (
                "ckvault_downloads_stalled_total",
                "Connections closed because a download on them moved no byte within stall_timeout.",
                &self.downloads_stalled,
            ),
            (
                "ckvault_requests_limited_total",
                "Requests refused (429) at max_requests_per_identity.",
                &self.requests_limited,
            ),
            (
                "ckvault_downloads_limited_total",
                "Downloads refused (429) at max_downloads_per_identity or max_downloads.",
                &self.downloads_limited,
            ),
            (
                "ckvault_downloads_incomplete_total",
                "Downloads that ended before their last byte.",
                &self.downloads_incomplete,
            ),
            (
                "ckvault_auth_failures_folded_total",
                "Failed authentications audited as part of a per-source count instead of one by one.",
                &self.auth_failures_folded,
            ),
            (
                "ckvault_auth_failures_limited_total",
                "Failed authentications answered 429 (max_auth_failures_per_source, max_auth_failures).",
                &self.auth_failures_limited,
            ),
            (
                "ckvault_integrity_failures_total",
                "Downloads cut off because the blob did not match its signed digest.",
                &self.integrity_failures,
            ),
            (
                "ckvault_downloads_hashed_total",
                "Downloads whose bytes were hashed against the signed digest while they streamed.",
                &self.downloads_hashed,
            ),
            (
                "ckvault_downloads_identity_checked_total",
                "Downloads of a local blob verified since it last changed, checked by its file identity.",
                &self.downloads_identity_checked,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ckvault_records Records in the store.\n# TYPE ckvault_records gauge\nckvault_records {records}"
        );
        let _ = writeln!(
            out,
            "# HELP ckvault_connections_open Connections open now.\n# TYPE ckvault_connections_open gauge\nckvault_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        if let Some((size, hash)) = head {
            let _ = writeln!(
                out,
                "# HELP ckvault_audit_head Latest signed audit head (pin it: ckvault audit verify --expect-head SIZE:HASH).\n# TYPE ckvault_audit_head gauge\nckvault_audit_head{{size=\"{size}\",hash=\"{hash}\"}} {size}"
            );
        }
        out
    }
}
