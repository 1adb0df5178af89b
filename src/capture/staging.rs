//! The private staging directory (`<store>/staging`, or `[cri] staging`; 0700): the only
//! place plaintext checkpoint bytes may live, and only until sealed. Each capture gets a
//! fresh `ID.OWNER.tar` (0600, O_EXCL|O_NOFOLLOW, a new record ID: never a reused name;
//! with `[cri] staging_mode = "fifo"` a named pipe `ID.OWNER.fifo` instead, so nothing
//! lands on disk),
//! OWNER being the creating process's owner token ([`crate::fsutil::owner_token`]), and
//! beside it `ID.OWNER.json`, the call's [`Intent`] (who asked, for which container, where
//! the caller wanted it, when), written first.
//!
//! At start, what a dead process left is dealt with: an archive is sealed with the
//! identity its intent names (source `staging-recovery`); an empty or absent archive is a
//! `capture-abandoned` audit event, never a record. Files of live processes (another
//! front-end on the same store, in any PID namespace, with a capture in progress) are left
//! to them. In a configured staging directory (which may hold other files) every name
//! that is not ckvault's is left alone; in the store's own, any other regular file is
//! sealed as it is.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::fsutil;
use crate::manifest::{Manifest, RecordId, Source, SourceKind};
use crate::seal::{ClaimedIdentity, SealError};
use crate::store::{LocalStore, StoreError};
use crate::vault::intake::Intake;

/// Largest intent file read back.
const INTENT_MAX: u64 = 64 << 10;

/// What a capture was for, written before the runtime is asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Intent {
    /// Kubernetes namespace (from the runtime's labels).
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// The runtime's container ID.
    pub container_id: String,
    /// Where the caller (the kubelet) asked for the archive.
    pub requested_location: Option<String>,
    /// What asked (the CRI proxy, the trigger API); absent in an intent that does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceKind>,
    /// Who asked.
    pub actor: String,
    /// When the capture started (RFC 3339).
    pub started: String,
    /// Why it was captured, so a record recovered after a crash keeps its cause; absent
    /// when nothing but the caller asked (and in intents written before it existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::manifest::Trigger>,
}

impl Intent {
    /// The identity it claims for the archive.
    pub(crate) fn claimed(&self) -> ClaimedIdentity {
        ClaimedIdentity {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}/{}/{} (container {})",
            self.namespace.as_deref().unwrap_or("?"),
            self.pod.as_deref().unwrap_or("?"),
            self.container.as_deref().unwrap_or("?"),
            self.container_id.chars().take(64).collect::<String>()
        )
    }
}

/// One capture's files in staging.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    /// Where the runtime writes the archive.
    pub archive: PathBuf,
    /// The intent beside it.
    pub intent_path: PathBuf,
    /// The intent.
    pub intent: Intent,
}

impl Staged {
    /// Removes both files (after sealing, or when nothing was written).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.archive);
        let _ = std::fs::remove_file(&self.intent_path);
    }
}

/// Registers a capture: writes its intent, then a fresh, empty, private archive file.
pub(crate) fn create(
    store: &LocalStore,
    intent: Intent,
) -> Result<(Staged, std::fs::File), StoreError> {
    let dir = store.staging_dir()?;
    let stem = format!("{}.{}", RecordId::generate(), store.owner()?);
    let intent_path = dir.join(format!("{stem}.json"));
    let archive = dir.join(format!("{stem}.tar"));
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| StoreError::Io { path: p, source: e }
    };
    let json = serde_json::to_vec_pretty(&intent).map_err(|source| StoreError::Encode {
        what: "a capture intent",
        source,
    })?;
    {
        use std::io::Write;
        let mut f = fsutil::create_private_file(&intent_path).map_err(io(&intent_path))?;
        f.write_all(&json).map_err(io(&intent_path))?;
    }
    let file = match fsutil::create_private_file(&archive) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&intent_path);
            return Err(io(&archive)(e));
        }
    };
    Ok((
        Staged {
            archive,
            intent_path,
            intent,
        },
        file,
    ))
}

/// Registers a capture whose archive the runtime writes into a named pipe: its intent,
/// then a fresh private FIFO (`ID.OWNER.fifo`).
pub(crate) fn create_fifo(store: &LocalStore, intent: Intent) -> Result<Staged, StoreError> {
    let dir = store.staging_dir()?;
    let stem = format!("{}.{}", RecordId::generate(), store.owner()?);
    let intent_path = dir.join(format!("{stem}.json"));
    let archive = dir.join(format!("{stem}.fifo"));
    let json = serde_json::to_vec_pretty(&intent).map_err(|source| StoreError::Encode {
        what: "a capture intent",
        source,
    })?;
    {
        use std::io::Write;
        let mut f = fsutil::create_private_file(&intent_path)
            .map_err(|e| StoreError::io(&intent_path, e))?;
        f.write_all(&json)
            .map_err(|e| StoreError::io(&intent_path, e))?;
    }
    if let Err(e) = fsutil::create_private_fifo(&archive) {
        let _ = std::fs::remove_file(&intent_path);
        return Err(StoreError::io(&archive, e));
    }
    Ok(Staged {
        archive,
        intent_path,
        intent,
    })
}

/// Records in the audit log that a capture produced nothing to seal, and why.
pub(crate) fn abandoned(store: &LocalStore, intent: &Intent, why: &str) -> Result<(), StoreError> {
    store
        .audit_log()?
        .append(
            EventInput::new(
                &Actor::named(if intent.actor.is_empty() {
                    "system:staging-recovery"
                } else {
                    &intent.actor
                }),
                Action::CaptureAbandoned,
                Outcome::Error,
            )
            .with_namespace(intent.namespace.clone())
            .with_detail(format!("{}: {why}", intent.describe())),
        )
        .map(|_| ())
        .map_err(|e| StoreError::Audit(Box::new(e)))
}

/// What staging recovery did.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Records made from leftover archives.
    pub sealed: Vec<Manifest>,
    /// Captures that left nothing to seal (recorded as `capture-abandoned`).
    pub abandoned: usize,
    /// Files that could not be sealed (left in place for the next try), and why.
    pub failed: Vec<(PathBuf, SealError)>,
}

/// `ID.OWNER.tar` / `ID.OWNER.json`: the stem and owner of one of ckvault's names.
fn ours(name: &str) -> Option<(&str, &str, bool)> {
    let (stem, archive) = if let Some(s) = name.strip_suffix(".tar") {
        (s, true)
    } else if let Some(s) = name.strip_suffix(".fifo") {
        (s, true)
    } else if let Some(s) = name.strip_suffix(".json") {
        (s, false)
    } else {
        return None;
    };
    let (id, owner) = stem.split_once('.')?;
    id.parse::<RecordId>().ok()?;
    (!owner.is_empty() && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then_some((stem, owner, archive))
}

fn read_intent(path: &Path) -> Option<Intent> {
    let f = fsutil::open_nofollow(path).ok()?;
    let mut text = String::new();
    f.take(INTENT_MAX).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Deals with every capture a dead process left in staging (through `intake`, so a sealed
/// leftover is uploaded or retention applies as after any seal).
pub(crate) fn recover(intake: &Intake) -> Result<Recovered, StoreError> {
    let store = intake.store();
    let dir = store.staging_dir()?;
    let mut out = Recovered::default();
    let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut stems: Vec<(String, String)> = Vec::new();
    let mut foreign = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match ours(&name) {
            Some((stem, owner, _)) if !stems.iter().any(|(s, _)| s == stem) => {
                stems.push((stem.to_owned(), owner.to_owned()));
            }
            Some(_) => {}
            // In the store's own staging nothing but ckvault writes: an archive under
            // another name (an older version's) is still sealed, never dropped.
            None if store.staging_is_own() => foreign.push(entry.path()),
            None => {}
        }
    }
    for path in foreign {
        // Never open anything but a regular file (a FIFO would block).
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
            continue;
        }
        let Ok(file) = fsutil::open_nofollow(&path) else {
            continue;
        };
        let mut o = intake.options().clone();
        o.source = Source {
            kind: crate::manifest::SourceKind::StagingRecovery,
            path: Some(path.display().to_string()),
        };
        match intake.seal(file, &o, &|_| {}) {
            Ok(m) => {
                let _ = std::fs::remove_file(&path);
                out.sealed.push(m);
            }
            Err(e) => out.failed.push((path, e)),
        }
    }
    stems.sort();
    for (stem, owner) in stems {
        // Another process's capture in progress is not ours to touch.
        if fsutil::owner_alive(&store.root().join("tmp"), &owner) {
            continue;
        }
        let archive = dir.join(format!("{stem}.tar"));
        let intent_path = dir.join(format!("{stem}.json"));
        let intent = read_intent(&intent_path);
        // A pipe held nothing on disk: what the runtime wrote into it went with the process
        // that read it.
        let fifo = dir.join(format!("{stem}.fifo"));
        if std::fs::symlink_metadata(&fifo).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_fifo()
        }) {
            // A runtime may still hold the pipe, blocked on a write nobody reads: release
            // it (the bytes are discarded; the stream's start went with the dead reader).
            let _ = fsutil::drain_fifo(&fifo);
            let i = intent.clone().unwrap_or_default();
            abandoned(
                store,
                &i,
                "the capturing process ended while the runtime wrote into its pipe (nothing \
                 of it was on disk)",
            )?;
            let _ = std::fs::remove_file(&fifo);
            let _ = std::fs::remove_file(&intent_path);
            out.abandoned += 1;
            continue;
        }
        let meta = std::fs::symlink_metadata(&archive).ok();
        if meta.as_ref().is_some_and(|m| !m.file_type().is_file()) {
            continue; // not a file ckvault made: leave it alone
        }
        let size = meta.map(|m| m.len());
        if size.unwrap_or(0) == 0 {
            let why = if size.is_some() {
                "the runtime wrote nothing before the capturing process ended"
            } else {
                "no archive was created before the capturing process ended"
            };
            let i = intent.clone().unwrap_or_default();
            abandoned(store, &i, why)?;
            let _ = std::fs::remove_file(&archive);
            let _ = std::fs::remove_file(&intent_path);
            out.abandoned += 1;
            continue;
        }
        let Ok(file) = fsutil::open_nofollow(&archive) else {
            continue;
        };
        let mut o = intake.options().clone();
        if let Some(i) = &intent {
            o.claimed = i.claimed();
            if !i.actor.is_empty() {
                o.actor = i.actor.clone();
            }
            o.trigger = i.trigger.clone();
        }
        o.source = Source {
            kind: crate::manifest::SourceKind::StagingRecovery,
            path: Some(
                intent
                    .as_ref()
                    .and_then(|i| i.requested_location.clone())
                    .unwrap_or_else(|| archive.display().to_string()),
            ),
        };
        match intake.seal(file, &o, &|_| {}) {
            Ok(m) => {
                let _ = std::fs::remove_file(&archive);
                let _ = std::fs::remove_file(&intent_path);
                out.sealed.push(m);
            }
            Err(e) => out.failed.push((archive, e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let id = RecordId::generate().to_string();
        assert_eq!(
            ours(&format!("{id}.abc-12.tar")).map(|(_, o, a)| (o, a)),
            Some(("abc-12", true))
        );
        assert_eq!(
            ours(&format!("{id}.abc.json")).map(|(_, o, a)| (o, a)),
            Some(("abc", false))
        );
        assert!(ours("notes.tar").is_none());
        assert!(ours(&format!("{id}.tar")).is_none());
        assert!(ours(&format!("{id}.a/b.tar")).is_none());
        assert!(ours("x.y.tar").is_none());
    }

    #[test]
    fn an_intent_keeps_its_trigger_and_one_without_reads_as_before() {
        use crate::manifest::{Trigger, TriggerKind};
        let mut intent = Intent {
            container_id: "3f2a1b4c5d6e".into(),
            actor: "user:am".into(),
            ..Intent::default()
        };
        let without = serde_json::to_string(&intent).unwrap();
        assert!(!without.contains("trigger"), "{without}");
        let read: Intent = serde_json::from_str(&without).unwrap();
        assert!(read.trigger.is_none());
        intent.trigger = Some(Trigger::new(TriggerKind::Falco, "user:falco"));
        let read: Intent = serde_json::from_str(&serde_json::to_string(&intent).unwrap()).unwrap();
        assert_eq!(read.trigger, intent.trigger);
    }
}
