//! Several ckvault processes on one store or spool, as on a node: a DaemonSet's proxy,
//! watcher and server started at the same instant on a fresh store; a process in another
//! PID namespace (another container of the pod) opening the store while a seal runs; six
//! one-shot `seal --config` runs sharing one spool against a real SeaweedFS.
//!
//! The rules these tests hold ckvault to (docs/sealing.md, "Processes sharing a store"): any number
//! of ckvault processes, in any PID namespaces, may share a local store or a spool; the
//! store is created once with one key by whoever comes first; a temporary or staging file
//! belongs to its writer for as long as that process lives (a `flock`ed owner file, not a
//! PID); one drain of a spool runs at a time.

use crate::support;

use support::{ok, p};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(support::ckvault_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log.with_extension("out")).unwrap())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn ckvault")
}

/// Waits until `path` holds `needle` (a process announcing it runs), or panics.
fn wait_for(path: &Path, needle: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before running: {}",
                fs::read_to_string(path.with_extension("log")).unwrap_or_default()
                    + &fs::read_to_string(path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_proxy_and_watch_started_together_on_a_fresh_store_share_one_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    for round in 0..20 {
        let dir = tmp.path().join(format!("round-{round}"));
        fs::create_dir(&dir).unwrap();
        let store = dir.join("store");
        let watch = dir.join("kubelet-checkpoints");
        fs::create_dir(&watch).unwrap();
        let config = dir.join("ckvault.toml");
        fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n[seal]\nrecipients = [\"{recipient}\"]\n[watch]\ndir = \"{}\"\n[cri]\nlisten = \"{}\"\nupstream = \"{}\"\n",
                p(&store),
                p(&watch),
                p(&dir.join("proxy.sock")),
                p(&dir.join("no-runtime.sock")),
            ),
        )
        .unwrap();
        let c = p(&config);
        // The same instant: spawned back to back, before any of them has done anything.
        let logs = ["serve", "proxy", "watch"].map(|n| dir.join(format!("{n}.log")));
        let mut children = [
            spawn(&["serve", "--config", c], &logs[0]),
            spawn(&["proxy", "--config", c], &logs[1]),
            spawn(&["watch", "--config", c], &logs[2]),
        ];
        let announced = [
            ("serve", "ckvault: serving https://"),
            ("proxy", "ckvault: CRI proxy on"),
        ];
        for (i, (what, needle)) in announced.iter().enumerate() {
            wait_for(
                &logs[i].with_extension("out"),
                needle,
                &mut children[i],
                what,
            );
        }
        wait_for(&logs[2], "watching", &mut children[2], "watch");
        std::thread::sleep(Duration::from_millis(200));
        for (i, child) in children.iter_mut().enumerate() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: {} died: {}",
                ["serve", "proxy", "watch"][i],
                fs::read_to_string(&logs[i]).unwrap_or_default()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        // One key, and the public half is its own.
        let keys: Vec<_> = fs::read_dir(store.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, ["signing.key", "signing.pub"], "round {round}");
        let tar = dir.join("a.tar");
        fs::write(&tar, support::tar_with(&[("notes.txt", b'0', b"x\n")])).unwrap();
        let manifest: Value = serde_json::from_str(&ok(&Command::new(support::ckvault_bin())
            .args(["seal", p(&tar), "--store", p(&store), "-r", &recipient])
            .output()
            .unwrap()))
        .unwrap();
        let id = manifest["id"].as_str().unwrap();
        ok(&Command::new(support::ckvault_bin())
            .args(["verify", id, "--store", p(&store)])
            .output()
            .unwrap());
        for log in &logs {
            let text = fs::read_to_string(log).unwrap_or_default();
            assert!(!text.contains("File exists"), "round {round}: {text}");
        }
    }
}

#[test]
fn a_process_in_another_pid_namespace_does_not_take_a_seal_in_progress() {
    let Some(archive) = support::real_checkpoint(1024, "shop", "api-0", "api", "none") else {
        return;
    };
    if !support::can_unshare() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let store = tmp.path().join("store");
    // The store exists first (as on a node); then a neighbour in its own PID namespace
    // opens it over and over (every open recovers tmp/) while we seal.
    let tar = tmp.path().join("first.tar");
    fs::write(&tar, support::tar_with(&[("notes.txt", b'0', b"x\n")])).unwrap();
    ok(&Command::new(support::ckvault_bin())
        .args(["seal", p(&tar), "--store", p(&store), "-r", &recipient])
        .output()
        .unwrap());
    let stop = tmp.path().join("stop");
    let neighbour = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(format!(
            "n=0; while [ ! -e '{}' ]; do '{}' ls --store '{}' >/dev/null 2>&1; n=$((n+1)); done; echo $n",
            p(&stop),
            p(&support::ckvault_bin()),
            p(&store)
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let started = Instant::now();
    let out = Command::new(support::ckvault_bin())
        .args(["seal", p(&archive), "--store", p(&store), "-r", &recipient])
        .output()
        .unwrap();
    let took = started.elapsed();
    fs::write(&stop, b"").unwrap();
    let opens = String::from_utf8_lossy(&neighbour.wait_with_output().unwrap().stdout)
        .trim()
        .to_owned();
    let manifest: Value = serde_json::from_str(&ok(&out)).unwrap();
    eprintln!(
        "sealed a 1 GiB checkpoint in {took:?} while a neighbour in another PID namespace opened the store {opens} times"
    );
    assert!(
        opens.parse::<u64>().unwrap_or(0) >= 3,
        "the neighbour ran: {opens}"
    );
    ok(&Command::new(support::ckvault_bin())
        .args([
            "verify",
            manifest["id"].as_str().unwrap(),
            "--store",
            p(&store),
        ])
        .output()
        .unwrap());
}

#[test]
fn six_concurrent_seals_on_one_spool_land_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(weed) = support::seaweed::Seaweed::start(&tmp.path().join("weed")) else {
        return;
    };
    weed.create_bucket("shared");
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let spool = tmp.path().join("spool");
    let config = tmp.path().join("node.toml");
    fs::write(
        &config,
        format!(
            "{}\n[node]\nname = \"node-a\"\n[seal]\nrecipients = [\"{recipient}\"]\n",
            weed.store_toml("shared", "k", &spool)
        ),
    )
    .unwrap();
    let archives: Vec<PathBuf> = (0..6)
        .map(|i| {
            let a = tmp.path().join(format!("c{i}.tar"));
            let body = vec![b'a' + i as u8; 300_000];
            fs::write(&a, support::tar_with(&[("notes.txt", b'0', &body)])).unwrap();
            a
        })
        .collect();
    let children: Vec<Child> = archives
        .iter()
        .map(|a| {
            Command::new(support::ckvault_bin())
                .args(["seal", p(a), "--config", p(&config)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("cannot reach"), "false alarm: {stderr}");
        let m: Value = serde_json::from_str(&ok(&out)).unwrap();
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    // Every record once in the bucket, one version of each object; the spool empty.
    let s3 = ckvault::internal::store::s3::S3Store::new(&weed.store_config("shared", "k")).unwrap();
    let rt = support::seaweed::runtime();
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "shared", "k/");
    for id in &ids {
        for key in [
            format!("k/blobs/{id}.age"),
            format!("k/manifests/{id}.json"),
        ] {
            assert_eq!(per_key.get(&key), Some(&1), "{key}: {per_key:#?}");
        }
    }
    let left: Vec<_> = fs::read_dir(spool.join("records")).unwrap().collect();
    assert!(left.is_empty(), "records left in the spool: {left:?}");
    let out = ok(&Command::new(support::ckvault_bin())
        .args(["audit", "verify", "--config", p(&config)])
        .output()
        .unwrap());
    assert!(out.contains("OK 1 sources"), "{out}");
    let uploads = fs::read_to_string(spool.join("audit.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"action\":\"upload\""))
        .count();
    assert_eq!(uploads, 6, "one upload event per record");
}

#[test]
fn every_front_end_writes_the_one_configured_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_identity, recipient) = support::age_keypair(dir);
    let watch = dir.join("checkpoints");
    fs::create_dir(&watch).unwrap();
    fs::create_dir(dir.join("audit")).unwrap();
    let config = dir.join("ckvault.toml");
    fs::write(
        &config,
        format!(
            "[store]\npath = \"store\"\n[server]\nlisten = \"127.0.0.1:0\"\n[seal]\nrecipients = [\"{recipient}\"]\n[watch]\ndir = \"checkpoints\"\nsettle = \"0s\"\n[audit]\npath = \"audit/one.log\"\n"
        ),
    )
    .unwrap();
    let c = p(&config);
    let run = |args: &[&str]| {
        ok(&Command::new(support::ckvault_bin())
            .args(args)
            .output()
            .unwrap())
    };
    let tar = support::tar_with(&[("notes.txt", b'0', b"x\n")]);
    fs::write(
        watch.join("checkpoint-web-7d4_forensics-app-2026-11-28T10:00:00Z.tar"),
        &tar,
    )
    .unwrap();
    run(&["watch", "--once", "--config", c]);
    let cli_tar = dir.join("cli.tar");
    fs::write(&cli_tar, &tar).unwrap();
    let m: Value = serde_json::from_str(&run(&["seal", p(&cli_tar), "--config", c])).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    run(&["hold", &id, "--config", c, "--reason", "case 7"]);
    let server = support::serve::Serve::start(&config, &dir.join("serve.log"));
    let tls = dir.join("store/tls");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("admin.pem"))
        .arg("--key")
        .arg(tls.join("admin.key"))
        .arg(format!(
            "https://127.0.0.1:{}/v1/checkpoints/{id}/archive?purpose=one-log",
            server.port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    server.kill();

    assert!(
        !dir.join("store/audit.log").exists(),
        "a second log beside [audit] path"
    );
    let events: Vec<Value> = fs::read_to_string(dir.join("audit/one.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |action: &str, actor_part: &str| {
        events.iter().any(|e| {
            e["action"] == action
                && e["outcome"] == "ok"
                && e["actor"].as_str().unwrap_or("").contains(actor_part)
        })
    };
    assert_eq!(
        events.iter().filter(|e| e["action"] == "seal").count(),
        2,
        "the watcher's and the CLI's seals: {events:#?}"
    );
    assert!(has("hold", ""), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "download" && e["purpose"] == "one-log"),
        "{events:#?}"
    );
    let out = run(&["audit", "verify", "--config", c]);
    assert!(out.starts_with("OK audit log"), "{out}");
}

#[test]
fn serve_seals_what_a_crash_left_in_staging_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_identity, recipient) = support::age_keypair(dir);
    let store = dir.join("store");
    let tar = dir.join("first.tar");
    fs::write(&tar, support::tar_with(&[("notes.txt", b'0', b"x\n")])).unwrap();
    ok(&Command::new(support::ckvault_bin())
        .args(["seal", p(&tar), "--store", p(&store), "-r", &recipient])
        .output()
        .unwrap());
    // A capture whose process died: its owner token has no live lock.
    let staging = store.join("staging");
    fs::create_dir_all(&staging).unwrap();
    let left = staging.join("01ARZ3NDEKTSV4RRFFQ69G5FAV.o00000000deadbeef.tar");
    fs::write(&left, support::tar_with(&[("notes.txt", b'0', b"left\n")])).unwrap();
    let config = dir.join("ckvault.toml");
    fs::write(
        &config,
        format!(
            "[store]\npath = \"store\"\n[server]\nlisten = \"127.0.0.1:0\"\n[seal]\nrecipients = [\"{recipient}\"]\n[cri]\nupstream = \"no-runtime.sock\"\n"
        ),
    )
    .unwrap();
    let server = support::serve::Serve::start(&config, &dir.join("serve.log"));
    server.kill();
    assert!(!left.exists(), "the leftover was not sealed");
    let out = ok(&Command::new(support::ckvault_bin())
        .args(["ls", "--store", p(&store), "--format", "json"])
        .output()
        .unwrap());
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(records.len(), 2, "{out}");
    assert!(
        records
            .iter()
            .any(|r| r["source"]["kind"] == "staging-recovery"),
        "{out}"
    );
}

#[test]
fn retention_plan_and_apply_work_on_a_bucket_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(weed) = support::seaweed::Seaweed::start(&tmp.path().join("weed")) else {
        return;
    };
    weed.create_bucket("ret");
    let (_identity, recipient) = support::age_keypair(tmp.path());
    let config = tmp.path().join("node.toml");
    fs::write(
        &config,
        format!(
            "{}\n[node]\nname = \"node-r\"\n[seal]\nrecipients = [\"{recipient}\"]\n",
            weed.store_toml("ret", "r", &tmp.path().join("spool"))
        ),
    )
    .unwrap();
    let policies = tmp.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("retention.toml"),
        "version = 1\n[[rule]]\nname = \"keep-one\"\nkeep_last = 1\nmin_keep = 1\n",
    )
    .unwrap();
    let c = p(&config);
    let run = |args: &[&str]| {
        ok(&Command::new(support::ckvault_bin())
            .args(args)
            .output()
            .unwrap())
    };
    for i in 0..3 {
        let a = tmp.path().join(format!("r{i}.tar"));
        fs::write(&a, support::tar_with(&[("notes.txt", b'0', b"r\n")])).unwrap();
        run(&[
            "seal",
            p(&a),
            "--config",
            c,
            "--namespace",
            "shop",
            "--pod",
            "api-0",
            "--container",
            "api",
        ]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let plan: Vec<Value> = serde_json::from_str(&run(&[
        "retention",
        "plan",
        "--config",
        c,
        "--policies",
        p(&policies),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(plan.len(), 2, "{plan:#?}");
    let applied: Vec<Value> = serde_json::from_str(&run(&[
        "retention",
        "apply",
        "--config",
        c,
        "--policies",
        p(&policies),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(applied.len(), 2, "{applied:#?}");
    let left: Vec<Value> =
        serde_json::from_str(&run(&["ls", "--config", c, "--format", "json"])).unwrap();
    assert_eq!(left.len(), 1, "{left:#?}");
    let out = run(&["audit", "verify", "--config", c]);
    assert!(out.contains("OK 1 sources"), "{out}");
}
