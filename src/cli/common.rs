//! What the commands share on top of [`crate::wiring`] (which builds the parts): the
//! options of the capturing commands and their setup (`watch`, `proxy`), the store a
//! `--store DIR` or `--config FILE` names (record commands), identities and analysis
//! limits, and `ckvault upload`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::vault::intake::Intake;
pub(super) use crate::wiring::SealSetup;
use crate::wiring::{Node, Open};

/// The limits for reading a capture through (inspect --deep, memsearch, diff): the
/// defaults, with an hour to read a responder's multi-GiB archive.
pub(super) fn analysis_limits() -> crate::inspect::Limits {
    crate::inspect::Limits {
        deadline: std::time::Duration::from_secs(3600),
        ..crate::inspect::Limits::default()
    }
}

/// The identities of `-i KEYFILE`, which reading `what` needs (named in the error when no
/// key was given).
pub(super) fn identities(
    key: Option<&PathBuf>,
    what: &str,
) -> anyhow::Result<crate::seal::open::Identities> {
    let key = key.with_context(|| format!("{what}: give your identity with -i KEYFILE"))?;
    Ok(crate::seal::open::Identities::from_file(key)?)
}

/// Gathers recipients and policies; refuses when nobody could open what is sealed.
pub(super) fn seal_setup(
    configured: &[String],
    flags: &[String],
    files: &[PathBuf],
    policy_dir: Option<&Path>,
) -> anyhow::Result<SealSetup> {
    Ok(SealSetup::gather(configured, flags, files, policy_dir)?.require_recipients()?)
}

/// A store opened by a record command, with the runtime its async calls run on.
pub(super) struct Opened {
    /// The store.
    pub store: crate::store::Store,
    /// The runtime.
    pub rt: tokio::runtime::Runtime,
    /// With a bucket: the node name under which this command's audit events are shipped.
    pub ship_as: Option<String>,
}

impl Opened {
    /// Ships this command's audit events to the bucket (no-op for a local store).
    pub(super) fn ship_audit(&self) -> anyhow::Result<()> {
        if let (crate::store::Store::Bucket(b), Some(node)) = (&self.store, &self.ship_as) {
            self.rt.block_on(async {
                b.s3.publish_key(node, &b.spool.verifying_key()?).await?;
                crate::store::s3::ship::ship(&b.s3, &b.spool, node).await
            })?;
        }
        Ok(())
    }
}

/// Opens the store of `--store DIR` or `--config FILE` (never creating one). A bucket's
/// index is filled first when `index` is set (listing).
pub(super) fn open_store(arg: &super::StoreArg, index: bool) -> anyhow::Result<Opened> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node = Node::build(arg.config()?, Open::Existing)?;
    rt.block_on(node.check_bucket())?;
    if let (true, Some(b)) = (index, node.bucket()) {
        rt.block_on(b.index.refresh())?;
    }
    Ok(Opened {
        store: node.store(),
        ship_as: node.bucket().map(|_| node.name()),
        rt,
    })
}

/// Everything a capturing command (`watch`, `proxy`) needs before it starts: where and
/// how it seals and what follows a seal ([`Intake`]), and the uploader of a spool.
pub(super) struct Capture {
    /// Sealing, then upload (bucket) or retention (local store).
    pub intake: Intake,
    /// With a bucket: the uploader of the spool (whose waker the intake rings).
    pub uploader: Option<crate::store::s3::upload::Uploader>,
    /// Where records are read from (the local store, or the bucket): for holds.
    pub store: crate::store::Store,
}

/// The options every capturing command (`watch`, `proxy`) takes.
#[derive(Debug, clap::Args)]
pub(super) struct CaptureArgs {
    /// Configuration file ([store], [seal] recipients, [policy] dir, and the command's
    /// own section: [watch] or [cri]).
    #[arg(long, short = 'c', value_name = "FILE", env = "CKVAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The store directory (default [store] path).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Recipient (age1... or SSH public key); repeatable.
    #[arg(long = "recipient", short = 'r', value_name = "R")]
    pub recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(long, value_name = "F")]
    pub recipients_file: Vec<PathBuf>,
}

impl CaptureArgs {
    /// The configuration file, or the embedded defaults without one.
    pub(super) fn config(&self) -> anyhow::Result<crate::config::Config> {
        Ok(match &self.config {
            Some(p) => crate::config::Config::load(p)?,
            None => crate::config::Config::embedded(),
        })
    }
}

/// Sets up capture for `source_kind` (watch, CRI proxy), then seals what an earlier
/// run left in staging (recovered, never dropped).
pub(super) fn capture_setup(
    config: &crate::config::Config,
    args: &CaptureArgs,
    source_kind: crate::manifest::SourceKind,
) -> anyhow::Result<Capture> {
    let mut config = config.clone();
    if let Some(dir) = &args.store {
        if config.store.kind == crate::config::StoreKind::S3 {
            return Err(crate::wiring::BuildError::StoreWithBucket.into());
        }
        config.store.path = crate::fsutil::absolute(dir);
    }
    let setup = seal_setup(
        &config.seal.recipients,
        &args.recipients,
        &args.recipients_file,
        config.policy.dir.as_deref(),
    )?;
    let node = Node::build(config, Open::OrCreate)?;
    let intake = node.intake(
        &setup,
        crate::manifest::Source {
            kind: source_kind,
            path: None,
        },
    );
    crate::wiring::recover_staging(&intake)?;
    Ok(Capture {
        intake,
        uploader: node.uploader().cloned(),
        store: node.store(),
    })
}

/// Arguments of `ckvault upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Configuration file with `[store] kind = "s3"`.
    #[arg(long, short = 'c', value_name = "FILE", env = "CKVAULT_CONFIG")]
    config: PathBuf,
    /// Print the background uploader's last status (SPOOL/upload-status.json) instead.
    #[arg(long)]
    status: bool,
}

/// Runs `ckvault upload`.
pub(super) fn upload(args: UploadArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = crate::config::Config::load(&args.config)?;
    anyhow::ensure!(
        config.store.kind == crate::config::StoreKind::S3,
        "{} has no [store] kind = \"s3\": there is nothing to upload to",
        args.config.display()
    );
    if args.status {
        let spool = crate::store::LocalStore::open(&config.store.spool)?;
        let status = crate::store::s3::upload::Status::read(&spool)?;
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let node = Node::build(config, Open::OrCreate)?;
    let Some(uploader) = node.uploader().cloned() else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let d = rt.block_on(uploader.drain()).map_err(|e| match e {
        crate::store::StoreError::Unreachable { .. } => {
            anyhow::anyhow!("{e}; the sealed records wait in the spool")
        }
        e => e.into(),
    })?;
    println!(
        "uploaded {} record(s) from {}",
        d.uploaded,
        node.local().root().display()
    );
    if d.stuck.is_empty() {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    for (id, why) in &d.stuck {
        eprintln!("ckvault: record {id} stays in the spool: {why}");
    }
    eprintln!(
        "ckvault: {} record(s) stuck; the others went up",
        d.stuck.len()
    );
    Ok(std::process::ExitCode::FAILURE)
}
