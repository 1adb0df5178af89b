//! The sealed-record manifest: a versioned JSON schema written next to every sealed blob,
//! signed with the vault's Ed25519 key ([`sign`]) so a record can be verified offline.
//!
//! The manifest is the source of truth of a store: a blob without a manifest is not a
//! record. Field names are part of the on-disk format; add fields, never rename them.
//!
//! A signature is checked by serializing the typed manifest again, so what this version
//! does not know cannot be in what it checks. Hence the rule for what comes later (see
//! SECURITY.md, "Manifest versions"):
//!
//! * A new field is optional and absent when unset (`skip_serializing_if`), so a record that
//!   does not use it is byte for byte a v1 record, which every version verifies. (The
//!   `Option` fields that v1 writes as `null` stay so: their signatures cover the `null`.)
//! * A record that sets a field v1 does not have is written under a new [`Manifest::schema`];
//!   a version that does not know that schema reports the record as written by a newer
//!   ckvault ([`ManifestError::Schema`], before any signature is checked), never as badly
//!   signed. Versions from before this rule do the same: they have always refused an unknown
//!   schema first.
//! * A new word in a vocabulary ([`SourceKind`]) needs no new schema: every version reads a
//!   word it does not know verbatim, and the signature verifies.

pub mod id;
pub mod sign;

use serde::{Deserialize, Serialize};

use crate::inspect::{Identity, Member, Process, Summary};
pub use id::RecordId;
pub use sign::{Signature, SigningKey, VerifyingKey};

/// Schema identifier of this manifest version.
pub const SCHEMA_V1: &str = "ckvault.dev/manifest/v1";

/// One sealed checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema identifier ([`SCHEMA_V1`]).
    pub schema: String,
    /// Unique, time-sortable record ID (a ULID).
    pub id: RecordId,
    /// Kubernetes namespace of the checkpointed pod.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// The identity fields (`namespace`, `pod`, `container`) whose value breaks Kubernetes'
    /// naming rules (RFC 1123 labels for the namespace and container, an RFC 1123 subdomain
    /// for the pod): the archive named them so, the record keeps the value as it came and
    /// says so here. Absent when every field is valid or missing (so records sealed before
    /// this field existed verify unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_invalid: Vec<String>,
    /// Runtime container ID.
    pub container_id: Option<String>,
    /// Image the container ran.
    pub image: Option<String>,
    /// Engine that wrote the archive: `cri-o`, `containerd` or `podman`.
    pub engine: Option<String>,
    /// OCI runtime (runc, crun, ...).
    pub runtime: Option<String>,
    /// When the checkpoint was taken, as the engine recorded it (RFC 3339).
    pub checkpointed_at: Option<String>,
    /// When ckvault finished sealing (RFC 3339, UTC).
    pub sealed_at: String,
    /// Node that sealed the record (host name).
    pub node: Option<String>,
    /// How the archive reached ckvault.
    pub source: Source,
    /// The archive as received.
    pub plaintext: Plaintext,
    /// The stored (sealed) blob.
    pub sealed: Sealed,
    /// What inspection found, or why it rejected the archive.
    pub inspection: InspectionRecord,
    /// Sizes and counts (zero when inspection rejected the archive).
    pub summary: Summary,
    /// Ed25519 signature over the canonical JSON of every other field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

crate::vocab::vocabulary! {
    /// What brought an archive to ckvault (a manifest's `source.kind`). New capture paths
    /// (alert receivers, the node's own triggers) add words here; a word a newer version
    /// wrote reads as `Unrecognised` and still verifies.
    pub enum SourceKind {
        /// `ckvault seal`.
        Cli => "cli",
        /// The CRI proxy intercepted the kubelet's CheckpointContainer call.
        CriProxy => "cri-proxy",
        /// The runtime wrote the archive after the call it answered had failed (a late
        /// write the proxy or the trigger swept up).
        CriLateWrite => "cri-late-write",
        /// What a crash left in the private staging directory, sealed at the next start.
        StagingRecovery => "staging-recovery",
        /// The trigger API (`POST /checkpoint/...`).
        Trigger => "trigger",
        /// `ckvault watch` found it in the kubelet's checkpoint directory.
        Watch => "watch",
    }
}

/// How the archive reached ckvault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// What brought it.
    pub kind: SourceKind,
    /// Path the archive was read from, when it came from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Digest and size of the archive as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plaintext {
    /// Lower-case hex SHA-256 of the bytes as received.
    pub sha256: String,
    /// Byte count as received.
    pub size: u64,
    /// `tar`, `tar+gzip` or `tar+zstd`.
    pub format: String,
}

/// Digest, size and protection of the stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Lower-case hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Stored byte count.
    pub size: u64,
    /// `zstd` (ckvault compressed the archive) or `none` (it came compressed and is kept
    /// as it came: `age -d` alone gives the original back).
    pub compression: String,
    /// `age-v1` (C2SP age, X25519 or SSH recipients).
    pub encryption: String,
    /// Who can open the blob: recipient types and fingerprints, never keys.
    pub recipients: Vec<RecipientRef>,
    /// File name of the blob inside the store.
    pub blob: String,
}

/// A recipient the blob was encrypted to, identified by fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRef {
    /// `x25519`, `ssh-ed25519` or `ssh-rsa`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `SHA256:` + unpadded base64 of the SHA-256 of the public key (OpenSSH style).
    pub fingerprint: String,
}

/// Outcome of inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InspectionStatus {
    /// The archive parsed cleanly.
    Ok,
    /// The archive was refused by the inspector (it is still sealed, and flagged).
    Rejected,
}

/// What inspection found about the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectionRecord {
    /// `ok` or `rejected`.
    pub status: InspectionStatus,
    /// Short stable reason code when rejected (e.g. `dot-dot-path`, `identity-mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human explanation when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Identity as the archive's own metadata states it (may differ from the record's
    /// identity when the caller supplied one; a difference is a rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_identity: Option<Identity>,
    /// CRIU images found under `checkpoint/`.
    #[serde(default)]
    pub criu_images: Vec<Member>,
    /// Process tree at checkpoint time.
    #[serde(default)]
    pub processes: Vec<Process>,
}

impl Manifest {
    /// Serialises the manifest as pretty JSON (the on-disk form).
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses a manifest, refusing oversized input and unknown schema versions (a newer
    /// schema is reported as such even where its shape no longer parses as v1).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let manifest: Manifest = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(e) => {
                /// The schema alone, every other member skipped.
                #[derive(Deserialize)]
                struct Schema {
                    schema: String,
                }
                return Err(match serde_json::from_slice::<Schema>(bytes) {
                    Ok(Schema { schema }) if schema != SCHEMA_V1 => unknown_schema(schema),
                    _ => ManifestError::Json(e),
                });
            }
        };
        if manifest.schema != SCHEMA_V1 {
            return Err(unknown_schema(manifest.schema));
        }
        Ok(manifest)
    }
}

/// The error for a schema this version does not know, the name cut to a bound (it is
/// repeated in messages and logs).
fn unknown_schema(mut schema: String) -> ManifestError {
    crate::vocab::cut_to(&mut schema, 128);
    ManifestError::Schema(schema)
}

/// Largest manifest ckvault will read (process lists are bounded by the inspector).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;

/// Why a manifest could not be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid manifest JSON.
    #[error("manifest is not valid JSON for this schema: {0}")]
    Json(serde_json::Error),
    /// Bigger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(usize),
    /// A schema this version does not know: the record was written by a newer ckvault.
    #[error(
        "manifest schema {0:?} is not supported by this ckvault (expects {SCHEMA_V1}): the record \
         was written by a newer ckvault; upgrade this one to read it"
    )]
    Schema(String),
    /// The manifest carries no signature.
    #[error("manifest is not signed")]
    Unsigned,
    /// The signature does not verify with the given key.
    #[error(
        "manifest signature does not verify with key {key_id}: the manifest was altered or signed by another vault"
    )]
    BadSignature {
        /// Fingerprint of the key used for verification.
        key_id: String,
    },
    /// The signature names an algorithm other than Ed25519.
    #[error("manifest signature is malformed: unsupported algorithm {alg:?}")]
    UnsupportedAlgorithm {
        /// The algorithm the signature names.
        alg: String,
    },
    /// The signature is not 64 bytes long.
    #[error("manifest signature is malformed: signature is not 64 bytes")]
    SignatureLength,
    /// The signature is not base64.
    #[error("manifest signature is malformed: {0}")]
    SignatureEncoding(#[source] base64::DecodeError),
    /// A validly signed manifest filed under another record's ID.
    #[error("the manifest is the signed manifest of record {names}, filed under another ID")]
    Misfiled {
        /// The record the manifest describes.
        names: String,
    },
}

/// Where a manifest sits beside a sealed blob file (`BLOB.manifest.json`), as `ckvault
/// fetch` and `ckvault export` write it.
pub fn path_beside(blob: &std::path::Path) -> std::path::PathBuf {
    let mut name = blob.as_os_str().to_os_string();
    name.push(".manifest.json");
    std::path::PathBuf::from(name)
}
