//! The directory watcher on real CRIU checkpoints: walk at start, inotify after, settle
//! before sealing, plaintext removed and a receipt left, symlinks and other names ignored,
//! staging recovered, a vanished directory survived.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn manifests(store: &Path) -> Vec<Value> {
    let out = Command::new(support::ckvault_bin())
        .args(["ls", "--store", store.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    support::ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sweep_seals_checkpoints_recovers_staging_and_ignores_the_rest() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let dir = tmp.path().join("checkpoints");
    fs::create_dir(&dir).unwrap();
    let store = tmp.path().join("store");
    let name = "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:00Z.tar";
    let input = fs::read(&real).unwrap();
    fs::write(dir.join(name), &input).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("checkpoint-evil.tar")).unwrap();
    fs::write(dir.join("notes.tar"), b"not a checkpoint").unwrap();
    // A plaintext left in staging by a crashed run (of a store made by an earlier sweep:
    // ckvault makes a store only in an absent or empty directory).
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let made = Command::new(support::ckvault_bin())
        .args(["watch", "--once", "--dir", empty.to_str().unwrap()])
        .args(["--store", store.to_str().unwrap(), "-r", &recipient])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let staging = store.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("01LEFTOVER.tar"), &input).unwrap();

    let out = Command::new(support::ckvault_bin())
        .args([
            "watch",
            "--once",
            "--settle",
            "0",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .args(["--store", store.to_str().unwrap(), "-r", &recipient])
        .output()
        .unwrap();
    support::ok(&out);

    assert!(!dir.join(name).exists(), "plaintext left behind");
    let receipt_path = dir.join(format!("{name}.ckvault-receipt.json"));
    let receipt: Value = serde_json::from_slice(&fs::read(&receipt_path).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&receipt_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(receipt["plaintext_sha256"], sha256(&input).as_str());
    assert_eq!(receipt["namespace"], "forensics");
    // the symlink and the other file are untouched
    assert!(
        fs::symlink_metadata(dir.join("checkpoint-evil.tar"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(dir.join("notes.tar")).unwrap(),
        b"not a checkpoint"
    );
    // staging is empty and its file became a record
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    let ms = manifests(&store);
    assert_eq!(ms.len(), 2, "{ms:#?}");
    let kinds: Vec<&str> = ms
        .iter()
        .map(|m| m["source"]["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"watch") && kinds.contains(&"staging-recovery"),
        "{kinds:?}"
    );
    let watched = ms.iter().find(|m| m["source"]["kind"] == "watch").unwrap();
    assert_eq!(watched["id"], receipt["id"]);
    assert_eq!(watched["inspection"]["status"], "ok");
    assert_eq!(watched["pod"], "web-7d4");
    // the audit log saw both seals and verifies
    let out = Command::new(support::ckvault_bin())
        .args(["audit", "verify", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_live_watcher_waits_for_complete_files_and_survives_the_directory_vanishing() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let dir = tmp.path().join("checkpoints");
    fs::create_dir(&dir).unwrap();
    let store = tmp.path().join("store");
    let _watcher = Kill(
        Command::new(support::ckvault_bin())
            .args(["watch", "--settle", "1", "--dir", dir.to_str().unwrap()])
            .args(["--store", store.to_str().unwrap(), "-r", &recipient])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let input = fs::read(&real).unwrap();
    // Written slowly, in two halves with a pause shorter than the settle time.
    let path = dir.join("checkpoint-a_forensics-app-2026-11-28T10:00:01Z.tar");
    {
        let mut f = fs::File::create(&path).unwrap();
        let half = input.len() / 2;
        f.write_all(&input[..half]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        f.write_all(&input[half..]).unwrap();
    }
    let receipt =
        dir.join("checkpoint-a_forensics-app-2026-11-28T10:00:01Z.tar.ckvault-receipt.json");
    wait_for("the first receipt", Duration::from_secs(30), || {
        receipt.exists()
    });
    let ms = manifests(&store);
    assert_eq!(ms.len(), 1);
    assert_eq!(
        ms[0]["plaintext"]["sha256"],
        sha256(&input).as_str(),
        "a partial file was sealed"
    );
    assert!(!path.exists());

    // The directory disappears and comes back.
    fs::remove_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::create_dir(&dir).unwrap();
    let path2 = dir.join("checkpoint-b_forensics-app-2026-11-28T10:00:02Z.tar");
    fs::write(&path2, &input).unwrap();
    wait_for("the second record", Duration::from_secs(30), || {
        !path2.exists() && manifests(&store).len() == 2
    });
}

#[test]
fn the_watcher_takes_recipients_and_retention_from_the_policy_directory() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (identity, recipient) = support::age_keypair(tmp.path());
    let dir = tmp.path().join("checkpoints");
    fs::create_dir(&dir).unwrap();
    let pol = tmp.path().join("policies");
    fs::create_dir(&pol).unwrap();
    fs::write(
        pol.join("recipients.toml"),
        format!(
            "version = 1\n[[recipients]]\nnamespaces = [\"forensics\"]\nkeys = [\"{recipient}\"]\n"
        ),
    )
    .unwrap();
    fs::write(
        pol.join("retention.toml"),
        "version = 1\n[[rule]]\nname = \"one\"\nkeep_last = 1\n",
    )
    .unwrap();
    let config = tmp.path().join("ckvault.toml");
    fs::write(
        &config,
        "[store]\npath = \"store\"\n[policy]\ndir = \"policies\"\n[watch]\ndir = \"checkpoints\"\nsettle = \"0s\"\n",
    )
    .unwrap();
    let input = fs::read(&real).unwrap();
    for i in 0..3 {
        fs::write(
            dir.join(format!(
                "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:0{i}Z.tar"
            )),
            &input,
        )
        .unwrap();
    }
    let out = Command::new(support::ckvault_bin())
        .args(["watch", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    support::ok(&out);
    let store = tmp.path().join("store");
    let ms = manifests(&store);
    assert_eq!(
        ms.len(),
        1,
        "retention keep_last 1 not applied after sealing: {ms:#?}"
    );
    // sealed to the policy's recipient: Debian's age opens it with that identity
    let blob = store
        .join("records")
        .join(format!("{}.age", ms[0]["id"].as_str().unwrap()));
    let out = Command::new("age")
        .args([
            "-d",
            "-i",
            identity.to_str().unwrap(),
            blob.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(fs::read_dir(&dir).unwrap().flatten().all(|e| {
        e.file_name()
            .to_string_lossy()
            .ends_with(".ckvault-receipt.json")
    }));
}

#[test]
fn a_one_off_sweep_with_the_default_settle_time_finishes() {
    // `watch --once` with the default 2 s settle: an archive written a minute ago is sealed
    // at once, one written just now once it has been quiet for 2 s; the sweep then exits
    // (it used to restart every file's settle clock at each walk and never exit).
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let dir = tmp.path().join("kubelet");
    fs::create_dir(&dir).unwrap();
    let input = fs::read(&real).unwrap();
    let old = dir.join("checkpoint-web-7d4_forensics-app-old.tar");
    fs::write(&old, &input).unwrap();
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(minute_ago)
        .unwrap();
    let fresh = dir.join("checkpoint-web-7d4_forensics-app-fresh.tar");
    fs::write(&fresh, &input).unwrap();
    let store = tmp.path().join("store");
    let started = Instant::now();
    let mut child = Command::new(support::ckvault_bin())
        .args(["watch", "--once", "--dir", dir.to_str().unwrap()])
        .args(["--store", store.to_str().unwrap(), "-r", &recipient])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("watch --once did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the fresh file was not left to settle"
    );
    assert!(!old.exists() && !fresh.exists(), "plaintext left behind");
    assert_eq!(manifests(&store).len(), 2);
}
