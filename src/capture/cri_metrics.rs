//! The CRI proxy's counters, and their Prometheus text at `ckvault proxy --metrics ADDR`
//! (`[cri] metrics_listen`): connections and calls relayed, calls intercepted,
//! checkpoints sealed or failed, and what the relay refused (non-canonical method paths,
//! intercepted requests past its limits). Counts only: no names, IDs or paths.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The proxy's counters (one set per process, shared by its connections).
#[derive(Debug, Default)]
pub(crate) struct CriMetrics {
    /// Client connections accepted.
    pub(crate) connections: AtomicU64,
    /// Client connections open now.
    pub(crate) connections_open: AtomicU64,
    /// Client connections closed at once because the runtime could not be reached.
    pub(crate) runtime_unreachable: AtomicU64,
    /// Request streams the clients opened (relayed, intercepted or refused).
    pub(crate) calls: AtomicU64,
    /// CheckpointContainer calls intercepted (answered by ckvault, not the runtime).
    pub(crate) checkpoints_intercepted: AtomicU64,
    /// Intercepted checkpoints sealed into records.
    pub(crate) checkpoints_sealed: AtomicU64,
    /// Intercepted checkpoints that failed (the runtime's error, sealing, a full spool).
    pub(crate) checkpoints_failed: AtomicU64,
    /// StopContainer / StopPodSandbox calls held for a capture before the stop.
    pub(crate) stops_held: AtomicU64,
    /// Stops relayed without a capture because the limits were reached.
    pub(crate) stops_past_limits: AtomicU64,
    /// Requests refused for a method path the runtime might route otherwise (UNIMPLEMENTED).
    pub(crate) paths_refused: AtomicU64,
    /// CheckpointContainer requests refused past `max_intercepted` or
    /// `max_pending_per_connection` (RESOURCE_EXHAUSTED).
    pub(crate) intercepts_refused: AtomicU64,
    /// Intercepted requests that did not arrive whole in time (DEADLINE_EXCEEDED).
    pub(crate) intercepts_expired: AtomicU64,
}

impl CriMetrics {
    /// The counters in Prometheus' text format.
    pub(crate) fn render(&self, out: &mut String) {
        let gauges = [(
            "ckvault_cri_connections_open",
            "Client connections the CRI proxy has open.",
            &self.connections_open,
        )];
        let counters = [
            (
                "ckvault_cri_connections_total",
                "Client connections the CRI proxy accepted.",
                &self.connections,
            ),
            (
                "ckvault_cri_runtime_unreachable_total",
                "Client connections closed because the runtime's socket could not be reached.",
                &self.runtime_unreachable,
            ),
            (
                "ckvault_cri_calls_total",
                "Request streams opened by clients (relayed, intercepted or refused).",
                &self.calls,
            ),
            (
                "ckvault_cri_checkpoints_intercepted_total",
                "CheckpointContainer calls intercepted and answered by ckvault.",
                &self.checkpoints_intercepted,
            ),
            (
                "ckvault_cri_checkpoints_sealed_total",
                "Intercepted checkpoints sealed into records.",
                &self.checkpoints_sealed,
            ),
            (
                "ckvault_cri_checkpoints_failed_total",
                "Intercepted checkpoints that failed (runtime error, sealing, full spool).",
                &self.checkpoints_failed,
            ),
            (
                "ckvault_cri_stops_held_total",
                "Stop calls held for a capture before the stop.",
                &self.stops_held,
            ),
            (
                "ckvault_cri_stops_past_limits_total",
                "Stop calls relayed without a capture because the limits were reached.",
                &self.stops_past_limits,
            ),
            (
                "ckvault_cri_paths_refused_total",
                "Requests refused for a non-canonical method path (never forwarded).",
                &self.paths_refused,
            ),
            (
                "ckvault_cri_intercepts_refused_total",
                "CheckpointContainer requests refused past max_intercepted or max_pending_per_connection.",
                &self.intercepts_refused,
            ),
            (
                "ckvault_cri_intercepts_expired_total",
                "Intercepted requests that did not arrive whole in time.",
                &self.intercepts_expired,
            ),
        ];
        for (kind, list) in [("gauge", &gauges[..]), ("counter", &counters[..])] {
            for (name, help, value) in list {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name} {}", value.load(Relaxed));
            }
        }
    }
}

/// Adds one to `counter`.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Counts an open connection while it lives.
pub(crate) struct OpenConnection<'a>(&'a CriMetrics);

impl<'a> OpenConnection<'a> {
    /// Counts a connection accepted and open.
    pub(crate) fn new(metrics: &'a CriMetrics) -> Self {
        count(&metrics.connections);
        count(&metrics.connections_open);
        Self(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_rendered_once_with_its_type() {
        let m = CriMetrics::default();
        {
            let _open = OpenConnection::new(&m);
            count(&m.paths_refused);
            let mut out = String::new();
            m.render(&mut out);
            assert!(out.contains("\nckvault_cri_connections_open 1\n"), "{out}");
            assert!(
                out.contains("\nckvault_cri_paths_refused_total 1\n"),
                "{out}"
            );
            assert!(out.contains("# TYPE ckvault_cri_connections_open gauge\n"));
            assert_eq!(out.matches("# TYPE ").count(), 12, "{out}");
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\nckvault_cri_connections_open 0\n"), "{out}");
        assert!(out.contains("\nckvault_cri_connections_total 1\n"), "{out}");
    }
}
