//! Analysing a sealed record without plaintext on disk (memory search, the deep view), from
//! a store (local or bucket) or from a sealed file fetched from a server (its manifest beside
//! it): the blob is decrypted and decompressed on one thread into an in-memory OS pipe, and
//! the analysis reads the other end as a stream; both digests of the manifest are checked at
//! the end, and results of a record whose bytes do not match are withheld. Every analysis of
//! a store's record is an audited read (action, purpose), recorded before any byte is read
//! (fail closed); a fetched file's read was audited by the server that served it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::inspect::memory::{Found, Search};
use crate::inspect::{InspectError, Limits};
use crate::manifest::{Manifest, RecordId};
use crate::seal::open::{Identities, OpenError, open_stream};
use crate::store::{Store, StoreError};

/// Why an analysis gave no result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnalyseError {
    /// The store refused (no such record, unreadable, unreachable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log refused the event: nothing was read.
    #[error("the audit log refused the event, so nothing was read: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Decryption or decompression failed (wrong key, damaged blob).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The archive inside is refused as hostile or malformed.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The bytes read are not those the manifest describes.
    #[error(
        "record {id}: the {which} digest does not match the manifest ({got}, expected \
         {want}); no result is given from bytes that are not the record's"
    )]
    Digest {
        /// The record.
        id: RecordId,
        /// `sealed` or `plaintext`.
        which: &'static str,
        /// What was read.
        got: String,
        /// What the manifest says.
        want: String,
    },
    /// The input could not be read.
    #[error("analysis pipeline: {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pipe between the decrypting thread and the analysis could not be made.
    #[error("analysis pipeline: {0}")]
    Pipe(#[source] std::io::Error),
    /// The decrypting thread panicked.
    #[error("analysis pipeline: the decrypting thread panicked")]
    DecryptPanicked,
    /// A sealed blob file without a readable manifest beside it.
    #[error(
        "{blob}: a sealed record needs its manifest beside it ({manifest}, as `ckvault fetch` \
         writes it) to be checked: {reason}"
    )]
    NoManifest {
        /// The blob file.
        blob: String,
        /// Where the manifest was looked for.
        manifest: String,
        /// Why it could not be used.
        reason: String,
    },
}

/// The first line of every age-encrypted file.
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// A sealed blob file (as `ckvault fetch` writes it, the server having audited the
/// download) with its manifest read from beside it; `None` when `path` is not an
/// age-encrypted file (a plaintext archive). The manifest's signature is not checked here
/// (`ckvault verify` does); both its digests are, by the analysis.
pub(crate) fn sealed_file(path: &Path) -> Result<Option<(Manifest, std::fs::File)>, AnalyseError> {
    let io = |source: std::io::Error| AnalyseError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = crate::fsutil::open_regular_nofollow(path).map_err(io)?;
    let mut head = [0u8; AGE_HEADER.len()];
    let mut got = 0;
    while got < head.len() {
        let n = file
            .read(head.get_mut(got..).unwrap_or_default())
            .map_err(io)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if head.get(..got) != Some(AGE_HEADER) {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mpath = crate::manifest::path_beside(path);
    let no_manifest = |reason: String| AnalyseError::NoManifest {
        blob: path.display().to_string(),
        manifest: mpath.display().to_string(),
        reason,
    };
    let mut bytes = Vec::new();
    crate::fsutil::open_regular_nofollow(&mpath)
        .map_err(|e| no_manifest(e.to_string()))?
        .take(crate::manifest::MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| no_manifest(e.to_string()))?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| no_manifest(e.to_string()))?;
    Ok(Some((manifest, file)))
}

/// Searches the memory of a sealed blob file (see [`sealed_file`]).
pub(crate) fn memsearch_sealed(
    manifest: &Manifest,
    blob: std::fs::File,
    identities: Identities,
    search: &Search,
    limits: &Limits,
) -> Result<Found, AnalyseError> {
    read_record(blob, manifest, identities, |r| {
        crate::inspect::memsearch_reader(r, limits, search)
    })
}

/// The deep view of a sealed blob file (see [`sealed_file`]).
pub(crate) fn deep_sealed(
    manifest: &Manifest,
    blob: std::fs::File,
    identities: Identities,
    limits: &Limits,
) -> Result<crate::inspect::deep::DeepView, AnalyseError> {
    read_record(blob, manifest, identities, |r| {
        crate::inspect::deep_reader(r, limits)
    })
}

/// Who reads, and why, for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    /// The actor (`cli:USER@HOST`).
    pub actor: String,
    /// The stated purpose.
    pub purpose: Option<String>,
}

/// Searches the memory of record `id` of `store` (see [`crate::inspect::memory`]).
pub(crate) fn memsearch_record(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &RecordId,
    identities: Identities,
    search: &Search,
    limits: &Limits,
    who: &Reader,
) -> Result<(Manifest, Found), AnalyseError> {
    let (manifest, blob) = audited_read(rt, store, id, Action::Memsearch, who)?;
    let found = read_record(blob, &manifest, identities, |r| {
        crate::inspect::memsearch_reader(r, limits, search)
    })?;
    Ok((manifest, found))
}

/// The deep view of record `id` (see [`crate::inspect::deep`]), decrypted and parsed in
/// memory; an audited read (`inspect-deep`).
pub(crate) fn deep_record(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &RecordId,
    identities: Identities,
    limits: &Limits,
    who: &Reader,
) -> Result<(Manifest, crate::inspect::deep::DeepView), AnalyseError> {
    let (manifest, blob) = audited_read(rt, store, id, Action::InspectDeep, who)?;
    let deep = read_record(blob, &manifest, identities, |r| {
        crate::inspect::deep_reader(r, limits)
    })?;
    Ok((manifest, deep))
}

/// The record's verified manifest and a blocking reader of its blob, once the read is in
/// the audit log as `action` (fail closed: no event, no byte).
fn audited_read(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    id: &RecordId,
    action: Action,
    who: &Reader,
) -> Result<(Manifest, impl Read + Send), AnalyseError> {
    let manifest = rt.block_on(store.manifest(id))?;
    store.local().audit_log()?.append(EventInput {
        purpose: who.purpose.clone(),
        ..EventInput::new(&Actor::named(who.actor.clone()), action, Outcome::Ok).about(&manifest)
    })?;
    let blob = rt.block_on(store.blob(id, 0, manifest.sealed.size))?;
    let blob = tokio_util::io::SyncIoBridge::new_with_handle(blob, rt.handle().clone());
    Ok((manifest, blob))
}

/// Decrypts `blob` into a pipe whose other end `analyse` reads; then checks both digests.
fn read_record<B, T>(
    blob: B,
    manifest: &Manifest,
    identities: Identities,
    analyse: impl FnOnce(&mut std::io::PipeReader) -> Result<T, InspectError>,
) -> Result<T, AnalyseError>
where
    B: Read + Send,
{
    let (mut rx, tx) = std::io::pipe().map_err(AnalyseError::Pipe)?;
    std::thread::scope(|scope| {
        // The writer is dropped as soon as the stream is written, so the reader sees its end.
        let opener = scope.spawn(move || {
            open_stream(blob, &identities, manifest, tx).map(|(sealed, plain, w)| {
                drop(w);
                (sealed, plain)
            })
        });
        let result = analyse(&mut rx);
        // Read to the end whatever the analysis left, so the opener finishes.
        let _ = std::io::copy(&mut rx, &mut std::io::sink());
        drop(rx);
        let opened = opener.join().map_err(|_| AnalyseError::DecryptPanicked)?;
        let (sealed, plain) = opened?;
        for (which, got, want) in [
            ("sealed", sealed.sha256, &manifest.sealed.sha256),
            ("plaintext", plain.sha256, &manifest.plaintext.sha256),
        ] {
            if &got != want {
                return Err(AnalyseError::Digest {
                    id: manifest.id.clone(),
                    which,
                    got,
                    want: want.clone(),
                });
            }
        }
        Ok(result?)
    })
}
