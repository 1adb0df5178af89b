//! First-start credentials for the embedded defaults: a private CA, a server certificate
//! for localhost, an admin client certificate (CN `admin`, O `ckvault:admins`) and an admin
//! bearer token, all under `<store>/tls/` with private permissions; their renewal
//! ([`renew`], `ckvault tls renew`) and the warnings of their coming expiry
//! ([`expiry_warnings`]). The CA lives [`CA_LIFETIME`], the server and admin certificates
//! [`CERT_LIFETIME`]. Real deployments bring their own certificates through the config
//! file.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil;

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub(crate) struct GeneratedPki {
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
pub(crate) enum PkiError {
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
    /// There is no generated CA to renew with.
    #[error(
        "{dir}: no generated CA (ca.pem and ca.key); start `ckvault serve` once to generate one, or renew with --ca"
    )]
    NoCa {
        /// The directory.
        dir: String,
    },
    /// The CA key does not load.
    #[error("{path}: not a CA key this tool generated: {message}")]
    BadCa {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// How long the generated CA is valid: ten years, so that renewing the server and admin
/// certificates (every year) does not require every client to trust a new CA.
pub(crate) const CA_LIFETIME: Duration = Duration::days(3650);

/// How long the generated server and admin certificates are valid: one year (browsers
/// accept at most 398 days for a server certificate; a stolen admin key is useful to its
/// thief for at most this long even if nobody revokes it).
pub(crate) const CERT_LIFETIME: Duration = Duration::days(365);

/// `ckvault serve` warns at start about a generated certificate expiring within this.
pub(crate) const RENEW_BEFORE: Duration = Duration::days(30);

/// Validity starts this long before generation, for clients whose clock is behind.
const BACKDATE: Duration = Duration::minutes(5);

impl GeneratedPki {
    /// The paths of the generated material in `dir` (nothing is read or written).
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            admin_cert: dir.join("admin.pem"),
            admin_key: dir.join("admin.key"),
            tokens: dir.join("tokens.toml"),
            admin_token: dir.join("admin.token"),
            created: false,
        }
    }
}

/// Generates (once) the default credentials in `dir` and returns their paths.
pub(crate) fn ensure_default_pki(dir: &Path) -> Result<GeneratedPki, PkiError> {
    fsutil::ensure_private_dir(dir).map_err(|e| io(dir, e))?;
    let pki = GeneratedPki::in_dir(dir);
    if pki.server_key.exists() && pki.admin_token.exists() {
        return Ok(pki);
    }
    let now = OffsetDateTime::now_utc();
    let (ca_pem, issuer) = new_ca(now)?;
    write(dir, &pki.ca_cert, &ca_pem)?;
    write(dir, &pki.ca_key, &issuer.key().serialize_pem())?;
    issue_leaves(dir, &pki, &issuer, &ca_pem, now)?;
    let mut tokens = super::tokens::TokenFile::load(&pki.tokens)?;
    let token = tokens.add("admin", &["ckvault:admins".to_owned()])?;
    tokens.save(&pki.tokens)?;
    write(dir, &pki.admin_token, &format!("{token}\n"))?;
    Ok(GeneratedPki {
        created: true,
        ..pki
    })
}

/// What [`renew`] issued: each certificate renewed and its new end of validity.
#[derive(Debug, Clone)]
pub(crate) struct Renewed {
    /// (certificate file, not after), in the order written.
    pub certificates: Vec<(PathBuf, OffsetDateTime)>,
}

/// Renews the generated server and admin certificates in `dir` (new keys, valid
/// [`CERT_LIFETIME`] from now) under the existing CA, or under a new CA (valid
/// [`CA_LIFETIME`]) with `renew_ca`; every client must then trust the new `ca.pem`, and
/// client certificates issued by the old CA are no longer accepted. The admin token is
/// kept. A running server picks the new files up by itself (`RELOAD_INTERVAL`).
pub(crate) fn renew(dir: &Path, renew_ca: bool) -> Result<Renewed, PkiError> {
    let pki = GeneratedPki::in_dir(dir);
    let now = OffsetDateTime::now_utc();
    let mut certificates = Vec::new();
    let (ca_pem, issuer) = if renew_ca {
        let (ca_pem, issuer) = new_ca(now)?;
        write(dir, &pki.ca_key, &issuer.key().serialize_pem())?;
        write(dir, &pki.ca_cert, &ca_pem)?;
        certificates.push((pki.ca_cert.clone(), now + CA_LIFETIME));
        (ca_pem, issuer)
    } else {
        let read = |path: &Path| {
            fsutil::read_regular_to_string(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => PkiError::NoCa {
                    dir: dir.display().to_string(),
                },
                _ => io(path, e),
            })
        };
        let ca_pem = read(&pki.ca_cert)?;
        let key = KeyPair::from_pem(&read(&pki.ca_key)?).map_err(|e| PkiError::BadCa {
            path: pki.ca_key.display().to_string(),
            message: e.to_string(),
        })?;
        // The issuer is the CA as generated: the same name and key, so the same key
        // identifier (checked below by the certificates chaining to ca.pem).
        let params = ca_params(now);
        (ca_pem, Issuer::new(params, key))
    };
    issue_leaves(dir, &pki, &issuer, &ca_pem, now)?;
    certificates.push((pki.server_cert.clone(), now + CERT_LIFETIME));
    certificates.push((pki.admin_cert.clone(), now + CERT_LIFETIME));
    Ok(Renewed { certificates })
}

/// The warnings due for the generated certificates of `pki`: one expired or expiring
/// within `within`, or with no stated lifetime (valid until 4096, as generated before
/// lifetimes were set).
pub(crate) fn expiry_warnings(pki: &GeneratedPki, within: Duration) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for path in [&pki.ca_cert, &pki.server_cert, &pki.admin_cert] {
        let Some((not_before, not_after)) = validity(path) else {
            continue;
        };
        let dir = path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let fix = format!("renew with `ckvault tls renew --store {}`", dir.display());
        if not_after - not_before > CA_LIFETIME * 2 {
            out.push(format!(
                "{} has no stated lifetime (valid until {}): {fix}{}",
                path.display(),
                not_after.year(),
                if *path == pki.ca_cert { " --ca" } else { "" }
            ));
        } else if not_after <= now {
            out.push(format!(
                "{} expired on {}: {fix}",
                path.display(),
                not_after.date()
            ));
        } else if not_after - now <= within {
            out.push(format!(
                "{} expires on {}: {fix}",
                path.display(),
                not_after.date()
            ));
        }
    }
    out
}

/// The validity of the first certificate in a PEM file.
pub(crate) fn validity(path: &Path) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let pem = fsutil::read_regular(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(dir: &Path, path: &Path, text: &str) -> Result<(), PkiError> {
    fsutil::replace_atomic(dir, path, text.as_bytes()).map_err(|e| io(path, e))
}

/// The generated CA's parameters, valid [`CA_LIFETIME`] from `now`.
fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "ckvault local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + CA_LIFETIME;
    ca
}

/// A new CA: its certificate (PEM) and the issuer to sign with.
fn new_ca(now: OffsetDateTime) -> Result<(String, Issuer<'static, KeyPair>), PkiError> {
    let ca_key = KeyPair::generate()?;
    let ca = ca_params(now);
    let ca_cert = ca.self_signed(&ca_key)?;
    Ok((ca_cert.pem(), Issuer::new(ca, ca_key)))
}

/// Issues and writes the server and admin certificates (new keys, valid
/// [`CERT_LIFETIME`] from `now`). Each key is written before its certificate: a server
/// re-reading them in between finds a certificate that does not match its key and keeps
/// the old pair until the next change.
fn issue_leaves(
    dir: &Path,
    pki: &GeneratedPki,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
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
    server.not_before = now - BACKDATE;
    server.not_after = now + CERT_LIFETIME;
    let server_cert = server.signed_by(&server_key, issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "ckvault:admins");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    admin.not_before = now - BACKDATE;
    admin.not_after = now + CERT_LIFETIME;
    let admin_cert = admin.signed_by(&admin_key, issuer)?;

    write(dir, &pki.server_key, &server_key.serialize_pem())?;
    write(
        dir,
        &pki.server_cert,
        &format!("{}{}", server_cert.pem(), ca_pem),
    )?;
    write(dir, &pki.admin_key, &admin_key.serialize_pem())?;
    write(dir, &pki.admin_cert, &admin_cert.pem())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_have_stated_lifetimes_and_warn_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let pki = ensure_default_pki(&tls).unwrap();
        let now = OffsetDateTime::now_utc();
        let (_, ca_end) = validity(&pki.ca_cert).unwrap();
        let (_, server_end) = validity(&pki.server_cert).unwrap();
        let (_, admin_end) = validity(&pki.admin_cert).unwrap();
        assert!((ca_end - now - CA_LIFETIME).abs() < Duration::minutes(1));
        assert!((server_end - now - CERT_LIFETIME).abs() < Duration::minutes(1));
        assert!((admin_end - now - CERT_LIFETIME).abs() < Duration::minutes(1));
        assert!(expiry_warnings(&pki, RENEW_BEFORE).is_empty());
        let soon = expiry_warnings(&pki, CERT_LIFETIME + Duration::days(1));
        assert_eq!(soon.len(), 2, "{soon:?}");
        assert!(soon.iter().all(|w| w.contains("ckvault tls renew")));
        let renewed = renew(&tls, false).unwrap();
        assert_eq!(renewed.certificates.len(), 2);
        let renewed = renew(&tls, true).unwrap();
        assert_eq!(renewed.certificates.len(), 3);
    }
}
