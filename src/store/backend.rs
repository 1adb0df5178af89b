//! The record store as the server sees it: the local directory or an S3 bucket (with its
//! index and this replica's spool), behind one async interface. Local calls run on the
//! blocking pool.

use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::s3::{S3Store, index::Index};
use super::{LegalHold, LocalStore, StoreError};
use crate::manifest::{Manifest, RecordId};

/// A boxed reader over blob bytes.
pub(crate) type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// What identifies the current bytes of a local file, to tell whether it changed since it
/// was last verified: device, inode, size, modification and change times. Every change
/// made through the file system moves the change time (ctime) to the present, and nobody
/// can set it back short of setting the system clock (SECURITY.md, "Downloads").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
}

impl FileIdentity {
    /// The identity of an open file (`fstat`).
    pub(crate) fn of(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// When the file last changed (its ctime).
    pub(crate) fn changed_at(&self) -> std::time::SystemTime {
        let (secs, nanos) = self.ctime;
        let base = std::time::UNIX_EPOCH;
        let nanos = std::time::Duration::from_nanos(nanos.clamp(0, 999_999_999) as u64);
        if secs >= 0 {
            base + std::time::Duration::from_secs(secs as u64) + nanos
        } else {
            base - std::time::Duration::from_secs(secs.unsigned_abs()) + nanos
        }
    }
}

/// A bucket-backed store: the bucket, the index of its manifests, and the local spool that
/// holds this process's key, audit log and TLS material.
pub(crate) struct Bucket {
    /// The bucket.
    pub s3: S3Store,
    /// Its manifests.
    pub index: Index,
    /// Local state.
    pub spool: LocalStore,
}

/// Where the server's records live.
#[derive(Clone)]
pub(crate) enum Store {
    /// A local directory.
    Local(LocalStore),
    /// An S3 bucket.
    Bucket(Arc<Bucket>),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| StoreError::Task {
            what: "store".into(),
            source,
        })?
}

impl Store {
    /// The local directory of this process's state (key, audit log, TLS, staging).
    pub(crate) fn local(&self) -> &LocalStore {
        match self {
            Self::Local(l) => l,
            Self::Bucket(b) => &b.spool,
        }
    }

    /// A record's manifest (from the index for a bucket).
    pub(crate) async fn manifest(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id) = (l.clone(), id.clone());
                blocking(move || l.manifest(&id)).await
            }
            Self::Bucket(b) => match b.index.get(id) {
                Some(m) => Ok((*m).clone()),
                None => {
                    let m = b.s3.manifest(id).await?;
                    b.s3.verify_manifest(&m).await?;
                    b.index.insert(m.clone());
                    Ok(m)
                }
            },
        }
    }

    /// Checks a manifest's signature.
    pub(crate) async fn verify_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        match self {
            Self::Local(l) => l.verify_manifest(m),
            Self::Bucket(b) => b.s3.verify_manifest(m).await,
        }
    }

    /// The public key `m`'s signature verifies with, as this store trusts it (a local store's
    /// own key; in a bucket, the key of the node that sealed it). The key is returned only
    /// when the signature does verify with it.
    pub(crate) async fn manifest_key(
        &self,
        m: &Manifest,
    ) -> Result<crate::manifest::VerifyingKey, StoreError> {
        let bad = |source| StoreError::Manifest {
            id: m.id.to_string(),
            source,
        };
        let key = match self {
            Self::Local(l) => match m.signature.as_ref() {
                Some(sig) => l.key_by_id(&sig.key_id)?,
                None => None,
            }
            .map_or_else(|| l.manifest_key().cloned(), Ok)?,
            Self::Bucket(b) => {
                let sig = m
                    .signature
                    .as_ref()
                    .ok_or_else(|| bad(crate::manifest::ManifestError::Unsigned))?;
                b.s3.node_key(m.node.as_deref().unwrap_or(""), &sig.key_id)
                    .await?
            }
        };
        key.verify(m).map_err(bad)?;
        Ok(key)
    }

    /// Every record, oldest first.
    pub(crate) async fn list(&self) -> Result<Vec<Arc<Manifest>>, StoreError> {
        match self {
            Self::Local(l) => {
                let l = l.clone();
                blocking(move || Ok(l.list_shared()?.0)).await
            }
            Self::Bucket(b) => Ok(b.index.list()),
        }
    }

    /// How many records there are.
    pub(crate) async fn count(&self) -> Result<u64, StoreError> {
        match self {
            Self::Local(l) => {
                let l = l.clone();
                blocking(move || Ok(l.ids()?.len() as u64)).await
            }
            Self::Bucket(b) => Ok(b.index.len() as u64),
        }
    }

    /// `Ok` when records can be listed and read.
    pub(crate) async fn health(&self) -> Result<(), StoreError> {
        match self {
            Self::Local(l) => {
                let l = l.clone();
                blocking(move || l.ids().map(|_| ())).await
            }
            Self::Bucket(b) => b.index.health(),
        }
    }

    /// A record's legal hold.
    pub(crate) async fn hold(&self, id: &RecordId) -> Result<Option<LegalHold>, StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id) = (l.clone(), id.clone());
                blocking(move || l.hold(&id)).await
            }
            Self::Bucket(b) => b.s3.hold(id).await,
        }
    }

    /// Whether a record is held, cheaply (the index's view for a bucket).
    pub(crate) async fn is_held(&self, id: &RecordId) -> Result<bool, StoreError> {
        match self {
            Self::Local(_) => Ok(self.hold(id).await?.is_some()),
            Self::Bucket(b) => Ok(b.index.is_held(id)),
        }
    }

    /// Places a legal hold.
    pub(crate) async fn set_hold(&self, id: &RecordId, hold: &LegalHold) -> Result<(), StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id, h) = (l.clone(), id.clone(), hold.clone());
                blocking(move || l.set_hold(&id, &h)).await
            }
            Self::Bucket(b) => {
                let enforced = b.s3.set_hold(id, hold).await?;
                if !enforced {
                    tracing::warn!(
                        record = %id,
                        bucket = b.s3.bucket(),
                        "hold recorded, but the bucket has no Object Lock: the store itself does not enforce it"
                    );
                }
                b.index.set_held(id, true);
                Ok(())
            }
        }
    }

    /// Releases a legal hold; returns whether there was one.
    pub(crate) async fn release_hold(&self, id: &RecordId) -> Result<bool, StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id) = (l.clone(), id.clone());
                blocking(move || l.release_hold(&id)).await
            }
            Self::Bucket(b) => {
                let existed = b.s3.release_hold(id).await?;
                b.index.set_held(id, false);
                Ok(existed)
            }
        }
    }

    /// Deletes a record (refused under hold or Object Lock).
    pub(crate) async fn delete(&self, id: &RecordId) -> Result<(), StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id) = (l.clone(), id.clone());
                blocking(move || l.delete(&id)).await
            }
            Self::Bucket(b) => {
                b.s3.delete(id).await?;
                b.index.remove(id);
                Ok(())
            }
        }
    }

    /// A local store's blob, opened for reading, with what identifies its current bytes
    /// ([`FileIdentity`], taken from the open file so it describes what will be read).
    /// `None` for a bucket, where no such promise is available here: every range is
    /// verified first and every full download re-hashed.
    pub(crate) async fn open_blob_file(
        &self,
        id: &RecordId,
    ) -> Result<Option<(std::fs::File, FileIdentity)>, StoreError> {
        match self {
            Self::Local(l) => {
                let (l, id) = (l.clone(), id.clone());
                blocking(move || {
                    let file = l.open_blob(&id)?;
                    let identity = FileIdentity::of(&file)
                        .map_err(|e| StoreError::io(&l.blob_path(&id), e))?;
                    Ok(Some((file, identity)))
                })
                .await
            }
            Self::Bucket(_) => Ok(None),
        }
    }

    /// `count` bytes of a record's blob from `start`.
    pub(crate) async fn blob(
        &self,
        id: &RecordId,
        start: u64,
        count: u64,
    ) -> Result<BlobReader, StoreError> {
        match self {
            Self::Local(l) => {
                let (l, rid) = (l.clone(), id.clone());
                let file = blocking(move || l.open_blob(&rid)).await?;
                let mut f = tokio::fs::File::from_std(file);
                f.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| StoreError::io(&l_path(self, id), e))?;
                Ok(Box::pin(f.take(count)))
            }
            Self::Bucket(b) => Ok(Box::pin(b.s3.blob_reader(id, start, count).await?)),
        }
    }
}

fn l_path(store: &Store, id: &RecordId) -> std::path::PathBuf {
    store.local().blob_path(id)
}
