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
//!
//! The schemas so far: [`SCHEMA_V1`]; [`SCHEMA_V2`] = v1 + [`Manifest::trigger`] (why the
//! record was captured: an alert, a schedule, ...). A record without a trigger is written as
//! v1, byte for byte what earlier versions write; one with a trigger as v2, which a v1-only
//! binary reports as written by a newer ckvault. A manifest that says v1 and carries a
//! trigger is refused ([`ManifestError::FieldNotInSchema`]): no ckvault writes one.

pub mod id;
pub mod sign;

use serde::{Deserialize, Serialize};

use crate::inspect::{Identity, Member, Process, Summary};
pub use id::RecordId;
pub use sign::{Signature, SigningKey, VerifyingKey};

/// Schema identifier of the first manifest version (every record without a [`Trigger`]).
pub const SCHEMA_V1: &str = "ckvault.dev/manifest/v1";
/// Schema identifier of v1 + [`Manifest::trigger`] (every record with a [`Trigger`]).
pub const SCHEMA_V2: &str = "ckvault.dev/manifest/v2";
/// Every schema this version reads.
pub const SCHEMAS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// One sealed checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema identifier: [`SCHEMA_V1`], or [`SCHEMA_V2`] when `trigger` is set
    /// ([`Manifest::schema_for`]).
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
    /// Why it was captured (an alert, a schedule, ...), when something other than a person
    /// or the kubelet asking directly caused it. Absent when unset, so a record without it
    /// is byte for byte a v1 record; a record with it is [`SCHEMA_V2`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
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

crate::vocab::vocabulary! {
    /// Why a record was captured (a manifest's `trigger.kind`), beside [`SourceKind`], which
    /// says how the archive arrived. A word a newer version wrote reads as `Unrecognised`
    /// and still verifies.
    pub enum TriggerKind {
        /// A Prometheus Alertmanager webhook (`POST /v1/alerts/alertmanager`).
        Alertmanager => "alertmanager",
        /// A Falco event (`POST /v1/alerts/falco`).
        Falco => "falco",
        /// ckvault's own webhook (`POST /v1/alerts/webhook`), from any other tool.
        Webhook => "webhook",
        /// A schedule (an interval) of the node's own.
        Schedule => "schedule",
        /// A threshold (memory, CPU, ...) the node watches.
        Threshold => "threshold",
        /// The container was about to stop (drain, eviction, preemption).
        BeforeStop => "before-stop",
        /// The kubelet's checkpoint call.
        Kubelet => "kubelet",
        /// A person asked.
        Manual => "manual",
    }
}

/// Why a record was captured: the cause, written into the signed evidence. Every field
/// but `kind` may come from outside (an alert's labels, a caller's name), so it is bounded
/// ([`Trigger::bounded`]) before it is sealed: control characters written as `\u{..}`,
/// each string cut to its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// What caused the capture.
    pub kind: TriggerKind,
    /// The ckvault rule (`[[trigger]]` in the configuration) that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The alert's own name: Alertmanager's `alertname` label, Falco's `rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// The key alerts are deduplicated on: Alertmanager's `fingerprint`; for Falco, its
    /// rule and the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Falco's `priority`, Alertmanager's `severity` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// A short text: Falco's `output`, Alertmanager's `summary` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// When ckvault received the cause (RFC 3339, UTC).
    pub received_at: String,
    /// Who asked, as the audit log names the authenticated caller (`user:am`, ...).
    pub requested_by: String,
}

impl Trigger {
    /// Bound of `rule`, `alert`, `fingerprint`, `priority` and `requested_by`, in bytes
    /// (plus the `...` that marks a cut).
    pub const MAX_FIELD_BYTES: usize = 256;
    /// Bound of `summary`, in bytes (plus the `...` that marks a cut).
    pub const MAX_SUMMARY_BYTES: usize = 1024;
    /// Bound of `received_at` (an RFC 3339 time is far shorter).
    pub const MAX_TIME_BYTES: usize = 64;

    /// A trigger of `kind`, asked by `requested_by`, received now; the other fields unset.
    /// Bounded.
    pub fn new(kind: TriggerKind, requested_by: impl Into<String>) -> Self {
        Self {
            kind,
            rule: None,
            alert: None,
            fingerprint: None,
            priority: None,
            summary: None,
            received_at: crate::node::now_rfc3339(),
            requested_by: requested_by.into(),
        }
        .bounded()
    }

    /// The trigger with every string field bounded: each control character (C0, DEL, C1,
    /// bidi overrides and isolates) written as `\u{..}`, then the field cut to its limit
    /// (at a character boundary, marked with `...`). Bounding a bounded trigger changes
    /// nothing, so sealing applies it whatever the caller did.
    pub fn bounded(mut self) -> Self {
        fn bound(s: &mut String, max: usize) {
            if let std::borrow::Cow::Owned(escaped) =
                crate::inspect::escape_control_keep_backslash(s)
            {
                *s = escaped;
            }
            crate::vocab::cut_to(s, max);
        }
        for (field, max) in [
            (self.rule.as_mut(), Self::MAX_FIELD_BYTES),
            (self.alert.as_mut(), Self::MAX_FIELD_BYTES),
            (self.fingerprint.as_mut(), Self::MAX_FIELD_BYTES),
            (self.priority.as_mut(), Self::MAX_FIELD_BYTES),
            (self.summary.as_mut(), Self::MAX_SUMMARY_BYTES),
            (Some(&mut self.received_at), Self::MAX_TIME_BYTES),
            (Some(&mut self.requested_by), Self::MAX_FIELD_BYTES),
        ] {
            if let Some(s) = field {
                bound(s, max);
            }
        }
        if let TriggerKind::Unrecognised(word) = &mut self.kind {
            word.cut_to(Self::MAX_FIELD_BYTES);
        }
        self
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
    /// The schema a manifest with (or without) a trigger is written under: [`SCHEMA_V2`]
    /// with one, [`SCHEMA_V1`] without.
    pub fn schema_for(trigger: Option<&Trigger>) -> &'static str {
        if trigger.is_some() {
            SCHEMA_V2
        } else {
            SCHEMA_V1
        }
    }

    /// Whether the manifest's fields are those of its schema: a v1 manifest carries no
    /// trigger (no ckvault writes one; signing and parsing refuse it).
    pub fn check_schema(&self) -> Result<(), ManifestError> {
        if !SCHEMAS.contains(&self.schema.as_str()) {
            return Err(unknown_schema(self.schema.clone()));
        }
        if self.schema == SCHEMA_V1 && self.trigger.is_some() {
            return Err(ManifestError::FieldNotInSchema {
                field: "trigger",
                schema: SCHEMA_V1,
            });
        }
        Ok(())
    }

    /// Serialises the manifest as pretty JSON (the on-disk form).
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Parses a manifest, refusing oversized input, unknown schema versions (a newer
    /// schema is reported as such even where its shape no longer parses as v1) and fields
    /// its schema does not have ([`Manifest::check_schema`]).
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
                    Ok(Schema { schema }) if !SCHEMAS.contains(&schema.as_str()) => {
                        unknown_schema(schema)
                    }
                    _ => ManifestError::Json(e),
                });
            }
        };
        manifest.check_schema()?;
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
        "manifest schema {0:?} is not supported by this ckvault (expects {SCHEMA_V1} or \
         {SCHEMA_V2}): the record was written by a newer ckvault; upgrade this one to read it"
    )]
    Schema(String),
    /// A manifest carries a field its schema does not have (a v1 manifest with a
    /// `trigger`): no ckvault writes one, so it was altered.
    #[error(
        "manifest says schema {schema} but carries `{field}`, which that schema does not have: \
         no ckvault writes such a record (one with `{field}` is {SCHEMA_V2}); it was altered"
    )]
    FieldNotInSchema {
        /// The field.
        field: &'static str,
        /// The schema the manifest names.
        schema: &'static str,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_kinds_are_the_documented_words() {
        let words: Vec<&str> = TriggerKind::ALL.iter().map(TriggerKind::as_str).collect();
        assert_eq!(
            words,
            [
                "alertmanager",
                "falco",
                "webhook",
                "schedule",
                "threshold",
                "before-stop",
                "kubelet",
                "manual"
            ]
        );
        let newer: TriggerKind = serde_json::from_str("\"anomaly\"").unwrap();
        assert_eq!(newer.as_str(), "anomaly");
        assert!(TriggerKind::known("anomaly").is_none());
    }

    #[test]
    fn a_trigger_from_outside_is_bounded_and_bounding_again_changes_nothing() {
        let long = "r".repeat(10_000);
        let t = Trigger {
            rule: Some(long.clone()),
            alert: Some(format!("Alert\u{1b}]0;pwned\u{7}\u{202e}x\\y{long}")),
            fingerprint: Some("é".repeat(1_000)),
            priority: Some(long.clone()),
            summary: Some(format!("line one\nline two\r{long}")),
            received_at: long.clone(),
            ..Trigger::new(TriggerKind::Falco, format!("user:{long}"))
        }
        .bounded();
        let max = |s: &str, limit: usize| {
            assert!(s.len() <= limit + 3, "{} > {limit}", s.len());
            assert!(s.ends_with("..."), "a cut is marked");
        };
        max(t.rule.as_deref().unwrap(), Trigger::MAX_FIELD_BYTES);
        max(t.alert.as_deref().unwrap(), Trigger::MAX_FIELD_BYTES);
        max(t.fingerprint.as_deref().unwrap(), Trigger::MAX_FIELD_BYTES);
        max(t.priority.as_deref().unwrap(), Trigger::MAX_FIELD_BYTES);
        max(t.summary.as_deref().unwrap(), Trigger::MAX_SUMMARY_BYTES);
        max(&t.received_at, Trigger::MAX_TIME_BYTES);
        max(&t.requested_by, Trigger::MAX_FIELD_BYTES);
        // Control characters and bidi overrides are written as escapes; a backslash stays.
        let alert = t.alert.as_deref().unwrap();
        assert!(
            alert.starts_with("Alert\\u{1b}]0;pwned\\u{7}\\u{202e}x\\y"),
            "{alert}"
        );
        for s in [alert, t.summary.as_deref().unwrap()] {
            assert!(
                !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{s:?}"
            );
        }
        assert!(
            t.summary
                .as_deref()
                .unwrap()
                .starts_with("line one\\u{a}line two\\u{d}")
        );
        // Multi-byte text is cut at a character boundary.
        assert!(
            t.fingerprint
                .as_deref()
                .unwrap()
                .trim_end_matches("...")
                .chars()
                .all(|c| c == 'é')
        );
        assert_eq!(t.clone().bounded(), t, "bounding is idempotent");
        // A short, clean trigger is kept as it is.
        let clean = Trigger {
            rule: Some("oom".into()),
            summary: Some(r"C:\path is fine".into()),
            ..Trigger::new(TriggerKind::Manual, "cli:root@node")
        };
        assert_eq!(clean.clone().bounded(), clean);
        assert!(clean.received_at.ends_with('Z'), "{}", clean.received_at);
    }

    #[test]
    fn unset_trigger_fields_are_absent_not_null() {
        let t = Trigger::new(TriggerKind::Schedule, "system:schedule");
        let json = serde_json::to_value(&t).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["kind", "received_at", "requested_by"]);
        assert_eq!(json["kind"], "schedule");
    }
}
