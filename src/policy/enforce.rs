//! Applying retention to a store: gather the records (with per-record and selector holds),
//! plan, then delete oldest first, each deletion audited with the rule that caused it
//! before it happens (an audit failure stops the run: fail closed). A deletion hides the
//! manifest first, so a crash mid-run leaves no dangling manifest and no orphan blob that
//! the next start would not clean.

use std::collections::HashSet;

use super::PolicySet;
use super::retention::{Deletion, RecordInfo};
use super::selector::Target;
use crate::audit::{Action, Actor, AuditLog, EventInput, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::store::{LocalStore, Store, StoreError};

/// Unix seconds of a manifest's seal time (falls back to the ID's timestamp).
pub(crate) fn sealed_at_unix(m: &Manifest) -> i64 {
    time::OffsetDateTime::parse(&m.sealed_at, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or_else(|_| (m.id.timestamp_ms() / 1000) as i64)
}

/// One record as retention sees it; `held` is its per-record hold.
pub(crate) fn info(m: &Manifest, held: bool, set: &PolicySet) -> RecordInfo {
    let held = held
        || set
            .holds
            .holding(Target {
                namespace: m.namespace.as_deref(),
                pod: m.pod.as_deref(),
                container: m.container.as_deref(),
            })
            .is_some();
    RecordInfo {
        id: m.id.to_string(),
        sealed_at: sealed_at_unix(m),
        size: m.sealed.size,
        held,
        namespace: m.namespace.clone(),
        pod: m.pod.clone(),
        container: m.container.clone(),
    }
}

/// The store's records as retention sees them.
pub(crate) fn records(store: &LocalStore, set: &PolicySet) -> Result<Vec<RecordInfo>, StoreError> {
    let (manifests, _broken) = store.list()?;
    let mut out = Vec::with_capacity(manifests.len());
    for m in manifests {
        out.push(info(&m, store.hold(&m.id)?.is_some(), set));
    }
    Ok(out)
}

fn deletion_event(actor: &str, d: &Deletion, namespace: Option<String>) -> EventInput {
    EventInput {
        bytes: Some(d.size),
        ..EventInput::new(&Actor::named(actor), Action::RetentionDelete, Outcome::Ok)
            .with_record(d.id.clone())
            .with_namespace(namespace)
            .with_detail(format!(
                "rule {} ({}), age {}s",
                d.rule, d.reason, d.age_secs
            ))
    }
}

/// [`apply`] for any [`Store`] (the server: local or bucket). Records protected by S3
/// Object Lock are skipped, not errors: the store is right to refuse.
pub(crate) async fn apply_store(
    store: &Store,
    audit: &AuditLog,
    set: &PolicySet,
    now: i64,
    live_pods: Option<&HashSet<(String, String)>>,
    actor: &str,
) -> Result<Vec<Deletion>, StoreError> {
    let planned = plan_store(store, set, now, live_pods).await?;
    let mut done = Vec::new();
    for d in planned {
        let Ok(id) = d.id.parse::<RecordId>() else {
            continue;
        };
        if store.hold(&id).await?.is_some() {
            continue;
        }
        let namespace = store.manifest(&id).await.ok().and_then(|m| m.namespace);
        audit
            .append(deletion_event(actor, &d, namespace))
            .map_err(|e| StoreError::Audit(Box::new(e)))?;
        match store.delete(&id).await {
            Ok(()) | Err(StoreError::NotFound(_)) => done.push(d),
            Err(StoreError::Held { .. } | StoreError::Locked { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What retention would delete now from any [`Store`] (local or bucket).
pub(crate) async fn plan_store(
    store: &Store,
    set: &PolicySet,
    now: i64,
    live_pods: Option<&HashSet<(String, String)>>,
) -> Result<Vec<Deletion>, StoreError> {
    let manifests = store.list().await?;
    let mut infos = Vec::with_capacity(manifests.len());
    for m in &manifests {
        infos.push(info(m, store.is_held(&m.id).await?, set));
    }
    Ok(set.retention.plan(&infos, now, live_pods))
}

/// What retention would delete now (a local store, synchronously: capture applies
/// retention after each seal on its own thread).
pub(crate) fn plan(
    store: &LocalStore,
    set: &PolicySet,
    now: i64,
    live_pods: Option<&HashSet<(String, String)>>,
) -> Result<Vec<Deletion>, StoreError> {
    Ok(set.retention.plan(&records(store, set)?, now, live_pods))
}

/// Deletes what [`plan`] plans, oldest first; returns what was deleted. `actor` names who
/// ran it in the audit log.
pub(crate) fn apply(
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
            .append(deletion_event(actor, &d, namespace))
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
pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
