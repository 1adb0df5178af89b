//! Records: a blob written under tmp/ and published with its signed manifest
//! ([`PendingRecord`]), manifests read verified (and cached by file identity), blobs
//! opened, records listed.

use super::*;

impl LocalStore {
    /// Path of a record's blob.
    pub fn blob_path(&self, id: &RecordId) -> PathBuf {
        self.records_dir().join(format!("{id}.age"))
    }

    /// Path of a record's manifest.
    pub fn manifest_path(&self, id: &RecordId) -> PathBuf {
        self.records_dir().join(format!("{id}.json"))
    }

    /// Starts a new record: the blob is written under tmp/ until [`PendingRecord::commit`].
    pub fn begin(&self, id: &RecordId) -> Result<PendingRecord, StoreError> {
        let tmp = self
            .tmp_dir()
            .join(format!("{id}.{}.age.partial", self.owner()?));
        let blob = AtomicFile::create(tmp.clone()).map_err(|e| StoreError::io(&tmp, e))?;
        Ok(PendingRecord {
            store: self.clone(),
            id: id.clone(),
            blob,
        })
    }

    /// Reads one manifest and checks it: signed by this store's key and filed under its
    /// own ID. A manifest that fails is [`StoreError::Tampered`].
    pub fn manifest(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        self.manifest_shared(id).map(Arc::unwrap_or_clone)
    }

    /// [`Self::manifest`], shared with the cache.
    fn manifest_shared(&self, id: &RecordId) -> Result<Arc<Manifest>, StoreError> {
        let (file, meta) = self.open_manifest(id)?;
        let file_id = FileId::of(&meta);
        if let Some(m) = self.cached(id, file_id) {
            return Ok(m);
        }
        let manifest = self.parse_manifest(id, file)?;
        self.check(id, &manifest)?;
        let manifest = Arc::new(manifest);
        self.lock()
            .manifests
            .insert(id.clone(), (file_id, manifest.clone()));
        Ok(manifest)
    }

    /// Reads and parses one manifest WITHOUT checking its signature: only for
    /// `ckvault verify`, which reports which check fails (and may verify with another key).
    pub(crate) fn manifest_unverified(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        let (file, _) = self.open_manifest(id)?;
        self.parse_manifest(id, file)
    }

    fn open_manifest(&self, id: &RecordId) -> Result<(File, fs::Metadata), StoreError> {
        let path = self.manifest_path(id);
        let file = match fsutil::open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.clone()));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        // The identity is taken before the bytes are read: an edit after this point
        // changes it, so what is cached is never newer than the identity it is cached by.
        let meta = file.metadata().map_err(|e| StoreError::io(&path, e))?;
        Ok((file, meta))
    }

    fn parse_manifest(&self, id: &RecordId, file: File) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(id);
        let mut bytes = Vec::new();
        file.take(crate::manifest::MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(&path, e))?;
        Manifest::from_json(&bytes).map_err(|source| StoreError::Manifest {
            id: id.to_string(),
            source,
        })
    }

    /// Checks that `manifest`, filed as record `id`, is signed by this store's key and
    /// names `id`.
    fn check(&self, id: &RecordId, manifest: &Manifest) -> Result<(), StoreError> {
        let tampered = |why| StoreError::Tampered {
            id: id.clone(),
            why,
        };
        self.verify_manifest(manifest).map_err(|e| match e {
            StoreError::Tampered { why, .. } => tampered(why),
            e => e,
        })?;
        if manifest.id != *id {
            return Err(tampered(ManifestError::Misfiled {
                names: manifest.id.to_string(),
            }));
        }
        Ok(())
    }

    fn cached(&self, id: &RecordId, file_id: FileId) -> Option<Arc<Manifest>> {
        match self.lock().manifests.get(id) {
            Some((seen, m)) if *seen == file_id => Some(m.clone()),
            _ => None,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ListCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a manifest's signature with this store's key (or the retired key it names).
    pub fn verify_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let named = match &manifest.signature {
            Some(sig) => self.key_by_id(&sig.key_id)?,
            None => None,
        };
        named
            .as_ref()
            .unwrap_or(self.manifest_key()?)
            .verify(manifest)
            .map_err(|why| StoreError::Tampered {
                id: manifest.id.clone(),
                why,
            })
    }

    /// Opens a record's sealed blob for reading.
    pub fn open_blob(&self, id: &RecordId) -> Result<File, StoreError> {
        let path = self.blob_path(id);
        fsutil::open_nofollow(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound(id.clone())
            } else {
                StoreError::io(&path, e)
            }
        })
    }

    /// Every record ID with a manifest, oldest first.
    pub fn ids(&self) -> Result<Vec<RecordId>, StoreError> {
        let dir = self.records_dir();
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(id) = stem.parse::<RecordId>() {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Bytes of sealed blobs and manifests in records/ (the spool's fill level).
    pub fn bytes(&self) -> Result<u64, StoreError> {
        let dir = self.records_dir();
        let mut total = 0;
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// [`LocalStore::list`] for a long-running server: manifests already verified are
    /// taken from memory, so listing 100k records costs a directory read and a stat per
    /// record, not 100k file parses and signature checks.
    pub fn list_shared(&self) -> Result<(Vec<Arc<Manifest>>, Vec<StoreError>), StoreError> {
        let dir = self.records_dir();
        let mtime = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io(&dir, e))?;
        let ids = {
            let mut cache = self.lock();
            let ids = match &cache.ids {
                // A directory changed in the last second could change again within the
                // same timestamp: re-read it then.
                Some((t, ids))
                    if *t == mtime
                        && mtime.elapsed().unwrap_or(Duration::ZERO) > Duration::from_secs(1) =>
                {
                    ids.clone()
                }
                _ => {
                    let ids = self.ids()?;
                    cache.ids = Some((mtime, ids.clone()));
                    ids
                }
            };
            if cache.manifests.len() > ids.len() {
                let live: HashSet<&RecordId> = ids.iter().collect();
                cache.manifests.retain(|id, _| live.contains(id));
            }
            ids
        };
        self.collect(ids)
    }

    /// The verified manifests of `ids` and the errors of those that are not.
    fn collect(
        &self,
        ids: Vec<RecordId>,
    ) -> Result<(Vec<Arc<Manifest>>, Vec<StoreError>), StoreError> {
        let mut manifests = Vec::with_capacity(ids.len());
        let mut broken = Vec::new();
        for id in ids {
            let hit = fs::symlink_metadata(self.manifest_path(&id))
                .ok()
                .and_then(|meta| self.cached(&id, FileId::of(&meta)));
            match hit.map_or_else(|| self.manifest_shared(&id), Ok) {
                Ok(m) => manifests.push(m),
                Err(StoreError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => broken.push(e),
            }
        }
        Ok((manifests, broken))
    }

    /// Every manifest that verifies, oldest first, plus the errors of the records whose
    /// manifest is unreadable or fails verification.
    pub fn list(&self) -> Result<(Vec<Manifest>, Vec<StoreError>), StoreError> {
        let (manifests, broken) = self.collect(self.ids()?)?;
        Ok((
            manifests.into_iter().map(Arc::unwrap_or_clone).collect(),
            broken,
        ))
    }
}

/// A record being written: its blob lives in tmp/ until [`PendingRecord::commit`]; dropping
/// it removes the partial blob.
#[derive(Debug)]
pub struct PendingRecord {
    store: LocalStore,
    id: RecordId,
    blob: AtomicFile,
}

impl PendingRecord {
    /// The record ID.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// The file the sealed bytes go to.
    pub fn blob_file(&mut self) -> Result<&mut File, StoreError> {
        let path = self.blob.tmp_path().to_path_buf();
        self.blob.file().map_err(|e| StoreError::io(&path, e))
    }

    /// File name the blob will have in the store.
    pub fn blob_name(&self) -> String {
        format!("{}.age", self.id)
    }

    /// Publishes the record: fsync blob, write manifest, rename blob then manifest into
    /// records/, fsync the directory. On error nothing is visible.
    pub fn commit(self, manifest: &Manifest) -> Result<(), StoreError> {
        let store = &self.store;
        let bytes = manifest
            .to_json_pretty()
            .map_err(|e| StoreError::Manifest {
                id: self.id.to_string(),
                source: crate::manifest::ManifestError::Json(e),
            })?;
        let mtmp = store
            .tmp_dir()
            .join(format!("{}.{}.json.partial", self.id, store.owner()?));
        let mut mfile = AtomicFile::create(mtmp.clone()).map_err(|e| StoreError::io(&mtmp, e))?;
        {
            use std::io::Write;
            let f = mfile.file().map_err(|e| StoreError::io(&mtmp, e))?;
            f.write_all(&bytes).map_err(|e| StoreError::io(&mtmp, e))?;
        }
        let blob_dest = store.blob_path(&self.id);
        let manifest_dest = store.manifest_path(&self.id);
        self.blob
            .commit_deferred(&blob_dest)
            .map_err(|e| StoreError::io(&blob_dest, e))?;
        if let Err(e) = mfile.commit_deferred(&manifest_dest) {
            let _ = fs::remove_file(&blob_dest);
            return Err(StoreError::io(&manifest_dest, e));
        }
        let records = store.records_dir();
        fsutil::fsync_dir(&records).map_err(|e| StoreError::io(&records, e))
    }
}
