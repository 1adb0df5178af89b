//! `ckvault open`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{output, records::manifest_path_for};
use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::fsutil;
use crate::manifest::{Manifest, RecordId};
use crate::seal::open::{Identities, open_to_file};

/// Arguments of `ckvault open`.
#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    /// A record ID (of the store of --store or --config, default ./ckvault-data) or an
    /// exported or fetched blob file (its manifest is read from FILE.manifest.json, or
    /// --manifest).
    pub target: String,
    #[command(flatten)]
    store: super::StoreArg,
    /// Your age identity file (age-keygen) or unencrypted SSH private key.
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    identity: PathBuf,
    /// The manifest of an exported blob, if not at FILE.manifest.json.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Where to write the original archive (must not exist).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    trust: super::trust::TrustArgs,
}

/// Runs `ckvault open`.
pub(super) fn run(args: OpenArgs) -> anyhow::Result<ExitCode> {
    let identities = Identities::from_file(&args.identity)?;
    let as_file = PathBuf::from(&args.target);
    // A record ID names a record of the store, unless a file of that name is here.
    let record = args
        .target
        .parse::<RecordId>()
        .ok()
        .filter(|_| !as_file.is_file());
    let (manifest, blob) = if let Some(id) = record {
        let store = args.store.open_local("open")?;
        let manifest = store.manifest(&id)?; // signature checked
        store.audit_log()?.append(
            EventInput::new(
                &Actor::named(crate::node::local_actor()),
                Action::Open,
                Outcome::Ok,
            )
            .about(&manifest)
            .with_detail(format!("to {}", args.output.display())),
        )?;
        (manifest, store.open_blob(&id)?)
    } else if as_file.is_file() {
        let mpath = args
            .manifest
            .clone()
            .unwrap_or_else(|| manifest_path_for(&as_file));
        let mut bytes = Vec::new();
        fsutil::open_regular(&mpath)
            .with_context(|| {
                format!(
                    "cannot read the manifest {} (needed to verify what is opened; pass --manifest)",
                    mpath.display()
                )
            })?
            .take(crate::manifest::MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        let manifest = Manifest::from_json(&bytes)?;
        args.trust.verify_file_manifest(&manifest, &mpath)?;
        let blob = fsutil::open_regular_nofollow(&as_file)
            .with_context(|| format!("cannot open {}", as_file.display()))?;
        (manifest, blob)
    } else {
        bail!(
            "{:?} is neither a record ID nor a readable file; give a record ID (see `ckvault ls`) or the path of a sealed file",
            args.target
        );
    };
    let blob_len = blob
        .metadata()
        .with_context(|| format!("cannot read the blob of {}", manifest.id))?
        .len();
    let bar = output::progress(manifest.sealed.size, "opening");
    let digest = open_to_file(
        bar.wrap_read(blob),
        blob_len,
        &manifest,
        &identities,
        &args.output,
    )?;
    bar.finish_and_clear();
    eprintln!(
        "opened {} -> {} ({} bytes, sha256 {} verified)",
        manifest.id,
        args.output.display(),
        digest.size,
        digest.sha256
    );
    Ok(ExitCode::SUCCESS)
}
