//! `ckvault ls`, `show`, `export` and `verify`: reading records out of a store.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{Format, StoreArg, output};
use crate::audit::{Action, Actor, EventInput, Outcome};
use crate::fsutil;
use crate::inspect::escape_control;
use crate::manifest::{Manifest, RecordId, VerifyingKey};
use crate::seal::digest::HashingReader;
use crate::seal::open::{OpenError, copy_sealed_to_file};
use crate::vault::query::RecordQuery;

/// Arguments of `ckvault ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only records captured for this cause (the manifest's `trigger.kind`: alertmanager,
    /// falco, webhook, schedule, threshold, before-stop, kubelet, manual).
    #[arg(long, value_name = "KIND")]
    trigger: Option<String>,
}

/// Arguments of `ckvault show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Record ID (from `ckvault ls`).
    id: RecordId,
    #[command(flatten)]
    store: StoreArg,
}

/// Arguments of `ckvault export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Record ID.
    id: RecordId,
    #[command(flatten)]
    store: StoreArg,
    /// Where to write the sealed blob (must not exist). The manifest goes to
    /// FILE.manifest.json beside it.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Do not write FILE.manifest.json.
    #[arg(long)]
    no_manifest: bool,
}

/// Arguments of `ckvault verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Record ID to verify (or use --all, or --manifest with --blob).
    id: Option<RecordId>,
    #[command(flatten)]
    store: StoreArg,
    /// Verify every record of the store.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// Verify with this public key (SPKI PEM) instead of the store's keys/signing.pub;
    /// use a copy obtained out of band to detect a replaced store key.
    #[arg(long, value_name = "PEM")]
    public_key: Option<PathBuf>,
    /// Verify an exported manifest (with --blob and --public-key) instead of a store record.
    #[arg(long, value_name = "FILE", requires_all = ["blob", "public_key"], conflicts_with_all = ["id", "all"])]
    manifest: Option<PathBuf>,
    /// The exported blob the manifest describes.
    #[arg(long, value_name = "FILE", requires = "manifest")]
    blob: Option<PathBuf>,
}

/// Runs `ckvault ls`.
pub(super) fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let opened = super::common::open_store(&args.store, true)?;
    let (manifests, broken) = match &opened.store {
        crate::store::Store::Local(l) => {
            let (m, b) = l.list()?;
            (m.into_iter().map(std::sync::Arc::new).collect(), b)
        }
        store => (opened.rt.block_on(store.list())?, Vec::new()),
    };
    for e in &broken {
        eprintln!("ckvault: warning: {e}");
    }
    let query = RecordQuery {
        trigger: args.trigger.clone(),
        ..RecordQuery::default()
    };
    let manifests: Vec<std::sync::Arc<Manifest>> =
        manifests.into_iter().filter(|m| query.matches(m)).collect();
    match args.format {
        Format::Json => {
            output::print_json(&manifests.iter().map(|m| &**m).collect::<Vec<&Manifest>>())?
        }
        Format::Table => {
            println!(
                "{:<26}  {:<20}  {:<40}  {:>10}  {:>10}  {:<12}  INSPECTION",
                "ID", "SEALED", "NAMESPACE/POD/CONTAINER", "SIZE", "SEALED", "TRIGGER"
            );
            for m in &manifests {
                let who = format!(
                    "{}/{}/{}",
                    m.namespace.as_deref().unwrap_or("?"),
                    m.pod.as_deref().unwrap_or("?"),
                    m.container.as_deref().unwrap_or("?")
                );
                let status = match &m.inspection.code {
                    Some(code) => format!("rejected ({code})"),
                    None => "ok".to_owned(),
                };
                let trigger = m.trigger.as_ref().map_or("-", |t| t.kind.as_str());
                println!(
                    "{:<26}  {:<20}  {:<40}  {:>10}  {:>10}  {:<12}  {}",
                    m.id,
                    escape_control(m.sealed_at.get(..19).unwrap_or(&m.sealed_at)),
                    escape_control(&who),
                    output::human_bytes(m.plaintext.size),
                    output::human_bytes(m.sealed.size),
                    escape_control(trigger),
                    escape_control(&status)
                );
            }
        }
    }
    Ok(if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `ckvault show`.
pub(super) fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let opened = super::common::open_store(&args.store, false)?;
    let manifest = opened.rt.block_on(opened.store.manifest(&args.id))?;
    output::print_json(&manifest)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `ckvault export`.
pub(super) fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open_local("export")?;
    let manifest = store.manifest(&args.id)?; // signature checked
    store.audit_log()?.append(
        EventInput::new(
            &Actor::named(crate::node::local_actor()),
            Action::Export,
            Outcome::Ok,
        )
        .about(&manifest)
        .with_detail(format!("to {}", args.output.display())),
    )?;
    let blob = store.open_blob(&args.id)?;
    let blob_len = blob
        .metadata()
        .with_context(|| format!("cannot read the blob of {}", args.id))?
        .len();
    let out = &args.output;
    let bar = output::progress(manifest.sealed.size, "exporting");
    copy_sealed_to_file(bar.wrap_read(blob), blob_len, &manifest, out).map_err(|e| match e {
        OpenError::BlobSize { .. } | OpenError::SealedMismatch { .. } => anyhow::anyhow!(
            "the stored blob of {} does not match its manifest: {e}; the store is damaged or was tampered with; nothing exported",
            args.id
        ),
        e => e.into(),
    })?;
    bar.finish_and_clear();
    if !args.no_manifest {
        let mpath = manifest_path_for(out);
        let mut mtmp = fsutil::NewFile::create(&mpath)
            .with_context(|| format!("cannot write {}", mpath.display()))?;
        io::Write::write_all(mtmp.file()?, &manifest.to_json_pretty()?)?;
        mtmp.commit(&mpath)?;
        eprintln!("exported {} and {}", out.display(), mpath.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `export` puts the manifest for a blob written to `blob`.
pub(super) fn manifest_path_for(blob: &Path) -> PathBuf {
    crate::manifest::path_beside(blob)
}

/// Runs `ckvault verify`.
pub(super) fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key_from = |path: &Path| -> anyhow::Result<VerifyingKey> {
        let mut pem = String::new();
        fsutil::open_regular(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(64 << 10)
            .read_to_string(&mut pem)?;
        Ok(VerifyingKey::from_pem(&pem, path)?)
    };
    if let (Some(mpath), Some(bpath), Some(kpath)) = (&args.manifest, &args.blob, &args.public_key)
    {
        let mut bytes = Vec::new();
        fsutil::open_regular(mpath)
            .with_context(|| format!("cannot open {}", mpath.display()))?
            .take(crate::manifest::MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        let manifest = Manifest::from_json(&bytes)?;
        let blob = fsutil::open_regular_nofollow(bpath)
            .with_context(|| format!("cannot open {}", bpath.display()))?;
        check(&manifest, blob, &key_from(kpath)?)?;
        println!(
            "OK {} (signature and sealed sha256 {})",
            manifest.id, manifest.sealed.sha256
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = args.store.open_local("verify")?;
    // With --public-key, that key only; otherwise the store's key the manifest names, the
    // current one or one `key rotate` retired (what it signed keeps verifying).
    let given = args.public_key.as_deref().map(key_from).transpose()?;
    let key_for = |m: &Manifest| -> anyhow::Result<VerifyingKey> {
        if let Some(k) = &given {
            return Ok(k.clone());
        }
        let Some(id) = m.signature.as_ref().map(|s| s.key_id.as_str()) else {
            return Ok(store.verifying_key()?); // unsigned: `check` says so
        };
        store.key_by_id(id)?.ok_or_else(|| {
            let mut shown = id.to_owned();
            crate::vocab::cut_to(&mut shown, 80);
            anyhow::anyhow!(
                "it is signed with key {}, which is neither this store's key nor one it retired \
                 (signed by another vault? verify it with --public-key KEY.pem)",
                crate::inspect::escape_control(&shown)
            )
        })
    };
    let ids = match (&args.id, args.all) {
        (Some(id), _) => vec![id.clone()],
        (None, true) => store.ids()?,
        (None, false) => bail!("name a record ID, or pass --all"),
    };
    let mut failed = 0usize;
    for id in &ids {
        // Unverified read: `check` verifies with `key` (maybe --public-key) and says which
        // check failed.
        let result = store
            .manifest_unverified(id)
            .map_err(anyhow::Error::from)
            .and_then(|m| check(&m, store.open_blob(id)?, &key_for(&m)?).map(|()| m));
        match result {
            Ok(m) => println!("OK {id} (signature and sealed sha256 {})", m.sealed.sha256),
            Err(e) => {
                failed += 1;
                println!("FAILED {id}: {}", escape_control(&output::error_text(&e)));
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "ckvault: {failed} of {} records failed verification",
            ids.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(manifest: &Manifest, blob: File, key: &VerifyingKey) -> anyhow::Result<()> {
    key.verify(manifest)?;
    let mut hashing = HashingReader::new(blob);
    io::copy(&mut hashing, &mut io::sink())?;
    let digest = hashing.finish();
    if digest.sha256 != manifest.sealed.sha256 || digest.size != manifest.sealed.size {
        bail!(
            "blob sha256 {} ({} bytes) does not match the manifest's {} ({} bytes)",
            digest.sha256,
            digest.size,
            manifest.sealed.sha256,
            manifest.sealed.size
        );
    }
    Ok(())
}
