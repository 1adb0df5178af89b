//! The local store: one private directory per vault. This file owns the directory (its
//! creation under a lock, where the audit log is, staging, recovery of interrupted
//! writes); [`keys`] the signing key, [`records`] publishing, reading and listing records,
//! [`holds`] legal holds and deletion.
//!
//! ```text
//! DIR/            0700
//!   store.json    format marker
//!   keys/         signing.key (Ed25519, PKCS#8 PEM, 0600), signing.pub (SPKI PEM);
//!                 retired/<KEYID>.pub: public keys it signed with before a rotation
//!   known-keys/   a bucket reader's memory of each node name's first key (store::s3::keys)
//!   records/      <ID>.age (sealed blob) and <ID>.json (signed manifest), 0600
//!   tmp/          blobs and manifests being written (removed on failure and at start)
//!   staging/      plaintext archives waiting to be sealed (capture uses it)
//!   holds/        <ID>.json legal holds
//!   audit.log     hash-chained audit events; audit.log.head.json / audit.log.heads: signed heads
//!   audit-location.json  where the log is when `[audit] path` put it elsewhere
//! ```
//!
//! A store opened with an `[audit] path` records it ([`LocalStore::record_audit_path`]),
//! and every later open of the store follows it, with or without that configuration: the
//! store knows where its own log is.
//!
//! A directory is a store when it holds `store.json`. A store is created only in an absent
//! or empty directory: anything else is refused before anything in it is touched (no
//! chmod, no mkdir, no file), and the directories and modes above are only ever set up
//! inside a recognised store. At start, [`LocalStore::recover`] removes from tmp/ only
//! files whose names have the exact shapes the store itself writes there
//! (`tmp_file_owner`), and only once their writer process is gone.
//!
//! Manifests are handed out verified: [`LocalStore::manifest`], [`LocalStore::list`] and
//! [`LocalStore::list_shared`] check each manifest's Ed25519 signature with the store's
//! key (and that it names the record it is filed as). A manifest that fails is
//! [`StoreError::Tampered`] and is left out of listings (returned among the broken ones).
//! Verifications are cached by the manifest file's identity (device, inode, size, mtime,
//! ctime), so an unchanged file is checked once and an edited one is checked again.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

mod holds;
mod keys;
mod records;

pub(crate) use holds::LegalHold;
pub(crate) use records::PendingRecord;

use super::StoreError;
use crate::fsutil::{self, AtomicFile};
use crate::manifest::sign::KeyError;
use crate::manifest::{Manifest, ManifestError, RecordId, SigningKey, VerifyingKey};

const MARKER: &str = "{\"format\":\"ckvault-local-store\",\"version\":1}\n";
/// The file that makes a directory a store.
const MARKER_NAME: &str = "store.json";
/// The file in which a store records an audit log kept elsewhere (`[audit] path`).
const AUDIT_LOCATION: &str = "audit-location.json";
/// The most bytes of [`AUDIT_LOCATION`] read.
const AUDIT_LOCATION_MAX: u64 = 8192;
/// A blob without a manifest older than this is debris of a crash and is removed at open.
const ORPHAN_AGE: Duration = Duration::from_secs(600);
/// Suffixes (after `<ID>.<PID>.`) of the per-record temporary files the store writes into
/// tmp/: blobs and manifests being written ([`LocalStore::begin`], [`PendingRecord::commit`]),
/// holds being placed ([`LocalStore::set_hold`]), manifests being deleted
/// ([`LocalStore::delete`]).
const RECORD_TMP_SUFFIXES: [&str; 4] = [
    "age.partial",
    "json.partial",
    "hold.partial",
    "json.deleting",
];
/// Files written through tmp/ with [`fsutil::write_atomic_owned`] / [`fsutil::replace_atomic_owned`],
/// whose temporary names are `<NAME>.<OWNER>.tmp`: the marker and keys (here), the audit
/// shipping state (`store::s3::ship`) and the uploader's status (`store::s3::upload`).
const ATOMIC_TMP_NAMES: [&str; 6] = [
    MARKER_NAME,
    AUDIT_LOCATION,
    "signing.key",
    "signing.pub",
    "audit.shipped.json",
    "upload-status.json",
];

/// A vault directory on local disk.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Verified manifests by ID, with the identity of the file they were read from. A
    /// published manifest never changes (records are only ever deleted), so an entry stays
    /// valid while its file is the same file; an edited file has another identity and is
    /// verified again. [`LocalStore::list_shared`] drops entries of deleted records.
    cache: Arc<Mutex<ListCache>>,
    /// The key manifests are verified with, derived once.
    key: Arc<OnceLock<VerifyingKey>>,
    /// The audit log, when `[audit] path` names one other than `<store>/audit.log`.
    audit: Option<PathBuf>,
    /// The staging directory, when `[cri] staging` names one other than `<store>/staging`.
    staging: Option<PathBuf>,
}

/// What the store remembers between reads of its manifests.
#[derive(Debug, Default)]
struct ListCache {
    manifests: HashMap<RecordId, (FileId, Arc<Manifest>)>,
    /// records/'s modification time and the IDs read at that time: any publication or
    /// deletion changes the directory's mtime, so an unchanged mtime means the same IDs.
    ids: Option<(SystemTime, Vec<RecordId>)>,
}

/// The identity of a file's current content: an edit in place changes the size, mtime or
/// ctime; a replacement changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Whether `root` holds a store marker (a regular file, not a symlink).
fn is_store(root: &Path) -> bool {
    fs::symlink_metadata(root.join(MARKER_NAME)).is_ok_and(|m| m.file_type().is_file())
}

/// The PID that owns a file in tmp/, if its name has one of the exact shapes the store
/// writes there, and for `<ID>.<PID>.json.deleting` the record whose deletion it is.
/// Any other name is not the store's and is never touched.
fn tmp_file_owner(name: &str) -> Option<(String, Option<RecordId>)> {
    // An owner token (`o` and 16 hex digits, see [`fsutil::owner_token`]), or a PID in
    // names written before tokens.
    let owner = |t: &str| {
        let token = t
            .strip_prefix('o')
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let pid = !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit());
        (token || pid).then(|| t.to_owned())
    };
    if let Some(rest) = name.strip_suffix(".tmp") {
        let (file, token) = rest.rsplit_once('.')?;
        return ATOMIC_TMP_NAMES
            .contains(&file)
            .then(|| owner(token).map(|o| (o, None)))
            .flatten();
    }
    let (id, rest) = name.split_once('.')?;
    let (token, suffix) = rest.split_once('.')?;
    if !RECORD_TMP_SUFFIXES.contains(&suffix) {
        return None;
    }
    let id = id.parse::<RecordId>().ok()?;
    let deleting = (suffix == "json.deleting").then(|| id.clone());
    Some((owner(token)?, deleting))
}

impl LocalStore {
    /// The store at `root`, made absolute against the working directory: a path handed to
    /// another process (a runtime writing into staging) must not depend on ours.
    fn at(root: &Path) -> Self {
        Self {
            root: crate::fsutil::absolute(root),
            cache: Arc::default(),
            key: Arc::default(),
            audit: None,
            staging: None,
        }
    }

    /// The store (or spool) `config` names, with its `[audit] path`, without opening or
    /// creating anything (for paths only).
    pub fn at_config(config: &crate::config::Config) -> Self {
        let mut store = Self::at(config.store.local_dir());
        store.audit = store.recorded_audit_path().ok().flatten();
        store.with_audit_path(config.audit.path.clone())
    }

    /// The same store with its audit log at `path` (`[audit] path`) instead of the log it
    /// recorded or `<store>/audit.log`: every event about this store, whoever writes it
    /// (seals, downloads, retention, uploads), goes to that one log, and that log is what
    /// is shipped to a bucket. `None` keeps the log the store knows.
    pub fn with_audit_path(mut self, path: Option<PathBuf>) -> Self {
        if let Some(path) = path {
            self.audit = Some(crate::fsutil::absolute(&path));
        }
        self
    }

    /// The audit log this store recorded ([`Self::record_audit_path`]), if any.
    fn recorded_audit_path(&self) -> Result<Option<PathBuf>, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Location {
            path: PathBuf,
        }
        let file = self.root.join(AUDIT_LOCATION);
        let text = match fsutil::open_regular(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&file, e)),
            Ok(f) => {
                let mut text = String::new();
                f.take(AUDIT_LOCATION_MAX)
                    .read_to_string(&mut text)
                    .map_err(|e| StoreError::io(&file, e))?;
                text
            }
        };
        let bad = |why: &str| {
            StoreError::io(
                &file,
                std::io::Error::other(format!(
                    "{why}: it names where this store's audit log is; write \
                     {{\"path\": \"/absolute/audit.log\"}} or open the store with [audit] path set"
                )),
            )
        };
        let location: Location =
            serde_json::from_str(&text).map_err(|_| bad("not a location record"))?;
        if !location.path.is_absolute() {
            return Err(bad("the path is not absolute"));
        }
        Ok(Some(location.path))
    }

    /// Records this store's audit log, when it is not `<store>/audit.log`, so that every
    /// later open of the store finds it (a command given `--store DIR` and no
    /// configuration). Nothing is written when the record is already true.
    pub fn record_audit_path(&self) -> Result<(), StoreError> {
        let Some(path) = &self.audit else {
            return Ok(());
        };
        if self.recorded_audit_path()?.as_ref() == Some(path)
            || (*path == self.root.join("audit.log") && self.recorded_audit_path()?.is_none())
        {
            return Ok(());
        }
        let file = self.root.join(AUDIT_LOCATION);
        let text = serde_json::json!({ "path": path }).to_string() + "\n";
        fsutil::replace_atomic_owned(&self.tmp_dir(), &file, text.as_bytes())
            .map_err(|e| StoreError::io(&file, e))
    }

    /// The same store with its plaintext staging in `dir` (`[cri] staging`: on the
    /// filesystem the runtime writes to) instead of `<store>/staging`.
    pub fn with_staging(mut self, dir: Option<PathBuf>) -> Self {
        self.staging = dir.map(|d| crate::fsutil::absolute(&d));
        self
    }

    /// Whether staging is the store's own `<store>/staging` (nothing but ckvault's files
    /// there) rather than a configured directory.
    pub fn staging_is_own(&self) -> bool {
        self.staging.is_none()
    }

    /// Opens the store at `root`, creating it (and a new signing key) if `root` does not
    /// exist or is an empty directory. An existing directory that is neither a store nor
    /// empty is refused ([`StoreError::NotAStore`]) and left exactly as it was.
    pub fn open_or_init(root: &Path) -> Result<Self, StoreError> {
        let store = Self::at(root);
        let fresh = match fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(StoreError::io(root, e)),
            Ok(meta) if !meta.file_type().is_dir() => {
                return Err(StoreError::io(
                    root,
                    std::io::Error::other(
                        "exists but is not a directory (symlinks are refused): pass a new or \
                         empty directory for the store",
                    ),
                ));
            }
            Ok(_) if is_store(root) => false,
            Ok(_) => {
                let mut entries = fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
                if entries.next().is_some() {
                    // Another process may have made it a store since we looked: the marker
                    // is the first thing in a new store.
                    if !is_store(root) {
                        return Err(StoreError::NotAStore(root.display().to_string()));
                    }
                    false
                } else {
                    true
                }
            }
        };
        if fresh {
            // The marker first: from here on the directory is recognised as a store, so a
            // crash before the layout is complete is finished by the next open.
            fsutil::ensure_private_dir(root).map_err(|e| StoreError::io(root, e))?;
            store.write_marker()?;
        }
        // Several processes may open a new store at the same instant (a DaemonSet's proxy,
        // watcher and server): the layout and the one signing key are made under an
        // exclusive lock on the marker, by whoever comes first; the others find them.
        let marker = root.join(MARKER_NAME);
        let lock = fsutil::open_nofollow(&marker).map_err(|e| StoreError::io(&marker, e))?;
        lock.lock().map_err(|e| StoreError::io(&marker, e))?;
        for dir in [
            root,
            &store.keys_dir(),
            &store.records_dir(),
            &store.tmp_dir(),
        ] {
            fsutil::ensure_private_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        if !store.key_path().exists() {
            store.create_key()?;
        } else if !store.public_key_path().exists() {
            // A crash between the two writes of create_key.
            let pem = store.signing_key()?.verifying_key().to_pem()?;
            let path = store.public_key_path();
            fsutil::write_atomic_owned(&store.tmp_dir(), &path, pem.as_bytes())
                .map_err(|e| StoreError::io(&path, e))?;
        } else if store.verifying_key().ok().map(|k| k.key_id())
            != Some(store.signing_key()?.verifying_key().key_id())
        {
            // A crash between the two writes of replace_signing_key.
            let pem = store.signing_key()?.verifying_key().to_pem()?;
            let path = store.public_key_path();
            fsutil::replace_atomic_owned(&store.tmp_dir(), &path, pem.as_bytes())
                .map_err(|e| StoreError::io(&path, e))?;
        }
        drop(lock);
        store.recover()?;
        let mut store = store;
        store.audit = store.recorded_audit_path()?;
        Ok(store)
    }

    fn write_marker(&self) -> Result<(), StoreError> {
        let marker = self.root.join(MARKER_NAME);
        let mut file = match fsutil::create_private_file(&marker) {
            Ok(f) => f,
            // Another process is creating the same store.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(StoreError::io(&marker, e)),
        };
        std::io::Write::write_all(&mut file, MARKER.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| fsutil::fsync_dir(&self.root))
            .map_err(|e| StoreError::io(&marker, e))
    }

    /// Opens an existing store (read-mostly commands: ls, show, export, verify).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        if !is_store(root) {
            return Err(StoreError::Missing(root.display().to_string()));
        }
        let mut store = Self::at(root);
        store.audit = store.recorded_audit_path()?;
        // Finish what a crash interrupted (a deletion half done, temporary files); a
        // read-only store is still readable.
        let _ = store.recover();
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A private (0700) subdirectory of the store, created if missing; refused unless the
    /// root is still a store.
    fn private_subdir(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !is_store(&self.root) {
            return Err(StoreError::NotAStore(self.root.display().to_string()));
        }
        let dir = self.root.join(name);
        fsutil::ensure_private_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(dir)
    }

    /// Private staging directory for plaintext archives awaiting sealing (0700; created
    /// if missing; a symlink or another user's directory is refused).
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        match &self.staging {
            Some(dir) => {
                fsutil::ensure_private_dir(dir).map_err(|e| StoreError::io(dir, e))?;
                Ok(dir.clone())
            }
            None => self.private_subdir("staging"),
        }
    }

    /// This process's owner token for temporary files in tmp/ ([`fsutil::owner_token`]).
    pub(crate) fn owner(&self) -> Result<String, StoreError> {
        let tmp = self.tmp_dir();
        fsutil::owner_token(&tmp).map_err(|e| StoreError::io(&tmp, e))
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
        self.audit
            .clone()
            .unwrap_or_else(|| self.root.join("audit.log"))
    }

    /// Opens the store's audit log, signing heads with the vault key.
    pub fn audit_log(&self) -> Result<crate::audit::AuditLog, StoreError> {
        let path = self.audit_path();
        crate::audit::AuditLog::open(&path, self.signing_key()?)
            .map_err(|e| StoreError::Audit(Box::new(e)))
    }

    /// Where a reader of a shared bucket remembers the first key of each node name
    /// (`known-keys/NODE.pem`, see `store::s3::keys`).
    pub fn known_keys_dir(&self) -> PathBuf {
        self.root.join("known-keys")
    }

    /// Path of the vault's public key (SPKI PEM), to hand to verifiers.
    pub fn public_key_path(&self) -> PathBuf {
        self.keys_dir().join("signing.pub")
    }

    /// Cleans debris of interrupted writes: temporary files of dead processes, and blobs
    /// whose manifest never got published (older than ten minutes). Only files with the
    /// names the store gives them are touched (see `tmp_file_owner`).
    pub fn recover(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
            let entry = entry.map_err(|e| StoreError::io(&tmp, e))?;
            let Some((owner, deleting)) = entry.file_name().to_str().and_then(tmp_file_owner)
            else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if fsutil::owner_alive(&tmp, &owner) {
                continue;
            }
            // A deletion that was interrupted after hiding the manifest: finish it.
            if let Some(id) = deleting {
                let _ = fs::remove_file(self.blob_path(&id));
            }
            let _ = fs::remove_file(entry.path());
        }
        fsutil::remove_dead_owners(&tmp);
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

fn read_small(path: &Path, limit: u64) -> Result<String, StoreError> {
    let file = fsutil::open_nofollow(path).map_err(|e| StoreError::io(path, e))?;
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::io(path, e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Summary;
    use crate::manifest::{
        InspectionRecord, InspectionStatus, Plaintext, SCHEMA_V1, Sealed, Source,
    };

    /// Publishes a signed record in `store` and returns its ID.
    fn publish(store: &LocalStore, namespace: &str) -> RecordId {
        let id = RecordId::generate();
        let mut m = Manifest {
            schema: SCHEMA_V1.into(),
            id: id.clone(),
            namespace: Some(namespace.into()),
            pod: Some("web".into()),
            container: Some("app".into()),
            identity_invalid: Vec::new(),
            container_id: None,
            image: None,
            engine: None,
            runtime: None,
            checkpointed_at: None,
            sealed_at: "2026-11-28T00:00:00Z".into(),
            node: None,
            source: Source {
                kind: crate::manifest::SourceKind::Cli,
                path: None,
            },
            trigger: None,
            plaintext: Plaintext {
                sha256: "00".repeat(32),
                size: 10,
                format: "tar".into(),
            },
            sealed: Sealed {
                sha256: "11".repeat(32),
                size: 4,
                compression: "zstd".into(),
                encryption: "age-v1".into(),
                recipients: vec![],
                blob: format!("{id}.age"),
            },
            inspection: InspectionRecord {
                status: InspectionStatus::Ok,
                code: None,
                reason: None,
                archive_identity: None,
                criu_images: vec![],
                processes: vec![],
            },
            summary: Summary::default(),
            signature: None,
        };
        store.signing_key().unwrap().sign(&mut m).unwrap();
        let mut rec = store.begin(&id).unwrap();
        std::io::Write::write_all(rec.blob_file().unwrap(), b"blob").unwrap();
        rec.commit(&m).unwrap();
        id
    }

    #[test]
    fn an_edited_manifest_is_refused_and_unlisted_until_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_init(&dir.path().join("s")).unwrap();
        let id = publish(&store, "team-a");
        let other = publish(&store, "team-b");
        // Verified and cached.
        assert_eq!(
            store.manifest(&id).unwrap().namespace.as_deref(),
            Some("team-a")
        );
        assert_eq!(store.list_shared().unwrap().0.len(), 2);

        let path = store.manifest_path(&id);
        let original = fs::read(&path).unwrap();
        let edited = String::from_utf8(original.clone())
            .unwrap()
            .replace("\"team-a\"", "\"team-b\"");
        assert_ne!(edited.as_bytes(), &original[..]);
        // Same size, edited in place: the cache must notice.
        fs::write(&path, &edited).unwrap();
        let err = store.manifest(&id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Tampered { id: bad, .. } if *bad == id),
            "{err:?}"
        );
        assert!(err.to_string().contains("ckvault verify"), "{err}");
        // A fresh store handle (a new process) refuses it too.
        let fresh = LocalStore::open(store.root()).unwrap();
        assert!(matches!(
            fresh.manifest(&id),
            Err(StoreError::Tampered { .. })
        ));
        for (listed, broken) in [
            {
                let (m, b) = store.list().unwrap();
                (m.into_iter().map(|m| m.id).collect::<Vec<_>>(), b)
            },
            {
                let (m, b) = store.list_shared().unwrap();
                (m.iter().map(|m| m.id.clone()).collect(), b)
            },
        ] {
            assert_eq!(listed, vec![other.clone()]);
            assert_eq!(broken.len(), 1);
            assert!(matches!(&broken[0], StoreError::Tampered { .. }));
        }
        // The unverified read still sees it (for `ckvault verify`).
        assert_eq!(
            store.manifest_unverified(&id).unwrap().namespace.as_deref(),
            Some("team-b")
        );

        // A validly signed manifest of another record filed under this ID.
        fs::copy(store.manifest_path(&other), &path).unwrap();
        assert!(matches!(
            store.manifest(&id),
            Err(StoreError::Tampered {
                why: ManifestError::Misfiled { .. },
                ..
            })
        ));

        // Restored bytes verify again.
        fs::write(&path, &original).unwrap();
        assert_eq!(
            store.manifest(&id).unwrap().namespace.as_deref(),
            Some("team-a")
        );
        let (listed, broken) = store.list_shared().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(broken.is_empty(), "{broken:?}");
    }

    #[test]
    fn recover_leaves_files_the_store_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_init(&dir.path().join("s")).unwrap();
        let tmp = store.tmp_dir();
        let id = RecordId::generate();
        // No process has this PID (above any pid_max).
        let dead = 4_294_967_000u32;
        let live = store.owner().unwrap();
        let foreign = [
            "notes.txt".to_owned(),
            "x.123.y".to_owned(),
            "a.1.b.c".to_owned(),
            format!("{id}.{dead}.age.partial.bak"),
            format!("{id}.{dead}.tar.partial"),
            format!("NOTANID.{dead}.age.partial"),
            format!("{id}.12x.age.partial"),
            format!("{id}..age.partial"),
            format!("other.json.{dead}.tmp"),
            "store.json.abc.tmp".to_owned(),
            format!("signing.key.{dead}.tmp.old"),
        ];
        let ours_dead = [
            format!("{id}.{dead}.age.partial"),
            format!("{id}.{dead}.json.partial"),
            format!("{id}.{dead}.hold.partial"),
            format!("store.json.{dead}.tmp"),
            format!("signing.key.{dead}.tmp"),
            format!("upload-status.json.{dead}.tmp"),
            format!("audit.shipped.json.{dead}.tmp"),
        ];
        let ours_live = [
            format!("{id}.{live}.age.partial"),
            format!("signing.pub.{live}.tmp"),
        ];
        for name in foreign.iter().chain(&ours_dead).chain(&ours_live) {
            fs::write(tmp.join(name), b"x").unwrap();
        }
        // A directory and a symlink with names the store would use are not its files.
        let dir_name = format!("{}.{dead}.age.partial", RecordId::generate());
        fs::create_dir(tmp.join(&dir_name)).unwrap();
        let link_name = format!("{}.{dead}.json.partial", RecordId::generate());
        std::os::unix::fs::symlink("/etc/hostname", tmp.join(&link_name)).unwrap();

        store.recover().unwrap();
        LocalStore::open(store.root()).unwrap();
        LocalStore::open_or_init(store.root()).unwrap();

        for name in foreign
            .iter()
            .chain(&ours_live)
            .chain([&dir_name, &link_name])
        {
            assert!(
                fs::symlink_metadata(tmp.join(name)).is_ok(),
                "recover() removed {name}, which it did not write (or whose writer lives)"
            );
        }
        for name in &ours_dead {
            assert!(!tmp.join(name).exists(), "recover() left debris {name}");
        }
    }

    #[test]
    fn an_interrupted_deletion_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_init(&dir.path().join("s")).unwrap();
        let id = publish(&store, "team-a");
        let moved = store
            .tmp_dir()
            .join(format!("{id}.4294967000.json.deleting"));
        fs::rename(store.manifest_path(&id), &moved).unwrap();
        store.recover().unwrap();
        assert!(!moved.exists());
        assert!(!store.blob_path(&id).exists());
    }

    #[test]
    fn subdirectories_are_made_only_inside_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_init(&dir.path().join("s")).unwrap();
        store.staging_dir().unwrap();
        fs::remove_file(store.root().join(MARKER_NAME)).unwrap();
        fs::remove_dir(store.root().join("staging")).unwrap();
        assert!(matches!(store.staging_dir(), Err(StoreError::NotAStore(_))));
        assert!(!store.root().join("staging").exists());
    }
}
