//! `ckvault key rotate`: a node replaces its signing key in a shared bucket, as an
//! explicit, audited step. The old key signs the hand-over to the new one
//! ([`crate::store::s3::keys::Rotation`]), so readers without pins accept the new key for
//! this node name and no other key can join it; the old public key stays valid for what it
//! signed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::StoreArg;
use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::manifest::SigningKey;
use crate::node::local_actor;
use crate::store::Store;
use crate::store::s3::keys::Rotation;

/// `ckvault key ...`
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Replace this node's signing key in the bucket (`[store] kind = "s3"`): the old key
    /// signs the hand-over (keys/NODE/NEWKEYID.rotation.json), the step is audited
    /// (`key-rotate`), the old private key is overwritten and its public key kept in the
    /// spool's keys/retired/. Stop the node's watch/proxy first, start them after.
    Rotate(RotateArgs),
}

/// Arguments of `ckvault key rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The node's configuration file (its `[store]` bucket and spool, its `[node] name`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Why (schedule, ticket, suspected exposure): recorded in the statement and the audit log.
    #[arg(long)]
    reason: String,
}

/// Runs `ckvault key ...`.
pub(super) fn run(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Rotate(args) => rotate(args),
    }
}

fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(&args.config)?;
    anyhow::ensure!(
        config.store.kind == crate::config::StoreKind::S3,
        "`ckvault key rotate` replaces a node's key in a shared bucket ([store] kind = \"s3\"); \
         a local store verifies its records with its own key"
    );
    let pinned = config.store.trusted_keys.clone();
    let opened = super::common::open_store(
        &StoreArg {
            store: PathBuf::new(),
            config: Some(args.config.clone()),
        },
        false,
    )?;
    let (Store::Bucket(b), Some(node)) = (&opened.store, opened.ship_as.clone()) else {
        anyhow::bail!("{} does not name a bucket", args.config.display());
    };
    let old = b.spool.signing_key()?;
    let old_id = old.verifying_key().key_id();
    // The hand-over counts only if the old key is this name's key now.
    opened.rt.block_on(async {
        b.s3.publish_key(&node, &old.verifying_key()).await?;
        b.s3.check_own_key(&node, &old.verifying_key()).await
    })?;
    let new = SigningKey::generate()?;
    let new_id = new.verifying_key().key_id();
    let actor = local_actor();
    let rotation = Rotation::new(&node, &old, &new, &actor, &args.reason)?;
    let audit = b.spool.audit_log()?;
    let event = |outcome: Outcome, detail: String| {
        EventInput::new(&Actor::named(actor.clone()), Action::KeyRotate, outcome)
            .with_purpose(args.reason.clone())
            .with_detail(detail)
    };
    if let Err(e) = opened
        .rt
        .block_on(b.s3.publish_rotation(&rotation, &new.verifying_key()))
    {
        audit.append(event(
            Outcome::Error,
            format!("node {node}: {old_id} -> {new_id}: {e}"),
        ))?;
        return Err(e).context("publishing the rotation; the old key stays in use");
    }
    // Recorded before the key changes: without the record, the old key stays in use (the
    // statement in the bucket then names a key nobody holds, which signs nothing).
    audit
        .append(event(
            Outcome::Ok,
            format!("node {node}: {old_id} -> {new_id}"),
        ))
        .context(
            "the rotation is in the bucket but could not be audited; the old key stays in use",
        )?;
    drop(audit);
    b.spool.replace_signing_key(&new)?;
    opened.ship_audit()?;
    println!("rotated the key of node {node}: {old_id} -> {new_id}");
    println!(
        "  statement: keys/{node}/ in s3://{}, signed by both keys; audited as key-rotate",
        b.s3.bucket()
    );
    println!(
        "  the old public key stays valid for what it signed ({})",
        b.spool.root().join("keys/retired").display()
    );
    match pinned {
        Some(dir) => println!(
            "  readers that pin keys trust the new one only once pinned: copy {} to {}/{node}/ on each",
            b.spool.public_key_path().display(),
            dir.display()
        ),
        None => println!("  readers without pins accept it through the statement"),
    }
    println!("  restart this node's watch/proxy so they sign with the new key");
    Ok(ExitCode::SUCCESS)
}
