//! Which public keys may sign for which node name in a shared bucket: a key is trusted for
//! a name, never on its own, so one node cannot sign as another.
//!
//! With `[store] trusted_keys` (pins), the directory holds one subdirectory per node name
//! with the keys pinned to that name, and nothing else is trusted:
//!
//! ```text
//! TRUSTED/node-a/node-a.pem     SPKI PEM; any file name ending .pem
//! TRUSTED/node-b/SHA256.x.pem   several while a key is rotated
//! TRUSTED/server-1/key.pem      replicas too: their audit segments are signed
//! ```
//!
//! A key trusted for several names is placed in each name's directory. A `*.pem` directly
//! in TRUSTED is the old flat layout, which trusted every key for every name: it is refused
//! with the way to migrate ([`KeyTrustError::FlatPins`]).
//!
//! Without pins, the bucket's `keys/NODE/` decides, on first use: a name's first key (the
//! one published earliest, versions included; remembered in the reader's spool under
//! `known-keys/NODE.pem` once seen, so a replaced key is noticed) is its key, and another
//! key is valid for that name only when a rotation statement `keys/NODE/KEYID.rotation.json`
//! introduces it, signed by a key already valid for the name and by the new key itself
//! ([`Rotation`], written by `ckvault key rotate`, which the node audits). Any other key
//! published under the name is refused, and said so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::S3Store;
use super::client::Kind;
use crate::manifest::sign::KeyError;
use crate::manifest::{Manifest, SigningKey, VerifyingKey};
use crate::store::StoreError;

/// Most objects (keys and rotation statements) read under one node's `keys/NODE/`: a
/// rotation a day for more than half a year. More is refused rather than read.
pub const MAX_KEY_OBJECTS: usize = 256;
/// Largest key or rotation object read.
const MAX_KEY_OBJECT_BYTES: usize = 16 << 10;
/// Longest reason kept in a rotation statement.
const MAX_REASON_BYTES: usize = 1024;

/// Why a key is not trusted for a node name (or the trust settings are unusable).
#[derive(Debug, thiserror::Error)]
pub enum KeyTrustError {
    /// `trusted_keys` holds keys directly: the old layout.
    #[error(
        "[store] trusted_keys {dir} holds a key directly ({file}): that flat layout trusted \
         every key for every node name, so one node could sign as another. Pin each key to \
         the node names it belongs to, one directory per name: `mkdir -p {dir}/NODE && mv \
         {dir}/{file} {dir}/NODE/` (NODE as in its manifests' `node` and in the bucket's \
         keys/NODE/); a key used under several names goes in each of their directories"
    )]
    FlatPins {
        /// The pins directory.
        dir: String,
        /// The first key file found directly in it.
        file: String,
    },
    /// The pins directory cannot be read.
    #[error("[store] trusted_keys {dir}: {source}")]
    PinsUnreadable {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// A node name that cannot name a directory or an object.
    #[error("node name {0:?} is not valid (letters, digits, '-', '.', '_'; not starting with '.')")]
    InvalidNode(String),
    /// The key is not pinned for that name.
    #[error(
        "key {key_id} is not pinned for node {node} (its pinned keys are {dir}/{node}/*.pem): \
         what names {node} but is signed by it is refused"
    )]
    NotPinned {
        /// The node name.
        node: String,
        /// The key.
        key_id: String,
        /// The pins directory.
        dir: String,
    },
    /// No key with that ID was published under that name.
    #[error("no key {key_id} for node {node} in the bucket (keys/{node}/)")]
    NotPublished {
        /// The node name.
        node: String,
        /// The key.
        key_id: String,
    },
    /// A key published under a name that already has another first key, not introduced
    /// by a rotation signed by that name's key.
    #[error(
        "key {key_id} published for node {node} is not that node's: {node}'s first key is \
         {first} ({since}) and no rotation signed by a key of {node} introduces {key_id}, so \
         what names {node} but is signed by it is refused (another node or a bucket writer \
         publishing under {node}'s name). A node replaces its own key with `ckvault key \
         rotate`; or pin keys in [store] trusted_keys"
    )]
    NotFirst {
        /// The node name.
        node: String,
        /// The refused key.
        key_id: String,
        /// The name's first key.
        first: String,
        /// Where that was learnt.
        since: String,
    },
    /// Two keys were published under a name at the same instant, with nothing remembered:
    /// which came first cannot be told.
    #[error(
        "node {node} has {} keys published first at the same instant ({}): which is its own \
         cannot be told, none is trusted; pin the right one in [store] trusted_keys",
        keys.len(), keys.join(", ")
    )]
    Ambiguous {
        /// The node name.
        node: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// More objects under `keys/NODE/` than are read.
    #[error("more than {MAX_KEY_OBJECTS} objects under keys/{node}/ in the bucket: refused")]
    TooManyObjects {
        /// The node name.
        node: String,
    },
    /// The spool's memory of first keys cannot be read or written.
    #[error("known node keys {path}: {detail}")]
    Memory {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A key could not be parsed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A node name usable in object keys and directory names.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !name.starts_with('.')
}

/// `keys/NODE/KEYID` (no extension) with the key ID's base64 made path-safe.
pub(crate) fn key_object_stem(node: &str, key_id: &str) -> String {
    let safe: String = key_id
        .chars()
        .map(|c| match c {
            '/' => '_',
            '+' => '-',
            ':' => '.',
            c => c,
        })
        .collect();
    format!("keys/{node}/{safe}")
}

/// Checks the pins directory's layout: readable, and no key directly in it.
pub fn check_pins(dir: &Path) -> Result<(), KeyTrustError> {
    let unreadable = |source| KeyTrustError::PinsUnreadable {
        dir: dir.display().to_string(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(unreadable)?;
    for entry in entries {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("pem") && !path.is_dir() {
            return Err(KeyTrustError::FlatPins {
                dir: dir.display().to_string(),
                file: entry.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// The key `key_id` among those pinned for `node` (`DIR/NODE/*.pem`).
pub fn pinned_key(dir: &Path, node: &str, key_id: &str) -> Result<VerifyingKey, KeyTrustError> {
    if !valid_node_name(node) {
        return Err(KeyTrustError::InvalidNode(node.to_owned()));
    }
    check_pins(dir)?;
    let not_pinned = || KeyTrustError::NotPinned {
        node: node.to_owned(),
        key_id: key_id.to_owned(),
        dir: dir.display().to_string(),
    };
    let node_dir = dir.join(node);
    let entries = match std::fs::read_dir(&node_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_pinned()),
        Err(source) => {
            return Err(KeyTrustError::PinsUnreadable {
                dir: node_dir.display().to_string(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let Ok(bytes) = crate::fsutil::read_regular(&path) else {
            continue;
        };
        if bytes.len() > MAX_KEY_OBJECT_BYTES {
            continue;
        }
        if let Ok(k) = VerifyingKey::from_pem(&String::from_utf8_lossy(&bytes), &path)
            && k.key_id() == key_id
        {
            return Ok(k);
        }
    }
    Err(not_pinned())
}

/// A node's statement, in the bucket at `keys/NODE/NEWKEYID.rotation.json`, that its key
/// `from` hands over to `to`: signed by `from` (the name's consent) and by `to` (its
/// holder's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The node name.
    pub node: String,
    /// Key ID of the key that signs the hand-over (valid for `node` already).
    pub from: String,
    /// Key ID of the new key.
    pub to: String,
    /// The new key (SPKI PEM).
    pub to_pem: String,
    /// When (RFC 3339).
    pub time: String,
    /// Who ran the rotation (`cli:USER@HOST`).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Signature by `from` over [`Rotation::message`].
    pub sig_from: String,
    /// Signature by `to` over the same bytes.
    pub sig_to: String,
}

impl Rotation {
    /// A rotation of `node` from `old` to `new`, signed by both.
    pub fn new(
        node: &str,
        old: &SigningKey,
        new: &SigningKey,
        actor: &str,
        reason: &str,
    ) -> Result<Self, KeyTrustError> {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let mut r = Rotation {
            node: node.to_owned(),
            from: old.verifying_key().key_id(),
            to: new.verifying_key().key_id(),
            to_pem: new.verifying_key().to_pem()?,
            time: crate::node::now_rfc3339(),
            actor: actor.to_owned(),
            reason,
            sig_from: String::new(),
            sig_to: String::new(),
        };
        let msg = r.message();
        r.sig_from = old.sign_bytes(&msg);
        r.sig_to = new.sign_bytes(&msg);
        Ok(r)
    }

    /// The signed bytes: the canonical JSON of every field but the signatures.
    pub fn message(&self) -> Vec<u8> {
        let value = serde_json::json!({
            "type": "ckvault-key-rotation",
            "node": self.node,
            "from": self.from,
            "to": self.to,
            "to_pem": self.to_pem,
            "time": self.time,
            "actor": self.actor,
            "reason": self.reason,
        });
        crate::manifest::sign::canonical_json(&value).unwrap_or_default()
    }

    /// The new key, when the statement is about `node`, its PEM is the key `to` names and
    /// the new key signed it (whether `from` did is checked against the chain).
    fn introduced(&self, node: &str) -> Option<VerifyingKey> {
        if self.node != node {
            return None;
        }
        let key = VerifyingKey::from_pem(&self.to_pem, Path::new("<rotation>")).ok()?;
        (key.key_id() == self.to && key.verify_bytes(&self.message(), &self.sig_to)).then_some(key)
    }
}

/// What the bucket holds under one node's `keys/NODE/`.
#[derive(Debug, Default)]
pub struct Published {
    /// Keys, with the instant each was first published (earliest version).
    pub keys: Vec<(VerifyingKey, (i64, u32))>,
    /// Rotation statements.
    pub rotations: Vec<Rotation>,
}

/// The name's first key as the bucket shows it: among the published keys no well-formed
/// rotation introduces, the one published earliest.
pub fn first_key(node: &str, published: &Published) -> Result<VerifyingKey, KeyTrustError> {
    let introduced: HashSet<String> = published
        .rotations
        .iter()
        .filter_map(|r| r.introduced(node).map(|k| k.key_id()))
        .collect();
    let mut roots: Vec<&(VerifyingKey, (i64, u32))> = published
        .keys
        .iter()
        .filter(|(k, _)| !introduced.contains(&k.key_id()))
        .collect();
    roots.sort_by_key(|(_, t)| *t);
    match roots.as_slice() {
        [] => Err(KeyTrustError::NotPublished {
            node: node.to_owned(),
            key_id: "(any)".into(),
        }),
        [(k, _)] => Ok(k.clone()),
        [(k, t), rest @ ..] => {
            let tied: Vec<String> = rest
                .iter()
                .filter(|(_, t2)| t2 == t)
                .map(|(k2, _)| k2.key_id())
                .collect();
            if tied.is_empty() {
                // The others are refused when something signed by them is read
                // (KeyTrustError::NotFirst, which the index reports).
                Ok(k.clone())
            } else {
                let mut keys = vec![k.key_id()];
                keys.extend(tied);
                Err(KeyTrustError::Ambiguous {
                    node: node.to_owned(),
                    keys,
                })
            }
        }
    }
}

/// Every key valid for `node` from `first` on: `first`, and each key a rotation
/// introduces that a key already valid signed (at most [`MAX_KEY_OBJECTS`] steps).
pub fn valid_keys(
    node: &str,
    first: &VerifyingKey,
    rotations: &[Rotation],
) -> HashMap<String, VerifyingKey> {
    let mut valid = HashMap::from([(first.key_id(), first.clone())]);
    loop {
        let before = valid.len();
        for r in rotations {
            if valid.contains_key(&r.to) {
                continue;
            }
            let Some(from) = valid.get(&r.from) else {
                continue;
            };
            if !from.verify_bytes(&r.message(), &r.sig_from) {
                continue;
            }
            if let Some(new) = r.introduced(node) {
                valid.insert(new.key_id(), new);
            }
        }
        if valid.len() == before || valid.len() > MAX_KEY_OBJECTS {
            return valid;
        }
    }
}

/// What a reader remembers of names' first keys: `DIR/NODE.pem`, written once.
#[derive(Debug, Clone)]
pub struct Memory {
    dir: PathBuf,
}

impl Memory {
    /// The memory in `dir` (a private directory of the reader's spool).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pem"))
    }

    fn err(&self, node: &str, detail: impl std::fmt::Display) -> KeyTrustError {
        KeyTrustError::Memory {
            path: self.path(node).display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// The first key remembered for `node`.
    pub fn get(&self, node: &str) -> Result<Option<VerifyingKey>, KeyTrustError> {
        let path = self.path(node);
        match crate::fsutil::read_regular(&path) {
            Ok(bytes) if bytes.len() <= MAX_KEY_OBJECT_BYTES => Ok(Some(VerifyingKey::from_pem(
                &String::from_utf8_lossy(&bytes),
                &path,
            )?)),
            Ok(_) => Err(self.err(node, "too large")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(node, e)),
        }
    }

    /// Remembers `key` as `node`'s first key unless one is remembered already; returns
    /// the one remembered.
    pub fn remember(&self, node: &str, key: &VerifyingKey) -> Result<VerifyingKey, KeyTrustError> {
        crate::fsutil::ensure_private_dir(&self.dir).map_err(|e| self.err(node, e))?;
        let pem = key.to_pem()?;
        match crate::fsutil::write_atomic(&self.dir, &self.path(node), pem.as_bytes()) {
            Ok(()) => Ok(key.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self
                .get(node)?
                .ok_or_else(|| self.err(node, "vanished while written")),
            Err(e) => Err(self.err(node, e)),
        }
    }
}

impl S3Store {
    /// What the bucket holds under `keys/NODE/`: each key with the instant it was first
    /// published (the earliest version when the store lists versions), and the rotation
    /// statements. Objects that do not parse, or whose name is not their key's, are left
    /// out.
    pub async fn published_keys(&self, node: &str) -> Result<Published, StoreError> {
        if !valid_node_name(node) {
            return Err(KeyTrustError::InvalidNode(node.to_owned()).into());
        }
        let prefix = self.key(&format!("keys/{node}/"));
        let too_many = || StoreError::from(KeyTrustError::TooManyObjects { node: node.into() });
        // Object name -> earliest instant.
        let mut first: BTreeMap<String, (i64, u32)> = BTreeMap::new();
        let mut note = |key: Option<&str>, t: Option<&aws_sdk_s3::primitives::DateTime>| {
            if let (Some(k), Some(t)) = (key, t) {
                let t = (t.secs(), t.subsec_nanos());
                first
                    .entry(k.to_owned())
                    .and_modify(|e| *e = (*e).min(t))
                    .or_insert(t);
            }
        };
        let versions = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(MAX_KEY_OBJECTS as i32 * 4)
            .send()
            .await;
        match versions {
            Ok(out) if !out.is_truncated().unwrap_or(false) => {
                for v in out.versions() {
                    note(v.key(), v.last_modified());
                }
            }
            Ok(_) => return Err(too_many()),
            // Versions not listable here: the current objects' times.
            Err(_) => {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&prefix)
                    .max_keys(MAX_KEY_OBJECTS as i32)
                    .send()
                    .await
                    .map_err(|e| self.err("ListObjectsV2", &prefix, e))?;
                if out.is_truncated().unwrap_or(false) {
                    return Err(too_many());
                }
                for o in out.contents() {
                    note(o.key(), o.last_modified());
                }
            }
        }
        if first.len() > MAX_KEY_OBJECTS {
            return Err(too_many());
        }
        let mut out = Published::default();
        for (name, t) in first {
            let is_pem = name.ends_with(".pem");
            if !is_pem && !name.ends_with(".rotation.json") {
                continue;
            }
            let Some((bytes, _)) = self.get_bytes(&name, MAX_KEY_OBJECT_BYTES).await? else {
                continue; // deleted since listed (a delete marker on top of its versions)
            };
            if is_pem {
                let Ok(key) =
                    VerifyingKey::from_pem(&String::from_utf8_lossy(&bytes), Path::new(&name))
                else {
                    continue; // not a public key: trusted for nothing
                };
                if self.key(&format!("{}.pem", key_object_stem(node, &key.key_id()))) != name {
                    continue; // filed under another key's name: trusted for nothing
                }
                out.keys.push((key, t));
            } else {
                // A statement that does not parse introduces nothing.
                if let Ok(r) = serde_json::from_slice::<Rotation>(&bytes) {
                    out.rotations.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The key `key_id` if it is valid for `node` in the bucket (its first key, or one a
    /// chain of rotations from it introduces).
    pub(crate) async fn bucket_key(
        &self,
        node: &str,
        key_id: &str,
    ) -> Result<VerifyingKey, StoreError> {
        let published = self.published_keys(node).await?;
        let remembered = match &self.memory {
            Some(m) => m.get(node)?,
            None => None,
        };
        let cached = self.roots.lock().ok().and_then(|r| r.get(node).cloned());
        let (first, since) = match remembered.or(cached) {
            Some(k) => (k, "remembered since first seen"),
            None => {
                let k = match first_key(node, &published) {
                    Err(KeyTrustError::NotPublished { .. }) => {
                        return Err(KeyTrustError::NotPublished {
                            node: node.to_owned(),
                            key_id: key_id.to_owned(),
                        }
                        .into());
                    }
                    r => r?,
                };
                let k = match &self.memory {
                    Some(m) => m.remember(node, &k)?,
                    None => k,
                };
                (k, "published first")
            }
        };
        if let Ok(mut roots) = self.roots.lock() {
            roots
                .entry(node.to_owned())
                .or_insert_with(|| first.clone());
        }
        let valid = valid_keys(node, &first, &published.rotations);
        if let Some(k) = valid.get(key_id) {
            return Ok(k.clone());
        }
        let is_published = published.keys.iter().any(|(k, _)| k.key_id() == key_id)
            || published.rotations.iter().any(|r| r.to == key_id);
        if !is_published {
            return Err(KeyTrustError::NotPublished {
                node: node.to_owned(),
                key_id: key_id.to_owned(),
            }
            .into());
        }
        Err(KeyTrustError::NotFirst {
            node: node.to_owned(),
            key_id: key_id.to_owned(),
            first: first.key_id(),
            since: since.to_owned(),
        }
        .into())
    }

    /// Checks, before a node uploads, that its key is valid for its name in this bucket
    /// (pins are the readers' business and are not consulted): a node that takes a name
    /// another node has is told so instead of uploading records nobody will trust.
    pub async fn check_own_key(&self, node: &str, key: &VerifyingKey) -> Result<(), StoreError> {
        if self.trusted.is_some() {
            return Ok(());
        }
        match self.node_key(node, &key.key_id()).await {
            Ok(_) => Ok(()),
            Err(StoreError::KeyTrust(source @ KeyTrustError::NotFirst { .. })) => {
                Err(StoreError::NameTaken {
                    node: node.to_owned(),
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Publishes a rotation of `node`'s key from `old` to `new`: the new key, then the
    /// statement both sign (create-only; retained like records under Object Lock).
    pub async fn publish_rotation(
        &self,
        rotation: &Rotation,
        new: &VerifyingKey,
    ) -> Result<(), StoreError> {
        self.publish_key(&rotation.node, new).await?;
        let name = self.key(&format!(
            "{}.rotation.json",
            key_object_stem(&rotation.node, &rotation.to)
        ));
        let bytes = serde_json::to_vec_pretty(rotation).map_err(|source| StoreError::Encode {
            what: "the rotation statement",
            source,
        })?;
        self.put_bytes(&name, bytes, true, true).await?;
        Ok(())
    }

    /// Publishes this node's public key so servers can verify its manifests and audit.
    pub async fn publish_key(&self, node: &str, key: &VerifyingKey) -> Result<(), StoreError> {
        let name = self.key(&format!("{}.pem", key_object_stem(node, &key.key_id())));
        let pem = key.to_pem()?;
        match self.put_bytes(&name, pem.into_bytes(), true, false).await {
            Ok(_) => Ok(()),
            Err(StoreError::S3 {
                kind: Kind::Precondition,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key `node` signed with under `key_id`, trusted for that name: pinned to it in
    /// `[store] trusted_keys` when set, else valid for it in the bucket (its first key or
    /// one a signed rotation introduced, as this module says). A key trusted for another
    /// name only is refused.
    pub async fn node_key(&self, node: &str, key_id: &str) -> Result<VerifyingKey, StoreError> {
        let cache_key = format!("{node}\n{key_id}");
        if let Ok(cache) = self.keys.lock()
            && let Some(k) = cache.get(&cache_key)
        {
            return Ok(k.clone());
        }
        let key = match &self.trusted {
            Some(dir) => pinned_key(dir, node, key_id)?,
            None => self.bucket_key(node, key_id).await?,
        };
        if key.key_id() != key_id {
            return Err(StoreError::KeyIdMismatch {
                node: node.to_owned(),
                published: key.key_id(),
                wanted: key_id.to_owned(),
            });
        }
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(cache_key, key.clone());
        }
        Ok(key)
    }

    /// Verifies a manifest's signature with its node's key.
    pub async fn verify_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let bad = |source| StoreError::Manifest {
            id: m.id.to_string(),
            source,
        };
        let sig = m
            .signature
            .as_ref()
            .ok_or_else(|| bad(crate::manifest::ManifestError::Unsigned))?;
        let node = m.node.as_deref().unwrap_or("");
        let key = self.node_key(node, &sig.key_id).await?;
        key.verify(m).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_objects_and_node_names_are_path_safe() {
        assert_eq!(
            key_object_stem("node-a", "SHA256:ab/c+d"),
            "keys/node-a/SHA256.ab_c-d"
        );
        assert!(valid_node_name("node-a.example_1"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\nb"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

    #[test]
    fn the_first_key_stays_the_names_key_and_only_a_signed_rotation_adds_one() {
        let (b, a, b2) = (key(), key(), key());
        let pub_ = |k: &SigningKey, t: i64| (k.verifying_key(), (t, 0));
        // node-b published first; node-a's key joined later under the same name.
        let mut published = Published {
            keys: vec![pub_(&a, 20), pub_(&b, 10)],
            rotations: vec![],
        };
        let first = first_key("node-b", &published).unwrap();
        assert_eq!(first.key_id(), b.verifying_key().key_id());
        let valid = valid_keys("node-b", &first, &published.rotations);
        assert!(!valid.contains_key(&a.verifying_key().key_id()));

        // A rotation signed by the attacker's own key for a key of its own: not valid.
        let forged = Rotation::new("node-b", &a, &key(), "cli:x@y", "mine").unwrap();
        // One signed by node-b's key: valid, and so is the chain onwards.
        let good = Rotation::new("node-b", &b, &b2, "cli:root@node-b", "scheduled").unwrap();
        let b3 = key();
        let next = Rotation::new("node-b", &b2, &b3, "cli:root@node-b", "again").unwrap();
        published.rotations = vec![forged.clone(), next, good.clone()];
        published.keys.push(pub_(&b2, 30));
        let valid = valid_keys("node-b", &first, &published.rotations);
        assert!(valid.contains_key(&b2.verifying_key().key_id()));
        assert!(valid.contains_key(&b3.verifying_key().key_id()));
        assert!(!valid.contains_key(&forged.to));
        assert!(!valid.contains_key(&a.verifying_key().key_id()));

        // A statement for another name, or edited, introduces nothing.
        let mut other = Rotation::new("node-c", &b, &key(), "x", "y").unwrap();
        assert!(valid_keys("node-b", &first, std::slice::from_ref(&other)).len() == 1);
        other.node = "node-b".into();
        assert!(valid_keys("node-b", &first, &[other]).len() == 1);
        let mut edited = good;
        edited.reason = "edited".into();
        assert_eq!(valid_keys("node-b", &first, &[edited]).len(), 1);
    }

    #[test]
    fn a_key_cannot_be_taken_out_of_the_first_place_without_its_own_signature() {
        // The attacker claims node-b's key was introduced by a rotation from its own key:
        // the new key's signature is missing, so node-b's key stays first.
        let (b, a) = (key(), key());
        let mut claim = Rotation::new("node-b", &a, &a, "x", "y").unwrap();
        claim.to = b.verifying_key().key_id();
        claim.to_pem = b.verifying_key().to_pem().unwrap();
        let published = Published {
            keys: vec![(a.verifying_key(), (5, 0)), (b.verifying_key(), (10, 0))],
            rotations: vec![claim],
        };
        // a is first by time (it was published first): that is what the bucket shows, and
        // what a reader without memory or pins must go by.
        assert_eq!(
            first_key("node-b", &published).unwrap().key_id(),
            a.verifying_key().key_id()
        );
        let tied = Published {
            keys: vec![(a.verifying_key(), (5, 0)), (b.verifying_key(), (5, 0))],
            rotations: vec![],
        };
        assert!(matches!(
            first_key("node-b", &tied),
            Err(KeyTrustError::Ambiguous { .. })
        ));
    }

    #[test]
    fn pins_are_per_node_name_and_the_flat_layout_is_refused_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key(), key());
        std::fs::create_dir(dir.path().join("node-a")).unwrap();
        std::fs::write(
            dir.path().join("node-a/a.pem"),
            a.verifying_key().to_pem().unwrap(),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("node-b")).unwrap();
        std::fs::write(
            dir.path().join("node-b/b.pem"),
            b.verifying_key().to_pem().unwrap(),
        )
        .unwrap();
        check_pins(dir.path()).unwrap();
        let a_id = a.verifying_key().key_id();
        assert!(pinned_key(dir.path(), "node-a", &a_id).is_ok());
        assert!(matches!(
            pinned_key(dir.path(), "node-b", &a_id),
            Err(KeyTrustError::NotPinned { .. })
        ));
        assert!(matches!(
            pinned_key(dir.path(), "node-c", &a_id),
            Err(KeyTrustError::NotPinned { .. })
        ));
        assert!(matches!(
            pinned_key(dir.path(), "../node-a", &a_id),
            Err(KeyTrustError::InvalidNode(_))
        ));
        std::fs::write(
            dir.path().join("old.pem"),
            a.verifying_key().to_pem().unwrap(),
        )
        .unwrap();
        let e = check_pins(dir.path()).unwrap_err().to_string();
        assert!(e.contains("old.pem") && e.contains("mkdir -p"), "{e}");
        assert!(pinned_key(dir.path(), "node-a", &a_id).is_err());
    }

    #[test]
    fn a_remembered_first_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::new(dir.path().join("known-keys"));
        let (a, b) = (key().verifying_key(), key().verifying_key());
        assert!(m.get("node-b").unwrap().is_none());
        assert_eq!(m.remember("node-b", &b).unwrap().key_id(), b.key_id());
        assert_eq!(m.remember("node-b", &a).unwrap().key_id(), b.key_id());
        assert_eq!(m.get("node-b").unwrap().unwrap().key_id(), b.key_id());
    }
}
