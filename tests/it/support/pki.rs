//! Client certificates for the server tests: issued with rcgen by the CA `ckvault serve`
//! generated under `<store>/tls/` (or any CA), so tests can present identities of their
//! choosing (CN = user, O = group).

use std::fs;
use std::path::{Path, PathBuf};

/// A client certificate (PEM file, key file) for `cn`/`org`, issued by `issuer`.
pub fn client_cert(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    dir: &Path,
    cn: &str,
    org: Option<&str>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some((not_before, not_after)) = validity {
        params.not_before = not_before;
        params.not_after = not_after;
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// The issuer for an existing CA certificate (PEM) and its key. (What
/// `rcgen::Issuer::from_ca_cert_pem` does, which needs rcgen's `x509-parser` feature that
/// ckvault does not enable: subject name byte for byte, key identifier, key usages.)
pub fn issuer_from_pem(
    ca_pem: &str,
    key: rcgen::KeyPair,
) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    use rcgen::{CertificateParams, DnType, DnValue, KeyIdMethod, KeyUsagePurpose};
    use x509_parser::asn1_rs::Tag;
    use x509_parser::extensions::ParsedExtension;
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("CA PEM");
    let cert = pem.parse_x509().expect("CA certificate");
    assert!(cert.is_ca(), "not a CA certificate");
    let mut params = CertificateParams::default();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr.attr_type().iter().expect("small OID arcs").collect();
        let ty = match oid.as_slice() {
            [2, 5, 4, 3] => DnType::CommonName,
            [2, 5, 4, 10] => DnType::OrganizationName,
            _ => DnType::CustomDnType(oid),
        };
        let text = attr.as_str().expect("a string attribute").to_owned();
        let value = match attr.attr_value().tag() {
            Tag::PrintableString => DnValue::PrintableString(text.try_into().unwrap()),
            Tag::Utf8String => DnValue::Utf8String(text),
            other => panic!("CA subject attribute of type {other:?}"),
        };
        params.distinguished_name.push(ty, value);
    }
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(ki) = ext.parsed_extension() {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ki.0.to_vec());
        }
    }
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    rcgen::Issuer::new(params, key)
}

/// A client certificate for `cn`/`org` issued by the CA in `tls_dir` (`ca.pem`, `ca.key`),
/// written into `out_dir`.
pub fn issue(tls_dir: &Path, out_dir: &Path, cn: &str, org: Option<&str>) -> (PathBuf, PathBuf) {
    let ca_pem = fs::read_to_string(tls_dir.join("ca.pem")).expect("ca.pem");
    let ca_key = fs::read_to_string(tls_dir.join("ca.key")).expect("ca.key");
    let key = rcgen::KeyPair::from_pem(&ca_key).expect("CA key");
    let issuer = issuer_from_pem(&ca_pem, key);
    client_cert(&issuer, out_dir, cn, org, None)
}

/// A fresh CA and a server certificate for `127.0.0.1` it issued, written into `dir` as
/// `ca.pem`, `server.pem`, `server.key` (for test servers of our own: a hostile vault).
pub fn loopback_server(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test loopback CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    fs::write(&paths.0, ca_cert.pem()).unwrap();
    fs::write(&paths.1, cert.pem()).unwrap();
    fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
