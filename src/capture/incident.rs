//! Capture on an alert: the use case behind the alert receivers (and the background half
//! of the node's own triggers, [`super::node`]). One alert goes through, in order:
//!
//! 1. firing only (a resolved alert captures nothing);
//! 2. a `[[trigger]]` rule must match it (none configured: nothing captures);
//! 3. a cheap deduplication check on the alert's key, before the runtime is asked;
//! 4. the container is resolved through the runtime ([`super::resolve`]), never trusted
//!    from the alert: a namespace the alert names must be the one the runtime reports;
//! 5. the caller must hold `checkpoint` on that namespace;
//! 6. the [`super::gate`] admits it (deduplication per container, budgets, waiters).
//!
//! An alert for a container this process does not run goes instead to its [`Forwarder`],
//! when it has one (capture across a fleet implements it; this module does not know it).
//!
//! The receiver answers then; the capture goes on in the background: a slot, the disk and
//! byte checks against the container's working set (CRI `ContainerStats`), the checkpoint
//! through [`super::checkpoint::Checkpointer`] with the trigger in the signed manifest,
//! a hold when the rule asks for one, and the notices. Every decision is an audit event
//! naming the alert; every state is kept in [`Captures`] for `GET /v1/captures/ID`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::alert::{Alert, AlertSource};
use super::checkpoint::{CheckpointRequest, Checkpointer};
use super::cri::ContainerStatsRequest;
use super::gate::{Ask, Gate, Refusal};
use super::notify::{Notice, Notifier};
use super::resolve::{self, ResolveError, Running, Wanted};
use super::rules::{self, TriggerRule};
use crate::audit::{Action, Actor, AuditError, AuditLog, EventInput, Outcome};
use crate::manifest::{SourceKind, Trigger, TriggerKind};
use crate::policy::PolicySet;
use crate::policy::access::Principal;

/// Where a capture stands (`GET /v1/captures/ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum CaptureState {
    /// Admitted; waiting for a slot.
    Queued,
    /// Not taken: the same container or alert was captured within the cooldown.
    Deduplicated,
    /// Not taken (no rule, not allowed, not running, a budget, the disk).
    Refused,
    /// The runtime is checkpointing it.
    Checkpointing,
    /// Sealed: `record` names the record.
    Sealed,
    /// The checkpoint or the seal failed.
    Failed,
    /// Another node runs it: a capture request waits in the bucket for that node
    /// (capture across a fleet, capture/fleet.rs).
    Requested,
    /// The node's agent claimed the request and is capturing it.
    Claimed,
    /// No node claimed the request within `[fleet] request_ttl`.
    Unclaimed,
}

impl CaptureState {
    /// The state's word (as in JSON).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deduplicated => "deduplicated",
            Self::Refused => "refused",
            Self::Checkpointing => "checkpointing",
            Self::Sealed => "sealed",
            Self::Failed => "failed",
            Self::Requested => "requested",
            Self::Claimed => "claimed",
            Self::Unclaimed => "unclaimed",
        }
    }

    /// The state a word names (an outcome read from the bucket).
    pub(crate) fn from_word(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Deduplicated,
            Self::Refused,
            Self::Checkpointing,
            Self::Sealed,
            Self::Failed,
            Self::Requested,
            Self::Claimed,
            Self::Unclaimed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One capture, as `GET /v1/captures/ID` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaptureStatus {
    /// `cap-` and a ULID.
    pub(crate) id: String,
    /// Where it stands.
    pub(crate) state: CaptureState,
    /// Why it was refused or failed, or which capture it repeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// The sealed record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<String>,
    /// The container, once the runtime named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container_id: Option<String>,
    /// The node asked to capture it (a request through the bucket), or that captured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<String>,
    /// A request's expiry (RFC 3339): unclaimed by then, it is answered `unclaimed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<String>,
    /// Why it was asked for.
    pub(crate) trigger: Trigger,
    /// When it last changed (RFC 3339).
    pub(crate) updated_at: String,
}

/// Captures by ID, and their IDs oldest first.
type History = (HashMap<String, CaptureStatus>, VecDeque<String>);

/// The captures this process has taken or refused, the newest `history` of them.
#[derive(Debug, Clone)]
pub(crate) struct Captures {
    inner: Arc<Mutex<History>>,
    history: usize,
}

impl Captures {
    /// Keeps the newest `history` captures.
    pub(crate) fn new(history: usize) -> Self {
        Self {
            inner: Arc::default(),
            history: history.max(1),
        }
    }

    pub(crate) fn put(&self, status: CaptureStatus) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *inner;
        if map.insert(status.id.clone(), status.clone()).is_none() {
            order.push_back(status.id);
        }
        while order.len() > self.history {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut CaptureStatus)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = inner.0.get_mut(id) {
            f(s);
            s.updated_at = crate::node::now_rfc3339();
        }
    }

    /// The capture `id`, if this process still remembers it.
    pub(crate) fn get(&self, id: &str) -> Option<CaptureStatus> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0.get(id).cloned()
    }
}

/// What the receiver answers for one alert.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Taken {
    /// The capture's ID, when one was made (also for a refusal, so it can be looked up).
    pub(crate) capture: String,
    /// Where it stands now.
    pub(crate) state: CaptureState,
    /// Why it was not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// The node asked to capture it (a request through the bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<String>,
}

/// The caller as the use case sees it: who (for the policy) and as the audit log names it.
#[derive(Debug, Clone)]
pub(crate) struct Requester<'a> {
    /// For the policy.
    pub(crate) principal: &'a Principal,
    /// For the audit log.
    pub(crate) actor: &'a Actor,
}

/// Counters `/metrics` shows.
#[derive(Debug, Default)]
pub(crate) struct IncidentMetrics {
    /// Alerts received.
    pub(crate) alerts: std::sync::atomic::AtomicU64,
    /// Captures admitted.
    pub(crate) admitted: std::sync::atomic::AtomicU64,
    /// Refusals by kind.
    pub(crate) refused: Mutex<HashMap<&'static str, u64>>,
    /// Captures sealed.
    pub(crate) sealed: std::sync::atomic::AtomicU64,
    /// Captures failed.
    pub(crate) failed: std::sync::atomic::AtomicU64,
}

impl IncidentMetrics {
    /// Appends the counters in Prometheus' text format.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, v) in [
            (
                "ckvault_alerts_total",
                "Alerts received by the receivers.",
                &self.alerts,
            ),
            (
                "ckvault_captures_admitted_total",
                "Captures the gate admitted.",
                &self.admitted,
            ),
            (
                "ckvault_captures_sealed_total",
                "Captures sealed into records.",
                &self.sealed,
            ),
            (
                "ckvault_captures_failed_total",
                "Captures that failed (runtime or seal).",
                &self.failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP ckvault_capture_refusals_total Alerts not captured, by reason (deduplicated, budgets, disk, no rule, forbidden, ...)."
        );
        let _ = writeln!(out, "# TYPE ckvault_capture_refusals_total counter");
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut kinds: Vec<_> = m.iter().collect();
        kinds.sort();
        for (kind, n) in kinds {
            let _ = writeln!(
                out,
                "ckvault_capture_refusals_total{{reason=\"{kind}\"}} {n}"
            );
        }
    }

    pub(crate) fn refuse(&self, kind: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(kind).or_default() += 1;
    }
}

/// The alert-to-record use case (one per process; cheap to clone).
#[derive(Clone)]
pub(crate) struct Incidents {
    checkpointer: Option<Checkpointer>,
    gate: Gate,
    rules: Arc<Vec<TriggerRule>>,
    captures: Captures,
    notifier: Notifier,
    custody: crate::vault::Custody,
    audit: Arc<AuditLog>,
    capture_timeout: Duration,
    metrics: Arc<IncidentMetrics>,
    folds: Arc<Mutex<HashMap<String, Fold>>>,
    flusher: Arc<std::sync::atomic::AtomicBool>,
    forwarder: Option<Arc<dyn Forwarder>>,
}

/// An alert this process cannot capture itself, as [`Incidents::receive`] has it when it
/// asks its [`Forwarder`].
pub(crate) struct Forwarding<'a> {
    /// Who sent it.
    pub(crate) who: &'a Requester<'a>,
    /// The policy its caller is authorized against.
    pub(crate) policy: &'a PolicySet,
    /// The alert.
    pub(crate) alert: &'a Alert,
    /// Its capture ID.
    pub(crate) id: &'a str,
    /// Its state so far (remembered once forwarded).
    pub(crate) status: CaptureStatus,
    /// The local refusal, which stands when the alert cannot be forwarded.
    pub(crate) not: NotTaken,
}

/// What a [`Forwarder`] made of an alert this process cannot capture itself.
pub(crate) enum Forwarded {
    /// A request waits for another node: the receiver's answer.
    Requested(Taken),
    /// Not forwarded: this refusal stands (audited by the caller).
    No(NotTaken),
    /// The request could not be audited (fail closed).
    Audit(AuditError),
}

/// Asks the node that runs a container for its capture, for an alert this process cannot
/// capture itself (implemented by capture across a fleet, capture/fleet.rs, which uses
/// this use case: the use case only knows this trait).
pub(crate) trait Forwarder: Send + Sync {
    /// Forwards the alert `req` names, deciding with `inc`'s rules and gate.
    fn forward<'a>(
        self: Arc<Self>,
        inc: &'a Incidents,
        req: Forwarding<'a>,
    ) -> futures_util::future::BoxFuture<'a, Forwarded>;
}

/// How long a rule's hold is retried while the record is not yet in the bucket.
const HOLD_PATIENCE: Duration = Duration::from_secs(1800);

/// How long the deduplicated alerts against one capture are folded into one audit event.
pub(crate) const FOLD_WINDOW: Duration = Duration::from_secs(10);
/// The alert descriptions a folded event names (the rest are counted).
const FOLD_NAMES: usize = 5;

/// Deduplicated alerts against one capture within a [`FOLD_WINDOW`]: the first is audited
/// at once, the rest counted and audited together when the window ends (a storm of
/// duplicates cannot make the fail-closed audit log the bottleneck of every alert).
#[derive(Debug)]
struct Fold {
    started: std::time::Instant,
    count: u64,
    names: std::collections::BTreeSet<String>,
    actor: Actor,
    namespace: Option<String>,
}

/// A refusal before anything was admitted: state, reason, and how the alert is audited.
pub(crate) struct NotTaken {
    pub(crate) state: CaptureState,
    pub(crate) reason: String,
    pub(crate) outcome: Outcome,
    pub(crate) kind: &'static str,
    /// Not this process's container (no runtime here, or not running in it): another
    /// node may run it.
    pub(crate) elsewhere: bool,
    /// The capture a duplicate repeats.
    pub(crate) of: Option<String>,
}

impl NotTaken {
    /// Not this process's container (no runtime here, or not running in it): another
    /// node may run it.
    pub(crate) fn forwardable(&self) -> bool {
        self.elsewhere
    }

    fn elsewhere(mut self) -> Self {
        self.elsewhere = true;
        self
    }

    pub(crate) fn refused(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            state: CaptureState::Refused,
            reason: reason.into(),
            outcome: Outcome::Denied,
            kind,
            of: None,
            elsewhere: false,
        }
    }
    pub(crate) fn gate(r: &Refusal) -> Self {
        Self {
            state: if matches!(r, Refusal::Duplicate { .. }) {
                CaptureState::Deduplicated
            } else {
                CaptureState::Refused
            },
            reason: r.to_string(),
            outcome: Outcome::Denied,
            kind: r.kind(),
            of: match r {
                Refusal::Duplicate { of, .. } => Some(of.clone()),
                _ => None,
            },
            elsewhere: false,
        }
    }
}

fn trigger_kind(source: &AlertSource) -> TriggerKind {
    match source {
        AlertSource::Alertmanager => TriggerKind::Alertmanager,
        AlertSource::Falco => TriggerKind::Falco,
        _ => TriggerKind::Webhook,
    }
}

/// The trigger a capture on `alert` writes into its manifest (bounded).
fn trigger_of(alert: &Alert, requested_by: &str) -> Trigger {
    let mut t = Trigger::new(trigger_kind(&alert.source), requested_by);
    t.alert = alert.name.clone();
    t.fingerprint = fingerprint_of(alert);
    t.priority = alert.priority.as_ref().map(|p| p.to_string());
    t.summary = alert.summary.clone();
    t.bounded()
}

pub(crate) fn new_capture_id() -> String {
    format!("cap-{}", crate::manifest::RecordId::generate())
}

impl Incidents {
    /// The use case over its parts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        checkpointer: Option<Checkpointer>,
        gate: Gate,
        rules: Vec<TriggerRule>,
        captures: Captures,
        notifier: Notifier,
        custody: crate::vault::Custody,
        audit: Arc<AuditLog>,
        capture_timeout: Duration,
    ) -> Self {
        Self {
            checkpointer,
            gate,
            rules: Arc::new(rules),
            captures,
            notifier,
            custody,
            audit,
            capture_timeout,
            metrics: Arc::default(),
            folds: Arc::default(),
            flusher: Arc::default(),
            forwarder: None,
        }
    }

    /// The use case `config` describes (`[capture]`, `[[trigger]]`, `[[notify]]`),
    /// capturing through `checkpointer` and checking free space in `disks` (staging, the
    /// store): for the alert receivers and the node's own triggers alike.
    pub(crate) fn from_config(
        config: &crate::config::Config,
        checkpointer: Option<Checkpointer>,
        custody: crate::vault::Custody,
        audit: Arc<AuditLog>,
        disks: Vec<std::path::PathBuf>,
    ) -> Result<Self, super::notify::NotifyError> {
        let c = &config.capture;
        let gate = Gate::new(
            super::gate::GateLimits {
                cooldown: c.cooldown,
                max_concurrent: c.max_concurrent,
                namespace_records_per_day: c.namespace_records_per_day,
                namespace_bytes_per_day: c.namespace_bytes_per_day.bytes(),
                disk_margin: c.disk_margin.bytes(),
            },
            disks,
        );
        let mut targets = Vec::new();
        for n in &config.notify {
            targets.push(super::notify::Target::new(
                &n.url,
                n.token_file.as_deref(),
                n.ca.as_deref(),
                n.timeout,
                n.retries,
            )?);
        }
        Ok(Self::new(
            checkpointer,
            gate,
            config.trigger.clone(),
            Captures::new(c.history),
            Notifier::new(targets),
            custody,
            audit,
            c.capture_timeout,
        ))
    }

    /// The same use case taking part in capture across a fleet: alerts for containers
    /// another node runs go to `forwarder` (requests in the bucket).
    pub(crate) fn with_forwarder(mut self, forwarder: Arc<dyn Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// The runtime it checkpoints through, if any.
    pub(crate) fn runtime(&self) -> Option<&super::cri::RuntimeClient> {
        self.checkpointer.as_ref().map(|c| c.runtime())
    }

    /// `[capture] capture_timeout`.
    pub(crate) fn capture_timeout(&self) -> Duration {
        self.capture_timeout
    }

    /// The gate.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The rules.
    pub(crate) fn rules(&self) -> &[TriggerRule] {
        &self.rules
    }

    /// Its counters.
    pub(crate) fn metrics(&self) -> &IncidentMetrics {
        &self.metrics
    }

    /// The captures it remembers.
    pub(crate) fn captures(&self) -> &Captures {
        &self.captures
    }

    pub(crate) async fn record(&self, event: EventInput) -> Result<(), AuditError> {
        let audit = self.audit.clone();
        match tokio::task::spawn_blocking(move || audit.append(event)).await {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(AuditError::Unwritable {
                path: "<audit task>".to_owned(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Takes one alert: decides at once whether it captures, and starts the capture in
    /// the background. Fails only when the decision cannot be audited (fail closed).
    pub(crate) async fn receive(
        &self,
        who: Requester<'_>,
        policy: &PolicySet,
        alert: Alert,
    ) -> Result<Taken, AuditError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.alerts.fetch_add(1, Relaxed);
        let id = new_capture_id();
        let mut trigger = trigger_of(&alert, &who.actor.name);
        let mut status = CaptureStatus {
            id: id.clone(),
            state: CaptureState::Queued,
            reason: None,
            record: None,
            namespace: alert.target.namespace.clone(),
            pod: alert.target.pod.clone(),
            container: alert.target.container.clone(),
            container_id: alert.target.container_id.clone(),
            node: None,
            expires_at: None,
            trigger: trigger.clone(),
            updated_at: crate::node::now_rfc3339(),
        };
        let decided = self.decide(&who, policy, &alert, &id, &mut trigger).await;
        status.trigger = trigger.clone();
        // Not this process's container: with a fleet, the node that runs it is asked.
        let decided = match (decided, &self.forwarder) {
            (Err(not), Some(forwarder)) if not.forwardable() => {
                let req = Forwarding {
                    who: &who,
                    policy,
                    alert: &alert,
                    id: &id,
                    status: status.clone(),
                    not,
                };
                match Arc::clone(forwarder).forward(self, req).await {
                    Forwarded::Requested(taken) => return Ok(taken),
                    Forwarded::Audit(e) => return Err(e),
                    Forwarded::No(not) => Err(not),
                }
            }
            (d, _) => d,
        };
        let (ticket, running, rule) = match decided {
            Ok(t) => t,
            Err(not) => {
                self.metrics.refuse(not.kind);
                status.state = not.state;
                status.reason = Some(not.reason.clone());
                let folded = match &not.of {
                    Some(of) => self.fold(of, who.actor, &alert, status.namespace.clone()),
                    None => false,
                };
                if !folded {
                    let ev = EventInput::new(who.actor, Action::Alert, not.outcome)
                        .with_namespace(status.namespace.clone())
                        .with_detail(format!("{}: {}; {}", id, describe(&alert), not.reason));
                    self.record(ev).await?;
                }
                self.captures.put(status);
                return Ok(Taken {
                    capture: id,
                    state: not.state,
                    reason: Some(not.reason),
                    node: None,
                });
            }
        };
        self.metrics.admitted.fetch_add(1, Relaxed);
        status.namespace = Some(running.namespace.clone());
        status.pod = Some(running.pod.clone());
        status.container = Some(running.container.clone());
        status.container_id = Some(running.id.clone());
        let ev = EventInput::new(who.actor, Action::Alert, Outcome::Ok)
            .with_namespace(Some(running.namespace.clone()))
            .with_detail(format!(
                "{id}: {}; rule {} matched; capturing {}/{}/{}",
                describe(&alert),
                rule.name,
                running.pod,
                running.container,
                short(&running.id)
            ));
        self.record(ev).await?;
        self.captures.put(status);
        self.spawn_run(id.clone(), ticket, running, rule, trigger);
        Ok(Taken {
            capture: id,
            state: CaptureState::Queued,
            reason: None,
            node: None,
        })
    }

    /// Folds a duplicate of capture `of` into its window: `false` when it opens one (the
    /// caller audits it at once), `true` when it is counted for the window's event.
    fn fold(&self, of: &str, actor: &Actor, alert: &Alert, namespace: Option<String>) -> bool {
        use std::sync::atomic::Ordering;
        if !self.flusher.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FOLD_WINDOW / 2);
                loop {
                    tick.tick().await;
                    me.flush_folds().await;
                }
            });
        }
        let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
        match folds.get_mut(of) {
            Some(f) if f.started.elapsed() < FOLD_WINDOW => {
                f.count += 1;
                if f.names.len() < FOLD_NAMES {
                    f.names.insert(describe(alert));
                }
                true
            }
            Some(f) if f.count > 0 => {
                // The window ended unflushed: let the flusher write it, count this one.
                f.count += 1;
                true
            }
            _ => {
                folds.insert(
                    of.to_owned(),
                    Fold {
                        started: std::time::Instant::now(),
                        count: 0,
                        names: Default::default(),
                        actor: actor.clone(),
                        namespace,
                    },
                );
                false
            }
        }
    }

    /// Writes one event for each window that ended with duplicates in it, and forgets
    /// windows that ended empty.
    async fn flush_folds(&self) {
        let ended: Vec<(String, Fold)> = {
            let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = folds
                .iter()
                .filter(|(_, f)| f.started.elapsed() >= FOLD_WINDOW)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| folds.remove(&k).map(|f| (k, f)))
                .filter(|(_, f)| f.count > 0)
                .collect()
        };
        for (of, f) in ended {
            let names: Vec<&str> = f.names.iter().map(String::as_str).collect();
            let ev = EventInput::new(&f.actor, Action::Alert, Outcome::Denied)
                .with_namespace(f.namespace)
                .with_detail(format!(
                    "{} more alerts deduplicated against capture {of} within {} s (among them: {})",
                    f.count,
                    FOLD_WINDOW.as_secs(),
                    names.join(", ")
                ));
            if let Err(e) = self.record(ev).await {
                tracing::error!(error = %e, capture = %of, count = f.count, "cannot audit folded duplicate alerts");
            }
        }
    }

    /// Places the rule's hold on a record just sealed. With a bucket the record is in this
    /// node's spool until the uploader ships it, and the bucket's legal hold needs the
    /// objects there: it waits for the record to be stored (checked at 1 s doubling to a
    /// minute) for up to [`HOLD_PATIENCE`], then gives up with an error in the log.
    fn hold_when_stored(&self, manifest: crate::manifest::Manifest, reason: String) {
        let custody = self.custody.clone();
        tokio::spawn(async move {
            let system = Actor::named("system");
            let started = std::time::Instant::now();
            let mut pause = Duration::from_secs(1);
            // The hold is audited before it is placed (custody's rule): place it once the
            // record is where the hold goes, not again and again.
            while !custody.stored(&manifest.id).await {
                if started.elapsed() >= HOLD_PATIENCE {
                    tracing::error!(record = %manifest.id, "the record never reached the store; the rule's hold was not placed: place it by hand (ckvault hold)");
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
            if let Err(e) = custody.hold(&system, &manifest, &reason).await {
                tracing::error!(error = %e, record = %manifest.id, "cannot place the rule's hold; place it by hand (ckvault hold)");
            }
        });
    }

    /// A local alert's decision: firing, a rule, the deduplication pre-check, the
    /// container through the runtime, the namespace cross-check, the caller's
    /// authorization, the gate.
    async fn decide(
        &self,
        who: &Requester<'_>,
        policy: &PolicySet,
        alert: &Alert,
        id: &str,
        trigger: &mut Trigger,
    ) -> Result<(super::gate::Ticket, Running, TriggerRule), NotTaken> {
        if !alert.firing {
            return Err(NotTaken::refused(
                "resolved",
                "the alert is resolved: only firing alerts capture",
            ));
        }
        let claimed_ns = alert.target.namespace.as_deref();
        // Rules that could match before the runtime is asked (a Falco event by container
        // ID alone has no namespace yet: rules are checked again once it is known).
        if rules::matching(&self.rules, alert, claimed_ns.unwrap_or("")).is_none()
            && claimed_ns.is_some()
        {
            return Err(NotTaken::refused("no-rule", "no [[trigger]] rule matched"));
        }
        // A caller without the grant on the namespace the alert names learns nothing of
        // the captures there (not even that one was deduplicated); the namespace the
        // runtime reports is checked again below.
        if let Some(ns) = claimed_ns {
            authorize(who, policy, ns)?;
        }
        // Cheap checks first, so a storm costs the runtime nothing: the alert's own key,
        // and the container by the names the alert gives. An alert that names no namespace
        // (a Falco event by container ID alone) is authorized on the namespace of the
        // capture it repeats before it is told of that capture: a caller without the grant
        // gets the refusal the runtime's answer would have given it.
        let alert_key = alert_key(alert);
        let by_names = names_key(&alert.target);
        for key in alert_key.iter().chain(by_names.iter()) {
            if let Some(d) = self.gate.duplicate_of(key) {
                if claimed_ns.is_none() {
                    authorize(who, policy, &d.namespace)?;
                }
                return Err(NotTaken::gate(&d.refusal));
            }
        }
        let running = self.resolve(&alert.target).await?;
        check_namespace(claimed_ns, &running)?;
        let Some(rule) = rules::matching(&self.rules, alert, &running.namespace).cloned() else {
            return Err(NotTaken::refused("no-rule", "no [[trigger]] rule matched"));
        };
        trigger.rule = Some(rule.name.clone());
        authorize(who, policy, &running.namespace)?;
        let ticket = self.admit(id, &running, &rule, alert_key)?;
        Ok((ticket, running, rule))
    }

    /// The running container `target` names, asked of this process's runtime.
    pub(crate) async fn resolve(&self, target: &super::alert::Target) -> Result<Running, NotTaken> {
        let Some(checkpointer) = &self.checkpointer else {
            return Err(NotTaken::refused(
                "no-runtime",
                "this process has no runtime to checkpoint with (set [cri] upstream)",
            )
            .elsewhere());
        };
        let wanted = match target {
            super::alert::Target {
                container_id: Some(cid),
                ..
            } => Wanted::Id(cid),
            super::alert::Target {
                namespace: Some(namespace),
                pod: Some(pod),
                container: Some(container),
                ..
            } => Wanted::Names {
                namespace,
                pod,
                container,
            },
            _ => {
                return Err(NotTaken::refused(
                    "no-target",
                    "the alert names no container (namespace, pod and container, or a container ID)",
                ));
            }
        };
        match resolve::running(checkpointer.runtime(), wanted).await {
            Ok(r) => Ok(r),
            Err(ResolveError::Runtime(e)) => Err(NotTaken {
                state: CaptureState::Failed,
                reason: format!(
                    "the runtime could not be asked ({})",
                    super::cri::redact_paths(&e.message)
                ),
                outcome: Outcome::Error,
                kind: "runtime",
                elsewhere: false,
                of: None,
            }),
            Err(e @ (ResolveError::NoPod | ResolveError::NotRunning(_))) => {
                Err(NotTaken::refused("not-running", e.to_string()).elsewhere())
            }
            Err(e) => Err(NotTaken::refused("not-running", e.to_string())),
        }
    }

    /// Admits a resolved capture through the gate: its container and alert keys, the
    /// namespace's and the rule's budgets.
    pub(crate) fn admit(
        &self,
        id: &str,
        running: &Running,
        rule: &TriggerRule,
        alert_key: Option<String>,
    ) -> Result<super::gate::Ticket, NotTaken> {
        let mut keys = vec![format!("container:{}", running.id)];
        keys.extend(alert_key);
        // The names the runtime reports (an alert by ID alone is deduplicated against one
        // by names too).
        keys.extend(names_key(&super::alert::Target {
            namespace: Some(running.namespace.clone()),
            pod: Some(running.pod.clone()),
            container: Some(running.container.clone()),
            container_id: None,
        }));
        self.gate
            .admit(&Ask {
                capture: id,
                keys,
                namespace: &running.namespace,
                rule: Some((&rule.name, rule.max_per_day)),
                cooldown: rule.cooldown,
            })
            .map_err(|r| NotTaken::gate(&r))
    }

    /// Starts the background half of an admitted capture (audited as admitted by the
    /// caller), and returns at once.
    pub(crate) fn spawn_run(
        &self,
        id: String,
        ticket: super::gate::Ticket,
        running: Running,
        rule: TriggerRule,
        trigger: Trigger,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_run_within(id, ticket, running, rule, trigger, self.capture_timeout)
    }

    /// [`Self::spawn_run`] with the checkpoint given `deadline` instead of
    /// `[capture] capture_timeout` (a capture before a stop has what the stop leaves it).
    pub(crate) fn spawn_run_within(
        &self,
        id: String,
        ticket: super::gate::Ticket,
        running: Running,
        rule: TriggerRule,
        trigger: Trigger,
        deadline: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run(id, ticket, running, rule, trigger, deadline).await })
    }

    /// A capture request claimed from the bucket (capture across a fleet,
    /// capture/fleet.rs): the receiver matched
    /// the rule and authorized its caller (both recorded in the request, not done again);
    /// here it goes the same way as a local alert from the runtime on: resolved through
    /// this node's runtime, the namespace cross-checked against the request's, admitted by
    /// this node's gate, captured by the same background half, the trigger into the
    /// manifest. Returns where it ended.
    pub(crate) async fn take_request(
        &self,
        req: &crate::store::s3::fleet::CaptureRequest,
        node: &str,
    ) -> CaptureStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let mut status = CaptureStatus {
            id: req.id.clone(),
            state: CaptureState::Queued,
            reason: None,
            record: None,
            namespace: Some(req.namespace.clone()),
            pod: Some(req.pod.clone()),
            container: Some(req.container.clone()),
            container_id: None,
            node: Some(node.to_owned()),
            expires_at: None,
            trigger: req.trigger.clone(),
            updated_at: crate::node::now_rfc3339(),
        };
        self.captures.put(status.clone());
        let rule = TriggerRule {
            name: req.rule.name.clone(),
            hold: req.rule.hold,
            cooldown: req.rule.cooldown_secs.map(Duration::from_secs),
            max_per_day: req.rule.max_per_day,
            ..TriggerRule::default()
        };
        let target = super::alert::Target {
            namespace: Some(req.namespace.clone()),
            pod: Some(req.pod.clone()),
            container: Some(req.container.clone()),
            container_id: None,
        };
        let decided = async {
            let running = self.resolve(&target).await?;
            check_namespace(Some(&req.namespace), &running)?;
            let ticket = self.admit(&req.id, &running, &rule, req.alert_key.clone())?;
            Ok::<_, NotTaken>((ticket, running))
        }
        .await;
        let about = format!(
            "{}: request of {} from {} for {}/{}/{}",
            req.id, req.requested_by, req.receiver, req.namespace, req.pod, req.container
        );
        match decided {
            Err(not) => {
                self.metrics.refuse(not.kind);
                let ev = EventInput::new(&Actor::named("system"), Action::Capture, not.outcome)
                    .with_namespace(Some(req.namespace.clone()))
                    .with_detail(format!("{about}: {}", not.reason));
                if let Err(e) = self.record(ev).await {
                    tracing::error!(error = %e, capture = %req.id, "cannot audit a refused request");
                }
                status.state = not.state;
                status.reason = Some(not.reason);
                self.captures.put(status.clone());
                status
            }
            Ok((ticket, running)) => {
                self.metrics.admitted.fetch_add(1, Relaxed);
                self.captures.update(&req.id, |s| {
                    s.container_id = Some(running.id.clone());
                });
                let ev = EventInput::new(&Actor::named("system"), Action::Capture, Outcome::Ok)
                    .with_namespace(Some(running.namespace.clone()))
                    .with_detail(format!(
                        "{about}: admitted, capturing {}",
                        short(&running.id)
                    ));
                if let Err(e) = self.record(ev).await {
                    tracing::error!(error = %e, capture = %req.id, "cannot audit an admitted request");
                }
                self.clone()
                    .run(
                        req.id.clone(),
                        ticket,
                        running,
                        rule,
                        req.trigger.clone(),
                        self.capture_timeout,
                    )
                    .await;
                self.captures.get(&req.id).unwrap_or_else(|| {
                    status.state = CaptureState::Failed;
                    status.reason = Some("its state was forgotten ([capture] history)".into());
                    status
                })
            }
        }
    }

    /// The background half: slot, disk, checkpoint, hold, notices.
    async fn run(
        self,
        id: String,
        ticket: super::gate::Ticket,
        running: Running,
        rule: TriggerRule,
        trigger: Trigger,
        deadline: Duration,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let system = Actor::named("system");
        let about = format!(
            "{id}: {}/{}/{} for {}",
            running.namespace, running.pod, running.container, trigger.requested_by
        );
        let Some(checkpointer) = self.checkpointer.clone() else {
            return;
        };
        let Some(_slot) = ticket.slot().await else {
            return;
        };
        // Disk and bytes, against what the container holds now.
        let working_set = checkpointer
            .runtime()
            .container_stats(
                ContainerStatsRequest {
                    container_id: running.id.clone(),
                },
                Duration::from_secs(10),
            )
            .await
            .ok()
            .and_then(|r| r.stats)
            .and_then(|s| s.memory)
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        let checked = self.gate.check_disk(working_set).and_then(|()| {
            self.gate
                .check_bytes(&running.namespace, working_set.unwrap_or(0))
        });
        if let Err(r) = checked {
            self.metrics.refuse(r.kind());
            let reason = r.to_string();
            self.captures.update(&id, |s| {
                s.state = CaptureState::Refused;
                s.reason = Some(reason.clone());
            });
            let ev = EventInput::new(&system, Action::Capture, Outcome::Denied)
                .with_namespace(Some(running.namespace.clone()))
                .with_detail(format!("{about}: {reason}"));
            if let Err(e) = self.record(ev).await {
                tracing::error!(error = %e, capture = %id, "cannot audit a refused capture");
            }
            return;
        }
        self.captures
            .update(&id, |s| s.state = CaptureState::Checkpointing);
        let result = checkpointer
            .checkpoint(CheckpointRequest {
                container_id: running.id.clone(),
                deadline,
                source: SourceKind::Trigger,
                location: None,
                actor: trigger.requested_by.clone(),
                trigger: Some(trigger.clone()),
            })
            .await;
        match result {
            Ok(manifest) => {
                self.metrics.sealed.fetch_add(1, Relaxed);
                ticket.sealed(manifest.sealed.size);
                let record = manifest.id.to_string();
                self.captures.update(&id, |s| {
                    s.state = CaptureState::Sealed;
                    s.record = Some(record.clone());
                });
                let ev = EventInput::new(&system, Action::Capture, Outcome::Ok)
                    .about(&manifest)
                    .with_detail(format!("{about}: sealed"));
                if let Err(e) = self.record(ev).await {
                    tracing::error!(error = %e, capture = %id, "cannot audit a sealed capture");
                }
                if rule.hold {
                    let on = match trigger.kind {
                        TriggerKind::Schedule => "on a schedule",
                        TriggerKind::Threshold => "on a threshold",
                        TriggerKind::BeforeStop => "before a stop",
                        _ => "on an alert",
                    };
                    let reason = format!("captured {on} (rule {}, capture {id})", rule.name);
                    self.hold_when_stored(manifest.clone(), reason);
                }
                self.notifier.send(Notice {
                    event: "capture-sealed",
                    capture: id,
                    record: Some(record.clone()),
                    record_path: Some(format!("/v1/checkpoints/{record}")),
                    sealed_sha256: Some(manifest.sealed.sha256.clone()),
                    namespace: running.namespace,
                    pod: running.pod,
                    container: running.container,
                    node: manifest.node.clone(),
                    trigger: serde_json::to_value(&trigger).unwrap_or_default(),
                    reason: None,
                });
            }
            Err(e) => {
                self.metrics.failed.fetch_add(1, Relaxed);
                let reason = super::cri::redact_paths(&e.to_string());
                self.captures.update(&id, |s| {
                    s.state = CaptureState::Failed;
                    s.reason = Some(reason.clone());
                });
                let ev = EventInput::new(&system, Action::Capture, Outcome::Error)
                    .with_namespace(Some(running.namespace.clone()))
                    .with_detail(format!("{about}: {e}"));
                if let Err(e) = self.record(ev).await {
                    tracing::error!(error = %e, capture = %id, "cannot audit a failed capture");
                }
                self.notifier.send(Notice {
                    event: "capture-failed",
                    capture: id,
                    record: None,
                    record_path: None,
                    sealed_sha256: None,
                    namespace: running.namespace,
                    pod: running.pod,
                    container: running.container,
                    node: None,
                    trigger: serde_json::to_value(&trigger).unwrap_or_default(),
                    reason: Some(reason),
                });
            }
        }
    }
}

/// The namespace an alert or a request names must be the one the runtime reports.
pub(crate) fn check_namespace(claimed: Option<&str>, running: &Running) -> Result<(), NotTaken> {
    match claimed {
        Some(ns) if ns != running.namespace => Err(NotTaken::refused(
            "namespace-mismatch",
            format!(
                "the alert names namespace {ns:?}, the runtime says the container is in {:?}",
                running.namespace
            ),
        )),
        _ => Ok(()),
    }
}

/// The caller must hold `checkpoint` on `namespace`.
pub(crate) fn authorize(
    who: &Requester<'_>,
    policy: &PolicySet,
    namespace: &str,
) -> Result<(), NotTaken> {
    if policy.allows(
        who.principal,
        crate::policy::Action::Checkpoint,
        Some(namespace),
    ) {
        Ok(())
    } else {
        Err(NotTaken::refused(
            "forbidden",
            format!(
                "{} may not checkpoint in namespace {namespace}",
                who.actor.name
            ),
        ))
    }
}

/// The alert's fingerprint: Alertmanager's own, or Falco's rule and container.
fn fingerprint_of(alert: &Alert) -> Option<String> {
    match (&alert.fingerprint, &alert.name, &alert.target.container_id) {
        (Some(fp), _, _) => Some(fp.clone()),
        (None, Some(rule), Some(cid)) => Some(format!("{rule}:{cid}")),
        _ => None,
    }
}

/// The container's deduplication key by its names, when the alert gives all three.
fn names_key(t: &super::alert::Target) -> Option<String> {
    match (&t.namespace, &t.pod, &t.container) {
        (Some(n), Some(p), Some(c)) => Some(format!("pod:{n}/{p}/{c}")),
        _ => None,
    }
}

/// The alert's own deduplication key (its source and fingerprint).
pub(crate) fn alert_key(alert: &Alert) -> Option<String> {
    fingerprint_of(alert).map(|fp| format!("alert:{}:{fp}", alert.source))
}

pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The alert as an audit event names it (bounded by the audit log's own bounds).
pub(crate) fn describe(alert: &Alert) -> String {
    let mut out = format!("{} alert", alert.source);
    if let Some(n) = &alert.name {
        out.push_str(&format!(" {n:?}"));
    }
    if let Some(fp) = &alert.fingerprint {
        out.push_str(&format!(" fingerprint {fp}"));
    }
    out
}
