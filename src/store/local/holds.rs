//! Legal holds on records (holds/ID.json) and the deletion they block.

use super::*;

/// A legal hold on a record: while present, the record cannot be deleted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegalHold {
    /// Why the record is held (case number, ticket).
    pub reason: String,
    /// Who placed it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

impl LocalStore {
    fn holds_dir(&self) -> PathBuf {
        self.root.join("holds")
    }

    fn hold_path(&self, id: &RecordId) -> PathBuf {
        self.holds_dir().join(format!("{id}.json"))
    }

    /// The hold on a record, if any.
    pub fn hold(&self, id: &RecordId) -> Result<Option<LegalHold>, StoreError> {
        let path = self.hold_path(id);
        match fsutil::open_nofollow(&path) {
            Ok(f) => {
                let mut text = String::new();
                f.take(64 << 10)
                    .read_to_string(&mut text)
                    .map_err(|e| StoreError::io(&path, e))?;
                // An unreadable hold still holds: fail closed.
                Ok(Some(serde_json::from_str(&text).unwrap_or(LegalHold {
                    reason: "(unreadable hold file)".into(),
                    by: "unknown".into(),
                    at: String::new(),
                })))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Places (or replaces) a legal hold on an existing record.
    pub fn set_hold(&self, id: &RecordId, hold: &LegalHold) -> Result<(), StoreError> {
        self.manifest(id)?;
        let dir = self.private_subdir("holds")?;
        let path = self.hold_path(id);
        let bytes = serde_json::to_vec_pretty(hold)
            .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?;
        let tmp = self
            .tmp_dir()
            .join(format!("{id}.{}.hold.partial", self.owner()?));
        let mut f = AtomicFile::create(tmp).map_err(|e| StoreError::io(&path, e))?;
        std::io::Write::write_all(f.file().map_err(|e| StoreError::io(&path, e))?, &bytes)
            .map_err(|e| StoreError::io(&path, e))?;
        f.sync().map_err(|e| StoreError::io(&path, e))?;
        fs::rename(f.tmp_path(), &path).map_err(|e| StoreError::io(&path, e))?;
        fsutil::fsync_dir(&dir).map_err(|e| StoreError::io(&dir, e))
    }

    /// Releases a hold; returns whether there was one.
    pub fn release_hold(&self, id: &RecordId) -> Result<bool, StoreError> {
        let path = self.hold_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = self.holds_dir();
                fsutil::fsync_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Deletes a record: the manifest leaves records/ first (so the record vanishes from
    /// listings atomically), then the blob, then the moved manifest. Refused under hold.
    pub fn delete(&self, id: &RecordId) -> Result<(), StoreError> {
        if let Some(hold) = self.hold(id)? {
            return Err(StoreError::Held {
                id: id.clone(),
                reason: hold.reason,
            });
        }
        let manifest = self.manifest_path(id);
        let moved = self
            .tmp_dir()
            .join(format!("{id}.{}.json.deleting", self.owner()?));
        fs::rename(&manifest, &moved).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound(id.clone())
            } else {
                StoreError::io(&manifest, e)
            }
        })?;
        let records = self.records_dir();
        fsutil::fsync_dir(&records).map_err(|e| StoreError::io(&records, e))?;
        let blob = self.blob_path(id);
        match fs::remove_file(&blob) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&blob, e)),
        }
        fsutil::fsync_dir(&records).map_err(|e| StoreError::io(&records, e))?;
        let _ = fs::remove_file(&moved);
        self.lock().manifests.remove(id);
        Ok(())
    }
}
