//! `ckvault watch`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::StoreArg;
use crate::capture::{staging, watch};
use crate::inspect::escape_control;
use crate::manifest::Source;
use crate::seal::{Recipient, SealError, SealOptions};
use crate::store::LocalStore;

/// Arguments of `ckvault watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The kubelet checkpoint directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/kubelet/checkpoints"
    )]
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// Recipient (age1... or SSH public key); repeatable.
    #[arg(long = "recipient", short = 'r', value_name = "R")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(long, value_name = "F")]
    recipients_file: Vec<PathBuf>,
    /// Seconds a file must be quiet after its last write before it is captured.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    settle: f64,
    /// Capture what is in the directory now, then exit (for cron or a one-off sweep).
    #[arg(long)]
    once: bool,
}

/// Runs `ckvault watch`.
pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
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
            kind: "watch".into(),
            path: None,
        },
    );
    let recovered = staging::recover(&store, &opts)?;
    for m in &recovered.sealed {
        println!("recovered {} from staging", m.id);
    }
    for (p, e) in &recovered.failed {
        eprintln!("ckvault: cannot seal {} left in staging: {e}", p.display());
    }
    anyhow::ensure!(
        args.settle.is_finite() && args.settle >= 0.0,
        "--settle must be a number of seconds"
    );
    let wopts = watch::WatchOptions {
        dir: args.dir.clone(),
        settle: Duration::from_secs_f64(args.settle),
        once: args.once,
    };
    eprintln!(
        "ckvault: watching {} (store {})",
        args.dir.display(),
        store.root().display()
    );
    let mut failures = 0u32;
    watch::run(&store, &opts, &wopts, &mut |name, outcome| {
        let name = escape_control(name);
        match outcome {
            watch::Outcome::Sealed(m) => println!(
                "sealed {name} as {} ({}, inspection {})",
                m.id,
                m.namespace.as_deref().unwrap_or("?"),
                m.inspection.code.as_deref().unwrap_or("ok")
            ),
            watch::Outcome::Ignored(why) => eprintln!("ckvault: ignoring {name}: {why}"),
            watch::Outcome::Failed(why) => {
                failures += 1;
                eprintln!("ckvault: could not seal {name}: {}", escape_control(why));
            }
            watch::Outcome::NotSettled => {}
        }
    })?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
