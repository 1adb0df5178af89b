//! The audit log: an append-only, hash-chained, fail-closed record of everything done to a
//! store (seal, list, read, download, delete, hold, ...).
//!
//! Each event is one JSON line carrying `prev` (the previous event's hash) and `hash`
//! (SHA-256 of its own canonical JSON without `hash`). After every append the head (event
//! count + last hash) is signed with the vault key into `audit.head.json`, and appended to
//! `audit.heads`, so [`verify`] catches an edited event, a removed event, a truncated tail
//! and two different heads for the same size. Appends take an exclusive lock on the file, so
//! the CLI and the server can share one log. A caller that cannot append must refuse the
//! action it wanted to record ([`AuditLog::append`] returns the error).

pub mod ship;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::manifest::SigningKey;

/// Hash standing in for "no previous event".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest event line accepted (details are truncated to fit well below this).
pub const MAX_EVENT_BYTES: usize = 64 << 10;

/// What happened, by whom, to what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInput {
    /// `user:NAME` for people and tokens, `cli:USER@HOST` for local commands, `system`.
    pub actor: String,
    /// Groups of the actor at the time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `seal`, `list`, `read-manifest`, `download`, `delete`, `hold`, `release`,
    /// `checkpoint`, `read-audit`, `retention-delete`, ...
    pub action: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
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
        why: String,
    },
}

/// An audit log file with its signed head.
pub struct AuditLog {
    path: PathBuf,
    key: SigningKey,
    lock: Mutex<()>,
}

impl AuditLog {
    /// Opens (creating if needed, 0600) the log at `path`, signing heads with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<Self, AuditError> {
        let log = Self {
            path: path.to_path_buf(),
            key,
            lock: Mutex::new(()),
        };
        log.open_file().map_err(|e| log.unwritable(e))?;
        Ok(log)
    }

    /// True if the log can be opened for appending right now (for health checks).
    pub fn writable(&self) -> bool {
        self.open_file().is_ok()
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
    /// is not recorded and the caller must not perform the action.
    pub fn append(&self, mut input: EventInput) -> Result<AuditEvent, AuditError> {
        truncate_field(&mut input.detail, 4096);
        truncate_field(&mut input.purpose, 1024);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.open_file().map_err(|e| self.unwritable(e))?;
        file.lock().map_err(|e| self.unwritable(e))?;
        let (seq, prev) = self.last(&mut file)?;
        let mut event = AuditEvent {
            seq: seq + 1,
            time: crate::seal::now_rfc3339(),
            input,
            prev,
            hash: String::new(),
        };
        event.hash = event_hash(&event);
        let mut line =
            serde_json::to_vec(&event).map_err(|e| self.unwritable(io::Error::other(e)))?;
        line.push(b'\n');
        file.write_all(&line).map_err(|e| self.unwritable(e))?;
        file.sync_data().map_err(|e| self.unwritable(e))?;
        self.sign_head(event.seq, &event.hash)?;
        Ok(event)
    }

    /// Reads the last event's sequence number and hash (0 and [`GENESIS`] when empty).
    fn last(&self, file: &mut File) -> Result<(u64, String), AuditError> {
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| self.unwritable(e))?;
        if len == 0 {
            return Ok((0, GENESIS.to_owned()));
        }
        let back = len.min(2 * MAX_EVENT_BYTES as u64);
        file.seek(SeekFrom::Start(len - back))
            .map_err(|e| self.unwritable(e))?;
        let mut tail = Vec::with_capacity(back as usize);
        Read::by_ref(file)
            .take(back)
            .read_to_end(&mut tail)
            .map_err(|e| self.unwritable(e))?;
        let damaged = |why: &str| AuditError::Damaged {
            path: self.path.display().to_string(),
            why: why.to_owned(),
        };
        let body = tail
            .strip_suffix(b"\n")
            .ok_or_else(|| damaged("the last event is incomplete (no newline)"))?;
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let last_line = body.get(start..).unwrap_or_default();
        let event: AuditEvent = serde_json::from_slice(last_line)
            .map_err(|e| damaged(&format!("the last event does not parse: {e}")))?;
        Ok((event.seq, event.hash))
    }

    fn sign_head(&self, size: u64, hash: &str) -> Result<(), AuditError> {
        let head = sign_head(&self.key, size, hash);
        let mut line =
            serde_json::to_vec(&head).map_err(|e| self.unwritable(io::Error::other(e)))?;
        line.push(b'\n');
        let heads = self.heads_path();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&heads)
            .map_err(|e| self.unwritable(e))?;
        f.write_all(&line).map_err(|e| self.unwritable(e))?;
        f.sync_data().map_err(|e| self.unwritable(e))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let head_path = self.head_path();
        let tmp = dir.join(format!(".audit-head.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut af = fsutil::AtomicFile::create(tmp).map_err(|e| self.unwritable(e))?;
        af.file()
            .and_then(|f| f.write_all(&line))
            .map_err(|e| self.unwritable(e))?;
        af.sync().map_err(|e| self.unwritable(e))?;
        std::fs::rename(af.tmp_path(), &head_path).map_err(|e| self.unwritable(e))?;
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

/// Reads events from a log file (see [`AuditLog::read`]).
pub fn read_events(
    path: &Path,
    keep: &dyn Fn(&AuditEvent) -> bool,
    limit: usize,
) -> Result<Vec<AuditEvent>, AuditError> {
    let damaged = |why: String| AuditError::Damaged {
        path: path.display().to_string(),
        why,
    };
    let file = fsutil::open_nofollow(path).map_err(|e| damaged(e.to_string()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| damaged(e.to_string()))?;
        let event: AuditEvent =
            serde_json::from_str(&line).map_err(|e| damaged(format!("line {}: {e}", n + 1)))?;
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

fn truncate_field(field: &mut Option<String>, max: usize) {
    if let Some(s) = field
        && s.len() > max
    {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
}

/// SHA-256 (hex) of an event's canonical JSON with `hash` removed.
pub fn event_hash(event: &AuditEvent) -> String {
    let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("hash");
    }
    let bytes = crate::manifest::sign::canonical_json(&value).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// The bytes a head signature covers.
pub fn head_message(size: u64, hash: &str) -> Vec<u8> {
    format!("ckvault-audit-head\n{size}\n{hash}\n").into_bytes()
}

fn sign_head(key: &SigningKey, size: u64, hash: &str) -> SignedHead {
    SignedHead {
        size,
        hash: hash.to_owned(),
        time: crate::seal::now_rfc3339(),
        key_id: key.verifying_key().key_id(),
        sig: key.sign_bytes(&head_message(size, hash)),
    }
}
