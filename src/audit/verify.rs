//! Offline verification of an audit log against its signed heads: every event's hash, the
//! chain of `prev` links, sequence numbers, the latest signed head (a truncated tail is
//! caught) and the head history (two different heads for one size are caught).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{AuditEvent, GENESIS, MAX_LINE_BYTES, SignedHead, event_hash, head_message};
use crate::fsutil;
use crate::manifest::VerifyingKey;

/// What verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Events in the log.
    pub events: u64,
    /// Hash of the last event.
    pub head_hash: String,
    /// Size stated by the latest signed head.
    pub signed_size: u64,
    /// Signed heads checked from the history.
    pub heads_checked: u64,
    /// Bytes of an incomplete last line (an interrupted append; the next append cuts it
    /// and records that it did).
    pub torn_bytes: u64,
}

/// A head a verifier saw earlier (`SIZE:HASH`, as `ckvault audit verify` prints it): the
/// log must still hold event SIZE with that hash, so a rollback of the whole log (tail and
/// head files together) below it is caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHead {
    /// Events the log held.
    pub size: u64,
    /// Hash of event `size`.
    pub hash: String,
}

impl std::str::FromStr for ExpectedHead {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (size, hash) = s
            .split_once(':')
            .ok_or_else(|| "expected SIZE:HASH (as `ckvault audit verify` prints it)".to_owned())?;
        let size = size
            .parse()
            .map_err(|_| format!("{size:?} is not an event count"))?;
        let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err("HASH must be 64 hex digits".into());
        }
        Ok(Self {
            size,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for ExpectedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.size, self.hash)
    }
}

/// Why a log failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not an event.
    #[error("line {line}: not an audit event ({why})")]
    Malformed {
        /// 1-based line.
        line: u64,
        /// Parser message.
        why: String,
    },
    /// An event's content does not match its hash: it was edited.
    #[error("event {seq}: content does not match its hash (edited)")]
    Edited {
        /// Sequence number.
        seq: u64,
    },
    /// The chain is broken: an event was removed, inserted or reordered.
    #[error(
        "event at line {line}: expected seq {expected_seq} chained to {expected_prev}, found seq {seq} chained to {prev} (events removed or reordered)"
    )]
    Broken {
        /// 1-based line.
        line: u64,
        /// Expected sequence.
        expected_seq: u64,
        /// Expected prev hash.
        expected_prev: String,
        /// Found sequence.
        seq: u64,
        /// Found prev hash.
        prev: String,
    },
    /// The signed head has a bad signature.
    #[error("signed head for size {size} does not verify with the vault key")]
    BadHeadSignature {
        /// Size the head states.
        size: u64,
    },
    /// The log is shorter than a signed head says.
    #[error("log holds {events} events but a signed head vouches for {signed} (tail truncated)")]
    Truncated {
        /// Events found.
        events: u64,
        /// Size signed.
        signed: u64,
    },
    /// A signed head names a hash the log does not have at that size.
    #[error(
        "signed head for size {size} names hash {signed} but the log has {found} there (history rewritten)"
    )]
    HeadMismatch {
        /// Size.
        size: u64,
        /// Hash in the head.
        signed: String,
        /// Hash in the log.
        found: String,
    },
    /// The log no longer reaches a head a verifier saw earlier: it was rolled back.
    #[error(
        "the log holds {events} events but held {expected} before (expected head {expected}:{hash}): rolled back"
    )]
    RolledBack {
        /// Events found.
        events: u64,
        /// Size of the expected head.
        expected: u64,
        /// Its hash.
        hash: String,
    },
    /// Event `size` is not the one a verifier saw earlier.
    #[error(
        "event {size} has hash {found} but the expected head names {expected}: the log was rewritten"
    )]
    NotExpectedHead {
        /// Size of the expected head.
        size: u64,
        /// Hash expected.
        expected: String,
        /// Hash found.
        found: String,
    },
    /// Two validly signed heads disagree about one size.
    #[error(
        "two signed heads for size {size} name different hashes {a} and {b} (the log was forked)"
    )]
    Forked {
        /// Size.
        size: u64,
        /// One hash.
        a: String,
        /// The other.
        b: String,
    },
}

/// Verifies the log at `log` with its `*.head.json` and `*.heads` siblings.
pub fn verify(log: &Path, key: &VerifyingKey) -> Result<Verified, VerifyError> {
    verify_expecting(log, key, None)
}

/// [`verify`], and the log must still reach `expect`, a head seen earlier.
pub(crate) fn verify_expecting(
    log: &Path,
    key: &VerifyingKey,
    expect: Option<&ExpectedHead>,
) -> Result<Verified, VerifyError> {
    verify_with_keys(log, std::slice::from_ref(key), expect)
}

/// [`verify_expecting`] with every key the log's heads may be signed with (the store's
/// current key and those it retired by `ckvault key rotate`): each head is checked with
/// the key its `key_id` names.
pub(crate) fn verify_with_keys(
    log: &Path,
    keys: &[VerifyingKey],
    expect: Option<&ExpectedHead>,
) -> Result<Verified, VerifyError> {
    let sibling = |suffix: &str| {
        let mut s = log.as_os_str().to_os_string();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    // Heads first: the history maps size -> hash, every entry signed.
    let mut signed_at: HashMap<u64, String> = HashMap::new();
    let mut heads_checked = 0;
    if let Ok(file) = fsutil::open_regular_nofollow(&sibling(".heads")) {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            let read = (&mut reader)
                .take(64 << 10)
                .read_until(b'\n', &mut line)
                .map_err(|source| VerifyError::Read {
                    path: sibling(".heads").display().to_string(),
                    source,
                })?;
            if read == 0 || (line.last() != Some(&b'\n') && read < 64 << 10) {
                break; // the end, or a line torn by an interrupted append
            }
            let text = String::from_utf8_lossy(&line);
            let head = parse_head(text.trim_end(), n)?;
            check_head_sig(&head, keys)?;
            heads_checked += 1;
            if let Some(previous) = signed_at.get(&head.size) {
                if *previous != head.hash {
                    return Err(VerifyError::Forked {
                        size: head.size,
                        a: previous.clone(),
                        b: head.hash,
                    });
                }
            } else {
                signed_at.insert(head.size, head.hash);
            }
        }
    }
    let latest = match fsutil::read_regular_to_string(&sibling(".head.json")) {
        Ok(text) => {
            let head = parse_head(text.trim_end(), 1)?;
            check_head_sig(&head, keys)?;
            if let Some(previous) = signed_at.get(&head.size)
                && *previous != head.hash
            {
                return Err(VerifyError::Forked {
                    size: head.size,
                    a: previous.clone(),
                    b: head.hash,
                });
            }
            signed_at.insert(head.size, head.hash.clone());
            Some(head)
        }
        Err(_) => None,
    };
    let max_signed = signed_at.keys().copied().max().unwrap_or(0);

    let file = fsutil::open_regular_nofollow(log).map_err(|source| VerifyError::Read {
        path: log.display().to_string(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let mut torn_bytes = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| VerifyError::Read {
                path: log.display().to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') && n <= MAX_LINE_BYTES {
            // The end of the file without a newline: an interrupted append.
            torn_bytes = n as u64;
            break;
        }
        let event: AuditEvent =
            serde_json::from_slice(&buf).map_err(|e| VerifyError::Malformed {
                line: line_no,
                why: e.to_string(),
            })?;
        if event_hash(&event) != event.hash {
            return Err(VerifyError::Edited { seq: event.seq });
        }
        if event.seq != seq + 1 || event.prev != prev {
            return Err(VerifyError::Broken {
                line: line_no,
                expected_seq: seq + 1,
                expected_prev: prev,
                seq: event.seq,
                prev: event.prev,
            });
        }
        seq = event.seq;
        prev = event.hash;
        if let Some(e) = expect
            && e.size == seq
            && e.hash != prev
        {
            return Err(VerifyError::NotExpectedHead {
                size: seq,
                expected: e.hash.clone(),
                found: prev,
            });
        }
        if let Some(signed) = signed_at.get(&seq)
            && *signed != prev
        {
            return Err(VerifyError::HeadMismatch {
                size: seq,
                signed: signed.clone(),
                found: prev,
            });
        }
    }
    if seq < max_signed {
        return Err(VerifyError::Truncated {
            events: seq,
            signed: max_signed,
        });
    }
    if let Some(e) = expect
        && seq < e.size
    {
        return Err(VerifyError::RolledBack {
            events: seq,
            expected: e.size,
            hash: e.hash.clone(),
        });
    }
    Ok(Verified {
        events: seq,
        head_hash: prev,
        signed_size: latest.map_or(0, |h| h.size),
        heads_checked,
        torn_bytes,
    })
}

use std::io::Read as _;

fn parse_head(line: &str, line_no: u64) -> Result<SignedHead, VerifyError> {
    serde_json::from_str(line).map_err(|e| VerifyError::Malformed {
        line: line_no,
        why: format!("signed head: {e}"),
    })
}

fn check_head_sig(head: &SignedHead, keys: &[VerifyingKey]) -> Result<(), VerifyError> {
    let msg = head_message(head.size, &head.hash);
    let named = keys.iter().find(|k| k.key_id() == head.key_id);
    let ok = match named {
        Some(k) => k.verify_bytes(&msg, &head.sig),
        None => keys.iter().any(|k| k.verify_bytes(&msg, &head.sig)),
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadHeadSignature { size: head.size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Actor, AuditLog, EventInput, Outcome};
    use crate::manifest::SigningKey;

    /// A download by alice, told apart from the others by `tag` (its detail).
    fn event(tag: &str) -> EventInput {
        EventInput::new(&Actor::named("user:alice"), Action::Download, Outcome::Ok).with_detail(tag)
    }

    fn setup(n: usize) -> (tempfile::TempDir, std::path::PathBuf, VerifyingKey) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = SigningKey::generate().unwrap();
        let vk = key.verifying_key();
        let log = AuditLog::open(&path, key).unwrap();
        for i in 0..n {
            log.append(event(&format!("download-{i}"))).unwrap();
        }
        (dir, path, vk)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn an_intact_log_verifies() {
        let (_d, path, vk) = setup(5);
        let v = verify(&path, &vk).unwrap();
        assert_eq!(v.events, 5);
        assert_eq!(v.signed_size, 5);
        assert_eq!(v.heads_checked, 5);
    }

    #[test]
    fn an_edited_event_is_caught() {
        let (_d, path, vk) = setup(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("download-2", "download-X");
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path, &vk),
            Err(VerifyError::Edited { seq: 3 })
        ));
    }

    #[test]
    fn a_removed_event_is_caught() {
        let (_d, path, vk) = setup(5);
        let mut l = lines(&path);
        l.remove(1);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path, &vk),
            Err(VerifyError::Broken { line: 2, .. })
        ));
    }

    #[test]
    fn a_truncated_tail_is_caught_against_the_signed_head() {
        let (_d, path, vk) = setup(5);
        let mut l = lines(&path);
        l.truncate(3);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path, &vk),
            Err(VerifyError::Truncated {
                events: 3,
                signed: 5
            })
        ));
    }

    #[test]
    fn a_consistently_rewritten_chain_is_caught_by_the_signed_heads() {
        let (_d, path, vk) = setup(3);
        // Without the vault key, an attacker rewrites event 2 and re-chains what follows.
        let mut events: Vec<AuditEvent> = lines(&path)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        events[1].input.action = Action::List;
        let mut prev = events[0].hash.clone();
        for e in events.iter_mut().skip(1) {
            e.prev = prev.clone();
            e.hash = event_hash(e);
            prev = e.hash.clone();
        }
        let rewritten: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        write_lines(&path, &rewritten);
        assert!(matches!(
            verify(&path, &vk),
            Err(VerifyError::HeadMismatch { size: 2, .. })
        ));
    }

    #[test]
    fn two_heads_for_one_size_are_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pem().unwrap();
        let vk = key.verifying_key();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        let la = AuditLog::open(&a, key).unwrap();
        let lb = AuditLog::open(&b, SigningKey::from_pem(&pem, Path::new("k")).unwrap()).unwrap();
        la.append(event("one")).unwrap();
        lb.append(event("two")).unwrap();
        // Merge b's head into a's history: same size, different hash, both validly signed.
        let mut heads = lines(&dir.path().join("a.log.heads"));
        heads.extend(lines(&dir.path().join("b.log.heads")));
        write_lines(&dir.path().join("a.log.heads"), &heads);
        assert!(matches!(
            verify(&a, &vk),
            Err(VerifyError::Forked { size: 1, .. })
        ));
    }
}
