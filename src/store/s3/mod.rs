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

pub mod client;
pub mod fleet;
pub mod index;
pub mod keys;
pub mod lease;
pub mod ship;
pub mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockLegalHold,
    ObjectLockLegalHoldStatus, ObjectLockMode,
};
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt};

use self::client::Kind;
use super::{LegalHold, StoreError};
use crate::config::{LockMode, StoreConfig};
use crate::manifest::{Manifest, RecordId, VerifyingKey};

/// Objects larger than this go up as multipart uploads, in parts of at least this size.
pub const PART_SIZE: u64 = 16 << 20;

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

/// Base64 of the bytes a hex string spells (what `x-amz-checksum-sha256` carries).
fn hex_to_b64(hex_digest: &str) -> Option<String> {
    let raw = hex::decode(hex_digest).ok().filter(|r| r.len() == 32)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// What a key holds, compared with the object ckvault means to put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// No object.
    Nothing,
    /// That very object (an earlier try put it there).
    Same,
    /// Another object (how it differs): never written over, since on a versioned bucket
    /// that leaves a second version, perhaps one Object Lock keeps forever.
    Other(String),
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

    /// The retention lock to put on new objects, if configured.
    fn retain_until(&self) -> Option<(ObjectLockMode, DateTime)> {
        let (mode, days) = self.lock?;
        let until = time::OffsetDateTime::now_utc().unix_timestamp() + i64::from(days) * 86_400;
        let mode = match mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        };
        Some((mode, DateTime::from_secs(until)))
    }

    /// Uploads the file at `path` (`size` bytes, SHA-256 `sha256` in hex, as sealing
    /// computed it) as `key`, streaming from disk: one PUT up to [`PART_SIZE`], a multipart
    /// upload beyond (memory stays at one part in flight). Every request carries an
    /// `x-amz-checksum-sha256` (the whole object's, or each part's), as AWS requires of
    /// writes under Object Lock, and a checksum the store reports back must match.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), StoreError> {
        let lock = self.retain_until();
        if size <= PART_SIZE {
            let body = ByteStream::read_from()
                .path(path)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| StoreError::io(path, std::io::Error::other(e)))?;
            let want = hex_to_b64(sha256).ok_or_else(|| StoreError::BadDigest {
                key: key.to_owned(),
                sha256: sha256.to_owned(),
            })?;
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(size as i64)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&want)
                .body(body);
            if let Some((mode, until)) = lock {
                req = req
                    .object_lock_mode(mode)
                    .object_lock_retain_until_date(until);
            }
            let out = req
                .send()
                .await
                .map_err(|e| self.err("PutObject", key, e))?;
            return self.check_echo("PutObject", key, &want, out.checksum_sha256());
        }
        // A multipart upload of this key that an earlier, killed run left open holds its
        // parts (billed, invisible) until aborted; the key is this record's, so abort it.
        self.abort_stale_uploads(key).await;
        // At most 10,000 parts.
        let part = PART_SIZE.max(size.div_ceil(9_000));
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        if let Some((mode, until)) = lock.clone() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        let created = req
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StoreError::S3 {
                op: "CreateMultipartUpload".into(),
                key: key.into(),
                detail: "no upload ID in the response".into(),
                kind: Kind::Other,
            });
        };
        let result = self.put_parts(key, path, size, part, &upload_id).await;
        if result.is_err() {
            self.abort_upload(key, &upload_id).await;
        }
        result?;
        if let Some((mode, until)) = lock {
            self.ensure_retention(key, mode, until).await?;
        }
        Ok(())
    }

    /// Checks what the store reports of `key`'s retention after a multipart upload, and
    /// sets it when missing (some stores drop the lock headers of CreateMultipartUpload:
    /// moto's server does), so every version ckvault writes is retained as configured.
    async fn ensure_retention(
        &self,
        key: &str,
        mode: ObjectLockMode,
        until: DateTime,
    ) -> Result<(), StoreError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("HeadObject", key, e))?;
        if head.object_lock_mode().is_some() {
            return Ok(());
        }
        let mut req = self
            .client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(match mode {
                        ObjectLockMode::Compliance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
                        }
                        _ => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
                    })
                    .retain_until_date(until)
                    .build(),
            );
        if let Some(v) = head.version_id() {
            req = req.version_id(v);
        }
        req.send()
            .await
            .map_err(|e| self.err("PutObjectRetention", key, e))?;
        Ok(())
    }

    /// Aborts one multipart upload; best effort (a failure leaves it to the bucket's
    /// lifecycle rules, and the next upload of the key aborts it again).
    async fn abort_upload(&self, key: &str, upload_id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
    }

    /// Aborts the unfinished multipart uploads of exactly `key`, which a killed run left
    /// behind. Best effort: a store that cannot list them is left to its own lifecycle
    /// rules, and a connection problem shows up in the upload that follows.
    async fn abort_stale_uploads(&self, key: &str) {
        let Ok(open) = self.uploads(key).await else {
            return;
        };
        for (k, upload_id) in open {
            if k == key {
                self.abort_upload(key, &upload_id).await;
            }
        }
    }

    /// The unfinished multipart uploads (key, upload ID) under the full key `prefix`.
    async fn uploads(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| self.err("ListMultipartUploads", prefix, e))?;
        Ok(listed
            .uploads()
            .iter()
            .filter_map(|u| Some((u.key()?.to_owned(), u.upload_id()?.to_owned())))
            .collect())
    }

    /// The keys of the unfinished multipart uploads under `rel` (relative to the prefix).
    pub async fn open_uploads(&self, rel: &str) -> Result<Vec<String>, StoreError> {
        let open = self.uploads(&self.key(rel)).await?;
        Ok(open.into_iter().map(|(key, _)| key).collect())
    }

    async fn put_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        part: u64,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::io(path, e))?;
        while offset < size {
            let len = part.min(size - offset);
            // One part in memory: its SHA-256 goes in the request, as Object Lock requires.
            let mut buf = vec![0u8; len as usize];
            file.read_exact(&mut buf)
                .await
                .map_err(|e| StoreError::io(path, e))?;
            let want = base64::engine::general_purpose::STANDARD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(&buf));
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&want)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| self.err("UploadPart", key, e))?;
            self.check_echo("UploadPart", key, &want, out.checksum_sha256())?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .checksum_sha256(want)
                    .build(),
            );
            offset += len;
            number += 1;
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => Ok(()),
            // The store said 200 but its answer is not what the SDK parses (moto's server
            // names the XML root CompleteMultipartUploadResponse, not ...Result): the upload
            // is complete; the caller's HEAD checks the object before anything relies on it.
            Err(SdkError::ServiceError(se)) if se.raw().status().is_success() => Ok(()),
            Err(e) => Err(self.err("CompleteMultipartUpload", key, e)),
        }
    }

    /// Puts a small object. With `create_only` the write fails with a precondition error
    /// if the key exists. With `lock` the configured retention applies. Returns the ETag.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        create_only: bool,
        lock: bool,
    ) -> Result<Option<String>, StoreError> {
        let want = base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(bytes.len() as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&want)
            .body(ByteStream::from(bytes));
        if create_only {
            req = req.if_none_match("*");
        }
        if lock && let Some((mode, until)) = self.retain_until() {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.err("PutObject", key, e))?;
        self.check_echo("PutObject", key, &want, out.checksum_sha256())?;
        Ok(out.e_tag().map(str::to_owned))
    }

    /// A checksum the store reports back (not every store does) must be the one sent.
    fn check_echo(
        &self,
        op: &str,
        key: &str,
        sent: &str,
        echoed: Option<&str>,
    ) -> Result<(), StoreError> {
        match echoed {
            Some(got) if got != sent => Err(StoreError::S3 {
                op: op.into(),
                key: key.into(),
                detail: format!(
                    "the store reports checksum sha256 {got}, we sent {sent}: the object it holds is not the one written"
                ),
                kind: Kind::Other,
            }),
            _ => Ok(()),
        }
    }

    /// Replaces `key` only if its ETag is still `etag`.
    pub async fn replace_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        etag: &str,
    ) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.err("PutObject", key, e))?;
        Ok(out.e_tag().map(str::to_owned))
    }

    /// Reads a small object whole, refusing more than `max` bytes. `None` if absent.
    pub async fn get_bytes(
        &self,
        key: &str,
        max: usize,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        let r = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let Some(out) = self.found("GetObject", key, r)? else {
            return Ok(None);
        };
        let etag = out.e_tag().map(str::to_owned);
        if out.content_length().unwrap_or(0) as u64 > max as u64 {
            return Err(StoreError::S3 {
                op: "GetObject".into(),
                key: key.into(),
                detail: format!("object is larger than {max} bytes"),
                kind: Kind::Other,
            });
        }
        let mut buf = Vec::new();
        out.body
            .into_async_read()
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: format!("GetObject {key}: {e}"),
            })?;
        if buf.len() > max {
            return Err(StoreError::S3 {
                op: "GetObject".into(),
                key: key.into(),
                detail: format!("object is larger than {max} bytes"),
                kind: Kind::Other,
            });
        }
        Ok(Some((buf, etag)))
    }

    /// What `key` holds compared with the object of `size` bytes and SHA-256 `sha256`
    /// (hex): nothing, that object (its size matches and, when the store reports a
    /// whole-object SHA-256 checksum, so does that; a multipart object reports a checksum
    /// of its parts' checksums, which says nothing here), or another object.
    pub async fn holds(&self, key: &str, size: u64, sha256: &str) -> Result<Holds, StoreError> {
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await;
        let Some(head) = self.found("HeadObject", key, r)? else {
            return Ok(Holds::Nothing);
        };
        let len = head.content_length().unwrap_or(-1);
        if len != size as i64 {
            return Ok(Holds::Other(format!("{len} bytes, expected {size}")));
        }
        Ok(match head.checksum_sha256() {
            Some(c) if !c.contains('-') && hex_to_b64(sha256).as_deref() != Some(c) => {
                Holds::Other(format!("SHA-256 {c} (base64), expected {sha256} (hex)"))
            }
            _ => Holds::Same,
        })
    }

    /// The size of `key`, or `None` if there is no such object.
    pub async fn head_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        Ok(self
            .found("HeadObject", key, r)?
            .map(|o| o.content_length().unwrap_or(0).max(0) as u64))
    }

    /// Every key under `rel` (relative to the prefix), with `rel` stripped.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>, StoreError> {
        let full = self.key(rel);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .max_keys(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("ListObjectsV2", &full, e))?;
            for o in page.contents() {
                if let Some(k) = o.key().and_then(|k| k.strip_prefix(&full)) {
                    out.push(k.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// The IDs of every record with a manifest in the bucket.
    pub async fn ids(&self) -> Result<Vec<RecordId>, StoreError> {
        Ok(self
            .list("manifests/")
            .await?
            .iter()
            .filter_map(|k| k.strip_suffix(".json")?.parse().ok())
            .collect())
    }

    /// A record's manifest (not yet verified).
    pub async fn manifest(&self, id: &RecordId) -> Result<Manifest, StoreError> {
        let key = self.manifest_key(id);
        let Some((bytes, _)) = self
            .get_bytes(&key, crate::manifest::MAX_MANIFEST_BYTES)
            .await?
        else {
            return Err(StoreError::NotFound(id.clone()));
        };
        let m = Manifest::from_json(&bytes).map_err(|source| StoreError::Manifest {
            id: id.to_string(),
            source,
        })?;
        if m.id != *id {
            return Err(StoreError::Misfiled { key, holds: m.id });
        }
        Ok(m)
    }

    /// Publishes this node's public key so servers can verify its manifests and audit.
    pub async fn publish_key(&self, node: &str, key: &VerifyingKey) -> Result<(), StoreError> {
        let name = self.key(&format!(
            "{}.pem",
            keys::key_object_stem(node, &key.key_id())
        ));
        let pem = key.to_pem()?;
        match self.put_bytes(&name, pem.into_bytes(), true, false).await {
            Ok(_) => Ok(()),
            Err(StoreError::S3 {
                kind: Kind::Precondition,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key `node` signed with under `key_id`, trusted for that name: pinned to it in
    /// `[store] trusted_keys` when set, else valid for it in the bucket (its first key or
    /// one a signed rotation introduced, see [`keys`]). A key trusted for another name only
    /// is refused.
    pub async fn node_key(&self, node: &str, key_id: &str) -> Result<VerifyingKey, StoreError> {
        let cache_key = format!("{node}\n{key_id}");
        if let Ok(cache) = self.keys.lock()
            && let Some(k) = cache.get(&cache_key)
        {
            return Ok(k.clone());
        }
        let key = match &self.trusted {
            Some(dir) => keys::pinned_key(dir, node, key_id)?,
            None => self.bucket_key(node, key_id).await?,
        };
        if key.key_id() != key_id {
            return Err(StoreError::KeyIdMismatch {
                node: node.to_owned(),
                published: key.key_id(),
                wanted: key_id.to_owned(),
            });
        }
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(cache_key, key.clone());
        }
        Ok(key)
    }

    /// Verifies a manifest's signature with its node's key.
    pub async fn verify_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let bad = |source| StoreError::Manifest {
            id: m.id.to_string(),
            source,
        };
        let sig = m
            .signature
            .as_ref()
            .ok_or_else(|| bad(crate::manifest::ManifestError::Unsigned))?;
        let node = m.node.as_deref().unwrap_or("");
        let key = self.node_key(node, &sig.key_id).await?;
        key.verify(m).map_err(bad)
    }

    /// A reader over `count` bytes of a record's blob from `start`.
    pub async fn blob_reader(
        &self,
        id: &RecordId,
        start: u64,
        count: u64,
    ) -> Result<impl AsyncRead + Send + Unpin + use<>, StoreError> {
        let key = self.blob_key(id);
        let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
        if count > 0 {
            req = req.range(format!("bytes={start}-{}", start + count - 1));
        }
        let out = req
            .send()
            .await
            .map_err(|e| match self.err("GetObject", &key, e) {
                StoreError::S3 {
                    kind: Kind::NotFound,
                    ..
                } => StoreError::NotFound(id.clone()),
                e => e,
            })?;
        Ok(out.body.into_async_read().take(count))
    }

    /// The legal hold on a record, if any.
    pub async fn hold(&self, id: &RecordId) -> Result<Option<LegalHold>, StoreError> {
        let key = self.hold_key(id);
        match self.get_bytes(&key, 64 << 10).await? {
            None => Ok(None),
            Some((bytes, _)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Unreadable {
                        at: key,
                        expected: "a legal hold record",
                        source,
                    })
            }
        }
    }

    /// Places a legal hold: the hold record, then S3 Object Lock legal hold on the blob and
    /// manifest. Returns whether the store enforces it (Object Lock enabled on the bucket).
    pub async fn set_hold(&self, id: &RecordId, hold: &LegalHold) -> Result<bool, StoreError> {
        let key = self.hold_key(id);
        let bytes = serde_json::to_vec_pretty(hold).map_err(|source| StoreError::Encode {
            what: "a legal hold",
            source,
        })?;
        self.put_bytes(&key, bytes, false, false).await?;
        self.legal_hold(id, true).await
    }

    /// Releases a legal hold; returns whether there was one.
    pub async fn release_hold(&self, id: &RecordId) -> Result<bool, StoreError> {
        let existed = self.hold(id).await?.is_some();
        self.legal_hold(id, false).await?;
        let key = self.hold_key(id);
        self.delete_all_versions(id, &key).await?;
        Ok(existed)
    }

    async fn legal_hold(&self, id: &RecordId, on: bool) -> Result<bool, StoreError> {
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        for key in [self.blob_key(id), self.manifest_key(id)] {
            let r = self
                .client
                .put_object_legal_hold()
                .bucket(&self.bucket)
                .key(&key)
                .legal_hold(
                    ObjectLockLegalHold::builder()
                        .status(status.clone())
                        .build(),
                )
                .send()
                .await;
            if let Err(e) = r {
                match self.err("PutObjectLegalHold", &key, e) {
                    // Object Lock not enabled on this bucket: the hold record still binds
                    // ckvault, but the store itself does not enforce it.
                    // Refused: because the bucket has no Object Lock (then the hold record
                    // still binds ckvault, but the store does not enforce it), or for another
                    // reason, which is an error. The bucket's own configuration tells.
                    e @ StoreError::S3 {
                        kind: Kind::Other, ..
                    } => {
                        return if self.object_lock_enabled().await? == Some(false) {
                            Ok(false)
                        } else {
                            Err(e)
                        };
                    }
                    StoreError::S3 {
                        kind: Kind::NotFound,
                        ..
                    } => {
                        return Err(StoreError::NotFound(id.clone()));
                    }
                    e => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// Whether the bucket has Object Lock enabled: `Some(false)` when the store says it
    /// has no Object Lock configuration, `None` when it cannot tell.
    async fn object_lock_enabled(&self) -> Result<Option<bool>, StoreError> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled"),
            )),
            Err(e) => match self.err("GetObjectLockConfiguration", &self.bucket, e) {
                StoreError::S3 { kind, detail, .. }
                    if kind == Kind::NotFound
                        || detail.contains("ObjectLockConfigurationNotFound") =>
                {
                    Ok(Some(false))
                }
                StoreError::S3 { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// When the record's Object Lock retention ends, if it is still locked.
    pub async fn locked_until(&self, id: &RecordId) -> Result<Option<String>, StoreError> {
        let key = self.manifest_key(id);
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await;
        let out = self
            .found("HeadObject", &key, r)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(out
            .object_lock_retain_until_date()
            .filter(|d| d.secs() > now)
            .map(|d| {
                format!(
                    "{} retention until {}",
                    out.object_lock_mode().map_or("", |m| m.as_str()),
                    d.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                        .unwrap_or_default()
                )
            }))
    }

    /// Deletes a record: refused under a hold record or an unexpired Object Lock; the
    /// manifest goes first (the record leaves listings), then the blob. Every version is
    /// removed, so nothing is left behind a delete marker.
    pub async fn delete(&self, id: &RecordId) -> Result<(), StoreError> {
        if let Some(hold) = self.hold(id).await? {
            return Err(StoreError::Held {
                id: id.clone(),
                reason: hold.reason,
            });
        }
        if let Some(until) = self.locked_until(id).await? {
            return Err(StoreError::Locked {
                id: id.clone(),
                detail: until,
            });
        }
        self.delete_all_versions(id, &self.manifest_key(id)).await?;
        self.delete_all_versions(id, &self.blob_key(id)).await?;
        Ok(())
    }

    async fn delete_all_versions(&self, id: &RecordId, key: &str) -> Result<(), StoreError> {
        let listed = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await;
        let versions: Vec<Option<String>> = match listed {
            Ok(out) => out
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key))
                .map(|v| v.version_id().map(str::to_owned))
                .chain(
                    out.delete_markers()
                        .iter()
                        .filter(|v| v.key() == Some(key))
                        .map(|v| v.version_id().map(str::to_owned)),
                )
                .collect(),
            // Not versioned (or versions not listable): a plain delete.
            Err(_) => vec![None],
        };
        let versions = if versions.is_empty() {
            vec![None]
        } else {
            versions
        };
        for v in versions {
            let r = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .set_version_id(v)
                .send()
                .await;
            if let Err(e) = r {
                return Err(match self.err("DeleteObject", key, e) {
                    StoreError::S3 {
                        kind: Kind::Denied,
                        detail,
                        ..
                    } => StoreError::Locked {
                        id: id.clone(),
                        detail: format!("the store refused: {detail}"),
                    },
                    StoreError::S3 {
                        kind: Kind::NotFound,
                        ..
                    } => continue,
                    e => e,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_objects_and_node_names_are_path_safe() {
        assert_eq!(
            keys::key_object_stem("node-a", "SHA256:ab/c+d"),
            "keys/node-a/SHA256.ab_c-d"
        );
        assert!(valid_node_name("node-a.example_1"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\nb"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}
