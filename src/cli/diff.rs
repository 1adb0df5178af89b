//! `ckvault diff A B`: two checkpoints of one container side by side (identity, processes,
//! environment names, memory sizes, files, sockets, mounts, root filesystem changes). Each
//! side is an archive file, a record of --store/--config (decrypted in memory, an audited
//! read) or a sealed record file fetched from a server. The comparison is `inspect::diff`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::fsutil;
use crate::inspect::diff::{self, Side};
use crate::inspect::{self, Limits};
use crate::manifest::RecordId;

/// Arguments of `ckvault diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The earlier capture: an archive file, a record ID of --store/--config, or a sealed
    /// record file as `ckvault fetch` writes it.
    pub a: String,
    /// The later capture (the same kinds).
    pub b: String,
    #[command(flatten)]
    store: StoreArg,
    /// Your age identity file or unencrypted SSH private key (for records).
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Why you read these records (recorded in the audit log).
    #[arg(long)]
    purpose: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn manifest_identity(m: &crate::manifest::Manifest) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("namespace", m.namespace.clone()),
        ("pod", m.pod.clone()),
        ("container", m.container.clone()),
        ("container_id", m.container_id.clone()),
        ("image", m.image.clone()),
        ("engine", m.engine.clone()),
        ("runtime", m.runtime.clone()),
        ("checkpointed_at", m.checkpointed_at.clone()),
    ]
}

fn load(arg: &str, args: &DiffArgs) -> anyhow::Result<Side> {
    let path = Path::new(arg);
    if !path.exists()
        && let Ok(id) = arg.parse::<RecordId>()
    {
        let identities =
            super::common::identities(args.identity.as_ref(), "a record is encrypted")?;
        let opened = super::common::open_store(&args.store, false)?;
        let who = crate::vault::analyse::Reader {
            actor: crate::node::local_actor(),
            purpose: args.purpose.clone(),
        };
        let (m, view) = crate::vault::analyse::deep_record(
            &opened.rt,
            &opened.store,
            &id,
            identities,
            &super::common::analysis_limits(),
            &who,
        )?;
        opened.ship_audit()?;
        let identity = manifest_identity(&m);
        return Ok(Side {
            source: m.id.to_string(),
            identity,
            view,
        });
    }
    if let Some((m, blob)) = crate::vault::analyse::sealed_file(path)
        .with_context(|| format!("cannot open {}", path.display()))?
    {
        let identities = super::common::identities(args.identity.as_ref(), "a sealed record file")?;
        let view = crate::vault::analyse::deep_sealed(
            &m,
            blob,
            identities,
            &super::common::analysis_limits(),
        )?;
        return Ok(Side {
            source: path.display().to_string(),
            identity: manifest_identity(&m),
            view,
        });
    }
    let file = fsutil::open_regular_nofollow(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let found = inspect::inspect_seekable(&file, &Limits::default())
        .with_context(|| format!("{}: archive rejected", path.display()))?;
    use std::io::Seek;
    let mut f = &file;
    f.seek(std::io::SeekFrom::Start(0))?;
    let view = inspect::deep_seekable(f, &super::common::analysis_limits())
        .with_context(|| format!("{}: archive rejected", path.display()))?;
    Ok(Side {
        source: path.display().to_string(),
        identity: diff::identity_fields(&found.identity),
        view,
    })
}

/// Runs `ckvault diff`.
pub(super) fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let a = load(&args.a, &args)?;
    let b = load(&args.b, &args)?;
    let doc = diff::compare(&a, &b);
    match args.format {
        Format::Json => output::print_json(&doc)?,
        Format::Table => print!("{}", diff::render_table(&doc)),
    }
    Ok(ExitCode::SUCCESS)
}
