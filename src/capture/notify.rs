//! Notices after a triggered capture: a small JSON (capture and record IDs, the container,
//! the trigger, the sealed SHA-256, where the record is served) POSTed to each configured
//! webhook (`[[notify]]`), retried with exponential backoff, in the background. A notice
//! never carries a secret or a byte of memory; a webhook that stays down costs a few
//! retries and a warning in the log, never the capture.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Where Debian keeps the system's CA certificates (used when a webhook names no `ca`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    /// The URL does not parse or is not https:// (http:// is allowed to loopback only).
    #[error("notify url {url:?}: {why}")]
    Url {
        /// The URL as configured (bounded).
        url: String,
        /// Why.
        why: String,
    },
    /// A file could not be read.
    #[error("notify: cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CA file holds no usable certificate.
    #[error("notify: {} holds no CA certificate", .0.display())]
    NoCaCertificate(PathBuf),
    /// The TLS configuration could not be built.
    #[error("notify: TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The HTTP client could not be built.
    #[error("notify: cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// One webhook.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    url: reqwest::Url,
    token: Option<String>,
    retries: u32,
    client: reqwest::Client,
}

impl Target {
    /// A webhook at `url` (https://, or http:// to a loopback address), with an optional
    /// bearer token file and CA file (the system's CAs otherwise).
    pub(crate) fn new(
        url: &str,
        token_file: Option<&Path>,
        ca: Option<&Path>,
        timeout: Duration,
        retries: u32,
    ) -> Result<Self, NotifyError> {
        let bad = |why: &str| NotifyError::Url {
            url: url.chars().take(200).collect(),
            why: why.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let host = parsed.host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => return Err(bad("http:// is allowed to a loopback address only")),
            other => return Err(bad(&format!("scheme {other:?} (expected https://)"))),
        }
        let token = match token_file {
            Some(f) => Some(
                crate::fsutil::read_regular_to_string(f)
                    .map_err(|source| NotifyError::File {
                        path: f.to_path_buf(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let roots_file = ca.unwrap_or(Path::new(SYSTEM_ROOTS));
        let mut roots = rustls::RootCertStore::empty();
        if parsed.scheme() == "https" {
            let pem =
                crate::fsutil::read_regular(roots_file).map_err(|source| NotifyError::File {
                    path: roots_file.to_path_buf(),
                    source,
                })?;
            for c in CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(NotifyError::NoCaCertificate(roots_file.to_path_buf()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(NotifyError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(NotifyError::Client)?;
        Ok(Self {
            url: parsed,
            token,
            retries,
            client,
        })
    }
}

/// What a webhook is told. No secret, no memory: IDs, names, digests, the trigger.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Notice {
    /// `capture-sealed` or `capture-failed`.
    pub(crate) event: &'static str,
    /// The capture's ID (`GET /v1/captures/ID`).
    pub(crate) capture: String,
    /// The sealed record, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<String>,
    /// Its path on the server that sealed it (`/v1/checkpoints/ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record_path: Option<String>,
    /// SHA-256 of the stored (sealed) bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sealed_sha256: Option<String>,
    /// The container, as the runtime named it.
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) container: String,
    /// The node that captured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<String>,
    /// Why it was captured.
    pub(crate) trigger: serde_json::Value,
    /// Why the capture failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// The configured webhooks (none: notices go nowhere).
#[derive(Debug, Clone, Default)]
pub(crate) struct Notifier {
    targets: Arc<Vec<Target>>,
}

impl Notifier {
    /// Notices to `targets`.
    pub(crate) fn new(targets: Vec<Target>) -> Self {
        Self {
            targets: Arc::new(targets),
        }
    }

    /// Sends `notice` to every webhook in the background; each is retried with backoff
    /// (1 s, 2 s, 4 s, ... at most a minute apart) until it answers 2xx or its retries
    /// are spent.
    pub(crate) fn send(&self, notice: Notice) {
        for target in self.targets.iter() {
            let (target, notice) = (target.clone(), notice.clone());
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                for attempt in 0..=target.retries {
                    let mut req = target.client.post(target.url.clone()).json(&notice);
                    if let Some(t) = &target.token {
                        req = req.bearer_auth(t);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            tracing::debug!(url = %target.url, capture = %notice.capture, "notice delivered");
                            return;
                        }
                        Ok(r) => {
                            tracing::warn!(url = %target.url, status = %r.status(), attempt, "notice refused")
                        }
                        Err(e) => {
                            tracing::warn!(url = %target.url, error = %e, attempt, "notice not delivered")
                        }
                    }
                    if attempt < target.retries {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                }
                tracing::warn!(url = %target.url, capture = %notice.capture, "notice given up after its retries");
            });
        }
    }
}
