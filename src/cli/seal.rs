//! `ckvault seal`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{StoreArg, output};
use crate::fsutil;
use crate::manifest::Source;
use crate::seal::{ClaimedIdentity, SealOptions};
use crate::store::LocalStore;
use crate::vault::intake::{After, Intake};

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
pub fn run(args: SealArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.store.config {
        Some(p) => Some(crate::config::Config::load(p)?),
        None => None,
    };
    let setup = super::common::seal_setup(
        config.as_ref().map_or(&[][..], |c| &c.seal.recipients[..]),
        &args.recipients,
        &args.recipients_file,
        args.policies
            .as_deref()
            .or(config.as_ref().and_then(|c| c.policy.dir.as_deref())),
    )?;
    let policies = setup.policies.clone();
    let file = fsutil::open_regular_nofollow(&args.archive)
        .with_context(|| format!("cannot open {}", args.archive.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let capture = match &config {
        Some(c) => super::common::capture_store(c, None)?,
        None => super::common::CaptureStore {
            store: LocalStore::open_or_init(&args.store.store)?,
            uploader: None,
            spool_max: None,
        },
    };
    let store = capture.store.clone();
    let mut opts = SealOptions::new(
        setup.recipients,
        Source {
            kind: crate::manifest::SourceKind::Cli,
            path: Some(args.archive.display().to_string()),
        },
    );
    opts.claimed = ClaimedIdentity {
        namespace: args.namespace,
        pod: args.pod,
        container: args.container,
    };
    opts.recipient_policy = setup.recipient_policy;
    if let Some(c) = &config {
        opts.node = Some(crate::node::node_name(c));
    }
    opts.spool_max = capture.spool_max;
    opts.zstd_level = args.level;
    if let Some(t) = args.threads {
        opts.zstd_threads = t;
    }
    // As every capturing front-end: retention after a seal into a local store; into a
    // spool, the upload follows below (this one-shot command drains it itself).
    let after = match &capture.uploader {
        Some(_) => After::Upload(None),
        None => After::Retention(policies),
    };
    let intake = Intake::new(store, opts.clone(), after);
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
    if let Some(u) = capture.uploader {
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
