//! The service configuration file (TOML). Every key is optional; missing ones take the
//! embedded defaults, so `ckvault serve` with no file starts a working vault in
//! `./ckvault-data`. Relative paths are resolved against the directory of the config file
//! (or the current directory when there is none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where records live.
    #[serde(default)]
    pub store: StoreConfig,
    /// The HTTPS listener and its credentials.
    #[serde(default)]
    pub server: ServerConfig,
    /// Sealing defaults.
    #[serde(default)]
    pub seal: SealConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Access rules.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The CRI proxy, and the runtime the trigger API talks to.
    #[serde(default)]
    pub cri: CriConfig,
    /// The checkpoint-directory watcher.
    #[serde(default)]
    pub watch: WatchConfig,
}

/// What the CRI proxy leaves at the location the kubelet asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeletLocation {
    /// A JSON receipt (0600): record ID, digests, download path.
    #[default]
    Receipt,
    /// Nothing.
    None,
}

/// `[cri]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriConfig {
    /// The socket the kubelet talks to (`ckvault proxy`).
    #[serde(default = "default_cri_listen")]
    pub listen: PathBuf,
    /// The real runtime's socket (containerd: /run/containerd/containerd.sock; CRI-O:
    /// /var/run/crio/crio.sock). Also what the trigger API uses; without it the trigger
    /// API answers 500, as the kubelet does without runtime support.
    pub upstream: Option<PathBuf>,
    /// What to leave at the kubelet's requested location: `receipt` or `none`.
    #[serde(default)]
    pub kubelet_location: KubeletLocation,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            listen: default_cri_listen(),
            upstream: None,
            kubelet_location: KubeletLocation::Receipt,
        }
    }
}

fn default_cri_listen() -> PathBuf {
    PathBuf::from("/run/ckvault/cri.sock")
}

/// `[watch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The kubelet checkpoint directory.
    #[serde(default = "default_watch_dir")]
    pub dir: PathBuf,
    /// Quiet time after the last write before a file is captured (`2s`, `500ms`, `1m`).
    #[serde(default = "default_settle", deserialize_with = "de_duration")]
    pub settle: std::time::Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            dir: default_watch_dir(),
            settle: default_settle(),
        }
    }
}

fn default_watch_dir() -> PathBuf {
    PathBuf::from("/var/lib/kubelet/checkpoints")
}

fn default_settle() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

/// Parses `500ms`, `2s`, `5m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |k: u64| n.checked_mul(k).map(std::time::Duration::from_secs);
    match unit {
        "ms" => Some(std::time::Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration (use e.g. 500ms, 2s, 5m, 1h, 30d)"
        ))
    })
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Local store directory (default `ckvault-data`).
    #[serde(default = "default_store")]
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store(),
        }
    }
}

fn default_store() -> PathBuf {
    PathBuf::from("ckvault-data")
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM). Without cert and key, a CA and certificates are
    /// generated under `<store>/tls/` on first start.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates; enables mTLS (user = CN, groups = O).
    pub client_ca: Option<PathBuf>,
    /// Token file (hashed bearer tokens, see `ckvault token add`).
    pub tokens: Option<PathBuf>,
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    #[serde(default)]
    pub allow_tls12: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            cert: None,
            key: None,
            client_ca: None,
            tokens: None,
            allow_tls12: false,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

/// `[seal]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    /// Default recipients (`age1...`, `ssh-ed25519 ...`, `ssh-rsa ...`).
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// `[audit]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit log path (default `<store>/audit.log`, the log the CLI writes too).
    pub path: Option<PathBuf>,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of policy files (`access.toml`, ...). Without it, only the generated admin
    /// identity (group `ckvault:admins`) is granted anything.
    pub dir: Option<PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Invalid TOML or unknown keys (the message names line and column).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Parser message with position.
        message: String,
    },
    /// Inconsistent settings.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if config.server.cert.is_some() != config.server.key.is_some() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "[server] cert and key go together: set both or neither".into(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.store.path);
        fix(&mut self.cri.listen);
        fix(&mut self.watch.dir);
        for p in [
            &mut self.server.cert,
            &mut self.server.key,
            &mut self.server.client_ca,
            &mut self.server.tokens,
            &mut self.audit.path,
            &mut self.policy.dir,
            &mut self.cri.upstream,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckvault.toml");
        std::fs::write(
            &path,
            "[store]\npath = \"data\"\n[server]\nlisten = \"0.0.0.0:9443\"\ncert = \"s.pem\"\nkey = \"s.key\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.store.path, dir.path().join("data"));
        assert_eq!(c.server.cert.unwrap(), dir.path().join("s.pem"));
        assert_eq!(c.server.listen.port(), 9443);
    }

    #[test]
    fn durations_and_capture_sections() {
        assert_eq!(
            parse_duration("2s"),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("30d"),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("s"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[cri]\nupstream = \"/run/containerd/containerd.sock\"\nkubelet_location = \"none\"\n[watch]\nsettle = \"500ms\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.cri.kubelet_location, KubeletLocation::None);
        assert_eq!(c.watch.settle, std::time::Duration::from_millis(500));
        std::fs::write(&path, "[watch]\nsettle = \"soon\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not a duration")
        );
    }

    #[test]
    fn unknown_keys_and_half_tls_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisen = \"x\"\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("lisen") && e.contains("line 2"), "{e}");
        std::fs::write(&path, "[server]\ncert = \"a.pem\"\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
    }
}
