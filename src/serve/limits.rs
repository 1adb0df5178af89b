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
pub enum Exceeded {
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
pub struct Counter<K: Eq + Hash + Clone> {
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
    pub fn new(per_key: usize, max_total: usize) -> Self {
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
    pub fn try_acquire(&self, key: &K) -> Result<Slot<K>, Exceeded> {
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
    pub fn held(&self) -> usize {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Slots refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

/// One place in a [`Counter`], given back when dropped.
pub struct Slot<K: Eq + Hash + Clone> {
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
