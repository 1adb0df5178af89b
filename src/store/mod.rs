//! Where sealed records live. A record is a sealed blob plus its signed manifest, published
//! together: the blob first, then the manifest, so a visible manifest always has its blob.
//! The set of manifests is the source of truth.
//!
//! [`local`] is the embedded default: a private directory on the node. [`s3`] keeps
//! records in an S3-compatible bucket shared by many nodes. [`backend`] is what the server
//! talks to: either of them behind one async interface.

pub(crate) mod backend;
pub(crate) mod local;
pub mod s3;

pub(crate) use backend::Store;
pub use local::LocalStore;
pub(crate) use local::{LegalHold, PendingRecord};

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
    /// A record's manifest fails verification with the store's key (edited, signed by
    /// another vault, or filed under another ID): it is not listed, shown or served.
    #[error(
        "record {id} is not trusted: {why}; it is left out of listings and not served \
         (check it with `ckvault verify {id}`)"
    )]
    Tampered {
        /// The record.
        id: RecordId,
        /// Which check failed.
        why: ManifestError,
    },
    /// A directory given as a store exists, holds files, and is not a store.
    #[error(
        "{0} exists and is not a ckvault store (no store.json): pass a new or empty directory \
         for the store; nothing in {0} was changed"
    )]
    NotAStore(String),
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
    /// A blocking store task panicked or was cancelled before it answered.
    #[error("internal error: the {what} task failed: {source}")]
    Task {
        /// What the task was doing.
        what: String,
        /// Why it did not finish.
        source: tokio::task::JoinError,
    },
    /// A state of the store (a file or an object) does not parse as what it must be.
    #[error("{at}: not {expected}: {source}")]
    Unreadable {
        /// The file or key.
        at: String,
        /// What it should hold.
        expected: &'static str,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A state could not be written as JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        source: serde_json::Error,
    },
    /// The bucket index has not finished its first refresh.
    #[error("the bucket index is not built yet")]
    IndexNotBuilt,
    /// The bucket index's last refresh failed: the cause, shared by whoever asks until a
    /// refresh succeeds.
    #[error(transparent)]
    Refresh(std::sync::Arc<StoreError>),
    /// `[store] kind = "s3"` without a bucket.
    #[error("[store] kind = \"s3\" needs bucket")]
    NoBucket,
    /// `[store] ca_file` holds no usable trust anchor.
    #[error("[store] ca_file: {0}")]
    CaFile(#[source] aws_smithy_http_client::HttpClientError),
    /// The bucket named in `[store]` does not exist.
    #[error(
        "bucket {bucket:?} does not exist at {endpoint} (create it, with Object Lock enabled \
         if you want holds enforced by the store)"
    )]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The endpoint.
        endpoint: String,
    },
    /// This node's name cannot name objects.
    #[error(
        "node name {node:?} cannot name objects: set [node] name (letters, digits, \
         '-', '.', '_')"
    )]
    BadNodeName {
        /// The name.
        node: String,
    },
    /// This node's key is not the one the bucket trusts for its name.
    #[error(
        "this node's key cannot sign as {node:?} in this bucket: {source}. If another node \
         uses the name {node:?}, give this one its own [node] name; if this node's key \
         was replaced without `ckvault key rotate`, restore its old key and rotate"
    )]
    NameTaken {
        /// The node name.
        node: String,
        /// What the bucket's keys say.
        source: s3::keys::KeyTrustError,
    },
    /// A manifest object holds another record's manifest.
    #[error("{key} holds the manifest of {holds}: the bucket was tampered with")]
    Misfiled {
        /// The object's key.
        key: String,
        /// The record whose manifest it holds.
        holds: RecordId,
    },
    /// The key found for a node and key ID has another ID.
    #[error("key published for {node} is {published}, not {wanted}")]
    KeyIdMismatch {
        /// The node.
        node: String,
        /// The ID of the key found.
        published: String,
        /// The ID asked for.
        wanted: String,
    },
    /// A digest handed to an upload is not a SHA-256 in hex.
    #[error("{key}: {sha256:?} is not a SHA-256 in hex")]
    BadDigest {
        /// The object's key.
        key: String,
        /// What was given.
        sha256: String,
    },
    /// A key is not trusted for the node name it signs for, or the pins are unusable.
    #[error(transparent)]
    KeyTrust(#[from] s3::keys::KeyTrustError),
    /// The object store could not be reached.
    #[error(
        "cannot reach the object store at {endpoint} ({detail}); check [store] endpoint, the \
         network, and that the store is up"
    )]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// No S3 credentials could be found or obtained.
    #[error("no S3 credentials could be obtained ({detail}); {help}", help = s3::client::CREDENTIALS_HELP)]
    NoCredentials {
        /// What the credential providers said.
        detail: String,
    },
    /// Another object is already at a record's key: ckvault never writes over it.
    #[error(
        "another object is already at s3 key {key} ({detail}); ckvault does not write over \
         it (on a versioned bucket that would leave a second version): remove or move that \
         object, the record waits in the spool until then"
    )]
    Conflict {
        /// The key.
        key: String,
        /// How the object there differs.
        detail: String,
    },
    /// The object store refused our credentials.
    #[error(
        "the object store at {endpoint} refused our credentials ({detail}); check \
         AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or [store] credentials_file"
    )]
    Credentials {
        /// The endpoint.
        endpoint: String,
        /// The service's answer.
        detail: String,
    },
    /// Any other answer of the object store.
    #[error("object store: {op} {key}: {detail}")]
    S3 {
        /// The operation.
        op: String,
        /// The key.
        key: String,
        /// The service's answer.
        detail: String,
        /// Its class.
        kind: s3::client::Kind,
    },
    /// S3 Object Lock protects the record.
    #[error("record {id} is protected by S3 Object Lock ({detail}) and cannot be deleted yet")]
    Locked {
        /// The record.
        id: RecordId,
        /// Mode and date, or the store's refusal.
        detail: String,
    },
    /// The spool is full: capture refuses rather than lose records.
    #[error(
        "the upload spool holds {used} bytes, at its {max}-byte limit ([store] spool_max): \
         the object store has been unreachable; refusing new checkpoints until uploads resume"
    )]
    SpoolFull {
        /// Bytes in the spool.
        used: u64,
        /// The limit.
        max: u64,
    },
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
