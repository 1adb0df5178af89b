//! The retention lease: one object, `locks/retention.json`, written with S3 conditional
//! writes (`If-None-Match: *` to take a free lease, `If-Match: ETAG` to renew or to take
//! an expired one), so at most one server replica applies retention at a time.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::S3Store;
use super::client::Kind;
use crate::store::StoreError;

#[derive(Debug, Serialize, Deserialize)]
struct Held {
    holder: String,
    expires: i64,
}

/// A lease this process may hold.
pub struct Lease {
    store: S3Store,
    key: String,
    holder: String,
    ttl: Duration,
    etag: Mutex<Option<String>>,
}

impl Lease {
    /// The retention lease, held as `holder` for `ttl` after each renewal.
    pub fn retention(store: S3Store, holder: String, ttl: Duration) -> Self {
        let key = store.key("locks/retention.json");
        Self {
            store,
            key,
            holder,
            ttl,
            etag: Mutex::new(None),
        }
    }

    fn body(&self) -> Vec<u8> {
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + self.ttl.as_secs() as i64;
        serde_json::to_vec(&Held {
            holder: self.holder.clone(),
            expires,
        })
        .unwrap_or_default()
    }

    fn set_etag(&self, etag: Option<String>) {
        if let Ok(mut e) = self.etag.lock() {
            *e = etag;
        }
    }

    /// Takes or renews the lease; `Ok(true)` while this process holds it.
    pub async fn acquire(&self) -> Result<bool, StoreError> {
        let mine = self.etag.lock().ok().and_then(|e| e.clone());
        if let Some(etag) = mine {
            match self
                .store
                .replace_bytes(&self.key, self.body(), &etag)
                .await
            {
                Ok(new) => {
                    self.set_etag(new);
                    return Ok(true);
                }
                Err(StoreError::S3 {
                    kind: Kind::Precondition | Kind::NotFound,
                    ..
                }) => {
                    self.set_etag(None);
                }
                Err(e) => return Err(e),
            }
        }
        let current = self.store.get_bytes(&self.key, 4096).await?;
        let result = match current {
            None => {
                self.store
                    .put_bytes(&self.key, self.body(), true, false)
                    .await
            }
            Some((bytes, etag)) => {
                let held: Option<Held> = serde_json::from_slice(&bytes).ok();
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let free = held
                    .as_ref()
                    .is_none_or(|h| h.holder == self.holder || h.expires < now);
                match (free, etag) {
                    (true, Some(etag)) => {
                        self.store
                            .replace_bytes(&self.key, self.body(), &etag)
                            .await
                    }
                    _ => return Ok(false),
                }
            }
        };
        match result {
            Ok(etag) => {
                self.set_etag(etag);
                Ok(true)
            }
            Err(StoreError::S3 {
                kind: Kind::Precondition,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
