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
    /// Checkpoint capture through the runtime (the trigger API).
    #[serde(default)]
    pub capture: CaptureConfig,
}

/// `[capture]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// CRI runtime socket for `POST /checkpoint/{namespace}/{pod}/{container}`
    /// (containerd: /run/containerd/containerd.sock; CRI-O: /var/run/crio/crio.sock).
    /// Without it the trigger API answers 500, as the kubelet does without runtime support.
    pub runtime_endpoint: Option<PathBuf>,
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
        for p in [
            &mut self.server.cert,
            &mut self.server.key,
            &mut self.server.client_ca,
            &mut self.server.tokens,
            &mut self.audit.path,
            &mut self.policy.dir,
            &mut self.capture.runtime_endpoint,
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
