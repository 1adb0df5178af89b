//! Crash consistency of the server's audit appends: `ckvault serve` is SIGKILLed while
//! eight clients download a REAL sealed checkpoint (and list, and get refused, all of which
//! append audit events), then started again on the same store. After every kill:
//!
//! - the audit chain verifies (`ckvault audit verify`): no torn or lost line;
//! - every download a client received whole (status 200, SHA-256 of the body equal to the
//!   manifest's) has its `download` event: the event is written before the first byte;
//! - the record still verifies and the restarted server serves it.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::crash::{assert_ok, ck, p};
use support::serve::Serve;

const ROUNDS: u32 = 12;
const CLIENTS: usize = 8;

/// A GET with the generated admin certificate (or none): (HTTP status, body).
fn get(tls: &Path, port: u16, path: &str, admin: bool) -> (u16, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(tls.join("ca.pem"));
    if admin {
        cmd.arg("--cert")
            .arg(tls.join("admin.pem"))
            .arg("--key")
            .arg(tls.join("admin.key"));
    }
    let Ok(out) = cmd.arg(format!("https://127.0.0.1:{port}{path}")).output() else {
        return (0, Vec::new());
    };
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(body.get(split + 1..).unwrap_or_default())
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(split);
    (status, body)
}

/// `download` events with outcome ok for `id` in the store's audit log.
fn audited_downloads(store: &Path, id: &str) -> u64 {
    let text = fs::read_to_string(store.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "download" && e["outcome"] == "ok" && e["record"] == id)
        .count() as u64
}

#[test]
fn sigkill_of_the_server_during_audit_appends_keeps_the_chain_and_every_download_audited() {
    let Some(archive) = support::real_checkpoint(16, "shop", "api-0", "api", "none") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_identity, recipient) = support::age_keypair(dir.path());
    let store = dir.path().join("store");
    let out = ck(&["seal", p(&archive), "--store", p(&store), "-r", &recipient]);
    assert_ok(&out, "seal");
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = manifest["id"].as_str().unwrap().to_owned();
    let sha = manifest["sealed"]["sha256"].as_str().unwrap().to_owned();
    let config = dir.path().join("ckvault.toml");
    fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n",
            p(&store)
        ),
    )
    .unwrap();
    let tls: PathBuf = store.join("tls");
    let received = Arc::new(AtomicU64::new(0));
    let mut requests = 0u64;

    for i in 0..ROUNDS {
        let server = Serve::start(&config, &dir.path().join(format!("server-{i}.log")));
        let port = server.port;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (tls, id, sha) = (tls.clone(), id.clone(), sha.clone());
                let (stop, received) = (stop.clone(), received.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let path = match (c + n as usize) % 4 {
                            0 => "/v1/checkpoints".to_owned(),
                            1 => format!("/v1/checkpoints/{id}"),
                            _ => format!("/v1/checkpoints/{id}/archive?purpose=crash-test"),
                        };
                        let admin = !(c == 0 && n.is_multiple_of(3)); // some refusals, audited too
                        let (status, body) = get(&tls, port, &path, admin);
                        if status == 200
                            && path.ends_with("crash-test")
                            && hex::encode(Sha256::digest(&body)) == sha
                        {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n
                })
            })
            .collect();
        // Kill points from 150 ms to about 2 s into the load.
        std::thread::sleep(Duration::from_millis(150 + 160 * u64::from(i)));
        server.kill(); // SIGKILL, then reaped
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            requests += c.join().unwrap();
        }
        let what = format!("round {i}");
        assert_ok(&ck(&["audit", "verify", "--store", p(&store)]), &what);
        let audited = audited_downloads(&store, &id);
        let got = received.load(Ordering::Relaxed);
        assert!(
            audited >= got,
            "{what}: {got} downloads received whole but only {audited} audited"
        );
    }

    // The store is intact and a restarted server serves the record.
    assert_ok(&ck(&["verify", "--all", "--store", p(&store)]), "verify");
    let server = Serve::start(&config, &dir.path().join("server-last.log"));
    let (status, body) = get(
        &tls,
        server.port,
        &format!("/v1/checkpoints/{id}/archive?purpose=after"),
        true,
    );
    assert_eq!(status, 200);
    assert_eq!(hex::encode(Sha256::digest(&body)), sha);
    server.kill();
    assert_ok(&ck(&["audit", "verify", "--store", p(&store)]), "final");
    let got = received.load(Ordering::Relaxed);
    println!(
        "crash serve: {ROUNDS} server kills under load, {requests} requests, {got} whole downloads, {} audited, chain verified after each",
        audited_downloads(&store, &id)
    );
    assert!(
        got >= u64::from(ROUNDS),
        "the load must download something ({got})"
    );
}
