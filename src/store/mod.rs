//! Where sealed records live. A record is a sealed blob plus its signed manifest, published
//! together: the blob first, then the manifest, so a visible manifest always has its blob.
//! The set of manifests is the source of truth.
//!
//! [`local`] is the embedded default: a private directory on the node.

pub mod local;

pub use local::{LegalHold, LocalStore, PendingRecord};

use crate::manifest::{ManifestError, RecordId, sign::KeyError};

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a store path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No store at this path.
    #[error(
        "no ckvault store at {0} (create one with `ckvault seal ... --store {0}`, which initialises it)"
    )]
    Missing(String),
    /// No record with this ID.
    #[error("no record {0} in this store (list them with `ckvault ls`)")]
    NotFound(RecordId),
    /// The manifest of a record is unreadable or fails verification.
    #[error("record {id}: {source}")]
    Manifest {
        /// The record.
        id: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The record is under legal hold.
    #[error("record {id} is under legal hold ({reason}); release the hold first")]
    Held {
        /// The record.
        id: RecordId,
        /// The hold's reason.
        reason: String,
    },
    /// The audit log refused the event: the action must not happen.
    #[error(transparent)]
    Audit(Box<crate::audit::AuditError>),
    /// The store's key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
