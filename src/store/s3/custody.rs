//! Custody in the bucket: legal holds (the hold record, mirrored as S3 Object Lock legal
//! hold on the blob and the manifest), the Object Lock retention a record is still under,
//! and deletion, refused under either, removing every version of each object.

use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus};

use super::S3Store;
use super::client::Kind;
use crate::manifest::RecordId;
use crate::store::{LegalHold, StoreError};

impl S3Store {
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
