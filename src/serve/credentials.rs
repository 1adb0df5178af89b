//! The TLS credentials of a running server, re-read when their files change: the server
//! certificate and key ([`ServerCert`], what the handshake presents), the client CA bundle
//! and the certificate revocation lists ([`ClientAuth`], which verifies client
//! certificates through the current rustls WebPKI verifier and answers whether a
//! certificate is revoked now, for connections opened before a CRL changed), and the TLS
//! session cache ([`Sessions`]), emptied whenever the CA or the CRLs change so that no
//! session resumed from before a revocation skips the check. [`Credentials::reload`]
//! swaps in what the files say now, keeping the old credentials when the new ones do not
//! load. Also builds the rustls [`ServerConfig`] over them.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

/// A CRL file larger than this is refused (a CRL of 100,000 entries is about 4 MiB).
pub(crate) const MAX_CRL_BYTES: u64 = 16 << 20;

/// Certificate, key and CA files larger than this are refused.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS sessions kept for resumption (rustls's default).
const SESSION_CACHE_SIZE: usize = 256;

/// Errors loading credentials.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA or the CRLs could not be used.
    #[error("client certificate verification: {path}: {source}")]
    ClientCa {
        /// The CA file.
        path: String,
        /// Why rustls refused the certificate.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built from the CA and the CRLs.
    #[error("client certificate verification: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
}

/// The files the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) for client certificates; none: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM, any number, or one DER) of the client CAs.
    pub crl: Option<PathBuf>,
}

impl CredentialFiles {
    /// The files to watch for changes.
    pub(crate) fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v.extend(self.crl.as_deref());
        v
    }
}

/// The server's credentials, swapped in place by [`Credentials::reload`].
#[derive(Debug)]
pub(crate) struct Credentials {
    files: CredentialFiles,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerCert>,
    client: Option<Arc<ClientAuth>>,
    sessions: Arc<Sessions>,
}

impl Credentials {
    /// Loads every file once.
    pub(crate) fn load(files: CredentialFiles) -> Result<Self, CredentialError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = Arc::new(ServerCert {
            current: RwLock::new(Arc::new(load_certified_key(&files, &provider)?)),
        });
        let client = match &files.client_ca {
            Some(ca) => {
                let loaded = load_client_auth(ca, files.crl.as_deref(), &provider)?;
                Some(Arc::new(ClientAuth {
                    hints: loaded.roots.subjects(),
                    current: RwLock::new(Arc::new(loaded)),
                }))
            }
            None => None,
        };
        Ok(Self {
            files,
            provider,
            server,
            client,
            sessions: Arc::new(Sessions {
                current: RwLock::new(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            }),
        })
    }

    /// The files the credentials come from.
    pub(crate) fn files(&self) -> &CredentialFiles {
        &self.files
    }

    /// The client certificate check, when client certificates are accepted.
    pub(crate) fn client_auth(&self) -> Option<&Arc<ClientAuth>> {
        self.client.as_ref()
    }

    /// Re-reads every file; a part that does not load keeps its old value and its error is
    /// returned (the others are swapped in). A change of CA or CRLs empties the session
    /// cache.
    pub(crate) fn reload(&self) -> Vec<CredentialError> {
        let mut errors = Vec::new();
        match load_certified_key(&self.files, &self.provider) {
            Ok(k) => {
                *self
                    .server
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(k)
            }
            Err(e) => errors.push(e),
        }
        if let (Some(client), Some(ca)) = (&self.client, &self.files.client_ca) {
            match load_client_auth(ca, self.files.crl.as_deref(), &self.provider) {
                Ok(loaded) => {
                    *client.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                    self.sessions.clear();
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The rustls configuration over these credentials: TLS 1.3 only unless
    /// `allow_tls12`, client certificates verified when a client CA is configured
    /// (optional, so token users connect without one; a presented certificate must verify
    /// and not be revoked), ALPN `h2` then `http/1.1`.
    pub(crate) fn server_config(&self, allow_tls12: bool) -> Result<ServerConfig, CredentialError> {
        let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)?;
        let builder = match &self.client {
            Some(client) => builder.with_client_cert_verifier(client.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.server.clone());
        config.session_storage = self.sessions.clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The certificate the handshake presents.
#[derive(Debug)]
pub(crate) struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Which certificate a client presented, as CRLs name it: its issuer's name (DER) and
/// its serial number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertKey {
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

impl CertKey {
    /// The issuer and serial of a certificate (DER); `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self {
            issuer: cert.issuer().as_raw().to_vec(),
            serial: cert.raw_serial().to_vec(),
        })
    }
}

/// Client certificate verification over the current CA bundle and CRLs.
#[derive(Debug)]
pub(crate) struct ClientAuth {
    /// The CA subjects hinted to clients (those of the bundle at start).
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<LoadedClientAuth>>,
}

#[derive(Debug)]
struct LoadedClientAuth {
    roots: Arc<RootCertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
    revoked: HashSet<CertKey>,
}

impl ClientAuth {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verifier
            .clone()
    }

    /// Whether the current CRLs list the certificate `key` names.
    pub(crate) fn is_revoked(&self, key: &CertKey) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked
            .contains(key)
    }

    /// Certificates the current CRLs list.
    pub(crate) fn revoked_count(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked
            .len()
    }
}

impl ClientCertVerifier for ClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// The TLS session cache, emptied when client certificate verification changes.
#[derive(Debug)]
struct Sessions {
    current: RwLock<Arc<ServerSessionMemoryCache>>,
}

impl Sessions {
    fn cache(&self) -> Arc<ServerSessionMemoryCache> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn clear(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    }
}

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> CredentialError {
    CredentialError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads a regular file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, CredentialError> {
    let mut bytes = Vec::new();
    crate::fsutil::open_regular(path)
        .map_err(|e| file_error(path, e))?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(path, e))?;
    if bytes.len() as u64 > max {
        return Err(file_error(path, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn load_certified_key(
    files: &CredentialFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CredentialError> {
    let (cert, key) = (&files.cert, &files.key);
    let pem = read_bounded(cert, MAX_PEM_BYTES)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    if certs.is_empty() {
        return Err(file_error(cert, "no certificate in file"));
    }
    let key_pem = read_bounded(key, MAX_PEM_BYTES)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| file_error(key, e))?;
    Ok(CertifiedKey::from_der(certs, key_der, provider)?)
}

fn load_client_auth(
    ca: &Path,
    crl: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<LoadedClientAuth, CredentialError> {
    let pem = read_bounded(ca, MAX_PEM_BYTES)?;
    let mut roots = RootCertStore::empty();
    let mut subjects = HashSet::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| file_error(ca, e))?;
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&c) {
            subjects.insert(parsed.subject().as_raw().to_vec());
        }
        roots.add(c).map_err(|source| CredentialError::ClientCa {
            path: ca.display().to_string(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(file_error(ca, "no CA certificate in file"));
    }
    let (crls, revoked) = match crl {
        Some(path) => load_crls(path, &subjects)?,
        None => (Vec::new(), HashSet::new()),
    };
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        // A certificate of a CA the CRL file does not cover is not refused for that.
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(CredentialError::ClientVerifier)?;
    Ok(LoadedClientAuth {
        roots,
        verifier,
        revoked,
    })
}

/// The CRLs of a file (PEM `X509 CRL` blocks, or one DER CRL) and the certificates they
/// revoke. Each must name one of the client CAs as its issuer (rustls checks its
/// signature when it is used).
fn load_crls(
    path: &Path,
    ca_subjects: &HashSet<Vec<u8>>,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, HashSet<CertKey>), CredentialError> {
    let bytes = read_bounded(path, MAX_CRL_BYTES)?;
    let crls: Vec<CertificateRevocationListDer<'static>> =
        if bytes.trim_ascii_start().starts_with(b"-----") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(path, e))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
    if crls.is_empty() {
        return Err(file_error(path, "no CRL in file"));
    }
    let mut revoked = HashSet::new();
    for crl in &crls {
        use x509_parser::prelude::FromDer as _;
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
            .map_err(|e| file_error(path, format!("not a CRL: {e}")))?;
        let issuer = parsed.issuer().as_raw().to_vec();
        if !ca_subjects.contains(&issuer) {
            return Err(file_error(
                path,
                format!(
                    "a CRL issued by {}, not one of the client CAs",
                    parsed.issuer()
                ),
            ));
        }
        for entry in parsed.iter_revoked_certificates() {
            revoked.insert(CertKey {
                issuer: issuer.clone(),
                serial: entry.raw_serial().to_vec(),
            });
        }
    }
    Ok((crls, revoked))
}
