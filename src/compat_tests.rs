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
    // Read through the store, as `ckvault audit` does.
    let opened = LocalStore::open(&store).unwrap();
    let events = opened
        .audit_log()
        .unwrap()
        .read(&|_| true, usize::MAX)
        .unwrap();
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
