//! `/healthz` of a server on a bucket tells the truth about its uploads: with credentials
//! that may read the bucket but not write it (a real SeaweedFS identity limited to Read and
//! List), the server lists and serves, and its health says the uploads are refused.

use crate::support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::p;

#[test]
fn healthz_says_uploads_are_refused_when_the_bucket_takes_no_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(weed) = support::seaweed::Seaweed::start(&tmp.path().join("weed")) else {
        return;
    };
    weed.create_bucket("health");
    let spool = tmp.path().join("server-spool");
    let toml = weed.store_toml("health", "k", &spool).replace(
        &weed.credentials_file().display().to_string(),
        &weed.credentials_ro_file().display().to_string(),
    );
    let config = tmp.path().join("server.toml");
    fs::write(
        &config,
        format!("{toml}[server]\nlisten = \"127.0.0.1:0\"\n[node]\nname = \"server-h\"\n"),
    )
    .unwrap();
    let server = support::serve::Serve::start(&config, &tmp.path().join("server.log"));
    let ca = spool.join("tls/ca.pem");
    let health = || -> Value {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert", p(&ca)])
            .arg(format!("https://127.0.0.1:{}/healthz", server.port))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let h = loop {
        let h = health();
        // The index's first refresh (reads) and the uploader's first drain race at start:
        // wait for both to have happened.
        if h["uploads"] == "refused" && h["store"] == "ok" {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "never reads ok with uploads refused: {h}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["store"], "ok", "reads still work: {h}");
    server.kill();
}
