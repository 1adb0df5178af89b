//! What one client may hold at once, and whether a download still moves: per-key slot
//! counters (connections per address, requests and downloads per identity, with an
//! overall cap) and the progress of each download a connection carries, which the accept
//! loop watches to cut off the stalled ones.
//!
//! A [`Slot`] is held for as long as the thing it counts lives (a connection's task, a
//! request's handler, a download's body) and gives its place back when dropped, so a
//! client that goes away frees its slots with it. The maps hold only keys with a slot
//! taken: their size is bounded by the slots themselves.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exceeded {
    /// This key holds as many as one key may.
    #[error("at most {0} at once per client")]
    PerKey(usize),
    /// Everyone together holds as many as the server allows.
    #[error("at most {0} at once in all")]
    Total(usize),
}

struct Inner<K> {
    held: Mutex<HashMap<K, usize>>,
    total: AtomicUsize,
    per_key: usize,
    max_total: usize,
    refused: AtomicU64,
}

/// Slots counted per key, with a cap per key and one over all keys.
pub(crate) struct Counter<K: Eq + Hash + Clone> {
    inner: Arc<Inner<K>>,
}

impl<K: Eq + Hash + Clone> Clone for Counter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// At most `per_key` slots per key and `max_total` in all (each at least 1).
    pub(crate) fn new(per_key: usize, max_total: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                held: Mutex::new(HashMap::new()),
                total: AtomicUsize::new(0),
                per_key: per_key.max(1),
                max_total: max_total.max(1),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A slot for `key`, unless `key` or everyone holds the most allowed.
    pub(crate) fn try_acquire(&self, key: &K) -> Result<Slot<K>, Exceeded> {
        let inner = &self.inner;
        let mut held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        let refusal = if inner.total.load(Ordering::Relaxed) >= inner.max_total {
            Some(Exceeded::Total(inner.max_total))
        } else if held.get(key).copied().unwrap_or(0) >= inner.per_key {
            Some(Exceeded::PerKey(inner.per_key))
        } else {
            None
        };
        if let Some(why) = refusal {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        *held.entry(key.clone()).or_insert(0) += 1;
        inner.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            inner: self.inner.clone(),
            key: key.clone(),
        })
    }

    /// Slots held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Slots refused so far.
    #[cfg(test)]
    pub(crate) fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

/// One place in a [`Counter`], given back when dropped.
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    inner: Arc<Inner<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
        self.inner.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a download last handed its connection a byte; when dropped (the download ended),
/// notes the time in its connection's [`Downloads`].
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last_ms: AtomicU64,
    epoch: Instant,
    ended_ms: Arc<AtomicU64>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.ended_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

impl Progress {
    /// Notes that bytes moved now.
    pub fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn still_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The downloads one connection carries (handed to its requests as an extension).
#[derive(Debug)]
pub struct Downloads {
    live: Mutex<Vec<Weak<Progress>>>,
    epoch: Instant,
    /// When the last download ended (ms after `epoch`; 0: none has).
    ended_ms: Arc<AtomicU64>,
}

impl Default for Downloads {
    fn default() -> Self {
        Self {
            live: Mutex::default(),
            epoch: Instant::now(),
            ended_ms: Arc::default(),
        }
    }
}

impl Downloads {
    /// Registers a download starting now; it counts as long as the returned value lives.
    pub fn start(&self) -> Arc<Progress> {
        let p = Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            epoch: self.epoch,
            ended_ms: self.ended_ms.clone(),
        });
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&p));
        p
    }

    /// How long the connection has carried no download: zero while one is live, the
    /// time since the last one ended, or `None` if it never carried one.
    pub fn quiet_for(&self) -> Option<Duration> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        if !live.is_empty() {
            return Some(Duration::ZERO);
        }
        match self.ended_ms.load(Ordering::Relaxed) {
            0 => None,
            ended => Some(Duration::from_millis(
                (self.epoch.elapsed().as_millis() as u64).saturating_sub(ended),
            )),
        }
    }

    /// Whether a live download has moved no byte for `limit` or longer.
    pub fn stalled(&self, limit: Duration) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter()
            .filter_map(Weak::upgrade)
            .any(|p| p.still_for() >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_in_all_and_given_back_when_dropped() {
        let c: Counter<&str> = Counter::new(2, 3);
        let a1 = c.try_acquire(&"a").unwrap();
        let _a2 = c.try_acquire(&"a").unwrap();
        assert_eq!(c.try_acquire(&"a").err(), Some(Exceeded::PerKey(2)));
        let _b1 = c.try_acquire(&"b").unwrap();
        assert_eq!(c.try_acquire(&"c").err(), Some(Exceeded::Total(3)));
        drop(a1);
        let _c1 = c.try_acquire(&"c").unwrap();
        assert_eq!(c.held(), 3);
        assert_eq!(c.refused(), 2);
        drop(_c1);
        drop(_b1);
        drop(_a2);
        assert_eq!(c.held(), 0);
        assert!(
            c.inner.held.lock().unwrap().is_empty(),
            "no key left behind"
        );
    }

    #[test]
    fn a_download_that_does_not_move_is_stalled_and_a_finished_one_is_forgotten() {
        let d = Downloads::default();
        let p = d.start();
        assert!(!d.stalled(Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(d.stalled(Duration::from_millis(50)));
        p.moved();
        assert!(!d.stalled(Duration::from_millis(50)));
        assert_eq!(d.quiet_for(), Some(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(80));
        drop(p);
        assert!(!d.stalled(Duration::from_millis(50)));
        assert!(d.quiet_for().is_some_and(|q| q < Duration::from_millis(50)));
        assert_eq!(Downloads::default().quiet_for(), None);
    }
}

/// What to do with one failed authentication ([`AuthFailures::note`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureVerdict {
    /// The first from its source this interval: audit it now (and answer 401).
    Record,
    /// Counted into the source's summary at the interval's end (answer 401).
    Fold,
    /// Over the per-source or overall limit: counted, and answered 429.
    Limit,
}

/// Failures folded for one source (or for all sources beyond the tracked ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoldedFailures {
    /// The source address, or `None` for sources beyond [`AuthFailures`]' tracked ones.
    pub source: Option<std::net::IpAddr>,
    /// Failures not audited one by one.
    pub count: u64,
    /// Of them, answered 429.
    pub limited: u64,
}

#[derive(Default)]
struct FailureWindow {
    per_source: HashMap<std::net::IpAddr, (u64, u64)>,
    others: (u64, u64),
    total: u64,
}

/// Failed authentications per source address over a fixed interval: every failure stays
/// visible in the audit log, but bounded. The first from a source in an interval is
/// audited at once; the rest are counted and audited as one summary per source when the
/// interval ends ([`AuthFailures::take`]); past `per_source` in an interval a source is
/// answered 429, and past `total` everyone unauthenticated is. At most `MAX_SOURCES`
/// sources are tracked per interval, the rest summed as one: the log grows by at most
/// `2 x MAX_SOURCES + 1` events per interval whatever the flood.
pub(crate) struct AuthFailures {
    window: Mutex<FailureWindow>,
    per_source: u64,
    total: u64,
    /// The audit log's health as last checked for a folded failure, and when.
    log_checked: Mutex<Option<(Instant, bool)>>,
}

impl AuthFailures {
    /// Sources tracked one by one per interval.
    pub(crate) const MAX_SOURCES: usize = 64;

    /// At most `per_source` failures per source and `total` in all per interval before
    /// 429s.
    pub(crate) fn new(per_source: u64, total: u64) -> Self {
        Self {
            window: Mutex::default(),
            per_source: per_source.max(1),
            total: total.max(1),
            log_checked: Mutex::new(None),
        }
    }

    /// Whether the audit log was healthy when last checked, if that was less than
    /// [`Self::LOG_CHECK_EVERY`] ago: a folded failure (which writes nothing now) is answered
    /// only while the log could take its count, without checking the log on every one.
    pub(crate) fn log_known_healthy(&self) -> Option<bool> {
        let checked = self.log_checked.lock().unwrap_or_else(|p| p.into_inner());
        checked
            .filter(|(at, _)| at.elapsed() < Self::LOG_CHECK_EVERY)
            .map(|(_, ok)| ok)
    }

    /// Notes the audit log's health as checked now.
    pub(crate) fn note_log_health(&self, ok: bool) {
        *self.log_checked.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), ok));
    }

    /// How long a check of the audit log's health stands for folded failures.
    pub(crate) const LOG_CHECK_EVERY: Duration = Duration::from_millis(500);

    /// Notes a failed authentication from `source`.
    pub(crate) fn note(&self, source: std::net::IpAddr) -> FailureVerdict {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.total += 1;
        let over_total = w.total > self.total;
        let tracked = w.per_source.len() < Self::MAX_SOURCES || w.per_source.contains_key(&source);
        if !tracked {
            w.others.0 += 1;
            if over_total {
                w.others.1 += 1;
                return FailureVerdict::Limit;
            }
            return FailureVerdict::Fold;
        }
        let entry = w.per_source.entry(source).or_insert((0, 0));
        entry.0 += 1;
        if entry.0 == 1 && !over_total {
            return FailureVerdict::Record;
        }
        if over_total || entry.0 > self.per_source {
            entry.1 += 1;
            return FailureVerdict::Limit;
        }
        FailureVerdict::Fold
    }

    /// Ends the interval: the summaries of what was folded (sources with more than their
    /// first failure, and the untracked ones), and a fresh interval.
    pub(crate) fn take(&self) -> Vec<FoldedFailures> {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out: Vec<FoldedFailures> = w
            .per_source
            .into_iter()
            .filter_map(|(source, (n, limited))| {
                // The first was audited on its own (unless the overall limit was already
                // passed, in which case it was limited and counted here).
                let folded = if n > limited { n - 1 } else { n };
                (folded > 0).then_some(FoldedFailures {
                    source: Some(source),
                    count: folded,
                    limited,
                })
            })
            .collect();
        if w.others.0 > 0 {
            out.push(FoldedFailures {
                source: None,
                count: w.others.0,
                limited: w.others.1,
            });
        }
        out
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[test]
    fn failures_are_recorded_once_per_source_then_folded_then_limited() {
        let f = AuthFailures::new(3, 1000);
        let a: std::net::IpAddr = [127, 0, 0, 2].into();
        let verdicts: Vec<_> = (0..5).map(|_| f.note(a)).collect();
        use FailureVerdict::*;
        assert_eq!(verdicts, [Record, Fold, Fold, Limit, Limit]);
        let folded = f.take();
        assert_eq!(
            folded,
            [FoldedFailures {
                source: Some(a),
                count: 4,
                limited: 2
            }]
        );
        assert_eq!(f.note(a), Record, "a new interval");
    }

    #[test]
    fn many_sources_are_tracked_up_to_a_bound_and_limited_overall() {
        let f = AuthFailures::new(100, 200);
        let mut records = 0;
        let mut limited = 0;
        for i in 0..100u32 {
            let ip: std::net::IpAddr = std::net::Ipv4Addr::from(0x7f00_0000 + i).into();
            for _ in 0..3 {
                match f.note(ip) {
                    FailureVerdict::Record => records += 1,
                    FailureVerdict::Limit => limited += 1,
                    FailureVerdict::Fold => {}
                }
            }
        }
        assert_eq!(records, AuthFailures::MAX_SOURCES);
        assert_eq!(limited, 300 - 200);
        let folded = f.take();
        assert!(folded.len() <= AuthFailures::MAX_SOURCES + 1);
        let total: u64 = folded.iter().map(|x| x.count).sum::<u64>() + records as u64;
        assert_eq!(total, 300, "every failure is accounted for");
    }
}
