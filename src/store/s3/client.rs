//! Connecting to an S3-compatible object store: credentials (environment or an AWS-style
//! credentials file), the rustls HTTP client, and turning SDK errors into [`StoreError`]s
//! that tell an operator what to fix.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use crate::config::StoreConfig;
use crate::store::StoreError;

/// Builds an S3 client for `[store]`.
pub fn connect(cfg: &StoreConfig) -> Result<aws_sdk_s3::Client, StoreError> {
    let creds = credentials(cfg)?;
    let mut trust = tls::TrustStore::default();
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| StoreError::io(ca, e))?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| StoreError::Config(format!("[store] ca_file: {e}")))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context)
        .build_https();
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(creds)
        .force_path_style(cfg.path_style)
        .http_client(http)
        // Checksums only where S3 requires them: plain SigV4 payload hashes everywhere
        // else, which every S3 implementation understands.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(ep) = cfg.endpoint.as_deref().filter(|e| !e.is_empty()) {
        b = b.endpoint_url(ep);
    }
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// Credentials from `credentials_file` when set, else the environment.
fn credentials(cfg: &StoreConfig) -> Result<Credentials, StoreError> {
    if let Some(path) = &cfg.credentials_file {
        let profile = cfg.profile.as_deref().unwrap_or("default");
        return from_file(path, profile);
    }
    let ak = std::env::var("AWS_ACCESS_KEY_ID")
        .ok()
        .filter(|s| !s.is_empty());
    let sk = std::env::var("AWS_SECRET_ACCESS_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    match (ak, sk) {
        (Some(ak), Some(sk)) => Ok(Credentials::new(
            ak,
            sk,
            std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|s| !s.is_empty()),
            None,
            "environment",
        )),
        _ => Err(StoreError::Config(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
             [store] credentials_file"
                .into(),
        )),
    }
}

/// Reads `[profile]` of an AWS-style INI credentials file.
pub fn from_file(path: &Path, profile: &str) -> Result<Credentials, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    let (mut ak, mut sk, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name == format!("profile {profile}");
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => ak = Some(v),
                "aws_secret_access_key" => sk = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (ak, sk) {
        (Some(ak), Some(sk)) => Ok(Credentials::new(ak, sk, token, None, "credentials-file")),
        _ => Err(StoreError::Config(format!(
            "{}: profile [{profile}] lacks aws_access_key_id / aws_secret_access_key",
            path.display()
        ))),
    }
}

/// What kind of failure an SDK error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The store could not be reached (connect, timeout, I/O).
    Unreachable,
    /// The store refused our identity.
    Credentials,
    /// Access denied for this object (Object Lock, policy).
    Denied,
    /// No such key.
    NotFound,
    /// A conditional write lost.
    Precondition,
    /// Anything else the service said.
    Other,
}

/// Classifies an SDK error and renders it for an operator.
pub fn classify<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> (Kind, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::DispatchFailure(_) => (Kind::Unreachable, chain(err)),
        SdkError::TimeoutError(_) => (Kind::Unreachable, "timed out".into()),
        SdkError::ResponseError(_) => (Kind::Unreachable, chain(err)),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("").to_owned();
            let msg = s.err().message().unwrap_or("").to_owned();
            let text = if code.is_empty() {
                // No error code parsed: say what the store did send (bounded, escaped).
                let body = s
                    .raw()
                    .body()
                    .bytes()
                    .map(|b| String::from_utf8_lossy(b.get(..300).unwrap_or(b)).into_owned())
                    .unwrap_or_default();
                let body: String = body.chars().flat_map(char::escape_default).collect();
                if body.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {body}")
                }
            } else {
                format!("{code}: {msg} (HTTP {status})")
            };
            let kind = match code.as_str() {
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken" => Kind::Credentials,
                "NoSuchKey" | "NotFound" | "NoSuchVersion" => Kind::NotFound,
                "PreconditionFailed" | "ConditionalRequestConflict" => Kind::Precondition,
                "AccessDenied" => Kind::Denied,
                _ if status == 404 => Kind::NotFound,
                _ if status == 412 => Kind::Precondition,
                _ if status == 403 => Kind::Denied,
                _ if status >= 500 => Kind::Unreachable,
                _ => Kind::Other,
            };
            (kind, text)
        }
        other => (Kind::Other, chain(other)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::ProvideCredentials;

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n\n[profile ops]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token=T2\n[empty]\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let get = |profile: &str| {
            let c = from_file(&path, profile).unwrap();
            rt.block_on(c.provide_credentials()).unwrap()
        };
        let d = get("default");
        assert_eq!((d.access_key_id(), d.secret_access_key()), ("AK1", "SK1"));
        let o = get("ops");
        assert_eq!((o.access_key_id(), o.session_token()), ("AK2", Some("T2")));
        let e = from_file(&path, "empty").unwrap_err().to_string();
        assert!(e.contains("[empty]"), "{e}");
    }
}
