//! Sealing: an archive goes in, a signed, encrypted record comes out.
//!
//! [`seal_file`] inspects the archive (seeking, milliseconds), then streams it once through
//! [`stream::seal_stream`] into a pending record of the store, builds and signs the
//! manifest and publishes both atomically. Sealing never depends on inspection: a hostile
//! archive is sealed all the same and flagged `inspection.status = "rejected"`.
//! [`open`] is the way back: decrypt, decompress and verify.

pub mod digest;
pub mod open;
pub mod stream;

use crate::node::{host_name, local_actor, now_rfc3339};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::audit::EventInput;
use crate::inspect::{self, ArchiveFormat, Identity, InspectError, Inspection, Limits};
use crate::manifest::{
    InspectionRecord, InspectionStatus, Manifest, ManifestError, Plaintext, RecordId, SCHEMA_V1,
    Sealed, Source,
};
use crate::policy::selector::Target;
pub use crate::recipient::{Recipient, RecipientError};
use crate::store::{LocalStore, StoreError};
pub use stream::{Compression, StreamError};

/// Who the caller says the container is (from the runtime, the kubelet path or the CLI).
/// Each given field is cross-checked against the archive; a difference is flagged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedIdentity {
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
}

/// Everything sealing needs besides the archive and the store.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// Recipients the blob is encrypted to (at least one).
    pub recipients: Vec<Recipient>,
    /// Identity claimed by the caller.
    pub claimed: ClaimedIdentity,
    /// How the archive arrived.
    pub source: Source,
    /// zstd level for uncompressed input.
    pub zstd_level: i32,
    /// zstd worker threads (0 = single-threaded).
    pub zstd_threads: u32,
    /// Inspection limits.
    pub limits: Limits,
    /// Node name recorded in the manifest.
    pub node: Option<String>,
    /// Who asked for the seal, for the audit log (`cli:USER@HOST`, `user:NAME`, ...).
    pub actor: String,
    /// Per-namespace recipients (policies/recipients.toml); when set it decides the
    /// recipients instead of `recipients`, and a record it does not cover is refused.
    pub recipient_policy: Option<std::sync::Arc<crate::policy::recipients::RecipientsPolicy>>,
    /// With an upload spool as the store (`[store] kind = "s3"`): its byte limit. Capture
    /// refuses to start (the archive stays where it was, or the runtime is never asked)
    /// while the spool is this full, so nothing is lost while the bucket is away.
    pub spool_max: Option<u64>,
}

impl SealOptions {
    /// Defaults: zstd level 1 on every core, default inspection limits, the host name.
    pub fn new(recipients: Vec<Recipient>, source: Source) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            recipients,
            claimed: ClaimedIdentity::default(),
            source,
            zstd_level: -1,
            zstd_threads: threads,
            limits: Limits::default(),
            node: host_name(),
            actor: local_actor(),
            recipient_policy: None,
            spool_max: None,
        }
    }
}

/// Why sealing failed. Whatever the cause, nothing partial is left in the store.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No recipient was given.
    #[error(
        "no recipients: refusing to seal an archive nobody could open (pass --recipient age1... or --recipients-file)"
    )]
    NoRecipients,
    /// The input is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// Reading the input failed.
    #[error("cannot read the archive: {0}")]
    Input(std::io::Error),
    /// The stream failed; nothing was stored.
    #[error("{0}; nothing was stored")]
    Stream(#[from] StreamError),
    /// The store refused.
    #[error("{0}; nothing was stored")]
    Store(#[from] StoreError),
    /// The recipients policy covers no recipients for this record.
    #[error(transparent)]
    NoRecipientsForRecord(#[from] crate::policy::recipients::NoRecipients),
    /// The manifest could not be built or signed.
    #[error("cannot sign the manifest: {0}; nothing was stored")]
    Manifest(#[from] ManifestError),
}

/// Seals an open archive file into `store` and returns the published manifest.
///
/// The file is read through the same descriptor for inspection and sealing, so the bytes
/// inspected are the bytes sealed even if the path is swapped meanwhile.
pub fn seal_file(
    store: &LocalStore,
    mut file: File,
    opts: &SealOptions,
    progress: &dyn Fn(u64),
) -> Result<Manifest, SealError> {
    if opts.recipients.is_empty() && opts.recipient_policy.is_none() {
        return Err(SealError::NoRecipients);
    }
    let meta = file.metadata().map_err(SealError::Input)?;
    if !meta.is_file() {
        return Err(SealError::NotAFile(
            opts.source.path.clone().unwrap_or_default(),
        ));
    }
    let mut head = [0u8; 4];
    let got = file.read_at(&mut head, 0).map_err(SealError::Input)?;
    let format = ArchiveFormat::sniff(head.get(..got).unwrap_or_default());
    let inspected = inspect::inspect_seekable(&mut file, &opts.limits);
    file.seek(SeekFrom::Start(0)).map_err(SealError::Input)?;
    let mut checked = build_inspection_record(inspected, &opts.claimed);
    let recipients: Vec<Recipient> = match &opts.recipient_policy {
        Some(policy) => {
            let who = record_identity(opts, &checked);
            policy
                .for_target(Target {
                    namespace: who.namespace.as_deref(),
                    pod: who.pod.as_deref(),
                    container: who.container.as_deref(),
                })?
                .to_vec()
        }
        None => opts.recipients.clone(),
    };

    let compression = if format.is_compressed() {
        Compression::None
    } else {
        Compression::Zstd {
            level: opts.zstd_level,
            threads: opts.zstd_threads,
        }
    };
    let id = RecordId::generate();
    let signing_key = store.signing_key()?;
    let mut pending = store.begin(&id)?;
    let (digests, _) = stream::seal_stream(
        &file,
        pending.blob_file()?,
        &recipients,
        compression,
        Some(meta.len()),
        progress,
    )?;

    if digests.plaintext.size != meta.len() && checked.status() == InspectionStatus::Ok {
        checked = rejected(
            "changed-while-sealing",
            format!(
                "the archive was {} bytes when sealing began and {} bytes were read: it changed while being sealed",
                meta.len(),
                digests.plaintext.size
            ),
        );
    }
    let mut manifest = assemble(
        id,
        opts,
        &checked,
        Plaintext {
            sha256: digests.plaintext.sha256,
            size: digests.plaintext.size,
            format: format.as_str().to_owned(),
        },
        Sealed {
            sha256: digests.sealed.sha256,
            size: digests.sealed.size,
            compression: compression.as_str().to_owned(),
            encryption: "age-v1".to_owned(),
            recipients: recipients.iter().map(Recipient::to_ref).collect(),
            blob: pending.blob_name(),
        },
    );
    signing_key.sign(&mut manifest)?;
    // Fail closed: a record nobody could account for is not published.
    let audit = store.audit_log()?;
    let event = |outcome: &str, detail: Option<String>| EventInput {
        actor: opts.actor.clone(),
        action: "seal".into(),
        outcome: outcome.into(),
        record: Some(manifest.id.to_string()),
        namespace: manifest.namespace.clone(),
        detail,
        ..Default::default()
    };
    audit
        .append(event("ok", manifest.inspection.code.clone()))
        .map_err(|e| StoreError::Audit(Box::new(e)))?;
    if let Err(e) = pending.commit(&manifest) {
        let _ = audit.append(event("error", Some(e.to_string())));
        return Err(e.into());
    }
    Ok(manifest)
}

/// Outcome of inspection plus the cross-check against the claimed identity, together with
/// the identity and summary the record carries.
struct Checked {
    record: InspectionRecord,
    identity: Identity,
    summary: inspect::Summary,
}

fn rejected(code: &str, reason: String) -> Checked {
    Checked {
        record: InspectionRecord {
            status: InspectionStatus::Rejected,
            code: Some(code.to_owned()),
            reason: Some(reason),
            archive_identity: None,
            criu_images: Vec::new(),
            processes: Vec::new(),
        },
        identity: Identity::default(),
        summary: inspect::Summary::default(),
    }
}

impl Checked {
    fn status(&self) -> InspectionStatus {
        self.record.status
    }
}

fn build_inspection_record(
    inspected: Result<Inspection, InspectError>,
    claimed: &ClaimedIdentity,
) -> Checked {
    let inspection = match inspected {
        Ok(i) => i,
        Err(e) => return rejected(e.code(), e.to_string()),
    };
    let archive = &inspection.identity;
    let mut mismatches = Vec::new();
    for (field, claim, found) in [
        ("namespace", &claimed.namespace, &archive.namespace),
        ("pod", &claimed.pod, &archive.pod),
        ("container", &claimed.container, &archive.container),
    ] {
        if let (Some(c), Some(f)) = (claim, found)
            && c != f
        {
            mismatches.push(format!("{field}: caller said {c:?}, archive says {f:?}"));
        }
    }
    let mut identity = archive.clone();
    // The caller's claim (the runtime, or an operator) decides whose record this is; the
    // archive is hostile input and only fills what the caller did not say.
    for (slot, claim) in [
        (&mut identity.namespace, &claimed.namespace),
        (&mut identity.pod, &claimed.pod),
        (&mut identity.container, &claimed.container),
    ] {
        if claim.is_some() {
            slot.clone_from(claim);
        }
    }
    let (status, code, reason) = if mismatches.is_empty() {
        (InspectionStatus::Ok, None, None)
    } else {
        (
            InspectionStatus::Rejected,
            Some("identity-mismatch".to_owned()),
            Some(format!(
                "the archive's identity differs from the caller's: {}",
                mismatches.join("; ")
            )),
        )
    };
    Checked {
        record: InspectionRecord {
            status,
            code,
            reason,
            archive_identity: Some(inspection.identity.clone()),
            criu_images: inspection.criu_images,
            processes: inspection.processes,
        },
        identity,
        summary: inspection.summary,
    }
}

/// The identity a record carries: the inspected one (claims applied) when inspection
/// passed; only the caller's claims when it did not (a rejected archive's own metadata is
/// not trusted).
fn record_identity(opts: &SealOptions, checked: &Checked) -> Identity {
    if checked.status() == InspectionStatus::Ok {
        checked.identity.clone()
    } else {
        Identity {
            namespace: opts.claimed.namespace.clone(),
            pod: opts.claimed.pod.clone(),
            container: opts.claimed.container.clone(),
            ..Identity::default()
        }
    }
}

fn assemble(
    id: RecordId,
    opts: &SealOptions,
    checked: &Checked,
    plaintext: Plaintext,
    sealed: Sealed,
) -> Manifest {
    let identity = record_identity(opts, checked);
    Manifest {
        schema: SCHEMA_V1.to_owned(),
        id,
        namespace: identity.namespace,
        pod: identity.pod,
        container: identity.container,
        container_id: identity.container_id,
        image: identity.image,
        engine: identity.engine.map(|e| e.as_str().to_owned()),
        runtime: identity.runtime,
        checkpointed_at: identity.checkpointed_at,
        sealed_at: now_rfc3339(),
        node: opts.node.clone(),
        source: opts.source.clone(),
        plaintext,
        sealed,
        inspection: checked.record.clone(),
        summary: checked.summary.clone(),
        signature: None,
    }
}
