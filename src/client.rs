//! `ckvault fetch`: download a sealed record over HTTPS with a progress bar, resume an
//! interrupted download with a Range request, verify the sealed SHA-256 against the
//! server's manifest, and optionally open (decrypt, decompress, verify) it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, RecordId};

/// How to reach and authenticate to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
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

/// A configured HTTPS client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// Builds a client (TLS 1.3/1.2 via rustls with the ring provider).
    pub fn new(opts: &ClientOptions) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &opts.cacert {
            let pem = crate::fsutil::read_regular(ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots.add(c?)?;
            }
        } else {
            bail!(
                "pass --cacert with the server's CA certificate (for the embedded defaults: ckvault-data/tls/ca.pem)"
            );
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let tls = match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = crate::fsutil::read_regular(cert)
                    .with_context(|| format!("reading {}", cert.display()))?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("reading {}", cert.display()))?;
                let key_pem = crate::fsutil::read_regular(key)
                    .with_context(|| format!("reading {}", key.display()))?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .with_context(|| format!("reading {}", key.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("--cert and --key go together"),
        };
        let token = match &opts.token_file {
            Some(f) => Some(
                crate::fsutil::read_regular_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()?;
        Ok(Self {
            http,
            base: opts.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Fetches a record's manifest.
    pub async fn manifest(&self, id: &RecordId) -> anyhow::Result<Manifest> {
        let resp = self.get(&format!("/v1/checkpoints/{id}")).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "server refused the manifest of {id}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(Manifest::from_json(&body)?)
    }

    /// Downloads the sealed blob of `manifest` to `out`, resuming from `out.partial` if an
    /// earlier attempt left one, verifying the sealed SHA-256; `progress(done, total)`.
    pub async fn download(
        &self,
        manifest: &Manifest,
        out: &Path,
        purpose: Option<&str>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        if out.exists() {
            bail!("{} exists; refusing to overwrite it", out.display());
        }
        let partial = partial_path(out);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .with_context(|| format!("cannot open {}", partial.display()))?;
        let mut have = file.metadata()?.len();
        let total = manifest.sealed.size;
        if have > total {
            bail!(
                "{} is longer than the record; remove it and retry",
                partial.display()
            );
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
            let resp = req.send().await?;
            let status = resp.status();
            if status.as_u16() == 200 && have > 0 {
                // The server sent everything (the record changed or ranges unsupported).
                file.set_len(0)?;
                have = 0;
            } else if !(status.is_success()) {
                let body = resp.text().await.unwrap_or_default();
                bail!("server refused the download: {status} {body}");
            }
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.context(
                    "the download was interrupted; run the same command again to resume",
                )?;
                file.write_all(&chunk)?;
                have += chunk.len() as u64;
                progress(have, total);
            }
            file.sync_all()?;
        }
        // Verify the whole file, resumed parts included.
        let mut hasher = Sha256::new();
        let mut reader = std::fs::File::open(&partial)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
            size += n as u64;
        }
        let got = hex::encode(hasher.finalize());
        if got != manifest.sealed.sha256 || size != total {
            std::fs::remove_file(&partial)?;
            bail!(
                "downloaded blob does not match the manifest (sha256 {got}, {size} bytes; expected {}, {total} bytes); discarded",
                manifest.sealed.sha256
            );
        }
        crate::fsutil::rename_noreplace(&partial, out)?;
        Ok(())
    }
}

/// Where an unfinished download of `out` is kept.
pub fn partial_path(out: &Path) -> PathBuf {
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
