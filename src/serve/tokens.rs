//! Bearer tokens: a TOML file of token *hashes* mapped to a user and groups. The token
//! itself is shown once by `ckvault token add` and never stored.
//!
//! ```toml
//! [[token]]
//! name = "alice"
//! groups = ["responders"]
//! sha256 = "9f86d0..."
//! created = "2026-11-28T10:00:00Z"
//! ```
//! Tokens carry 256 random bits, so a plain SHA-256 is a sufficient verifier; lookups
//! compare every entry in constant time. Names are unique ([`TokenFile::add`] refuses a
//! second token for a name), so [`TokenFile::revoke`] by name removes what was meant. A
//! running server re-reads the file within its reload interval of a change.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::Principal;

/// Prefix of every token, so leaked tokens are recognisable by scanners.
pub(crate) const PREFIX: &str = "ckv_";

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenEntry {
    /// User name the token authenticates as.
    pub name: String,
    /// Groups of that user.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// When it was created.
    #[serde(default)]
    pub created: String,
}

/// The token file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenFile {
    /// Entries.
    #[serde(default)]
    pub token: Vec<TokenEntry>,
}

/// Token file errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// Unreadable or unwritable file.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of a token file: where, and the offending line.
    #[error(
        "token file {0}\n`ckvault token add|revoke` writes this file: fix that line, or restore the file and run again"
    )]
    Syntax(#[source] crate::config::TomlError),
    /// The token file could not be written as TOML.
    #[error("token file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser message.
        message: String,
    },
    /// Randomness failed.
    #[error("cannot get random bytes: {0}")]
    Random(#[source] getrandom::Error),
    /// A token for that name exists.
    #[error(
        "a token for user:{0} exists; revoke it first (`ckvault token revoke {0}`) or choose another name"
    )]
    Duplicate(String),
    /// A token with no group.
    #[error(
        "a token for user:{0} without a group can do only what access.toml grants user:{0}; give it --group G (repeatable), or --no-group if access.toml grants user:{0}"
    )]
    NoGroup(String),
}

impl TokenFile {
    /// Loads a token file (a missing file is an empty one).
    pub(crate) fn load(path: &Path) -> Result<Self, TokenError> {
        match crate::fsutil::read_regular_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| TokenError::Syntax(crate::config::TomlError::new(path, &text, &e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(TokenError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the file atomically with mode 0600.
    pub(crate) fn save(&self, path: &Path) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = toml::to_string_pretty(self).map_err(|e| TokenError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tokens.{}.tmp", std::process::id()));
        let mut f = crate::fsutil::AtomicFile::create(tmp).map_err(io)?;
        std::io::Write::write_all(f.file().map_err(io)?, text.as_bytes()).map_err(io)?;
        f.sync().map_err(io)?;
        std::fs::rename(f.tmp_path(), path).map_err(io)?;
        Ok(())
    }

    /// Creates a token for `name` in `groups` (at least one), records its hash, and
    /// returns the token (show it once). Refuses a name that has a token.
    pub(crate) fn add(&mut self, name: &str, groups: &[String]) -> Result<String, TokenError> {
        if groups.is_empty() {
            return Err(TokenError::NoGroup(name.to_owned()));
        }
        self.add_user_only(name, groups)
    }

    /// As [`Self::add`], also with no group: the token can do what `access.toml` grants
    /// `user:NAME`.
    pub(crate) fn add_user_only(
        &mut self,
        name: &str,
        groups: &[String],
    ) -> Result<String, TokenError> {
        if self.token.iter().any(|t| t.name == name) {
            return Err(TokenError::Duplicate(name.to_owned()));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(TokenError::Random)?;
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        self.token.push(TokenEntry {
            name: name.to_owned(),
            groups: groups.to_vec(),
            sha256: hash(&token),
            created: crate::node::now_rfc3339(),
        });
        Ok(token)
    }

    /// Removes every token of `name` (files written before names were unique may hold
    /// more than one) and returns how many.
    pub(crate) fn revoke(&mut self, name: &str) -> usize {
        let before = self.token.len();
        self.token.retain(|t| t.name != name);
        before - self.token.len()
    }

    /// The principal a presented token belongs to. Every entry is compared, in constant
    /// time, whatever matches.
    pub(crate) fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest = hash(presented);
        let mut found = None;
        for entry in &self.token {
            if bool::from(entry.sha256.as_bytes().ct_eq(digest.as_bytes())) && found.is_none() {
                found = Some(Principal {
                    user: entry.name.clone(),
                    groups: entry.groups.clone(),
                    via: "token",
                });
            }
        }
        found
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_only_themselves_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut f = TokenFile::default();
        let t1 = f.add("alice", &["responders".into()]).unwrap();
        let t2 = f.add_user_only("bob", &[]).unwrap();
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t1) && !text.contains(&t2));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let f = TokenFile::load(&path).unwrap();
        assert_eq!(f.authenticate(&t1).unwrap().user, "alice");
        assert_eq!(f.authenticate(&t2).unwrap().user, "bob");
        assert!(f.authenticate("ckv_wrong").is_none());
        assert!(f.authenticate("").is_none());
    }

    #[test]
    fn names_are_unique_groups_required_and_revoke_removes_a_name() {
        let mut f = TokenFile::default();
        assert!(matches!(f.add("carol", &[]), Err(TokenError::NoGroup(_))));
        let t = f.add("carol", &["responders".into()]).unwrap();
        assert!(matches!(
            f.add("carol", &["other".into()]),
            Err(TokenError::Duplicate(_))
        ));
        assert!(matches!(
            f.add_user_only("carol", &[]),
            Err(TokenError::Duplicate(_))
        ));
        assert_eq!(f.token.len(), 1);
        assert_eq!(f.revoke("carol"), 1);
        assert!(f.authenticate(&t).is_none());
        assert_eq!(f.revoke("carol"), 0);
    }
}
