//! TLS termination with our own accept loop (tokio-rustls + hyper), so that the verified
//! client certificate of each connection reaches the handlers as a [`ConnInfo`] request
//! extension (identity = subject CN, groups = subject O, as Kubernetes does).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::policy::Principal;

/// What the handlers learn about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// Identity from a verified client certificate, if one was presented.
    pub cert_identity: Option<Principal>,
}

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// Builds the rustls server configuration: TLS 1.3 only unless `allow_tls12`, client
/// certificates verified against `client_ca` when given (optional, so token users can
/// connect without one; a presented certificate must verify).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    allow_tls12: bool,
) -> Result<ServerConfig, TlsError> {
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let mut config = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, e.to_string()))? {
                roots
                    .add(c.map_err(|e| pem_err(ca, e.to_string()))?)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key_der)?
        }
        None => builder
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The principal named by a client certificate: CN is the user, each O a group.
pub fn principal_from_cert(der: &[u8]) -> Option<Principal> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Principal {
        user,
        groups,
        via: "mtls",
    })
}

/// Accepts TLS connections until `shutdown` resolves, serving `app` on each.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("ckvault: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return, // handshake failed or timed out: nothing to serve
                };
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| principal_from_cert(c.as_ref()));
            let info = ConnInfo {
                peer,
                cert_identity,
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let mut app = app.clone();
                    async move { app.call(req).await }
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
