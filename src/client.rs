//! `ckvault fetch`: download a sealed record over HTTPS with a progress bar, resume an
//! interrupted download with a Range request, verify the manifest's signature and the
//! sealed SHA-256, and optionally open (decrypt, decompress, verify) it.
//!
//! The server is not trusted: the manifest must verify with the vault's key (given, or the
//! server's key pinned on first use: [`Pins`]); the body is never read past the smaller of
//! the signed size and `Content-Length`; a redirect to anything but `https://` is refused;
//! credentials are never sent over plain `http://`; manifests and error bodies are read
//! within fixed bounds. A request that gets no HTTP answer is classified
//! ([`ConnectCause`]: nothing listens, wrong CA, client certificate refused, http:// to an
//! HTTPS server, ...) into what happened and what to do next, its cause kept.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError, RecordId, VerifyingKey};

/// Largest error body shown from a server (the rest is cut).
const MAX_ERROR_BODY: usize = 4 << 10;
/// Largest public key PEM accepted from a server.
const MAX_KEY_BYTES: usize = 64 << 10;
/// Redirects followed at most (each to `https://` only).
const MAX_REDIRECTS: usize = 5;

/// How to reach and authenticate to the server.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    /// Base URL, e.g. `https://vault.example:8443`.
    pub server: String,
    /// CA bundle to trust (PEM).
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub key: Option<PathBuf>,
    /// File holding a bearer token.
    pub token_file: Option<PathBuf>,
}

/// Why talking to the server, or what it sent, failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// A local file (CA, certificate, key, token, output) could not be used.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file is not PEM of the kind it must hold.
    #[error("TLS setup: {path}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// Why it does not parse.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused a certificate, the key or the configuration.
    #[error("TLS setup: {what}{source}")]
    Tls {
        /// The file involved (`"PATH: "`), or nothing.
        what: String,
        /// Why rustls refused.
        source: rustls::Error,
    },
    /// `--server` is not a URL.
    #[error("--server {server:?}: {source}")]
    BadServer {
        /// What was given.
        server: String,
        /// Why it does not parse.
        source: <reqwest::Url as std::str::FromStr>::Err,
    },
    /// A pinned key could not be written as PEM.
    #[error(transparent)]
    Key(#[from] crate::manifest::sign::KeyError),
    /// The options do not go together (or a URL does not parse).
    #[error("{0}")]
    Usage(String),
    /// Credentials would travel in clear.
    #[error(
        "refusing to send credentials to {server} over plain http://: the token or certificate would travel in clear; use https://"
    )]
    CleartextCredentials {
        /// The server URL.
        server: String,
    },
    /// The request failed (connection, TLS, a refused redirect).
    #[error("request to the server failed: {}", error_chain(.0))]
    Http(#[source] reqwest::Error),
    /// The server could not be reached or spoken to: what happened, what to do, the cause.
    #[error("{server}: {}\n{}\ncause: {}", cause.what(), cause.next_step(), error_chain(source))]
    Connect {
        /// The server URL.
        server: String,
        /// What happened, as far as the user can act on it.
        cause: ConnectCause,
        /// The error of the HTTP stack (its chain holds the I/O or TLS error).
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("server refused {what}: {status} {body}")]
    Refused {
        /// What was asked.
        what: String,
        /// The status.
        status: reqwest::StatusCode,
        /// Its error body (bounded, control characters escaped).
        body: String,
    },
    /// The manifest is malformed or does not verify.
    #[error("the manifest of {id} from the server is not trusted: {source}")]
    Manifest {
        /// The record.
        id: String,
        /// Why.
        source: ManifestError,
    },
    /// The key the server names for a record's manifest is not a usable public key.
    #[error(
        "the manifest of {id} from the server is not trusted: its signing key is unusable: {source}"
    )]
    SigningKey {
        /// The record.
        id: String,
        /// Why the key is unusable.
        source: crate::manifest::sign::KeyError,
    },
    /// The manifest is the manifest of another record.
    #[error("the server answered for {asked} with the manifest of {got}")]
    WrongRecord {
        /// The record asked for.
        asked: String,
        /// The record the manifest describes.
        got: String,
    },
    /// The manifest is signed by a key this client does not trust for the server.
    #[error(
        "the manifest of {id} is signed by key {key_id}, which is not the key pinned for {server} ({pinned}); if the vault's key really changed, check the new one out of band and pass it with --public-key"
    )]
    NotPinned {
        /// The record.
        id: String,
        /// The signer's key ID.
        key_id: String,
        /// The server.
        server: String,
        /// The key IDs pinned for it.
        pinned: String,
    },
    /// The server sent more than it may.
    #[error("the server sent more than {limit} bytes for {what} ({why}); stopped there, discarded")]
    TooLong {
        /// What was being read.
        what: String,
        /// The bound.
        limit: u64,
        /// Where the bound comes from.
        why: String,
    },
    /// The download ended early.
    #[error(
        "the download was interrupted ({}); run the same command again to resume",
        error_chain(.0)
    )]
    Interrupted(#[source] reqwest::Error),
    /// The blob does not match the manifest.
    #[error(
        "downloaded blob does not match the manifest (sha256 {got}, {size} bytes; expected {want}, {total} bytes); discarded"
    )]
    Mismatch {
        /// Measured.
        got: String,
        /// Measured.
        size: u64,
        /// Signed.
        want: String,
        /// Signed.
        total: u64,
    },
}

/// Why a request never got an HTTP answer, as far as a user can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectCause {
    /// Nothing listens at the host and port.
    Refused {
        /// `HOST:PORT`.
        addr: String,
    },
    /// The host name does not resolve.
    UnknownHost {
        /// The host.
        host: String,
    },
    /// No answer in time.
    Timeout,
    /// The server's certificate does not verify with the CA given.
    UntrustedServer {
        /// The `--cacert` file.
        cacert: String,
        /// rustls's reason (e.g. `BadSignature`, `UnknownIssuer`).
        detail: String,
    },
    /// The server's certificate does not name the host in the URL.
    WrongName {
        /// The host.
        host: String,
    },
    /// The server's certificate expired or is not valid yet.
    ServerCertTime {
        /// rustls's reason.
        detail: String,
    },
    /// The server refused this client's certificate (a TLS alert after the handshake).
    ClientCertRefused {
        /// `--cert`, if one was given.
        cert: Option<String>,
        /// The alert.
        alert: String,
    },
    /// An `http://` URL, and the server does not speak plain HTTP (a ckvault server
    /// speaks HTTPS only).
    NotHttp,
    /// An `https://` URL, and the server does not speak TLS.
    NotTls,
    /// Anything else (the cause says what).
    Other,
}

impl ConnectCause {
    /// What happened, in one line.
    pub(crate) fn what(&self) -> String {
        match self {
            Self::Refused { addr } => {
                format!("connection refused: nothing listens on {addr}")
            }
            Self::UnknownHost { host } => format!("the host name {host:?} does not resolve"),
            Self::Timeout => "no answer in time".into(),
            Self::UntrustedServer { cacert, detail } => format!(
                "the server's certificate is not signed by the CA in --cacert {cacert} ({detail})"
            ),
            Self::WrongName { host } => {
                format!("the server's certificate is not valid for the host {host:?}")
            }
            Self::ServerCertTime { detail } => {
                format!("the server's certificate is not valid now ({detail})")
            }
            Self::ClientCertRefused { cert: Some(c), alert } => format!(
                "the server refused the client certificate --cert {c} (TLS alert {alert})"
            ),
            Self::ClientCertRefused { cert: None, alert } => {
                format!("the server ended the TLS session (TLS alert {alert})")
            }
            Self::NotHttp => {
                "the server did not answer in plain HTTP: it speaks HTTPS (a ckvault server speaks only HTTPS)".into()
            }
            Self::NotTls => "the server did not answer in TLS: it is not an HTTPS server".into(),
            Self::Other => "the request failed".into(),
        }
    }

    /// What to do next, in one line.
    pub(crate) fn next_step(&self) -> String {
        match self {
            Self::Refused { .. } => "start `ckvault serve` there, or give --server the host and port it listens on (its first line says: \"ckvault: serving https://...\")".into(),
            Self::UnknownHost { .. } => "check the host name in --server (or use the server's IP address)".into(),
            Self::Timeout => "check that the server runs and that no firewall drops the connection, then run the same command again".into(),
            Self::UntrustedServer { .. } => "pass --cacert the CA certificate of this server (with the embedded defaults: the server's ckvault-data/tls/ca.pem)".into(),
            Self::WrongName { .. } => "use a host name the server's certificate names in --server (the generated certificate names 127.0.0.1 and localhost), or give the server a certificate for this name ([server] cert and key)".into(),
            Self::ServerCertTime { .. } => "renew the server's certificate (`ckvault tls renew` for the generated one) or check this machine's clock".into(),
            Self::ClientCertRefused { cert: Some(_), .. } => "use a client certificate issued by the CA the server trusts for clients (with the embedded defaults: the server's ckvault-data/tls/admin.pem and admin.key), or authenticate with --token-file instead".into(),
            Self::ClientCertRefused { cert: None, .. } => "the server may require a client certificate: pass --cert and --key, or --token-file".into(),
            Self::NotHttp => "use https:// in --server, with --cacert the server's CA certificate".into(),
            Self::NotTls => "check the port in --server: it must be the ckvault server's HTTPS port".into(),
            Self::Other => "see the cause below; check --server, --cacert and the credentials".into(),
        }
    }

    /// Classifies a failed request to `url` (`cacert`, `cert`: the files given).
    fn of(e: &reqwest::Error, url: &reqwest::Url, cacert: &str, cert: Option<&str>) -> Self {
        use rustls::CertificateError as C;
        let host = url.host_str().unwrap_or_default().to_owned();
        let addr = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
        if e.is_timeout() {
            return Self::Timeout;
        }
        // Every error of the chain, and inside each io::Error the errors it wraps (its
        // source() skips them; hyper-util nests one io::Error in another).
        let mut all: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            let mut x = c;
            all.push(x);
            while let Some(inner) = x
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static))
            {
                all.push(inner);
                x = inner;
            }
            cur = c.source();
        }
        for c in all.iter().take(64) {
            if let Some(tls) = c.downcast_ref::<rustls::Error>() {
                return match tls {
                    rustls::Error::InvalidCertificate(ce) => match ce {
                        C::NotValidForName | C::NotValidForNameContext { .. } => {
                            Self::WrongName { host }
                        }
                        C::Expired
                        | C::ExpiredContext { .. }
                        | C::NotValidYet
                        | C::NotValidYetContext { .. } => Self::ServerCertTime {
                            detail: format!("{ce:?}").chars().take(200).collect(),
                        },
                        other => Self::UntrustedServer {
                            cacert: cacert.to_owned(),
                            detail: format!("{other:?}").chars().take(200).collect(),
                        },
                    },
                    rustls::Error::AlertReceived(alert) => Self::ClientCertRefused {
                        cert: cert.map(str::to_owned),
                        alert: format!("{alert:?}"),
                    },
                    rustls::Error::InvalidMessage(_) => Self::NotTls,
                    _ => Self::Other,
                };
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Self::Refused { addr },
                    std::io::ErrorKind::TimedOut => return Self::Timeout,
                    _ => {}
                }
            }
            if let Some(h) = c.downcast_ref::<hyper::Error>()
                && h.is_parse()
                && url.scheme() == "http"
            {
                return Self::NotHttp;
            }
        }
        // The resolver's errors are not typed; its message is.
        if e.is_connect() && error_chain(e).contains("failed to lookup address") {
            return Self::UnknownHost { host };
        }
        Self::Other
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File {
        path: path.display().to_string(),
        source,
    }
}

fn pem_err(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> ClientError + '_ {
    move |source| ClientError::Pem {
        path: path.display().to_string(),
        source,
    }
}

fn tls_err(path: Option<&Path>) -> impl FnOnce(rustls::Error) -> ClientError + '_ {
    move |source| ClientError::Tls {
        what: path.map_or_else(String::new, |p| format!("{}: ", p.display())),
        source,
    }
}

/// A configured HTTPS client.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// `--cacert` and `--cert`, named in errors.
    cacert: String,
    cert: Option<String>,
}

impl Client {
    /// Builds a client (TLS 1.3/1.2 via rustls with the ring provider). Refuses credentials
    /// with an `http://` server; follows redirects to `https://` only.
    pub(crate) fn new(opts: &ClientOptions) -> Result<Self, ClientError> {
        let base = opts.server.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|source| ClientError::BadServer {
            server: base.clone(),
            source,
        })?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(ClientError::Usage(format!(
                    "--server {base:?}: scheme {other:?} (expected https://)"
                )));
            }
        };
        if !https && (opts.token_file.is_some() || opts.cert.is_some()) {
            return Err(ClientError::CleartextCredentials { server: base });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = &opts.cacert else {
            return Err(ClientError::Usage(
                "pass --cacert with the server's CA certificate (for the embedded defaults: ckvault-data/tls/ca.pem)".into(),
            ));
        };
        let pem = crate::fsutil::read_regular(ca).map_err(file_err(ca))?;
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(pem_err(ca))?;
            roots.add(c).map_err(tls_err(Some(ca)))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err(None))?
            .with_root_certificates(roots);
        let tls = match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = crate::fsutil::read_regular(cert).map_err(file_err(cert))?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<_, _>>()
                    .map_err(pem_err(cert))?;
                let key_pem = crate::fsutil::read_regular(key).map_err(file_err(key))?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(pem_err(key))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(tls_err(None))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(ClientError::Usage("--cert and --key go together".into())),
        };
        let token = match &opts.token_file {
            Some(f) => Some(
                crate::fsutil::read_regular_to_string(f)
                    .map_err(file_err(f))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().scheme() != "https" {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "refusing a redirect to {:?}: not https://",
                    crate::inspect::escape_control(to.get(..200).unwrap_or(&to))
                ))
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(https)
            .redirect(redirects)
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            base,
            token,
            cacert: ca.display().to_string(),
            cert: opts.cert.as_ref().map(|c| c.display().to_string()),
        })
    }

    /// The server's base URL.
    pub(crate) fn server(&self) -> &str {
        &self.base
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        req.send().await.map_err(|e| self.connect_error(e))
    }

    /// A request that got no HTTP answer, classified ([`ConnectCause`]); a redirect this
    /// client refused stays [`ClientError::Http`] (its message says why).
    fn connect_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_redirect() {
            return ClientError::Http(e);
        }
        let Ok(url) = reqwest::Url::parse(&self.base) else {
            return ClientError::Http(e);
        };
        ClientError::Connect {
            server: self.base.clone(),
            cause: ConnectCause::of(&e, &url, &self.cacert, self.cert.as_deref()),
            source: e,
        }
    }

    /// Fetches a record's manifest (at most [`crate::manifest::MAX_MANIFEST_BYTES`]),
    /// unverified: see [`Client::trusted_manifest`].
    pub(crate) async fn manifest(&self, id: &RecordId) -> Result<Manifest, ClientError> {
        let resp = self
            .send(self.get(&format!("/v1/checkpoints/{id}")))
            .await?;
        let what = format!("the manifest of {id}");
        let body = ok_body(resp, &what, crate::manifest::MAX_MANIFEST_BYTES).await?;
        let manifest = Manifest::from_json(&body).map_err(|source| ClientError::Manifest {
            id: id.to_string(),
            source,
        })?;
        if &manifest.id != id {
            return Err(ClientError::WrongRecord {
                asked: id.to_string(),
                got: manifest.id.to_string(),
            });
        }
        Ok(manifest)
    }

    /// The public key the server says a record's manifest verifies with.
    pub(crate) async fn signing_key(&self, id: &RecordId) -> Result<VerifyingKey, ClientError> {
        let resp = self
            .send(self.get(&format!("/v1/checkpoints/{id}/signing-key")))
            .await?;
        let what = format!("the signing key of {id}");
        let body = ok_body(resp, &what, MAX_KEY_BYTES).await?;
        let pem = String::from_utf8_lossy(&body);
        VerifyingKey::from_pem(&pem, Path::new("(from the server)")).map_err(|source| {
            ClientError::SigningKey {
                id: id.to_string(),
                source,
            }
        })
    }

    /// A record's manifest, its signature verified with `key` when given; otherwise with
    /// the key pinned for this server in `pins`; otherwise (first use) with the key the
    /// server names, which is then pinned.
    pub(crate) async fn trusted_manifest(
        &self,
        id: &RecordId,
        key: Option<&VerifyingKey>,
        pins: &Pins,
    ) -> Result<(Manifest, Trust), ClientError> {
        let manifest = self.manifest(id).await?;
        let bad = |source| ClientError::Manifest {
            id: id.to_string(),
            source,
        };
        if let Some(k) = key {
            k.verify(&manifest).map_err(bad)?;
            return Ok((manifest, Trust::Given));
        }
        let key_id = manifest
            .signature
            .as_ref()
            .ok_or_else(|| bad(ManifestError::Unsigned))?
            .key_id
            .clone();
        let pinned = pins.pinned_for(&self.base);
        if !pinned.is_empty() {
            let Some(k) = pinned.iter().find(|k| k.key_id() == key_id) else {
                return Err(ClientError::NotPinned {
                    id: id.to_string(),
                    key_id,
                    server: self.base.clone(),
                    pinned: pinned
                        .iter()
                        .map(|k| k.key_id())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            k.verify(&manifest).map_err(bad)?;
            return Ok((manifest, Trust::Pinned(pins.origin_dir(&self.base))));
        }
        let k = self.signing_key(id).await?;
        k.verify(&manifest).map_err(bad)?;
        let path = pins.pin(&self.base, &k)?;
        Ok((manifest, Trust::PinnedNow { path, key_id }))
    }

    /// Downloads the sealed blob of `manifest` to `out`, resuming from `out.partial` if an
    /// earlier attempt left one, verifying the sealed SHA-256; `progress(done, total)`.
    /// Never writes past the smaller of the manifest's size and the response's
    /// `Content-Length`; a server that sends more is cut off and its bytes discarded.
    pub(crate) async fn download(
        &self,
        manifest: &Manifest,
        out: &Path,
        purpose: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        if out.exists() {
            return Err(ClientError::Usage(format!(
                "{} exists; refusing to overwrite it",
                out.display()
            )));
        }
        let partial = partial_path(out);
        let perr = file_err(&partial);
        let mut file = match OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
        {
            Ok(f) => f,
            Err(e) => return Err(perr(e)),
        };
        let meta = file.metadata().map_err(file_err(&partial))?;
        let mut have = meta.len();
        let total = manifest.sealed.size;
        if have > total {
            return Err(ClientError::Usage(format!(
                "{} is longer than the record; remove it and retry",
                partial.display()
            )));
        }
        let mut path = format!("/v1/checkpoints/{}/archive", manifest.id);
        if let Some(p) = purpose {
            path.push_str("?purpose=");
            path.push_str(&urlencode(p));
        }
        if have < total {
            let mut req = self.get(&path);
            if have > 0 {
                req = req
                    .header("Range", format!("bytes={have}-"))
                    .header("If-Range", format!("\"sha256-{}\"", manifest.sealed.sha256));
            }
            let resp = self.send(req).await?;
            let status = resp.status();
            if status.as_u16() == 200 && have > 0 {
                // The server sent everything (the record changed or ranges unsupported).
                file.set_len(0).map_err(file_err(&partial))?;
                have = 0;
            } else if !status.is_success() {
                let body = error_body(resp).await;
                return Err(ClientError::Refused {
                    what: "the download".into(),
                    status,
                    body,
                });
            }
            let discard = |e: ClientError| {
                let _ = std::fs::remove_file(&partial);
                e
            };
            // The signed size bounds what is written; a smaller Content-Length bounds it more.
            let mut limit = total - have;
            let mut why = format!("the manifest's sealed size is {total} bytes");
            if let Some(len) = resp.content_length() {
                if len > limit {
                    return Err(discard(ClientError::TooLong {
                        what: format!("the blob of {}", manifest.id),
                        limit,
                        why: format!("{why}; the server announced {len} more"),
                    }));
                }
                if len < limit {
                    limit = len;
                    why = format!("its Content-Length is {len}");
                }
            }
            let room = crate::fsutil::available_on(&file).map_err(file_err(&partial))?;
            if room < limit {
                return Err(ClientError::File {
                    path: partial.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "{limit} bytes are needed and only {room} are free; nothing was downloaded"
                        ),
                    ),
                });
            }
            let mut got = 0u64;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(ClientError::Interrupted)?;
                let n = chunk.len() as u64;
                if got + n > limit {
                    return Err(discard(ClientError::TooLong {
                        what: format!("the blob of {}", manifest.id),
                        limit,
                        why,
                    }));
                }
                file.write_all(&chunk).map_err(file_err(&partial))?;
                got += n;
                have += n;
                progress(have, total);
            }
            file.sync_all().map_err(file_err(&partial))?;
        }
        // Verify the whole file, resumed parts included.
        let mut hasher = Sha256::new();
        let mut reader = std::fs::File::open(&partial).map_err(file_err(&partial))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(file_err(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
            size += n as u64;
        }
        let got = hex::encode(hasher.finalize());
        if got != manifest.sealed.sha256 || size != total {
            std::fs::remove_file(&partial).map_err(file_err(&partial))?;
            return Err(ClientError::Mismatch {
                got,
                size,
                want: manifest.sealed.sha256.clone(),
                total,
            });
        }
        crate::fsutil::rename_noreplace(&partial, out).map_err(file_err(out))?;
        Ok(())
    }
}

/// How a fetched manifest came to be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// It verified with the key given (`--public-key`).
    Given,
    /// It verified with a key pinned earlier for this server (in that directory).
    Pinned(PathBuf),
    /// First use of this server: it verified with the key the server named, now pinned.
    PinnedNow {
        /// Where the key was pinned.
        path: PathBuf,
        /// Its ID.
        key_id: String,
    },
}

/// The vault keys this client pinned, one directory per server (`HOST_PORT/KEYID.pem`).
#[derive(Debug, Clone)]
pub(crate) struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// Pins kept under `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// `$XDG_CONFIG_HOME/ckvault/pinned-keys`, or `~/.config/ckvault/pinned-keys`.
    pub(crate) fn default_dir() -> Option<PathBuf> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })?;
        Some(config.join("ckvault").join("pinned-keys"))
    }

    /// The directory of one server's pins: its host and port, nothing else of the URL.
    pub(crate) fn origin_dir(&self, server: &str) -> PathBuf {
        let name = match reqwest::Url::parse(server) {
            Ok(u) => format!(
                "{}_{}",
                u.host_str().unwrap_or("unknown"),
                u.port_or_known_default().unwrap_or(0)
            ),
            Err(_) => server.to_owned(),
        };
        let safe: String = name
            .chars()
            .take(255)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(safe)
    }

    /// The keys pinned for `server`.
    pub(crate) fn pinned_for(&self, server: &str) -> Vec<VerifyingKey> {
        read_keys(&self.origin_dir(server))
    }

    /// A pinned key (of any server) with this ID, and the server directory it is pinned in.
    pub(crate) fn find(&self, key_id: &str) -> Option<(PathBuf, VerifyingKey)> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(k) = read_keys(&dir).into_iter().find(|k| k.key_id() == key_id) {
                return Some((dir, k));
            }
        }
        None
    }

    /// Pins `key` for `server`; returns the file.
    pub(crate) fn pin(&self, server: &str, key: &VerifyingKey) -> Result<PathBuf, ClientError> {
        let dir = self.origin_dir(server);
        crate::fsutil::ensure_private_dir(&dir).map_err(file_err(&dir))?;
        let name: String = key
            .key_id()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{name}.pem"));
        let pem = key.to_pem()?;
        crate::fsutil::replace_atomic(&dir, &path, pem.as_bytes()).map_err(file_err(&path))?;
        Ok(path)
    }
}

fn read_keys(dir: &Path) -> Vec<VerifyingKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let mut pem = String::new();
        if let Ok(f) = crate::fsutil::open_regular_nofollow(&path)
            && f.take(MAX_KEY_BYTES as u64)
                .read_to_string(&mut pem)
                .is_ok()
            && let Ok(k) = VerifyingKey::from_pem(&pem, &path)
        {
            keys.push(k);
        }
    }
    keys
}

/// The body of a successful response, at most `limit` bytes; an error status becomes
/// [`ClientError::Refused`].
async fn ok_body(
    resp: reqwest::Response,
    what: &str,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    use futures_util::StreamExt;
    let status = resp.status();
    if !status.is_success() {
        let body = error_body(resp).await;
        return Err(ClientError::Refused {
            what: what.to_owned(),
            status,
            body,
        });
    }
    let too_long = || ClientError::TooLong {
        what: what.to_owned(),
        limit: limit as u64,
        why: "the largest this client reads".into(),
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ClientError::Http)?;
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most [`MAX_ERROR_BODY`] bytes of an error body, control characters escaped.
async fn error_body(resp: reqwest::Response) -> String {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    crate::inspect::escape_control(&String::from_utf8_lossy(&body)).into_owned()
}

/// An error with its causes (reqwest hides the interesting part in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Where an unfinished download of `out` is kept.
pub(crate) fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SigningKey;

    #[test]
    fn pins_are_kept_per_server_and_found_by_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::new(dir.path().join("pins"));
        let a = SigningKey::generate().unwrap().verifying_key();
        let b = SigningKey::generate().unwrap().verifying_key();
        assert!(pins.pinned_for("https://vault:8443").is_empty());
        let path = pins.pin("https://vault:8443/", &a).unwrap();
        assert!(path.starts_with(dir.path().join("pins/vault_8443")));
        assert_eq!(pins.pinned_for("https://vault:8443").len(), 1);
        assert!(pins.pinned_for("https://vault:9443").is_empty());
        assert!(pins.pinned_for("https://other:8443").is_empty());
        let (found_in, k) = pins.find(&a.key_id()).unwrap();
        assert_eq!(k.key_id(), a.key_id());
        assert!(found_in.ends_with("vault_8443"));
        assert!(pins.find(&b.key_id()).is_none());
        // Nothing of a hostile URL reaches the file system but host and port.
        let odd = pins.origin_dir("https://../../etc:1/x");
        assert_eq!(odd.parent().unwrap(), dir.path().join("pins"));
    }

    #[test]
    fn credentials_are_never_sent_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "x").unwrap();
        let opts = ClientOptions {
            server: "http://127.0.0.1:1".into(),
            cacert: None,
            cert: None,
            key: None,
            token_file: Some(token),
        };
        assert!(matches!(
            Client::new(&opts),
            Err(ClientError::CleartextCredentials { .. })
        ));
    }
}
