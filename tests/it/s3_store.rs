//! The S3 store against a REAL SeaweedFS (`weed server -s3`, started by the test): two node
//! agents (`ckvault watch`) and one server (`ckvault serve`) share one bucket; records from
//! both nodes are listed and downloaded through the server; the store goes away mid-run
//! and comes back with every record arriving exactly once and no plaintext meanwhile;
//! wrong credentials give a clear error; S3 Object Lock (legal hold, COMPLIANCE retention)
//! refuses deletion through ckvault and directly with the bucket credentials.

use crate::support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::seaweed::{self, Seaweed};
use support::{Kill, ckvault, p, sha256_hex, wait_until};

/// A node agent: `ckvault watch --config` with its stdout in a file.
struct Node {
    _proc: Kill,
    out: PathBuf,
    watch_dir: PathBuf,
    spool: PathBuf,
}

impl Node {
    fn start(dir: &Path, name: &str, sw: &Seaweed, recipient: &str) -> Node {
        let watch_dir = dir.join(format!("{name}-checkpoints"));
        let spool = dir.join(format!("{name}-spool"));
        fs::create_dir_all(&watch_dir).unwrap();
        let config = dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "{}[seal]\nrecipients = [\"{recipient}\"]\n[watch]\ndir = \"{}\"\nsettle = \"200ms\"\n[node]\nname = \"{name}\"\n",
                sw.store_toml("cluster", "prod/", &spool),
                watch_dir.display()
            ),
        )
        .unwrap();
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(support::ckvault_bin())
            .args(["watch", "--config", p(&config)])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("spawn ckvault watch");
        Node {
            _proc: Kill(child),
            out,
            watch_dir,
            spool,
        }
    }

    /// Drops a copy of `archive` into the watched directory atomically (as the kubelet's
    /// runtime would finish writing it).
    fn drop_archive(&self, archive: &Path, n: usize) {
        let tmp = self.watch_dir.join(format!(".incoming-{n}"));
        fs::copy(archive, &tmp).unwrap();
        fs::rename(
            &tmp,
            self.watch_dir.join(format!(
                "checkpoint-api-0_shop-api-2026-11-28T10:00:{n:02}Z.tar"
            )),
        )
        .unwrap();
    }

    fn sealed(&self) -> Vec<String> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("sealed "))
            .map(str::to_owned)
            .collect()
    }

    fn spool_records(&self) -> usize {
        fs::read_dir(self.spool.join("records"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Files in the watched directory that are not receipts (plaintext left behind).
    fn plaintext_left(&self) -> Vec<String> {
        fs::read_dir(&self.watch_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar"))
            .collect()
    }

    fn staging_empty(&self) -> bool {
        fs::read_dir(self.spool.join("staging")).map_or(true, |mut d| d.next().is_none())
    }
}

/// `ckvault serve --config` on a free port.
struct Server {
    _proc: support::serve::Serve,
    port: u16,
    tls: PathBuf,
    config: PathBuf,
}

impl Server {
    fn start(dir: &Path, sw: &Seaweed) -> Server {
        let spool = dir.join("server-spool");
        let config = dir.join("server.toml");
        fs::write(
            &config,
            format!(
                "{}[server]\nlisten = \"127.0.0.1:0\"\n[node]\nname = \"server-1\"\n",
                sw.store_toml("cluster", "prod/", &spool)
            ),
        )
        .unwrap();
        let serve = support::serve::Serve::start(&config, &dir.join("server.err"));
        let port = serve.port;
        Server {
            _proc: serve,
            port,
            tls: spool.join("tls"),
            config,
        }
    }

    /// GET `path` with the generated admin certificate: (status, body).
    fn get(&self, path: &str, extra: &[&str]) -> (u16, Vec<u8>) {
        let out = support::serve::admin_curl(&self.tls, 60)
            .args(extra)
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("run curl");
        support::serve::answer(out.stdout)
    }

    fn list(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.get(&format!("/v1/checkpoints{query}"), &[]);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let items = self.list("");
            if items.len() >= n || Instant::now() > deadline {
                return items;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn two_nodes_and_a_server_share_one_bucket_and_survive_a_store_outage() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(mut sw) = Seaweed::start(&dir.path().join("seaweed")) else {
        return;
    };
    sw.create_bucket("cluster");
    let (identity, recipient) = support::age_keypair(dir.path());
    let original = fs::read(&archive).unwrap();

    let a = Node::start(dir.path(), "node-a", &sw, &recipient);
    let b = Node::start(dir.path(), "node-b", &sw, &recipient);
    for n in 0..2 {
        a.drop_archive(&archive, n);
        b.drop_archive(&archive, 10 + n);
    }
    let server = Server::start(dir.path(), &sw);
    let items = server.wait_for(4, Duration::from_secs(90));

    // Counts: sealed by the agents = uploaded to the bucket = listed by the server.
    let sealed = a.sealed().len() + b.sealed().len();
    let s3 =
        ckvault::internal::store::s3::S3Store::new(&sw.store_config("cluster", "prod/")).unwrap();
    let rt = seaweed::runtime();
    let uploaded = rt.block_on(s3.ids()).unwrap();
    println!(
        "two nodes: sealed {sealed}, uploaded {}, listed {}",
        uploaded.len(),
        items.len()
    );
    assert_eq!((sealed, uploaded.len(), items.len()), (4, 4, 4));
    let nodes: Vec<&str> = items.iter().filter_map(|i| i["node"].as_str()).collect();
    assert_eq!(
        nodes.iter().filter(|n| **n == "node-a").count(),
        2,
        "{nodes:?}"
    );
    assert_eq!(
        nodes.iter().filter(|n| **n == "node-b").count(),
        2,
        "{nodes:?}"
    );
    assert_eq!(server.list("?node=node-b").len(), 2, "node filter");
    assert!(a.plaintext_left().is_empty() && b.plaintext_left().is_empty());
    assert_eq!(
        (a.spool_records(), b.spool_records()),
        (0, 0),
        "spools drained"
    );

    // Every record downloads through the server and matches its manifest; one opens with
    // age + zstd to the original archive.
    for (k, item) in items.iter().enumerate() {
        let id = item["id"].as_str().unwrap();
        let (status, manifest) = server.get(&format!("/v1/checkpoints/{id}"), &[]);
        assert_eq!(status, 200);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let (status, blob) = server.get(&format!("/v1/checkpoints/{id}/archive?purpose=test"), &[]);
        assert_eq!(status, 200);
        assert_eq!(
            sha256_hex(&blob),
            manifest["sealed"]["sha256"].as_str().unwrap()
        );
        assert!(
            !blob
                .windows(support::MARKER.len())
                .any(|w| w == support::MARKER.as_bytes()),
            "the memory marker must not be readable in a sealed blob"
        );
        if k == 0 {
            let sealed_path = dir.path().join("one.age");
            fs::write(&sealed_path, &blob).unwrap();
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "age -d -i {} {} | zstd -dc",
                    p(&identity),
                    p(&sealed_path)
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout == original, "age|zstd gives back the archive");
        }
    }

    // The store goes away: new checkpoints are still sealed at once (no plaintext left),
    // wait in the spool, and the uploader says why.
    sw.stop();
    a.drop_archive(&archive, 20);
    a.drop_archive(&archive, 21);
    wait_until(
        "node-a to seal during the outage",
        Duration::from_secs(60),
        || a.sealed().len() == 4,
    );
    assert!(a.plaintext_left().is_empty(), "{:?}", a.plaintext_left());
    assert!(a.staging_empty());
    assert_eq!(a.spool_records(), 2, "sealed records wait in the spool");
    wait_until(
        "the uploader to report the outage",
        Duration::from_secs(30),
        || {
            fs::read_to_string(a.spool.join("upload-status.json"))
                .is_ok_and(|s| s.contains("\"retrying\"") && s.contains("cannot reach"))
        },
    );

    sw.restart("cluster");
    let items = server.wait_for(6, Duration::from_secs(120));
    let ids: BTreeSet<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    let uploaded = rt.block_on(s3.ids()).unwrap();
    let sealed = a.sealed().len() + b.sealed().len();
    println!(
        "after the outage: sealed {sealed}, uploaded {}, listed {} ({} distinct)",
        uploaded.len(),
        items.len(),
        ids.len()
    );
    assert_eq!(
        (sealed, uploaded.len(), items.len(), ids.len()),
        (6, 6, 6, 6)
    );
    wait_until("node-a's spool to drain", Duration::from_secs(30), || {
        a.spool_records() == 0
    });

    // Audit from both nodes and the server is in the bucket, and verifies.
    wait_until(
        "audit segments from three sources",
        Duration::from_secs(30),
        || {
            let out = ckvault(&["audit", "verify", "--config", p(&server.config)]);
            String::from_utf8_lossy(&out.stdout).contains("OK 3 sources")
        },
    );
    let out = ckvault(&["audit", "verify", "--config", p(&server.config)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for source in ["node-a", "node-b", "server-1"] {
        assert!(text.contains(&format!("audit/{source}:")), "{text}");
    }
}

#[test]
fn wrong_credentials_are_a_clear_error_and_lose_nothing() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(sw) = Seaweed::start(&dir.path().join("seaweed")) else {
        return;
    };
    sw.create_bucket("creds");
    let (_identity, recipient) = support::age_keypair(dir.path());
    let bad = dir.path().join("bad-credentials");
    fs::write(
        &bad,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\n",
            seaweed::ACCESS_KEY
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("bad.toml");
    let toml = sw
        .store_toml("creds", "", &spool)
        .replace(p(&sw.credentials_file()), p(&bad));
    // A spool that holds one sealed record at most: while the store refuses us, the second
    // capture is refused rather than piling up.
    fs::write(
        &config,
        format!("{toml}spool_max = \"1KiB\"\n[seal]\nrecipients = [\"{recipient}\"]\n"),
    )
    .unwrap();

    let out = ckvault(&["ls", "--config", p(&config)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused our credentials"), "{err}");
    assert!(
        err.contains("403") && err.contains("credentials_file"),
        "{err}"
    );

    // Sealing still works; the record waits in the spool, sealed, with the reason.
    let out = ckvault(&["seal", "--config", p(&config), p(&archive)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("upload pending") && err.contains("refused our credentials"),
        "{err}"
    );
    let spooled: Vec<_> = fs::read_dir(spool.join("records"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        spooled.iter().filter(|n| n.ends_with(".age")).count(),
        1,
        "{spooled:?}"
    );
    let out = ckvault(&["seal", "--config", p(&config), p(&archive)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a full spool refuses");
    assert!(err.contains("spool") && err.contains("spool_max"), "{err}");
    assert!(archive.exists(), "the refused archive is left alone");

    // With the right credentials the same spool drains.
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        format!(
            "{}[seal]\nrecipients = [\"{recipient}\"]\n",
            sw.store_toml("creds", "", &spool)
        ),
    )
    .unwrap();
    let out = ckvault(&["upload", "--config", p(&good)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("uploaded 1 record"));
}

/// Every version of `key`, deleted directly with the bucket credentials: the errors.
fn delete_directly(sw: &Seaweed, bucket: &str, key: &str) -> Vec<String> {
    let s3 = ckvault::internal::store::s3::S3Store::new(&sw.store_config(bucket, "")).unwrap();
    let rt = seaweed::runtime();
    rt.block_on(async {
        let versions = s3
            .client()
            .list_object_versions()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .unwrap();
        let mut errors = Vec::new();
        for v in versions.versions() {
            let r = s3
                .client()
                .delete_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(v.version_id().map(str::to_owned))
                .send()
                .await;
            if let Err(e) = r {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                errors.push(e.code().unwrap_or("?").to_owned());
            }
        }
        assert!(!versions.versions().is_empty(), "{key} has versions");
        errors
    })
}

#[test]
fn object_lock_refuses_deletes_of_held_and_compliance_retained_records() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(sw) = Seaweed::start(&dir.path().join("seaweed")) else {
        return;
    };
    sw.create_bucket("evidence");
    let (_identity, recipient) = support::age_keypair(dir.path());
    let plain = dir.path().join("plain.toml");
    fs::write(
        &plain,
        format!(
            "{}[seal]\nrecipients = [\"{recipient}\"]\n",
            sw.store_toml("evidence", "plain/", &dir.path().join("spool-plain"))
        ),
    )
    .unwrap();
    let compliance = dir.path().join("compliance.toml");
    fs::write(
        &compliance,
        format!(
            "{}object_lock = \"compliance\"\nlock_days = 1\n[seal]\nrecipients = [\"{recipient}\"]\n",
            sw.store_toml("evidence", "locked/", &dir.path().join("spool-locked"))
        ),
    )
    .unwrap();
    let seal = |config: &Path| -> String {
        let out = ckvault(&["seal", "--config", p(config), p(&archive)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty()
                || !String::from_utf8_lossy(&out.stderr).contains("pending")
        );
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        m["id"].as_str().unwrap().to_owned()
    };

    // Legal hold: ckvault refuses, and so does the store itself.
    let held = seal(&plain);
    let out = ckvault(&["hold", &held, "--config", p(&plain), "--reason", "case 7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ckvault(&[
        "delete",
        &held,
        "--config",
        p(&plain),
        "--reason",
        "cleanup",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    let refused = delete_directly(&sw, "evidence", &format!("plain/blobs/{held}.age"));
    println!("direct delete of a held blob: {refused:?}");
    assert!(
        !refused.is_empty() && refused.iter().all(|c| c == "AccessDenied"),
        "{refused:?}"
    );
    // Released, the same record goes: the refusals were the hold's doing.
    let out = ckvault(&[
        "release",
        &held,
        "--config",
        p(&plain),
        "--reason",
        "case closed",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ckvault(&[
        "delete",
        &held,
        "--config",
        p(&plain),
        "--reason",
        "case closed",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ckvault(&["ls", "--config", p(&plain), "--format", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // COMPLIANCE retention: nobody deletes before the date.
    let locked = seal(&compliance);
    let out = ckvault(&[
        "delete",
        &locked,
        "--config",
        p(&compliance),
        "--reason",
        "cleanup",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Object Lock") && err.contains("COMPLIANCE"),
        "{err}"
    );
    for key in [
        format!("locked/blobs/{locked}.age"),
        format!("locked/manifests/{locked}.json"),
    ] {
        let refused = delete_directly(&sw, "evidence", &key);
        println!("direct delete of a COMPLIANCE-retained {key}: {refused:?}");
        assert!(
            !refused.is_empty() && refused.iter().all(|c| c == "AccessDenied"),
            "{refused:?}"
        );
    }
    let out = ckvault(&["ls", "--config", p(&compliance), "--format", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1, "the record is still there");
}
