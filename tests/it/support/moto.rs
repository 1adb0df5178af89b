//! A real moto S3 server (`moto_server` from PyPI `moto[server]`), which follows AWS's
//! documented rules closely (checksums on writes under Object Lock, for one), on a free
//! loopback port. Without `moto_server` the tests that use it fail under
//! `CKVAULT_REQUIRE_SEAWEEDFS=1` (set by scripts/test.sh), or skip loudly.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckvault::config::StoreConfig;

/// A running moto server.
pub struct Moto {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Moto {
    /// Starts moto with its log and credentials in `dir`; `None` (after a loud notice)
    /// when it is not installed and not required.
    pub fn start(dir: &Path) -> Option<Moto> {
        if super::outside_fast_tier("moto's S3 server (a service)") {
            return None;
        }
        if Command::new("moto_server").arg("--help").output().is_err() {
            super::cannot_run(
                "CKVAULT_REQUIRE_SEAWEEDFS",
                "moto_server is not installed: pip install 'moto[server]'",
            );
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("credentials"),
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn moto_server");
        let moto = Moto {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// The server's process ID (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The credentials file.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `[store]` for `bucket`/`prefix`.
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
            self.dir.join("credentials").display()
        )
    }

    /// The end of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(self.dir.join("moto.log")).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
