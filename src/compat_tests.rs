//! Compatibility with what earlier versions wrote: tests/fixtures/compat-v1/ is a local store
//! (signed manifests, a legal hold, an audit log with its signed heads) written by the
//! ckvault of the commit before the vocabulary became types (its recipe:
//! tests/fixtures/compat-v1/make.sh). Everything in it still verifies and reads, and
//! serializing the typed values again gives back exactly the bytes on disk: the audit chain
//! and the manifest signatures are computed over that serialization.

use std::path::{Path, PathBuf};

use crate::audit::{AuditEvent, SignedHead};
use crate::manifest::{Manifest, VerifyingKey};
use crate::store::LocalStore;

/// The fixture store, copied into a fresh directory with the modes a store has (git keeps
/// neither 0700 nor 0600), so nothing a test does touches the committed files.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat-v1/store");
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let mut stack = vec![(from, to.clone())];
    while let Some((src, dst)) = stack.pop() {
        std::fs::create_dir(&dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o700)).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            let target = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push((entry.path(), target));
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
    (dir, to)
}

fn public_key(store: &Path) -> VerifyingKey {
    let path = store.join("keys/signing.pub");
    VerifyingKey::from_pem(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

fn manifest_files(store: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(store.join("records"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    out
}

#[test]
fn compat_v1_audit_log_verifies_and_every_event_reserializes_byte_for_byte() {
    let (_dir, store) = fixture();
    let log = store.join("audit.log");
    let verified = crate::audit::verify::verify(&log, &public_key(&store)).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(verified.events, lines.len() as u64);
    assert!(
        lines.len() >= 10,
        "the fixture holds several kinds of event"
    );
    for line in &lines {
        let event: AuditEvent = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&event).unwrap(), *line);
        assert_eq!(crate::audit::event_hash(&event), event.hash);
    }
    let heads = std::fs::read_to_string(store.join("audit.log.heads")).unwrap();
    for line in heads.lines() {
        let head: SignedHead = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&head).unwrap(), line);
    }
    // Read where the store says its log is (the fixture keeps no private key, so the log
    // is read, not opened for appending).
    let opened = LocalStore::open(&store).unwrap();
    let events = crate::audit::read_events(&opened.audit_path(), &|_| true, usize::MAX).unwrap();
    assert_eq!(events.len(), lines.len());
}

#[test]
fn compat_v1_manifests_verify_and_reserialize_byte_for_byte() {
    let (_dir, store) = fixture();
    let key = public_key(&store);
    let files = manifest_files(&store);
    assert!(files.len() >= 4, "{files:?}");
    let mut kinds = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let manifest = Manifest::from_json(&bytes).unwrap();
        assert_eq!(
            String::from_utf8(manifest.to_json_pretty().unwrap()).unwrap(),
            String::from_utf8(bytes).unwrap(),
            "{}",
            path.display()
        );
        key.verify(&manifest).unwrap();
        kinds.push(serde_json::to_value(&manifest.source.kind).unwrap());
    }
    kinds.sort_by_key(ToString::to_string);
    kinds.dedup();
    assert_eq!(
        kinds,
        ["cli", "staging-recovery", "watch"].map(serde_json::Value::from)
    );
    // And through the store: listed, verified, none broken; the hold reads back.
    let opened = LocalStore::open(&store).unwrap();
    let (listed, broken) = opened.list().unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(listed.len(), files.len());
    let held: Vec<_> = listed
        .iter()
        .filter(|m| opened.hold(&m.id).unwrap().is_some())
        .collect();
    assert_eq!(held.len(), 1);
}

/// The signing key of "a newer ckvault" on the fixture store. The fixture keeps no private
/// key (nothing secret is committed), so the first call rotates the copy's key as
/// `ckvault key rotate` does: the fixture's public key goes to keys/retired/ (what it
/// signed keeps verifying) and a fresh key becomes the store's.
fn newer_key(store: &Path) -> crate::manifest::SigningKey {
    use crate::manifest::SigningKey;
    let key_path = store.join("keys/signing.key");
    if let Ok(pem) = std::fs::read_to_string(&key_path) {
        return SigningKey::from_pem(&pem, &key_path).unwrap();
    }
    let old = public_key(store);
    let retired = store.join("keys/retired");
    std::fs::create_dir_all(&retired).unwrap();
    let old_pem = old.to_pem().unwrap();
    let id = old
        .key_id()
        .replace('/', "_")
        .replace('+', "-")
        .replace(':', ".");
    std::fs::write(retired.join(format!("{id}.pub")), old_pem).unwrap();
    let key = SigningKey::generate().unwrap();
    std::fs::write(&key_path, key.to_pem().unwrap()).unwrap();
    std::fs::write(
        store.join("keys/signing.pub"),
        key.verifying_key().to_pem().unwrap(),
    )
    .unwrap();
    key
}

/// Rewrites the fixture manifest `path` through `edit` (on its JSON, signature removed) and,
/// with `resign`, signs it again with the store's key, as a newer ckvault would.
fn rewrite(store: &Path, path: &Path, resign: bool, edit: impl FnOnce(&mut serde_json::Value)) {
    use crate::manifest::sign::canonical_json;
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let signature = doc.as_object_mut().unwrap().remove("signature").unwrap();
    edit(&mut doc);
    let signature = if resign {
        let key = newer_key(store);
        serde_json::json!({
            "alg": "ed25519",
            "key_id": key.verifying_key().key_id(),
            "value": key.sign_bytes(&canonical_json(&doc).unwrap()),
        })
    } else {
        signature
    };
    doc.as_object_mut()
        .unwrap()
        .insert("signature".into(), signature);
    std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

fn record_id(path: &Path) -> crate::manifest::RecordId {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn compat_v1_a_record_of_a_newer_schema_is_reported_unsupported_not_badly_signed() {
    use crate::manifest::ManifestError;
    use crate::store::StoreError;
    let (_dir, store) = fixture();
    let files = manifest_files(&store);
    // As the rule has a newer ckvault write a record that uses a field this one does not
    // have: under a new schema, signed with the node's key. A second one also changes the
    // shape of a member this version knows (so it no longer parses at all). (v2, the
    // trigger, was such a schema for the binaries before it: they answer it this way.)
    rewrite(&store, &files[0], true, |doc| {
        doc["schema"] = "ckvault.dev/manifest/v3".into();
        doc["cause_chain"] = serde_json::json!([{"kind": "alert", "name": "OOMKilled"}]);
    });
    rewrite(&store, &files[1], true, |doc| {
        doc["schema"] = "ckvault.dev/manifest/v3".into();
        doc["summary"] = "moved elsewhere".into();
    });
    for path in &files[..2] {
        let err = Manifest::from_json(&std::fs::read(path).unwrap()).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Schema(s) if s == "ckvault.dev/manifest/v3"),
            "{err}"
        );
        assert!(err.to_string().contains("newer ckvault"), "{err}");
    }
    let opened = LocalStore::open(&store).unwrap();
    for path in &files[..2] {
        let err = opened.manifest(&record_id(path)).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Manifest {
                    source: ManifestError::Schema(_),
                    ..
                }
            ),
            "a newer record is not reported as tampered: {err}"
        );
    }
    // Listing goes on: the newer records are set aside with that reason, the rest listed.
    let (listed, broken) = opened.list().unwrap();
    assert_eq!(listed.len(), files.len() - 2);
    assert_eq!(broken.len(), 2);
    assert!(broken.iter().all(|e| matches!(
        e,
        StoreError::Manifest {
            source: ManifestError::Schema(_),
            ..
        }
    )));
}

#[test]
fn compat_v1_a_new_source_kind_word_needs_no_new_schema_and_verifies() {
    use crate::manifest::SourceKind;
    let (_dir, store) = fixture();
    let files = manifest_files(&store);
    rewrite(&store, &files[0], true, |doc| {
        doc["source"]["kind"] = "alert".into();
    });
    let manifest = Manifest::from_json(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert!(matches!(&manifest.source.kind, SourceKind::Unrecognised(w) if w.as_str() == "alert"));
    public_key(&store).verify(&manifest).unwrap();
    // Kept verbatim: written out again, it reads back the same and still verifies.
    let again = manifest.to_json_pretty().unwrap();
    assert!(String::from_utf8_lossy(&again).contains(r#""kind": "alert""#));
    assert_eq!(Manifest::from_json(&again).unwrap(), manifest);
    let opened = LocalStore::open(&store).unwrap();
    assert_eq!(
        opened.manifest(&record_id(&files[0])).unwrap().source.kind,
        manifest.source.kind
    );
}

#[test]
fn compat_v1_a_member_added_without_a_new_schema_is_an_edit_or_is_not_read() {
    use crate::manifest::ManifestError;
    use crate::store::StoreError;
    let (_dir, store) = fixture();
    let files = manifest_files(&store);
    // No ckvault signs this (the rule gives a record with a new member a new schema): a
    // signature over a member this version does not read fails as an edit...
    rewrite(&store, &files[0], true, |doc| {
        doc["cause_chain"] = serde_json::json!({"kind": "alert"});
    });
    // ...and a member added to a signed record is not read: the signature covers what this
    // version reads, and what is shown or served is that, without the member.
    rewrite(&store, &files[1], false, |doc| {
        doc["cause_chain"] = serde_json::json!({"kind": "alert"});
    });
    let opened = LocalStore::open(&store).unwrap();
    let err = opened.manifest(&record_id(&files[0])).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Tampered {
                why: ManifestError::BadSignature { .. },
                ..
            }
        ),
        "{err}"
    );
    let read = opened.manifest(&record_id(&files[1])).unwrap();
    assert!(!String::from_utf8_lossy(&read.to_json_pretty().unwrap()).contains("cause_chain"));
}

/// A trigger as a receiver would seal it.
fn a_trigger() -> serde_json::Value {
    serde_json::json!({
        "kind": "alertmanager",
        "rule": "oom-capture",
        "alert": "KubePodCrashLooping",
        "fingerprint": "d0a1b2c3e4f50617",
        "priority": "critical",
        "summary": "pod shop/api-0 is restarting",
        "received_at": "2026-12-01T10:00:00Z",
        "requested_by": "user:am",
    })
}

#[test]
fn compat_v1_a_trigger_in_a_v1_record_is_refused_whether_signed_or_not() {
    use crate::manifest::ManifestError;
    use crate::store::StoreError;
    let (_dir, store) = fixture();
    let files = manifest_files(&store);
    // `trigger` is v2's: a v1 record that carries one was altered (signed over it with the
    // node's key, or added to a signed record). Binaries before v2 treat it as the test
    // above says (an edit, or not read); this one refuses both.
    rewrite(&store, &files[0], true, |doc| {
        doc["trigger"] = a_trigger();
    });
    rewrite(&store, &files[1], false, |doc| {
        doc["trigger"] = a_trigger();
    });
    let opened = LocalStore::open(&store).unwrap();
    for path in &files[..2] {
        let err = Manifest::from_json(&std::fs::read(path).unwrap()).unwrap_err();
        assert!(
            matches!(
                &err,
                ManifestError::FieldNotInSchema {
                    field: "trigger",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("altered"), "{err}");
        let err = opened.manifest(&record_id(path)).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Manifest {
                    source: ManifestError::FieldNotInSchema { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
    let (listed, broken) = opened.list().unwrap();
    assert_eq!((listed.len(), broken.len()), (files.len() - 2, 2));
}

#[test]
fn compat_v1_a_v2_record_with_a_trigger_verifies_beside_v1_ones_and_its_trigger_is_signed() {
    use crate::manifest::{ManifestError, SCHEMA_V2, TriggerKind};
    use crate::store::StoreError;
    let (_dir, store) = fixture();
    let files = manifest_files(&store);
    // As this version writes a triggered record: v2, signed with the node's key.
    rewrite(&store, &files[0], true, |doc| {
        doc["schema"] = SCHEMA_V2.into();
        doc["trigger"] = a_trigger();
    });
    let opened = LocalStore::open(&store).unwrap();
    let read = opened.manifest(&record_id(&files[0])).unwrap();
    let trigger = read.trigger.as_ref().unwrap();
    assert_eq!(trigger.kind, TriggerKind::Alertmanager);
    assert_eq!(trigger.alert.as_deref(), Some("KubePodCrashLooping"));
    assert_eq!(trigger.requested_by, "user:am");
    public_key(&store).verify(&read).unwrap();
    // The v1 records beside it read and verify unchanged.
    let (listed, broken) = opened.list().unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(listed.len(), files.len());
    // The signature covers the trigger: any edit of it is caught.
    for edit in [
        |t: &mut serde_json::Value| t["kind"] = "falco".into(),
        |t: &mut serde_json::Value| t["requested_by"] = "user:someone-else".into(),
        |t: &mut serde_json::Value| t["summary"] = serde_json::Value::Null,
    ] {
        let (_d, store) = fixture();
        let files = manifest_files(&store);
        rewrite(&store, &files[0], true, |doc| {
            doc["schema"] = SCHEMA_V2.into();
            doc["trigger"] = a_trigger();
        });
        rewrite(&store, &files[0], false, |doc| edit(&mut doc["trigger"]));
        let err = LocalStore::open(&store)
            .unwrap()
            .manifest(&record_id(&files[0]))
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Tampered {
                    why: ManifestError::BadSignature { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
