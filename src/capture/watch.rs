//! The checkpoint-directory watcher, for nodes where the CRI proxy is not wanted.
//!
//! At start the directory is walked (walkdir, depth 1, symlinks never followed); then
//! inotify reports new and rewritten files. A `checkpoint-*.tar` (also `.tar.gz`,
//! `.tar.zst`) is captured only when it is complete ([`Evidence`]):
//!
//! - written while the watcher runs: once its writer **closed** it (`IN_CLOSE_WRITE`, which
//!   the kernel reports whatever PID namespace the writer is in) and nothing wrote to it
//!   since; a pause in the writing, however long, is never taken for the end;
//! - found at start (or renamed in, or after an inotify overflow): once no process this
//!   watcher can see (`/proc`: its PID namespace and those below) holds it open for
//!   writing, and inotify reported no write to it for the settle time;
//!
//! and in both cases once its mtime is `settle` old. It is opened without following links
//! and without blocking (`O_NONBLOCK`: a FIFO swapped in after the name was checked is seen
//! on the opened descriptor and refused, not waited on), sealed through that descriptor, and
//! the plaintext is unlinked only if the path still names the file that was sealed **and**
//! the file did not change while it was being sealed (size and mtime on the descriptor, and
//! no visible writer): a file that grew is kept and sealed again once it is closed. A
//! receipt is left beside it. Anything else (symlinks, FIFOs, directories, other names,
//! receipts) is ignored. If the directory vanishes, the watcher waits for it to come back.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};

use super::receipt::{self, Receipt};
use crate::fsutil;
use crate::manifest::{Manifest, RecordId, Source};
use crate::vault::intake::Intake;

/// What happened to one candidate file.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Sealed; plaintext removed; receipt written (`warning`: what went wrong with the
    /// receipt, if anything).
    Sealed {
        /// The record's manifest.
        manifest: Box<Manifest>,
        /// Why the receipt could not be written, if it could not.
        warning: Option<String>,
    },
    /// Still being written (changed within the settle time).
    NotSettled,
    /// A process holds it open for writing: not sealed (the watcher waits for its close).
    InUse(String),
    /// It changed while it was being sealed: the record holds what was read, the file is
    /// kept where it was and sealed again once its writer closes it.
    Changed(RecordId),
    /// Not something to capture (with the reason).
    Ignored(String),
    /// Sealing failed; the file is left where it was (with the reason).
    Failed(SealFailed),
}

/// Why a settled file did not leave a record behind it and its plaintext gone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealFailed {
    /// Sealing failed; nothing was stored.
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// The record was stored but the plaintext stays.
    #[error("sealed as {id} but cannot remove the plaintext: {source}")]
    Remove {
        /// The record.
        id: RecordId,
        /// Why the file could not be removed.
        source: std::io::Error,
    },
}

/// What the watcher knows of how a file came to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// Its writer closed it (`IN_CLOSE_WRITE`) and nothing wrote to it since.
    Closed,
    /// Found by a walk, renamed into the directory, or seen after lost events: nobody was
    /// seen closing it, so no visible process may hold it open for writing.
    Found,
    /// Written to (`IN_CREATE`, `IN_MODIFY`) since its last close: never captured in this
    /// state, however long it stays quiet.
    Writing,
}

/// True for names the kubelet gives checkpoint archives.
pub(crate) fn is_candidate(name: &str) -> bool {
    name.starts_with("checkpoint-")
        && (name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tar.zst"))
        && !name.contains('/')
}

/// True when `path` is a second name of an existing file (`ln`): a creation that no
/// writer will close.
fn is_extra_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.nlink() > 1)
}

/// What identifies the content of an open file for "did it change": size and mtime.
fn fingerprint(meta: &std::fs::Metadata) -> (u64, i64, i64) {
    (meta.len(), meta.mtime(), meta.mtime_nsec())
}

/// Captures one file of the watched directory if it is complete (see the module doc).
pub(crate) fn capture(
    intake: &Intake,
    dir: &Path,
    name: &str,
    settle: Duration,
    evidence: Evidence,
) -> Outcome {
    if !is_candidate(name) {
        return Outcome::Ignored("not a checkpoint archive name".into());
    }
    if evidence == Evidence::Writing {
        return Outcome::InUse("written to since it was last closed".into());
    }
    let path = dir.join(name);
    // A cheap first look (nothing but a regular file is ever opened); the type that counts
    // is the opened descriptor's, since the name can be swapped after this.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => {
            return Outcome::Ignored("not a regular file (symlinks are never followed)".into());
        }
        Err(e) => return Outcome::Ignored(format!("gone: {e}")),
    }
    let file = match fsutil::open_regular_nofollow(&path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Outcome::Ignored("a symlink now (symlinks are never followed)".into());
        }
        Err(e) => return Outcome::Ignored(format!("cannot open: {e}")),
    };
    let Ok(before) = file.metadata() else {
        return Outcome::Ignored("cannot stat".into());
    };
    let quiet_for = before
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::ZERO);
    if quiet_for < settle {
        return Outcome::NotSettled;
    }
    if let Some(pid) = fsutil::visible_writer(&before) {
        return Outcome::InUse(format!("open for writing by process {pid}"));
    }
    // A second descriptor on the same open file, to look at it after sealing.
    let Ok(probe) = file.try_clone() else {
        return Outcome::Ignored("cannot duplicate the descriptor".into());
    };
    let mut o = intake.options().clone();
    o.source = Source {
        kind: crate::manifest::SourceKind::Watch,
        path: Some(path.display().to_string()),
    };
    let manifest = match intake.seal(file, &o, &|_| {}) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(e.into()),
    };
    // Unchanged while sealed (nothing appended, rewritten or truncated, and no writer has it
    // open now), or it stays.
    let unchanged = probe
        .metadata()
        .is_ok_and(|after| fingerprint(&after) == fingerprint(&before))
        && fsutil::visible_writer(&before).is_none();
    if !unchanged {
        return Outcome::Changed(manifest.id);
    }
    // Remove the plaintext only if the path still names what was sealed.
    match std::fs::symlink_metadata(&path) {
        Ok(now) if (now.dev(), now.ino()) == (before.dev(), before.ino()) => {
            if let Err(source) = std::fs::remove_file(&path) {
                return Outcome::Failed(SealFailed::Remove {
                    id: manifest.id,
                    source,
                });
            }
            let _ = fsutil::fsync_dir(dir);
        }
        _ => {}
    }
    let rpath = receipt::path_for(&path);
    let _ = std::fs::remove_file(&rpath);
    let warning = Receipt::for_manifest(&manifest)
        .write(&rpath)
        .err()
        .map(|e| format!("cannot write the receipt {}: {e}", rpath.display()));
    Outcome::Sealed {
        manifest: Box::new(manifest),
        warning,
    }
}

/// Watcher settings.
#[derive(Debug, Clone)]
pub(crate) struct WatchOptions {
    /// The directory (the kubelet's `<root-dir>/checkpoints`).
    pub dir: PathBuf,
    /// Quiet time after the last write (and after the close) before a file is captured.
    pub settle: Duration,
    /// Walk once, capture what is there (waiting for unsettled files), and return. A file
    /// a process holds open for writing is left for the next sweep.
    pub once: bool,
}

/// One file the watcher is waiting on: since when, and what it knows of it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    since: Instant,
    evidence: Evidence,
}

/// Runs the watcher; `report` is told about each capture. Returns only with `once`, or on
/// an inotify error.
pub(crate) fn run(
    intake: &Intake,
    opts: &WatchOptions,
    report: &mut dyn FnMut(&str, &Outcome),
) -> std::io::Result<()> {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut inotify: Option<Inotify> = None;
    let mut buffer = vec![0u8; 64 << 10];
    let mut walked = false;
    let mut rewalk = false;
    loop {
        // Walk at start, whenever the directory comes back, and after lost events; with
        // `once`, only once (a walk must not restart the settle clock of what it found).
        let start = inotify.is_none() && opts.dir.is_dir() && !(opts.once && walked);
        if start || rewalk {
            walked = true;
            if start && !opts.once {
                let ino = Inotify::init()?;
                let mask = WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::CREATE
                    | WatchMask::MODIFY
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR
                    | WatchMask::DONT_FOLLOW;
                ino.watches().add(&opts.dir, mask)?;
                inotify = Some(ino);
            }
            for entry in walkdir::WalkDir::new(&opts.dir)
                .min_depth(1)
                .max_depth(1)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if let Some(name) = entry.file_name().to_str()
                    && is_candidate(name)
                {
                    // Due at once at start (`capture` itself waits until the file's last
                    // write is `settle` old); after lost events, what was being written
                    // may have been closed unseen: it is looked at again as found.
                    let due = Instant::now()
                        .checked_sub(opts.settle)
                        .unwrap_or_else(Instant::now);
                    let p = pending.entry(name.to_owned()).or_insert(Pending {
                        since: due,
                        evidence: Evidence::Found,
                    });
                    if rewalk {
                        *p = Pending {
                            since: Instant::now(),
                            evidence: Evidence::Found,
                        };
                    }
                }
            }
            rewalk = false;
        }
        if let Some(ino) = inotify.as_mut() {
            match ino.read_events(&mut buffer) {
                Ok(events) => {
                    let mut lost = false;
                    for ev in events {
                        use inotify::EventMask as M;
                        if ev
                            .mask
                            .intersects(M::DELETE_SELF | M::MOVE_SELF | M::IGNORED)
                        {
                            lost = true;
                        } else if ev.mask.contains(M::Q_OVERFLOW) {
                            rewalk = true;
                        } else if let Some(name) = ev.name.and_then(|n| n.to_str())
                            && is_candidate(name)
                        {
                            let evidence = if ev.mask.contains(M::CLOSE_WRITE) {
                                Evidence::Closed
                            } else if ev.mask.contains(M::MOVED_TO)
                                || (ev.mask.contains(M::CREATE)
                                    && is_extra_link(&opts.dir.join(name)))
                            {
                                // Renamed in, or a hard link to an existing file: nobody
                                // will close it here.
                                Evidence::Found
                            } else {
                                Evidence::Writing
                            };
                            pending.insert(
                                name.to_owned(),
                                Pending {
                                    since: Instant::now(),
                                    evidence,
                                },
                            );
                        }
                    }
                    if lost {
                        inotify = None; // the directory went away: wait for it
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let due: Vec<(String, Evidence)> = pending
            .iter()
            .filter(|(_, p)| p.evidence != Evidence::Writing && p.since.elapsed() >= opts.settle)
            .map(|(n, p)| (n.clone(), p.evidence))
            .collect();
        for (name, evidence) in due {
            // What happens to this file (sealing, retention, the report) is logged in its span.
            let _file = tracing::info_span!("file", file = ?name).entered();
            let outcome = capture(intake, &opts.dir, &name, opts.settle, evidence);
            match &outcome {
                Outcome::NotSettled => {
                    pending.insert(
                        name.clone(),
                        Pending {
                            since: Instant::now(),
                            evidence,
                        },
                    );
                }
                // Live: its close (`IN_CLOSE_WRITE`) makes it due again. A sweep leaves it
                // for the next one.
                Outcome::InUse(_) | Outcome::Changed(_) if !opts.once => {
                    pending.insert(
                        name.clone(),
                        Pending {
                            since: Instant::now(),
                            evidence: Evidence::Writing,
                        },
                    );
                }
                _ => {
                    pending.remove(&name);
                }
            }
            report(&name, &outcome);
        }
        if opts.once && pending.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        assert!(is_candidate(
            "checkpoint-web_forensics-app-2026-11-28T10:00:00Z.tar"
        ));
        assert!(is_candidate("checkpoint-x.tar.zst"));
        assert!(!is_candidate("checkpoint-x.tar.ckvault-receipt.json"));
        assert!(!is_candidate("other.tar"));
        assert!(!is_candidate("checkpoint-x.tar.partial"));
    }
}
