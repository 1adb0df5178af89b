//! End-to-end tests of `ckvault seal/inspect/ls/show/export/open/verify` with real parts:
//! real CRIU checkpoints from the project harness, Debian's `age` and `zstd` to open what
//! we seal, real file systems for the failure cases.

use crate::support;

use support::{ckvault, ok};

use support::{contains, tar_with};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn seal(archive: &Path, store: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "seal",
        archive.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&ckvault(&args))).expect("seal prints manifest JSON")
}

/// Files in the store's records/ and tmp/ directories.
/// Records and temporary files of a store (not the owner lock files in tmp/, which hold
/// no data: a process's token, removed by the next recovery once it has exited).
fn store_files(store: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in ["records", "tmp"] {
        if let Ok(rd) = fs::read_dir(store.join(sub)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("owner.") && name.ends_with(".lock") {
                    continue;
                }
                names.push(format!("{sub}/{name}"));
            }
        }
    }
    names.sort();
    names
}

fn shell(cmd: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash")
}

struct Keys {
    identity: PathBuf,
    recipient: String,
}

fn keys(dir: &Path) -> Keys {
    let (identity, recipient) = support::age_keypair(dir);
    Keys {
        identity,
        recipient,
    }
}

#[test]
fn real_checkpoint_round_trips_through_age_and_zstd() {
    let Some(archive) = support::real_checkpoint(32, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let store = dir.path().join("store");
    let m = seal(&archive, &store, &["-r", &k.recipient]);

    assert_eq!(m["schema"], "ckvault.dev/manifest/v1");
    assert_eq!(m["namespace"], "forensics");
    assert_eq!(m["pod"], "web-7d4");
    assert_eq!(m["container"], "app");
    assert_eq!(m["engine"], "podman");
    assert_eq!(m["inspection"]["status"], "ok", "{m:#}");
    assert_eq!(m["sealed"]["compression"], "zstd");
    assert_eq!(m["sealed"]["encryption"], "age-v1");
    assert!(m["summary"]["memory_pages_bytes"].as_u64().unwrap() >= 32 << 20);
    let procs = m["inspection"]["processes"].as_array().unwrap();
    assert!(procs.iter().any(|p| p["comm"] == "memhog"), "{procs:?}");
    assert!(m["signature"]["value"].is_string());
    let input = fs::read(&archive).unwrap();
    assert_eq!(m["plaintext"]["size"].as_u64().unwrap(), input.len() as u64);
    let want_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&input))
    };
    assert_eq!(m["plaintext"]["sha256"], want_sha.as_str());

    // The blob and its manifest are private, and the marker planted in the container's
    // memory never appears in the sealed bytes.
    let id = m["id"].as_str().unwrap().to_owned();
    let blob = store.join("records").join(format!("{id}.age"));
    let sealed = fs::read(&blob).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        contains(&input, support::MARKER.as_bytes()),
        "harness marker missing from input"
    );
    assert!(!contains(&sealed, support::MARKER.as_bytes()));

    // export, then open with the standard tools: byte for byte.
    let exported = dir.path().join("exported.age");
    ok(&ckvault(&[
        "export",
        &id,
        "--store",
        store.to_str().unwrap(),
        "-o",
        exported.to_str().unwrap(),
    ]));
    let restored = dir.path().join("restored.tar");
    let out = shell(&format!(
        "age -d -i {} {} | zstd -d -q -o {}",
        k.identity.display(),
        exported.display(),
        restored.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read(&restored).unwrap() == input,
        "age|zstd output differs from input"
    );

    // ckvault open, by ID and by exported file, verifies and gives the same bytes.
    let opened = dir.path().join("opened.tar");
    ok(&ckvault(&[
        "open",
        &id,
        "--store",
        store.to_str().unwrap(),
        "-i",
        k.identity.to_str().unwrap(),
        "-o",
        opened.to_str().unwrap(),
    ]));
    assert!(fs::read(&opened).unwrap() == input);
    // An exported file's manifest is verified with the vault's public key: without one
    // (nothing given, nothing pinned) it is refused; a foreign key is refused.
    let opened2 = dir.path().join("opened2.tar");
    let pins = dir.path().join("no-pins");
    let open_file = |extra: &[&str]| {
        let mut args = vec![
            "open",
            exported.to_str().unwrap(),
            "-i",
            k.identity.to_str().unwrap(),
            "-o",
            opened2.to_str().unwrap(),
            "--pinned-keys",
            pins.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ckvault(&args)
    };
    let refused = open_file(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("pass --public-key"), "{err}");
    let other = tempfile::tempdir().unwrap();
    let foreign = other.path().join("store");
    seal(&archive, &foreign, &["-r", &k.recipient]);
    let refused = open_file(&[
        "--public-key",
        foreign.join("keys/signing.pub").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!opened2.exists());
    ok(&open_file(&[
        "--public-key",
        store.join("keys/signing.pub").to_str().unwrap(),
    ]));
    assert!(fs::read(&opened2).unwrap() == input);

    // verify (store key, and offline with the exported manifest and the public key)
    ok(&ckvault(&[
        "verify",
        &id,
        "--store",
        store.to_str().unwrap(),
    ]));
    ok(&ckvault(&[
        "verify",
        "--manifest",
        &format!("{}.manifest.json", exported.display()),
        "--blob",
        exported.to_str().unwrap(),
        "--public-key",
        store.join("keys/signing.pub").to_str().unwrap(),
    ]));

    // inspect reports identity, image, memory and the running process.
    let table = ok(&ckvault(&["inspect", archive.to_str().unwrap()]));
    for want in ["forensics", "web-7d4", "app", "memhog", "podman"] {
        assert!(table.contains(want), "inspect table lacks {want}:\n{table}");
    }
    let json: Value = serde_json::from_str(&ok(&ckvault(&[
        "inspect",
        archive.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(json["identity"]["namespace"], "forensics");
    assert!(
        json["identity"]["image"]
            .as_str()
            .unwrap()
            .contains("memhog")
    );

    // ls and show agree with the manifest.
    let ls: Value = serde_json::from_str(&ok(&ckvault(&[
        "ls",
        "--store",
        store.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["id"], id.as_str());
    let shown: Value = serde_json::from_str(&ok(&ckvault(&[
        "show",
        &id,
        "--store",
        store.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(shown, m);
}

#[test]
fn compressed_checkpoints_are_kept_as_they_came() {
    for (compress, format) in [("gzip", "tar+gzip"), ("zstd", "tar+zstd")] {
        let Some(archive) = support::real_checkpoint(8, "team-a", "api-0", "srv", compress) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let store = dir.path().join("store");
        let m = seal(&archive, &store, &["-r", &k.recipient]);
        assert_eq!(m["sealed"]["compression"], "none");
        assert_eq!(m["plaintext"]["format"], format);
        assert_eq!(m["inspection"]["status"], "ok", "{m:#}");
        assert_eq!(m["namespace"], "team-a");
        let blob = store
            .join("records")
            .join(format!("{}.age", m["id"].as_str().unwrap()));
        let out = shell(&format!(
            "age -d -i {} {}",
            k.identity.display(),
            blob.display()
        ));
        assert!(out.status.success());
        assert!(
            out.stdout == fs::read(&archive).unwrap(),
            "{compress}: age -d differs"
        );
    }
}

#[test]
fn several_recipients_including_ssh_keys_can_each_open() {
    let dir = tempfile::tempdir().unwrap();
    let a = keys(dir.path());
    let ssh_key = dir.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            ssh_key.to_str().unwrap(),
        ])
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let ssh_pub = fs::read_to_string(ssh_key.with_extension("pub")).unwrap();
    let rsa_key = dir.path().join("id_rsa");
    assert!(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "rsa",
                "-b",
                "3072",
                "-N",
                "",
                "-f",
                rsa_key.to_str().unwrap()
            ])
            .status()
            .unwrap()
            .success()
    );
    let rsa_pub = fs::read_to_string(rsa_key.with_extension("pub")).unwrap();
    let rfile = dir.path().join("recipients.txt");
    fs::write(
        &rfile,
        format!("# responders\n{}\n\n{}", ssh_pub.trim(), rsa_pub.trim()),
    )
    .unwrap();

    let archive = dir.path().join("in.tar");
    let payload = tar_with(&[("config.dump", b'0', b"{}"), ("spec.dump", b'0', b"{}")]);
    fs::write(&archive, &payload).unwrap();
    let store = dir.path().join("store");
    let m = seal(
        &archive,
        &store,
        &[
            "-r",
            &a.recipient,
            "--recipients-file",
            rfile.to_str().unwrap(),
        ],
    );
    let kinds: Vec<&str> = m["sealed"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["x25519", "ssh-ed25519", "ssh-rsa"]);
    // The fingerprint of the SSH key is the one ssh-keygen -l prints.
    let fp = shell(&format!("ssh-keygen -lf {}.pub", ssh_key.display()));
    let fp = String::from_utf8_lossy(&fp.stdout);
    assert!(
        fp.contains(
            m["sealed"]["recipients"][1]["fingerprint"]
                .as_str()
                .unwrap()
        ),
        "{fp}"
    );
    let blob = store
        .join("records")
        .join(format!("{}.age", m["id"].as_str().unwrap()));
    for key in [&a.identity, &ssh_key, &rsa_key] {
        let out = shell(&format!(
            "age -d -i {} {} | zstd -d",
            key.display(),
            blob.display()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == payload, "{} could not open", key.display());
    }
}

#[test]
fn hostile_archive_is_sealed_and_flagged_not_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let store = dir.path().join("store");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "dotdot",
            tar_with(&[("../../etc/cron.d/x", b'0', b"* * * * * root sh")]),
            "dot-dot-path",
        ),
        (
            "absolute",
            tar_with(&[("/etc/passwd", b'0', b"root::0:0")]),
            "absolute-path",
        ),
        (
            "symlink",
            tar_with(&[("config.dump", b'2', b"")]),
            "link-member",
        ),
    ];
    for (name, bytes, code) in cases {
        let archive = dir.path().join(format!("{name}.tar"));
        fs::write(&archive, &bytes).unwrap();
        let m = seal(
            &archive,
            &store,
            &[
                "-r",
                &k.recipient,
                "--namespace",
                "forensics",
                "--remove-input",
            ],
        );
        assert_eq!(m["inspection"]["status"], "rejected", "{name}");
        assert_eq!(m["inspection"]["code"], code, "{name}: {m:#}");
        assert_eq!(m["namespace"], "forensics");
        assert!(
            !archive.exists(),
            "--remove-input left the plaintext behind"
        );
        let blob = store
            .join("records")
            .join(format!("{}.age", m["id"].as_str().unwrap()));
        let out = shell(&format!(
            "age -d -i {} {} | zstd -d",
            k.identity.display(),
            blob.display()
        ));
        assert!(
            out.stdout == bytes,
            "{name}: sealed bytes differ from input"
        );
        // inspect refuses it with exit status 3 and the reason
        fs::write(&archive, &bytes).unwrap();
        let out = ckvault(&["inspect", archive.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(code));
    }
}

#[test]
fn identity_mismatch_is_flagged_and_the_caller_decides_the_namespace() {
    let Some(archive) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let m = seal(
        &archive,
        &dir.path().join("store"),
        &["-r", &k.recipient, "--namespace", "payments"],
    );
    assert_eq!(m["inspection"]["status"], "rejected");
    assert_eq!(m["inspection"]["code"], "identity-mismatch");
    assert_eq!(m["namespace"], "payments");
    assert_eq!(
        m["inspection"]["archive_identity"]["namespace"],
        "forensics"
    );
}

#[test]
fn a_failed_seal_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("in.tar");
    fs::write(&archive, tar_with(&[("config.dump", b'0', b"{}")])).unwrap();
    let store = dir.path().join("store");
    // a bad recipient, and no recipient at all
    for args in [vec!["-r", "age1notakey"], vec![]] {
        let mut all = vec![
            "seal",
            archive.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ];
        all.extend(args);
        let out = ckvault(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("recipient"), "{err}");
    }
    assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));
}

#[test]
fn disk_full_in_the_store_leaves_no_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_tmpfs) = support::Tmpfs::mount(&mnt, "2m", "disk_full test") else {
        return;
    };
    let k = keys(dir.path());
    // 8 MiB of random bytes: incompressible, cannot fit in 2 MiB.
    let archive = dir.path().join("big.tar");
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&archive, tar_with(&[("rootfs-diff.tar", b'0', &data)])).unwrap();
    let store = mnt.join("store");
    let out = ckvault(&[
        "seal",
        archive.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "-r",
        &k.recipient,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device") && err.contains("nothing was stored"),
        "{err}"
    );
    assert!(store_files(&store).is_empty(), "{:?}", store_files(&store));
    assert!(archive.exists(), "the input must survive a failed seal");
}

#[test]
fn tampering_and_truncation_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let archive = dir.path().join("in.tar");
    fs::write(
        &archive,
        tar_with(&[("config.dump", b'0', br#"{"id":"abc"}"#)]),
    )
    .unwrap();
    let store = dir.path().join("store");
    let m = seal(&archive, &store, &["-r", &k.recipient]);
    let id = m["id"].as_str().unwrap();
    let s = store.to_str().unwrap();
    let blob = store.join("records").join(format!("{id}.age"));
    let original = fs::read(&blob).unwrap();

    // truncated blob: verify and open fail, open writes nothing
    fs::write(&blob, &original[..original.len() - 20]).unwrap();
    let out_path = dir.path().join("out.tar");
    assert!(!ckvault(&["verify", id, "--store", s]).status.success());
    let out = ckvault(&[
        "open",
        id,
        "--store",
        s,
        "-i",
        k.identity.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        !out_path.exists(),
        "open left output behind after a failure"
    );

    // one flipped byte in the payload
    let mut flipped = original.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 1;
    fs::write(&blob, &flipped).unwrap();
    assert!(!ckvault(&["verify", id, "--store", s]).status.success());
    let out = ckvault(&[
        "open",
        id,
        "--store",
        s,
        "-i",
        k.identity.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!out_path.exists());

    // restored blob, edited manifest: the signature no longer verifies
    fs::write(&blob, &original).unwrap();
    ok(&ckvault(&["verify", id, "--store", s]));
    let mpath = store.join("records").join(format!("{id}.json"));
    let text = fs::read_to_string(&mpath)
        .unwrap()
        .replace("\"namespace\": null", "\"namespace\": \"kube-system\"");
    fs::write(&mpath, text).unwrap();
    let out = ckvault(&["verify", id, "--store", s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature"));
}

#[test]
fn terminal_escapes_in_names_are_escaped_in_tables() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let archive = dir.path().join("in.tar");
    fs::write(&archive, tar_with(&[("config.dump", b'0', b"{}")])).unwrap();
    let store = dir.path().join("store");
    seal(
        &archive,
        &store,
        &["-r", &k.recipient, "--container", "evil\u{1b}]0;pwned\u{7}"],
    );
    let table = ok(&ckvault(&["ls", "--store", store.to_str().unwrap()]));
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "{table:?}"
    );
    assert!(table.contains("evil"));
}

#[test]
fn commands_given_only_the_store_follow_an_audit_log_the_configuration_moved() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let archive = dir.path().join("in.tar");
    fs::write(&archive, tar_with(&[("config.dump", b'0', b"{}")])).unwrap();
    fs::create_dir(dir.path().join("logs")).unwrap();
    let config = dir.path().join("ckvault.toml");
    fs::write(
        &config,
        "[store]\npath = \"store\"\n[audit]\npath = \"logs/audit.log\"\n",
    )
    .unwrap();
    ok(&ckvault(&[
        "seal",
        archive.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-r",
        &k.recipient,
    ]));
    assert!(dir.path().join("logs/audit.log").is_file());
    assert!(!dir.path().join("store/audit.log").exists());
    // Without --config: the store knows where its log is.
    let store = dir.path().join("store");
    let out = ok(&ckvault(&[
        "audit",
        "verify",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(out.contains("OK"), "{out}");
    let shown = ok(&ckvault(&[
        "audit",
        "show",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(shown.contains("seal"), "{shown}");
}

#[test]
fn ls_shows_and_filters_by_trigger_and_show_prints_it() {
    use ckvault::manifest::{Source, SourceKind, Trigger, TriggerKind};
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    // One record as a person seals it (no trigger), two through the library with one.
    let by_hand = seal(&archive, &store, &["-r", &k.recipient]);
    assert!(by_hand.get("trigger").is_none(), "{by_hand:#}");
    let local = ckvault::internal::store::LocalStore::open(&store).unwrap();
    let mut o = ckvault::seal::SealOptions::new(
        vec![k.recipient.parse().unwrap()],
        Source {
            kind: SourceKind::Trigger,
            path: None,
        },
    );
    let mut sealed = Vec::new();
    for (kind, alert) in [
        (TriggerKind::Manual, "on-call asked\u{1b}]0;pwned\u{7}"),
        (TriggerKind::Falco, "Terminal shell in container"),
    ] {
        o.trigger = Some(Trigger {
            rule: Some("capture-shells".into()),
            alert: Some(alert.into()),
            priority: Some("Warning".into()),
            fingerprint: Some("Terminal shell in container/3f2a1b4c5d6e".into()),
            summary: Some("A shell was spawned in a container".into()),
            ..Trigger::new(kind, "user:falco")
        });
        let m = ckvault::seal::seal_file(&local, fs::File::open(&archive).unwrap(), &o, &|_| {})
            .unwrap();
        sealed.push(m.id.to_string());
    }
    let (manual, falco) = (&sealed[0], &sealed[1]);
    let by_hand_id = by_hand["id"].as_str().unwrap();

    // The table has a TRIGGER column: the kind, or `-`; nothing raw reaches the terminal.
    let table = ok(&ckvault(&["ls", "--store", s]));
    assert!(table.lines().next().unwrap().contains("TRIGGER"), "{table}");
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_owned()
    };
    assert!(row(manual).contains(" manual "), "{table}");
    assert!(row(falco).contains(" falco "), "{table}");
    assert!(row(by_hand_id).contains(" - "), "{table}");
    // --trigger KIND: only that cause, in the table and in JSON.
    let only = ok(&ckvault(&["ls", "--store", s, "--trigger", "manual"]));
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(only.contains(manual.as_str()), "{only}");
    let json: Value = serde_json::from_str(&ok(&ckvault(&[
        "ls",
        "--store",
        s,
        "--trigger",
        "falco",
        "--format",
        "json",
    ])))
    .unwrap();
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [falco.as_str()]);
    let none = ok(&ckvault(&["ls", "--store", s, "--trigger", "schedule"]));
    assert_eq!(none.lines().count(), 1, "only the header: {none}");
    // show prints the whole trigger, control characters escaped, and the record verifies.
    let shown: Value =
        serde_json::from_str(&ok(&ckvault(&["show", manual, "--store", s]))).unwrap();
    assert_eq!(shown["schema"], "ckvault.dev/manifest/v2");
    let t = &shown["trigger"];
    assert_eq!(t["kind"], "manual");
    assert_eq!(t["rule"], "capture-shells");
    assert_eq!(t["alert"], r"on-call asked\u{1b}]0;pwned\u{7}");
    assert_eq!(t["priority"], "Warning");
    assert_eq!(t["fingerprint"], "Terminal shell in container/3f2a1b4c5d6e");
    assert_eq!(t["summary"], "A shell was spawned in a container");
    assert_eq!(t["requested_by"], "user:falco");
    assert!(t["received_at"].as_str().unwrap().ends_with('Z'), "{t}");
    let raw = ckvault(&["show", manual, "--store", s]).stdout;
    assert!(!raw.contains(&0x1b) && !raw.contains(&0x07));
    let shown: Value =
        serde_json::from_str(&ok(&ckvault(&["show", by_hand_id, "--store", s]))).unwrap();
    assert_eq!(shown["schema"], "ckvault.dev/manifest/v1");
    assert!(shown.get("trigger").is_none(), "{shown:#}");
    let verified = ok(&ckvault(&["verify", "--all", "--store", s]));
    assert_eq!(verified.matches("OK ").count(), 3, "{verified}");
}

/// A spool whose key was rotated (`ckvault key rotate`) while records waited for the bucket
/// holds records signed by the retired key beside new ones: `verify` checks each with the
/// key it names (current or retired), not all with the current one (which reported every
/// older record as "altered or signed by another vault"). A record signed by a key the
/// store never had still fails, naming the key.
#[test]
fn verify_checks_each_record_with_the_key_it_names_current_or_retired() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let archive = dir.path().join("in.tar");
    fs::write(
        &archive,
        tar_with(&[("config.dump", b'0', br#"{"id":"abc"}"#)]),
    )
    .unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let old = seal(&archive, &store, &["-r", &k.recipient]);
    // The rotation as it leaves the store's keys/: the old public key under retired/
    // (named by its fingerprint), a new key pair in place.
    let keys_dir = store.join("keys");
    let spki_der = |pub_pem: &Path| {
        let out = Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(pub_pem)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let fingerprint = base64::engine::general_purpose::STANDARD_NO_PAD.encode(
        sha2::Sha256::digest(spki_der(&keys_dir.join("signing.pub"))),
    );
    assert_eq!(
        old["signature"]["key_id"],
        format!("SHA256:{fingerprint}"),
        "the key ID is the SPKI fingerprint"
    );
    let retired = keys_dir.join("retired");
    fs::create_dir_all(&retired).unwrap();
    let safe = fingerprint.replace('/', "_").replace('+', "-");
    fs::copy(
        keys_dir.join("signing.pub"),
        retired.join(format!("SHA256.{safe}.pub")),
    )
    .unwrap();
    let genkey = |to: &Path| {
        let key = to.join("signing.key");
        ok(&Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .output()
            .unwrap());
        ok(&Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(to.join("signing.pub"))
            .output()
            .unwrap());
    };
    genkey(&keys_dir);
    let new = seal(&archive, &store, &["-r", &k.recipient]);
    assert_ne!(old["signature"]["key_id"], new["signature"]["key_id"]);
    let out = ckvault(&["verify", "--all", "--store", s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches("OK ").count() == 2,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A record another vault signed, filed in this store, is not verified by anything here.
    let other = dir.path().join("other");
    let foreign = seal(&archive, &other, &["-r", &k.recipient]);
    let fid = foreign["id"].as_str().unwrap();
    for ext in ["json", "age"] {
        fs::copy(
            other.join("records").join(format!("{fid}.{ext}")),
            store.join("records").join(format!("{fid}.{ext}")),
        )
        .unwrap();
    }
    let out = ckvault(&["verify", fid, "--store", s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("neither this store's key nor one it retired"),
        "{text}"
    );
}
