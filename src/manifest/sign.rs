//! Manifest signatures: canonical JSON (object keys sorted, no whitespace) of the manifest
//! without its `signature` field, signed with the vault's Ed25519 key.
//!
//! Keys are stored as PKCS#8 / SPKI PEM, so a record can be checked offline with standard
//! tools too: `ckvault verify` or, for the manifest alone, OpenSSL's `pkeyutl -verify`
//! over the canonical bytes.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Manifest, ManifestError};

/// The signature block of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Always `ed25519`.
    pub alg: String,
    /// Fingerprint of the signing key (`SHA256:` + base64 of its SPKI DER).
    pub key_id: String,
    /// Base64 of the 64-byte signature.
    pub value: String,
}

/// The vault's signing key (secret; lives in the store's `keys/` directory, mode 0600).
pub struct SigningKey(ed25519_dalek::SigningKey);

/// The vault's public key, for offline verification.
#[derive(Clone, Debug)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

/// Errors loading or creating keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a PEM Ed25519 key.
    #[error("{path} is not a PEM-encoded Ed25519 {what} key: {detail}")]
    Format {
        /// The key file.
        path: String,
        /// `private` or `public`.
        what: &'static str,
        /// Parser detail.
        detail: String,
    },
    /// The system random generator failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(#[source] getrandom::Error),
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(KeyError::Random)?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// PKCS#8 PEM text of the secret key.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_pkcs8_pem(Default::default())
            .map(|z| z.to_string())
            .map_err(|e| KeyError::Format {
                path: "<memory>".into(),
                what: "private",
                detail: e.to_string(),
            })
    }

    /// Parses PKCS#8 PEM text.
    pub fn from_pem(pem: &str, path: &Path) -> Result<Self, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| KeyError::Format {
                path: path.display().to_string(),
                what: "private",
                detail: e.to_string(),
            })
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Signs arbitrary bytes; returns the base64 signature.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        STANDARD.encode(self.0.sign(message).to_bytes())
    }

    /// Signs `manifest` in place (replacing any previous signature).
    pub fn sign(&self, manifest: &mut Manifest) -> Result<(), ManifestError> {
        // A manifest no ckvault could read back is not signed.
        manifest.check_schema()?;
        manifest.signature = None;
        let bytes = canonical_bytes(manifest)?;
        let sig = self.0.sign(&bytes);
        manifest.signature = Some(Signature {
            alg: "ed25519".into(),
            key_id: self.verifying_key().key_id(),
            value: STANDARD.encode(sig.to_bytes()),
        });
        Ok(())
    }
}

impl VerifyingKey {
    /// SPKI PEM text of the public key.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(Default::default())
            .map_err(|e| KeyError::Format {
                path: "<memory>".into(),
                what: "public",
                detail: e.to_string(),
            })
    }

    /// Parses SPKI PEM text.
    pub fn from_pem(pem: &str, path: &Path) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|e| KeyError::Format {
                path: path.display().to_string(),
                what: "public",
                detail: e.to_string(),
            })
    }

    /// `SHA256:` + unpadded base64 of the SHA-256 of the SPKI DER encoding.
    pub fn key_id(&self) -> String {
        let der = self
            .0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_else(|_| self.0.as_bytes().to_vec());
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(der)))
    }

    /// Checks a base64 signature made by [`SigningKey::sign_bytes`].
    pub fn verify_bytes(&self, message: &[u8], sig_b64: &str) -> bool {
        let Ok(raw) = STANDARD.decode(sig_b64.as_bytes()) else {
            return false;
        };
        let Ok(raw): Result<[u8; 64], _> = raw.try_into() else {
            return false;
        };
        self.0
            .verify(message, &ed25519_dalek::Signature::from_bytes(&raw))
            .is_ok()
    }

    /// Checks the manifest's signature against this key.
    pub fn verify(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        let sig = manifest.signature.as_ref().ok_or(ManifestError::Unsigned)?;
        if sig.alg != "ed25519" {
            return Err(ManifestError::UnsupportedAlgorithm {
                alg: sig.alg.clone(),
            });
        }
        let raw = STANDARD
            .decode(sig.value.as_bytes())
            .map_err(ManifestError::SignatureEncoding)?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| ManifestError::SignatureLength)?;
        let mut unsigned = manifest.clone();
        unsigned.signature = None;
        let bytes = canonical_bytes(&unsigned)?;
        self.0
            .verify(&bytes, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| ManifestError::BadSignature {
                key_id: self.key_id(),
            })
    }
}

/// The bytes that are signed: the manifest as JSON with object keys sorted recursively,
/// no insignificant whitespace, and no `signature` member.
pub fn canonical_bytes(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    let mut value = serde_json::to_value(manifest).map_err(ManifestError::Json)?;
    if let Value::Object(map) = &mut value {
        map.remove("signature");
    }
    canonical_json(&value).map_err(ManifestError::Json)
}

/// JSON with object keys sorted recursively and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(4096);
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Summary;
    use crate::manifest::*;

    fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA_V1.into(),
            id: RecordId::generate(),
            namespace: Some("forensics".into()),
            pod: Some("web".into()),
            container: Some("app".into()),
            identity_invalid: Vec::new(),
            container_id: None,
            image: Some("registry/app:1".into()),
            engine: Some("cri-o".into()),
            runtime: Some("runc".into()),
            checkpointed_at: None,
            sealed_at: "2026-11-28T00:00:00Z".into(),
            node: Some("node-a".into()),
            source: Source {
                kind: crate::manifest::SourceKind::Cli,
                path: None,
            },
            trigger: None,
            plaintext: Plaintext {
                sha256: "00".repeat(32),
                size: 10,
                format: "tar".into(),
            },
            sealed: Sealed {
                sha256: "11".repeat(32),
                size: 20,
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
        }
    }

    #[test]
    fn signed_manifest_verifies_and_edits_do_not() {
        let key = SigningKey::generate().unwrap();
        let mut m = sample();
        key.sign(&mut m).unwrap();
        let vk = key.verifying_key();
        vk.verify(&m).unwrap();
        // survives a round trip through the on-disk form
        let back = Manifest::from_json(&m.to_json_pretty().unwrap()).unwrap();
        vk.verify(&back).unwrap();
        let mut edited = back.clone();
        edited.namespace = Some("kube-system".into());
        assert!(matches!(
            vk.verify(&edited),
            Err(ManifestError::BadSignature { .. })
        ));
        let other = SigningKey::generate().unwrap().verifying_key();
        assert!(other.verify(&back).is_err());
        let mut unsigned = back;
        unsigned.signature = None;
        assert!(matches!(vk.verify(&unsigned), Err(ManifestError::Unsigned)));
    }

    #[test]
    fn records_signed_before_identity_invalid_existed_still_verify() {
        // A manifest as the previous version wrote it: no `identity_invalid` key at all,
        // signed over the canonical JSON of exactly those keys.
        let key = SigningKey::generate().unwrap();
        let vk = key.verifying_key();
        let Value::Object(mut map) = serde_json::to_value(sample()).unwrap() else {
            panic!("a manifest is an object")
        };
        assert!(
            map.remove("identity_invalid").is_none(),
            "an empty flag is written"
        );
        map.remove("signature");
        let sig = key.sign_bytes(&canonical_json(&Value::Object(map.clone())).unwrap());
        map.insert(
            "signature".into(),
            serde_json::json!({"alg": "ed25519", "key_id": vk.key_id(), "value": sig}),
        );
        let parsed = Manifest::from_json(&serde_json::to_vec(&map).unwrap()).unwrap();
        assert!(parsed.identity_invalid.is_empty());
        vk.verify(&parsed).unwrap();
        // A flagged record is signed with its flag: dropping the flag breaks the signature.
        let mut flagged = sample();
        flagged.namespace = Some("Ns\u{1b}]2;x\u{7}".into());
        flagged.identity_invalid = vec!["namespace".into()];
        key.sign(&mut flagged).unwrap();
        let back = Manifest::from_json(&flagged.to_json_pretty().unwrap()).unwrap();
        assert_eq!(back.identity_invalid, ["namespace"]);
        vk.verify(&back).unwrap();
        let mut unflagged = back;
        unflagged.identity_invalid.clear();
        assert!(matches!(
            vk.verify(&unflagged),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    fn triggered() -> Manifest {
        let mut m = sample();
        m.trigger = Some(Trigger {
            rule: Some("oom-capture".into()),
            alert: Some("KubePodCrashLooping".into()),
            fingerprint: Some("d0a1b2c3e4f50617".into()),
            priority: Some("critical".into()),
            summary: Some("pod forensics/web is restarting".into()),
            ..Trigger::new(TriggerKind::Alertmanager, "user:am")
        });
        m.schema = Manifest::schema_for(m.trigger.as_ref()).into();
        m
    }

    #[test]
    fn a_v2_record_round_trips_and_its_signature_covers_the_trigger() {
        let key = SigningKey::generate().unwrap();
        let vk = key.verifying_key();
        let mut m = triggered();
        assert_eq!(m.schema, SCHEMA_V2);
        key.sign(&mut m).unwrap();
        let text = m.to_json_pretty().unwrap();
        let back = Manifest::from_json(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_json_pretty().unwrap(), text, "byte for byte");
        vk.verify(&back).unwrap();
        // Every field of the trigger is signed: an edit of any, or dropping it, fails.
        let edits: [fn(&mut Trigger); 8] = [
            |t| t.kind = TriggerKind::Falco,
            |t| t.rule = None,
            |t| t.alert = Some("Other".into()),
            |t| t.fingerprint = Some("ffff".into()),
            |t| t.priority = Some("info".into()),
            |t| t.summary = None,
            |t| t.received_at = "2020-01-01T00:00:00Z".into(),
            |t| t.requested_by = "user:mallory".into(),
        ];
        for edit in edits {
            let mut edited = back.clone();
            edit(edited.trigger.as_mut().unwrap());
            assert!(matches!(
                vk.verify(&edited),
                Err(ManifestError::BadSignature { .. })
            ));
        }
        let mut dropped = back.clone();
        dropped.trigger = None;
        assert!(matches!(
            vk.verify(&dropped),
            Err(ManifestError::BadSignature { .. })
        ));
        // A record without a trigger is written as v1, with no `trigger` key at all.
        let mut plain = sample();
        assert_eq!(Manifest::schema_for(plain.trigger.as_ref()), SCHEMA_V1);
        key.sign(&mut plain).unwrap();
        let text = String::from_utf8(plain.to_json_pretty().unwrap()).unwrap();
        assert!(!text.contains("trigger"), "{text}");
        assert!(text.contains(SCHEMA_V1));
    }

    #[test]
    fn a_v1_manifest_with_a_trigger_is_neither_signed_nor_read() {
        let key = SigningKey::generate().unwrap();
        let mut m = triggered();
        m.schema = SCHEMA_V1.into();
        assert!(matches!(
            key.sign(&mut m),
            Err(ManifestError::FieldNotInSchema {
                field: "trigger",
                ..
            })
        ));
        assert!(m.signature.is_none());
        // Written anyway (signed as v2, then relabelled): refused when read, before the
        // signature is looked at.
        let mut v2 = triggered();
        key.sign(&mut v2).unwrap();
        v2.schema = SCHEMA_V1.into();
        let err = Manifest::from_json(&v2.to_json_pretty().unwrap()).unwrap_err();
        assert!(
            matches!(err, ManifestError::FieldNotInSchema { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("altered"), "{err}");
        // A schema this version does not know is still a newer ckvault's record.
        let mut v3 = triggered();
        v3.schema = "ckvault.dev/manifest/v3".into();
        let err = Manifest::from_json(&v3.to_json_pretty().unwrap()).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Schema(s) if s.ends_with("/v3")),
            "{err}"
        );
        assert!(matches!(key.sign(&mut v3), Err(ManifestError::Schema(_))));
    }

    #[test]
    fn canonical_form_sorts_keys_and_drops_the_signature() {
        let key = SigningKey::generate().unwrap();
        let mut m = sample();
        let before = canonical_bytes(&m).unwrap();
        key.sign(&mut m).unwrap();
        assert_eq!(canonical_bytes(&m).unwrap(), before);
        let text = String::from_utf8(before).unwrap();
        assert!(text.starts_with("{\"checkpointed_at\":null,\"container\":\"app\""));
        assert!(!text.contains("\": ") && !text.contains(", "), "{text}");
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pem().unwrap();
        assert!(pem.contains("BEGIN PRIVATE KEY"));
        let back = SigningKey::from_pem(&pem, Path::new("k")).unwrap();
        assert_eq!(back.verifying_key().key_id(), key.verifying_key().key_id());
        let pub_pem = key.verifying_key().to_pem().unwrap();
        let vk = VerifyingKey::from_pem(&pub_pem, Path::new("p")).unwrap();
        assert_eq!(vk.key_id(), key.verifying_key().key_id());
        assert!(SigningKey::from_pem("garbage", Path::new("k")).is_err());
    }
}
