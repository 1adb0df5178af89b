//! `ckvault hold`, `release`, `delete` and `retention plan|apply`: changing what a store
//! keeps, local or bucket. Every change is recorded in the store's audit log before it is
//! made. Hold, release and delete go through [`crate::vault::Custody`], as the API's do;
//! retention through [`crate::policy::enforce`], as the server's timer does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::audit::Actor;
use crate::manifest::RecordId;
use crate::node::local_actor;
use crate::policy::enforce;
use crate::vault::Custody;
use crate::wiring::load_policies;

/// Arguments of `ckvault hold` / `ckvault release`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Record ID.
    id: RecordId,
    #[command(flatten)]
    store: StoreArg,
    /// Why (case number, ticket): recorded with the hold and in the audit log.
    #[arg(long)]
    reason: String,
}

/// Arguments of `ckvault delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Record ID.
    id: RecordId,
    #[command(flatten)]
    store: StoreArg,
    /// Why: recorded in the audit log.
    #[arg(long)]
    reason: String,
    /// Policy directory, so selector holds (holds.toml) are honoured.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
}

/// `ckvault retention ...`
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Print what retention would delete and why (rule, record, age, size); deletes nothing.
    Plan(RetentionArgs),
    /// Delete what `plan` prints, oldest first, each deletion audited.
    Apply(RetentionArgs),
}

/// Arguments of `ckvault retention plan|apply`.
#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Policy directory (retention.toml, holds.toml).
    #[arg(long, value_name = "DIR")]
    policies: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Custody of the opened store, acting as this command's user.
fn custody(opened: &super::common::Opened) -> anyhow::Result<(Custody, Actor)> {
    let audit = std::sync::Arc::new(opened.store.local().audit_log()?);
    let who = Actor::named(local_actor());
    Ok((Custody::new(opened.store.clone(), audit), who))
}

/// Runs `ckvault hold`.
pub(super) fn hold(args: HoldArgs) -> anyhow::Result<ExitCode> {
    let opened = super::common::open_store(&args.store, false)?;
    let m = opened.rt.block_on(opened.store.manifest(&args.id))?;
    let (custody, who) = custody(&opened)?;
    let result = opened.rt.block_on(custody.hold(&who, &m, &args.reason));
    opened.ship_audit()?;
    result?;
    println!("held {} ({})", args.id, args.reason);
    Ok(ExitCode::SUCCESS)
}

/// Runs `ckvault release`.
pub(super) fn release(args: HoldArgs) -> anyhow::Result<ExitCode> {
    let opened = super::common::open_store(&args.store, false)?;
    let m = opened.rt.block_on(opened.store.manifest(&args.id))?;
    let (custody, who) = custody(&opened)?;
    let result = opened.rt.block_on(custody.release(&who, &m, &args.reason));
    opened.ship_audit()?;
    result?;
    println!("released {} ({})", args.id, args.reason);
    Ok(ExitCode::SUCCESS)
}

/// Runs `ckvault delete`.
pub(super) fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let opened = super::common::open_store(&args.store, false)?;
    let m = opened.rt.block_on(opened.store.manifest(&args.id))?;
    let set = match &args.policies {
        Some(dir) => Some(load_policies(dir)?),
        None => None,
    };
    let (custody, who) = custody(&opened)?;
    let result =
        opened
            .rt
            .block_on(custody.delete(&who, &m, set.as_ref(), Some(args.reason.as_str())));
    opened.ship_audit()?;
    result?;
    println!("deleted {}", args.id);
    Ok(ExitCode::SUCCESS)
}

/// Runs `ckvault retention plan|apply`.
pub(super) fn retention(cmd: RetentionCommand) -> anyhow::Result<ExitCode> {
    let (args, apply) = match cmd {
        RetentionCommand::Plan(a) => (a, false),
        RetentionCommand::Apply(a) => (a, true),
    };
    let set = load_policies(&args.policies)?;
    let opened = super::common::open_store(&args.store, true)?;
    let now = enforce::now_unix();
    let store = &opened.store;
    let deletions = if apply {
        // With a bucket, only one process applies retention at a time (servers take the
        // same lease on their timer).
        if let crate::store::Store::Bucket(b) = store {
            let holder = format!("{}:{}", local_actor(), std::process::id());
            let lease = crate::store::s3::lease::Lease::retention(
                b.s3.clone(),
                holder,
                crate::serve::RETENTION_INTERVAL * 3,
            );
            anyhow::ensure!(
                opened.rt.block_on(lease.acquire())?,
                "another replica or command is applying retention to s3://{} now; try again in a few minutes",
                b.s3.bucket()
            );
        }
        let audit = store.local().audit_log()?;
        let result = opened.rt.block_on(enforce::apply_store(
            store,
            &audit,
            &set,
            now,
            None,
            &local_actor(),
        ));
        opened.ship_audit()?;
        result.context("applying retention")?
    } else {
        opened
            .rt
            .block_on(enforce::plan_store(store, &set, now, None))?
    };
    match args.format {
        Format::Json => output::print_json(&deletions)?,
        Format::Table => {
            let verb = if apply { "deleted" } else { "would delete" };
            for d in &deletions {
                println!(
                    "{verb} {}  rule {:<20} {:<16} age {:>8}  {}",
                    d.id,
                    d.rule,
                    d.reason,
                    human_age(d.age_secs),
                    output::human_bytes(d.size)
                );
            }
            println!("{} record(s) {verb}", deletions.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
