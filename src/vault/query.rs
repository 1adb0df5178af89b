//! Which records a caller may see, and whether a caller may do an action to a record: the
//! one query and the one authorization every front-end (the API today, a catalog and a
//! console tomorrow) asks, so none of them can show or do what another refuses.

use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::manifest::{Manifest, RecordId};
use crate::policy::{Action, PolicySet, Principal};
use crate::store::{Store, StoreError};

/// The most records one page holds, whatever the caller asks.
pub(crate) const MAX_PAGE: usize = 100_000;
/// Records per page when the caller names no limit.
pub(crate) const DEFAULT_PAGE: usize = 10_000;

/// A query over the records a caller may list: every field narrows, none widens.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordQuery {
    /// Only records of this namespace.
    pub namespace: Option<String>,
    /// Only records of this pod.
    pub pod: Option<String>,
    /// Only records of this container.
    pub container: Option<String>,
    /// Only records sealed by this node.
    pub node: Option<String>,
    /// Only records sealed at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records sealed before this time.
    pub until: Option<OffsetDateTime>,
    /// Only records under a legal hold (`true`) or not (`false`).
    pub held: Option<bool>,
    /// Only records captured this way (the manifest's `source.kind`, as written).
    pub source: Option<String>,
    /// Only records captured for this cause (the manifest's `trigger.kind`, as written);
    /// a record without a trigger never matches.
    pub trigger: Option<String>,
    /// Only records older than this one (the `next` of the page before): pages run from
    /// the newest record to the oldest.
    pub cursor: Option<RecordId>,
    /// At most this many records (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
}

/// One page of records, newest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    /// The records.
    pub records: Vec<Arc<Manifest>>,
    /// The cursor of the next page, when there may be more.
    pub next: Option<RecordId>,
}

/// Why a caller may not do an action to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The caller may see the record's namespace, but not do this there.
    Forbidden,
    /// The caller may not see the namespace: the record is answered as unknown, so whether
    /// it exists is not told.
    Hidden,
}

/// Whether `who` may do `action` to `record` under `policy`.
pub(crate) fn authorize(
    policy: &PolicySet,
    who: &Principal,
    action: Action,
    record: &Manifest,
) -> Result<(), Refusal> {
    let namespace = record.namespace.as_deref();
    if policy.allows(who, action, namespace) {
        Ok(())
    } else if policy.access.sees(who, namespace) {
        Err(Refusal::Forbidden)
    } else {
        Err(Refusal::Hidden)
    }
}

/// Whether `who` may list records in some namespace at all.
pub(crate) fn may_list(policy: &PolicySet, who: &Principal) -> bool {
    policy.access.grants_any(who, Action::List)
}

fn sealed_at(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&m.sealed_at, &Rfc3339).ok()
}

impl RecordQuery {
    /// Whether `m` matches the query's fields (not the hold, which needs the store).
    pub(crate) fn matches(&self, m: &Manifest) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        eq(&self.namespace, &m.namespace)
            && eq(&self.pod, &m.pod)
            && eq(&self.container, &m.container)
            && eq(&self.node, &m.node)
            && self
                .source
                .as_deref()
                .is_none_or(|s| m.source.kind.to_string() == s)
            && self
                .trigger
                .as_deref()
                .is_none_or(|want| m.trigger.as_ref().is_some_and(|t| t.kind.as_str() == want))
            && self
                .since
                .is_none_or(|t| sealed_at(m).is_some_and(|s| s >= t))
            && self
                .until
                .is_none_or(|t| sealed_at(m).is_some_and(|s| s < t))
            && self.cursor.as_ref().is_none_or(|c| m.id < *c)
    }

    /// The page size this query asks for, within bounds.
    pub(crate) fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE)
    }
}

/// The records of `store` that `who` may list under `policy` and that match `query`,
/// newest first, one page.
pub(crate) async fn visible(
    store: &Store,
    policy: &PolicySet,
    who: &Principal,
    query: &RecordQuery,
) -> Result<Page, StoreError> {
    let limit = query.page_size();
    let mut page = Page::default();
    // The store lists oldest first (record IDs sort by time).
    for m in store.list().await?.into_iter().rev() {
        if !policy.allows(who, Action::List, m.namespace.as_deref()) || !query.matches(&m) {
            continue;
        }
        if let Some(want) = query.held
            && store.is_held(&m.id).await? != want
        {
            continue;
        }
        if page.records.len() == limit {
            page.next = page.records.last().map(|m| m.id.clone());
            break;
        }
        page.records.push(m);
    }
    Ok(page)
}
