//! Sealing from a stream (`seal::seal_reader`, what `[cri] staging_mode = "fifo"` uses):
//! a REAL checkpoint written into a named pipe by another thread is sealed, inspected from
//! the tee of the sealing pass, and opens (with the age CLI) to the very bytes written; the
//! record says what sealing the same archive from a file says. An empty stream is no
//! record. Nothing but the sealed blob is written to the store.

use crate::support;

use std::io::Write;
use std::path::Path;

use ckvault::internal::store::LocalStore;
use ckvault::manifest::{Source, SourceKind};
use ckvault::seal::{self, ClaimedIdentity, Recipient, SealOptions};

fn opts(recipient: &str) -> SealOptions {
    let mut o = SealOptions::new(
        vec![recipient.parse::<Recipient>().unwrap()],
        Source {
            kind: SourceKind::Cli,
            path: None,
        },
    );
    o.claimed = ClaimedIdentity {
        namespace: Some("shop".into()),
        pod: Some("api-0".into()),
        container: Some("api".into()),
    };
    o
}

fn via_fifo(
    dir: &Path,
    data: Vec<u8>,
    store: &LocalStore,
    o: &SealOptions,
) -> Result<ckvault::manifest::Manifest, seal::SealError> {
    let fifo = dir.join("p.fifo");
    let _ = std::fs::remove_file(&fifo);
    ckvault::fsutil::create_private_fifo(&fifo).unwrap();
    let f2 = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
        for chunk in data.chunks(300_000) {
            w.write_all(chunk).unwrap();
        }
    });
    let reader = ckvault::fsutil::open_fifo_reader(&fifo, 1 << 20).unwrap();
    let r = seal::seal_reader(store, reader, o, &|_| {});
    writer.join().unwrap();
    r
}

#[test]
fn a_real_checkpoint_sealed_from_a_pipe_matches_the_file_seal_and_opens() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(tmp.path());
    let o = opts(&recipient);
    let piped = LocalStore::open_or_init(&tmp.path().join("piped")).unwrap();
    let filed = LocalStore::open_or_init(&tmp.path().join("filed")).unwrap();
    let data = std::fs::read(&archive).unwrap();
    let m = via_fifo(tmp.path(), data.clone(), &piped, &o).unwrap();
    let f = seal::seal_file(&filed, std::fs::File::open(&archive).unwrap(), &o, &|_| {}).unwrap();
    assert_eq!(m.plaintext, f.plaintext);
    assert_eq!(m.inspection.status, f.inspection.status);
    assert_eq!(m.inspection.processes, f.inspection.processes);
    assert_eq!(m.inspection.criu_images, f.inspection.criu_images);
    assert_eq!(
        (&m.namespace, &m.pod, &m.container),
        (&f.namespace, &f.pod, &f.container)
    );
    assert_eq!(m.summary, f.summary);
    // The age CLI opens the blob to the bytes that went into the pipe.
    let blob = piped.blob_path(&m.id);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -dc",
            identity.display(),
            blob.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.stdout == data,
        "opened bytes differ from the piped archive"
    );
    // Only the sealed blob and the manifest hold record bytes: nothing in plaintext.
    for e in walkdir::WalkDir::new(piped.root()).into_iter().flatten() {
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !support::contains(&bytes, support::MARKER.as_bytes()),
                "plaintext in {}",
                e.path().display()
            );
        }
    }
}

#[test]
fn an_empty_stream_is_no_record_and_garbage_is_sealed_but_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let o = opts(&recipient);
    let store = LocalStore::open_or_init(&tmp.path().join("s")).unwrap();
    let e = via_fifo(tmp.path(), Vec::new(), &store, &o).unwrap_err();
    assert!(matches!(e, seal::SealError::Empty), "{e}");
    assert!(store.ids().unwrap().is_empty());
    let m = via_fifo(tmp.path(), vec![7u8; 5 << 20], &store, &o).unwrap();
    assert_eq!(
        m.inspection.status,
        ckvault::manifest::InspectionStatus::Rejected
    );
    assert_eq!(m.plaintext.size, 5 << 20);
}

/// A trigger as an alert receiver would hand it over: long, with control characters.
fn alert_trigger() -> ckvault::manifest::Trigger {
    use ckvault::manifest::{Trigger, TriggerKind};
    Trigger {
        rule: Some("crash-loop".into()),
        alert: Some("KubePodCrashLooping\u{1b}[2J".into()),
        fingerprint: Some("f".repeat(4096)),
        priority: Some("critical".into()),
        summary: Some("pod shop/api-0 restarts\n".repeat(200)),
        ..Trigger::new(TriggerKind::Alertmanager, "user:am")
    }
}

#[test]
fn a_trigger_in_the_seal_options_is_signed_into_the_record_from_a_file_and_a_pipe() {
    use ckvault::manifest::{SCHEMA_V1, SCHEMA_V2, Trigger};
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let store = LocalStore::open_or_init(&tmp.path().join("s")).unwrap();
    let mut o = opts(&recipient);
    assert!(o.trigger.is_none(), "no trigger unless one is set");
    let plain =
        seal::seal_file(&store, std::fs::File::open(&archive).unwrap(), &o, &|_| {}).unwrap();
    let given = alert_trigger();
    o.trigger = Some(given.clone());
    let filed =
        seal::seal_file(&store, std::fs::File::open(&archive).unwrap(), &o, &|_| {}).unwrap();
    let piped = via_fifo(tmp.path(), std::fs::read(&archive).unwrap(), &store, &o).unwrap();
    // Without a trigger: v1, and the file on disk has no `trigger` key at all.
    assert_eq!(plain.schema, SCHEMA_V1);
    assert!(plain.trigger.is_none());
    let on_disk =
        std::fs::read_to_string(store.root().join(format!("records/{}.json", plain.id))).unwrap();
    assert!(!on_disk.contains("trigger"), "{on_disk}");
    // With one: v2, the trigger as bounded, read back through the store's verification.
    let want = given.clone().bounded();
    assert_ne!(want, given, "the test's trigger needs bounding");
    for m in [&filed, &piped] {
        assert_eq!(m.schema, SCHEMA_V2);
        assert_eq!(m.trigger.as_ref(), Some(&want));
        assert_eq!(m.inspection.status, ckvault::manifest::InspectionStatus::Ok);
        let read = store.manifest(&m.id).unwrap(); // signature checked
        assert_eq!(&read, m);
        let t = read.trigger.unwrap();
        assert!(
            t.alert
                .as_deref()
                .unwrap()
                .starts_with(r"KubePodCrashLooping\u{1b}[2J")
        );
        assert!(t.fingerprint.unwrap().len() <= Trigger::MAX_FIELD_BYTES + 3);
        assert!(t.summary.unwrap().len() <= Trigger::MAX_SUMMARY_BYTES + 3);
    }
    // The CLI verifies all three (signature and blob digest).
    let out = support::ckvault(&["verify", "--all", "--store", support::p(store.root())]);
    let text = support::ok(&out);
    assert_eq!(text.matches("OK ").count(), 3, "{text}");
}
