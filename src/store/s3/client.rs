//! Connecting to an S3-compatible object store: credentials (the AWS SDK's profile
//! provider on `credentials_file`, else its default chain), the rustls HTTP client, and
//! turning SDK errors into [`StoreError`]s that tell an operator what to fix; and the
//! process's count of the requests it sent, by the class S3 bills them in ([`REQUESTS`]).

use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use crate::config::StoreConfig;
use crate::store::StoreError;

/// Builds an S3 client for `[store]`.
pub fn connect(cfg: &StoreConfig) -> Result<aws_sdk_s3::Client, StoreError> {
    let mut trust = tls::TrustStore::default();
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| StoreError::io(ca, e))?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(StoreError::CaFile)?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context)
        .build_https();
    let creds = credentials(cfg, http.clone())?;
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(creds)
        .force_path_style(cfg.path_style)
        .http_client(http)
        .interceptor(Counting)
        // Checksums only where S3 requires them: plain SigV4 payload hashes everywhere
        // else, which every S3 implementation understands.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(cfg.timeout)
                .operation_attempt_timeout(cfg.timeout)
                .build(),
        );
    if let Some(ep) = cfg.endpoint.as_deref().filter(|e| !e.is_empty()) {
        b = b.endpoint_url(ep);
    }
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// S3 requests this process sent (every attempt, retries included), by the class AWS
/// bills them in: GET (GetObject), HEAD, PUT (PutObject, UploadPart, ...), POST
/// (multipart create and complete, DeleteObjects), LIST (ListObjectsV2, versions,
/// uploads), DELETE. Shown at `/metrics` as `ckvault_s3_requests_total{class=...}`.
pub static REQUESTS: Requests = Requests::new();

/// Request counts by billing class (see [`REQUESTS`]).
#[derive(Debug)]
pub struct Requests {
    counts: [std::sync::atomic::AtomicU64; 6],
}

/// The billing classes, in the order [`Requests::snapshot`] gives them.
pub const CLASSES: [&str; 6] = ["get", "head", "put", "post", "list", "delete"];

impl Requests {
    const fn new() -> Self {
        Self {
            counts: [const { std::sync::atomic::AtomicU64::new(0) }; 6],
        }
    }

    /// Counts one request of `method` on `uri`.
    pub fn count(&self, method: &str, uri: &str) {
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        let listing = query
            .split('&')
            .any(|p| p.starts_with("list-type=") || p == "versions" || p == "uploads");
        let class = match method {
            "GET" if listing => 4,
            "GET" => 0,
            "HEAD" => 1,
            "PUT" => 2,
            "POST" => 3,
            "DELETE" => 5,
            _ => 0,
        };
        if let Some(c) = self.counts.get(class) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The counts, by [`CLASSES`].
    pub fn snapshot(&self) -> [u64; 6] {
        std::array::from_fn(|i| {
            self.counts
                .get(i)
                .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
        })
    }

    /// Appends the counts in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP ckvault_s3_requests_total S3 requests sent (every attempt), by billing class."
        );
        let _ = writeln!(out, "# TYPE ckvault_s3_requests_total counter");
        for (class, n) in CLASSES.iter().zip(self.snapshot()) {
            let _ = writeln!(out, "ckvault_s3_requests_total{{class=\"{class}\"}} {n}");
        }
    }
}

/// The interceptor that counts each attempt into [`REQUESTS`].
#[derive(Debug)]
struct Counting;

impl aws_sdk_s3::config::Intercept for Counting {
    fn name(&self) -> &'static str {
        "ckvault-request-count"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let r = context.request();
        REQUESTS.count(r.method(), r.uri());
        Ok(())
    }
}

/// Where credentials come from: with `credentials_file`, the AWS SDK's profile provider
/// on that file (static keys, a session token, or a role to assume; `profile` picks the
/// section); otherwise the SDK's default chain, in its order: environment, shared profile
/// (`AWS_PROFILE`, `~/.aws`), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
/// `AWS_ROLE_ARN`: IRSA), the container endpoint (EKS Pod Identity, ECS), instance
/// metadata. STS and the metadata endpoints are reached over ckvault's own HTTP client.
fn credentials(
    cfg: &StoreConfig,
    http: aws_sdk_s3::config::SharedHttpClient,
) -> Result<SharedCredentialsProvider, StoreError> {
    let provider = ProviderConfig::default()
        .with_http_client(http)
        .with_region(Some(Region::new(cfg.region.clone())))
        .with_behavior_version(Some(BehaviorVersion::latest()));
    if let Some(path) = &cfg.credentials_file {
        // Read it now, so a missing or unreadable file is a clear error at start.
        std::fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
        let files = EnvConfigFiles::builder()
            .with_file(EnvConfigFileKind::Credentials, path)
            .build();
        let p = ProfileFileCredentialsProvider::builder()
            .configure(&provider)
            .profile_files(files)
            .profile_name(cfg.profile.as_deref().unwrap_or("default"))
            .build();
        return Ok(SharedCredentialsProvider::new(p));
    }
    Ok(SharedCredentialsProvider::new(LazyChain {
        provider,
        chain: tokio::sync::OnceCell::new(),
    }))
}

/// The SDK's default credentials chain, built (asynchronously) at its first use.
#[derive(Debug)]
struct LazyChain {
    provider: ProviderConfig,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl ProvideCredentials for LazyChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| {
                    DefaultCredentialsChain::builder()
                        .configure(self.provider.clone())
                        .build()
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

/// What to say when no credentials could be found or obtained.
pub const CREDENTIALS_HELP: &str = "provide S3 credentials by one of: [store] \
     credentials_file (and profile); AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
     AWS_SESSION_TOKEN); a shared profile (AWS_PROFILE, ~/.aws/credentials); web identity \
     (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, as IRSA sets them); the container \
     credentials endpoint (EKS Pod Identity, ECS); or instance metadata";

/// What kind of failure an SDK error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The store could not be reached (connect, timeout, I/O).
    Unreachable,
    /// The store refused our identity.
    Credentials,
    /// No credentials could be found or obtained (nothing configured, or STS refused).
    NoCredentials,
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
    if from_credentials(err) {
        return (Kind::NoCredentials, chain(err));
    }
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

/// Whether the failure came from obtaining credentials (before any request was sent).
fn from_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cur = c.source();
    }
    false
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
    fn requests_are_counted_by_billing_class() {
        let r = Requests::new();
        r.count("GET", "http://h/b/k");
        r.count("GET", "http://h/b?list-type=2&prefix=x");
        r.count("GET", "http://h/b?versions&prefix=x");
        r.count("PUT", "http://h/b/k?x-id=PutObject");
        r.count("HEAD", "http://h/b/k");
        r.count("POST", "http://h/b?delete");
        r.count("DELETE", "http://h/b/k");
        assert_eq!(r.snapshot(), [1, 1, 1, 1, 2, 1]);
        let mut text = String::new();
        r.render(&mut text);
        assert!(
            text.contains("ckvault_s3_requests_total{class=\"list\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n\n[ops]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token=T2\n[empty]\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = aws_smithy_http_client::Builder::new().build_http();
        let get = |profile: &str| {
            let cfg = StoreConfig {
                credentials_file: Some(path.clone()),
                profile: Some(profile.into()),
                ..StoreConfig::default()
            };
            let c = credentials(&cfg, http.clone()).unwrap();
            rt.block_on(c.provide_credentials())
        };
        let d = get("default").unwrap();
        assert_eq!((d.access_key_id(), d.secret_access_key()), ("AK1", "SK1"));
        let o = get("ops").unwrap();
        assert_eq!((o.access_key_id(), o.session_token()), ("AK2", Some("T2")));
        assert!(get("empty").is_err(), "a profile without keys");
        let missing = StoreConfig {
            credentials_file: Some(dir.path().join("nope")),
            ..StoreConfig::default()
        };
        assert!(credentials(&missing, http.clone()).is_err());
    }
}
