//! Capture across a fleet (`[fleet]`, docs/fleet-capture.md), the use case's side: the
//! bucket between the process that receives an alert and the node that runs the
//! container ([`crate::store::s3::fleet`] has the objects).
//!
//! - **Receiver** ([`forward`], the use case's [`Forwarder`]): an alert whose container
//!   this process does not run (no runtime here, or not running in it) is matched against the rules and its caller
//!   authorized here, deduplicated by this gate, then written as a capture request for the
//!   node that publishes the pod (one GET to find it) and put in that node's inbox. A task
//!   per request ([`settle`]) closes it at its expiry: `unclaimed` when no node claimed it
//!   (the receiver takes the claim itself so nobody can any more), `failed` when its
//!   claimer wrote no outcome by the claim's deadline.
//! - **Node agent** ([`start_agent`]): publishes the pods its runtime runs (only what
//!   changed, a heartbeat rewrite every [`HEARTBEAT`]), polls its inbox with the last ETag
//!   (304 while unchanged), claims each request once (`If-None-Match: *`), captures it
//!   through [`Incidents::take_request`] (the same resolution, gate and background half as
//!   a local alert) and writes the outcome once.
//! - **Answers** ([`current`]): `GET /v1/captures/ID` of a request reads its outcome, then
//!   its claim, from the bucket.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use time::OffsetDateTime;

use super::cri::{LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD, RuntimeClient};
use super::incident::{
    CaptureState, CaptureStatus, Forwarded, Forwarder, Forwarding, Incidents, NotTaken, Taken,
    alert_key, authorize, describe,
};
use super::rules;
use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::store::StoreError;
use crate::store::s3::fleet::{
    CaptureRequest, Claim, Fleet, HEARTBEAT, InboxEntry, Outcome as Ended, PodPublication, Polled,
    PublishedContainer, RequestRule, STALE_AFTER, rfc3339, valid_k8s_name,
};

/// A claimer's outcome is due by the claim time plus `[capture] capture_timeout` plus this.
pub(crate) const CLAIM_GRACE: Duration = Duration::from_secs(60);
/// Claims this process remembers having made (so a failed inbox update does not make it
/// look at its own request twice).
const REMEMBERED: usize = 10_000;

/// Counters `/metrics` shows.
#[derive(Debug, Default)]
pub(crate) struct FleetMetrics {
    requests: AtomicU64,
    unclaimed: AtomicU64,
    stopped: AtomicU64,
    claims: AtomicU64,
    claims_lost: AtomicU64,
    outcomes: AtomicU64,
    polls: AtomicU64,
    polls_unchanged: AtomicU64,
    publications: AtomicU64,
    lookups: AtomicU64,
}

impl FleetMetrics {
    /// Appends the counters in Prometheus' text format.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "ckvault_fleet_requests_total",
                "Capture requests this receiver wrote for another node.",
                &self.requests,
            ),
            (
                "ckvault_fleet_unclaimed_total",
                "Requests of this receiver that no node claimed in time.",
                &self.unclaimed,
            ),
            (
                "ckvault_fleet_claimer_stopped_total",
                "Requests answered failed because their claimer wrote no outcome by its deadline.",
                &self.stopped,
            ),
            (
                "ckvault_fleet_lookups_total",
                "Pod publications read to find the node that runs a container.",
                &self.lookups,
            ),
            (
                "ckvault_fleet_claims_total",
                "Requests this node agent claimed.",
                &self.claims,
            ),
            (
                "ckvault_fleet_claims_lost_total",
                "Requests another process had claimed first.",
                &self.claims_lost,
            ),
            (
                "ckvault_fleet_outcomes_total",
                "Outcomes this node agent wrote.",
                &self.outcomes,
            ),
            (
                "ckvault_fleet_inbox_polls_total",
                "Reads of this node's inbox.",
                &self.polls,
            ),
            (
                "ckvault_fleet_inbox_unchanged_total",
                "Reads of this node's inbox answered 304 (unchanged).",
                &self.polls_unchanged,
            ),
            (
                "ckvault_fleet_publications_total",
                "Pod publications written or deleted.",
                &self.publications,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        }
    }
}

/// This process's part in capture across a fleet.
#[derive(Debug)]
pub(crate) struct FleetLink {
    /// The bucket's capture objects.
    pub(crate) bucket: Fleet,
    /// This node's name.
    pub(crate) node: String,
    /// This process (`NODE:PID`), as claims and outcomes name it.
    pub(crate) holder: String,
    /// `[fleet] request_ttl`.
    pub(crate) ttl: Duration,
    /// `[fleet] publish_interval`.
    pub(crate) publish_interval: Duration,
    /// `[fleet] poll_interval`.
    pub(crate) poll_interval: Duration,
    /// Counters.
    pub(crate) metrics: FleetMetrics,
}

impl FleetLink {
    /// The link of node `node` over `bucket` with `[fleet]`'s intervals.
    pub(crate) fn new(bucket: Fleet, node: String, cfg: &crate::config::FleetConfig) -> Self {
        Self {
            holder: format!("{node}:{}", std::process::id()),
            bucket,
            node,
            ttl: cfg.request_ttl,
            publish_interval: cfg.publish_interval,
            poll_interval: cfg.poll_interval,
            metrics: FleetMetrics::default(),
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn until(t: OffsetDateTime) -> Duration {
    (t - now()).try_into().unwrap_or_default()
}

fn bucket_failed(what: &str, e: &StoreError) -> NotTaken {
    NotTaken {
        state: CaptureState::Failed,
        reason: format!("{what}: {e}"),
        outcome: Outcome::Error,
        kind: "bucket",
        elsewhere: false,
        of: None,
    }
}

impl Forwarder for FleetLink {
    fn forward<'a>(
        self: Arc<Self>,
        inc: &'a Incidents,
        forwarding: Forwarding<'a>,
    ) -> futures_util::future::BoxFuture<'a, Forwarded> {
        Box::pin(async move { forward(inc, &self, forwarding).await })
    }
}

/// Turns an alert for a container this process does not run into a capture request for
/// the node that publishes its pod (after the rule, the caller's authorization and this
/// gate's deduplication, as a local alert). `forwarding.not` is the local refusal, which stands
/// when the alert cannot be forwarded: it names no pod by name (Falco by container ID
/// alone is resolved only by its own node's agent), or this node publishes the pod.
pub(crate) async fn forward(
    inc: &Incidents,
    link: &Arc<FleetLink>,
    forwarding: Forwarding<'_>,
) -> Forwarded {
    let Forwarding {
        who,
        policy,
        alert,
        id,
        mut status,
        not,
    } = forwarding;
    let t = &alert.target;
    let (Some(ns), Some(pod), Some(ctr)) = (&t.namespace, &t.pod, &t.container) else {
        return Forwarded::No(not);
    };
    if t.container_id.is_some() || ![ns, pod, ctr].iter().all(|n| valid_k8s_name(n)) {
        return Forwarded::No(not);
    }
    let Some(rule) = rules::matching(inc.rules(), alert, ns).cloned() else {
        return Forwarded::No(NotTaken::refused("no-rule", "no [[trigger]] rule matched"));
    };
    let mut trigger = status.trigger.clone();
    trigger.rule = Some(rule.name.clone());
    if let Err(n) = authorize(who, policy, ns) {
        return Forwarded::No(n);
    }
    let alert_key = alert_key(alert);
    let mut keys = vec![format!("pod:{ns}/{pod}/{ctr}")];
    keys.extend(alert_key.clone());
    for k in &keys {
        if let Some(d) = inc.gate().duplicate_of(k) {
            return Forwarded::No(NotTaken::gate(&d.refusal));
        }
    }
    link.metrics.lookups.fetch_add(1, Relaxed);
    let node = match link.bucket.locate(ns, pod).await {
        Ok(Some(p)) if fresh(link, &p).await => {
            if p.node == link.node {
                return Forwarded::No(not);
            }
            Some(p.node)
        }
        Ok(_) => None,
        Err(e) => {
            return Forwarded::No(bucket_failed(
                &format!("the bucket could not say which node runs {ns}/{pod}"),
                &e,
            ));
        }
    };
    let admitted = inc.gate().admit(&super::gate::Ask {
        capture: id,
        keys,
        namespace: ns,
        rule: Some((&rule.name, rule.max_per_day)),
        cooldown: rule.cooldown,
    });
    // The receiver checkpoints nothing: the ticket only books the keys and budgets.
    match admitted {
        Ok(ticket) => drop(ticket),
        Err(r) => return Forwarded::No(NotTaken::gate(&r)),
    }
    let created = now();
    let expires = created + link.ttl;
    let req = CaptureRequest {
        id: id.to_owned(),
        namespace: ns.clone(),
        pod: pod.clone(),
        container: ctr.clone(),
        node: node.clone(),
        receiver: link.node.clone(),
        requested_by: who.actor.name.clone(),
        rule: RequestRule {
            name: rule.name.clone(),
            hold: rule.hold,
            cooldown_secs: rule.cooldown.map(|c| c.as_secs()),
            max_per_day: rule.max_per_day,
        },
        alert_key,
        trigger: trigger.clone(),
        created_at: rfc3339(created),
        expires_at: rfc3339(expires),
    };
    if let Err(e) = link.bucket.put_request(&req).await {
        return Forwarded::No(bucket_failed(
            "the capture request could not be written",
            &e,
        ));
    }
    if let Some(n) = &node
        && let Err(e) = link
            .bucket
            .push_inbox(n, id, expires.unix_timestamp())
            .await
    {
        return Forwarded::No(bucket_failed(
            &format!("the request could not reach node {n}'s inbox"),
            &e,
        ));
    }
    link.metrics.requests.fetch_add(1, Relaxed);
    let asked = match &node {
        Some(n) => format!("node {n} runs {ns}/{pod}: requested through the bucket"),
        None => format!(
            "no node publishes {ns}/{pod} yet: requested; answered unclaimed unless a node publishes and claims it by {}",
            req.expires_at
        ),
    };
    let ev = EventInput::new(who.actor, Action::CaptureRequest, Outcome::Ok)
        .with_namespace(Some(ns.clone()))
        .with_detail(format!(
            "{id}: {}; rule {} matched; {asked} (container {ctr}, expires {})",
            describe(alert),
            rule.name,
            req.expires_at
        ));
    if let Err(e) = inc.record(ev).await {
        return Forwarded::Audit(e);
    }
    status.state = CaptureState::Requested;
    status.reason = Some(asked.clone());
    status.node = node.clone();
    status.expires_at = Some(req.expires_at.clone());
    status.trigger = trigger;
    inc.captures().put(status);
    let (inc2, link2) = (inc.clone(), link.clone());
    tokio::spawn(async move { watch_request(inc2, link2, req).await });
    Forwarded::Requested(Taken {
        capture: id.to_owned(),
        state: CaptureState::Requested,
        reason: Some(asked),
        node,
    })
}

/// The receiver's task for one request: until its expiry, looks again for a node when
/// none published the pod yet (a pod younger than `publish_interval`); then settles it.
async fn watch_request(inc: Incidents, link: Arc<FleetLink>, req: CaptureRequest) {
    let expires = req.expires();
    let mut node = req.node.clone();
    loop {
        let left = until(expires);
        if left.is_zero() {
            break;
        }
        let nap = match node {
            None => left.min(link.publish_interval),
            Some(_) => left,
        };
        tokio::time::sleep(nap).await;
        if node.is_none() && now() < expires {
            link.metrics.lookups.fetch_add(1, Relaxed);
            if let Ok(Some(p)) = link.bucket.locate(&req.namespace, &req.pod).await
                && p.node != link.node
                && fresh(&link, &p).await
                && link
                    .bucket
                    .push_inbox(&p.node, &req.id, expires.unix_timestamp())
                    .await
                    .is_ok()
            {
                tracing::info!(capture = %req.id, node = %p.node, "a node publishes the pod now: request sent to it");
                inc.captures().update(&req.id, |s| {
                    s.node = Some(p.node.clone());
                    s.reason = Some(format!(
                        "node {} runs {}/{}: requested through the bucket",
                        p.node, req.namespace, req.pod
                    ));
                });
                node = Some(p.node);
            }
        }
    }
    settle(&inc, &link, &req).await;
}

/// Closes a request past its expiry: its outcome if one was written; else, unclaimed,
/// the receiver claims it itself (so no agent can any more) and answers `unclaimed`;
/// claimed, it waits for the claim's deadline and, with no outcome by then, answers
/// `failed`. Every write is once-only, so a receiver replica or a restarted agent doing
/// the same at the same time changes nothing. Bucket errors are retried.
pub(crate) async fn settle(inc: &Incidents, link: &Arc<FleetLink>, req: &CaptureRequest) {
    let give_up = now() + inc.capture_timeout() + CLAIM_GRACE + Duration::from_secs(3600);
    while now() < give_up {
        match settle_once(inc, link, req).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(capture = %req.id, error = %e, "cannot settle a capture request yet");
                tokio::time::sleep(link.poll_interval).await;
            }
        }
    }
    tracing::error!(capture = %req.id, "gave up settling a capture request: the bucket did not answer");
}

async fn settle_once(
    inc: &Incidents,
    link: &Arc<FleetLink>,
    req: &CaptureRequest,
) -> Result<bool, StoreError> {
    if let Some(o) = link.bucket.outcome(&req.id).await? {
        apply(inc, &o);
        return Ok(true);
    }
    let claim = match link.bucket.claim_of(&req.id).await? {
        Some(c) => c,
        None => {
            let closing = Claim {
                id: req.id.clone(),
                node: link.node.clone(),
                holder: link.holder.clone(),
                claimed_at: rfc3339(now()),
                deadline: rfc3339(now()),
                expired: true,
            };
            if !link.bucket.claim(&closing).await? {
                return Ok(false); // an agent claimed it just now: read it again
            }
            closing
        }
    };
    if claim.expired {
        let reason = match &req.node {
            Some(n) => format!(
                "node {n} did not claim it by {} ([fleet] request_ttl)",
                req.expires_at
            ),
            None => format!(
                "no node published {}/{} and claimed it by {} ([fleet] request_ttl)",
                req.namespace, req.pod, req.expires_at
            ),
        };
        let o = ended(link, &req.id, "unclaimed", Some(reason), req.node.clone());
        if link.bucket.put_outcome(&o).await? {
            link.metrics.unclaimed.fetch_add(1, Relaxed);
            let ev = EventInput::new(
                &Actor::named("system"),
                Action::CaptureRequest,
                Outcome::Error,
            )
            .with_namespace(Some(req.namespace.clone()))
            .with_detail(format!(
                "{}: unclaimed: {}",
                req.id,
                o.reason.as_deref().unwrap_or_default()
            ));
            if let Err(e) = inc.record(ev).await {
                tracing::error!(error = %e, capture = %req.id, "cannot audit an unclaimed request");
            }
        }
        return Ok(false); // read the outcome that is there now
    }
    inc.captures().update(&req.id, |s| {
        if s.state == CaptureState::Requested {
            s.state = CaptureState::Claimed;
        }
        s.node = Some(claim.node.clone());
    });
    let wait = until(claim.deadline());
    if !wait.is_zero() {
        tokio::time::sleep(wait.min(link.poll_interval.max(Duration::from_secs(1)) * 12)).await;
        return Ok(false);
    }
    claimer_stopped(inc, link, req, &claim).await?;
    Ok(false)
}

/// Answers a request whose claimer wrote no outcome by the claim's deadline `failed`
/// (once: whoever sees it first, the receiver or the restarted agent).
async fn claimer_stopped(
    inc: &Incidents,
    link: &FleetLink,
    req: &CaptureRequest,
    claim: &Claim,
) -> Result<(), StoreError> {
    let reason = format!(
        "claimed by node {}, no outcome by {}: the agent stopped",
        claim.node, claim.deadline
    );
    let o = ended(
        link,
        &req.id,
        "failed",
        Some(reason.clone()),
        Some(claim.node.clone()),
    );
    if link.bucket.put_outcome(&o).await? {
        link.metrics.stopped.fetch_add(1, Relaxed);
        let ev = EventInput::new(
            &Actor::named("system"),
            Action::CaptureRequest,
            Outcome::Error,
        )
        .with_namespace(Some(req.namespace.clone()))
        .with_detail(format!("{}: failed: {reason}", req.id));
        if let Err(e) = inc.record(ev).await {
            tracing::error!(error = %e, capture = %req.id, "cannot audit a stopped claimer");
        }
    }
    Ok(())
}

fn ended(
    link: &FleetLink,
    id: &str,
    state: &str,
    reason: Option<String>,
    node: Option<String>,
) -> Ended {
    Ended {
        id: id.to_owned(),
        state: state.to_owned(),
        record: None,
        reason,
        node,
        container_id: None,
        written_by: link.holder.clone(),
        at: rfc3339(now()),
    }
}

/// Keeps an outcome read from the bucket in the receiver's memory.
fn apply(inc: &Incidents, o: &Ended) {
    inc.captures().update(&o.id, |s| fill(s, o));
}

fn fill(s: &mut CaptureStatus, o: &Ended) {
    s.state = CaptureState::from_word(&o.state).unwrap_or(CaptureState::Failed);
    s.reason = o.reason.clone();
    s.record = o.record.clone();
    if o.node.is_some() {
        s.node = o.node.clone();
    }
    if o.container_id.is_some() {
        s.container_id = o.container_id.clone();
    }
}

/// Where a capture stands for `GET /v1/captures/ID`: from memory while it is this
/// process's own; a request through the bucket is read there (its outcome, else its
/// claim), and one this process no longer remembers (restarted, or its history is full)
/// is read from its request object. `link`: this process's part in the fleet, if any.
pub(crate) async fn current(
    inc: &Incidents,
    link: Option<&Arc<FleetLink>>,
    id: &str,
) -> Result<Option<CaptureStatus>, StoreError> {
    let known = inc.captures().get(id);
    let Some(link) = link else {
        return Ok(known);
    };
    let mut status = match known {
        Some(s) if !matches!(s.state, CaptureState::Requested | CaptureState::Claimed) => {
            return Ok(Some(s));
        }
        Some(s) => s,
        None => match link.bucket.request(id).await? {
            Some(r) => {
                let status = CaptureStatus {
                    id: r.id.clone(),
                    state: CaptureState::Requested,
                    reason: None,
                    record: None,
                    namespace: Some(r.namespace.clone()),
                    pod: Some(r.pod.clone()),
                    container: Some(r.container.clone()),
                    container_id: None,
                    node: r.node.clone(),
                    expires_at: Some(r.expires_at.clone()),
                    trigger: r.trigger.clone(),
                    updated_at: r.created_at.clone(),
                };
                // A request this process forgot (it restarted, or its history is full):
                // it watches it again, so one that expires is still settled and audited
                // (each write once-only: another replica doing the same changes nothing).
                inc.captures().put(status.clone());
                tokio::spawn(watch_request(inc.clone(), link.clone(), r));
                status
            }
            None => return Ok(None),
        },
    };
    if let Some(o) = link.bucket.outcome(id).await? {
        fill(&mut status, &o);
        apply(inc, &o);
        return Ok(Some(status));
    }
    if let Some(c) = link.bucket.claim_of(id).await?
        && !c.expired
    {
        status.state = CaptureState::Claimed;
        status.node = Some(c.node.clone());
        status.reason = Some(format!(
            "claimed by node {} at {}; its outcome is due by {}",
            c.node, c.claimed_at, c.deadline
        ));
    }
    Ok(Some(status))
}

/// Starts a node agent's two loops (publishing its pods, polling its inbox), when this
/// process has a runtime and takes part in a fleet (`link`).
pub(crate) fn start_agent(inc: &Incidents, link: Option<&Arc<FleetLink>>) {
    let (Some(link), Some(runtime)) = (link.cloned(), inc.runtime().cloned()) else {
        return;
    };
    tracing::info!(node = %link.node, "fleet: publishing this node's pods and polling its inbox");
    tokio::spawn(publish_loop(runtime, link.clone()));
    tokio::spawn(poll_loop(inc.clone(), link));
}

/// The pods a runtime runs, by namespace and name, with their running containers
/// (kubelet's labels; containers without them, or with names that cannot be keys, are
/// left out).
async fn pods(
    runtime: &RuntimeClient,
) -> Result<BTreeMap<(String, String), Vec<PublishedContainer>>, super::cri::GrpcStatus> {
    let all = super::resolve::all_running(runtime).await?;
    let mut out: BTreeMap<(String, String), Vec<PublishedContainer>> = BTreeMap::new();
    for c in &all {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        let (ns, pod, name) = (
            label(LABEL_NAMESPACE),
            label(LABEL_POD),
            label(LABEL_CONTAINER),
        );
        if ![&ns, &pod, &name].iter().all(|n| valid_k8s_name(n))
            || !(12..=64).contains(&c.id.len())
            || !c.id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            continue;
        }
        let list = out.entry((ns, pod)).or_default();
        if list.len() < crate::store::s3::fleet::MAX_CONTAINERS {
            list.push(PublishedContainer {
                name,
                id: c.id.clone(),
            });
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    }
    Ok(out)
}

/// Whether a pod publication can be trusted: written recently, or by a node whose agent
/// said it was alive recently (publications are rewritten only when they change; the
/// node's heartbeat keeps the unchanged ones trusted: one PUT per node per [`HEARTBEAT`]
/// instead of one per pod).
async fn fresh(link: &FleetLink, p: &PodPublication) -> bool {
    let now = now();
    p.age(now) < STALE_AFTER
        || link
            .bucket
            .node_age(&p.node, now)
            .await
            .ok()
            .flatten()
            .is_some_and(|a| a < STALE_AFTER)
}

/// Every `publish_interval`: lists the runtime and writes the pods that appeared or whose
/// containers changed; deletes the publications of pods gone; every [`HEARTBEAT`], says
/// the node is alive (`captures/nodes/NODE.json`).
async fn publish_loop(runtime: RuntimeClient, link: Arc<FleetLink>) {
    type Published = (Vec<PublishedContainer>, std::time::Instant);
    let mut published: BTreeMap<(String, String), Published> = BTreeMap::new();
    let mut beat: Option<std::time::Instant> = None;
    loop {
        if beat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
            match link.bucket.beat(&link.node, &rfc3339(now())).await {
                Ok(()) => {
                    link.metrics.publications.fetch_add(1, Relaxed);
                    beat = Some(std::time::Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "fleet: cannot write this node's heartbeat"),
            }
        }
        match pods(&runtime).await {
            Ok(running) => {
                for ((ns, pod), containers) in &running {
                    let due = published
                        .get(&(ns.clone(), pod.clone()))
                        .is_none_or(|(c, _)| c != containers);
                    if !due {
                        continue;
                    }
                    let p = PodPublication {
                        node: link.node.clone(),
                        namespace: ns.clone(),
                        pod: pod.clone(),
                        containers: containers.clone(),
                        updated_at: rfc3339(now()),
                    };
                    match link.bucket.publish(&p).await {
                        Ok(()) => {
                            link.metrics.publications.fetch_add(1, Relaxed);
                            published.insert(
                                (ns.clone(), pod.clone()),
                                (containers.clone(), std::time::Instant::now()),
                            );
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %ns, pod = %pod, error = %e, "cannot publish a pod")
                        }
                    }
                }
                let gone: Vec<(String, String)> = published
                    .keys()
                    .filter(|k| !running.contains_key(*k))
                    .cloned()
                    .collect();
                for (ns, pod) in gone {
                    match link.bucket.unpublish(&link.node, &ns, &pod).await {
                        Ok(()) => {
                            link.metrics.publications.fetch_add(1, Relaxed);
                            published.remove(&(ns, pod));
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %ns, pod = %pod, error = %e, "cannot delete a pod's publication")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "fleet: cannot list the runtime's containers")
            }
        }
        tokio::time::sleep(link.publish_interval).await;
    }
}

/// What became of one inbox entry.
enum Handled {
    /// Out of the inbox (claimed here, claimed elsewhere, expired, gone).
    Drop,
    /// Left there, to be read again (a bucket error; a claim of this node's previous
    /// process not yet past its deadline).
    Keep,
}

/// Every `poll_interval`: reads this node's inbox unless unchanged, and handles each
/// request in it.
async fn poll_loop(inc: Incidents, link: Arc<FleetLink>) {
    let mut etag: Option<String> = None;
    let mut mine: (HashSet<String>, VecDeque<String>) = Default::default();
    loop {
        link.metrics.polls.fetch_add(1, Relaxed);
        match link.bucket.poll_inbox(&link.node, etag.as_deref()).await {
            Ok(Polled::Unchanged) => {
                link.metrics.polls_unchanged.fetch_add(1, Relaxed);
            }
            Ok(Polled::Missing) => etag = None,
            Ok(Polled::Changed(inbox, new)) => {
                etag = new;
                let mut done = Vec::new();
                for e in inbox.pending {
                    match handle(&inc, &link, &e, &mut mine).await {
                        Handled::Drop => done.push(e.id),
                        // Read it again next time, even if the inbox does not change.
                        Handled::Keep => etag = None,
                    }
                }
                if let Err(e) = link.bucket.drop_from_inbox(&link.node, &done).await {
                    tracing::warn!(error = %e, "fleet: cannot remove handled requests from the inbox");
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet: cannot read this node's inbox"),
        }
        tokio::time::sleep(link.poll_interval).await;
    }
}

async fn handle(
    inc: &Incidents,
    link: &Arc<FleetLink>,
    e: &InboxEntry,
    mine: &mut (HashSet<String>, VecDeque<String>),
) -> Handled {
    if mine.0.contains(&e.id) {
        return Handled::Drop;
    }
    let t = now();
    // Past its expiry the receiver answers it (`unclaimed`).
    if e.expires < t.unix_timestamp() {
        return Handled::Drop;
    }
    let req = match link.bucket.request(&e.id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Handled::Drop,
        Err(StoreError::S3 {
            kind: crate::store::s3::client::Kind::Other,
            detail,
            ..
        }) => {
            tracing::warn!(capture = %e.id, detail, "fleet: a request that is not valid is dropped");
            return Handled::Drop;
        }
        Err(err) => {
            tracing::warn!(capture = %e.id, error = %err, "fleet: cannot read a request");
            return Handled::Keep;
        }
    };
    if req.expires() < t {
        return Handled::Drop;
    }
    let claim = Claim {
        id: req.id.clone(),
        node: link.node.clone(),
        holder: link.holder.clone(),
        claimed_at: rfc3339(t),
        deadline: rfc3339(t + inc.capture_timeout() + CLAIM_GRACE),
        expired: false,
    };
    match link.bucket.claim(&claim).await {
        Ok(true) => {
            link.metrics.claims.fetch_add(1, Relaxed);
            mine.0.insert(req.id.clone());
            mine.1.push_back(req.id.clone());
            while mine.1.len() > REMEMBERED {
                if let Some(old) = mine.1.pop_front() {
                    mine.0.remove(&old);
                }
            }
            let ev = EventInput::new(&Actor::named("system"), Action::CaptureClaim, Outcome::Ok)
                .with_namespace(Some(req.namespace.clone()))
                .with_detail(format!(
                    "{}: claimed the request of {} from {} for {}/{}/{}; outcome due by {}",
                    req.id,
                    req.requested_by,
                    req.receiver,
                    req.namespace,
                    req.pod,
                    req.container,
                    claim.deadline
                ));
            if let Err(err) = inc.record(ev).await {
                // Claimed but not audited: the capture is not made (fail closed); the
                // receiver answers `failed` at the deadline.
                tracing::error!(error = %err, capture = %req.id, "cannot audit a claim: not capturing");
                return Handled::Drop;
            }
            let (inc, link) = (inc.clone(), link.clone());
            tokio::spawn(async move {
                let end = inc.take_request(&req, &link.node).await;
                write_outcome(&inc, &link, &req, &end).await;
            });
            Handled::Drop
        }
        Ok(false) => {
            link.metrics.claims_lost.fetch_add(1, Relaxed);
            match link.bucket.claim_of(&req.id).await {
                // This node's previous process claimed it and stopped.
                Ok(Some(c)) if c.node == link.node && c.holder != link.holder && !c.expired => {
                    if now() < c.deadline() {
                        return Handled::Keep;
                    }
                    match link.bucket.outcome(&req.id).await {
                        Ok(Some(_)) => Handled::Drop,
                        Ok(None) => match claimer_stopped(inc, link, &req, &c).await {
                            Ok(()) => Handled::Drop,
                            Err(_) => Handled::Keep,
                        },
                        Err(_) => Handled::Keep,
                    }
                }
                Ok(_) => Handled::Drop,
                Err(_) => Handled::Keep,
            }
        }
        Err(err) => {
            tracing::warn!(capture = %req.id, error = %err, "fleet: cannot claim a request");
            Handled::Keep
        }
    }
}

/// Writes a claimed request's outcome (once; a few tries), and audits it.
async fn write_outcome(
    inc: &Incidents,
    link: &FleetLink,
    req: &CaptureRequest,
    end: &CaptureStatus,
) {
    let state = match end.state {
        CaptureState::Sealed => "sealed",
        CaptureState::Refused => "refused",
        CaptureState::Deduplicated => "deduplicated",
        _ => "failed",
    };
    let o = Ended {
        id: req.id.clone(),
        state: state.to_owned(),
        record: end.record.clone(),
        reason: end.reason.clone(),
        node: Some(link.node.clone()),
        container_id: end.container_id.clone(),
        written_by: link.holder.clone(),
        at: rfc3339(now()),
    };
    let mut delay = Duration::from_millis(500);
    for attempt in 0..5 {
        match link.bucket.put_outcome(&o).await {
            Ok(written) => {
                let (outcome, detail) = if written {
                    link.metrics.outcomes.fetch_add(1, Relaxed);
                    (Outcome::Ok, format!("{}: outcome {state} written", req.id))
                } else {
                    (
                        Outcome::Error,
                        format!(
                            "{}: outcome {state} not written: the request was answered first (past its deadline)",
                            req.id
                        ),
                    )
                };
                let mut ev =
                    EventInput::new(&Actor::named("system"), Action::CaptureClaim, outcome)
                        .with_namespace(Some(req.namespace.clone()))
                        .with_detail(detail);
                ev.record = o.record.clone();
                if let Err(e) = inc.record(ev).await {
                    tracing::error!(error = %e, capture = %req.id, "cannot audit an outcome");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(capture = %req.id, attempt, error = %e, "fleet: cannot write an outcome yet");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!(capture = %req.id, "fleet: the outcome could not be written; the receiver answers failed at the deadline");
}
