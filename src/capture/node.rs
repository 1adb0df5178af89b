//! The node's own triggers, run by the node agent (`ckvault proxy`) beside its CRI proxy,
//! through the same use case as the alerts ([`super::incident`]: the gate, the checkpoint,
//! the trigger in the signed manifest, the notices):
//!
//! * **Before a stop** (`on_stop = true`): the relay intercepts the kubelet's
//!   `StopContainer` / `StopPodSandbox` ([`super::relay`]) and hands it to
//!   [`NodeTriggers::before_stop`]: the running containers it stops are looked up in the
//!   runtime; those a rule selects are checkpointed (each through the gate) within the
//!   call's budget, then the stop is issued again through ckvault's own CRI client and its
//!   answer is the kubelet's. The budget is the call's own deadline (`grpc-timeout`) less
//!   the grace period the stop still needs (`timeout`) less `[capture] stop_margin`
//!   (`[capture] stop_budget` when the call has no deadline). A capture not sealed within
//!   it does not hold the stop: the stop goes on and the miss is a `capture-missed` audit
//!   event. A stop no rule selects is issued at once.
//! * **Schedule** (`every`) and **threshold** (`memory_above` / `memory_share` of the
//!   container's limit, `sustained`): every `[capture] poll_interval` the running
//!   containers are listed, selected by the rules and (for thresholds) their memory working
//!   set read from CRI `ContainerStats`; what is due is passed to the gate.
//!
//! Deduplicated schedule and threshold captures (a threshold that stays crossed, a
//! schedule shorter than the cooldown) are counted in the metrics, not audited: a
//! crossed threshold is seen at every poll. Every other refusal, and every capture, is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::MAX_DEADLINE;
use super::cri::{
    self, CONTAINER_RUNNING, Container, ContainerFilter, ContainerStateValue,
    ContainerStatsRequest, ContainerStatusRequest, GrpcStatus, LABEL_CONTAINER, LABEL_NAMESPACE,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxFilter, RuntimeClient,
    StopContainerRequest, StopPodSandboxRequest,
};
use super::incident::{CaptureState, CaptureStatus, Incidents, new_capture_id};
use super::method::Stop;
use super::relay::{Answer, Call, Intercepted};
use super::resolve::Running;
use super::rules::{self, Kind, Subject, TriggerRule};
use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::manifest::{Trigger, TriggerKind};

/// How long one lookup in the runtime may take.
const LOOKUP: Duration = Duration::from_secs(10);
/// The stop's own deadline when the kubelet's call carries none: its grace period and
/// this (the kubelet's default `--runtime-request-timeout`).
const STOP_CALL: Duration = Duration::from_secs(120);
/// Who asks, as the manifest's trigger and the audit log name the node's own triggers.
const SYSTEM: &str = "system";

/// The node's own triggers (one per node agent; cheap to share behind an `Arc`).
pub(crate) struct NodeTriggers {
    incidents: Incidents,
    runtime: RuntimeClient,
    stop_budget: Duration,
    stop_margin: Duration,
    poll: Duration,
    state: Mutex<PollState>,
}

/// What the polls remember between them.
#[derive(Default)]
struct PollState {
    /// (rule, container) -> when the schedule is next due.
    due: HashMap<(String, String), Instant>,
    /// (rule, container) -> since when its threshold has been crossed.
    above: HashMap<(String, String), Instant>,
    /// Containers a share rule could not weigh (no limit reported): logged once each.
    no_limit: HashSet<String>,
    /// The last poll failed (logged once until one succeeds).
    failing: bool,
}

/// Why the node's triggers could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeTriggersError {
    /// The use case has no runtime to checkpoint with.
    #[error("the node's own triggers need the runtime's socket ([cri] upstream or --runtime)")]
    NoRuntime,
}

impl NodeTriggers {
    /// The node's triggers over `incidents` (its rules, gate and runtime), with
    /// `[capture]`'s budget, margin and poll interval.
    pub(crate) fn new(
        incidents: Incidents,
        capture: &crate::config::CaptureConfig,
    ) -> Result<Self, NodeTriggersError> {
        let runtime = incidents
            .runtime()
            .cloned()
            .ok_or(NodeTriggersError::NoRuntime)?;
        Ok(Self {
            incidents,
            runtime,
            stop_budget: capture.stop_budget.min(MAX_DEADLINE),
            stop_margin: capture.stop_margin,
            poll: capture.poll_interval,
            state: Mutex::default(),
        })
    }

    /// The use case its captures go through (its counters are the proxy's `/metrics` too).
    pub(crate) fn incidents(&self) -> &Incidents {
        &self.incidents
    }

    /// Whether a rule captures before a stop (the relay intercepts stops only then).
    pub(crate) fn captures_before_stop(&self) -> bool {
        self.incidents
            .rules()
            .iter()
            .any(|r| Kind::of(r) == Kind::BeforeStop)
    }

    /// Whether a schedule or threshold rule is configured (the poll runs only then).
    pub(crate) fn polls(&self) -> bool {
        self.incidents
            .rules()
            .iter()
            .any(|r| matches!(Kind::of(r), Kind::Schedule(_) | Kind::Threshold { .. }))
    }

    /// The time a capture before a stop may take: the call's deadline less the grace
    /// period less the margin, or `[capture] stop_budget` without a deadline.
    pub(crate) fn budget(&self, deadline: Option<Duration>, grace: Duration) -> Duration {
        budget(deadline, grace, self.stop_margin, self.stop_budget)
    }

    /// Answers an intercepted stop: captures what a rule selects within the budget, then
    /// issues the stop to the runtime and answers with the runtime's answer.
    pub(crate) async fn before_stop(&self, call: Intercepted) -> Answer {
        let started = Instant::now();
        let deadline = call
            .grpc_timeout
            .as_deref()
            .and_then(super::method::parse_grpc_timeout)
            .map(|d| d.min(MAX_DEADLINE));
        match call.call {
            Call::Stop(Stop::Container) => {
                let req: StopContainerRequest = cri::unframe(call.body, 1 << 20)?;
                let grace =
                    Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0)).min(MAX_DEADLINE);
                let budget = self.budget(deadline, grace);
                let filter = ContainerFilter {
                    id: req.container_id.clone(),
                    ..Default::default()
                };
                self.capture_before("StopContainer", filter, grace, budget)
                    .await;
                let left = left(deadline, started, grace);
                self.runtime
                    .stop_container(req, left)
                    .await
                    .map(|r| cri::frame(&r))
            }
            Call::Stop(Stop::PodSandbox) => {
                let req: StopPodSandboxRequest = cri::unframe(call.body, 1 << 20)?;
                // The kubelet stops the pod's containers with their grace periods first;
                // what still runs now is stopped at once.
                let budget = self.budget(deadline, Duration::ZERO);
                let filter = ContainerFilter {
                    pod_sandbox_id: req.pod_sandbox_id.clone(),
                    ..Default::default()
                };
                self.capture_before("StopPodSandbox", filter, Duration::ZERO, budget)
                    .await;
                let left = left(deadline, started, Duration::ZERO);
                self.runtime
                    .stop_pod_sandbox(req, left)
                    .await
                    .map(|r| cri::frame(&r))
            }
            Call::Checkpoint => Err(GrpcStatus::new(
                tonic::Code::Internal,
                "ckvault: a checkpoint call reached the stop handler",
            )),
        }
    }

    /// Captures the running containers `filter` names that a rule selects, each within
    /// `budget` (a miss is audited; nothing here fails the stop).
    async fn capture_before(
        &self,
        method: &str,
        filter: ContainerFilter,
        grace: Duration,
        budget: Duration,
    ) {
        let until = Instant::now() + budget;
        let filter = ContainerFilter {
            state: Some(ContainerStateValue {
                state: CONTAINER_RUNNING,
            }),
            ..filter
        };
        let listed = self
            .runtime
            .list_containers(
                ListContainersRequest {
                    filter: Some(filter),
                },
                budget.min(LOOKUP),
            )
            .await;
        let containers = match listed {
            Ok(l) => l.containers,
            Err(e) => {
                tracing::warn!(
                    method,
                    error = %cri::redact_paths(&e.message),
                    "cannot list the containers a stop ends; it goes on without a capture"
                );
                return;
            }
        };
        let rules = self.incidents.rules();
        let selected: Vec<(Running, TriggerRule)> = {
            let labels = self
                .pod_labels(
                    rules,
                    &containers,
                    until.saturating_duration_since(Instant::now()),
                )
                .await;
            containers
                .iter()
                .filter_map(|c| {
                    let empty = HashMap::new();
                    let pod_labels = labels.get(&c.pod_sandbox_id).unwrap_or(&empty);
                    let rule = rules::selecting(
                        rules,
                        |k| k == Kind::BeforeStop,
                        &subject(c, pod_labels),
                    )?;
                    Some((Running::of(c), rule.clone()))
                })
                .collect()
        };
        let summary = format!(
            "{method} with a grace period of {} s; {:.1} s to capture before it",
            grace.as_secs(),
            budget.as_secs_f64()
        );
        let captures = selected.into_iter().map(|(running, rule)| {
            let summary = summary.clone();
            async move {
                let left = until.saturating_duration_since(Instant::now());
                let about = format!(
                    "before {method} of {}/{}/{} (rule {})",
                    running.namespace,
                    running.pod,
                    running.container,
                    rule.name
                );
                let Some((id, handle)) = start(
                    &self.incidents,
                    running,
                    rule,
                    TriggerKind::BeforeStop,
                    summary,
                    left,
                    true,
                )
                .await
                else {
                    return;
                };
                if tokio::time::timeout(left, handle).await.is_err() {
                    let ev = EventInput::new(
                        &Actor::named(SYSTEM),
                        Action::CaptureMissed,
                        Outcome::Error,
                    )
                    .with_detail(format!(
                        "{id}: {about}: not sealed within its budget of {:.1} s; the stop went on (the checkpoint, if the runtime completes it, is still sealed)",
                        left.as_secs_f64()
                    ));
                    if let Err(e) = self.incidents.record(ev).await {
                        tracing::error!(error = %e, capture = %id, "cannot audit a missed capture");
                    }
                    tracing::warn!(capture = %id, "{about}: missed its budget; the stop goes on");
                }
            }
        });
        futures_util::future::join_all(captures).await;
    }

    /// The labels of the pod sandboxes of `containers`, when a rule asks for pod labels.
    async fn pod_labels(
        &self,
        rules: &[TriggerRule],
        containers: &[Container],
        within: Duration,
    ) -> HashMap<String, HashMap<String, String>> {
        let mut out = HashMap::new();
        if containers.is_empty() || rules.iter().all(|r| r.pod_labels.is_empty()) {
            return out;
        }
        let ids: HashSet<&str> = containers
            .iter()
            .map(|c| c.pod_sandbox_id.as_str())
            .collect();
        // One sandbox: asked by ID; more (a poll): all of them at once.
        let filter = match ids.iter().next() {
            Some(id) if ids.len() == 1 => Some(PodSandboxFilter {
                id: (*id).to_owned(),
                ..Default::default()
            }),
            _ => None,
        };
        match self
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter }, within.min(LOOKUP))
            .await
        {
            Ok(l) => {
                for s in l.items {
                    if ids.contains(s.id.as_str()) {
                        out.insert(s.id, s.labels);
                    }
                }
            }
            Err(e) => tracing::warn!(
                error = %cri::redact_paths(&e.message),
                "cannot read the pods' labels; rules with pod_labels select nothing now"
            ),
        }
        out
    }

    /// Runs the schedule and threshold rules every `[capture] poll_interval`, for ever.
    pub(crate) async fn run_polls(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.poll_once().await;
        }
    }

    /// One poll: lists the running containers and starts what is due.
    pub(crate) async fn poll_once(&self) {
        let containers = match super::resolve::all_running(&self.runtime).await {
            Ok(c) => {
                let mut st = self.lock();
                if st.failing {
                    tracing::info!(
                        "the runtime answers again; schedule and threshold rules resume"
                    );
                    st.failing = false;
                }
                c
            }
            Err(e) => {
                let mut st = self.lock();
                if !st.failing {
                    tracing::warn!(
                        error = %cri::redact_paths(&e.message),
                        "cannot list the running containers; schedule and threshold rules wait for the runtime"
                    );
                    st.failing = true;
                }
                return;
            }
        };
        let rules = self.incidents.rules();
        let labels = self.pod_labels(rules, &containers, LOOKUP).await;
        let now = Instant::now();
        let mut seen = HashSet::new();
        for c in &containers {
            let empty = HashMap::new();
            let subject = subject(c, labels.get(&c.pod_sandbox_id).unwrap_or(&empty));
            if let Some(rule) =
                rules::selecting(rules, |k| matches!(k, Kind::Schedule(_)), &subject)
                && let Kind::Schedule(every) = Kind::of(rule)
            {
                let key = (rule.name.clone(), c.id.clone());
                seen.insert(key.clone());
                let due = {
                    let mut st = self.lock();
                    let next = *st.due.entry(key.clone()).or_insert(now + every);
                    if next <= now {
                        st.due.insert(key, now + every);
                    }
                    next <= now
                };
                if due {
                    let summary = format!("every {} s", every.as_secs());
                    self.start_detached(c, rule, TriggerKind::Schedule, summary);
                }
            }
            if let Some(rule) =
                rules::selecting(rules, |k| matches!(k, Kind::Threshold { .. }), &subject)
                && let Kind::Threshold {
                    above,
                    share,
                    sustained,
                } = Kind::of(rule)
            {
                let key = (rule.name.clone(), c.id.clone());
                seen.insert(key.clone());
                let Some((limit, what)) = self.threshold(c, above, share).await else {
                    self.lock().above.remove(&key);
                    continue;
                };
                let Some(ws) = self.working_set(&c.id).await else {
                    continue;
                };
                if ws <= limit {
                    self.lock().above.remove(&key);
                    continue;
                }
                let since = *self.lock().above.entry(key).or_insert(now);
                let held = now.duration_since(since);
                if held >= sustained.unwrap_or_default() {
                    let summary = format!(
                        "memory working set {} above {what} for {} s",
                        crate::units::ByteSize(ws),
                        held.as_secs()
                    );
                    self.start_detached(c, rule, TriggerKind::Threshold, summary);
                }
            }
        }
        // Containers that stopped are forgotten.
        let mut st = self.lock();
        st.due.retain(|k, _| seen.contains(k));
        st.above.retain(|k, _| seen.contains(k));
    }

    /// The byte limit of a threshold rule for container `c`, and how it is said; `None`
    /// when a share rule cannot weigh it (no memory limit reported: logged once).
    async fn threshold(
        &self,
        c: &Container,
        above: Option<u64>,
        share: Option<f64>,
    ) -> Option<(u64, String)> {
        if let Some(bytes) = above {
            return Some((bytes, crate::units::ByteSize(bytes).to_string()));
        }
        let share = share?;
        let limit = self
            .runtime
            .container_status(
                ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                },
                LOOKUP,
            )
            .await
            .ok()
            .and_then(|s| s.status)
            .and_then(|s| s.resources)
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes)
            .and_then(|b| u64::try_from(b).ok())
            .filter(|&b| b > 0);
        match limit {
            Some(limit) => {
                let bytes = (limit as f64 * share) as u64;
                Some((
                    bytes,
                    format!(
                        "{:.0}% of its {} limit",
                        share * 100.0,
                        crate::units::ByteSize(limit)
                    ),
                ))
            }
            None => {
                let first = self.lock().no_limit.insert(c.id.clone());
                if first {
                    let r = Running::of(c);
                    tracing::info!(
                        container = %format!("{}/{}/{}", r.namespace, r.pod, r.container),
                        "the runtime reports no memory limit for this container: memory_share rules do not apply to it"
                    );
                }
                None
            }
        }
    }

    /// The container's memory working set (CRI `ContainerStats`), if the runtime says.
    async fn working_set(&self, id: &str) -> Option<u64> {
        self.runtime
            .container_stats(
                ContainerStatsRequest {
                    container_id: id.to_owned(),
                },
                LOOKUP,
            )
            .await
            .ok()
            .and_then(|r| r.stats)
            .and_then(|s| s.memory)
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value)
    }

    /// Starts a schedule or threshold capture (the gate decides; nothing waits for it).
    fn start_detached(
        &self,
        c: &Container,
        rule: &TriggerRule,
        kind: TriggerKind,
        summary: String,
    ) {
        let running = Running::of(c);
        let rule = rule.clone();
        let timeout = self.incidents.capture_timeout();
        let incidents = self.incidents.clone();
        tokio::spawn(async move {
            start(&incidents, running, rule, kind, summary, timeout, false).await;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Admits one capture through the gate and starts it: its ID and task, or `None` when
/// the gate refused it (audited, except a duplicate of a schedule or threshold).
async fn start(
    incidents: &Incidents,
    running: Running,
    rule: TriggerRule,
    kind: TriggerKind,
    summary: String,
    deadline: Duration,
    audit_duplicates: bool,
) -> Option<(String, tokio::task::JoinHandle<()>)> {
    use std::sync::atomic::Ordering::Relaxed;
    let id = new_capture_id();
    let mut trigger = Trigger::new(kind.clone(), SYSTEM);
    trigger.rule = Some(rule.name.clone());
    trigger.summary = Some(summary);
    let trigger = trigger.bounded();
    let about = format!(
        "{id}: {kind} rule {} for {}/{}/{}",
        rule.name, running.namespace, running.pod, running.container
    );
    let ticket = match incidents.admit(&id, &running, &rule, None) {
        Ok(t) => t,
        Err(not) => {
            incidents.metrics().refuse(not.kind);
            let duplicate = not.state == CaptureState::Deduplicated;
            if duplicate && !audit_duplicates {
                tracing::debug!("{about}: {}", not.reason);
                return None;
            }
            let stop = if kind == TriggerKind::BeforeStop {
                "; the stop goes on"
            } else {
                ""
            };
            let ev = EventInput::new(&Actor::named(SYSTEM), Action::Capture, not.outcome)
                .with_namespace(Some(running.namespace.clone()))
                .with_detail(format!("{about}: {}{stop}", not.reason));
            if let Err(e) = incidents.record(ev).await {
                tracing::error!(error = %e, capture = %id, "cannot audit a refused capture");
            }
            return None;
        }
    };
    incidents.metrics().admitted.fetch_add(1, Relaxed);
    tracing::info!("{about}: capturing");
    incidents.captures().put(CaptureStatus {
        id: id.clone(),
        state: CaptureState::Queued,
        reason: None,
        record: None,
        namespace: Some(running.namespace.clone()),
        pod: Some(running.pod.clone()),
        container: Some(running.container.clone()),
        container_id: Some(running.id.clone()),
        node: None,
        expires_at: None,
        trigger: trigger.clone(),
        updated_at: crate::node::now_rfc3339(),
    });
    let handle = incidents.spawn_run_within(id.clone(), ticket, running, rule, trigger, deadline);
    Some((id, handle))
}

/// The runtime's container as the rules see it.
fn subject<'a>(c: &'a Container, pod_labels: &'a HashMap<String, String>) -> Subject<'a> {
    let label = |k: &str| c.labels.get(k).map(String::as_str);
    Subject {
        namespace: label(LABEL_NAMESPACE).unwrap_or(""),
        container: label(LABEL_CONTAINER)
            .or(c.metadata.as_ref().map(|m| m.name.as_str()))
            .unwrap_or(""),
        pod_labels,
    }
}

/// A capture before a stop's budget: `deadline` less `grace` less `margin`, or `default`
/// without a deadline (at most [`MAX_DEADLINE`]).
fn budget(
    deadline: Option<Duration>,
    grace: Duration,
    margin: Duration,
    default: Duration,
) -> Duration {
    match deadline {
        Some(d) => d.saturating_sub(grace).saturating_sub(margin),
        None => default,
    }
    .min(MAX_DEADLINE)
}

/// What is left of the stop call's deadline for the stop itself (its grace period and
/// [`STOP_CALL`] without one).
fn left(deadline: Option<Duration>, started: Instant, grace: Duration) -> Duration {
    match deadline {
        Some(d) => d.saturating_sub(started.elapsed()),
        None => grace + STOP_CALL,
    }
    .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_deadline_less_the_grace_period_less_the_margin() {
        let s = Duration::from_secs;
        // The kubelet's defaults: grace 30 s, deadline grace + 2 min.
        assert_eq!(budget(Some(s(150)), s(30), s(2), s(30)), s(118));
        // A deadline the grace period alone uses up leaves nothing to capture.
        assert_eq!(budget(Some(s(10)), s(30), s(2), s(30)), Duration::ZERO);
        assert_eq!(budget(Some(s(31)), s(30), s(2), s(30)), Duration::ZERO);
        // No deadline: the configured budget; never past the checkpointer's bound.
        assert_eq!(budget(None, s(30), s(2), s(45)), s(45));
        assert_eq!(budget(Some(s(1 << 40)), s(0), s(2), s(30)), MAX_DEADLINE);
        // The stop keeps what is left of its deadline, at least a second.
        let started = Instant::now();
        assert!(left(Some(s(60)), started, s(30)) > s(59));
        assert_eq!(left(None, started, s(30)), s(150));
        assert_eq!(left(Some(Duration::ZERO), started, s(30)), s(1));
    }
}
