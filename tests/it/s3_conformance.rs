//! The S3 store as AWS's rules see it, run unchanged against moto's server (strict) and
//! SeaweedFS (lenient), each started by the test on free loopback ports:
//! - Object Lock in both modes: one-PUT and multipart records, manifests and audit
//!   segments land with one version each under the configured retention;
//! - a record the store refuses (another object at its key) is stuck on its own while the
//!   records behind it go up, and goes up by itself once the key is free;
//! - the store frozen (SIGSTOP) past the client timeout in the middle of a multipart
//!   upload: after the retry, one version per object and no open multipart upload;
//! - two nodes sealing concurrently into one bucket, then `delete` leaving no version.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::s3server::{OnBucket, S3Server, all_versions, open_uploads};
use support::{ckvault, ok, p, wait_until};

/// Incompressible bytes (xorshift), so the sealed blob is as large as the archive.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; n];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    data
}

/// An archive of `n` incompressible bytes (0: a tiny one).
fn archive(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let body = if n == 0 {
        format!("small {seed}\n").into_bytes()
    } else {
        noise(n, seed)
    };
    fs::write(
        &path,
        support::tar_with(&[("rootfs-diff.tar", b'0', &body)]),
    )
    .unwrap();
    path
}

/// A node's config for `bucket` with `extra` lines in `[store]`; with `dead`, the same
/// spool but an endpoint nobody listens on (records wait in the spool).
fn node_config(
    tmp: &Path,
    server: &S3Server,
    bucket: &str,
    node: &str,
    extra: &str,
    recipient: &str,
    dead: bool,
) -> PathBuf {
    let spool = tmp.join(format!("spool-{node}"));
    let mut toml = server.node_toml(bucket, "k", &spool, extra, node, recipient);
    if dead {
        toml = server.dead(&toml);
    }
    let path = tmp.join(format!("{node}{}.toml", if dead { "-dead" } else { "" }));
    fs::write(&path, toml).unwrap();
    path
}

fn sealed_id(out: &std::process::Output) -> String {
    let m: Value = serde_json::from_str(&ok(out)).unwrap();
    m["id"].as_str().unwrap().to_owned()
}

fn spool_ids(tmp: &Path, node: &str) -> Vec<String> {
    let dir = tmp.join(format!("spool-{node}/records"));
    let mut ids: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn object_lock(kind: &str, mode: &str) {
    let Some(OnBucket {
        tmp,
        server,
        rt,
        s3,
        recipient,
    }) = OnBucket::start(kind, "locked")
    else {
        return;
    };
    let config = node_config(
        tmp.path(),
        &server,
        "locked",
        "node-l",
        &format!("object_lock = \"{mode}\"\nlock_days = 1\n"),
        &recipient,
        false,
    );
    let small = archive(tmp.path(), "small.tar", 0, 1);
    // Over one part (16 MiB) once sealed: a multipart upload.
    let big = archive(tmp.path(), "big.tar", 20 << 20, 2);
    let mut ids = Vec::new();
    for a in [&small, &big] {
        let out = ckvault(&["seal", p(a), "--config", p(&config)]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("upload pending") && !stderr.contains("stays in the spool"),
            "{kind}: the upload was refused: {stderr}\n{}",
            server.log_tail()
        );
        ids.push(sealed_id(&out));
    }
    assert!(spool_ids(tmp.path(), "node-l").is_empty());
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "locked", "k/");
    let mut keys: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            [
                format!("k/blobs/{id}.age"),
                format!("k/manifests/{id}.json"),
            ]
        })
        .collect();
    keys.extend(
        per_key
            .keys()
            .filter(|k| k.starts_with("k/audit/") && !k.ends_with("/head.json"))
            .cloned(),
    );
    assert!(
        keys.iter().any(|k| k.ends_with(".jsonl")),
        "{kind}: no audit segment shipped: {per_key:#?}"
    );
    let want = mode.to_uppercase();
    for key in &keys {
        assert_eq!(per_key.get(key), Some(&1), "{kind} {key}: {per_key:#?}");
        let h = rt
            .block_on(s3.client().head_object().bucket("locked").key(key).send())
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        assert_eq!(
            h.object_lock_mode().map(|m| m.as_str()),
            Some(want.as_str()),
            "{kind} {key}: {h:?}"
        );
        let until = h.object_lock_retain_until_date().map_or(0, |d| d.secs());
        assert!(
            until > now_secs() + 3600,
            "{kind} {key}: retained until {until}"
        );
    }
    assert!(open_uploads(&s3, &rt, "k/").is_empty());
    let out = ckvault(&[
        "delete",
        &ids[0],
        "--reason",
        "test",
        "--config",
        p(&config),
    ]);
    assert!(
        !out.status.success(),
        "{kind}: delete under {mode} retention"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Object Lock"), "{err}");
    assert_eq!(
        support::seaweed::versions_per_key(&s3, &rt, "locked", &format!("k/blobs/{}", ids[0]))
            .len(),
        1
    );
    let out = ok(&ckvault(&["audit", "verify", "--config", p(&config)]));
    assert!(out.contains("OK 1 sources"), "{out}");
    eprintln!(
        "{kind}, object_lock = {mode}: {} objects, one version each, {want} retention",
        keys.len()
    );
}

#[test]
fn object_lock_governance_on_moto() {
    object_lock("moto", "governance");
}

#[test]
fn object_lock_compliance_on_moto() {
    object_lock("moto", "compliance");
}

#[test]
fn object_lock_governance_on_seaweedfs() {
    object_lock("seaweedfs", "governance");
}

#[test]
fn object_lock_compliance_on_seaweedfs() {
    object_lock("seaweedfs", "compliance");
}

/// A long-running uploader (`ckvault watch`) whose stderr lines are collected.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(config: &Path, dir: &Path) -> Watcher {
        fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(support::ckvault_bin())
            .args(["watch", "--dir", p(dir), "--config", p(config)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Watcher { child, lines }
    }

    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upload_status(config: &Path) -> Value {
    serde_json::from_str(&ok(&ckvault(&[
        "upload",
        "--config",
        p(config),
        "--status",
    ])))
    .unwrap()
}

fn manifest_there(
    s3: &ckvault::internal::store::s3::S3Store,
    rt: &tokio::runtime::Runtime,
    id: &str,
) -> bool {
    rt.block_on(s3.head_size(&format!("k/manifests/{id}.json")))
        .unwrap()
        .is_some()
}

fn refused_record(kind: &str) {
    let Some(OnBucket {
        tmp,
        server,
        rt,
        s3,
        recipient,
    }) = OnBucket::start(kind, "queue")
    else {
        return;
    };
    let live = node_config(
        tmp.path(),
        &server,
        "queue",
        "node-q",
        "",
        &recipient,
        false,
    );
    let dead = node_config(tmp.path(), &server, "queue", "node-q", "", &recipient, true);
    // Two records wait in the spool (the store "away"); another object is planted at
    // the first one's blob key.
    let mut ids = Vec::new();
    for n in 0..2 {
        let a = archive(tmp.path(), &format!("r{n}.tar"), 0, n);
        ids.push(sealed_id(&ckvault(&["seal", p(&a), "--config", p(&dead)])));
    }
    let planted = format!("k/blobs/{}.age", ids[0]);
    rt.block_on(s3.put_bytes(&planted, b"not ckvault's".to_vec(), false, false))
        .unwrap();

    // One-shot upload: exit 1 naming the stuck record; the one behind it went up.
    let out = ckvault(&["upload", "--config", p(&live)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{kind}: {err}");
    assert!(
        err.contains(&ids[0]) && err.contains("another object"),
        "{err}"
    );
    assert!(
        manifest_there(&s3, &rt, &ids[1]),
        "{kind}: the second record did not go up"
    );
    assert!(!manifest_there(&s3, &rt, &ids[0]));
    assert_eq!(spool_ids(tmp.path(), "node-q"), vec![ids[0].clone()]);
    let versions = support::seaweed::versions_per_key(&s3, &rt, "queue", &planted);
    assert_eq!(versions.get(&planted), Some(&1), "{kind}: {versions:?}");

    // A long-running uploader says it is stuck, and uploads what comes behind.
    let watcher = Watcher::start(&live, &tmp.path().join("watched"));
    wait_until("status stuck", Duration::from_secs(30), || {
        let s = upload_status(&live);
        s["state"] == "stuck" && s["stuck"].as_array().is_some_and(|a| a.len() == 1)
    });
    let s = upload_status(&live);
    assert_eq!(s["stuck"][0]["record"], ids[0].as_str(), "{s}");
    assert!(
        s["stuck"][0]["error"]
            .as_str()
            .unwrap()
            .contains("another object"),
        "{s}"
    );
    let third = archive(tmp.path(), "r2.tar", 0, 2);
    let id3 = sealed_id(&ckvault(&["seal", p(&third), "--config", p(&dead)]));
    wait_until("the third record uploaded", Duration::from_secs(30), || {
        manifest_there(&s3, &rt, &id3)
    });
    assert!(!manifest_there(&s3, &rt, &ids[0]));

    // Once the planted object is gone, the stuck record goes up by itself.
    let versions: Vec<String> = rt
        .block_on(
            s3.client()
                .list_object_versions()
                .bucket("queue")
                .prefix(&planted)
                .send(),
        )
        .unwrap()
        .versions()
        .iter()
        .filter_map(|v| v.version_id().map(str::to_owned))
        .collect();
    for v in versions {
        rt.block_on(
            s3.client()
                .delete_object()
                .bucket("queue")
                .key(&planted)
                .version_id(v)
                .send(),
        )
        .unwrap();
    }
    wait_until("the stuck record uploaded", Duration::from_secs(60), || {
        manifest_there(&s3, &rt, &ids[0])
    });
    wait_until("status ok", Duration::from_secs(30), || {
        upload_status(&live)["state"] == "ok"
    });
    let log = watcher.stderr();
    let said = log
        .lines()
        .filter(|l| l.contains(&ids[0]) && l.contains("stays in the spool"))
        .count();
    assert_eq!(said, 1, "{kind}: said {said} times:\n{log}");
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "queue", "k/blobs/");
    assert!(per_key.values().all(|n| *n == 1), "{kind}: {per_key:#?}");
    assert!(spool_ids(tmp.path(), "node-q").is_empty());
    eprintln!("{kind}: a refused record was stuck on its own; 3 records up, one version each");
}

#[test]
fn a_refused_record_does_not_block_the_queue_on_moto() {
    refused_record("moto");
}

#[test]
fn a_refused_record_does_not_block_the_queue_on_seaweedfs() {
    refused_record("seaweedfs");
}

fn frozen_mid_multipart(kind: &str) {
    let Some(OnBucket {
        tmp,
        server,
        rt,
        s3,
        recipient,
    }) = OnBucket::start(kind, "frozen")
    else {
        return;
    };
    let extra = "object_lock = \"governance\"\nlock_days = 1\ntimeout = \"2s\"\n";
    let live = node_config(
        tmp.path(),
        &server,
        "frozen",
        "node-f",
        extra,
        &recipient,
        false,
    );
    let dead = node_config(
        tmp.path(),
        &server,
        "frozen",
        "node-f",
        extra,
        &recipient,
        true,
    );
    // The freeze must land while a request is in flight: on a fast loopback a whole
    // upload can slip between two polls, so up to three records are tried, each checked,
    // until one upload was caught (and failed) by the freeze.
    let watcher = Watcher::start(&live, &tmp.path().join("watched"));
    let mut caught = false;
    for attempt in 0..3u64 {
        let a = archive(
            tmp.path(),
            &format!("big{attempt}.tar"),
            96 << 20,
            7 + attempt,
        );
        let id = sealed_id(&ckvault(&["seal", p(&a), "--config", p(&dead)]));
        fs::remove_file(&a).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while open_uploads(&s3, &rt, "k/blobs/").is_empty() && !manifest_there(&s3, &rt, &id) {
            assert!(
                Instant::now() < deadline,
                "{kind}: no multipart upload opened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = watcher.stderr().matches("retrying").count();
        server.freeze_for(Duration::from_secs(8));
        wait_until(
            "the record uploaded after the freeze",
            Duration::from_secs(120),
            || manifest_there(&s3, &rt, &id),
        );
        let per_key = support::seaweed::versions_per_key(&s3, &rt, "frozen", "k/");
        for key in [
            format!("k/blobs/{id}.age"),
            format!("k/manifests/{id}.json"),
        ] {
            assert_eq!(per_key.get(&key), Some(&1), "{kind} {key}: {per_key:#?}");
        }
        assert!(
            open_uploads(&s3, &rt, "k/").is_empty(),
            "{kind}: a multipart upload was left open"
        );
        if watcher.stderr().matches("retrying").count() > before {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "{kind}: no upload was caught by the freeze in 3 tries:\n{}",
        watcher.stderr()
    );
    eprintln!("{kind}: frozen 8 s mid-multipart, timeout 2 s: one version each, nothing open");
}

#[test]
fn a_store_frozen_mid_multipart_leaves_one_version_on_moto() {
    frozen_mid_multipart("moto");
}

#[test]
fn a_store_frozen_mid_multipart_leaves_one_version_on_seaweedfs() {
    frozen_mid_multipart("seaweedfs");
}

fn two_nodes(kind: &str) {
    let Some(OnBucket {
        tmp,
        server,
        rt,
        s3,
        recipient,
    }) = OnBucket::start(kind, "shared")
    else {
        return;
    };
    let configs: Vec<PathBuf> = ["node-a", "node-b"]
        .iter()
        .map(|n| node_config(tmp.path(), &server, "shared", n, "", &recipient, false))
        .collect();
    let mut children = Vec::new();
    for (c, config) in configs.iter().enumerate() {
        for n in 0..3 {
            let a = archive(tmp.path(), &format!("n{c}-{n}.tar"), 0, (c * 10 + n) as u64);
            children.push(
                Command::new(support::ckvault_bin())
                    .args(["seal", p(&a), "--config", p(config)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| sealed_id(&c.wait_with_output().unwrap()))
        .collect();
    for n in ["node-a", "node-b"] {
        assert!(
            spool_ids(tmp.path(), n).is_empty(),
            "{kind} {n}: records left"
        );
    }
    let out = ok(&ckvault(&[
        "ls",
        "--config",
        p(&configs[0]),
        "--format",
        "json",
    ]));
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 6, "{out}");
    let per_key = support::seaweed::versions_per_key(&s3, &rt, "shared", "k/");
    for id in &ids {
        for key in [
            format!("k/blobs/{id}.age"),
            format!("k/manifests/{id}.json"),
        ] {
            assert_eq!(per_key.get(&key), Some(&1), "{kind} {key}: {per_key:#?}");
        }
    }
    let out = ok(&ckvault(&["audit", "verify", "--config", p(&configs[1])]));
    assert!(out.contains("OK 2 sources"), "{kind}: {out}");

    // delete on a versioned bucket without a lock: no version, no delete marker.
    ok(&ckvault(&[
        "delete",
        &ids[0],
        "--reason",
        "test",
        "--config",
        p(&configs[0]),
    ]));
    let left: Vec<_> = all_versions(&s3, &rt, "k/")
        .into_iter()
        .filter(|(k, _)| k.contains(&ids[0]))
        .collect();
    assert!(left.is_empty(), "{kind}: left after delete: {left:?}");
    eprintln!(
        "{kind}: 2 nodes x 3 concurrent seals: 6 records, one version each; delete left nothing"
    );
}

#[test]
fn two_nodes_seal_concurrently_into_one_bucket_on_moto() {
    two_nodes("moto");
}

#[test]
fn two_nodes_seal_concurrently_into_one_bucket_on_seaweedfs() {
    two_nodes("seaweedfs");
}
