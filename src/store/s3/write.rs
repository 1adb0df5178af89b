//! Writing objects to the bucket: one PUT or a streamed multipart upload for sealed blobs
//! (with the configured Object Lock retention, set again when a store drops it), small
//! create-only or compare-and-swap objects, the SHA-256 checksum every write carries and
//! the one the store echoes, and the clean-up of multipart uploads a killed run left open.

use std::path::Path;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
};
use base64::Engine as _;
use tokio::io::AsyncReadExt;

use super::S3Store;
use super::client::Kind;
use crate::config::LockMode;
use crate::store::StoreError;

/// Objects larger than this go up as multipart uploads, in parts of at least this size.
const PART_SIZE: u64 = 16 << 20;

/// Base64 of the bytes a hex string spells (what `x-amz-checksum-sha256` carries).
pub(super) fn hex_to_b64(hex_digest: &str) -> Option<String> {
    let raw = hex::decode(hex_digest).ok().filter(|r| r.len() == 32)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

impl S3Store {
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
}
