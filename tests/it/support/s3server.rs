//! One S3 server of either kind, so a test runs unchanged against moto's server (strict
//! about AWS's rules) and SeaweedFS (lenient): start, a `[store]` section for a bucket, a
//! bucket with Object Lock (hence versioning), the SDK client, freezing the server.

use std::path::Path;
use std::time::Duration;

use ckvault::config::StoreConfig;
use ckvault::internal::store::s3::S3Store;

use super::moto::Moto;
use super::seaweed::Seaweed;

/// A running S3 server.
pub enum S3Server {
    /// moto's server.
    Moto(Moto),
    /// SeaweedFS.
    Seaweed(Seaweed),
}

impl S3Server {
    /// Starts a server of `kind` (`"moto"` or `"seaweedfs"`) with its files in `dir`.
    pub fn start(kind: &str, dir: &Path) -> Option<S3Server> {
        match kind {
            "moto" => Moto::start(dir).map(S3Server::Moto),
            "seaweedfs" => Seaweed::start(dir).map(S3Server::Seaweed),
            other => panic!("no S3 server kind {other:?}"),
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        match self {
            S3Server::Moto(m) => m.endpoint(),
            S3Server::Seaweed(s) => s.endpoint(),
        }
    }

    /// A `[store]` for `bucket`/`prefix`.
    pub fn store_config(&self, bucket: &str, prefix: &str) -> StoreConfig {
        match self {
            S3Server::Moto(m) => m.store_config(bucket, prefix),
            S3Server::Seaweed(s) => s.store_config(bucket, prefix),
        }
    }

    /// The `[store]` TOML section for `bucket`/`prefix` with a spool at `spool`.
    pub fn store_toml(&self, bucket: &str, prefix: &str, spool: &Path) -> String {
        match self {
            S3Server::Moto(m) => m.store_toml(bucket, prefix, spool),
            S3Server::Seaweed(s) => s.store_toml(bucket, prefix, spool),
        }
    }

    /// A node's configuration: the `[store]` of `bucket`/`prefix` with its spool at `spool`
    /// and `extra` lines in it, then `[node] name` and `[seal] recipients`.
    pub fn node_toml(
        &self,
        bucket: &str,
        prefix: &str,
        spool: &Path,
        extra: &str,
        node: &str,
        recipient: &str,
    ) -> String {
        let store = self.store_toml(bucket, prefix, spool);
        format!("{store}{extra}[node]\nname = \"{node}\"\n[seal]\nrecipients = [\"{recipient}\"]\n")
    }

    /// `toml` with this server's endpoint replaced by one nobody listens on: what is
    /// sealed stays in the spool.
    pub fn dead(&self, toml: &str) -> String {
        toml.replace(&self.endpoint(), "http://127.0.0.1:9")
    }

    /// Creates `bucket` with Object Lock enabled (so versioned) and returns a client on it.
    pub fn bucket(&self, bucket: &str, rt: &tokio::runtime::Runtime) -> S3Store {
        match self {
            S3Server::Moto(_) => {
                let s3 = S3Store::new(&self.store_config(bucket, "")).unwrap();
                rt.block_on(
                    s3.client()
                        .create_bucket()
                        .bucket(bucket)
                        .object_lock_enabled_for_bucket(true)
                        .send(),
                )
                .unwrap();
                s3
            }
            S3Server::Seaweed(s) => {
                s.create_bucket(bucket);
                S3Store::new(&self.store_config(bucket, "")).unwrap()
            }
        }
    }

    /// Freezes the server (SIGSTOP) for `d`, then lets it go on (SIGCONT).
    pub fn freeze_for(&self, d: Duration) {
        let pid = match self {
            S3Server::Moto(m) => m.pid(),
            S3Server::Seaweed(s) => s.pid(),
        }
        .to_string();
        let run = |sig: &str| {
            let st = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap();
            assert!(st.success(), "kill {sig} {pid}");
        };
        run("-STOP");
        std::thread::sleep(d);
        run("-CONT");
    }

    /// The end of the server's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        match self {
            S3Server::Moto(m) => m.log_tail(),
            S3Server::Seaweed(s) => s.log_tail(),
        }
    }
}

/// Open multipart uploads under `prefix`.
pub fn open_uploads(s3: &S3Store, rt: &tokio::runtime::Runtime, prefix: &str) -> Vec<String> {
    let out = rt
        .block_on(
            s3.client()
                .list_multipart_uploads()
                .bucket(s3.bucket())
                .prefix(prefix)
                .send(),
        )
        .expect("ListMultipartUploads");
    out.uploads()
        .iter()
        .map(|u| u.key().unwrap_or_default().to_owned())
        .collect()
}

/// Every version and delete marker under `prefix`, as (key, is a delete marker).
pub fn all_versions(
    s3: &S3Store,
    rt: &tokio::runtime::Runtime,
    prefix: &str,
) -> Vec<(String, bool)> {
    let out = rt
        .block_on(
            s3.client()
                .list_object_versions()
                .bucket(s3.bucket())
                .prefix(prefix)
                .send(),
        )
        .expect("ListObjectVersions");
    let mut v: Vec<(String, bool)> = out
        .versions()
        .iter()
        .map(|o| (o.key().unwrap_or_default().to_owned(), false))
        .collect();
    v.extend(
        out.delete_markers()
            .iter()
            .map(|o| (o.key().unwrap_or_default().to_owned(), true)),
    );
    v
}

/// What an S3 suite starts from: its temporary directory, a server of one kind in it, a
/// bucket with Object Lock on that server and a client of it (no prefix), the runtime the
/// client runs on, and an age recipient to seal to.
pub struct OnBucket {
    /// The test's temporary directory (the server's files are in `server/`).
    pub tmp: tempfile::TempDir,
    /// The server.
    pub server: S3Server,
    /// The runtime `s3` runs on.
    pub rt: tokio::runtime::Runtime,
    /// A client of the bucket, with the bucket's credentials.
    pub s3: S3Store,
    /// An age recipient (its identity is `TMP/identity.txt`).
    pub recipient: String,
}

impl OnBucket {
    /// Starts a server of `kind` (see [`S3Server::start`]) and makes `bucket` on it; `None`
    /// where the server cannot run (said as [`S3Server::start`] says it).
    pub fn start(kind: &str, bucket: &str) -> Option<OnBucket> {
        let tmp = tempfile::tempdir().unwrap();
        let server = S3Server::start(kind, &tmp.path().join("server"))?;
        let rt = super::seaweed::runtime();
        let s3 = server.bucket(bucket, &rt);
        let (_identity, recipient) = super::age_keypair(tmp.path());
        Some(OnBucket {
            tmp,
            server,
            rt,
            s3,
            recipient,
        })
    }
}
