//! Setup shared by the commands: recipients from the config, `-r` and `--recipients-file`,
//! and the policy directory (`seal`, `watch`, `proxy`); the store a `--store DIR` or
//! `--config FILE` names (record commands); the capture store and its uploader when the
//! config names a bucket (`watch`, `proxy`); and `ckvault upload`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::sync::Arc;

use crate::policy::PolicySet;
use crate::policy::recipients::RecipientsPolicy;
use crate::seal::{Recipient, SealError};
use crate::vault::intake::{After, Intake};

/// Who records are sealed to, and the policies that apply after sealing.
pub struct SealSetup {
    /// Fixed recipients (config `[seal] recipients`, `-r`, `--recipients-file`).
    pub recipients: Vec<Recipient>,
    /// The policy directory's policies, if one is configured.
    pub policies: Option<Arc<PolicySet>>,
    /// recipients.toml, which decides instead of `recipients` when present.
    pub recipient_policy: Option<Arc<RecipientsPolicy>>,
}

/// The limits for reading a capture through (inspect --deep, memsearch, diff): the
/// defaults, with an hour to read a responder's multi-GiB archive.
pub fn analysis_limits() -> crate::inspect::Limits {
    crate::inspect::Limits {
        deadline: std::time::Duration::from_secs(3600),
        ..crate::inspect::Limits::default()
    }
}

/// The identities of `-i KEYFILE`, which reading `what` needs (named in the error when no
/// key was given).
pub fn identities(
    key: Option<&PathBuf>,
    what: &str,
) -> anyhow::Result<crate::seal::open::Identities> {
    let key = key.with_context(|| format!("{what}: give your identity with -i KEYFILE"))?;
    Ok(crate::seal::open::Identities::from_file(key)?)
}

/// Loads a policy directory, every problem in one readable error.
pub fn load_policies(dir: &Path) -> anyhow::Result<PolicySet> {
    PolicySet::load_optional(Some(dir))
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no policy directory"))
}

/// Gathers recipients and policies; refuses when nobody could open what is sealed.
pub fn seal_setup(
    configured: &[String],
    flags: &[String],
    files: &[PathBuf],
    policy_dir: Option<&Path>,
) -> anyhow::Result<SealSetup> {
    let mut recipients = Vec::new();
    for r in configured.iter().chain(flags) {
        recipients.push(r.parse::<Recipient>()?);
    }
    for f in files {
        recipients.extend(Recipient::read_file(f)?);
    }
    let policies = match policy_dir {
        Some(dir) => Some(Arc::new(load_policies(dir)?)),
        None => None,
    };
    let recipient_policy = policies
        .as_ref()
        .and_then(|p| p.recipients.clone())
        .map(Arc::new);
    if recipients.is_empty() && recipient_policy.is_none() {
        return Err(SealError::NoRecipients.into());
    }
    Ok(SealSetup {
        recipients,
        policies,
        recipient_policy,
    })
}

/// A store opened by a record command, with the runtime its async calls run on.
pub struct Opened {
    /// The store.
    pub store: crate::store::Store,
    /// The runtime.
    pub rt: tokio::runtime::Runtime,
    /// With a bucket: the node name under which this command's audit events are shipped.
    pub ship_as: Option<String>,
}

impl Opened {
    /// Ships this command's audit events to the bucket (no-op for a local store).
    pub fn ship_audit(&self) -> anyhow::Result<()> {
        if let (crate::store::Store::Bucket(b), Some(node)) = (&self.store, &self.ship_as) {
            self.rt.block_on(async {
                b.s3.publish_key(node, &b.spool.verifying_key()?).await?;
                crate::store::s3::ship::ship(&b.s3, &b.spool, node).await
            })?;
        }
        Ok(())
    }
}

/// Opens the store of `--store DIR` or `--config FILE`. A bucket's index is filled first
/// when `index` is set (listing).
pub fn open_store(arg: &super::StoreArg, index: bool) -> anyhow::Result<Opened> {
    use crate::store::{Store, s3};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = match &arg.config {
        Some(p) => crate::config::Config::load(p)?,
        None => {
            return Ok(Opened {
                store: Store::Local(crate::store::LocalStore::open(&arg.store)?),
                rt,
                ship_as: None,
            });
        }
    };
    if config.store.kind == crate::config::StoreKind::Local {
        return Ok(Opened {
            store: Store::Local(
                crate::store::LocalStore::open(&config.store.path)?
                    .with_audit_path(config.audit.path.clone()),
            ),
            rt,
            ship_as: None,
        });
    }
    let spool = crate::store::LocalStore::open_or_init(&config.store.spool)?
        .with_audit_path(config.audit.path.clone());
    let s3 = s3::S3Store::new(&config.store)?.with_key_memory(spool.known_keys_dir());
    rt.block_on(s3.check())?;
    let bucket = crate::store::backend::Bucket {
        index: s3::index::Index::new(s3.clone()),
        s3,
        spool,
    };
    if index {
        rt.block_on(bucket.index.refresh())?;
    }
    Ok(Opened {
        store: Store::Bucket(Arc::new(bucket)),
        rt,
        ship_as: Some(crate::node::node_name(&config)),
    })
}

/// Where a capturing command (`watch`, `proxy`) seals, and what uploads from there.
pub struct CaptureStore {
    /// The local store, or the spool with a bucket.
    pub store: crate::store::LocalStore,
    /// With a bucket: the uploader of the spool.
    pub uploader: Option<crate::store::s3::upload::Uploader>,
    /// With a bucket: the spool's byte limit.
    pub spool_max: Option<u64>,
}

/// Opens the capture store of `config` (`dir` overrides `[store] path`, local only).
pub fn capture_store(
    config: &crate::config::Config,
    dir: Option<PathBuf>,
) -> anyhow::Result<CaptureStore> {
    use crate::config::StoreKind;
    match config.store.kind {
        StoreKind::Local => Ok(CaptureStore {
            store: crate::store::LocalStore::open_or_init(
                &dir.unwrap_or_else(|| config.store.path.clone()),
            )?
            .with_audit_path(config.audit.path.clone())
            .with_staging(config.cri.staging.clone()),
            uploader: None,
            spool_max: None,
        }),
        StoreKind::S3 => {
            anyhow::ensure!(
                dir.is_none(),
                "--store does not apply with [store] kind = \"s3\" (the spool is [store] spool)"
            );
            let spool = crate::store::LocalStore::open_or_init(&config.store.spool)?
                .with_audit_path(config.audit.path.clone())
                .with_staging(config.cri.staging.clone());
            let uploader = crate::store::s3::upload::Uploader::new(config, spool.clone())?;
            Ok(CaptureStore {
                store: spool,
                uploader: Some(uploader),
                spool_max: crate::units::parse_size(&config.store.spool_max),
            })
        }
    }
}

/// Everything a capturing command (`watch`, `proxy`) needs before it starts: where and
/// how it seals and what follows a seal ([`Intake`]), and the uploader of a spool.
pub struct Capture {
    /// Sealing, then upload (bucket) or retention (local store).
    pub intake: Intake,
    /// With a bucket: the uploader of the spool (whose waker the intake rings).
    pub uploader: Option<crate::store::s3::upload::Uploader>,
}

/// The options every capturing command (`watch`, `proxy`) takes.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
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
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        Ok(match &self.config {
            Some(p) => crate::config::Config::load(p)?,
            None => crate::config::Config::embedded(),
        })
    }
}

/// Sets up capture for `source_kind` (watch, CRI proxy), then seals what an earlier
/// run left in staging (recovered, never dropped).
pub fn capture_setup(
    config: &crate::config::Config,
    args: &CaptureArgs,
    source_kind: crate::manifest::SourceKind,
) -> anyhow::Result<Capture> {
    let setup = seal_setup(
        &config.seal.recipients,
        &args.recipients,
        &args.recipients_file,
        config.policy.dir.as_deref(),
    )?;
    let cs = capture_store(config, args.store.clone())?;
    let mut opts = crate::seal::SealOptions::new(
        setup.recipients,
        crate::manifest::Source {
            kind: source_kind,
            path: None,
        },
    );
    opts.recipient_policy = setup.recipient_policy;
    opts.node = Some(crate::node::node_name(config));
    opts.spool_max = cs.spool_max;
    // With a bucket the spool's uploader takes each record; retention is the servers'.
    let after = match &cs.uploader {
        Some(u) => After::Upload(Some(u.waker())),
        None => After::Retention(setup.policies),
    };
    let intake = Intake::new(cs.store, opts, after);
    let recovered = crate::capture::staging::recover(&intake)?;
    for m in &recovered.sealed {
        println!("recovered {} from staging", m.id);
    }
    if recovered.abandoned > 0 {
        eprintln!(
            "ckvault: {} capture(s) in staging had left nothing to seal (audited as capture-abandoned)",
            recovered.abandoned
        );
    }
    for (p, e) in &recovered.failed {
        eprintln!("ckvault: cannot seal {} left in staging: {e}", p.display());
    }
    Ok(Capture {
        intake,
        uploader: cs.uploader,
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
pub fn upload(args: UploadArgs) -> anyhow::Result<std::process::ExitCode> {
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
    let cs = capture_store(&config, None)?;
    let Some(uploader) = cs.uploader else {
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
        cs.store.root().display()
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
