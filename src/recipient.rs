//! age recipients: X25519 (`age1...`) and SSH public keys (`ssh-ed25519`, `ssh-rsa`).
//!
//! Only public keys are ever handled here; plugin recipients are refused because a plugin
//! name selects a binary to run (GHSA-4fg7-vxc8-qx5w) and recipients come from config.

use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::manifest::RecipientRef;

/// One public key a sealed blob is encrypted to.
#[derive(Clone)]
pub struct Recipient {
    key: Key,
    fingerprint: String,
}

#[derive(Clone)]
enum Key {
    X25519(age::x25519::Recipient),
    Ssh(age::ssh::Recipient, &'static str),
}

/// Why a recipient string was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecipientError {
    /// Not a recipient this build accepts.
    #[error(
        "{shown:?} is not a usable recipient: {why} (use an `age1...` X25519 key from `age-keygen -y`, or an ssh-ed25519 / ssh-rsa public key line)"
    )]
    Invalid {
        /// The input, shortened.
        shown: String,
        /// What is wrong.
        why: String,
    },
    /// A recipients file could not be read.
    #[error("cannot read recipients file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A recipients file line is bad.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: Box<RecipientError>,
    },
}

impl FromStr for Recipient {
    type Err = RecipientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let shown: String = s.chars().take(40).collect();
        let invalid = |why: &str| RecipientError::Invalid {
            shown: shown.clone(),
            why: why.to_owned(),
        };
        if s.starts_with("age1") {
            // Native keys are bech32 with the human-readable part "age", so their last '1'
            // is the separator at index 3; `age1<plugin>1...` names a plugin binary.
            if s.rfind('1') != Some(3) {
                return Err(invalid(
                    "plugin recipients (age1<plugin>1...) are not accepted",
                ));
            }
            let key = age::x25519::Recipient::from_str(s).map_err(invalid)?;
            let fingerprint = fingerprint_of(key.to_string().as_bytes());
            return Ok(Self {
                key: Key::X25519(key),
                fingerprint,
            });
        }
        let kind = if s.starts_with("ssh-ed25519 ") {
            "ssh-ed25519"
        } else if s.starts_with("ssh-rsa ") {
            "ssh-rsa"
        } else {
            return Err(invalid("unknown recipient type"));
        };
        let key = age::ssh::Recipient::from_str(s).map_err(|e| invalid(&format!("{e:?}")))?;
        let blob = s
            .split_whitespace()
            .nth(1)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or_else(|| invalid("the key is not valid base64"))?;
        Ok(Self {
            key: Key::Ssh(key, kind),
            fingerprint: fingerprint_of(&blob),
        })
    }
}

fn fingerprint_of(bytes: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(bytes)))
}

impl Recipient {
    /// The recipient as the age crate uses it.
    pub fn as_age(&self) -> &dyn age::Recipient {
        match &self.key {
            Key::X25519(k) => k,
            Key::Ssh(k, _) => k,
        }
    }

    /// Type name: `x25519`, `ssh-ed25519` or `ssh-rsa`.
    pub fn kind(&self) -> &'static str {
        match &self.key {
            Key::X25519(_) => "x25519",
            Key::Ssh(_, kind) => kind,
        }
    }

    /// `SHA256:` fingerprint: of the key blob for SSH keys (as `ssh-keygen -l` prints it),
    /// of the `age1...` text for X25519 keys.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The manifest's view of this recipient.
    pub fn to_ref(&self) -> RecipientRef {
        RecipientRef {
            kind: self.kind().to_owned(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Reads a recipients file: one recipient per line; blank lines and `#` comments skipped.
    pub fn read_file(path: &Path) -> Result<Vec<Self>, RecipientError> {
        use std::io::Read;
        let file_err = |source| RecipientError::File {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        crate::fsutil::open_regular(path)
            .map_err(file_err)?
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(file_err)?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(line.parse().map_err(|e| RecipientError::Line {
                path: path.display().to_string(),
                line: i + 1,
                source: Box::new(e),
            })?);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({} {})", self.kind(), self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_x25519_and_refuses_garbage() {
        let id = age::x25519::Identity::generate();
        let r: Recipient = id.to_public().to_string().parse().unwrap();
        assert_eq!(r.kind(), "x25519");
        assert!(r.fingerprint().starts_with("SHA256:"));
        for bad in ["", "age1", "hello", "ssh-ed25519 !!!", "age1yubikey1qwerty"] {
            assert!(bad.parse::<Recipient>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_fingerprint_matches_openssh() {
        // A throwaway key; `ssh-keygen -lf` prints this fingerprint for it.
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN";
        let r: Recipient = line.parse().unwrap();
        assert_eq!(r.kind(), "ssh-ed25519");
        let blob = STANDARD.decode(line.split(' ').nth(1).unwrap()).unwrap();
        assert_eq!(r.fingerprint(), fingerprint_of(&blob));
    }
}
