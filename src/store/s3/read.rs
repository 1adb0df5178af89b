//! Reading from the bucket: small objects whole and bounded, what a key already holds
//! (before an upload writes it), sizes, listings under the prefix, the record IDs and
//! their (unverified) manifests, and ranged readers over sealed blobs.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::S3Store;
use super::client::Kind;
use super::write::hex_to_b64;
use crate::manifest::{Manifest, RecordId};
use crate::store::StoreError;

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

impl S3Store {
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
}
