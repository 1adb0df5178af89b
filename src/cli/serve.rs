//! `ckvault serve`, `ckvault token add` and `ckvault policy check`.

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
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    let prepared = serve::prepare(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(prepared.listen)
            .await
            .with_context(|| format!("cannot listen on {}", prepared.listen))?;
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
        serve::run(prepared, listener, announce).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ckvault token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token for NAME, print it once, store only its hash.
    Add {
        /// User name the token authenticates as.
        name: String,
        /// Group memberships (repeatable).
        #[arg(long = "group", short = 'g', value_name = "G")]
        groups: Vec<String>,
        /// The token file ([server] tokens).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
    },
}

/// Runs `ckvault token ...`.
pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Add {
            name,
            groups,
            tokens,
        } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c)),
                "token name {name:?} must be letters, digits and -_.@:"
            );
            let mut file = TokenFile::load(&tokens)?;
            let token = file.add(&name, &groups)?;
            file.save(&tokens)?;
            println!("{token}");
            eprintln!(
                "ckvault: token for user:{name} added to {} (only its hash is stored; send SIGHUP to a running server to load it)",
                tokens.display()
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
pub fn policy(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
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
