//! A server's in-memory index of the bucket: every verified manifest by record ID, and
//! which records carry a hold. It is rebuilt from the manifests themselves (a key listing,
//! then a GET of each manifest it does not know yet), so it never disagrees with the bucket
//! for longer than one refresh, and a fresh replica needs nothing but the bucket. Listing
//! through the API reads memory only.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;

use super::S3Store;
use crate::manifest::{Manifest, RecordId};
use crate::store::StoreError;

/// Manifests fetched at once during a refresh.
const FETCH_CONCURRENCY: usize = 32;

/// What a refresh found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Records in the index afterwards.
    pub records: usize,
    /// Manifests fetched and verified this time.
    pub added: usize,
    /// Records gone from the bucket since the last refresh.
    pub removed: usize,
    /// Manifests that failed to fetch, parse or verify (left out, retried next time).
    pub broken: usize,
}

#[derive(Default)]
struct State {
    records: BTreeMap<RecordId, Arc<Manifest>>,
    held: HashSet<RecordId>,
    broken: usize,
    error: Option<Arc<StoreError>>,
    refreshed_once: bool,
}

/// The index.
pub struct Index {
    store: S3Store,
    state: RwLock<State>,
}

impl Index {
    /// An empty index over `store`; call [`Index::refresh`] to fill it.
    pub fn new(store: S3Store) -> Self {
        Self {
            store,
            state: RwLock::default(),
        }
    }

    /// Brings the index up to date with the bucket.
    pub async fn refresh(&self) -> Result<Refreshed, StoreError> {
        let result = self.refresh_inner().await.map_err(Arc::new);
        if let Ok(mut st) = self.state.write() {
            st.error = result.as_ref().err().map(Arc::clone);
        }
        result.map_err(StoreError::Refresh)
    }

    async fn refresh_inner(&self) -> Result<Refreshed, StoreError> {
        let ids: HashSet<RecordId> = self.store.ids().await?.into_iter().collect();
        let held: HashSet<RecordId> = self
            .store
            .list("holds/")
            .await?
            .iter()
            .filter_map(|k| k.strip_suffix(".json")?.parse().ok())
            .collect();
        let (missing, removed) = {
            let st = self.read();
            let missing: Vec<RecordId> = ids
                .iter()
                .filter(|id| !st.records.contains_key(*id))
                .cloned()
                .collect();
            let removed: Vec<RecordId> = st
                .records
                .keys()
                .filter(|id| !ids.contains(*id))
                .cloned()
                .collect();
            (missing, removed)
        };
        let store = &self.store;
        let fetched: Vec<Result<Manifest, StoreError>> =
            futures_util::stream::iter(missing.into_iter().map(|id| async move {
                let m = store.manifest(&id).await?;
                store.verify_manifest(&m).await?;
                Ok(m)
            }))
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut out = Refreshed {
            removed: removed.len(),
            ..Refreshed::default()
        };
        let mut first_unreachable = None;
        let mut st = self.write();
        for id in &removed {
            st.records.remove(id);
        }
        for r in fetched {
            match r {
                Ok(m) => {
                    out.added += 1;
                    st.records.insert(m.id.clone(), Arc::new(m));
                }
                // A manifest deleted between listing and fetching is simply gone.
                Err(StoreError::NotFound(_)) => {}
                Err(e @ StoreError::Unreachable { .. }) => {
                    first_unreachable.get_or_insert(e);
                }
                Err(e) => {
                    out.broken += 1;
                    tracing::warn!(error = %e, "index: a manifest is left out");
                }
            }
        }
        st.held = held;
        st.broken = out.broken;
        st.refreshed_once = true;
        out.records = st.records.len();
        drop(st);
        match first_unreachable {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every indexed record, oldest first.
    pub fn list(&self) -> Vec<Arc<Manifest>> {
        self.read().records.values().cloned().collect()
    }

    /// Number of indexed records.
    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One indexed record.
    pub fn get(&self, id: &RecordId) -> Option<Arc<Manifest>> {
        self.read().records.get(id).cloned()
    }

    /// Records a manifest this replica verified.
    pub fn insert(&self, m: Manifest) {
        self.write().records.insert(m.id.clone(), Arc::new(m));
    }

    /// Forgets a record this replica deleted.
    pub fn remove(&self, id: &RecordId) {
        let mut st = self.write();
        st.records.remove(id);
        st.held.remove(id);
    }

    /// Notes a hold placed or released by this replica.
    pub fn set_held(&self, id: &RecordId, held: bool) {
        let mut st = self.write();
        if held {
            st.held.insert(id.clone());
        } else {
            st.held.remove(id);
        }
    }

    /// Whether the bucket held a hold record for `id` at the last refresh.
    pub fn is_held(&self, id: &RecordId) -> bool {
        self.read().held.contains(id)
    }

    /// The last refresh's error, if it failed; `Some` also before the first refresh.
    pub fn health(&self) -> Result<(), StoreError> {
        let st = self.read();
        match (&st.error, st.refreshed_once) {
            (Some(e), _) => Err(StoreError::Refresh(Arc::clone(e))),
            (None, false) => Err(StoreError::IndexNotBuilt),
            (None, true) => Ok(()),
        }
    }
}
