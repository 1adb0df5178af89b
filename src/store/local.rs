//! The local store: one private directory per vault.
//!
//! ```text
//! DIR/            0700
//!   store.json    format marker
//!   keys/         signing.key (Ed25519, PKCS#8 PEM, 0600), signing.pub (SPKI PEM)
//!   records/      <ID>.age (sealed blob) and <ID>.json (signed manifest), 0600
//!   tmp/          blobs and manifests being written (removed on failure and at start)
//!   staging/      plaintext archives waiting to be sealed (capture uses it)
//!   audit.log     hash-chained audit events; audit.log.head.json / audit.log.heads: signed heads
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::StoreError;
use crate::fsutil::{self, AtomicFile};
use crate::manifest::sign::KeyError;
use crate::manifest::{Manifest, RecordId, SigningKey, VerifyingKey};

const MARKER: &str = "{\"format\":\"ckvault-local-store\",\"version\":1}\n";
/// A blob without a manifest older than this is debris of a crash and is removed at open.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// A vault directory on local disk.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Parsed manifests by ID for [`LocalStore::list_shared`]. A published manifest never
    /// changes (records are only ever deleted), so an entry stays valid while its file
    /// exists; every listing re-reads the directory and drops entries of deleted records.
    cache: std::sync::Arc<std::sync::Mutex<ListCache>>,
}

/// What [`LocalStore::list_shared`] remembers between listings.
#[derive(Debug, Default)]
struct ListCache {
    manifests: HashMap<RecordId, Arc<Manifest>>,
    /// records/'s modification time and the IDs read at that time: any publication or
    /// deletion changes the directory's mtime, so an unchanged mtime means the same IDs.
    ids: Option<(SystemTime, Vec<RecordId>)>,
}

impl LocalStore {
    /// Opens the store at `root`, creating it (and a new signing key) if it does not exist.
    pub fn open_or_init(root: &Path) -> Result<Self, StoreError> {
        let store = Self {
            root: root.to_path_buf(),
            cache: Arc::default(),
        };
        for dir in [
            root,
            &store.keys_dir(),
            &store.records_dir(),
            &store.tmp_dir(),
        ] {
            fsutil::ensure_private_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let marker = root.join("store.json");
        if !marker.exists() {
            fsutil::write_atomic(&store.tmp_dir(), &marker, MARKER.as_bytes())
                .map_err(|e| StoreError::io(&marker, e))?;
        }
        if !store.key_path().exists() {
            store.create_key()?;
        }
        store.recover()?;
        Ok(store)
    }

    /// Opens an existing store (read-mostly commands: ls, show, export, verify).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        if !root.join("store.json").is_file() {
            return Err(StoreError::Missing(root.display().to_string()));
        }
        let store = Self {
            root: root.to_path_buf(),
            cache: Arc::default(),
        };
        // Finish what a crash interrupted (a deletion half done, temporary files); a
        // read-only store is still readable.
        let _ = store.recover();
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Private staging directory for plaintext archives awaiting sealing (0700).
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("staging");
        fsutil::ensure_private_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(dir)
    }

    fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    fn records_dir(&self) -> PathBuf {
        self.root.join("records")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn key_path(&self) -> PathBuf {
        self.keys_dir().join("signing.key")
    }
    /// Path of the store's audit log (hash-chained JSON lines, see [`crate::audit`]).
    pub fn audit_path(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// Opens the store's audit log, signing heads with the vault key.
    pub fn audit_log(&self) -> Result<crate::audit::AuditLog, StoreError> {
        let path = self.audit_path();
        crate::audit::AuditLog::open(&path, self.signing_key()?)
            .map_err(|e| StoreError::Audit(Box::new(e)))
    }

    /// Path of the vault's public key (SPKI PEM), to hand to verifiers.
    pub fn public_key_path(&self) -> PathBuf {
        self.keys_dir().join("signing.pub")
    }

    fn create_key(&self) -> Result<(), StoreError> {
        let key = SigningKey::generate()?;
        let tmp = self.tmp_dir();
        let kio = |path: &Path, e| {
            StoreError::Key(KeyError::Io {
                path: path.display().to_string(),
                source: e,
            })
        };
        let pem = key.to_pem()?;
        let pub_pem = key.verifying_key().to_pem()?;
        fsutil::write_atomic(&tmp, &self.key_path(), pem.as_bytes())
            .map_err(|e| kio(&self.key_path(), e))?;
        fsutil::write_atomic(&tmp, &self.public_key_path(), pub_pem.as_bytes())
            .map_err(|e| kio(&self.public_key_path(), e))?;
        Ok(())
    }

    /// Loads the vault's signing key.
    pub fn signing_key(&self) -> Result<SigningKey, StoreError> {
        let path = self.key_path();
        let pem = read_small(&path, 64 << 10)?;
        Ok(SigningKey::from_pem(&pem, &path)?)
    }

    /// Loads the vault's public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, StoreError> {
        let path = self.public_key_path();
        let pem = read_small(&path, 64 << 10)?;
        Ok(VerifyingKey::from_pem(&pem, &path)?)
    }

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
            .join(format!("{id}.{}.age.partial", std::process::id()));
        let blob = AtomicFile::create(tmp.clone()).map_err(|e| StoreError::io(&tmp, e))?;
        Ok(PendingRecord {
            store: self.clone(),
            id: id.clone(),
            blob,
        })
    }

    /// Reads and parses one manifest (signature not checked: see [`Self::verify_manifest`]).
    pub fn manifest(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(id);
        let mut file = match fsutil::open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.clone()));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut bytes = Vec::new();
        file.by_ref()
            .take(crate::manifest::MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(&path, e))?;
        Manifest::from_json(&bytes).map_err(|source| StoreError::Manifest {
            id: id.to_string(),
            source,
        })
    }

    /// Checks a manifest's signature with this store's public key.
    pub fn verify_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.verifying_key()?
            .verify(manifest)
            .map_err(|source| StoreError::Manifest {
                id: manifest.id.to_string(),
                source,
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

    /// [`LocalStore::list`] for a long-running server: manifests already parsed are taken
    /// from memory, so listing 100k records costs a directory read, not 100k file parses.
    pub fn list_shared(&self) -> Result<(Vec<Arc<Manifest>>, Vec<StoreError>), StoreError> {
        let dir = self.records_dir();
        let mtime = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io(&dir, e))?;
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = &mut *guard;
        let ids = match &cache.ids {
            // A directory changed in the last second could change again within the same
            // timestamp: re-read it then.
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
        let cache = &mut cache.manifests;
        let mut manifests = Vec::with_capacity(ids.len());
        let mut broken = Vec::new();
        for id in ids {
            if let Some(m) = cache.get(&id) {
                manifests.push(m.clone());
                continue;
            }
            match self.manifest(&id) {
                Ok(m) => {
                    let m = Arc::new(m);
                    cache.insert(id, m.clone());
                    manifests.push(m);
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => broken.push(e),
            }
        }
        Ok((manifests, broken))
    }

    /// Every readable manifest, oldest first, plus the records whose manifest is unreadable.
    pub fn list(&self) -> Result<(Vec<Manifest>, Vec<StoreError>), StoreError> {
        let mut manifests = Vec::new();
        let mut broken = Vec::new();
        for id in self.ids()? {
            match self.manifest(&id) {
                Ok(m) => manifests.push(m),
                Err(StoreError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => broken.push(e),
            }
        }
        Ok((manifests, broken))
    }

    /// Cleans debris of interrupted writes: temporary files of dead processes, and blobs
    /// whose manifest never got published (older than ten minutes).
    pub fn recover(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
            let entry = entry.map_err(|e| StoreError::io(&tmp, e))?;
            let name = entry.file_name();
            let owner_alive = name
                .to_str()
                .and_then(|n| n.split('.').nth(1))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !owner_alive {
                // A deletion that was interrupted after hiding the manifest: finish it.
                if let Some(id) = name
                    .to_str()
                    .filter(|n| n.ends_with(".json.deleting"))
                    .and_then(|n| n.split('.').next())
                    .and_then(|n| n.parse::<RecordId>().ok())
                {
                    let _ = fs::remove_file(self.blob_path(&id));
                }
                let _ = fs::remove_file(entry.path());
            }
        }
        let records = self.records_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(&records).map_err(|e| StoreError::io(&records, e))? {
            let entry = entry.map_err(|e| StoreError::io(&records, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".age")) else {
                continue;
            };
            let Ok(id) = stem.parse::<RecordId>() else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > ORPHAN_AGE);
            if old && !self.manifest_path(&id).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

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
        let dir = self.holds_dir();
        fsutil::ensure_private_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let path = self.hold_path(id);
        let bytes = serde_json::to_vec_pretty(hold)
            .map_err(|e| StoreError::io(&path, std::io::Error::other(e)))?;
        let tmp = self
            .tmp_dir()
            .join(format!("{id}.{}.hold.partial", std::process::id()));
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
            .join(format!("{id}.{}.json.deleting", std::process::id()));
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
        Ok(())
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
            .join(format!("{}.{}.json.partial", self.id, std::process::id()));
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

fn read_small(path: &Path, limit: u64) -> Result<String, StoreError> {
    let file = fsutil::open_nofollow(path).map_err(|e| StoreError::io(path, e))?;
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::io(path, e))?;
    Ok(text)
}
