//! First-start credentials for the embedded defaults: a private CA, a server certificate
//! for localhost, an admin client certificate (CN `admin`, O `ckvault:admins`) and an admin
//! bearer token, all under `<store>/tls/` with private permissions. Real deployments bring
//! their own certificates through the config file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::fsutil;

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub struct GeneratedPki {
    /// CA certificate (PEM): trust it in clients, and it verifies client certificates.
    pub ca_cert: PathBuf,
    /// CA key (PEM, 0600): issue more client certificates with it (e.g. with openssl).
    pub ca_key: PathBuf,
    /// Server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// Server key (PEM, 0600).
    pub server_key: PathBuf,
    /// Admin client certificate (PEM).
    pub admin_cert: PathBuf,
    /// Admin client key (PEM, 0600).
    pub admin_key: PathBuf,
    /// Token file holding the admin token's hash.
    pub tokens: PathBuf,
    /// The admin token itself (0600), for first use with curl.
    pub admin_token: PathBuf,
    /// True if this call created the files.
    pub created: bool,
}

/// Errors generating credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The token file could not be written.
    #[error(transparent)]
    Token(#[from] super::tokens::TokenError),
}

/// Generates (once) the default credentials in `dir` and returns their paths.
pub fn ensure_default_pki(dir: &Path) -> Result<GeneratedPki, PkiError> {
    let io = |path: &Path, source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    fsutil::ensure_private_dir(dir).map_err(|e| io(dir, e))?;
    let pki = GeneratedPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        admin_cert: dir.join("admin.pem"),
        admin_key: dir.join("admin.key"),
        tokens: dir.join("tokens.toml"),
        admin_token: dir.join("admin.token"),
        created: false,
    };
    if pki.server_key.exists() && pki.admin_token.exists() {
        return Ok(pki);
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "ckvault local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "ckvault");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "ckvault:admins");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let write = |path: &Path, text: &str| -> Result<(), PkiError> {
        let _ = std::fs::remove_file(path);
        fsutil::write_atomic(dir, path, text.as_bytes()).map_err(|e| io(path, e))
    };
    write(&pki.ca_cert, &ca_cert.pem())?;
    write(&pki.ca_key, &ca_key_pem)?;
    write(
        &pki.server_cert,
        &format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )?;
    write(&pki.server_key, &server_key.serialize_pem())?;
    write(&pki.admin_cert, &admin_cert.pem())?;
    write(&pki.admin_key, &admin_key.serialize_pem())?;
    let mut tokens = super::tokens::TokenFile::load(&pki.tokens)?;
    let token = tokens.add("admin", &["ckvault:admins".to_owned()])?;
    tokens.save(&pki.tokens)?;
    write(&pki.admin_token, &format!("{token}\n"))?;
    Ok(GeneratedPki {
        created: true,
        ..pki
    })
}
