//! The checkpoint-directory watcher, for nodes where the CRI proxy is not wanted.
//!
//! At start the directory is walked (walkdir, depth 1, symlinks never followed); then
//! inotify reports new and rewritten files. A `checkpoint-*.tar` (also `.tar.gz`,
//! `.tar.zst`) is captured once it has been quiet for the settle time after its last write:
//! opened without following links, sealed through the same descriptor, then the plaintext
//! is unlinked (only if the path still names the file that was sealed) and a receipt is left
//! beside it. Anything else (symlinks, directories, other names, receipts) is ignored. If the
//! directory vanishes, the watcher waits for it to come back.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};

use super::receipt::{self, Receipt};
use crate::fsutil;
use crate::manifest::{Manifest, Source};
use crate::vault::intake::Intake;

/// What happened to one candidate file.
#[derive(Debug)]
pub enum Outcome {
    /// Sealed; plaintext removed; receipt written.
    Sealed(Box<Manifest>),
    /// Still being written (changed within the settle time).
    NotSettled,
    /// Not something to capture (with the reason).
    Ignored(String),
    /// Sealing failed; the file is left where it was (with the reason).
    Failed(String),
}

/// True for names the kubelet gives checkpoint archives.
pub fn is_candidate(name: &str) -> bool {
    name.starts_with("checkpoint-")
        && (name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tar.zst"))
        && !name.contains('/')
}

/// Captures one file of the watched directory if it is complete.
pub fn capture(intake: &Intake, dir: &Path, name: &str, settle: Duration) -> Outcome {
    if !is_candidate(name) {
        return Outcome::Ignored("not a checkpoint archive name".into());
    }
    let path = dir.join(name);
    let lmeta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) => return Outcome::Ignored(format!("gone: {e}")),
    };
    if !lmeta.file_type().is_file() {
        return Outcome::Ignored("not a regular file (symlinks are never followed)".into());
    }
    let quiet_for = lmeta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::ZERO);
    if quiet_for < settle {
        return Outcome::NotSettled;
    }
    let file = match fsutil::open_nofollow(&path) {
        Ok(f) => f,
        Err(e) => return Outcome::Ignored(format!("cannot open: {e}")),
    };
    let Ok(fmeta) = file.metadata() else {
        return Outcome::Ignored("cannot stat".into());
    };
    if (fmeta.dev(), fmeta.ino()) != (lmeta.dev(), lmeta.ino()) || !fmeta.is_file() {
        return Outcome::NotSettled; // replaced between stat and open: look again
    }
    let mut o = intake.options().clone();
    o.source = Source {
        kind: "watch".into(),
        path: Some(path.display().to_string()),
    };
    let manifest = match intake.seal(file, &o, &|_| {}) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // Remove the plaintext only if the path still names what was sealed.
    match std::fs::symlink_metadata(&path) {
        Ok(now) if (now.dev(), now.ino()) == (fmeta.dev(), fmeta.ino()) => {
            if let Err(e) = std::fs::remove_file(&path) {
                return Outcome::Failed(format!(
                    "sealed as {} but cannot remove the plaintext: {e}",
                    manifest.id
                ));
            }
            let _ = fsutil::fsync_dir(dir);
        }
        _ => {}
    }
    let rpath = receipt::path_for(&path);
    let _ = std::fs::remove_file(&rpath);
    if let Err(e) = Receipt::for_manifest(&manifest).write(&rpath) {
        eprintln!(
            "ckvault: sealed {} but cannot write receipt {}: {e}",
            manifest.id,
            rpath.display()
        );
    }
    Outcome::Sealed(Box::new(manifest))
}

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The directory (the kubelet's `<root-dir>/checkpoints`).
    pub dir: PathBuf,
    /// Quiet time after the last write before a file counts as complete.
    pub settle: Duration,
    /// Walk once, capture what is there (waiting for unsettled files), and return.
    pub once: bool,
}

/// Runs the watcher; `report` is told about each capture. Returns only with `once`, or on
/// an inotify error.
pub fn run(
    intake: &Intake,
    opts: &WatchOptions,
    report: &mut dyn FnMut(&str, &Outcome),
) -> std::io::Result<()> {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut inotify: Option<Inotify> = None;
    let mut buffer = vec![0u8; 64 << 10];
    let mut walked = false;
    loop {
        // Walk at start and whenever the directory comes back; with `once`, only once (a
        // walk must not restart the settle clock of what it already found).
        if inotify.is_none() && opts.dir.is_dir() && !(opts.once && walked) {
            walked = true;
            if !opts.once {
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
                    // Due at once: `capture` itself waits until the file's last write is
                    // `settle` old.
                    let due = Instant::now()
                        .checked_sub(opts.settle)
                        .unwrap_or_else(Instant::now);
                    pending.entry(name.to_owned()).or_insert(due);
                }
            }
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
                        } else if let Some(name) = ev.name.and_then(|n| n.to_str())
                            && is_candidate(name)
                        {
                            pending.insert(name.to_owned(), Instant::now());
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
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, t)| t.elapsed() >= opts.settle)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let outcome = capture(intake, &opts.dir, &name, opts.settle);
            match &outcome {
                Outcome::NotSettled => {
                    pending.insert(name.clone(), Instant::now());
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
