//! Nodes sharing a bucket cannot sign as one another (issue 27 item 7), against moto's
//! server and SeaweedFS, each started by the test:
//! - a compromised node-a (its spool and key) configured with `[node] name = "node-b"`
//!   publishes a record as node-b, pushing its key and objects past its own agent's check
//!   as a modified agent would: the record is neither listed nor shown by `ckvault ls` /
//!   `show`, nor listed or served by a real `ckvault serve`, without pins (a second key for
//!   a name that has one is refused, also once node-b's key object is deleted from the
//!   bucket: the reader remembers the name's first key) and with pins in the per-node
//!   layout; the old flat pins directory is refused with the way to migrate;
//! - the unmodified agent refuses to upload under a name another key holds;
//! - `ckvault key rotate` on node-b (audited `key-rotate`) makes its new key valid for
//!   node-b without pins; pinned readers trust it once it is pinned; the same command on
//!   the compromised node is refused; both nodes' audit logs and the bucket's still verify.
//!
//! Run against an older build with `CKVAULT_TEST_BIN=/old/ckvault`: the forged record is
//! listed there (without pins, and with a flat pins directory).

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::s3server::{OnBucket, S3Server};
use support::{ckvault, ok, p};

const BUCKET: &str = "shared";
const PREFIX: &str = "k";

/// A tiny archive (a tar the inspector rejects as not a checkpoint: sealed all the same).
fn archive(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        support::tar_with(&[("rootfs-diff.tar", b'0', name.as_bytes())]),
    )
    .unwrap();
    path
}

/// A config for `name` with its spool at `spool`; `extra` goes into `[store]`; with
/// `dead`, an endpoint nobody listens on (what is sealed stays in the spool).
#[allow(clippy::too_many_arguments)]
fn config(
    tmp: &Path,
    server: &S3Server,
    file: &str,
    name: &str,
    spool: &Path,
    extra: &str,
    recipient: &str,
    dead: bool,
) -> PathBuf {
    let mut toml = server.node_toml(BUCKET, PREFIX, spool, extra, name, recipient)
        + "[server]\nlisten = \"127.0.0.1:0\"\n";
    if dead {
        toml = server.dead(&toml);
    }
    let path = tmp.join(file);
    fs::write(&path, toml).unwrap();
    path
}

fn seal(archive: &Path, config: &Path) -> String {
    let out = ok(&ckvault(&["seal", p(archive), "--config", p(config)]));
    let m: Value = serde_json::from_str(&out).unwrap();
    m["id"].as_str().unwrap().to_owned()
}

/// `ckvault ls --config` as JSON: the listed IDs and stderr.
fn listed(config: &Path) -> (Vec<String>, String) {
    let out = ckvault(&["ls", "--config", p(config), "--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let items: Vec<Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ls output ({e}): {stderr}"));
    let ids = items
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    (ids, stderr)
}

/// Pushes a record sealed in `spool` into the bucket with the bucket credentials, and its
/// key under `as_node`: what a node agent modified by an attacker does.
fn push_forged(
    s3: &ckvault::internal::store::s3::S3Store,
    rt: &tokio::runtime::Runtime,
    spool: &Path,
    id: &str,
    as_node: &str,
) {
    let key_pem = fs::read_to_string(spool.join("keys/signing.pub")).unwrap();
    let key =
        ckvault::manifest::VerifyingKey::from_pem(&key_pem, Path::new("signing.pub")).unwrap();
    let rid: ckvault::manifest::RecordId = id.parse().unwrap();
    let blob = fs::read(spool.join(format!("records/{id}.age"))).unwrap();
    let manifest = fs::read(spool.join(format!("records/{id}.json"))).unwrap();
    rt.block_on(async {
        s3.publish_key(as_node, &key).await.unwrap();
        // Create-only: pushed again, they are there already.
        for (key, bytes) in [(s3.blob_key(&rid), blob), (s3.manifest_key(&rid), manifest)] {
            match s3.put_bytes(&key, bytes, true, false).await {
                Ok(_)
                | Err(ckvault::internal::store::StoreError::S3 {
                    kind: ckvault::internal::store::s3::client::Kind::Precondition,
                    ..
                }) => {}
                Err(e) => panic!("{key}: {e}"),
            }
        }
    });
}

/// Removes every version of the objects under `prefix` (bucket credentials).
fn delete_all(
    s3: &ckvault::internal::store::s3::S3Store,
    rt: &tokio::runtime::Runtime,
    prefix: &str,
) {
    rt.block_on(async {
        let out = s3
            .client()
            .list_object_versions()
            .bucket(s3.bucket())
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        for v in out.versions() {
            s3.client()
                .delete_object()
                .bucket(s3.bucket())
                .key(v.key().unwrap())
                .set_version_id(v.version_id().map(str::to_owned))
                .send()
                .await
                .unwrap();
        }
    });
}

fn pin(dir: &Path, node: &str, spool: &Path, file: &str) {
    fs::create_dir_all(dir.join(node)).unwrap();
    fs::copy(spool.join("keys/signing.pub"), dir.join(node).join(file)).unwrap();
}

fn nodes_cannot_sign_as_one_another(kind: &str) {
    let Some(OnBucket {
        tmp,
        server,
        rt,
        recipient,
        ..
    }) = OnBucket::start(kind, BUCKET)
    else {
        return;
    };
    let t = tmp.path();
    let s3 =
        ckvault::internal::store::s3::S3Store::new(&server.store_config(BUCKET, PREFIX)).unwrap();
    let (spool_a, spool_b) = (t.join("spool-a"), t.join("spool-b"));
    let node_a = config(
        t, &server, "a.toml", "node-a", &spool_a, "", &recipient, false,
    );
    let node_b = config(
        t, &server, "b.toml", "node-b", &spool_b, "", &recipient, false,
    );
    let id_a = seal(&archive(t, "a0.tar"), &node_a);
    let id_b = seal(&archive(t, "b0.tar"), &node_b);
    // The store's clock counts seconds (SeaweedFS): node-b's key is published first.
    std::thread::sleep(Duration::from_millis(1_100));

    // node-a compromised: its spool and key, named node-b.
    let spool_x = t.join("spool-x");
    ok(&std::process::Command::new("cp")
        .args(["-a", p(&spool_a), p(&spool_x)])
        .output()
        .unwrap());
    let dead_x = config(
        t,
        &server,
        "x-dead.toml",
        "node-b",
        &spool_x,
        "",
        &recipient,
        true,
    );
    let live_x = config(
        t, &server, "x.toml", "node-b", &spool_x, "", &recipient, false,
    );
    let id_x = seal(&archive(t, "x0.tar"), &dead_x);
    let forged: Value =
        serde_json::from_slice(&fs::read(spool_x.join(format!("records/{id_x}.json"))).unwrap())
            .unwrap();
    assert_eq!(forged["node"], "node-b");
    push_forged(&s3, &rt, &spool_x, &id_x, "node-b");

    // Without pins: the second key for node-b is refused, said so.
    let spool_r = t.join("spool-reader");
    let reader = config(
        t, &server, "r.toml", "reader-1", &spool_r, "", &recipient, false,
    );
    let (ids, stderr) = listed(&reader);
    assert!(
        ids.contains(&id_a) && ids.contains(&id_b),
        "{kind}: genuine records missing: {ids:?} {stderr}"
    );
    assert!(
        !ids.contains(&id_x),
        "{kind}: the record node-a signed as node-b is listed without pins: {ids:?}"
    );
    assert!(stderr.contains("is not that node's"), "{kind}: {stderr}");
    let out = ckvault(&["show", &id_x, "--config", p(&reader)]);
    assert!(
        !out.status.success(),
        "{kind}: show of the forged record succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The unmodified agent refuses to upload under a name another key holds.
    let out = ckvault(&["upload", "--config", p(&live_x)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot sign as \"node-b\""),
        "{kind}: upload as node-b with node-a's key: {} {err}",
        out.status
    );
    // A real server neither lists nor serves it.
    let server_cfg = config(
        t,
        &server,
        "s.toml",
        "server-1",
        &t.join("spool-server"),
        "",
        &recipient,
        false,
    );
    {
        let serve = support::serve::Serve::start(&server_cfg, &t.join("serve.err"));
        let tls = t.join("spool-server/tls");
        let get = |path: &str| -> (u16, Vec<u8>) {
            let out = support::serve::admin_curl(&tls, 30)
                .arg(format!("https://127.0.0.1:{}{path}", serve.port))
                .output()
                .unwrap();
            support::serve::answer(out.stdout)
        };
        // The index is built in the background after start.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let list = loop {
            let (status, body) = get("/v1/checkpoints");
            assert_eq!(status, 200, "{kind}: {}", String::from_utf8_lossy(&body));
            let list = String::from_utf8_lossy(&body).into_owned();
            if list.contains(&id_b) || std::time::Instant::now() > deadline {
                break list;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(
            list.contains(&id_b) && !list.contains(&id_x),
            "{kind}: {list}"
        );
        let (status, _) = get(&format!("/v1/checkpoints/{id_x}"));
        assert_ne!(status, 200, "{kind}: the forged manifest is served");
        let (status, _) = get(&format!("/v1/checkpoints/{id_x}/archive?purpose=test"));
        assert_ne!(status, 200, "{kind}: the forged blob is served");
        let (status, _) = get(&format!("/v1/checkpoints/{id_b}"));
        assert_eq!(status, 200, "{kind}: node-b's record is not served");
        serve.kill();
    }

    // node-b's key object deleted from the bucket: the reader remembers node-b's first
    // key, so node-a's key does not take its place.
    delete_all(&s3, &rt, &format!("{PREFIX}/keys/node-b/"));
    push_forged(&s3, &rt, &spool_x, &id_x, "node-b");
    let (ids, stderr) = listed(&reader);
    assert!(
        ids.contains(&id_b) && !ids.contains(&id_x),
        "{kind}: after node-b's key was replaced: {ids:?} {stderr}"
    );
    // node-b publishes its key again at its next upload.
    ok(&ckvault(&["upload", "--config", p(&node_b)]));

    // Pins in the per-node layout: node-a's key is trusted for node-a only.
    let pins = t.join("pins");
    pin(&pins, "node-a", &spool_a, "a.pem");
    pin(&pins, "node-b", &spool_b, "b.pem");
    let pinned = config(
        t,
        &server,
        "pinned.toml",
        "reader-2",
        &t.join("spool-pinned"),
        &format!("trusted_keys = \"{}\"\n", pins.display()),
        &recipient,
        false,
    );
    let (ids, stderr) = listed(&pinned);
    assert!(
        ids.contains(&id_a) && ids.contains(&id_b) && !ids.contains(&id_x),
        "{kind}: with pins: {ids:?} {stderr}"
    );
    assert!(
        stderr.contains("is not pinned for node node-b"),
        "{kind}: {stderr}"
    );
    assert!(!ok(&ckvault(&["show", &id_b, "--config", p(&pinned)])).is_empty());
    assert!(
        !ckvault(&["show", &id_x, "--config", p(&pinned)])
            .status
            .success()
    );

    // The old flat layout is refused, saying how to migrate.
    let flat = t.join("pins-flat");
    fs::create_dir_all(&flat).unwrap();
    fs::copy(spool_a.join("keys/signing.pub"), flat.join("node-a.pem")).unwrap();
    fs::copy(spool_b.join("keys/signing.pub"), flat.join("node-b.pem")).unwrap();
    let flat_cfg = config(
        t,
        &server,
        "flat.toml",
        "reader-3",
        &t.join("spool-flat"),
        &format!("trusted_keys = \"{}\"\n", flat.display()),
        &recipient,
        false,
    );
    let out = ckvault(&["ls", "--config", p(&flat_cfg), "--format", "json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("flat layout") && err.contains("mkdir -p"),
        "{kind}: a flat trusted_keys: {} {err} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // The compromised node cannot rotate node-b's key.
    let out = ckvault(&[
        "key",
        "rotate",
        "--config",
        p(&live_x),
        "--reason",
        "takeover",
    ]);
    assert!(
        !out.status.success(),
        "{kind}: rotate on the compromised node: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // node-b rotates: explicit, audited; its new key is valid for node-b.
    let old_b = fs::read_to_string(spool_b.join("keys/signing.pub")).unwrap();
    let out = ok(&ckvault(&[
        "key",
        "rotate",
        "--config",
        p(&node_b),
        "--reason",
        "scheduled rotation",
    ]));
    assert!(out.contains("rotated the key of node node-b"), "{out}");
    assert_ne!(
        fs::read_to_string(spool_b.join("keys/signing.pub")).unwrap(),
        old_b
    );
    let events = support::audit_events(&spool_b);
    let rotated: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key-rotate")
        .collect();
    assert_eq!(rotated.len(), 1, "{events:?}");
    assert_eq!(rotated[0]["outcome"], "ok");
    assert_eq!(rotated[0]["purpose"], "scheduled rotation");
    let id_b1 = seal(&archive(t, "b1.tar"), &node_b);
    let (ids, stderr) = listed(&reader);
    assert!(
        ids.contains(&id_b) && ids.contains(&id_b1) && !ids.contains(&id_x),
        "{kind}: after rotation, without pins: {ids:?} {stderr}"
    );
    // Pinned readers trust the new key once it is pinned to node-b.
    let (ids, _) = listed(&pinned);
    assert!(
        ids.contains(&id_b) && !ids.contains(&id_b1),
        "{kind}: {ids:?}"
    );
    pin(&pins, "node-b", &spool_b, "b2.pem");
    let (ids, stderr) = listed(&pinned);
    assert!(
        ids.contains(&id_b) && ids.contains(&id_b1) && !ids.contains(&id_x),
        "{kind}: new key pinned: {ids:?} {stderr}"
    );
    // node-b's local log (heads signed by both keys) and the bucket's audit verify.
    ok(&ckvault(&["audit", "verify", "--store", p(&spool_b)]));
    let out = ok(&ckvault(&["audit", "verify", "--config", p(&node_b)]));
    assert!(out.contains("node-b"), "{kind}: {out}");
    eprintln!(
        "{kind}: record signed by node-a as node-b refused without pins, with pins, by a real server; rotation of node-b accepted"
    );
}

#[test]
fn nodes_cannot_sign_as_one_another_on_moto() {
    nodes_cannot_sign_as_one_another("moto");
}

#[test]
fn nodes_cannot_sign_as_one_another_on_seaweedfs() {
    nodes_cannot_sign_as_one_another("seaweedfs");
}
