//! The audit log: an append-only, hash-chained, fail-closed record of everything done to a
//! store (seal, list, read, download, delete, hold, ...).
//!
//! Each event is one JSON line carrying `prev` (the previous event's hash) and `hash`
//! (SHA-256 of its own canonical JSON without `hash`). After every append the head (event
//! count + last hash) is signed with the vault key into `audit.log.heads` and
//! `audit.log.head.json`, so [`verify`] catches an edited event, a removed event, a
//! truncated tail and two different heads for the same size. Appends take an exclusive lock
//! on the file, so the CLI and the server can share one log. A caller that cannot append
//! must refuse the action it wanted to record ([`AuditLog::append`] returns the error).
//!
//! Appends are all or nothing: an event counts once the signed head naming it is in
//! place (`head.json` renamed). A failed append (a full disk) cuts what it wrote; what a
//! crash or a failed cut left behind (a torn line, an event no head confirms) is cut at the
//! next append, which first records an `audit-repair` event saying what was cut (`tail`).
//! Every field an event takes from a request is bounded before anything is written
//! ([`EventInput::bounded`]), so no input can make a line the log cannot read back.

mod tail;
pub(crate) mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::manifest::SigningKey;
use crate::vocab::cut_to;

/// Hash standing in for "no previous event".
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest event line written: the fields of an event are cut to fit well below this.
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// Longest line a reader accepts (logs written before fields were bounded may hold longer
/// lines than [`MAX_EVENT_BYTES`]; they still read back and verify).
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;

crate::vocab::vocabulary! {
    /// What an event records was done (or refused). The words are those every earlier
    /// version wrote; a word of a newer version reads as `Unrecognised`.
    pub enum Action {
        /// An alert received (`ok`: a capture was started; `denied`: why not, in `detail`).
        Alert => "alert",
        /// An interrupted append's leftovers were cut (`detail` says what).
        AuditRepair => "audit-repair",
        /// A request failed authentication (or failures folded over an interval).
        Authenticate => "authenticate",
        /// A capture started by an alert ended: sealed, refused (disk, budget) or failed.
        Capture => "capture",
        /// A capture left nothing to seal.
        CaptureAbandoned => "capture-abandoned",
        /// A capture before a stop did not finish within the stop's budget: the stop went
        /// on without waiting for it (`detail` names the container, the rule and the budget).
        CaptureMissed => "capture-missed",
        /// A node agent claimed a capture request from the bucket (or found a claim whose
        /// claimer stopped).
        CaptureClaim => "capture-claim",
        /// A capture request written to the bucket for the node that runs the container,
        /// or closed there (`unclaimed`, a claimer that stopped).
        CaptureRequest => "capture-request",
        /// A checkpoint asked of the trigger API.
        Checkpoint => "checkpoint",
        /// A record deleted (or its deletion refused).
        Delete => "delete",
        /// A record's blob served.
        Download => "download",
        /// A download's body finished (or broke off): the bytes actually sent.
        DownloadEnd => "download-end",
        /// A record's blob copied out of the store (`ckvault export`).
        Export => "export",
        /// A legal hold placed.
        Hold => "hold",
        /// A record read for deep inspection (`ckvault inspect --deep`, `diff`).
        InspectDeep => "inspect-deep",
        /// A node's signing key rotated.
        KeyRotate => "key-rotate",
        /// Records listed.
        List => "list",
        /// A record's memory searched (`ckvault memsearch`).
        Memsearch => "memsearch",
        /// A record decrypted (`ckvault open`).
        Open => "open",
        /// The audit log read.
        ReadAudit => "read-audit",
        /// A record's manifest (or the key it verifies with) read.
        ReadManifest => "read-manifest",
        /// A legal hold released.
        Release => "release",
        /// A request no handler recorded itself (refused early, or no such endpoint).
        Request => "request",
        /// A record deleted by the retention policy.
        RetentionDelete => "retention-delete",
        /// An archive sealed into a record.
        Seal => "seal",
        /// A record uploaded from the spool to the bucket.
        Upload => "upload",
    }
}

crate::vocab::vocabulary! {
    /// How the action ended.
    pub enum Outcome {
        /// Done.
        Ok => "ok",
        /// Refused (not allowed, malformed, over a limit).
        Denied => "denied",
        /// Attempted and failed.
        Error => "error",
    }
}

/// Who acts: the part of every event the caller supplies (a person or token through the
/// API, a local command, the system itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// `user:NAME` for people and tokens, `cli:USER@HOST` for local commands, `system`,
    /// `anonymous`.
    pub name: String,
    /// Groups of the actor at the time.
    pub groups: Vec<String>,
    /// Remote address for network requests.
    pub remote: Option<String>,
}

impl Actor {
    /// An actor known by name alone (a local command, the system).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// What happened, by whom, to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInput {
    /// `user:NAME` for people and tokens, `cli:USER@HOST` for local commands, `system`.
    pub actor: String,
    /// Groups of the actor at the time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What was done.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Record concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Namespace concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Stated purpose (downloads) or reason (holds, deletions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Remote address for network requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Bytes sent (downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Free text (error messages, rule names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields whose value was cut to its bound before the event was written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
}

/// Most groups kept, and the longest group name.
const MAX_GROUPS: usize = 16;
const MAX_GROUP_BYTES: usize = 128;
/// Bound of an action or outcome word a newer version wrote (every known word is shorter).
const MAX_WORD_BYTES: usize = 64;

impl EventInput {
    /// `by` doing `action`, ending in `outcome`; say more with the `with_*` methods.
    pub fn new(by: &Actor, action: Action, outcome: Outcome) -> Self {
        Self {
            actor: by.name.clone(),
            groups: by.groups.clone(),
            action,
            outcome,
            record: None,
            namespace: None,
            purpose: None,
            remote: by.remote.clone(),
            bytes: None,
            detail: None,
            truncated: Vec::new(),
        }
    }

    /// The system itself doing `action` (no person asked).
    pub fn system(action: Action, outcome: Outcome) -> Self {
        Self::new(&Actor::named("system"), action, outcome)
    }

    /// The event concerns `m`'s record: its ID and namespace.
    pub fn about(self, m: &crate::manifest::Manifest) -> Self {
        Self {
            record: Some(m.id.to_string()),
            namespace: m.namespace.clone(),
            ..self
        }
    }

    /// The event concerns record `id` (one that could not be loaded, or a request's
    /// filter).
    pub fn with_record(self, id: impl Into<String>) -> Self {
        Self {
            record: Some(id.into()),
            ..self
        }
    }

    /// The event concerns `namespace`.
    pub fn with_namespace(self, namespace: Option<String>) -> Self {
        Self { namespace, ..self }
    }

    /// The stated purpose or reason.
    pub fn with_purpose(self, purpose: impl Into<String>) -> Self {
        Self {
            purpose: Some(purpose.into()),
            ..self
        }
    }

    /// Free text: an error, a rule, what was asked.
    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..self
        }
    }

    /// The actor who acted.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.actor.clone(),
            groups: self.groups.clone(),
            remote: self.remote.clone(),
        }
    }

    /// The event with every free-text field cut to its bound (at a character boundary,
    /// marked with `...`) and the names of the cut fields in `truncated`. Even all of a
    /// field's bytes escaped six-fold by JSON (`\u0001`), the line stays under
    /// [`MAX_EVENT_BYTES`]. The action and the outcome are bounded by their types (a word
    /// a newer version wrote, read back and appended again, is cut too).
    pub fn bounded(mut self) -> Self {
        let mut cut = std::mem::take(&mut self.truncated);
        let free: [(&str, Option<&mut String>, usize); 6] = [
            ("actor", Some(&mut self.actor), 256),
            ("record", self.record.as_mut(), 128),
            ("namespace", self.namespace.as_mut(), 256),
            ("purpose", self.purpose.as_mut(), 1024),
            ("remote", self.remote.as_mut(), 128),
            ("detail", self.detail.as_mut(), 4096),
        ];
        let names = free.each_ref().map(|(name, _, _)| *name);
        cut.retain(|c| {
            names.contains(&c.as_str()) || ["action", "outcome", "groups"].contains(&c.as_str())
        });
        let mut note = |name: &str| {
            if !cut.iter().any(|c| c == name) {
                cut.push(name.to_owned());
            }
        };
        for (name, field, max) in free {
            if field.is_some_and(|value| cut_to(value, max)) {
                note(name);
            }
        }
        if let Action::Unrecognised(word) = &mut self.action
            && word.cut_to(MAX_WORD_BYTES)
        {
            note("action");
        }
        if let Outcome::Unrecognised(word) = &mut self.outcome
            && word.cut_to(MAX_WORD_BYTES)
        {
            note("outcome");
        }
        let mut groups_cut = self.groups.len() > MAX_GROUPS;
        self.groups.truncate(MAX_GROUPS);
        for g in &mut self.groups {
            groups_cut |= cut_to(g, MAX_GROUP_BYTES);
        }
        if groups_cut {
            note("groups");
        }
        self.truncated = cut;
        self
    }
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// 1-based position in the log.
    pub seq: u64,
    /// RFC 3339 UTC time of the append.
    pub time: String,
    /// The event.
    #[serde(flatten)]
    pub input: EventInput,
    /// Hash of the previous event ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 (hex) of this event's canonical JSON without `hash`.
    pub hash: String,
}

/// A signed statement of the log's size and last hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Events in the log.
    pub size: u64,
    /// Hash of event `size` ([`GENESIS`] for an empty log).
    pub hash: String,
    /// When it was signed.
    pub time: String,
    /// Signing key fingerprint.
    pub key_id: String,
    /// Base64 Ed25519 signature over `ckvault-audit-head\n{size}\n{hash}\n`.
    pub sig: String,
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be written: the action must not proceed.
    #[error("audit log {path} cannot be written ({source}); refusing to act without a record")]
    Unwritable {
        /// The log path.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The log is malformed where the append needs to read it.
    #[error("audit log {path} is damaged: {why}; run `ckvault audit verify`")]
    Damaged {
        /// The log path.
        path: String,
        /// What is wrong.
        #[source]
        why: Damage,
    },
}

/// What is wrong with a damaged audit log.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// The log cannot be opened or read.
    #[error("it cannot be read: {0}")]
    Unreadable(#[source] io::Error),
    /// A line longer than any event can be.
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong {
        /// Its number, from 1.
        line: u64,
    },
    /// A line that is not an event.
    #[error("line {line} is not an event: {source}")]
    NotAnEvent {
        /// Its number, from 1.
        line: u64,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// No line end at all in the bytes read from the end of the log.
    #[error("no line end in the last bytes of the log")]
    NoLineEnd,
    /// The last event does not parse.
    #[error("the last event does not parse: {0}")]
    LastEventNotAnEvent(#[source] serde_json::Error),
    /// The last line is longer than any event can be.
    #[error("the last event is longer than any event can be")]
    LastEventTooLong,
    /// The event before an unconfirmed last one is unreadable.
    #[error("the event before the last is unreadable")]
    EventBeforeLastUnreadable,
    /// The signed head names the log's last event with another hash.
    #[error("the signed head names another hash for event {seq}")]
    HeadHashDiffers {
        /// The event.
        seq: u64,
    },
    /// The signed head names neither the last event nor the one before it.
    #[error("the signed head does not name the event before the last")]
    HeadNotBeforeLast,
    /// The log ends before or well after its signed head.
    #[error(
        "the log ends at event {last} but its signed head names event {head} (rolled back or cut by hand?)"
    )]
    HeadElsewhere {
        /// The log's last event.
        last: u64,
        /// The event the head names.
        head: u64,
    },
}

/// An audit log file with its signed head.
pub struct AuditLog {
    path: PathBuf,
    key: SigningKey,
    lock: Mutex<State>,
}

/// What this process remembers between appends.
#[derive(Default)]
struct State {
    /// A repair whose cut is done but whose `audit-repair` event could not be written yet.
    unrecorded_repair: Option<String>,
}

/// Room an append needs on the log's file system (event, heads line, head.json copy).
const APPEND_ROOM: u64 = 4 * MAX_EVENT_BYTES as u64;

impl AuditLog {
    /// Opens (creating if needed, 0600) the log at `path`, signing heads with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<Self, AuditError> {
        let log = Self {
            path: path.to_path_buf(),
            key,
            lock: Mutex::new(State::default()),
        };
        log.open_file().map_err(|e| log.unwritable(e))?;
        Ok(log)
    }

    /// Whether an append can succeed now, for health checks: the log opens, its tail is
    /// whole (a torn tail is repaired here, with its `audit-repair` event) and its file
    /// system has room for an event. `Err` says why not.
    pub fn health(&self) -> Result<(), AuditError> {
        let mut state = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.open_file().map_err(|e| self.unwritable(e))?;
        file.lock().map_err(|e| self.unwritable(e))?;
        let tail = tail::inspect(&self.path, &mut file)?;
        if tail.cut.is_some() || state.unrecorded_repair.is_some() {
            self.repair(&mut file, &mut state, tail)?;
        }
        let room = free_bytes(&self.path).map_err(|e| self.unwritable(e))?;
        if room < APPEND_ROOM {
            return Err(self.unwritable(io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        Ok(())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the latest signed head.
    pub fn head_path(&self) -> PathBuf {
        sibling(&self.path, ".head.json")
    }

    /// Path of the history of signed heads.
    pub fn heads_path(&self) -> PathBuf {
        sibling(&self.path, ".heads")
    }

    /// The latest signed head (size and hash), as `ckvault audit verify --expect-head`
    /// takes it; `None` before the first event.
    pub fn head(&self) -> Option<SignedHead> {
        latest_head(&self.path)
    }

    fn unwritable(&self, source: io::Error) -> AuditError {
        AuditError::Unwritable {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn open_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
    }

    /// Appends one event durably (fsynced) and re-signs the head. Any error means the event
    /// is not recorded (what was written of it is cut again) and the caller must not
    /// perform the action. Fields are bounded first ([`EventInput::bounded`]).
    pub fn append(&self, input: EventInput) -> Result<AuditEvent, AuditError> {
        let input = input.bounded();
        let mut state = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.open_file().map_err(|e| self.unwritable(e))?;
        file.lock().map_err(|e| self.unwritable(e))?;
        let mut tail = tail::inspect(&self.path, &mut file)?;
        if tail.cut.is_some() || state.unrecorded_repair.is_some() {
            tail = self.repair(&mut file, &mut state, tail)?;
        }
        self.write_event(&mut file, &tail, input)
    }

    /// Cuts what an interrupted append left (see [`tail`]) and records that it did.
    fn repair(
        &self,
        file: &mut File,
        state: &mut State,
        tail: tail::Tail,
    ) -> Result<tail::Tail, AuditError> {
        let mut tail = tail;
        if let Some(cut) = tail.cut.take() {
            tail::cut(&self.path, file, &self.heads_path(), &cut)?;
            state.unrecorded_repair = Some(cut.describe());
        }
        let Some(detail) = state.unrecorded_repair.clone() else {
            return Ok(tail);
        };
        let event = self.write_event(
            file,
            &tail,
            EventInput::system(Action::AuditRepair, Outcome::Ok)
                .with_detail(detail)
                .bounded(),
        )?;
        state.unrecorded_repair = None;
        Ok(tail::Tail {
            len: tail.len + event_line_len(&event),
            seq: event.seq,
            hash: event.hash,
            heads_len: None,
            cut: None,
        })
    }

    /// Writes one event after `tail` and signs the new head; on any error cuts the log and
    /// the heads history back to where they were, so nothing of the event remains.
    fn write_event(
        &self,
        file: &mut File,
        tail: &tail::Tail,
        input: EventInput,
    ) -> Result<AuditEvent, AuditError> {
        let mut event = AuditEvent {
            seq: tail.seq + 1,
            time: crate::node::now_rfc3339(),
            input,
            prev: tail.hash.clone(),
            hash: String::new(),
        };
        let line = loop {
            event.hash = event_hash(&event);
            let mut line =
                serde_json::to_vec(&event).map_err(|e| self.unwritable(io::Error::other(e)))?;
            line.push(b'\n');
            if line.len() <= MAX_EVENT_BYTES {
                break line;
            }
            // Bounded fields cannot get here; halve the free text rather than refuse.
            let free = [&mut event.input.detail, &mut event.input.purpose];
            let Some(longest) = free.into_iter().flatten().max_by_key(|s| s.len()) else {
                return Err(self.unwritable(io::Error::other("event too large")));
            };
            let half = longest.len() / 2;
            cut_to(longest, half);
        };
        let heads = self.heads_path();
        let heads_len = tail
            .heads_len
            .or_else(|| std::fs::metadata(&heads).ok().map(|m| m.len()));
        let written = (|| {
            file.write_all(&line)?;
            file.sync_data()?;
            self.sign_head(event.seq, &event.hash)
        })();
        if let Err(e) = written {
            // Best effort: what cannot be cut now is cut by the next append.
            let _ = file.set_len(tail.len).and_then(|()| file.sync_data());
            if let Some(len) = heads_len
                && let Ok(h) = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&heads)
            {
                let _ = h.set_len(len).and_then(|()| h.sync_data());
            }
            return Err(self.unwritable(e));
        }
        Ok(event)
    }

    /// Appends the signed head to the history, then publishes it as `head.json` (the
    /// append's commit point).
    fn sign_head(&self, size: u64, hash: &str) -> io::Result<()> {
        let head = sign_head(&self.key, size, hash);
        let mut line = serde_json::to_vec(&head).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.heads_path())?;
        f.write_all(&line)?;
        f.sync_data()?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Only the holder of the log's lock writes this name, so it cannot collide.
        let tmp = dir.join(".audit-head.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut af = fsutil::AtomicFile::create(tmp)?;
        af.file()?.write_all(&line)?;
        af.sync()?;
        std::fs::rename(af.tmp_path(), self.head_path())?;
        // The rename is the commit point; make it survive a power loss like the event.
        // Past the rename the event counts, so a failure here cannot undo it any more.
        if let Err(e) = fsutil::fsync_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "audit: fsync of the log's directory failed");
        }
        Ok(())
    }

    /// Reads events, oldest first, passing those that `keep` accepts, at most `limit`.
    pub fn read(
        &self,
        keep: &dyn Fn(&AuditEvent) -> bool,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        read_events(&self.path, keep, limit)
    }
}

fn event_line_len(event: &AuditEvent) -> u64 {
    serde_json::to_vec(event).map_or(0, |v| v.len() as u64 + 1)
}

/// Bytes available to this user on the file system holding `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The latest signed head of the log at `log` (its `.head.json`), if there is one.
pub(crate) fn latest_head(log: &Path) -> Option<SignedHead> {
    tail::read_head(&sibling(log, ".head.json"))
}

/// Reads events from a log file (see [`AuditLog::read`]).
pub fn read_events(
    path: &Path,
    keep: &dyn Fn(&AuditEvent) -> bool,
    limit: usize,
) -> Result<Vec<AuditEvent>, AuditError> {
    let damaged = |why: Damage| AuditError::Damaged {
        path: path.display().to_string(),
        why,
    };
    let file = fsutil::open_regular_nofollow(path).map_err(|e| damaged(Damage::Unreadable(e)))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = io::Read::by_ref(&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| damaged(Damage::Unreadable(e)))?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(damaged(Damage::LineTooLong { line: n }));
        }
        if line.last() != Some(&b'\n') {
            break; // a line being written, or a torn tail the next append cuts
        }
        let event: AuditEvent = serde_json::from_slice(&line)
            .map_err(|source| damaged(Damage::NotAnEvent { line: n, source }))?;
        if keep(&event) {
            out.push(event);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// SHA-256 (hex) of an event's canonical JSON with `hash` removed.
pub(crate) fn event_hash(event: &AuditEvent) -> String {
    let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("hash");
    }
    let bytes = crate::manifest::sign::canonical_json(&value).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// The bytes a head signature covers.
pub(crate) fn head_message(size: u64, hash: &str) -> Vec<u8> {
    format!("ckvault-audit-head\n{size}\n{hash}\n").into_bytes()
}

fn sign_head(key: &SigningKey, size: u64, hash: &str) -> SignedHead {
    SignedHead {
        size,
        hash: hash.to_owned(),
        time: crate::node::now_rfc3339(),
        key_id: key.verifying_key().key_id(),
        sig: key.sign_bytes(&head_message(size, hash)),
    }
}
