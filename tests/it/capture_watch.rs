//! The directory watcher on real CRIU checkpoints: walk at start, inotify after, settle
//! before sealing, plaintext removed and a receipt left, symlinks and other names ignored,
//! staging recovered, a vanished directory survived; a file is sealed only once its writer
//! closed it (a writer in another PID namespace pausing longer than the settle time, a file
//! held open when the watcher starts), a FIFO swapped in under a candidate's name never
//! blocks it, and an archive's hostile namespace is flagged and never printed raw.

use crate::support::{self, sha256_hex as sha256, wait_until as wait_for, watch::Watched};

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn a_sweep_seals_checkpoints_recovers_staging_and_ignores_the_rest() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let w = Watched::new("checkpoints");
    let (tmp, dir, store) = (&w.tmp, &w.dir, &w.store);
    let name = "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:00Z.tar";
    let input = fs::read(&real).unwrap();
    fs::write(dir.join(name), &input).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("checkpoint-evil.tar")).unwrap();
    fs::write(dir.join("notes.tar"), b"not a checkpoint").unwrap();
    // A plaintext left in staging by a crashed run (of a store made by an earlier sweep:
    // ckvault makes a store only in an absent or empty directory).
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    support::ok(&w.once(&empty, None));
    let staging = store.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("01LEFTOVER.tar"), &input).unwrap();

    support::ok(&w.once(dir, Some("0")));

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
    let ms = w.records();
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
    let w = Watched::new("checkpoints");
    let dir = &w.dir;
    let _watcher = w.spawn(&[], "1");
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
    w.wait_receipt("checkpoint-a_forensics-app-2026-11-28T10:00:01Z.tar");
    let ms = w.records();
    assert_eq!(ms.len(), 1);
    assert_eq!(
        ms[0]["plaintext"]["sha256"],
        sha256(&input).as_str(),
        "a partial file was sealed"
    );
    assert!(!path.exists());

    // The directory disappears and comes back.
    fs::remove_dir_all(dir).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::create_dir(dir).unwrap();
    let path2 = dir.join("checkpoint-b_forensics-app-2026-11-28T10:00:02Z.tar");
    fs::write(&path2, &input).unwrap();
    wait_for("the second record", Duration::from_secs(30), || {
        !path2.exists() && w.records().len() == 2
    });
}

#[test]
fn the_watcher_takes_recipients_and_retention_from_the_policy_directory() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let w = Watched::new("checkpoints");
    let (tmp, dir, identity, recipient) = (&w.tmp, &w.dir, &w.identity, &w.recipient);
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
    let ms = w.records();
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
    assert!(fs::read_dir(dir).unwrap().flatten().all(|e| {
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
    let w = Watched::new("kubelet");
    let dir = &w.dir;
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
    let started = Instant::now();
    let mut child = w
        .command(&["--once", "--dir", support::p(dir)])
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
    assert_eq!(w.records().len(), 2);
}

#[test]
fn a_writer_in_another_pid_namespace_pausing_past_the_settle_time_is_sealed_only_once_closed() {
    // The watcher runs as a DaemonSet without hostPID does: in a PID namespace of its own,
    // whose /proc shows none of the writer's processes. The writer, in another PID
    // namespace, writes half of a real checkpoint, pauses 2.5 s (past `--settle 1`), writes
    // the rest and closes. Before: the half was sealed during the pause (`rejected
    // (truncated)`, identity ?/?/?), then unlinked, and the second half written into the
    // unlinked file was lost.
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    if !support::can_unshare() {
        return;
    }
    let w = Watched::new("checkpoints");
    let (tmp, dir, store) = (&w.tmp, &w.dir, &w.store);
    let input = fs::read(&real).unwrap();
    let half = input.len() / 2;
    let (h1, h2) = (tmp.path().join("h1"), tmp.path().join("h2"));
    fs::write(&h1, &input[..half]).unwrap();
    fs::write(&h2, &input[half..]).unwrap();
    let _watcher = w.spawn(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        "1",
    );
    std::thread::sleep(Duration::from_millis(800));
    let name = "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:05Z.tar";
    let path = dir.join(name);
    let mut writer = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(r#"exec > "$0"; cat "$1"; sleep 2.5; cat "$2""#)
        .args([&path, &h1, &h2])
        .spawn()
        .unwrap();
    // During the pause: nothing sealed, nothing removed.
    std::thread::sleep(Duration::from_millis(2200));
    assert!(path.exists(), "the half-written archive was removed");
    assert!(
        !store.join("records").exists() || w.records().is_empty(),
        "a half-written archive was sealed: {:#?}",
        w.records()
    );
    assert!(writer.wait().unwrap().success());
    w.wait_receipt(name);
    let ms = w.records();
    assert_eq!(ms.len(), 1, "{ms:#?}");
    assert_eq!(ms[0]["plaintext"]["sha256"], sha256(&input).as_str());
    assert_eq!(ms[0]["plaintext"]["size"], input.len() as u64);
    assert_eq!(ms[0]["inspection"]["status"], "ok");
    assert_eq!(ms[0]["namespace"], "forensics");
    assert!(!path.exists());
}

#[test]
fn a_file_held_open_for_writing_when_the_watcher_starts_waits_for_its_close() {
    // Half a real checkpoint in a file this test keeps open for writing, its mtime a minute
    // old (quiet time alone says "complete"). A sweep leaves it; a live watcher waits for
    // the close and seals all of it. Before: both sealed the half at once.
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let w = Watched::new("checkpoints");
    let dir = &w.dir;
    let input = fs::read(&real).unwrap();
    let half = input.len() / 2;
    let name = "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:06Z.tar";
    let path = dir.join(name);
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&input[..half]).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();

    let out = w.once(dir, Some("1"));
    support::ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("leaving") && stderr.contains("open for writing"),
        "{stderr}"
    );
    assert!(path.exists());
    assert!(w.records().is_empty(), "{:#?}", w.records());

    let _watcher = w.spawn(&[], "1");
    std::thread::sleep(Duration::from_secs(3));
    assert!(path.exists(), "a file still open for writing was removed");
    assert!(w.records().is_empty(), "{:#?}", w.records());
    f.write_all(&input[half..]).unwrap();
    drop(f);
    w.wait_receipt(name);
    let ms = w.records();
    assert_eq!(ms.len(), 1, "{ms:#?}");
    assert_eq!(ms[0]["plaintext"]["sha256"], sha256(&input).as_str());
    assert!(!path.exists());
}

#[test]
fn a_fifo_swapped_in_under_a_candidate_name_never_blocks_the_watcher() {
    // The name `checkpoint-race.tar` is swapped (renameat2 RENAME_EXCHANGE) between
    // a regular file and a FIFO nobody writes, so that the watcher sees a regular file when
    // it checks the name and the FIFO when it opens it. Before: the blocking open of the
    // FIFO hung the watcher for good and nothing after was ever sealed.
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let w = Watched::new("checkpoints");
    let (tmp, dir) = (&w.tmp, &w.dir);
    let _watcher = w.spawn(&[], "0");
    std::thread::sleep(Duration::from_millis(500));
    let name = dir.join("checkpoint-race.tar");
    let swap = dir.join(".swap");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &swap,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let t0 = Instant::now();
    let mut swaps = 0u64;
    // The regular file is held open for writing by this test, so the watcher leaves it
    // quickly (sealing it would take most of the watcher's time, and fewer looks at the
    // name); its mtime is old, so the watcher that checked only the name went on to open.
    let regular = |path: &Path| {
        fs::write(path, b"not really a checkpoint").unwrap();
        let held = fs::File::options().append(true).open(path).unwrap();
        held.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        held
    };
    let mut held = vec![regular(&name)];
    let log = tmp.path().join("watch.err");
    let hit = || fs::read_to_string(&log).is_ok_and(|e| e.contains("(a FIFO)"));
    // Until the watcher has opened the FIFO at least once (each of its looks at the name
    // has some chance to fall between two swaps), at most a minute.
    while !hit() && t0.elapsed() < Duration::from_secs(60) {
        for _ in 0..1000 {
            if rustix::fs::renameat_with(
                rustix::fs::CWD,
                &name,
                rustix::fs::CWD,
                &swap,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .is_ok()
            {
                swaps += 1;
            } else {
                // A watcher that sealed and removed the regular file: a new one.
                for p in [&name, &swap] {
                    if fs::symlink_metadata(p).is_err() {
                        held.push(regular(p));
                    }
                }
            }
        }
    }
    drop(held);
    let _ = fs::remove_file(&name);
    let _ = fs::remove_file(&swap);
    // The watcher still works.
    let after = "checkpoint-web-7d4_forensics-app-2026-11-28T10:00:07Z.tar";
    fs::write(dir.join(after), fs::read(&real).unwrap()).unwrap();
    w.wait_receipt(after);
    let err = fs::read_to_string(&log).unwrap();
    eprintln!("{swaps} swaps in {:?}", t0.elapsed());
    assert!(
        err.contains("not a regular file (a FIFO)"),
        "the FIFO was never opened (the race was not hit): {err}"
    );
}

/// Offsets of every occurrence of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_hostile_namespace_is_flagged_in_the_record_and_never_printed_raw() {
    // A real checkpoint whose namespace annotations (spec.dump and config.dump alike) are
    // rewritten, in place and at the same length, to ESC ] 2 ; pw BEL: a terminal title
    // change. Before: `ckvault watch` printed it raw, and the record did not say the
    // namespace breaks Kubernetes' naming rules.
    let Some(real) = support::real_checkpoint(8, "hostile-namespace", "web-7d4", "app", "none")
    else {
        return;
    };
    let w = Watched::new("checkpoints");
    let (dir, store) = (&w.dir, &w.store);
    let mut bytes = fs::read(&real).unwrap();
    let from = br#""hostile-namespace""#;
    let to = br#""\u001b]2;pw\u0007""#;
    assert_eq!(from.len(), to.len());
    let at = find_all(&bytes, from);
    assert!(at.len() >= 2, "the namespace annotations were not found");
    for i in at {
        bytes[i..i + to.len()].copy_from_slice(to);
    }
    let name = "checkpoint-web-7d4_x-app-2026-11-28T10:00:08Z.tar";
    fs::write(dir.join(name), &bytes).unwrap();
    let out = w.once(dir, Some("0"));
    support::ok(&out);
    for (what, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !stream.contains(&0x1b) && !stream.contains(&0x07),
            "a control character reached the terminal on {what}: {:?}",
            String::from_utf8_lossy(stream)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r"\u{1b}]2;pw\u{7}") && stdout.contains("namespace"),
        "{stdout}"
    );
    let ms = w.records();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["inspection"]["status"], "ok", "{:#?}", ms[0]);
    assert_eq!(ms[0]["namespace"], "\u{1b}]2;pw\u{7}");
    assert_eq!(ms[0]["identity_invalid"], serde_json::json!(["namespace"]));
    // The record verifies, and the other front-ends escape it too.
    let s = store.to_str().unwrap();
    let verify = Command::new(support::ckvault_bin())
        .args(["verify", "--all", "--store", s])
        .output()
        .unwrap();
    support::ok(&verify);
    let ls = Command::new(support::ckvault_bin())
        .args(["ls", "--store", s])
        .output()
        .unwrap();
    support::ok(&ls);
    assert!(!ls.stdout.contains(&0x1b) && !ls.stdout.contains(&0x07));
}

#[test]
fn a_capture_recovered_from_staging_after_a_crash_keeps_its_trigger() {
    let Some(real) = support::real_checkpoint(8, "forensics", "web-7d4", "app", "none") else {
        return;
    };
    let w = Watched::new("empty");
    let (empty, store) = (&w.dir, &w.store);
    let watch_once = || {
        support::ok(&w.once(empty, None));
    };
    watch_once(); // makes the store
    // What a capture for an alert leaves when its process dies after the runtime wrote:
    // the archive and its intent (with the trigger), under an owner that is gone; and one
    // written by a version before triggers (no `trigger` key).
    let staging = store.join("staging");
    fs::create_dir_all(&staging).unwrap();
    let input = fs::read(&real).unwrap();
    let trigger = serde_json::json!({
        "kind": "alertmanager",
        "rule": "crash-loop",
        "alert": "KubePodCrashLooping",
        "fingerprint": "d0a1b2c3e4f50617",
        "received_at": "2026-12-01T10:00:00Z",
        "requested_by": "user:am",
    });
    let mut stems = Vec::new();
    for with_trigger in [true, false] {
        let stem = format!("{}.deadowner", ckvault::manifest::RecordId::generate());
        let mut intent = serde_json::json!({
            "namespace": "forensics",
            "pod": "web-7d4",
            "container": "app",
            "container_id": "3f2a1b4c5d6e",
            "requested_location": null,
            "source": "trigger",
            "actor": "user:am",
            "started": "2026-12-01T10:00:01Z",
        });
        if with_trigger {
            intent["trigger"] = trigger.clone();
        }
        fs::write(
            staging.join(format!("{stem}.json")),
            serde_json::to_vec_pretty(&intent).unwrap(),
        )
        .unwrap();
        fs::write(staging.join(format!("{stem}.tar")), &input).unwrap();
        stems.push(stem);
    }
    watch_once();
    assert_eq!(
        fs::read_dir(&staging).unwrap().count(),
        0,
        "staging recovered"
    );
    let ms = w.records();
    assert_eq!(ms.len(), 2, "{ms:#?}");
    assert!(ms.iter().all(|m| m["source"]["kind"] == "staging-recovery"));
    let triggered: Vec<&Value> = ms.iter().filter(|m| m.get("trigger").is_some()).collect();
    assert_eq!(triggered.len(), 1, "{ms:#?}");
    assert_eq!(triggered[0]["trigger"], trigger);
    assert_eq!(triggered[0]["schema"], "ckvault.dev/manifest/v2");
    let other = ms.iter().find(|m| m.get("trigger").is_none()).unwrap();
    assert_eq!(other["schema"], "ckvault.dev/manifest/v1");
    let out = Command::new(support::ckvault_bin())
        .args(["verify", "--all", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(support::ok(&out).matches("OK ").count(), 2);
}
