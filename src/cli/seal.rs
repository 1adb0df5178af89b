//! `ckvault seal`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{StoreArg, output};
use crate::fsutil;
use crate::manifest::Source;
use crate::seal::ClaimedIdentity;
use crate::wiring::{Node, Open};

/// Arguments of `ckvault seal`.
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// The checkpoint archive (.tar, .tar.gz or .tar.zst).
    pub archive: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// A recipient: an `age1...` X25519 public key, or an `ssh-ed25519`/`ssh-rsa` public
    /// key line. Repeat for several; anyone holding one matching identity can open it.
    #[arg(long = "recipient", short = 'r', value_name = "R")]
    recipients: Vec<String>,
    /// A file of recipients, one per line (`#` comments allowed), as `age -R` takes.
    #[arg(long, value_name = "F")]
    recipients_file: Vec<PathBuf>,
    /// Namespace the caller vouches for (cross-checked with the archive; a mismatch is flagged).
    #[arg(long)]
    namespace: Option<String>,
    /// Pod name the caller vouches for.
    #[arg(long)]
    pod: Option<String>,
    /// Container name the caller vouches for.
    #[arg(long)]
    container: Option<String>,
    /// zstd level for uncompressed archives: negative levels are zstd's --fast=N (the
    /// default, -1, compresses memory pages within 1% of level 1 in three quarters of the
    /// time; see docs/performance.md), 1..19 the usual levels.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-7..=19))]
    level: i32,
    /// zstd worker threads (default: one per core).
    #[arg(long)]
    threads: Option<u32>,
    /// Policy directory: recipients.toml chooses the recipients by namespace/pod/container
    /// (instead of -r), and retention.toml is applied after sealing.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Remove the archive once it is sealed (the plaintext should not outlive sealing).
    #[arg(long)]
    remove_input: bool,
}

/// Runs `ckvault seal`.
pub(super) fn run(args: SealArgs) -> anyhow::Result<ExitCode> {
    let config = args.store.config()?;
    let setup = super::common::seal_setup(
        &config.seal.recipients,
        &args.recipients,
        &args.recipients_file,
        args.policies.as_deref().or(config.policy.dir.as_deref()),
    )?;
    let file = fsutil::open_regular_nofollow(&args.archive)
        .with_context(|| format!("cannot open {}", args.archive.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let node = Node::build(config, Open::OrCreate)?;
    let intake = node.intake(
        &setup,
        Source {
            kind: crate::manifest::SourceKind::Cli,
            path: Some(args.archive.display().to_string()),
        },
    );
    let mut opts = intake.options().clone();
    opts.claimed = ClaimedIdentity {
        namespace: args.namespace,
        pod: args.pod,
        container: args.container,
    };
    // A seal into `--store DIR` names no node (the manifest has none, as before).
    if args.store.config.is_none() {
        opts.node = None;
    }
    opts.zstd_level = args.level;
    if let Some(t) = args.threads {
        opts.zstd_threads = t;
    }
    let bar = output::progress(len, "sealing");
    let manifest = intake.seal(file, &opts, &|n| bar.set_position(n))?;
    bar.finish_and_clear();
    if args.remove_input {
        std::fs::remove_file(&args.archive).with_context(|| {
            format!(
                "sealed as {}, but cannot remove {}",
                manifest.id,
                args.archive.display()
            )
        })?;
    }
    if let Some(u) = node.uploader().cloned() {
        // Into the bucket now; if it is away, the record waits in the spool (sealed).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match rt.block_on(u.drain()) {
            Err(e) => eprintln!(
                "ckvault: sealed {}, upload pending (it waits in the spool): {e}",
                manifest.id
            ),
            Ok(d) => {
                for (id, why) in &d.stuck {
                    eprintln!("ckvault: record {id} stays in the spool: {why}");
                }
            }
        }
    }
    output::print_json(&manifest)?;
    Ok(ExitCode::SUCCESS)
}
