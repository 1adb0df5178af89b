//! `ckvault proxy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::StoreArg;
use crate::capture::checkpoint::Checkpointer;
use crate::capture::cri::RuntimeClient;
use crate::capture::{proxy, staging};
use crate::manifest::Source;
use crate::seal::{Recipient, SealError, SealOptions};
use crate::store::LocalStore;

/// Arguments of `ckvault proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The socket kubelet connects to (its --container-runtime-endpoint=unix://PATH).
    #[arg(long, value_name = "SOCK", default_value = "/run/ckvault/cri.sock")]
    listen: PathBuf,
    /// The real runtime's socket (containerd: /run/containerd/containerd.sock; CRI-O:
    /// /var/run/crio/crio.sock).
    #[arg(long, value_name = "SOCK")]
    runtime: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// Recipient (age1... or SSH public key); repeatable.
    #[arg(long = "recipient", short = 'r', value_name = "R")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(long, value_name = "F")]
    recipients_file: Vec<PathBuf>,
    /// Leave nothing at the kubelet's requested location (default: a JSON receipt, 0600).
    #[arg(long)]
    no_receipts: bool,
}

/// Runs `ckvault proxy`.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let mut recipients = Vec::new();
    for r in &args.recipients {
        recipients.push(r.parse::<Recipient>()?);
    }
    for f in &args.recipients_file {
        recipients.extend(Recipient::read_file(f)?);
    }
    if recipients.is_empty() {
        return Err(SealError::NoRecipients.into());
    }
    let store = LocalStore::open_or_init(&args.store.store)?;
    let opts = SealOptions::new(
        recipients,
        Source {
            kind: "cri-proxy".into(),
            path: None,
        },
    );
    let recovered = staging::recover(&store, &opts)?;
    for m in &recovered.sealed {
        println!("recovered {} from staging", m.id);
    }
    let checkpointer = Checkpointer::new(RuntimeClient::new(&args.runtime), store, opts);
    let proxy = Arc::new(proxy::Proxy::new(checkpointer, !args.no_receipts));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(dir) = args.listen.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let listener = proxy::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen.display()))?;
        println!(
            "ckvault: CRI proxy on unix://{} -> unix://{}",
            args.listen.display(),
            args.runtime.display()
        );
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
        };
        proxy::serve(proxy, listener, shutdown).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
