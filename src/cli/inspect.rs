//! `ckvault inspect`: describe an archive without unpacking it; with `--deep`, the deep view
//! (per process command line, environment, files, sockets, memory; mounts, annotations,
//! dump statistics, root filesystem changes), for an archive or a sealed record (decrypted
//! in memory, audited).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::fsutil;
use crate::inspect::deep::DeepView;
use crate::inspect::{self, Limits};
use crate::manifest::{Manifest, RecordId};

/// Arguments of `ckvault inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The checkpoint archive (.tar, .tar.gz or .tar.zst; never unpacked), or with --deep
    /// a record ID of --store/--config or a sealed record file as `ckvault fetch` writes it
    /// (its manifest beside it).
    pub archive: String,
    /// Also show each process's command line, environment, open files, sockets and memory
    /// size, and the container's mounts, annotations, dump statistics and file changes.
    #[arg(long)]
    deep: bool,
    /// Show environment values (they hold secrets: `<redacted>` by default).
    #[arg(long, requires = "deep")]
    show_env_values: bool,
    #[command(flatten)]
    store: StoreArg,
    /// Your age identity file or unencrypted SSH private key (for a record).
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Why you read this record (recorded in the audit log).
    #[arg(long)]
    purpose: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// The deep JSON: `inspection` (what `inspect` shows) next to the deep view's fields.
fn deep_document(
    head: serde_json::Map<String, serde_json::Value>,
    view: &DeepView,
    show_values: bool,
) -> serde_json::Value {
    let mut out = head;
    if let serde_json::Value::Object(deep) = view.to_json(show_values) {
        out.extend(deep);
    }
    out.into()
}

/// Prints the deep view of a record (of a store, or a fetched sealed file).
fn print_record(args: &InspectArgs, m: &Manifest, deep: &DeepView) -> anyhow::Result<()> {
    match args.format {
        Format::Json => {
            let head = serde_json::json!({
                "record": m.id.to_string(),
                "namespace": m.namespace,
                "pod": m.pod,
                "container": m.container,
                "inspection": m.inspection,
            });
            let head = head.as_object().cloned().unwrap_or_default();
            output::print_json(&deep_document(head, deep, args.show_env_values))?
        }
        Format::Table => {
            let who = format!(
                "{}/{}/{}",
                m.namespace.as_deref().unwrap_or("?"),
                m.pod.as_deref().unwrap_or("?"),
                m.container.as_deref().unwrap_or("?")
            );
            println!("record {} ({})", m.id, inspect::escape_control(&who));
            print!("{}", deep.render_table(args.show_env_values));
        }
    }
    Ok(())
}

fn identities(args: &InspectArgs) -> anyhow::Result<crate::seal::open::Identities> {
    super::common::identities(args.identity.as_ref(), "a record is encrypted")
}

/// Runs `ckvault inspect`.
pub(super) fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.archive);
    if args.deep
        && !path.exists()
        && let Ok(id) = args.archive.parse::<RecordId>()
    {
        let identities = identities(&args)?;
        let opened = super::common::open_store(&args.store, false)?;
        let who = crate::vault::analyse::Reader {
            actor: crate::node::local_actor(),
            purpose: args.purpose.clone(),
        };
        let (m, deep) = crate::vault::analyse::deep_record(
            &opened.rt,
            &opened.store,
            &id,
            identities,
            &super::common::analysis_limits(),
            &who,
        )?;
        opened.ship_audit()?;
        print_record(&args, &m, &deep)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.deep
        && let Some((m, blob)) = crate::vault::analyse::sealed_file(&path)
            .with_context(|| format!("cannot open {}", path.display()))?
    {
        let deep = crate::vault::analyse::deep_sealed(
            &m,
            blob,
            identities(&args)?,
            &super::common::analysis_limits(),
        )?;
        print_record(&args, &m, &deep)?;
        return Ok(ExitCode::SUCCESS);
    }
    let file = fsutil::open_regular_nofollow(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let result = inspect::inspect_seekable(&file, &Limits::default()).and_then(|found| {
        if !args.deep {
            return Ok((found, None));
        }
        let limits = super::common::analysis_limits();
        use std::io::Seek;
        let mut f = &file;
        f.seek(std::io::SeekFrom::Start(0))?;
        Ok((found, Some(inspect::deep_seekable(f, &limits)?)))
    });
    match result {
        Ok((found, deep)) => {
            match args.format {
                Format::Json => match &deep {
                    Some(d) => {
                        let mut head = serde_json::Map::new();
                        head.insert("inspection".into(), serde_json::to_value(&found)?);
                        output::print_json(&deep_document(head, d, args.show_env_values))?
                    }
                    None => output::print_json(&serde_json::to_value(&found)?)?,
                },
                Format::Table => {
                    print!("{}", inspect::render_table(&found));
                    if let Some(d) = &deep {
                        print!("{}", d.render_table(args.show_env_values));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let shown = inspect::escape_control(&e.to_string()).into_owned();
            match args.format {
                Format::Json => output::print_json(&serde_json::json!({
                    "status": "rejected",
                    "code": e.code(),
                    "reason": e.to_string(),
                }))?,
                Format::Table => eprintln!("ckvault: archive rejected ({}): {shown}", e.code()),
            }
            Ok(ExitCode::from(3))
        }
    }
}
