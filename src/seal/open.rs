//! Opening a sealed record: age-decrypt with the responder's identity, zstd-decompress when
//! ckvault compressed it, and verify both SHA-256 digests against the manifest. The output
//! is published only when everything verified; a mismatch or truncation leaves nothing.
//! Also copying a sealed blob out as it is, verified ([`copy_sealed_to_file`], `export`).
//!
//! A blob is hostile until its digests match, and the signed manifest bounds the work on
//! it: a blob whose length is not the manifest's is refused before its first byte is read,
//! no more than the manifest's sealed size is ever read, decompression stops the moment
//! the output would pass the manifest's plaintext size, zstd windows are held to what
//! sealing uses ([`super::stream::MAX_WINDOW_LOG`]), the output file system must have room
//! for the whole output before anything is written, and the output has no name until it
//! verified ([`NewFile`]), so a failed or killed run leaves nothing.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use super::digest::{HashingReader, HashingWriter, StreamDigest};
use crate::fsutil::NewFile;
use crate::manifest::Manifest;

/// The responder's private keys, loaded from an identity file.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// Where they came from and what they are (for "not a recipient" errors).
    about: KeysAbout,
}

/// The identity file and the recipients (type and fingerprint) of the keys it holds.
#[derive(Debug, Clone, Default)]
struct KeysAbout {
    file: String,
    /// `x25519 SHA256:...` per age key; empty for an SSH key (see `ssh`).
    fingerprints: Vec<String>,
    ssh: bool,
}

/// Why opening failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The identity file is unusable.
    #[error(
        "cannot use identity file {path}: {why} (expected an age identity file from age-keygen, or an unencrypted OpenSSH ed25519/RSA private key)"
    )]
    Identity {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The blob is not age data, or none of the identities opens it.
    #[error("cannot decrypt the blob: {0}")]
    Decrypt(#[source] age::DecryptError),
    /// None of the keys given is a recipient of the record.
    #[error(
        "no key in {file} opens record {id} ({source}): it was sealed to {sealed_to}; {file} holds {given}\nopen it with the identity file of one of those recipients (`ckvault show {id}` lists them)"
    )]
    NotARecipient {
        /// The record.
        id: String,
        /// The identity file.
        file: String,
        /// The manifest's recipients (type and fingerprint), bounded.
        sealed_to: String,
        /// The keys given (type and fingerprint), or how to see an SSH key's fingerprint.
        given: String,
        /// age's error.
        #[source]
        source: age::DecryptError,
    },
    /// The blob ended early or was altered (age's authenticated chunks caught it).
    #[error("the sealed blob is truncated or corrupt: {0}")]
    Corrupt(io::Error),
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The output path.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The stored bytes do not match the manifest.
    #[error(
        "sealed blob digest mismatch: manifest says sha256 {expected} ({expected_size} bytes), blob is {actual} ({actual_size} bytes)"
    )]
    SealedMismatch {
        /// From the manifest.
        expected: String,
        /// From the manifest.
        expected_size: u64,
        /// Measured.
        actual: String,
        /// Measured.
        actual_size: u64,
    },
    /// The plaintext does not match the manifest.
    #[error(
        "plaintext digest mismatch: manifest says sha256 {expected} ({expected_size} bytes), decrypted output is {actual} ({actual_size} bytes); output discarded"
    )]
    PlaintextMismatch {
        /// From the manifest.
        expected: String,
        /// From the manifest.
        expected_size: u64,
        /// Measured.
        actual: String,
        /// Measured.
        actual_size: u64,
    },
    /// The manifest names a compression this version cannot undo.
    #[error("manifest names unknown compression {0:?}")]
    UnknownCompression(String),
    /// The blob's length is not the signed manifest's: it is not this record's blob.
    #[error(
        "the blob is {actual} bytes but the manifest says {expected}: it is not this record's sealed blob; nothing was read"
    )]
    BlobSize {
        /// From the manifest.
        expected: u64,
        /// The blob's length.
        actual: u64,
    },
    /// Decryption produced more than the manifest's plaintext size.
    #[error(
        "the decrypted output passed the manifest's {expected} bytes: the blob holds something else than this record; stopped there, output discarded"
    )]
    PlaintextTooLong {
        /// From the manifest.
        expected: u64,
    },
}

impl Identities {
    /// Loads identities from an age identity file or an unencrypted SSH private key.
    pub fn from_file(path: &Path) -> Result<Self, OpenError> {
        let err = |why: String| OpenError::Identity {
            path: path.display().to_string(),
            why,
        };
        let mut bytes = Vec::new();
        crate::fsutil::open_regular_nofollow(path)
            .map_err(|e| err(e.to_string()))?
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| err(e.to_string()))?;
        if let Ok(file) = age::IdentityFile::from_buffer(&bytes[..])
            && let Ok(ids) = file.into_identities()
            && !ids.is_empty()
        {
            // The recipients of the native keys, for errors (an identity file holds
            // `AGE-SECRET-KEY-1...` lines and comments).
            let fingerprints = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| l.trim().parse::<age::x25519::Identity>().ok())
                .filter_map(|id| {
                    id.to_public()
                        .to_string()
                        .parse::<crate::recipient::Recipient>()
                        .ok()
                })
                .map(|r| format!("{} {}", r.kind(), r.fingerprint()))
                .collect();
            return Ok(Self {
                keys: ids,
                about: KeysAbout {
                    file: path.display().to_string(),
                    fingerprints,
                    ssh: false,
                },
            });
        }
        match age::ssh::Identity::from_buffer(&bytes[..], Some(path.display().to_string())) {
            Ok(age::ssh::Identity::Unsupported(k)) => Err(err(format!("unsupported SSH key: {k:?}"))),
            Ok(age::ssh::Identity::Encrypted(_)) => Err(err(
                "encrypted SSH keys are not supported here; decrypt with `age -d -i KEY` and `zstd -d`".into(),
            )),
            Ok(id @ age::ssh::Identity::Unencrypted(_)) => Ok(Self {
                keys: vec![Box::new(id)],
                about: KeysAbout {
                    file: path.display().to_string(),
                    fingerprints: Vec::new(),
                    ssh: true,
                },
            }),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// `e`, or, when none of these keys opens the record of `manifest`, an error naming
    /// the record's recipients and these keys.
    fn decrypt_error(&self, manifest: &Manifest, e: age::DecryptError) -> OpenError {
        if !matches!(e, age::DecryptError::NoMatchingKeys) {
            return OpenError::Decrypt(e);
        }
        // The manifest is signed, but its list is still bounded before it is shown.
        const SHOWN: usize = 8;
        let recipients = &manifest.sealed.recipients;
        let mut sealed_to: Vec<String> = recipients
            .iter()
            .take(SHOWN)
            .map(|r| {
                crate::inspect::escape_control(&format!(
                    "{} {}",
                    r.kind.chars().take(32).collect::<String>(),
                    r.fingerprint.chars().take(80).collect::<String>()
                ))
                .into_owned()
            })
            .collect();
        if recipients.len() > SHOWN {
            sealed_to.push(format!("and {} more", recipients.len() - SHOWN));
        }
        let sealed_to = if sealed_to.is_empty() {
            "no recipient the manifest names".to_owned()
        } else {
            sealed_to.join(", ")
        };
        let given = if self.about.ssh {
            "an SSH key (`ssh-keygen -lf KEY` prints its SHA256 fingerprint)".to_owned()
        } else if self.about.fingerprints.is_empty() {
            "no key whose fingerprint is known".to_owned()
        } else {
            self.about.fingerprints.join(", ")
        };
        OpenError::NotARecipient {
            id: manifest.id.to_string(),
            file: self.about.file.clone(),
            sealed_to,
            given,
            source: e,
        }
    }
}

/// Refuses a blob whose length (as the file system says) is not the manifest's sealed size,
/// before anything is read from it.
pub fn check_blob_len(manifest: &Manifest, len: u64) -> Result<(), OpenError> {
    if len != manifest.sealed.size {
        return Err(OpenError::BlobSize {
            expected: manifest.sealed.size,
            actual: len,
        });
    }
    Ok(())
}

/// Decrypts (and decompresses) `blob` into `out`, returning the digests of the sealed input
/// and of the plaintext output. `manifest` bounds the work: no more than its sealed size is
/// read ([`OpenError::SealedMismatch`] past it), no more than its plaintext size is written
/// ([`OpenError::PlaintextTooLong`] the moment the output would pass it), and its
/// `sealed.compression` says whether to decompress. The caller compares the digests.
pub fn open_stream<R: Read, W: Write>(
    blob: R,
    identities: &Identities,
    manifest: &Manifest,
    out: W,
) -> Result<(StreamDigest, StreamDigest, W), OpenError> {
    let sealed_limit = manifest.sealed.size;
    // One byte over the signed size is enough to know the blob is longer than signed.
    let mut sealed = HashingReader::new(blob.take(sealed_limit.saturating_add(1)));
    let mut plain = HashingWriter::new(out);
    let decrypted = decrypt_into(&mut sealed, identities, manifest, &mut plain);
    if sealed.size() > sealed_limit {
        return Err(sealed_mismatch(manifest, sealed.finish()));
    }
    decrypted?;
    let (plain_digest, out) = plain.finish().map_err(|e| OpenError::Output {
        path: "output".into(),
        source: e,
    })?;
    Ok((sealed.finish(), plain_digest, out))
}

/// The blob's bytes (`actual`) are not the ones `manifest` signed.
fn sealed_mismatch(manifest: &Manifest, actual: StreamDigest) -> OpenError {
    OpenError::SealedMismatch {
        expected: manifest.sealed.sha256.clone(),
        expected_size: manifest.sealed.size,
        actual: actual.sha256,
        actual_size: actual.size,
    }
}

/// age, then zstd when the manifest says so, into `plain`, bounded by the manifest's
/// plaintext size; then whatever follows the age payload is read too (bounded by the
/// caller), so the sealed digest covers the whole blob.
fn decrypt_into<R: Read, W: Write>(
    sealed: &mut R,
    identities: &Identities,
    manifest: &Manifest,
    plain: &mut W,
) -> Result<(), OpenError> {
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, &mut *sealed))
        .map_err(OpenError::Decrypt)?;
    let reader = decryptor
        .decrypt(
            identities
                .keys
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| identities.decrypt_error(manifest, e))?;
    let limit = manifest.plaintext.size;
    match manifest.sealed.compression.as_str() {
        "zstd" => {
            let mut z = zstd::stream::read::Decoder::new(reader).map_err(OpenError::Corrupt)?;
            z.window_log_max(super::stream::MAX_WINDOW_LOG)
                .map_err(OpenError::Corrupt)?;
            copy_bounded(&mut z, plain, limit)?;
        }
        "none" => {
            let mut r = reader;
            copy_bounded(&mut r, plain, limit)?;
        }
        other => return Err(OpenError::UnknownCompression(other.to_owned())),
    }
    io::copy(sealed, &mut io::sink()).map_err(OpenError::Corrupt)?;
    Ok(())
}

/// Copies `from` into `to` until `from` ends; fails with [`OpenError::PlaintextTooLong`]
/// before writing a byte past `limit`. Read errors are the blob's (corrupt), write errors
/// the output's.
fn copy_bounded<R: Read + ?Sized, W: Write + ?Sized>(
    from: &mut R,
    to: &mut W,
    limit: u64,
) -> Result<u64, OpenError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OpenError::Corrupt(e)),
        };
        done = done.saturating_add(n as u64);
        if done > limit {
            return Err(OpenError::PlaintextTooLong { expected: limit });
        }
        to.write_all(buf.get(..n).unwrap_or_default())
            .map_err(|source| OpenError::Output {
                path: "output".into(),
                source,
            })?;
    }
}

/// Starts the output `out_path` (nameless until committed) once it is known to fit.
fn new_output(out_path: &Path, needed: u64) -> Result<NewFile, OpenError> {
    let out_err = |source| OpenError::Output {
        path: out_path.display().to_string(),
        source,
    };
    let mut out = NewFile::create(out_path).map_err(out_err)?;
    out.ensure_room(needed).map_err(out_err)?;
    Ok(out)
}

/// Opens a sealed blob described by `manifest` into the new file `out_path`, verifying the
/// sealed and plaintext digests. The output appears only if both match. `blob_len` is the
/// blob's length as the file system (or the server) says: one that is not the manifest's is
/// refused before anything is read or written.
pub fn open_to_file<R: Read>(
    blob: R,
    blob_len: u64,
    manifest: &Manifest,
    identities: &Identities,
    out_path: &Path,
) -> Result<StreamDigest, OpenError> {
    check_blob_len(manifest, blob_len)?;
    let out_err = |source| OpenError::Output {
        path: out_path.display().to_string(),
        source,
    };
    let mut tmp = new_output(out_path, manifest.plaintext.size)?;
    let file = tmp.file().map_err(out_err)?;
    let (sealed, plain, _) = open_stream(
        blob,
        identities,
        manifest,
        io::BufWriter::with_capacity(1 << 20, file),
    )
    .map_err(|e| match e {
        OpenError::Output { source, .. } => out_err(source),
        e => e,
    })?;
    if sealed.sha256 != manifest.sealed.sha256 || sealed.size != manifest.sealed.size {
        return Err(sealed_mismatch(manifest, sealed));
    }
    if plain.sha256 != manifest.plaintext.sha256 || plain.size != manifest.plaintext.size {
        return Err(OpenError::PlaintextMismatch {
            expected: manifest.plaintext.sha256.clone(),
            expected_size: manifest.plaintext.size,
            actual: plain.sha256,
            actual_size: plain.size,
        });
    }
    tmp.commit(out_path).map_err(out_err)?;
    Ok(plain)
}

/// Copies a sealed blob as it is into the new file `out_path` (`ckvault export`), verifying
/// its digest against `manifest`: a blob whose length (`blob_len`) is not the manifest's is
/// refused before it is read, no more than the manifest's size is ever copied, and the
/// output appears only if the digest matches.
pub fn copy_sealed_to_file<R: Read>(
    blob: R,
    blob_len: u64,
    manifest: &Manifest,
    out_path: &Path,
) -> Result<StreamDigest, OpenError> {
    check_blob_len(manifest, blob_len)?;
    let out_err = |source| OpenError::Output {
        path: out_path.display().to_string(),
        source,
    };
    let mut tmp = new_output(out_path, manifest.sealed.size)?;
    let file = tmp.file().map_err(out_err)?;
    let mut sealed = HashingReader::new(blob);
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let copied = copy_bounded(&mut sealed, &mut out, manifest.sealed.size);
    let digest = sealed.finish();
    let mismatch = |digest: StreamDigest| sealed_mismatch(manifest, digest);
    match copied {
        Ok(_) => {}
        Err(OpenError::PlaintextTooLong { .. }) => return Err(mismatch(digest)),
        Err(OpenError::Output { source, .. }) => return Err(out_err(source)),
        Err(e) => return Err(e),
    }
    io::Write::flush(&mut out).map_err(out_err)?;
    drop(out);
    if digest.sha256 != manifest.sealed.sha256 || digest.size != manifest.sealed.size {
        return Err(mismatch(digest));
    }
    tmp.commit(out_path).map_err(out_err)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Summary;
    use crate::manifest::{
        InspectionRecord, InspectionStatus, Plaintext, RecordId, SCHEMA_V1, Sealed, Source,
    };
    use crate::seal::stream::{Compression, MAX_WINDOW_LOG, seal_stream};
    use age::secrecy::ExposeSecret;

    struct Key {
        identities: Identities,
        recipient: crate::recipient::Recipient,
    }

    fn key() -> Key {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string().parse().unwrap();
        let parsed: age::x25519::Identity = id.to_string().expose_secret().parse().unwrap();
        Key {
            identities: Identities {
                keys: vec![Box::new(parsed)],
                about: KeysAbout::default(),
            },
            recipient,
        }
    }

    /// Seals `data` (zstd at `level`, size unknown as from a pipe) and returns the blob
    /// with a manifest describing it.
    fn sealed(key: &Key, data: &[u8], level: i32, threads: u32) -> (Vec<u8>, Manifest) {
        let (d, blob) = seal_stream(
            data,
            Vec::new(),
            std::slice::from_ref(&key.recipient),
            Compression::Zstd { level, threads },
            None,
            &|_| {},
        )
        .unwrap();
        let manifest = Manifest {
            schema: SCHEMA_V1.into(),
            id: RecordId::generate(),
            namespace: None,
            pod: None,
            container: None,
            identity_invalid: Vec::new(),
            container_id: None,
            image: None,
            engine: None,
            runtime: None,
            checkpointed_at: None,
            sealed_at: "2026-01-01T00:00:00Z".into(),
            node: None,
            source: Source {
                kind: crate::manifest::SourceKind::Cli,
                path: None,
            },
            trigger: None,
            plaintext: Plaintext {
                sha256: d.plaintext.sha256,
                size: d.plaintext.size,
                format: "tar".into(),
            },
            sealed: Sealed {
                sha256: d.sealed.sha256,
                size: d.sealed.size,
                compression: "zstd".into(),
                encryption: "age-v1".into(),
                recipients: vec![],
                blob: "x.age".into(),
            },
            inspection: InspectionRecord {
                status: InspectionStatus::Ok,
                code: None,
                reason: None,
                archive_identity: None,
                criu_images: vec![],
                processes: vec![],
            },
            summary: Summary::default(),
            signature: None,
        };
        (blob, manifest)
    }

    /// Counts what is written, keeps nothing.
    #[derive(Debug, Default)]
    struct Counter(u64);
    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_honest_blob_opens_and_its_digests_match() {
        let k = key();
        let data = vec![7u8; 100_000];
        let (blob, m) = sealed(&k, &data, -1, 0);
        let (s, p, out) = open_stream(&blob[..], &k.identities, &m, Vec::new()).unwrap();
        assert_eq!(out, data);
        assert_eq!((s.sha256, s.size), (m.sealed.sha256, m.sealed.size));
        assert_eq!((p.sha256, p.size), (m.plaintext.sha256, m.plaintext.size));
    }

    #[test]
    fn a_swapped_blob_stops_at_the_signed_plaintext_size() {
        let k = key();
        let (_, honest) = sealed(&k, b"a small honest archive", -1, 0);
        // 64 MiB of zeros compress to a few KiB: a bomb in place of the record's blob,
        // with a manifest whose sealed size it matches (the attacker pads to it).
        let (bomb, _) = sealed(&k, &vec![0u8; 64 << 20], 3, 0);
        let mut m = honest.clone();
        m.sealed.size = bomb.len() as u64;
        let mut out = Counter::default();
        let err = open_stream(&bomb[..], &k.identities, &m, &mut out).unwrap_err();
        assert!(
            matches!(err, OpenError::PlaintextTooLong { expected } if expected == m.plaintext.size),
            "{err}"
        );
        assert!(out.0 <= m.plaintext.size, "wrote {} bytes", out.0);
    }

    #[test]
    fn no_more_than_the_signed_sealed_size_is_read() {
        let k = key();
        let (blob, m) = sealed(&k, &[1u8; 5000], -1, 0);
        let mut longer = blob.clone();
        longer.extend(std::iter::repeat_n(0u8, 10 << 20));
        struct Reads<'a>(&'a [u8], u64);
        impl Read for Reads<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let mut r = Reads(&longer, 0);
        let err = open_stream(&mut r, &k.identities, &m, Counter::default()).unwrap_err();
        assert!(matches!(err, OpenError::SealedMismatch { .. }), "{err}");
        assert!(r.1 <= m.sealed.size + (1 << 20), "read {} bytes", r.1);
        assert!(matches!(
            check_blob_len(&m, longer.len() as u64),
            Err(OpenError::BlobSize { .. })
        ));
        check_blob_len(&m, blob.len() as u64).unwrap();
    }

    #[test]
    fn sealing_stays_within_the_window_opening_allows() {
        let k = key();
        // Level 19 with an unknown size takes the largest window sealing uses, single- and
        // multi-threaded; opening accepts it, and one step smaller would refuse it.
        for threads in [0, 2] {
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let (blob, m) = sealed(&k, &data, 19, threads);
            open_stream(&blob[..], &k.identities, &m, Counter::default()).unwrap();
            let mut frame = Vec::new();
            let dec = age::Decryptor::new(&blob[..]).unwrap();
            dec.decrypt(
                k.identities
                    .keys
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .unwrap()
            .read_to_end(&mut frame)
            .unwrap();
            let mut z = zstd::stream::read::Decoder::new(&frame[..]).unwrap();
            z.window_log_max(MAX_WINDOW_LOG - 1).unwrap();
            assert!(
                io::copy(&mut z, &mut io::sink()).is_err(),
                "threads {threads}"
            );
        }
        // A frame asking for a larger window is refused before it is decompressed.
        let mut big = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        big.window_log(MAX_WINDOW_LOG + 1).unwrap();
        big.write_all(&[0u8; 1000]).unwrap();
        let frame = big.finish().unwrap();
        let mut blob = Vec::new();
        let mut w = age::Encryptor::with_recipients(std::iter::once(k.recipient.as_age()))
            .unwrap()
            .wrap_output(&mut blob)
            .unwrap();
        w.write_all(&frame).unwrap();
        w.finish().unwrap();
        let mut m = sealed(&k, &[0u8; 1000], -1, 0).1;
        m.sealed.size = blob.len() as u64;
        let err = open_stream(&blob[..], &k.identities, &m, Counter::default()).unwrap_err();
        assert!(matches!(err, OpenError::Corrupt(_)), "{err}");
    }
}
