//! The gate every automatic capture passes (alerts now; schedules, thresholds and
//! captures before a stop later), so that an alert storm can hurt neither the node nor
//! the evidence:
//!
//! 1. **Deduplication**: one capture per key within a cooldown. The keys of a capture are
//!    its container (the runtime's ID) and its alert (Alertmanager's fingerprint, Falco's
//!    rule and container): a repeat of either within the cooldown is `Duplicate`, naming
//!    the capture it repeats. A key is taken when a capture is admitted, whatever then
//!    becomes of it: one attempt per container per cooldown, so a failing runtime is not
//!    asked again and again by a storm.
//! 2. **Budgets** per namespace and UTC day: records, and bytes (the sealed sizes, plus
//!    the working set of a capture under way); and per rule, records a day.
//! 3. **Concurrency**: at most `max_concurrent` checkpoints at once on the node; up to
//!    [`MAX_WAITING`] more wait their turn, beyond that a capture is refused (`Busy`).
//! 4. **Disk**: before the runtime is asked, the container's memory working set (CRI
//!    `ContainerStats`) must fit the free space of staging and of the store (spool), twice
//!    when they share a file system (the plaintext and the sealed copy), plus a margin.
//!
//! State is in memory, for this process: a restart forgets cooldowns and the day's
//! budgets (stated in the configuration reference).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many admitted captures may wait for a free slot; past it they are refused.
pub(crate) const MAX_WAITING: usize = 64;
/// The most deduplication keys remembered; the oldest are forgotten first (a storm of
/// distinct alerts cannot grow the gate without bound).
pub(crate) const MAX_KEYS: usize = 100_000;

/// The gate's limits (`[capture]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GateLimits {
    /// One capture per key within this time.
    pub(crate) cooldown: Duration,
    /// Checkpoints at once on this node.
    pub(crate) max_concurrent: usize,
    /// Records per namespace and UTC day.
    pub(crate) namespace_records_per_day: u32,
    /// Sealed bytes per namespace and UTC day.
    pub(crate) namespace_bytes_per_day: u64,
    /// Free space kept beyond what a checkpoint needs.
    pub(crate) disk_margin: u64,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(600),
            max_concurrent: 1,
            namespace_records_per_day: 20,
            namespace_bytes_per_day: 20 << 30,
            disk_margin: 1 << 30,
        }
    }
}

/// Why the gate did not let a capture through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The same container or alert was captured within the cooldown.
    #[error(
        "deduplicated: {key} was captured within the cooldown ({cooldown_secs} s) by capture {of}"
    )]
    Duplicate {
        /// The key that matched.
        key: String,
        /// The capture this one repeats.
        of: String,
        /// The cooldown in seconds.
        cooldown_secs: u64,
    },
    /// The namespace's records for today are spent.
    #[error("namespace {namespace} has had its {limit} captures today (namespace_records_per_day)")]
    NamespaceRecords {
        /// Namespace.
        namespace: String,
        /// The limit.
        limit: u32,
    },
    /// The namespace's bytes for today are spent.
    #[error(
        "namespace {namespace} would pass its {limit} bytes of captures today (namespace_bytes_per_day; {used} used, this one needs about {need})"
    )]
    NamespaceBytes {
        /// Namespace.
        namespace: String,
        /// The limit.
        limit: u64,
        /// Bytes used today.
        used: u64,
        /// The estimate for this capture.
        need: u64,
    },
    /// The rule's records for today are spent.
    #[error("rule {rule} has had its {limit} captures today (max_per_day)")]
    RuleRecords {
        /// Rule name.
        rule: String,
        /// The limit.
        limit: u32,
    },
    /// Too many captures wait for a slot.
    #[error("{MAX_WAITING} captures already wait for a free slot (max_concurrent); refused")]
    Busy,
    /// The disk cannot hold the checkpoint.
    #[error(
        "not enough disk: {path} has {free} bytes free, the checkpoint needs about {need} (working set {working_set}) plus the {margin}-byte margin; the runtime was not asked"
    )]
    Disk {
        /// The directory checked.
        path: String,
        /// Free bytes there.
        free: u64,
        /// Bytes the checkpoint needs there.
        need: u64,
        /// The container's working set.
        working_set: u64,
        /// `disk_margin`.
        margin: u64,
    },
    /// The free space could not be read.
    #[error("cannot read the free space of {path}: {error}; the runtime was not asked")]
    DiskUnknown {
        /// The directory.
        path: String,
        /// Why.
        error: String,
    },
}

impl Refusal {
    /// A short word for metrics and the capture's state.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Duplicate { .. } => "deduplicated",
            Self::NamespaceRecords { .. } | Self::NamespaceBytes { .. } => "namespace-budget",
            Self::RuleRecords { .. } => "rule-budget",
            Self::Busy => "busy",
            Self::Disk { .. } | Self::DiskUnknown { .. } => "disk",
        }
    }
}

/// What one capture asks of the gate.
#[derive(Debug, Clone)]
pub(crate) struct Ask<'a> {
    /// The capture's ID (named in a later duplicate's refusal).
    pub(crate) capture: &'a str,
    /// Deduplication keys (container, alert).
    pub(crate) keys: Vec<String>,
    /// The namespace whose budget it spends.
    pub(crate) namespace: &'a str,
    /// The rule that matched and its daily limit.
    pub(crate) rule: Option<(&'a str, Option<u32>)>,
    /// The rule's own cooldown, if it has one.
    pub(crate) cooldown: Option<Duration>,
}

#[derive(Debug, Default)]
struct Budget {
    day: u64,
    records: u32,
    bytes: u64,
}

impl Budget {
    fn today(&mut self, day: u64) -> &mut Self {
        if self.day != day {
            *self = Self {
                day,
                ..Self::default()
            };
        }
        self
    }
}

/// A deduplication key's holder: until when, which capture, in which namespace.
#[derive(Debug)]
struct Taken {
    until: Instant,
    capture: String,
    namespace: String,
}

/// A key taken within its cooldown: the refusal to answer, and the namespace of the
/// capture that took it (a caller is authorized there before it is told).
#[derive(Debug)]
pub(crate) struct Duplicate {
    /// The refusal ([`Refusal::Duplicate`]).
    pub(crate) refusal: Refusal,
    /// The namespace of the capture it repeats.
    pub(crate) namespace: String,
}

#[derive(Debug, Default)]
struct State {
    /// key -> the capture that took it, and until when
    seen: HashMap<String, Taken>,
    /// Keys in the order they were taken, for eviction.
    order: VecDeque<String>,
    namespaces: HashMap<String, Budget>,
    rules: HashMap<String, Budget>,
    waiting: usize,
}

/// The gate (cheap to clone; one per process).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    limits: GateLimits,
    state: Arc<Mutex<State>>,
    slots: Arc<Semaphore>,
    /// Directories a checkpoint writes into (staging, the store or spool).
    disks: Vec<PathBuf>,
}

/// An admitted capture: holds its place in the day's budgets until it ends
/// ([`Ticket::sealed`] books the real size; dropping it books nothing more).
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Gate,
    namespace: String,
    waiting: bool,
}

/// A slot to checkpoint in; the next waiting capture starts when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

impl Gate {
    /// A gate with `limits`, checking free space in `disks`.
    pub(crate) fn new(limits: GateLimits, disks: Vec<PathBuf>) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Self {
            limits,
            state: Arc::default(),
            slots,
            disks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The capture a key was taken by within its cooldown, if any (a cheap check before
    /// the runtime is asked anything).
    pub(crate) fn duplicate_of(&self, key: &str) -> Option<Duplicate> {
        let now = Instant::now();
        let state = self.lock();
        match state.seen.get(key) {
            Some(taken) if taken.until > now => Some(Duplicate {
                refusal: Refusal::Duplicate {
                    key: key.to_owned(),
                    of: taken.capture.clone(),
                    cooldown_secs: self.limits.cooldown.as_secs(),
                },
                namespace: taken.namespace.clone(),
            }),
            _ => None,
        }
    }

    /// Admits a capture or says why not. Admission takes its keys for the cooldown and
    /// books one record against the namespace's and the rule's day.
    pub(crate) fn admit(&self, ask: &Ask<'_>) -> Result<Ticket, Refusal> {
        self.admit_at(ask, Instant::now(), SystemTime::now())
    }

    fn admit_at(&self, ask: &Ask<'_>, now: Instant, wall: SystemTime) -> Result<Ticket, Refusal> {
        let cooldown = ask.cooldown.unwrap_or(self.limits.cooldown);
        let day = utc_day(wall);
        let mut state = self.lock();
        for key in &ask.keys {
            if let Some(taken) = state.seen.get(key)
                && taken.until > now
            {
                return Err(Refusal::Duplicate {
                    key: key.clone(),
                    of: taken.capture.clone(),
                    cooldown_secs: cooldown.as_secs(),
                });
            }
        }
        let ns = state
            .namespaces
            .entry(ask.namespace.to_owned())
            .or_default()
            .today(day);
        if ns.records >= self.limits.namespace_records_per_day {
            return Err(Refusal::NamespaceRecords {
                namespace: ask.namespace.to_owned(),
                limit: self.limits.namespace_records_per_day,
            });
        }
        if ns.bytes >= self.limits.namespace_bytes_per_day {
            return Err(Refusal::NamespaceBytes {
                namespace: ask.namespace.to_owned(),
                limit: self.limits.namespace_bytes_per_day,
                used: ns.bytes,
                need: 0,
            });
        }
        if let Some((rule, Some(limit))) = ask.rule {
            let r = state.rules.entry(rule.to_owned()).or_default().today(day);
            if r.records >= limit {
                return Err(Refusal::RuleRecords {
                    rule: rule.to_owned(),
                    limit,
                });
            }
        }
        if state.waiting >= MAX_WAITING + self.limits.max_concurrent {
            return Err(Refusal::Busy);
        }
        // Admitted: book it.
        state.waiting += 1;
        if let Some(ns) = state.namespaces.get_mut(ask.namespace) {
            ns.records += 1;
        }
        if let Some((rule, _)) = ask.rule {
            state
                .rules
                .entry(rule.to_owned())
                .or_default()
                .today(day)
                .records += 1;
        }
        for key in &ask.keys {
            state.seen.insert(
                key.clone(),
                Taken {
                    until: now + cooldown,
                    capture: ask.capture.to_owned(),
                    namespace: ask.namespace.to_owned(),
                },
            );
            state.order.push_back(key.clone());
        }
        // Forget expired keys, and the oldest past the cap.
        while let Some(front) = state.order.front() {
            let expired = state.seen.get(front).is_none_or(|t| t.until <= now);
            if !expired && state.seen.len() <= MAX_KEYS {
                break;
            }
            if let Some(key) = state.order.pop_front() {
                state.seen.remove(&key);
            }
        }
        Ok(Ticket {
            gate: self.clone(),
            namespace: ask.namespace.to_owned(),
            waiting: true,
        })
    }

    /// Checks that the disk can hold a checkpoint of a container whose memory working set
    /// is `working_set` bytes (`None` when the runtime did not say: the margin alone).
    pub(crate) fn check_disk(&self, working_set: Option<u64>) -> Result<(), Refusal> {
        let ws = working_set.unwrap_or(0);
        let margin = self.limits.disk_margin;
        // Directories on one file system share its free space: each writes about the
        // working set (the plaintext in staging, the sealed copy in the store).
        let mut by_fs: Vec<(u64, PathBuf, u64)> = Vec::new();
        for dir in &self.disks {
            let stat = match rustix::fs::statvfs(dir) {
                Ok(s) => s,
                Err(e) => {
                    return Err(Refusal::DiskUnknown {
                        path: dir.display().to_string(),
                        error: e.to_string(),
                    });
                }
            };
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            match by_fs.iter_mut().find(|(fsid, _, _)| *fsid == stat.f_fsid) {
                Some((_, _, need)) => *need = need.saturating_add(ws),
                None => by_fs.push((stat.f_fsid, dir.clone(), ws)),
            }
            let need = by_fs
                .iter()
                .find(|(fsid, _, _)| *fsid == stat.f_fsid)
                .map_or(ws, |(_, _, n)| *n);
            if free < need.saturating_add(margin) {
                return Err(Refusal::Disk {
                    path: dir.display().to_string(),
                    free,
                    need,
                    working_set: ws,
                    margin,
                });
            }
        }
        Ok(())
    }

    /// Checks the namespace's byte budget against a capture of about `estimate` bytes.
    pub(crate) fn check_bytes(&self, namespace: &str, estimate: u64) -> Result<(), Refusal> {
        let day = utc_day(SystemTime::now());
        let mut state = self.lock();
        let ns = state
            .namespaces
            .entry(namespace.to_owned())
            .or_default()
            .today(day);
        if ns.bytes.saturating_add(estimate) > self.limits.namespace_bytes_per_day {
            return Err(Refusal::NamespaceBytes {
                namespace: namespace.to_owned(),
                limit: self.limits.namespace_bytes_per_day,
                used: ns.bytes,
                need: estimate,
            });
        }
        Ok(())
    }

    /// Captures waiting for a slot or checkpointing now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().waiting
    }
}

impl Ticket {
    /// Waits for a slot to checkpoint in (at most `max_concurrent` at once); `None` only
    /// if the gate was shut (it never is while the process runs).
    pub(crate) async fn slot(&self) -> Option<Slot> {
        let permit = self.gate.slots.clone().acquire_owned().await.ok()?;
        Some(Slot { _permit: permit })
    }

    /// Books the sealed size against the namespace's bytes for today.
    pub(crate) fn sealed(&self, bytes: u64) {
        let day = utc_day(SystemTime::now());
        let mut state = self.gate.lock();
        let ns = state
            .namespaces
            .entry(self.namespace.clone())
            .or_default()
            .today(day);
        ns.bytes = ns.bytes.saturating_add(bytes);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waiting {
            let mut state = self.gate.lock();
            state.waiting = state.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(capture: &'a str, keys: &[&str], ns: &'a str) -> Ask<'a> {
        Ask {
            capture,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            namespace: ns,
            rule: None,
            cooldown: None,
        }
    }

    #[test]
    fn a_storm_for_one_container_is_admitted_once_within_the_cooldown() {
        let gate = Gate::new(GateLimits::default(), vec![]);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let first = gate.admit_at(&ask("c0", &["container:abc", "alert:f1"], "shop"), t0, wall);
        assert!(first.is_ok());
        let mut dups = 0;
        for i in 1..200 {
            let fp = format!("alert:f{i}");
            match gate.admit_at(&ask("cx", &["container:abc", &fp], "shop"), t0, wall) {
                Err(Refusal::Duplicate { of, .. }) => {
                    assert_eq!(of, "c0");
                    dups += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(dups, 199);
        // After the cooldown the container may be captured again.
        let later = t0 + Duration::from_secs(601);
        assert!(
            gate.admit_at(&ask("c1", &["container:abc"], "shop"), later, wall)
                .is_ok()
        );
    }

    #[test]
    fn budgets_per_namespace_and_rule_hold_for_the_day() {
        let limits = GateLimits {
            namespace_records_per_day: 2,
            ..GateLimits::default()
        };
        let gate = Gate::new(limits, vec![]);
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut tickets = Vec::new();
        for i in 0..2 {
            let key = format!("container:{i}");
            tickets.push(
                gate.admit_at(&ask("c", &[&key], "shop"), now, wall)
                    .unwrap(),
            );
        }
        let third = gate.admit_at(&ask("c", &["container:9"], "shop"), now, wall);
        assert!(
            matches!(third, Err(Refusal::NamespaceRecords { .. })),
            "{third:?}"
        );
        // Another namespace has its own budget; tomorrow is a new day.
        assert!(
            gate.admit_at(&ask("c", &["container:8"], "other"), now, wall)
                .is_ok()
        );
        let tomorrow = wall + Duration::from_secs(86_400);
        assert!(
            gate.admit_at(&ask("c", &["container:7"], "shop"), now, tomorrow)
                .is_ok()
        );

        let mut a = ask("c", &["container:r1"], "rules");
        a.rule = Some(("shell", Some(1)));
        assert!(gate.admit_at(&a, now, wall).is_ok());
        a.keys = vec!["container:r2".into()];
        assert!(matches!(
            gate.admit_at(&a, now, wall),
            Err(Refusal::RuleRecords { .. })
        ));
    }

    #[test]
    fn bytes_are_booked_when_sealed_and_checked_before_the_next() {
        let limits = GateLimits {
            namespace_bytes_per_day: 1000,
            ..GateLimits::default()
        };
        let gate = Gate::new(limits, vec![]);
        let t = gate.admit(&ask("c", &["container:1"], "shop")).unwrap();
        assert!(gate.check_bytes("shop", 900).is_ok());
        t.sealed(900);
        assert!(matches!(
            gate.check_bytes("shop", 200),
            Err(Refusal::NamespaceBytes { used: 900, .. })
        ));
    }

    #[test]
    fn the_disk_check_counts_staging_and_store_on_one_file_system_twice() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("staging");
        let b = dir.path().join("store");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let stat = rustix::fs::statvfs(dir.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        let gate = Gate::new(
            GateLimits {
                disk_margin: 0,
                ..GateLimits::default()
            },
            vec![a.clone(), b],
        );
        assert!(gate.check_disk(Some(free / 4)).is_ok());
        // Alone it would fit, twice it does not.
        let r = gate.check_disk(Some(free * 2 / 3));
        assert!(matches!(r, Err(Refusal::Disk { .. })), "{r:?}");
        let gate = Gate::new(
            GateLimits {
                disk_margin: u64::MAX / 2,
                ..GateLimits::default()
            },
            vec![a],
        );
        assert!(matches!(gate.check_disk(None), Err(Refusal::Disk { .. })));
    }

    #[tokio::test]
    async fn slots_bound_concurrent_checkpoints_and_waiters() {
        let gate = Gate::new(GateLimits::default(), vec![]);
        let t1 = gate.admit(&ask("a", &["container:a"], "n")).unwrap();
        let t2 = gate.admit(&ask("b", &["container:b"], "m")).unwrap();
        let s1 = t1.slot().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(50), t2.slot()).await;
        assert!(second.is_err(), "a second slot while max_concurrent = 1");
        drop(s1);
        let _s2 = tokio::time::timeout(Duration::from_secs(1), t2.slot())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.in_flight(), 2);
        drop(t1);
        assert_eq!(gate.in_flight(), 1);
    }
}
