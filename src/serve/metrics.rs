//! Counters exposed at `/metrics` in the Prometheus text format.

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
}

impl Metrics {
    /// Counts one request on `route` answered with `status`.
    pub fn request(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_owned(), status)).or_default() += 1;
    }

    /// Renders every metric; `records` is the current record count.
    pub fn render(&self, records: u64) -> String {
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
        out
    }
}
