//! Opening a sealed record: age-decrypt with the responder's identity, zstd-decompress when
//! ckvault compressed it, and verify both SHA-256 digests against the manifest. The output
//! is published only when everything verified; a mismatch or truncation leaves nothing.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use super::digest::{HashingReader, HashingWriter, StreamDigest};
use crate::fsutil::AtomicFile;
use crate::manifest::Manifest;

/// The responder's private keys, loaded from an identity file.
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

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
    Decrypt(String),
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
            return Ok(Self(ids));
        }
        match age::ssh::Identity::from_buffer(&bytes[..], Some(path.display().to_string())) {
            Ok(age::ssh::Identity::Unsupported(k)) => Err(err(format!("unsupported SSH key: {k:?}"))),
            Ok(age::ssh::Identity::Encrypted(_)) => Err(err(
                "encrypted SSH keys are not supported here; decrypt with `age -d -i KEY` and `zstd -d`".into(),
            )),
            Ok(id @ age::ssh::Identity::Unencrypted(_)) => Ok(Self(vec![Box::new(id)])),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// Decrypts (and decompresses) `blob` into `out`, returning the digests of the sealed input
/// and of the plaintext output. `compression` is the manifest's `sealed.compression`.
pub fn open_stream<R: Read, W: Write>(
    blob: R,
    identities: &Identities,
    compression: &str,
    out: W,
) -> Result<(StreamDigest, StreamDigest, W), OpenError> {
    let mut sealed = HashingReader::new(blob);
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, &mut sealed))
        .map_err(|e| OpenError::Decrypt(e.to_string()))?;
    let reader = decryptor
        .decrypt(
            identities
                .0
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity),
        )
        .map_err(|e| OpenError::Decrypt(e.to_string()))?;
    let mut plain = HashingWriter::new(out);
    let copy = match compression {
        "zstd" => {
            let mut z = zstd::stream::read::Decoder::new(reader).map_err(OpenError::Corrupt)?;
            z.window_log_max(31).map_err(OpenError::Corrupt)?;
            io::copy(&mut z, &mut plain)
        }
        "none" => {
            let mut r = reader;
            io::copy(&mut r, &mut plain)
        }
        other => return Err(OpenError::UnknownCompression(other.to_owned())),
    };
    copy.map_err(|e| {
        if e.kind() == io::ErrorKind::WriteZero || e.raw_os_error().is_some() {
            OpenError::Output {
                path: "output".into(),
                source: e,
            }
        } else {
            OpenError::Corrupt(e)
        }
    })?;
    // Drain whatever follows the age payload so the sealed digest covers the whole blob.
    io::copy(&mut sealed, &mut io::sink()).map_err(OpenError::Corrupt)?;
    let (plain_digest, out) = plain.finish().map_err(|e| OpenError::Output {
        path: "output".into(),
        source: e,
    })?;
    Ok((sealed.finish(), plain_digest, out))
}

/// Opens a sealed blob described by `manifest` into the new file `out_path`, verifying the
/// sealed and plaintext digests. The output appears only if both match.
pub fn open_to_file<R: Read>(
    blob: R,
    manifest: &Manifest,
    identities: &Identities,
    out_path: &Path,
) -> Result<StreamDigest, OpenError> {
    let out_err = |source| OpenError::Output {
        path: out_path.display().to_string(),
        source,
    };
    let dir = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out_path
        .file_name()
        .ok_or_else(|| out_err(io::Error::other("output path has no file name")))?;
    if out_path.exists() {
        return Err(out_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "refusing to overwrite an existing file",
        )));
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.partial", std::process::id()));
    let mut tmp = AtomicFile::create(dir.join(tmp_name)).map_err(out_err)?;
    let file = tmp.file().map_err(out_err)?;
    let (sealed, plain, _) = open_stream(
        blob,
        identities,
        &manifest.sealed.compression,
        io::BufWriter::with_capacity(1 << 20, file),
    )?;
    if sealed.sha256 != manifest.sealed.sha256 || sealed.size != manifest.sealed.size {
        return Err(OpenError::SealedMismatch {
            expected: manifest.sealed.sha256.clone(),
            expected_size: manifest.sealed.size,
            actual: sealed.sha256,
            actual_size: sealed.size,
        });
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
