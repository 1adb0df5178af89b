//! The HTTPS server: `ckvault serve`. Wires the store, the audit log, the access policy
//! and the token file into the API ([`api`]) behind our own TLS accept loop ([`tls`]).

pub mod api;
pub mod metrics;
pub mod pki;
pub mod range;
pub mod stream;
pub mod tls;
pub mod tokens;
pub mod trigger;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::policy::AccessPolicy;
use crate::store::LocalStore;
use tokens::TokenFile;

/// Everything the handlers share.
pub struct AppState {
    /// The record store.
    pub store: LocalStore,
    /// The audit log every request is written to before it is served.
    pub audit: AuditLog,
    policy: RwLock<Arc<AccessPolicy>>,
    tokens: RwLock<Arc<TokenFile>>,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Checkpoints through the runtime, when `[capture] runtime_endpoint` is set.
    pub checkpointer: Option<crate::capture::checkpoint::Checkpointer>,
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        store: LocalStore,
        audit: AuditLog,
        policy: AccessPolicy,
        tokens: TokenFile,
    ) -> Self {
        Self {
            store,
            audit,
            policy: RwLock::new(Arc::new(policy)),
            tokens: RwLock::new(Arc::new(tokens)),
            metrics: metrics::Metrics::default(),
            checkpointer: None,
        }
    }

    /// The current access policy.
    pub fn policy(&self) -> Arc<AccessPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the access policy.
    pub fn set_policy(&self, policy: AccessPolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// The current token file.
    pub fn tokens(&self) -> Arc<TokenFile> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the token file.
    pub fn set_tokens(&self, tokens: TokenFile) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// A server ready to run: state, TLS configuration, and what was generated for first use.
pub struct Prepared {
    /// Shared state.
    pub state: Arc<AppState>,
    /// rustls configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Credentials generated on first start (embedded defaults only).
    pub generated: Option<pki::GeneratedPki>,
    /// Where to listen.
    pub listen: std::net::SocketAddr,
    /// Token file path (reloaded on SIGHUP).
    pub tokens_path: Option<PathBuf>,
    /// Policy directory (reloaded on SIGHUP).
    pub policy_dir: Option<PathBuf>,
}

/// Opens everything the configuration names, generating default credentials if no
/// certificate is configured.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let store = LocalStore::open_or_init(&config.store.path)?;
    let audit = match &config.audit.path {
        Some(p) => AuditLog::open(p, store.signing_key()?)?,
        None => store.audit_log()?,
    };
    let mut generated = None;
    let (cert, key, client_ca, tokens_path) = match (&config.server.cert, &config.server.key) {
        (Some(c), Some(k)) => (
            c.clone(),
            k.clone(),
            config.server.client_ca.clone(),
            config.server.tokens.clone(),
        ),
        _ => {
            let g = pki::ensure_default_pki(&store.root().join("tls"))?;
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
    let tls = tls::server_config(&cert, &key, client_ca.as_deref(), config.server.allow_tls12)?;
    let tokens = match &tokens_path {
        Some(p) => TokenFile::load(p)?,
        None => TokenFile::default(),
    };
    let policy = match &config.policy.dir {
        Some(dir) => AccessPolicy::load_dir(dir).map_err(|errs| {
            anyhow::anyhow!(
                "invalid policy:\n{}",
                errs.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?,
        None => AccessPolicy::admin_only(),
    };
    let mut recipients = Vec::new();
    for r in &config.seal.recipients {
        recipients.push(r.parse::<crate::seal::Recipient>()?);
    }
    anyhow::ensure!(
        config.cri.upstream.is_none() || !recipients.is_empty(),
        "[cri] upstream is set but [seal] recipients is empty: checkpoints could not be sealed"
    );
    let checkpointer = config.cri.upstream.as_ref().map(|sock| {
        let opts = crate::seal::SealOptions::new(
            recipients.clone(),
            crate::manifest::Source {
                kind: "trigger".into(),
                path: None,
            },
        );
        crate::capture::checkpoint::Checkpointer::new(
            crate::capture::cri::RuntimeClient::new(sock),
            store.clone(),
            opts,
        )
    });
    let mut state = AppState::new(store, audit, policy, tokens);
    state.checkpointer = checkpointer;
    Ok(Prepared {
        state: Arc::new(state),
        tls: Arc::new(tls),
        generated,
        listen: config.server.listen,
        tokens_path,
        policy_dir: config.policy.dir.clone(),
    })
}

/// Runs the server until SIGINT/SIGTERM; SIGHUP reloads the policy and the token file
/// (keeping the old ones when the new ones are invalid).
pub async fn run(prepared: Prepared, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let app = api::router(prepared.state.clone());
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let state = prepared.state.clone();
    let (tokens_path, policy_dir) = (prepared.tokens_path.clone(), prepared.policy_dir.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&state, tokens_path.as_deref(), policy_dir.as_deref());
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    tls::serve(listener, prepared.tls, app, shutdown).await;
    Ok(())
}

fn reload(state: &AppState, tokens: Option<&std::path::Path>, policy: Option<&std::path::Path>) {
    if let Some(p) = tokens {
        match TokenFile::load(p) {
            Ok(t) => state.set_tokens(t),
            Err(e) => eprintln!("ckvault: keeping the old tokens: {e}"),
        }
    }
    if let Some(dir) = policy {
        match AccessPolicy::load_dir(dir) {
            Ok(p) => state.set_policy(p),
            Err(errs) => {
                for e in errs {
                    eprintln!("ckvault: keeping the old policy: {e}");
                }
            }
        }
    }
}
