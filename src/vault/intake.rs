//! Taking in an archive, for every capturing front-end (the CRI proxy, the trigger API, the
//! watcher, `ckvault seal`, staging recovery): refuse while the spool is full, seal, then
//! dispatch: with a bucket, wake the spool's uploader (retention is the servers' business
//! there); with a local store, apply its retention policy. One place decides what follows
//! a seal, so every front-end does the same.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::manifest::Manifest;
use crate::policy::PolicySet;
use crate::seal::{self, SealError, SealOptions};
use crate::store::{LocalStore, StoreError};

/// What follows a seal.
#[derive(Clone)]
pub enum After {
    /// The store is a bucket's spool: its uploader (when this process runs one) is woken.
    Upload(Option<Arc<Notify>>),
    /// The store is local: these policies' retention is applied.
    Retention(Option<Arc<PolicySet>>),
}

/// Where archives are sealed, how, and what follows.
#[derive(Clone)]
pub struct Intake {
    store: LocalStore,
    opts: SealOptions,
    after: After,
}

impl Intake {
    /// Seals into `store` (a local store or a spool) with `opts`, then does `after`.
    pub fn new(store: LocalStore, opts: SealOptions, after: After) -> Self {
        Self { store, opts, after }
    }

    /// The store sealed into.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The base seal options (recipients, node, spool limit); callers set the source and
    /// the claimed identity of each archive on a copy.
    pub fn options(&self) -> &SealOptions {
        &self.opts
    }

    /// Refuses while the spool is at its limit (before anything is written or asked).
    pub fn check_room(&self) -> Result<(), StoreError> {
        match self.opts.spool_max {
            Some(max) => crate::store::s3::upload::check_spool(&self.store, max),
            None => Ok(()),
        }
    }

    /// Seals `file` with `opts` (a copy of [`Self::options`] for this archive), reporting
    /// progress, then dispatches the record.
    pub fn seal(
        &self,
        file: std::fs::File,
        opts: &SealOptions,
        progress: &dyn Fn(u64),
    ) -> Result<Manifest, SealError> {
        self.check_room()?;
        let manifest = seal::seal_file(&self.store, file, opts, progress)?;
        self.dispatch();
        Ok(manifest)
    }

    /// Seals the archive arriving on `reader` (a named pipe the runtime writes into; see
    /// [`seal::seal_reader`]), then dispatches the record.
    pub fn seal_reader<R: std::io::Read + Send>(
        &self,
        reader: R,
        opts: &SealOptions,
    ) -> Result<Manifest, SealError> {
        let manifest = seal::seal_reader(&self.store, reader, opts, &|_| {})?;
        self.dispatch();
        Ok(manifest)
    }

    fn dispatch(&self) {
        match &self.after {
            After::Upload(Some(wake)) => wake.notify_one(),
            After::Retention(Some(p)) => p.enforce_after_seal(&self.store),
            After::Upload(None) | After::Retention(None) => {}
        }
    }
}
