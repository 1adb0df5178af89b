//! Sealing: an archive goes in, a signed, encrypted record comes out.
//!
//! [`seal_file`] inspects the archive (seeking, milliseconds), then streams it once through
//! [`stream::seal_stream`] into a pending record of the store, builds and signs the
//! manifest and publishes both atomically. [`seal_reader`] does the same from a stream
//! (a named pipe the runtime writes into), inspecting a bounded tee of the sealing pass.
//! Sealing never depends on inspection: a hostile archive is sealed all the same and
//! flagged `inspection.status = "rejected"`.
//! [`open`] is the way back: decrypt, decompress and verify.

pub mod digest;
pub mod open;
pub mod stream;

use crate::node::{host_name, local_actor, now_rfc3339};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::inspect::{self, ArchiveFormat, Identity, InspectError, Inspection, Limits};
use crate::manifest::{
    InspectionRecord, InspectionStatus, Manifest, ManifestError, Plaintext, RecordId, Sealed,
    Source, Trigger,
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
    /// Why the archive was captured (an alert, a schedule, ...), written into the signed
    /// manifest (bounded, [`Trigger::bounded`]); a record with one is
    /// [`crate::manifest::SCHEMA_V2`]. `None` (the default) keeps the record v1.
    pub trigger: Option<Trigger>,
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
            trigger: None,
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
    /// The stream ended before its first byte: nothing to seal.
    #[error("the archive stream was empty: nothing to seal")]
    Empty,
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
    store.signing_key()?;
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
    publish(
        store,
        opts,
        SealPass {
            id,
            pending,
            checked,
            format,
            compression,
            recipients,
            digests,
        },
    )
}

/// What one sealing pass left: the blob written (not yet published) and what is known of
/// it, for [`publish`].
struct SealPass {
    id: RecordId,
    pending: crate::store::PendingRecord,
    checked: Checked,
    format: ArchiveFormat,
    compression: Compression,
    recipients: Vec<Recipient>,
    digests: stream::SealDigests,
}

/// Builds, signs and publishes the manifest of a streamed blob (audit first: a record
/// nobody could account for is not published).
fn publish(store: &LocalStore, opts: &SealOptions, pass: SealPass) -> Result<Manifest, SealError> {
    let SealPass {
        id,
        pending,
        checked,
        format,
        compression,
        recipients,
        digests,
    } = pass;
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
    signing_key_sign(store, &mut manifest)?;
    // Fail closed: a record nobody could account for is not published.
    let audit = store.audit_log()?;
    let event = |outcome: Outcome, detail: Option<String>| EventInput {
        detail,
        ..EventInput::new(&Actor::named(opts.actor.clone()), Action::Seal, outcome).about(&manifest)
    };
    audit
        .append(event(Outcome::Ok, manifest.inspection.code.clone()))
        .map_err(|e| StoreError::Audit(Box::new(e)))?;
    if let Err(e) = pending.commit(&manifest) {
        let _ = audit.append(event(Outcome::Error, Some(e.to_string())));
        return Err(e.into());
    }
    Ok(manifest)
}

fn signing_key_sign(store: &LocalStore, manifest: &mut Manifest) -> Result<(), SealError> {
    store.signing_key()?.sign(manifest)?;
    Ok(())
}

/// Seals an archive arriving as a stream (a named pipe the runtime writes into), in one
/// pass: the bytes are hashed, compressed and encrypted as they come, and a bounded tee of
/// the same pass feeds the inspector, so nothing is ever on disk in plaintext. The
/// recipients follow from the caller's claimed identity (the runtime's), known before the
/// first byte. An empty stream is not a record ([`SealError::Empty`]). The stream is
/// always read to its end, even when sealing fails, so the writer never blocks.
pub fn seal_reader<R: std::io::Read + Send>(
    store: &LocalStore,
    reader: R,
    opts: &SealOptions,
    progress: &dyn Fn(u64),
) -> Result<Manifest, SealError> {
    let mut reader = reader;
    let drain = |r: &mut dyn std::io::Read| {
        let _ = std::io::copy(r, &mut std::io::sink());
    };
    if opts.recipients.is_empty() && opts.recipient_policy.is_none() {
        drain(&mut reader);
        return Err(SealError::NoRecipients);
    }
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SealError::Input(e)),
        }
    }
    if got == 0 {
        return Err(SealError::Empty);
    }
    let head = head.get(..got).unwrap_or_default().to_vec();
    let format = ArchiveFormat::sniff(&head);
    let mut input = std::io::Cursor::new(head).chain(reader);
    let who = Identity {
        namespace: opts.claimed.namespace.clone(),
        pod: opts.claimed.pod.clone(),
        container: opts.claimed.container.clone(),
        ..Identity::default()
    };
    let recipients: Vec<Recipient> = match &opts.recipient_policy {
        Some(policy) => match policy.for_target(Target {
            namespace: who.namespace.as_deref(),
            pod: who.pod.as_deref(),
            container: who.container.as_deref(),
        }) {
            Ok(r) => r.to_vec(),
            Err(e) => {
                drain(&mut input);
                return Err(e.into());
            }
        },
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
    let mut pending = match store.signing_key().and_then(|_| store.begin(&id)) {
        Ok(p) => p,
        Err(e) => {
            drain(&mut input);
            return Err(e.into());
        }
    };
    let blob = match pending.blob_file() {
        Ok(b) => b,
        Err(e) => {
            drain(&mut input);
            return Err(e.into());
        }
    };
    let limits = opts.limits.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let (digests, inspected) = std::thread::scope(|scope| {
        let inspector =
            scope.spawn(move || inspect::inspect_reader(ChannelReader::new(rx), &limits));
        let tee = Tee {
            inner: &mut input,
            tx: Some(tx),
        };
        let sealed = stream::seal_stream(tee, blob, &recipients, compression, None, progress);
        if sealed.is_err() {
            drain(&mut input);
        }
        let inspected = inspector.join().unwrap_or_else(|_| {
            Err(InspectError::Io(std::io::Error::other(
                "inspector panicked",
            )))
        });
        (sealed, inspected)
    });
    let (digests, _) = digests?;
    let checked = build_inspection_record(inspected, &opts.claimed);
    publish(
        store,
        opts,
        SealPass {
            id,
            pending,
            checked,
            format,
            compression,
            recipients,
            digests,
        },
    )
}

/// Reads through to `inner` and hands a copy of every chunk to the inspector; when the
/// inspector stops taking them, sealing goes on alone.
struct Tee<'a, R: std::io::Read> {
    inner: &'a mut R,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl<R: std::io::Read> std::io::Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.tx = None;
        } else if let Some(tx) = &self.tx
            && tx.send(buf.get(..n).unwrap_or_default().to_vec()).is_err()
        {
            self.tx = None;
        }
        Ok(n)
    }
}

/// The inspector's side of the tee.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: std::io::Cursor<Vec<u8>>,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            cur: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.cur.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(chunk) => self.cur = std::io::Cursor::new(chunk),
                Err(_) => return Ok(0),
            }
        }
    }
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
    // The record keeps the identity as it came; a value Kubernetes would refuse is named.
    let identity_invalid = inspect::naming_violations(
        identity.namespace.as_deref(),
        identity.pod.as_deref(),
        identity.container.as_deref(),
    );
    // The cause, bounded whatever the caller did (bounding twice changes nothing); it
    // decides the schema.
    let trigger = opts.trigger.clone().map(Trigger::bounded);
    Manifest {
        schema: Manifest::schema_for(trigger.as_ref()).to_owned(),
        id,
        namespace: identity.namespace,
        pod: identity.pod,
        identity_invalid,
        container: identity.container,
        container_id: identity.container_id,
        image: identity.image,
        engine: identity.engine.map(|e| e.as_str().to_owned()),
        runtime: identity.runtime,
        checkpointed_at: identity.checkpointed_at,
        sealed_at: now_rfc3339(),
        node: opts.node.clone(),
        source: opts.source.clone(),
        trigger,
        plaintext,
        sealed,
        inspection: checked.record.clone(),
        summary: checked.summary.clone(),
        signature: None,
    }
}
