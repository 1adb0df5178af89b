//! Reading a record out, as a use case: who may (authorization, with every refusal
//! audited), which bytes (the whole blob or one span of it), checked how (a span only from
//! a blob verified whole since it last changed, a full local download by its digest or by
//! the identity it was verified with), and the `download` audit event written *before*
//! anything is handed over, by construction: a [`Download`] is the only thing a front-end
//! can serve bytes from, and only [`prepare`] makes one, after the event is written.
//!
//! ```compile_fail
//! // A front-end cannot make a Download itself (and so cannot serve without the event):
//! let d = ckvault::vault::download::Download { audited: ckvault::vault::download::Audited };
//! ```
//!
//! The front-end (the API today; a console tomorrow) keeps what is its own: parsing the
//! request, its rate limits, metrics, and the answer's shape (HTTP headers, body framing).

use std::future::Future;
use std::time::SystemTime;

use crate::audit::{Action as AuditAction, Actor, EventInput, Outcome};
use crate::manifest::{Manifest, RecordId};
use crate::policy::{Action, PolicySet, Principal};
use crate::seal::digest::HashingReader;
use crate::store::backend::FileIdentity;
use crate::store::{Store, StoreError};

use super::query::{Refusal, authorize};
use super::verified::VerifiedBlobs;

/// Writes a use case's audit events, failing closed: an event that cannot be written
/// stops the use case before it acts. The front-end implements it over its audit log
/// (the server also tracks the log's health and which requests were recorded).
pub(crate) trait Recorder {
    /// Why an event could not be written, in the front-end's own terms.
    type Error;
    /// Appends `event`; `Ok` once it is in the log.
    fn record(&self, event: EventInput) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What a use case reads: the store, the policy in force and what is known verified.
pub(crate) struct Vault<'a> {
    /// The records.
    pub store: &'a Store,
    /// Access (and the rest of the policy set).
    pub policy: &'a PolicySet,
    /// Local blobs verified since they last changed.
    pub verified: &'a VerifiedBlobs,
}

/// Who asks: as the policy names them, and as the audit log records them.
pub(crate) struct Caller<'a> {
    /// For the policy.
    pub principal: &'a Principal,
    /// For the audit log.
    pub actor: Actor,
}

/// Why a blob's bytes are not the ones its signed manifest names (nothing more is served).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Mismatch {
    /// The file changed (size, modification or change time) while it was hashed.
    #[error("the blob changed while it was being verified")]
    ChangedWhileVerified,
    /// The file changed while it was being served.
    #[error(
        "the blob changed while it was being served (its size, modification or change time moved)"
    )]
    ChangedWhileServed,
    /// The file ended before the bytes asked for.
    #[error("the blob is shorter than its manifest says: it changed while being served")]
    Shorter,
    /// The file's size is not the manifest's.
    #[error("the blob has {size} bytes, its manifest says otherwise")]
    Size {
        /// The file's size.
        size: u64,
    },
    /// The file's size is not the one its signed manifest says.
    #[error("the blob has {size} bytes, its signed manifest says {signed}")]
    SignedSize {
        /// The file's size.
        size: u64,
        /// The manifest's.
        signed: u64,
    },
    /// The bytes served do not hash to the signed digest.
    #[error(
        "the blob's bytes did not match the signed digest: sha256 {got}, manifest says {expected}"
    )]
    Digest {
        /// Their SHA-256 (hex).
        got: String,
        /// The manifest's.
        expected: String,
    },
    /// The whole blob, hashed before a range is served, is not the signed one.
    #[error("the blob's bytes ({size} bytes, sha256 {got}) do not match the signed manifest")]
    Blob {
        /// Bytes read.
        size: u64,
        /// Their SHA-256 (hex).
        got: String,
    },
}

/// Why a record is not handed to a caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError<E> {
    /// The audit log could not record the request (nothing was done).
    #[error("the audit log cannot record the request")]
    Audit(E),
    /// Not a record ID (at most 64 characters of it kept).
    #[error("{0:?} is not a record ID")]
    BadId(String),
    /// The caller may see the namespace but not do this there.
    #[error("{actor} may not {action} records of namespace {namespace}")]
    Forbidden {
        /// Who.
        actor: String,
        /// What.
        action: &'static str,
        /// Where (`(none)` for a record without one).
        namespace: String,
    },
    /// Unknown, or in a namespace the caller may not see (the same answer for both).
    #[error("no record {0}")]
    Hidden(RecordId),
    /// The store could not answer (an unknown record among them).
    #[error(transparent)]
    Store(StoreError),
}

/// Why a download was not begun.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError<E> {
    /// The audit log could not record the download (nothing was served).
    #[error("the audit log cannot record the download")]
    Audit(E),
    /// The record failed an integrity check: it is not served (the refusal is audited).
    #[error("record {record} failed its integrity check: {why}")]
    Integrity {
        /// The record.
        record: RecordId,
        /// What failed.
        why: Integrity,
    },
    /// The store could not provide the blob.
    #[error(transparent)]
    Store(StoreError),
}

/// What an integrity refusal found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Integrity {
    /// The manifest no longer verifies.
    #[error("{0}")]
    Manifest(StoreError),
    /// The blob's bytes are not the signed ones.
    #[error(transparent)]
    Blob(Mismatch),
}

/// Which bytes of the blob the caller asked for, as the front-end understood its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// The whole blob.
    All,
    /// Bytes `start..=end` (within the blob).
    Bytes {
        /// First byte.
        start: u64,
        /// Last byte.
        end: u64,
    },
    /// A span outside the blob (nothing is served; the request is audited as such).
    Unsatisfiable,
}

/// How a local blob's bytes are checked while they are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// Hash every byte and compare with this digest (hex) before the last chunk goes out.
    Digest(String),
    /// The file must keep the identity it was verified with until its last byte is read.
    Unchanged,
}

/// Where a download's bytes come from.
pub(crate) enum Blob {
    /// A local store's blob file, with its identity and how it is checked.
    Local {
        /// The open file (the bytes served are this file's).
        file: std::fs::File,
        /// Its identity when opened.
        identity: FileIdentity,
        /// The check while serving.
        check: Check,
    },
    /// A bucket's blob: a full download is hashed while served; a span was verified whole
    /// before.
    Bucket,
    /// Nothing (an unsatisfiable span).
    None,
}

/// A download whose `download` event is in the audit log: what a front-end serves from.
pub(crate) struct Download {
    /// The record.
    pub manifest: Manifest,
    /// The bytes to send.
    pub span: Span,
    /// The blob and its check.
    pub blob: Blob,
    /// When the blob's identity was taken (a verification remembered after it began).
    pub began: SystemTime,
    /// Who downloads (for the events that follow: `download-end`, an integrity failure).
    pub actor: Actor,
    audited: Audited,
}

/// The proof that a [`Download`]'s event was written: only [`prepare`] holds one to give.
struct Audited;

impl Download {
    /// Bytes the download sends.
    pub(crate) fn count(&self) -> u64 {
        match self.span {
            Span::All => self.manifest.sealed.size,
            Span::Bytes { start, end } => end - start + 1,
            Span::Unsatisfiable => 0,
        }
    }

    /// The first byte sent.
    pub(crate) fn start(&self) -> u64 {
        match self.span {
            Span::Bytes { start, .. } => start,
            Span::All | Span::Unsatisfiable => 0,
        }
    }

    /// Takes the blob out to serve it (leaving [`Blob::None`]).
    pub(crate) fn take_blob(&mut self) -> Blob {
        std::mem::replace(&mut self.blob, Blob::None)
    }

    /// The events that follow this download (owned, for the body that outlives the
    /// handler).
    pub(crate) fn events(&self) -> Events {
        let Audited = self.audited;
        Events {
            actor: self.actor.clone(),
            manifest: self.manifest.clone(),
            count: self.count(),
        }
    }
}

/// The audit events that follow a [`Download`]'s first byte.
#[derive(Clone)]
pub(crate) struct Events {
    actor: Actor,
    manifest: Manifest,
    count: u64,
}

impl Events {
    /// The `download-end` event, once `sent` bytes reached the connection.
    pub(crate) fn end(&self, sent: u64) -> EventInput {
        let count = self.count;
        let mut ev = EventInput::new(&self.actor, AuditAction::DownloadEnd, Outcome::Ok)
            .about(&self.manifest);
        if sent < count {
            ev.outcome = Outcome::Error;
            ev.detail = Some(format!(
                "ended early: {sent} of {count} bytes handed to the connection"
            ));
        }
        ev.bytes = Some(sent);
        ev
    }

    /// The event recording that the blob failed its check while it was served.
    pub(crate) fn mismatch(&self, why: &Mismatch) -> EventInput {
        EventInput::new(&self.actor, AuditAction::Download, Outcome::Error)
            .about(&self.manifest)
            .with_detail(format!(
                "integrity: {why}; the download was cut off before its end"
            ))
    }
}

/// Loads record `id` and checks that `who` may do `action` to it; every refusal is
/// audited (a malformed ID, an unknown record, a denial).
pub(crate) async fn authorized<R: Recorder>(
    vault: &Vault<'_>,
    rec: &R,
    who: &Caller<'_>,
    id: &str,
    action: Action,
) -> Result<Manifest, AccessError<R::Error>> {
    let shown = || id.chars().take(64).collect::<String>();
    let Ok(rid) = id.parse::<RecordId>() else {
        let ev = EventInput::new(&who.actor, action.into(), Outcome::Denied)
            .with_detail(format!("malformed record ID {:?}", shown()));
        rec.record(ev).await.map_err(AccessError::Audit)?;
        return Err(AccessError::BadId(shown()));
    };
    let manifest = match vault.store.manifest(&rid).await {
        Ok(m) => m,
        Err(e) => {
            let ev = EventInput::new(&who.actor, action.into(), Outcome::Error)
                .with_record(id)
                .with_detail(store_detail(&e));
            rec.record(ev).await.map_err(AccessError::Audit)?;
            return Err(AccessError::Store(e));
        }
    };
    if let Err(refusal) = authorize(vault.policy, who.principal, action, &manifest) {
        let ev = EventInput::new(&who.actor, action.into(), Outcome::Denied).about(&manifest);
        rec.record(ev).await.map_err(AccessError::Audit)?;
        return Err(match refusal {
            // Whether a record exists is only told to callers who may see its namespace.
            Refusal::Hidden => AccessError::Hidden(manifest.id),
            Refusal::Forbidden => AccessError::Forbidden {
                actor: who.principal.actor(),
                action: action.as_str(),
                namespace: manifest.namespace.unwrap_or_else(|| "(none)".into()),
            },
        });
    }
    Ok(manifest)
}

/// What the audit log says of a store error (the message a client gets for it, without
/// paths: an unknown record is named, anything else is "internal").
fn store_detail(e: &StoreError) -> String {
    match e {
        StoreError::NotFound(id) => format!("no record {id}"),
        StoreError::Unreachable { .. }
        | StoreError::Credentials { .. }
        | StoreError::NoCredentials { .. } => {
            "the record store cannot be reached; try again later".into()
        }
        _ => "internal error".into(),
    }
}

/// Begins `who`'s download of `span` of `manifest`'s record (already [`authorized`]):
/// refuses a record that fails an integrity check (audited), opens the blob, verifies it
/// whole first when only a span is asked, then writes the `download` event (with `purpose`
/// and the bytes to send) and only then hands out the [`Download`].
pub(crate) async fn prepare<R: Recorder>(
    vault: &Vault<'_>,
    rec: &R,
    who: &Caller<'_>,
    manifest: Manifest,
    span: Span,
    purpose: Option<String>,
) -> Result<Download, DownloadError<R::Error>> {
    // Serve only records whose manifest still verifies.
    if let Err(e) = vault.store.verify_manifest(&manifest).await {
        return Err(refuse(rec, who, manifest, Integrity::Manifest(e)).await);
    }
    let len = manifest.sealed.size;
    // A local blob is opened once: its identity is taken from the open file, and the bytes
    // served are that file's. `began` precedes the identity, as `remember` needs.
    let began = SystemTime::now();
    let local = vault
        .store
        .open_blob_file(&manifest.id)
        .await
        .map_err(DownloadError::Store)?;
    if let Some((_, identity)) = &local
        && identity.size != len
    {
        vault.verified.forget(&manifest.id);
        let why = Mismatch::SignedSize {
            size: identity.size,
            signed: len,
        };
        return Err(refuse(rec, who, manifest, Integrity::Blob(why)).await);
    }
    // A span cannot be checked against the digest on its own: serve it only from a blob
    // whose every byte matched since it last changed.
    if let Span::Bytes { .. } = span {
        let verdict = match &local {
            Some((file, identity)) => verify_file(vault, &manifest, file, *identity, began)
                .await
                .map_err(DownloadError::Store)?,
            None => verify_bucket_blob(vault.store, &manifest)
                .await
                .map_err(DownloadError::Store)?,
        };
        if let Err(why) = verdict {
            return Err(refuse(rec, who, manifest, Integrity::Blob(why)).await);
        }
    }
    let blob = match (span, local) {
        (Span::Unsatisfiable, _) => Blob::None,
        (_, None) => Blob::Bucket,
        (span, Some((file, identity))) => {
            // Every local download is checked: a full one is hashed unless its blob was
            // verified since it last changed, in which case (as for a span) the file must
            // keep the identity it was verified with until the last byte is read.
            let check = if span == Span::All && !vault.verified.holds(&manifest.id, &identity) {
                Check::Digest(manifest.sealed.sha256.clone())
            } else {
                Check::Unchanged
            };
            Blob::Local {
                file,
                identity,
                check,
            }
        }
    };
    let mut ev = EventInput::new(&who.actor, AuditAction::Download, Outcome::Ok).about(&manifest);
    ev.purpose = purpose;
    let download = Download {
        manifest,
        span,
        blob,
        began,
        actor: who.actor.clone(),
        audited: Audited,
    };
    ev.bytes = Some(download.count());
    ev.detail = match span {
        Span::Bytes { start, end } => Some(format!("bytes {start}-{end}/{len}")),
        Span::Unsatisfiable => Some("unsatisfiable range".into()),
        Span::All => None,
    };
    rec.record(ev).await.map_err(DownloadError::Audit)?;
    Ok(download)
}

/// Audits an integrity refusal of `manifest`'s record and returns it as the error.
async fn refuse<R: Recorder>(
    rec: &R,
    who: &Caller<'_>,
    manifest: Manifest,
    why: Integrity,
) -> DownloadError<R::Error> {
    tracing::error!(record = %manifest.id, why = %why, "integrity: record not served");
    let ev = EventInput::new(&who.actor, AuditAction::Download, Outcome::Error)
        .about(&manifest)
        .with_detail(format!("integrity: {why}"));
    if let Err(e) = rec.record(ev).await {
        return DownloadError::Audit(e);
    }
    DownloadError::Integrity {
        record: manifest.id,
        why,
    }
}

/// Reads a file from its start with positional reads (the file's offset, shared with the
/// body that serves it, is left alone).
struct ReadAt<'a> {
    file: &'a std::fs::File,
    offset: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Hashes a local blob whole unless it was verified since it last changed (same
/// identity); `Ok(Err(why))` if its bytes do not match the manifest.
async fn verify_file(
    vault: &Vault<'_>,
    manifest: &Manifest,
    file: &std::fs::File,
    identity: FileIdentity,
    began: SystemTime,
) -> Result<Result<(), Mismatch>, StoreError> {
    if vault.verified.holds(&manifest.id, &identity) {
        return Ok(Ok(()));
    }
    let file = file
        .try_clone()
        .map_err(|e| StoreError::io(std::path::Path::new(manifest.id.as_str()), e))?;
    let expected = manifest.sealed.sha256.clone();
    let verdict = blocking_read(
        &manifest.id,
        move || -> std::io::Result<Result<(), Mismatch>> {
            let mut reader = HashingReader::new(ReadAt {
                file: &file,
                offset: 0,
            });
            std::io::copy(&mut reader, &mut std::io::sink())?;
            let digest = reader.finish();
            if FileIdentity::of(&file)? != identity {
                return Ok(Err(Mismatch::ChangedWhileVerified));
            }
            if digest.sha256 != expected || digest.size != identity.size {
                return Ok(Err(Mismatch::Blob {
                    size: digest.size,
                    got: digest.sha256,
                }));
            }
            Ok(Ok(()))
        },
    )
    .await?;
    match &verdict {
        Ok(()) => vault.verified.remember(&manifest.id, identity, began),
        Err(_) => vault.verified.forget(&manifest.id),
    }
    Ok(verdict)
}

/// Runs `read` (a blocking read of record `id`'s blob) on the blocking pool.
async fn blocking_read<T: Send + 'static>(
    id: &RecordId,
    read: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|source| StoreError::Task {
            what: "blob verification".into(),
            source,
        })?
        .map_err(|e| StoreError::io(std::path::Path::new(id.as_str()), e))
}

/// Hashes a bucket's blob whole; `Ok(Err(why))` if it does not match the manifest.
async fn verify_bucket_blob(
    store: &Store,
    manifest: &Manifest,
) -> Result<Result<(), Mismatch>, StoreError> {
    let reader = store.blob(&manifest.id, 0, manifest.sealed.size).await?;
    let digest = blocking_read(&manifest.id, move || {
        let mut reader = HashingReader::new(tokio_util::io::SyncIoBridge::new(reader));
        std::io::copy(&mut reader, &mut std::io::sink()).map(|_| reader.finish())
    })
    .await?;
    if digest.sha256 != manifest.sealed.sha256 || digest.size != manifest.sealed.size {
        return Ok(Err(Mismatch::Blob {
            size: digest.size,
            got: digest.sha256,
        }));
    }
    Ok(Ok(()))
}
