//! Applying retention to a store: gather the records (with per-record and selector holds),
//! plan, then delete oldest first, each deletion audited with the rule that caused it
//! before it happens (an audit failure stops the run: fail closed). A deletion hides the
//! manifest first, so a crash mid-run leaves no dangling manifest and no orphan blob that
//! the next start would not clean.

use std::collections::HashSet;

use super::PolicySet;
use super::retention::{Deletion, RecordInfo};
use super::selector::Target;
use crate::audit::EventInput;
use crate::manifest::{Manifest, RecordId};
use crate::store::{LocalStore, StoreError};

/// Unix seconds of a manifest's seal time (falls back to the ID's timestamp).
pub fn sealed_at_unix(m: &Manifest) -> i64 {
    time::OffsetDateTime::parse(&m.sealed_at, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or_else(|_| (m.id.timestamp_ms() / 1000) as i64)
}

/// The store's records as retention sees them.
pub fn records(store: &LocalStore, set: &PolicySet) -> Result<Vec<RecordInfo>, StoreError> {
    let (manifests, _broken) = store.list()?;
    let mut out = Vec::with_capacity(manifests.len());
    for m in manifests {
        let held = store.hold(&m.id)?.is_some()
            || set
                .holds
                .holding(Target {
                    namespace: m.namespace.as_deref(),
                    pod: m.pod.as_deref(),
                    container: m.container.as_deref(),
                })
                .is_some();
        out.push(RecordInfo {
            id: m.id.to_string(),
            sealed_at: sealed_at_unix(&m),
            size: m.sealed.size,
            held,
            namespace: m.namespace,
            pod: m.pod,
            container: m.container,
        });
    }
    Ok(out)
}

/// What retention would delete now.
pub fn plan(
    store: &LocalStore,
    set: &PolicySet,
    now: i64,
    live_pods: Option<&HashSet<(String, String)>>,
) -> Result<Vec<Deletion>, StoreError> {
    Ok(set.retention.plan(&records(store, set)?, now, live_pods))
}

/// Deletes what [`plan`] plans, oldest first; returns what was deleted. `actor` names who
/// ran it in the audit log.
pub fn apply(
    store: &LocalStore,
    set: &PolicySet,
    now: i64,
    live_pods: Option<&HashSet<(String, String)>>,
    actor: &str,
) -> Result<Vec<Deletion>, StoreError> {
    let planned = plan(store, set, now, live_pods)?;
    let audit = store.audit_log()?;
    let mut done = Vec::new();
    for d in planned {
        let Ok(id) = d.id.parse::<RecordId>() else {
            continue;
        };
        // Re-check: a hold placed since planning wins.
        if store.hold(&id)?.is_some() {
            continue;
        }
        let namespace = store.manifest(&id).ok().and_then(|m| m.namespace);
        audit
            .append(EventInput {
                actor: actor.to_owned(),
                action: "retention-delete".into(),
                outcome: "ok".into(),
                record: Some(d.id.clone()),
                namespace,
                bytes: Some(d.size),
                detail: Some(format!(
                    "rule {} ({}), age {}s",
                    d.rule, d.reason, d.age_secs
                )),
                ..Default::default()
            })
            .map_err(|e| StoreError::Audit(Box::new(e)))?;
        match store.delete(&id) {
            Ok(()) | Err(StoreError::NotFound(_)) => done.push(d),
            Err(StoreError::Held { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
