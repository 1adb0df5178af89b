//! The S3-compatible bucket store, shared by many nodes: node agents seal into a local
//! spool and [`upload`] records; servers keep an [`index`] of the bucket's manifests and
//! serve, hold and delete from it; [`lease`] lets one server replica at a time apply
//! retention; [`fleet`] carries capture requests to the node that runs the container.
//!
//! Layout under `[store] prefix`:
//! - `blobs/ID.age`: the sealed blob (age ciphertext)
//! - `manifests/ID.json`: its signed manifest, written after the blob is confirmed, so a
//!   visible manifest always has its blob; the set of manifests is the source of truth
//! - `holds/ID.json`: a legal hold (reason, who, when), mirrored as S3 Object Lock legal
//!   hold on the blob and the manifest
//! - `keys/NODE/KEYID.pem`: each node's public manifest and audit signing key, and
//!   `keys/NODE/KEYID.rotation.json`: a node's signed hand-over to a new key ([`keys`]
//!   decides which key may sign for which node name)
//! - `audit/SOURCE/…`: audit segments shipped by every node and server replica
//! - `locks/retention.json`: the retention lease
//! - `captures/…`: capture requests between the process that received an alert and the
//!   node that runs the container ([`fleet`])
//!
//! This file owns the [`S3Store`] handle (its configuration, the key layout above, how an
//! SDK error becomes a [`StoreError`], the bucket check); its operations are split by job:
//! `write` (objects up, multipart, retention, checksums), `read` (objects down, listings,
//! manifests, blob ranges), `custody` (holds, Object Lock, deletion) and [`keys`] (which
//! key may sign for which node).

pub mod client;
mod custody;
pub mod fleet;
pub mod index;
pub mod keys;
pub mod lease;
pub(crate) mod read;
pub mod ship;
pub mod upload;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use self::client::Kind;
use super::StoreError;
use crate::config::{LockMode, StoreConfig};
use crate::manifest::{RecordId, VerifyingKey};

/// Waits for an exclusive `flock` on the lock file at `path` (on the blocking pool) and
/// returns the locked file: the lock is held until it is dropped.
pub(crate) async fn lock_exclusive(path: &Path) -> Result<std::fs::File, StoreError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = crate::fsutil::open_lock_file(&owned)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|source| StoreError::Task {
        what: format!("lock of {}", path.display()),
        source,
    })?
    .map_err(|e| StoreError::io(path, e))
}

/// A bucket (and prefix) holding ckvault records.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    lock: Option<(LockMode, u32)>,
    trusted: Option<PathBuf>,
    /// Keys already found valid, by node name and key ID.
    keys: Arc<Mutex<HashMap<String, VerifyingKey>>>,
    /// First keys of node names seen by this process (without pins).
    roots: Arc<Mutex<HashMap<String, VerifyingKey>>>,
    /// First keys of node names remembered in the spool (without pins).
    memory: Option<keys::Memory>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store(s3://{}/{})", self.bucket, self.prefix)
    }
}

pub use keys::valid_node_name;

impl S3Store {
    /// Connects to the bucket named in `[store]` (no request is made yet).
    pub fn new(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let bucket = cfg.bucket.clone().ok_or(StoreError::NoBucket)?;
        let mut prefix = cfg.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if let Some(dir) = &cfg.trusted_keys {
            keys::check_pins(dir)?;
        }
        Ok(Self {
            client: client::connect(cfg)?,
            bucket,
            prefix,
            endpoint: cfg
                .endpoint
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| format!("AWS S3 ({})", cfg.region)),
            lock: cfg.object_lock.map(|m| (m, cfg.lock_days)),
            trusted: cfg.trusted_keys.clone(),
            keys: Arc::default(),
            roots: Arc::default(),
            memory: None,
        })
    }

    /// The same store, remembering the first key of each node name it trusts in `dir` (a
    /// private directory of this process's spool), so a name's key replaced in the bucket
    /// later is refused ([`keys`]).
    pub fn with_key_memory(mut self, dir: PathBuf) -> Self {
        self.memory = Some(keys::Memory::new(dir));
        self
    }

    /// The SDK client (tests use it to act with the bucket credentials directly).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Key of a record's blob.
    pub fn blob_key(&self, id: &RecordId) -> String {
        self.key(&format!("blobs/{id}.age"))
    }

    /// Key of a record's manifest.
    pub fn manifest_key(&self, id: &RecordId) -> String {
        self.key(&format!("manifests/{id}.json"))
    }

    fn hold_key(&self, id: &RecordId) -> String {
        self.key(&format!("holds/{id}.json"))
    }

    /// Turns an SDK error into a [`StoreError`] naming the operation and key.
    pub fn err<E>(
        &self,
        op: &str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (kind, detail) = client::classify(&e);
        match kind {
            Kind::Unreachable => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: format!("{op} {key}: {detail}"),
            },
            Kind::Credentials => StoreError::Credentials {
                endpoint: self.endpoint.clone(),
                detail,
            },
            Kind::NoCredentials => StoreError::NoCredentials { detail },
            _ => StoreError::S3 {
                op: op.to_owned(),
                key: key.to_owned(),
                detail,
                kind,
            },
        }
    }

    /// The outcome of an SDK call on `key`, with "no such object" as `None`.
    fn found<T, E>(
        &self,
        op: &str,
        key: &str,
        r: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    ) -> Result<Option<T>, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => match self.err(op, key, e) {
                StoreError::S3 {
                    kind: Kind::NotFound,
                    ..
                } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Checks that the bucket is reachable with our credentials.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let e = self.err("HeadBucket", &self.bucket, e);
                match e {
                    StoreError::S3 {
                        kind: Kind::NotFound,
                        ..
                    } => StoreError::NoSuchBucket {
                        bucket: self.bucket.clone(),
                        endpoint: self.endpoint.clone(),
                    },
                    // HeadBucket has no body: a 403 there is a credentials problem.
                    StoreError::S3 {
                        kind: Kind::Denied,
                        detail,
                        ..
                    } => StoreError::Credentials {
                        endpoint: self.endpoint.clone(),
                        detail,
                    },
                    other => other,
                }
            })
    }
}
