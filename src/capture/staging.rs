//! The private staging directory (`<store>/staging`, 0700): the only place plaintext
//! checkpoint bytes may live, and only until sealed. Files are created 0600 with
//! O_EXCL|O_NOFOLLOW and named `ID.OWNER.tar`, OWNER being the creating process's owner
//! token ([`crate::fsutil::owner_token`]). At start, whatever a dead process left there is
//! sealed (flagged with source `staging-recovery`) and removed: recovered, never dropped.
//! Files of live processes (another front-end on the same store, in any PID namespace,
//! with a capture in progress) are left to them.

use std::path::PathBuf;

use crate::fsutil;
use crate::manifest::{Manifest, RecordId, Source};
use crate::seal::SealError;
use crate::store::{LocalStore, StoreError};
use crate::vault::intake::Intake;

/// A fresh, empty, private staging file for one archive.
pub fn create(store: &LocalStore) -> Result<(PathBuf, std::fs::File), StoreError> {
    let dir = store.staging_dir()?;
    let path = dir.join(format!("{}.{}.tar", RecordId::generate(), store.owner()?));
    let file = fsutil::create_private_file(&path).map_err(|e| StoreError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    Ok((path, file))
}

/// What staging recovery did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records made from leftover files.
    pub sealed: Vec<Manifest>,
    /// Files that could not be sealed (left in place for the next try), and why.
    pub failed: Vec<(PathBuf, SealError)>,
}

/// Seals every file a dead process left in staging (through `intake`, so it is uploaded
/// or retention applies as after any seal), then removes it.
pub fn recover(intake: &Intake) -> Result<Recovered, StoreError> {
    let store = intake.store();
    let dir = store.staging_dir()?;
    let mut sealed = Vec::new();
    let mut failed = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() {
            let _ = std::fs::remove_file(&path); // nothing but regular files belongs here
            continue;
        }
        // `ID.OWNER.tar`: another process's capture in progress is not ours to seal.
        let owner = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar"))
            .and_then(|n| n.split_once('.'))
            .map(|(_, owner)| owner.to_owned());
        if let Some(owner) = owner
            && crate::fsutil::owner_alive(&store.root().join("tmp"), &owner)
        {
            continue;
        }
        let Ok(file) = fsutil::open_nofollow(&path) else {
            continue;
        };
        let mut o = intake.options().clone();
        o.source = Source {
            kind: "staging-recovery".into(),
            path: Some(path.display().to_string()),
        };
        match intake.seal(file, &o, &|_| {}) {
            Ok(m) => {
                let _ = std::fs::remove_file(&path);
                sealed.push(m);
            }
            Err(e) => failed.push((path, e)),
        }
    }
    Ok(Recovered { sealed, failed })
}
