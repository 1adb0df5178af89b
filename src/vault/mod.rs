//! The use-case layer: [`intake`] takes archives in (seal, then upload or retention) for
//! every capturing front-end; [`analyse`] reads a sealed record for a responder (memory
//! search) without plaintext on disk; [`Custody`] is what is done to a kept record: place and
//! release a legal hold, delete, with every kind of hold considered (a per-record hold, a `holds.toml` selector
//! hold, S3 Object Lock), each action recorded in the audit log *before* it is performed
//! (fail closed) and each refusal recorded too. The CLI (`ckvault hold|release|delete`) and
//! the HTTP API call these, so what one front-end does, all do.
//!
//! It knows nothing of HTTP or of the command line: the caller says who acts (an
//! [`Actor`]: name, groups and remote address) and gets a typed [`CustodyError`] to
//! translate.

pub(crate) mod analyse;
pub(crate) mod download;
pub(crate) mod intake;
pub(crate) mod query;
pub(crate) mod verified;

use std::sync::Arc;

use crate::audit::{Action, Actor, AuditError, AuditLog, EventInput, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::policy::PolicySet;
use crate::policy::selector::Target;
use crate::store::{LegalHold, Store, StoreError};

/// Why a custody action was not done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CustodyError {
    /// A hold of some kind protects the record.
    #[error("record {id} is under legal hold ({reason}); {what}")]
    Held {
        /// The record.
        id: RecordId,
        /// The hold's reason (and its name for a selector hold).
        reason: String,
        /// What to do about it.
        what: &'static str,
    },
    /// The object store's Object Lock protects the record.
    #[error("record {id} is protected by S3 Object Lock ({until}); it cannot be deleted yet")]
    Locked {
        /// The record.
        id: RecordId,
        /// Mode and date.
        until: String,
    },
    /// Releasing a hold that is not there.
    #[error("record {0} is not under a per-record hold")]
    NotHeld(RecordId),
    /// A hold or release without a reason.
    #[error("a legal hold and its release need a reason (a case number, a ticket)")]
    NoReason,
    /// The audit log could not record the action, so it was not done.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The store failed (or the record does not exist).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A store, its one audit log and the policies that bear on custody.
#[derive(Clone)]
pub(crate) struct Custody {
    store: Store,
    audit: Arc<AuditLog>,
}

impl Custody {
    /// Custody of `store`, recorded in `audit`.
    pub(crate) fn new(store: Store, audit: Arc<AuditLog>) -> Self {
        Self { store, audit }
    }

    /// The hold that protects `m`, of any kind but Object Lock: its per-record hold, else
    /// a `holds.toml` selector hold of `policies`.
    pub(crate) async fn hold_on(
        &self,
        m: &Manifest,
        policies: Option<&PolicySet>,
    ) -> Result<Option<LegalHold>, StoreError> {
        if let Some(h) = self.store.hold(&m.id).await? {
            return Ok(Some(h));
        }
        Ok(policies
            .and_then(|p| {
                p.holds.holding(Target {
                    namespace: m.namespace.as_deref(),
                    pod: m.pod.as_deref(),
                    container: m.container.as_deref(),
                })
            })
            .map(|h| LegalHold {
                reason: format!("{}: {}", h.name, h.reason),
                by: "policy".into(),
                at: String::new(),
            }))
    }

    async fn record(&self, event: EventInput) -> Result<(), AuditError> {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || audit.append(event))
            .await
            .map_err(|e| AuditError::Unwritable {
                path: audit_task_path(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map(|_| ())
    }

    /// Whether the store holds the record `id` now (a bucket: after the uploader shipped it).
    pub(crate) async fn stored(&self, id: &crate::manifest::RecordId) -> bool {
        self.store.manifest(id).await.is_ok()
    }

    /// Places (or replaces) a per-record legal hold on `m` (an Object Lock legal hold too,
    /// in a bucket with Object Lock), recorded first.
    pub(crate) async fn hold(
        &self,
        who: &Actor,
        m: &Manifest,
        reason: &str,
    ) -> Result<LegalHold, CustodyError> {
        if reason.trim().is_empty() {
            return Err(CustodyError::NoReason);
        }
        let ev = EventInput::new(who, Action::Hold, Outcome::Ok)
            .about(m)
            .with_purpose(reason);
        self.record(ev).await?;
        let hold = LegalHold {
            reason: reason.to_owned(),
            by: who.name.clone(),
            at: crate::node::now_rfc3339(),
        };
        self.store.set_hold(&m.id, &hold).await?;
        Ok(hold)
    }

    /// Releases the per-record hold on `m` (selector holds are released by editing
    /// `holds.toml`), recorded first; a record without one is refused and recorded.
    pub(crate) async fn release(
        &self,
        who: &Actor,
        m: &Manifest,
        reason: &str,
    ) -> Result<(), CustodyError> {
        if reason.trim().is_empty() {
            return Err(CustodyError::NoReason);
        }
        if self.store.hold(&m.id).await?.is_none() {
            let ev = EventInput::new(who, Action::Release, Outcome::Denied)
                .about(m)
                .with_purpose(reason)
                .with_detail("no per-record hold");
            self.record(ev).await?;
            return Err(CustodyError::NotHeld(m.id.clone()));
        }
        let ev = EventInput::new(who, Action::Release, Outcome::Ok)
            .about(m)
            .with_purpose(reason);
        self.record(ev).await?;
        self.store.release_hold(&m.id).await?;
        Ok(())
    }

    /// Deletes `m`'s record unless a hold of any kind protects it (per-record, a selector
    /// of `policies`, S3 Object Lock); the refusal or the deletion is recorded first.
    pub(crate) async fn delete(
        &self,
        who: &Actor,
        m: &Manifest,
        policies: Option<&PolicySet>,
        reason: Option<&str>,
    ) -> Result<(), CustodyError> {
        let refusal = match self.hold_on(m, policies).await? {
            Some(h) => Some(CustodyError::Held {
                id: m.id.clone(),
                reason: h.reason,
                what: "release it first",
            }),
            None => match &self.store {
                Store::Bucket(b) => {
                    b.s3.locked_until(&m.id)
                        .await?
                        .map(|until| CustodyError::Locked {
                            id: m.id.clone(),
                            until,
                        })
                }
                Store::Local(_) => None,
            },
        };
        if let Some(refusal) = refusal {
            let mut ev = EventInput::new(who, Action::Delete, Outcome::Denied)
                .about(m)
                .with_detail(refusal.to_string());
            ev.purpose = reason.map(str::to_owned);
            self.record(ev).await?;
            return Err(refusal);
        }
        let mut ev = EventInput::new(who, Action::Delete, Outcome::Ok).about(m);
        ev.purpose = reason.map(str::to_owned);
        self.record(ev).await?;
        let Err(e) = self.store.delete(&m.id).await else {
            return Ok(());
        };
        // The store refused after all (a hold placed meanwhile, a lock): say so, so the log
        // never claims a deletion that did not happen.
        let ev = EventInput::new(who, Action::Delete, Outcome::Error)
            .about(m)
            .with_detail(format!("not deleted: {e}"));
        self.record(ev).await?;
        Err(match e {
            StoreError::Locked { id, detail } => CustodyError::Locked { id, until: detail },
            StoreError::Held { id, reason } => CustodyError::Held {
                id,
                reason,
                what: "release it first",
            },
            e => e.into(),
        })
    }
}

fn audit_task_path() -> String {
    "(audit task)".into()
}
