//! The HTTPS server: `ckvault serve`. Wires the store, the audit log, the access policy
//! and the token file into the API ([`api`]) behind our own TLS accept loop ([`tls`]),
//! and re-reads the policy, the token file and the TLS credentials ([`credentials`]:
//! server certificate, client CA, CRLs) within [`RELOAD_INTERVAL`] of a change of their
//! files, or at once on SIGHUP.

pub(crate) mod alerts;
pub(crate) mod api;
pub(crate) mod coalesce;
pub(crate) mod credentials;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod pki;
pub mod range;
pub(crate) mod request;
pub(crate) mod stream;
pub mod tls;
pub(crate) mod tokens;
pub(crate) mod trigger;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::audit::AuditLog;
use crate::config::{Config, ConnectionLimits};
use crate::policy::{AccessPolicy, PolicySet};
use crate::store::Store;
use crate::wiring::{Node, Open, SealSetup};
use tokens::TokenFile;

/// Everything the handlers share.
pub(crate) struct AppState {
    /// The record store.
    pub store: Store,
    /// The audit log every request is written to before it is served.
    pub audit: Arc<AuditLog>,
    /// Hold, release and delete, shared with the CLI.
    pub custody: crate::vault::Custody,
    policy: RwLock<Arc<PolicySet>>,
    tokens: RwLock<Arc<TokenFile>>,
    /// Counters (shared with the accept loop).
    pub metrics: Arc<metrics::Metrics>,
    /// Checkpoints through the runtime, when `[capture] runtime_endpoint` is set.
    pub checkpointer: Option<crate::capture::checkpoint::Checkpointer>,
    /// With a bucket: this replica's uploader (its state is part of `/healthz`).
    pub uploader: Option<crate::store::s3::upload::Uploader>,
    /// Local blobs whose every byte matched their signed digest since they last changed:
    /// a range is served only from these, and a full download of one is checked by its
    /// file identity instead of being re-hashed.
    pub verified: crate::vault::verified::VerifiedBlobs,
    /// Requests in progress per authenticated identity (`max_requests_per_identity`).
    pub requests: limits::Counter<String>,
    /// Downloads streaming per identity and in all (`max_downloads_per_identity`,
    /// `max_downloads`).
    pub downloads: limits::Counter<String>,
    /// Failed authentications, folded per source and rate-limited.
    pub auth_failures: limits::AuthFailures,
    /// Client certificate verification, when client certificates are accepted: its CRLs
    /// are checked again on every request (a connection outlives a CRL change).
    pub client_auth: Option<Arc<credentials::ClientAuth>>,
    /// The alert receivers, when `[alerts] enabled`.
    pub receivers: Option<alerts::Receivers>,
}

impl AppState {
    /// Assembles the state.
    pub(crate) fn new(store: Store, audit: AuditLog, policy: PolicySet, tokens: TokenFile) -> Self {
        let audit = Arc::new(audit);
        Self {
            custody: crate::vault::Custody::new(store.clone(), audit.clone()),
            store,
            audit,
            policy: RwLock::new(Arc::new(policy)),
            tokens: RwLock::new(Arc::new(tokens)),
            metrics: Arc::default(),
            checkpointer: None,
            uploader: None,
            verified: Default::default(),
            requests: limits::Counter::new(
                ConnectionLimits::default().max_requests_per_identity,
                usize::MAX,
            ),
            downloads: limits::Counter::new(
                ConnectionLimits::default().max_downloads_per_identity,
                ConnectionLimits::default().max_downloads,
            ),
            auth_failures: limits::AuthFailures::new(
                ConnectionLimits::default().max_auth_failures_per_source,
                ConnectionLimits::default().max_auth_failures,
            ),
            client_auth: None,
            receivers: None,
        }
    }

    /// Applies the per-identity limits of `limits` (a state starts with the defaults).
    pub(crate) fn with_limits(mut self, limits: &ConnectionLimits) -> Self {
        self.requests = limits::Counter::new(limits.max_requests_per_identity, usize::MAX);
        self.downloads =
            limits::Counter::new(limits.max_downloads_per_identity, limits.max_downloads);
        self.auth_failures = limits::AuthFailures::new(
            limits.max_auth_failures_per_source,
            limits.max_auth_failures,
        );
        self
    }

    /// The current policy set (access, recipients, retention, holds).
    pub(crate) fn policy(&self) -> Arc<PolicySet> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy set.
    pub(crate) fn set_policy(&self, policy: PolicySet) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// The current token file.
    pub(crate) fn tokens(&self) -> Arc<TokenFile> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the token file.
    pub(crate) fn set_tokens(&self, tokens: TokenFile) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// A server ready to run: state, TLS configuration, and what was generated for first use.
pub(crate) struct Prepared {
    /// Shared state.
    pub state: Arc<AppState>,
    /// rustls configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// The credentials under it (reloaded when their files change, and on SIGHUP).
    pub credentials: Arc<credentials::Credentials>,
    /// Credentials generated on first start (embedded defaults only).
    pub generated: Option<pki::GeneratedPki>,
    /// Connection limits.
    pub limits: crate::config::ConnectionLimits,
    /// Token file path (reloaded when it changes, and on SIGHUP).
    pub tokens_path: Option<PathBuf>,
    /// Policy directory (reloaded when its files change, and on SIGHUP).
    pub policy_dir: Option<PathBuf>,
    /// With a bucket store: what this replica runs beside serving.
    pub bucket: Option<Replica>,
}

/// What a server replica on a bucket runs beside serving.
#[derive(Clone)]
pub(crate) struct Replica {
    /// The uploader of this replica's spool and audit segments.
    pub uploader: crate::store::s3::upload::Uploader,
    /// How often the index re-reads the bucket's manifests (`[store] index_refresh`).
    pub index_refresh: std::time::Duration,
    /// This replica's name for the retention lease (`NODE:PID`).
    pub lease_holder: String,
}

/// Why a server could not be prepared from its configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The node's parts (store, bucket, policies, recipients) could not be built.
    #[error(transparent)]
    Node(Box<crate::wiring::BuildError>),
    /// The store (its audit log, staging) could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The generated default TLS material could not be made or read.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The server's certificate, key, client CA or CRL could not be loaded.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
    /// The tokens file could not be loaded.
    #[error(transparent)]
    Tokens(#[from] crate::serve::tokens::TokenError),
    /// The alert receivers' configuration is unusable.
    #[error(transparent)]
    Receivers(#[from] alerts::ReceiversError),
    /// `[server] crl` without `[server] client_ca`.
    #[error("[server] crl is set but client certificates are not accepted ([server] client_ca)")]
    CrlWithoutClientCa,
    /// `[cri] upstream` without recipients to seal to.
    #[error(
        "[cri] upstream is set but [seal] recipients is empty: checkpoints could not be sealed"
    )]
    UpstreamWithoutRecipients,
}

impl From<crate::wiring::BuildError> for PrepareError {
    fn from(e: crate::wiring::BuildError) -> Self {
        Self::Node(Box::new(e))
    }
}

/// Opens everything the configuration names, generating default credentials if no
/// certificate is configured.
pub(crate) fn prepare(config: &Config) -> Result<Prepared, PrepareError> {
    let node = Node::build(config.clone(), Open::OrCreate)?;
    let store = node.store();
    let bucket = node.uploader().map(|uploader| Replica {
        uploader: uploader.clone(),
        index_refresh: config.store.index_refresh,
        lease_holder: format!("{}:{}", node.name(), std::process::id()),
    });
    let local = node.local().clone();
    let store_local = local;
    let audit = store_local.audit_log()?;
    let mut generated = None;
    let (cert, key, client_ca, tokens_path) = match (&config.server.cert, &config.server.key) {
        (Some(c), Some(k)) => (
            c.clone(),
            k.clone(),
            config.server.client_ca.clone(),
            config.server.tokens.clone(),
        ),
        _ => {
            let g = pki::ensure_default_pki(&store_local.root().join("tls"))?;
            let out = (
                g.server_cert.clone(),
                g.server_key.clone(),
                Some(
                    config
                        .server
                        .client_ca
                        .clone()
                        .unwrap_or_else(|| g.ca_cert.clone()),
                ),
                Some(
                    config
                        .server
                        .tokens
                        .clone()
                        .unwrap_or_else(|| g.tokens.clone()),
                ),
            );
            generated = Some(g);
            out
        }
    };
    if config.server.crl.is_some() && client_ca.is_none() {
        return Err(PrepareError::CrlWithoutClientCa);
    }
    let credentials = credentials::Credentials::load(credentials::CredentialFiles {
        cert,
        key,
        client_ca,
        crl: config.server.crl.clone(),
    })?;
    let tls = credentials.server_config(config.server.allow_tls12)?;
    if let Some(g) = &generated {
        for warning in pki::expiry_warnings(g, pki::RENEW_BEFORE) {
            tracing::warn!("{warning}");
        }
    }
    let tokens = match &tokens_path {
        Some(p) => TokenFile::load(p)?,
        None => TokenFile::default(),
    };
    let set = node.policies()?.unwrap_or_else(|| PolicySet {
        access: AccessPolicy::admin_only(),
        ..PolicySet::default()
    });
    let checkpointer = match &config.cri.upstream {
        None => None,
        Some(sock) => {
            let mut setup = SealSetup::gather(&config.seal.recipients, &[], &[], None)?;
            setup.recipient_policy = set.recipients.clone().map(Arc::new);
            // Retention of the policies this server holds (a bucket's uploader takes the
            // record instead).
            setup.policies = Some(Arc::new(set.clone()));
            let setup = setup
                .require_recipients()
                .map_err(|_| PrepareError::UpstreamWithoutRecipients)?;
            let intake = node.intake(
                &setup,
                crate::manifest::Source {
                    kind: crate::manifest::SourceKind::Trigger,
                    path: None,
                },
            );
            // What a crash left in staging (a trigger in flight, or another front-end's
            // capture on this store) is sealed now, as every capturing front-end does.
            crate::wiring::recover_staging(&intake)?;
            Some(
                crate::capture::checkpoint::Checkpointer::new(
                    crate::capture::cri::RuntimeClient::new(sock),
                    intake,
                )
                .with_staging_mode(config.cri.staging_mode),
            )
        }
    };
    let mut state = AppState::new(store, audit, set, tokens).with_limits(&config.server.limits());
    // The use case runs for the alert receivers and, on a bucket with [fleet], for the
    // capture requests a node agent claims.
    let fleet = match (config.fleet.enabled, node.bucket()) {
        (true, Some(b)) => Some(crate::capture::fleet::FleetLink::new(
            crate::store::s3::fleet::Fleet::new(b.s3.clone()),
            node.name(),
            &config.fleet,
        )),
        _ => None,
    };
    if config.alerts.enabled || fleet.is_some() {
        let local = node.local();
        let disks = vec![local.staging_dir()?, local.root().to_path_buf()];
        state.receivers = Some(alerts::Receivers::build(
            config,
            checkpointer.clone(),
            state.custody.clone(),
            state.audit.clone(),
            disks,
            fleet,
        )?);
    }
    state.checkpointer = checkpointer;
    state.uploader = node.uploader().cloned();
    state.client_auth = credentials.client_auth().cloned();
    Ok(Prepared {
        state: Arc::new(state),
        tls: Arc::new(tls),
        credentials: Arc::new(credentials),
        generated,
        limits: config.server.limits(),
        tokens_path,
        policy_dir: config.policy.dir.clone(),
        bucket,
    })
}

/// Why a prepared server stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The SIGHUP/SIGTERM handlers could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The accept loop or its connection threads could not start.
    #[error("cannot start the connection threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// Runs the server until SIGINT/SIGTERM. The policy, the token file and the TLS
/// credentials are re-read within [`RELOAD_INTERVAL`] of a change of their files, and at
/// once on SIGHUP (keeping the old ones when the new ones are invalid).
///
/// `ready` runs once the signal handlers are installed (announce the server there: a
/// SIGHUP sent right after the announcement must not kill it).
pub(crate) async fn run(
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    ready: impl FnOnce(&Prepared),
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let app = api::router(prepared.state.clone());
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    ready(&prepared);
    let state = prepared.state.clone();
    let (tokens_path, policy_dir) = (prepared.tokens_path.clone(), prepared.policy_dir.clone());
    let creds = prepared.credentials.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&state, tokens_path.as_deref(), policy_dir.as_deref());
            reload_credentials(&creds);
        }
    });
    // Parse every manifest once now, so the first listing is as fast as the next ones.
    if let Store::Local(local) = &prepared.state.store {
        let local = local.clone();
        tokio::task::spawn_blocking(move || {
            let _ = local.list_shared();
        });
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut lease = None;
    if let (Some(replica), Store::Bucket(bucket)) = (prepared.bucket.clone(), &prepared.state.store)
    {
        tokio::spawn(replica.uploader.run(stop.clone()));
        let refresh = replica.index_refresh;
        let b = bucket.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match b.index.refresh().await {
                    Ok(_) if failing => {
                        tracing::info!(
                            bucket = b.s3.bucket(),
                            "index of the bucket is current again"
                        );
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "index refresh failed");
                        }
                        failing = true;
                    }
                }
                tokio::time::sleep(refresh).await;
            }
        });
        lease = Some(crate::store::s3::lease::Lease::retention(
            bucket.s3.clone(),
            replica.lease_holder,
            RETENTION_INTERVAL * 3,
        ));
    }
    // A node agent of a fleet: its pods published, its inbox polled.
    if let Some(r) = &prepared.state.receivers {
        crate::capture::fleet::start_agent(&r.incidents, r.fleet.as_ref());
    }
    // Failed authentications folded over an interval are audited as one count per source.
    tokio::spawn(request::audit_folded_failures(
        prepared.state.clone(),
        prepared.limits.auth_failure_interval,
    ));
    // Retention on a timer, and the policy, the token file and the TLS credentials re-read
    // when their files change.
    let state = prepared.state.clone();
    let policy_dir = prepared.policy_dir.clone();
    let tokens_path = prepared.tokens_path.clone();
    let creds = prepared.credentials.clone();
    tokio::spawn(async move {
        let mut stamp = policy_stamp(policy_dir.as_deref());
        let mut tokens_stamp = tokens_path.as_deref().map(file_stamp);
        let mut creds_stamp: Vec<_> = creds.files().paths().into_iter().map(file_stamp).collect();
        let mut last_retention: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let now_stamp = policy_stamp(policy_dir.as_deref());
            if now_stamp != stamp {
                stamp = now_stamp;
                reload(&state, None, policy_dir.as_deref());
            }
            let now_tokens = tokens_path.as_deref().map(file_stamp);
            if now_tokens != tokens_stamp {
                tokens_stamp = now_tokens;
                reload(&state, tokens_path.as_deref(), None);
            }
            let now_creds: Vec<_> = creds.files().paths().into_iter().map(file_stamp).collect();
            if now_creds != creds_stamp {
                creds_stamp = now_creds;
                reload_credentials(&creds);
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_INTERVAL) {
                last_retention = Some(std::time::Instant::now());
                let st = state.clone();
                // With a runtime configured, orphan rules know which pods still exist.
                let live = match &st.checkpointer {
                    Some(c) => live_pods(c.runtime()).await,
                    None => None,
                };
                if let Some(lease) = &lease {
                    match lease.acquire().await {
                        Ok(true) => {}
                        Ok(false) => continue, // another replica applies retention
                        Err(e) => {
                            tracing::warn!(error = %e, "retention lease not taken");
                            continue;
                        }
                    }
                }
                let set = st.policy();
                if set.retention.rules.is_empty() {
                    continue;
                }
                match crate::policy::enforce::apply_store(
                    &st.store,
                    &st.audit,
                    &set,
                    crate::policy::enforce::now_unix(),
                    live.as_ref(),
                    "system:retention",
                )
                .await
                {
                    Ok(done) => {
                        st.metrics
                            .retention_deletions
                            .fetch_add(done.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(error = %e, "retention failed"),
                }
            }
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    let served = tls::serve(
        listener,
        prepared.tls,
        app,
        prepared.limits,
        prepared.state.metrics.clone(),
        shutdown,
    )
    .await;
    stop.notify_waiters();
    served.map_err(RunError::Threads)
}

/// The (namespace, pod) pairs the runtime runs now; `None` if it cannot be asked.
async fn live_pods(
    runtime: &crate::capture::cri::RuntimeClient,
) -> Option<std::collections::HashSet<(String, String)>> {
    use crate::capture::cri::*;
    let resp: ListPodSandboxResponse = runtime
        .list_pod_sandbox(
            ListPodSandboxRequest::default(),
            std::time::Duration::from_secs(10),
        )
        .await
        .ok()?;
    Some(
        resp.items
            .into_iter()
            .filter_map(|p| {
                let ns = p
                    .labels
                    .get(LABEL_NAMESPACE)
                    .cloned()
                    .or(p.metadata.as_ref().map(|m| m.namespace.clone()))?;
                let pod = p
                    .labels
                    .get(LABEL_POD)
                    .cloned()
                    .or(p.metadata.map(|m| m.name))?;
                Some((ns, pod))
            })
            .collect(),
    )
}

/// How often the server applies retention.
pub(crate) const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the server looks for changes of the policy files, the token file and the TLS
/// credential files: a token removed from its file, or a certificate added to the CRL,
/// stops working within this (plus the time to read the file).
pub(crate) const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What tells a file changed: modification time, length and inode (a file replaced by a
/// rename, as `ckvault token` and Kubernetes' secret volumes do, has a new inode), of
/// the file a symbolic link points to.
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

fn file_stamp(path: &std::path::Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Re-reads the TLS credentials, keeping each part that does not load.
fn reload_credentials(creds: &credentials::Credentials) {
    let errors = creds.reload();
    if errors.is_empty() {
        let revoked = creds.client_auth().map_or(0, |c| c.revoked_count());
        tracing::info!(revoked, "TLS credentials re-read");
    }
    for e in errors {
        tracing::warn!(error = %e, "keeping the old TLS credentials");
    }
}

/// Modification times of the policy files, to notice edits.
fn policy_stamp(dir: Option<&std::path::Path>) -> Vec<Option<std::time::SystemTime>> {
    let Some(dir) = dir else { return Vec::new() };
    [
        "access.toml",
        "recipients.toml",
        "retention.toml",
        "holds.toml",
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    })
    .collect()
}

fn reload(state: &AppState, tokens: Option<&std::path::Path>, policy: Option<&std::path::Path>) {
    if let Some(p) = tokens {
        match TokenFile::load(p) {
            Ok(t) => {
                tracing::info!(tokens = t.token.len(), "token file re-read");
                state.set_tokens(t)
            }
            Err(e) => tracing::warn!(error = %e, "keeping the old tokens"),
        }
    }
    if let Some(dir) = policy {
        match PolicySet::load_dir(dir) {
            Ok(p) => state.set_policy(p),
            Err(errs) => {
                for e in errs {
                    tracing::warn!(error = %e, "keeping the old policy");
                }
            }
        }
    }
}
