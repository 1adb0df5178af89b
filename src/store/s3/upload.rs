//! The node agent's uploader: records sealed into the local spool (a [`LocalStore`] holding
//! only sealed blobs and signed manifests, never plaintext) go to the bucket, blob first,
//! then the manifest; the spool copy is removed only once the bucket has both. An
//! unreachable store means retries with capped exponential backoff, never a lost record;
//! a full spool makes capture refuse new checkpoints ([`check_spool`]). A record the store
//! refuses on its own (another object already at its key, a policy denying its keys, a
//! damaged manifest) is *stuck*: it stays in the spool, is retried on its own backoff
//! (2 s doubling to 10 min) and never holds up the records behind it; only a store-wide
//! failure (unreachable, credentials) stops a drain. Progress, health and the stuck
//! records are in `SPOOL/upload-status.json`.
//!
//! Uploads are idempotent: keys derive from the record ID, and a record whose manifest is
//! already in the bucket with the same sealed digest is only removed from the spool, so a
//! crash anywhere in between yields each record exactly once.
//!
//! One uploader at a time per spool: a drain (uploads, then audit shipping) holds an
//! exclusive `flock` on `SPOOL/uploader.lock`. Several processes may share a spool (a
//! watcher, a proxy, one-shot `seal --config` runs, in any PID namespace): a long-running
//! uploader that finds the lock taken leaves the records to its holder and looks again at
//! its next rescan; a one-shot drain waits for the lock, then uploads what is left.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use super::S3Store;
use crate::audit::{self, Actor, EventInput};
use crate::config::Config;
use crate::manifest::RecordId;
use crate::store::{LocalStore, StoreError};

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the spool is rescanned when nothing wakes the uploader.
const RESCAN: Duration = Duration::from_secs(2);
/// First and longest wait before a stuck record is tried again.
const STUCK_FIRST: Duration = Duration::from_secs(2);
const STUCK_MAX: Duration = Duration::from_secs(600);

/// A record the store refused on its own, as reported in the status.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Stuck {
    /// The record ID.
    pub record: String,
    /// Why it did not go up (the store's answer).
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was first refused (RFC 3339).
    pub since: String,
    /// When it will be tried next (RFC 3339).
    pub next_attempt: String,
}

/// What one drain did.
#[derive(Debug, Clone, Default)]
pub struct Drained {
    /// Records that went up (or were already there).
    pub uploaded: usize,
    /// Records refused on their own, with why; they stay in the spool.
    pub stuck: Vec<(RecordId, String)>,
    /// How many of those were refused as access denied.
    pub denied: usize,
}

/// Whether an error concerns the store as a whole (stop the drain, back off) rather than
/// one record (mark it stuck, go on with the others).
fn store_wide(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unreachable { .. }
            | StoreError::Credentials { .. }
            | StoreError::NoCredentials { .. }
            | StoreError::Audit(_)
            | StoreError::Io { .. }
            | StoreError::Key(_)
            | StoreError::Missing(_)
    )
}

#[derive(Debug, Clone)]
struct StuckEntry {
    error: String,
    attempts: u32,
    since: String,
    next: Instant,
    wait: Duration,
}

/// The uploader's health, as written to `upload-status.json`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Status {
    /// `ok`, `retrying` (store unreachable), `refused` (credentials, or every record
    /// denied), `stuck` (some records refused on their own, the others go up), or
    /// `not-started` (no uploader has run on this spool yet; [`Status::read`]).
    pub state: String,
    /// Records waiting in the spool.
    pub pending: u64,
    /// Bytes waiting in the spool.
    pub pending_bytes: u64,
    /// Records uploaded since start.
    pub uploaded: u64,
    /// The last error, while failing.
    pub last_error: Option<String>,
    /// When the last record went up (RFC 3339).
    pub last_upload: Option<String>,
    /// When this status was written.
    pub updated: String,
    /// Records the store refused on their own; they stay in the spool and are retried.
    pub stuck: Vec<Stuck>,
}

impl Status {
    /// What `SPOOL/upload-status.json` says, or, before any uploader has written it, the
    /// spool as it is now (`not-started`, with what waits in it).
    pub fn read(spool: &LocalStore) -> Result<Self, StoreError> {
        let path = spool.root().join("upload-status.json");
        match crate::fsutil::read_regular_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| StoreError::Unreadable {
                at: path.display().to_string(),
                expected: "an upload status",
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                state: "not-started".into(),
                pending: spool.ids()?.len() as u64,
                pending_bytes: spool.bytes()?,
                updated: crate::node::now_rfc3339(),
                ..Self::default()
            }),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }
}

/// Refuses new captures while the spool is at its limit.
pub fn check_spool(spool: &LocalStore, max: u64) -> Result<(), StoreError> {
    let used = spool.bytes()?;
    if used >= max {
        return Err(StoreError::SpoolFull { used, max });
    }
    Ok(())
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Blob and manifest went up.
    Uploaded,
    /// The bucket already had it (a retry after a crash); only the spool copy went.
    AlreadyThere,
}

/// Moves sealed records from the spool to the bucket.
#[derive(Clone)]
pub struct Uploader {
    s3: S3Store,
    spool: LocalStore,
    node: String,
    status: Arc<Mutex<Status>>,
    stuck: Arc<Mutex<BTreeMap<RecordId, StuckEntry>>>,
    wake: Arc<Notify>,
    /// This process published and checked its key in the bucket: an idle rescan (every
    /// 2 s) does not do it again, a drain with records to upload does.
    key_checked: Arc<std::sync::atomic::AtomicBool>,
}

impl Uploader {
    /// The uploader of `config` (`[store] kind = "s3"`).
    pub fn new(config: &Config, spool: LocalStore) -> Result<Self, StoreError> {
        let node = crate::node::node_name(config);
        if !super::valid_node_name(&node) {
            return Err(StoreError::BadNodeName { node });
        }
        Ok(Self {
            s3: S3Store::new(&config.store)?.with_key_memory(spool.known_keys_dir()),
            spool,
            node,
            status: Arc::default(),
            stuck: Arc::default(),
            wake: Arc::new(Notify::new()),
            key_checked: Arc::default(),
        })
    }

    /// A handle that makes the uploader look at the spool now.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Uploads one spooled record and removes it from the spool.
    pub async fn upload_one(&self, id: &RecordId) -> Result<Outcome, StoreError> {
        let manifest = self.spool.manifest(id)?;
        let remote = match self.s3.manifest(id).await {
            Ok(m) => Some(m),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let outcome = match remote {
            Some(r) if r.sealed.sha256 == manifest.sealed.sha256 => Outcome::AlreadyThere,
            Some(r) => {
                return Err(StoreError::Conflict {
                    key: self.s3.manifest_key(id),
                    detail: format!(
                        "a manifest of a sealed blob with SHA-256 {}, this record's is {}",
                        crate::inspect::escape_control(
                            &r.sealed.sha256.chars().take(80).collect::<String>()
                        ),
                        manifest.sealed.sha256
                    ),
                });
            }
            None => {
                let blob_key = self.s3.blob_key(id);
                // A run that died between the blob and the manifest left the blob there:
                // never write a second version of it (under Object Lock it could never be
                // removed), nor over anybody else's object.
                match self
                    .s3
                    .holds(&blob_key, manifest.sealed.size, &manifest.sealed.sha256)
                    .await?
                {
                    super::read::Holds::Same => {}
                    super::read::Holds::Other(detail) => {
                        return Err(StoreError::Conflict {
                            key: blob_key,
                            detail,
                        });
                    }
                    super::read::Holds::Nothing => {
                        self.s3
                            .put_file(
                                &blob_key,
                                &self.spool.blob_path(id),
                                manifest.sealed.size,
                                &manifest.sealed.sha256,
                            )
                            .await?;
                        match self.s3.head_size(&blob_key).await? {
                            Some(n) if n == manifest.sealed.size => {}
                            other => {
                                return Err(StoreError::Conflict {
                                    key: blob_key,
                                    detail: format!(
                                        "the store reports {other:?} bytes after the upload, \
                                         expected {}",
                                        manifest.sealed.size
                                    ),
                                });
                            }
                        }
                    }
                }
                let bytes = std::fs::read(self.spool.manifest_path(id))
                    .map_err(|e| StoreError::io(&self.spool.manifest_path(id), e))?;
                self.s3
                    .put_bytes(&self.s3.manifest_key(id), bytes, false, true)
                    .await?;
                Outcome::Uploaded
            }
        };
        // The upload is recorded before the spool copy goes: an audit failure keeps it.
        self.spool
            .audit_log()?
            .append(EventInput {
                bytes: Some(manifest.sealed.size),
                ..EventInput::new(
                    &Actor::named(format!("system:uploader@{}", self.node)),
                    audit::Action::Upload,
                    audit::Outcome::Ok,
                )
                .with_record(id.to_string())
                .with_namespace(manifest.namespace.clone())
                .with_detail(format!(
                    "s3://{}/{}{}",
                    self.s3.bucket(),
                    self.s3.blob_key(id),
                    if outcome == Outcome::AlreadyThere {
                        " (already there)"
                    } else {
                        ""
                    }
                ))
            })
            .map_err(|e| StoreError::Audit(Box::new(e)))?;
        self.spool.delete(id)?;
        Ok(outcome)
    }

    /// Uploads everything in the spool now (waiting for another process's drain of the
    /// same spool to finish first). A store-wide failure (unreachable, credentials) stops
    /// it with that error; a record refused on its own is reported in [`Drained::stuck`]
    /// and the others go on. Every record is tried, whatever its backoff.
    pub async fn drain(&self) -> Result<Drained, StoreError> {
        let path = self.spool.root().join("uploader.lock");
        let lock = super::lock_exclusive(&path).await?;
        let n = self.drain_locked(true).await;
        drop(lock);
        n
    }

    /// [`Self::drain`] unless another process is draining this spool now (`None` then:
    /// its holder uploads what is there); stuck records wait for their backoff.
    pub async fn try_drain(&self) -> Result<Option<Drained>, StoreError> {
        let path = self.spool.root().join("uploader.lock");
        let lock = crate::fsutil::open_lock_file(&path).map_err(|e| StoreError::io(&path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        let n = self.drain_locked(false).await;
        drop(lock);
        n.map(Some)
    }

    async fn drain_locked(&self, every: bool) -> Result<Drained, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let ids = self.spool.ids()?;
        // The key before any record goes up, and once per process: an idle node's rescan
        // then costs the bucket nothing but the audit segments it has to ship.
        if !ids.is_empty() || !self.key_checked.load(Relaxed) {
            let key = self.spool.verifying_key()?;
            self.s3.publish_key(&self.node, &key).await?;
            self.s3.check_own_key(&self.node, &key).await?;
            self.key_checked.store(true, Relaxed);
        }
        let mut out = Drained::default();
        self.forget_gone(&ids);
        for id in ids {
            let due = self
                .stuck
                .lock()
                .map(|m| m.get(&id).is_none_or(|e| every || e.next <= Instant::now()))
                .unwrap_or(true);
            if !due {
                if let Some(e) = self.stuck.lock().ok().and_then(|m| m.get(&id).cloned()) {
                    out.stuck.push((id, e.error));
                }
                continue;
            }
            match self.upload_one(&id).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    out.uploaded += 1;
                    let was = self.stuck.lock().ok().and_then(|mut m| m.remove(&id));
                    if was.is_some() {
                        tracing::info!(record = %id, "record went up after being stuck");
                    }
                    self.update(|s| {
                        s.uploaded += 1;
                        s.last_upload = Some(crate::node::now_rfc3339());
                    });
                }
                Err(e) if store_wide(&e) => return Err(e),
                Err(e) => {
                    if matches!(
                        e,
                        StoreError::S3 {
                            kind: super::client::Kind::Denied,
                            ..
                        }
                    ) {
                        out.denied += 1;
                    }
                    let msg = e.to_string();
                    self.note_stuck(&id, &msg);
                    out.stuck.push((id, msg));
                }
            }
        }
        crate::store::s3::ship::ship(&self.s3, &self.spool, &self.node).await?;
        Ok(out)
    }

    /// Records a refusal of `id`: its next try backs off (2 s doubling to 10 min); said
    /// once per record and reason, not at every try.
    fn note_stuck(&self, id: &RecordId, msg: &str) {
        let Ok(mut m) = self.stuck.lock() else {
            return;
        };
        let now = Instant::now();
        match m.get_mut(id) {
            Some(e) => {
                if e.error != msg {
                    tracing::warn!(record = %id, error = msg, "record stays in the spool");
                    e.error = msg.to_owned();
                }
                e.attempts += 1;
                e.wait = (e.wait * 2).min(STUCK_MAX);
                e.next = now + e.wait;
            }
            None => {
                tracing::warn!(record = %id, error = msg, "record stays in the spool");
                m.insert(
                    id.clone(),
                    StuckEntry {
                        error: msg.to_owned(),
                        attempts: 1,
                        since: crate::node::now_rfc3339(),
                        next: now + STUCK_FIRST,
                        wait: STUCK_FIRST,
                    },
                );
            }
        }
    }

    /// Drops the stuck entries of records no longer in the spool (deleted, or uploaded by
    /// another process).
    fn forget_gone(&self, ids: &[RecordId]) {
        if let Ok(mut m) = self.stuck.lock() {
            m.retain(|id, _| ids.contains(id));
        }
    }

    /// The stuck records as the status reports them.
    fn stuck_report(&self) -> Vec<Stuck> {
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        self.stuck
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, e)| Stuck {
                        record: id.to_string(),
                        error: e.error.clone(),
                        attempts: e.attempts,
                        since: e.since.clone(),
                        next_attempt: crate::node::rfc3339(
                            wall + e.next.saturating_duration_since(now),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn write_status(&self) {
        let (pending, pending_bytes) = (
            self.spool.ids().map_or(0, |v| v.len() as u64),
            self.spool.bytes().unwrap_or(0),
        );
        let stuck = self.stuck_report();
        self.update(|s| {
            s.pending = pending;
            s.pending_bytes = pending_bytes;
            s.updated = crate::node::now_rfc3339();
            s.stuck = stuck;
        });
        let status = self.status();
        if let Ok(json) = serde_json::to_vec_pretty(&status) {
            let path = self.spool.root().join("upload-status.json");
            let tmp = self.spool.root().join("tmp");
            let _ = crate::fsutil::replace_atomic_owned(&tmp, &path, &json);
        }
    }

    /// Runs until `stop` is notified: drain, then wait for a wake-up or the rescan period;
    /// on failure back off (1 s doubling to 30 s) and say so once per state change.
    pub async fn run(self, stop: Arc<Notify>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = self.try_drain().await;
            let wait = match result {
                Ok(None) => RESCAN, // another process is draining this spool
                Ok(Some(d)) => {
                    // "Resumed" only after a failure, not on the first drain.
                    if matches!(self.status().state.as_str(), "retrying" | "refused") {
                        tracing::info!(bucket = self.s3.bucket(), "uploads resumed");
                    }
                    let state = state_of(&d, self.spool.ids().map_or(0, |v| v.len()));
                    self.update(|s| {
                        s.state = state.into();
                        s.last_error = d.stuck.first().map(|(id, e)| format!("record {id}: {e}"));
                    });
                    backoff = Duration::from_secs(1);
                    RESCAN
                }
                Err(e) => {
                    let state = match e {
                        StoreError::Credentials { .. }
                        | StoreError::NoCredentials { .. }
                        | StoreError::S3 { .. } => "refused",
                        _ => "retrying",
                    };
                    let msg = e.to_string();
                    if self.status().last_error.as_deref() != Some(&msg) {
                        tracing::warn!(
                            error = msg,
                            "upload failed (sealed records wait in the spool; retrying with backoff)"
                        );
                    }
                    self.update(|s| {
                        s.state = state.into();
                        s.last_error = Some(msg);
                    });
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            self.write_status();
            tokio::select! {
                () = stop.notified() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The state a drain leaves: `ok`; `refused` when every record in the spool was refused
/// as denied (a bucket that takes no writes from us); `stuck` when some were refused.
fn state_of(d: &Drained, in_spool: usize) -> &'static str {
    if d.stuck.is_empty() {
        "ok"
    } else if d.uploaded == 0 && d.denied == d.stuck.len() && d.stuck.len() >= in_spool {
        "refused"
    } else {
        "stuck"
    }
}

/// Runs an uploader on its own thread and runtime (for the synchronous watcher); returns
/// the waker and a stop handle.
pub fn spawn_thread(uploader: Uploader) -> std::io::Result<(Arc<Notify>, Arc<Notify>)> {
    let stop = Arc::new(Notify::new());
    let wake = uploader.waker();
    let s = stop.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ckvault-upload".into())
        .spawn(move || rt.block_on(uploader.run(s)))?;
    Ok((wake, stop))
}
