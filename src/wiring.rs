//! One place builds a node's running parts from its configuration: the store (a local
//! directory, or a bucket with this node's spool) with its audit log and staging, the
//! uploader of a spool, the policies, who records are sealed to, and the intake every
//! capturing front-end seals through (with what follows a seal: upload or retention).
//!
//! `serve`, `proxy`, `watch`, `seal`, `upload`, `retention`, `audit` and the record
//! commands all get their parts from [`Node::build`], so a new front-end (an alert
//! receiver, a console) is not another copy of the wiring, and every front-end opens a
//! store the same way: with the audit log the configuration (or the store itself, see
//! [`LocalStore::record_audit_path`]) names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, StoreKind};
use crate::manifest::Source;
use crate::policy::recipients::RecipientsPolicy;
use crate::policy::{PolicyError, PolicySet};
use crate::seal::{Recipient, RecipientError, SealError, SealOptions};
use crate::store::backend::Bucket;
use crate::store::s3::upload::Uploader;
use crate::store::{LocalStore, Store, StoreError};
use crate::vault::intake::{After, Intake};

/// Whether [`Node::build`] may create the store (or spool) it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// Open an existing local store only (the record commands: a typo must not make a
    /// store). A bucket's spool is made when missing all the same.
    Existing,
    /// Create it, with a new signing key, when it does not exist (capture and serving).
    OrCreate,
}

/// Why a node's parts could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The store, the spool or the bucket.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy directory does not load.
    #[error("invalid policy in {}:\n{}", dir.display(), list(errors))]
    Policy {
        /// The directory.
        dir: PathBuf,
        /// Every problem found in it.
        errors: Vec<PolicyError>,
    },
    /// A recipient (configured, given, or in a recipients file) does not parse.
    #[error(transparent)]
    Recipient(#[from] RecipientError),
    /// Nobody could open what would be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A store directory was given with a bucket configuration.
    #[error("--store does not apply with [store] kind = \"s3\" (the spool is [store] spool)")]
    StoreWithBucket,
}

fn list(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads the policy directory `dir`.
pub(crate) fn load_policies(dir: &Path) -> Result<PolicySet, BuildError> {
    PolicySet::load_dir(dir).map_err(|errors| BuildError::Policy {
        dir: dir.to_owned(),
        errors,
    })
}

/// Who records are sealed to, and the policies that apply after sealing.
#[derive(Clone, Default)]
pub(crate) struct SealSetup {
    /// Fixed recipients (config `[seal] recipients`, `-r`, `--recipients-file`).
    pub recipients: Vec<Recipient>,
    /// The policy directory's policies, if one is configured.
    pub policies: Option<Arc<PolicySet>>,
    /// recipients.toml, which decides instead of `recipients` when present.
    pub recipient_policy: Option<Arc<RecipientsPolicy>>,
}

impl SealSetup {
    /// Gathers recipients (`configured`, then `given`, then the lines of `files`) and the
    /// policies of `policy_dir`.
    pub(crate) fn gather(
        configured: &[String],
        given: &[String],
        files: &[PathBuf],
        policy_dir: Option<&Path>,
    ) -> Result<Self, BuildError> {
        let mut recipients = Vec::new();
        for r in configured.iter().chain(given) {
            recipients.push(r.parse::<Recipient>()?);
        }
        for f in files {
            recipients.extend(Recipient::read_file(f)?);
        }
        let policies = match policy_dir {
            Some(dir) => Some(Arc::new(load_policies(dir)?)),
            None => None,
        };
        let recipient_policy = policies
            .as_ref()
            .and_then(|p| p.recipients.clone())
            .map(Arc::new);
        Ok(Self {
            recipients,
            policies,
            recipient_policy,
        })
    }

    /// Refuses a setup under which nobody could open what is sealed.
    pub(crate) fn require_recipients(self) -> Result<Self, BuildError> {
        if self.recipients.is_empty() && self.recipient_policy.is_none() {
            return Err(SealError::NoRecipients.into());
        }
        Ok(self)
    }
}

/// A node's parts, built from its configuration.
pub(crate) struct Node {
    config: Config,
    /// The local store, or the spool with a bucket: where this node seals, with its audit
    /// log and staging.
    local: LocalStore,
    bucket: Option<Arc<Bucket>>,
    uploader: Option<Uploader>,
}

impl Node {
    /// Opens (or, with [`Open::OrCreate`], creates) the store `config` names. A bucket is
    /// not contacted here (see [`Node::check_bucket`]).
    pub(crate) fn build(config: Config, open: Open) -> Result<Self, BuildError> {
        let dir = config.store.local_dir();
        // A spool is this process's own state: made when missing, whatever the command.
        let local = match (open, config.store.kind) {
            (Open::Existing, StoreKind::Local) => LocalStore::open(dir)?,
            _ => LocalStore::open_or_init(dir)?,
        }
        .with_audit_path(config.audit.path.clone())
        .with_staging(config.cri.staging.clone());
        // The store remembers where its log is, so `--store DIR` finds it too.
        if config.audit.path.is_some() {
            local.record_audit_path()?;
        }
        let (bucket, uploader) = match config.store.kind {
            StoreKind::Local => (None, None),
            StoreKind::S3 => {
                let s3 = crate::store::s3::S3Store::new(&config.store)?
                    .with_key_memory(local.known_keys_dir());
                let bucket = Bucket {
                    index: crate::store::s3::index::Index::new(s3.clone()),
                    s3,
                    spool: local.clone(),
                };
                let uploader = match open {
                    Open::OrCreate => Some(Uploader::new(&config, local.clone())?),
                    Open::Existing => None,
                };
                (Some(Arc::new(bucket)), uploader)
            }
        };
        Ok(Self {
            config,
            local,
            bucket,
            uploader,
        })
    }

    /// This node's name (`[node] name`, else the host name).
    pub(crate) fn name(&self) -> String {
        crate::node::node_name(&self.config)
    }

    /// The local store, or the spool with a bucket.
    pub(crate) fn local(&self) -> &LocalStore {
        &self.local
    }

    /// The store records are read from: the local store, or the bucket.
    pub(crate) fn store(&self) -> Store {
        match &self.bucket {
            Some(b) => Store::Bucket(b.clone()),
            None => Store::Local(self.local.clone()),
        }
    }

    /// With a bucket: the bucket, its index and this node's spool.
    pub(crate) fn bucket(&self) -> Option<&Arc<Bucket>> {
        self.bucket.as_ref()
    }

    /// With a bucket (and [`Open::OrCreate`]): the uploader of the spool.
    pub(crate) fn uploader(&self) -> Option<&Uploader> {
        self.uploader.as_ref()
    }

    /// Checks that the bucket answers (no-op for a local store).
    pub(crate) async fn check_bucket(&self) -> Result<(), StoreError> {
        match &self.bucket {
            Some(b) => b.s3.check().await,
            None => Ok(()),
        }
    }

    /// The policies of `[policy] dir`, if one is configured.
    pub(crate) fn policies(&self) -> Result<Option<PolicySet>, BuildError> {
        self.config
            .policy
            .dir
            .as_deref()
            .map(load_policies)
            .transpose()
    }

    /// Seal options for records this node seals from `source`: `setup`'s recipients, this
    /// node's name, and with a spool its byte limit.
    pub(crate) fn seal_options(&self, setup: &SealSetup, source: Source) -> SealOptions {
        let mut opts = SealOptions::new(setup.recipients.clone(), source);
        opts.recipient_policy = setup.recipient_policy.clone();
        opts.node = Some(self.name());
        opts.spool_max = self.spool_max();
        opts
    }

    /// With a bucket: the most bytes the spool may hold (`[store] spool_max`).
    pub(crate) fn spool_max(&self) -> Option<u64> {
        (self.config.store.kind == StoreKind::S3).then(|| self.config.store.spool_max.bytes())
    }

    /// What follows a seal: with a bucket the uploader takes the record (woken, when this
    /// process runs one); into a local store `policies`' retention applies.
    pub(crate) fn after_seal(&self, policies: Option<Arc<PolicySet>>) -> After {
        match (&self.bucket, &self.uploader) {
            (Some(_), Some(u)) => After::Upload(Some(u.waker())),
            (Some(_), None) => After::Upload(None),
            (None, _) => After::Retention(policies),
        }
    }

    /// The intake a capturing front-end seals through: [`Self::seal_options`] and
    /// [`Self::after_seal`] over the local store or spool.
    pub(crate) fn intake(&self, setup: &SealSetup, source: Source) -> Intake {
        Intake::new(
            self.local.clone(),
            self.seal_options(setup, source),
            self.after_seal(setup.policies.clone()),
        )
    }
}

/// Seals what an earlier run left in `intake`'s staging (recovered, never dropped), and
/// logs what it did.
pub(crate) fn recover_staging(
    intake: &Intake,
) -> Result<crate::capture::staging::Recovered, StoreError> {
    let recovered = crate::capture::staging::recover(intake)?;
    for m in &recovered.sealed {
        tracing::info!(record = %m.id, "recovered a capture from staging");
    }
    if recovered.abandoned > 0 {
        tracing::warn!(
            captures = recovered.abandoned,
            "capture(s) in staging had left nothing to seal (audited as capture-abandoned)"
        );
    }
    for (p, e) in &recovered.failed {
        tracing::error!(path = %p.display(), error = %e, "cannot seal a capture left in staging");
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_opened_with_a_moved_audit_log_is_followed_without_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_store(&dir.path().join("store"));
        config.audit.path = Some(dir.path().join("logs/audit.log"));
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let node = Node::build(config, Open::OrCreate).unwrap();
        node.local()
            .audit_log()
            .unwrap()
            .append(crate::audit::EventInput::system(
                crate::audit::Action::Seal,
                crate::audit::Outcome::Ok,
            ))
            .unwrap();
        // `--store DIR`, no configuration: the store says where its log is.
        let again =
            Node::build(Config::for_store(&dir.path().join("store")), Open::Existing).unwrap();
        assert_eq!(
            again.local().audit_path(),
            dir.path().join("logs/audit.log")
        );
        assert!(!dir.path().join("store/audit.log").exists());
        // A record that is not a location is refused, not silently replaced by the default.
        std::fs::write(dir.path().join("store/audit-location.json"), "{}").unwrap();
        let e = Node::build(Config::for_store(&dir.path().join("store")), Open::Existing)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("audit log"), "{e}");
    }

    #[test]
    fn a_local_node_seals_into_its_store_and_applies_retention() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::build(Config::for_store(&dir.path().join("s")), Open::OrCreate).unwrap();
        assert!(node.bucket().is_none() && node.uploader().is_none());
        assert!(matches!(node.after_seal(None), After::Retention(None)));
        assert_eq!(node.spool_max(), None);
        assert!(matches!(node.store(), Store::Local(_)));
        // The record commands never make a store where there is none.
        assert!(Node::build(Config::for_store(&dir.path().join("nope")), Open::Existing).is_err());
        assert!(!dir.path().join("nope").exists());
    }
}
