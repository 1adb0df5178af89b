//! The end of an audit log, as the next append needs it: the last confirmed event, and
//! what an interrupted append left after it.
//!
//! An append writes its line, then the signed head into the history (`.heads`), then
//! publishes `head.json`; the event counts from that rename on. A crash or a failed cut
//! (full disk) can leave after the last confirmed event a torn line (no newline), at most
//! one whole event that `head.json` does not name, and history lines beyond `head.json`.
//! [`inspect`] finds them and [`cut`] removes them, so the chain and the history stay
//! exactly what `ckvault audit verify` expects. Anything else that does not fit (a log
//! shorter than its signed head, an unparsable whole line) is damage for a person to look
//! at: it is reported, never cut.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{
    Action, AuditError, AuditEvent, Damage, GENESIS, MAX_EVENT_BYTES, MAX_LINE_BYTES, Outcome,
    SignedHead,
};

/// The end of the log.
#[derive(Debug)]
pub(super) struct Tail {
    /// Length of the log once `cut` is done.
    pub len: u64,
    /// Sequence number of the last confirmed event (0 for none).
    pub seq: u64,
    /// Its hash ([`GENESIS`] for none).
    pub hash: String,
    /// Length of the heads history once `cut` is done (`None`: read it when needed).
    pub heads_len: Option<u64>,
    /// What must be cut before the next event.
    pub cut: Option<Cut>,
}

/// Leftovers of an interrupted append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut {
    /// Log length before the cut.
    log_len: u64,
    /// Bytes of an incomplete last line.
    torn: u64,
    /// An event written but never confirmed by a signed head: seq, action, outcome.
    unconfirmed: Option<(u64, Action, Outcome)>,
    /// History length to cut to, and its length before.
    heads: Option<(u64, u64)>,
    /// Log length to cut to.
    log_to: u64,
}

impl Cut {
    /// One line for the `audit-repair` event.
    pub(super) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.torn > 0 {
            parts.push(format!("a torn line of {} bytes", self.torn));
        }
        if let Some((seq, action, outcome)) = &self.unconfirmed {
            parts.push(format!(
                "event {seq} ({action}, {outcome}) that no signed head confirms: its action was refused"
            ));
        }
        if let Some((to, from)) = self.heads {
            parts.push(format!(
                "{} bytes of the heads history beyond the signed head",
                from - to
            ));
        }
        format!(
            "cut {} bytes after offset {} left by an interrupted append: {}",
            self.log_len - self.log_to,
            self.log_to,
            parts.join("; ")
        )
    }
}

fn damaged(path: &Path, why: Damage) -> AuditError {
    AuditError::Damaged {
        path: path.display().to_string(),
        why,
    }
}

fn unwritable(path: &Path, source: io::Error) -> AuditError {
    AuditError::Unwritable {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the latest signed head, if it exists and parses.
pub(super) fn read_head(path: &Path) -> Option<SignedHead> {
    let file = crate::fsutil::open_regular_nofollow(path).ok()?;
    let mut text = String::new();
    file.take(64 << 10).read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim_end()).ok()
}

/// Whole lines with their start offsets.
type Lines = Vec<(u64, Vec<u8>)>;

/// The whole lines of the last `want` bytes of a file of length `len` (the first line of
/// the window is dropped unless the window starts at 0): (start offset, line without its
/// newline), oldest first, and the offset just after the last newline.
fn last_lines(file: &mut File, len: u64, want: u64) -> io::Result<(Lines, u64)> {
    let start = len.saturating_sub(want);
    file.seek(SeekFrom::Start(start))?;
    let mut window = Vec::with_capacity((len - start) as usize);
    Read::by_ref(file)
        .take(len - start)
        .read_to_end(&mut window)?;
    let Some(last_nl) = window.iter().rposition(|&b| b == b'\n') else {
        return Ok((Vec::new(), start));
    };
    let complete = window.get(..=last_nl).unwrap_or_default();
    let mut lines = Vec::new();
    let mut at = 0usize;
    for chunk in complete.split_inclusive(|&b| b == b'\n') {
        let offset = start + at as u64;
        at += chunk.len();
        if offset == start && start > 0 {
            continue; // may begin mid-line
        }
        lines.push((offset, chunk.strip_suffix(b"\n").unwrap_or(chunk).to_vec()));
    }
    Ok((lines, start + last_nl as u64 + 1))
}

/// Finds the last confirmed event and what follows it. `file` is the locked log.
pub(super) fn inspect(path: &Path, file: &mut File) -> Result<Tail, AuditError> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| unwritable(path, e))?;
    let mut want = (2 * MAX_EVENT_BYTES as u64).min(len);
    let (lines, good_end) = loop {
        let (lines, good_end) = last_lines(file, len, want).map_err(|e| unwritable(path, e))?;
        // Two whole lines are enough (the last one may be unconfirmed); a log written
        // before fields were bounded may need a wider window.
        if lines.len() >= 2 || want >= len || want >= 2 * MAX_LINE_BYTES as u64 {
            break (lines, good_end);
        }
        want = (want * 4).min(len).min(2 * MAX_LINE_BYTES as u64);
    };
    if good_end == 0 && len > 0 && len > want {
        return Err(damaged(path, Damage::NoLineEnd));
    }
    let parse = |bytes: &[u8]| -> Result<AuditEvent, AuditError> {
        serde_json::from_slice(bytes).map_err(|e| damaged(path, Damage::LastEventNotAnEvent(e)))
    };
    let last = match lines.last() {
        Some((offset, bytes)) => Some((*offset, parse(bytes)?)),
        None if good_end > 0 => {
            return Err(damaged(path, Damage::LastEventTooLong));
        }
        None => None,
    };
    let head_path = super::sibling(path, ".head.json");
    let heads_path = super::sibling(path, ".heads");
    let head = read_head(&head_path);
    let torn = len - good_end;
    let (last_seq, last_hash) = last
        .as_ref()
        .map_or((0, GENESIS.to_owned()), |(_, e)| (e.seq, e.hash.clone()));
    let mut tail = Tail {
        len: good_end,
        seq: last_seq,
        hash: last_hash.clone(),
        heads_len: None,
        cut: None,
    };
    let mut unconfirmed = None;
    if let Some(head) = &head {
        if head.size == last_seq {
            if head.hash != last_hash {
                return Err(damaged(path, Damage::HeadHashDiffers { seq: last_seq }));
            }
        } else if head.size + 1 == last_seq
            && let Some((offset, event)) = &last
        {
            // The last event was written, its head never published: it does not count.
            let (seq, hash) = match lines.len().checked_sub(2).and_then(|i| lines.get(i)) {
                Some((_, bytes)) => {
                    let before = parse(bytes)?;
                    (before.seq, before.hash)
                }
                None if *offset == 0 => (0, GENESIS.to_owned()),
                None => return Err(damaged(path, Damage::EventBeforeLastUnreadable)),
            };
            if seq != head.size || hash != head.hash {
                return Err(damaged(path, Damage::HeadNotBeforeLast));
            }
            unconfirmed = Some((
                event.seq,
                event.input.action.clone(),
                event.input.outcome.clone(),
            ));
            tail.len = *offset;
            tail.seq = seq;
            tail.hash = hash;
        } else {
            return Err(damaged(
                path,
                Damage::HeadElsewhere {
                    last: last_seq,
                    head: head.size,
                },
            ));
        }
    }
    let heads = heads_cut(&heads_path, tail.seq).map_err(|e| unwritable(&heads_path, e))?;
    if torn > 0 || unconfirmed.is_some() || heads.is_some() {
        tail.heads_len = heads.map(|(to, _)| to);
        tail.cut = Some(Cut {
            log_len: len,
            torn,
            unconfirmed,
            heads,
            log_to: tail.len,
        });
    }
    Ok(tail)
}

/// What to cut of the heads history so that it ends with a whole line naming at most
/// `size` events: (length to cut to, current length), or `None` if nothing.
fn heads_cut(path: &Path, size: u64) -> io::Result<Option<(u64, u64)>> {
    let mut file = match crate::fsutil::open_regular_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.seek(SeekFrom::End(0))?;
    let (lines, mut to) = last_lines(&mut file, len, 16 << 10)?;
    for (offset, bytes) in lines.iter().rev() {
        match serde_json::from_slice::<SignedHead>(bytes) {
            Ok(h) if h.size > size => to = *offset,
            _ => break,
        }
    }
    Ok((to < len).then_some((to, len)))
}

/// Cuts the log (the locked `file` at `path`) and its heads history as `cut` says.
pub(super) fn cut(path: &Path, file: &File, heads: &Path, cut: &Cut) -> Result<(), AuditError> {
    if let Some((to, _)) = cut.heads {
        let h = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(heads)
            .map_err(|e| unwritable(heads, e))?;
        h.set_len(to)
            .and_then(|()| h.sync_data())
            .map_err(|e| unwritable(heads, e))?;
    }
    file.set_len(cut.log_to)
        .and_then(|()| file.sync_data())
        .map_err(|e| unwritable(path, e))
}

#[cfg(test)]
mod tests {
    use super::super::verify::{ExpectedHead, VerifyError, verify, verify_expecting};
    use super::super::{
        Action, Actor, AuditLog, EventInput, MAX_EVENT_BYTES, Outcome, read_events,
    };
    use crate::manifest::SigningKey;
    use std::path::{Path, PathBuf};

    /// A download by alice, told apart from the others by `tag` (its detail).
    fn event(tag: &str) -> EventInput {
        EventInput::new(&Actor::named("user:alice"), Action::Download, Outcome::Ok).with_detail(tag)
    }

    fn setup(n: usize) -> (tempfile::TempDir, PathBuf, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, SigningKey::generate().unwrap()).unwrap();
        for i in 0..n {
            log.append(event(&format!("e{i}"))).unwrap();
        }
        (dir, path, log)
    }

    fn vk(log: &AuditLog) -> crate::manifest::VerifyingKey {
        log.key.verifying_key()
    }

    /// Each event's tag, or its action for those the tests did not append (repairs).
    fn actions(path: &Path) -> Vec<String> {
        read_events(path, &|_| true, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| match e.input.action {
                Action::Download => e.input.detail.unwrap_or_default(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn fields_from_a_request_are_bounded_and_marked() {
        let (_d, path, log) = setup(1);
        let hostile = "\u{1}".repeat(20_000);
        let by = Actor {
            name: hostile.clone(),
            groups: vec![hostile.clone(); 100],
            remote: Some(hostile.clone()),
        };
        // Words of a newer version read back from a log, then appended again.
        let word = serde_json::Value::from(hostile.clone());
        let action: Action = serde_json::from_value(word.clone()).unwrap();
        let outcome: Outcome = serde_json::from_value(word).unwrap();
        let e = log
            .append(
                EventInput::new(&by, action, outcome)
                    .with_record(hostile.clone())
                    .with_namespace(Some(hostile.clone()))
                    .with_purpose(hostile.clone())
                    .with_detail(hostile.clone()),
            )
            .unwrap();
        assert_eq!(e.input.groups.len(), 16);
        for f in [
            "actor",
            "action",
            "outcome",
            "remote",
            "namespace",
            "detail",
            "purpose",
            "groups",
            "record",
        ] {
            assert!(e.input.truncated.iter().any(|t| t == f), "{f}");
        }
        let longest = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap();
        assert!(longest <= MAX_EVENT_BYTES, "{longest}");
        // The log reads back, verifies and takes the next append.
        log.append(event("after")).unwrap();
        assert_eq!(verify(&path, &vk(&log)).unwrap().events, 3);
    }

    #[test]
    fn a_torn_line_is_cut_and_recorded_at_the_next_append() {
        let (_d, path, log) = setup(3);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, br#"{"seq":4,"time":"2026-"#).unwrap();
        let v = verify(&path, &vk(&log)).unwrap();
        assert_eq!((v.events, v.torn_bytes), (3, 22));
        log.append(event("next")).unwrap();
        assert_eq!(actions(&path), ["e0", "e1", "e2", "audit-repair", "next"]);
        let repair = &read_events(&path, &|_| true, 10).unwrap()[3];
        assert!(
            repair
                .input
                .detail
                .as_deref()
                .unwrap()
                .contains("a torn line of 22 bytes"),
            "{repair:?}"
        );
        let v = verify(&path, &vk(&log)).unwrap();
        assert_eq!((v.events, v.signed_size, v.torn_bytes), (5, 5, 0));
    }

    #[test]
    fn an_event_no_head_confirms_is_cut_with_its_heads_line() {
        let (_d, path, log) = setup(3);
        let head = std::fs::read(log.head_path()).unwrap();
        log.append(event("refused")).unwrap();
        // A crash after the heads line, before head.json was published.
        std::fs::write(log.head_path(), head).unwrap();
        log.append(event("next")).unwrap();
        assert_eq!(actions(&path), ["e0", "e1", "e2", "audit-repair", "next"]);
        let repair = &read_events(&path, &|_| true, 10).unwrap()[3];
        let detail = repair.input.detail.as_deref().unwrap();
        assert!(detail.contains("event 4 (download, ok)"), "{detail}");
        assert!(detail.contains("heads history"), "{detail}");
        assert_eq!(verify(&path, &vk(&log)).unwrap().events, 5);
    }

    #[test]
    fn a_log_shorter_than_its_head_is_damage_not_repaired() {
        let (_d, path, log) = setup(3);
        let text = std::fs::read_to_string(&path).unwrap();
        let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &first_two).unwrap();
        let err = log.append(event("next")).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first_two);
        assert!(log.health().is_err());
    }

    #[test]
    fn a_rollback_of_the_whole_log_fails_against_a_pinned_head() {
        let (dir, path, log) = setup(3);
        let names = ["audit.log", "audit.log.head.json", "audit.log.heads"];
        let saved: Vec<Vec<u8>> = names
            .iter()
            .map(|n| std::fs::read(dir.path().join(n)).unwrap())
            .collect();
        log.append(event("download")).unwrap();
        let head = log.head().unwrap();
        let pin: ExpectedHead = format!("{}:{}", head.size, head.hash).parse().unwrap();
        assert!(verify_expecting(&path, &vk(&log), Some(&pin)).is_ok());
        for (n, bytes) in names.iter().zip(&saved) {
            std::fs::write(dir.path().join(n), bytes).unwrap();
        }
        // Consistent on its own...
        assert_eq!(verify(&path, &vk(&log)).unwrap().events, 3);
        // ...but below the head a verifier saw.
        assert!(matches!(
            verify_expecting(&path, &vk(&log), Some(&pin)),
            Err(VerifyError::RolledBack { events: 3, .. })
        ));
        // And a different history of the same size is caught too.
        log.append(event("other")).unwrap();
        assert!(matches!(
            verify_expecting(&path, &vk(&log), Some(&pin)),
            Err(VerifyError::NotExpectedHead { size: 4, .. })
        ));
    }
}
