//! `ckvault serve`, `ckvault token add|list|revoke`, `ckvault tls renew` and `ckvault policy
//! check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::policy;
use crate::serve::{self, tokens::TokenFile};

/// Arguments of `ckvault serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see examples/ckvault.toml). Without it: local store in
    /// ./ckvault-data, generated CA, server and admin certificates and an admin token under
    /// ckvault-data/tls/, listening on 127.0.0.1:8443.
    #[arg(long, short = 'c', value_name = "FILE", env = "CKVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Override [server] listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

/// Prints a line on stdout, ignoring a closed stdout (a server must not die because
/// whoever started it stopped reading).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Runs `ckvault serve`.
pub(super) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    // Listen first: a busy or forbidden address must fail before anything is created
    // (store, CA, certificates, admin token).
    let listen = config.server.listen;
    let std_listener = std::net::TcpListener::bind(listen).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another process listens there (see: ss -ltnp 'sport = :{}'); stop it, or choose another address with --listen ADDR or [server] listen",
                listen.port()
            ),
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another port with --listen ADDR or [server] listen".to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address; choose another with --listen ADDR or [server] listen".to_owned()
            }
            _ => "choose another address with --listen ADDR or [server] listen".to_owned(),
        };
        anyhow::Error::new(e).context(format!(
            "cannot listen on {listen}: {why}; nothing was created"
        ))
    })?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let prepared = serve::prepare(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let announce = move |prepared: &serve::Prepared| {
            say!("ckvault: serving https://{addr} (store {})", prepared.state.store.local().root().display());
            if let Some(g) = &prepared.generated {
                say!("ckvault: CA certificate:      {}", g.ca_cert.display());
                say!("ckvault: admin certificate:   {} (key {})", g.admin_cert.display(), g.admin_key.display());
                say!("ckvault: admin token (file):  {}", g.admin_token.display());
                say!(
                    "ckvault: try: curl --cacert {} -H \"Authorization: Bearer $(cat {})\" https://{addr}/v1/checkpoints",
                    g.ca_cert.display(),
                    g.admin_token.display()
                );
            }
        };
        serve::run(prepared, listener, announce).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ckvault token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token for NAME, print it once, store only its hash. A name has at
    /// most one token; a running server accepts it within 2 s.
    Add {
        /// User name the token authenticates as.
        name: String,
        /// Group memberships (repeatable; at least one unless --no-group).
        #[arg(long = "group", short = 'g', value_name = "G")]
        groups: Vec<String>,
        /// Allow a token with no group (it can do only what access.toml grants user:NAME).
        #[arg(long, conflicts_with = "groups")]
        no_group: bool,
        /// The token file ([server] tokens).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
    },
    /// List the tokens: name, groups, creation time, start of the hash (never the token).
    List {
        /// The token file ([server] tokens).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove NAME's token; a running server refuses it within 2 s, without a signal.
    Revoke {
        /// User name whose token to remove.
        name: String,
        /// The token file ([server] tokens).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
    },
}

/// Runs `ckvault token ...`.
pub(super) fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Add {
            name,
            groups,
            no_group,
            tokens,
        } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 128
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c)),
                "token name {name:?} must be 1 to 128 letters, digits and -_.@:"
            );
            let mut file = TokenFile::load(&tokens)?;
            let token = if no_group {
                file.add_user_only(&name, &[])?
            } else {
                file.add(&name, &groups)?
            };
            file.save(&tokens)?;
            println!("{token}");
            eprintln!(
                "ckvault: token for user:{name} added to {} (only its hash is stored; a running server accepts it within {} s)",
                tokens.display(),
                serve::RELOAD_INTERVAL.as_secs()
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { tokens, json } => {
            let file = TokenFile::load(&tokens)?;
            for t in &file.token {
                let hash = t.sha256.get(..12).unwrap_or(&t.sha256);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": t.name,
                            "groups": t.groups,
                            "created": t.created,
                            "sha256_prefix": hash,
                        })
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\tsha256:{hash}",
                        t.name,
                        if t.groups.is_empty() {
                            "-".to_owned()
                        } else {
                            t.groups.join(",")
                        },
                        if t.created.is_empty() {
                            "-"
                        } else {
                            &t.created
                        },
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name, tokens } => {
            let mut file = TokenFile::load(&tokens)?;
            let removed = file.revoke(&name);
            if removed == 0 {
                eprintln!(
                    "ckvault: no token for user:{name} in {} (`ckvault token list --tokens {}`)",
                    tokens.display(),
                    tokens.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            file.save(&tokens)?;
            eprintln!(
                "ckvault: revoked {removed} token(s) of user:{name} in {}; a running server refuses them within {} s (requests already in progress finish)",
                tokens.display(),
                serve::RELOAD_INTERVAL.as_secs()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ckvault tls ...`
#[derive(Debug, clap::Subcommand)]
pub enum TlsCommand {
    /// Renew the generated server and admin certificates (new keys, valid 365 days) under
    /// the generated CA; with --ca, a new CA (valid 10 years) too. A running server uses
    /// the new ones within 2 s.
    Renew {
        /// The store whose tls/ holds the generated certificates.
        #[arg(
            long,
            value_name = "DIR",
            env = "CKVAULT_STORE",
            default_value = "ckvault-data"
        )]
        store: PathBuf,
        /// The server's configuration file instead (its store's tls/).
        #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "store")]
        config: Option<PathBuf>,
        /// Also a new CA: every client must then trust the new ca.pem, and client
        /// certificates issued by the old CA are refused.
        #[arg(long)]
        ca: bool,
    },
}

/// Runs `ckvault tls ...`.
pub(super) fn tls(cmd: TlsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TlsCommand::Renew { store, config, ca } => {
            let dir = match &config {
                Some(path) => {
                    let config = Config::load(path)?;
                    anyhow::ensure!(
                        config.server.cert.is_none() && config.server.key.is_none(),
                        "{} sets [server] cert and key: those are yours to renew with your CA; `ckvault tls renew` renews only the certificates ckvault generated",
                        path.display()
                    );
                    config.store.local_dir().join("tls")
                }
                None => store.join("tls"),
            };
            anyhow::ensure!(
                dir.join("ca.pem").exists(),
                "{}: no generated certificates (start `ckvault serve` once to generate them)",
                dir.display()
            );
            let renewed = serve::pki::renew(&dir, ca)?;
            for (path, not_after) in &renewed.certificates {
                println!("{}\tvalid until {}", path.display(), not_after.date());
            }
            eprintln!(
                "ckvault: renewed; a running server uses the new certificates within {} s{}",
                serve::RELOAD_INTERVAL.as_secs(),
                if ca {
                    "; clients must now trust the new ca.pem"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ckvault policy ...`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate every policy file in DIR; prints FILE:LINE:COLUMN: problem for each error.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
}

/// Runs `ckvault policy ...`.
pub(super) fn policy(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { dir } => match policy::check_dir(&dir) {
            Ok(p) => {
                println!(
                    "OK {}: {} access grants, {} recipient rules, {} retention rules, {} holds",
                    dir.display(),
                    p.access.len(),
                    if p.recipients.is_some() { "with" } else { "no" },
                    p.retention.rules.len(),
                    p.holds.holds.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errs) => {
                for e in &errs {
                    println!("{e}");
                }
                eprintln!("ckvault: {} problem(s) in {}", errs.len(), dir.display());
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
