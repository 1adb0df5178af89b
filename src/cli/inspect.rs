//! `ckvault inspect`: describe an archive without unpacking it; with `--deep`, also each
//! process's command line, environment and memory size read from its memory, for an
//! archive or a sealed record (decrypted in memory, audited).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::fsutil;
use crate::inspect::memory::ProcessMemory;
use crate::inspect::{self, Limits};
use crate::manifest::RecordId;

/// Arguments of `ckvault inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The checkpoint archive (.tar, .tar.gz or .tar.zst; never unpacked), or with --deep
    /// a record ID of --store/--config.
    pub archive: String,
    /// Also read each process's command line, environment and memory size from its memory.
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

fn deep_json(
    processes: &std::collections::BTreeMap<u32, ProcessMemory>,
    show_values: bool,
) -> serde_json::Value {
    processes
        .iter()
        .map(|(pid, p)| {
            let env: serde_json::Map<String, serde_json::Value> = p
                .env
                .iter()
                .map(|(k, v)| {
                    let v = if show_values {
                        v.as_str()
                    } else {
                        "<redacted>"
                    };
                    (k.clone(), serde_json::Value::from(v))
                })
                .collect();
            (
                pid.to_string(),
                serde_json::json!({
                    "cmdline": p.cmdline,
                    "env": env,
                    "memory": {"bytes": p.memory_bytes},
                    "truncated": p.truncated,
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn deep_table(processes: &std::collections::BTreeMap<u32, ProcessMemory>, show_values: bool) {
    for (pid, p) in processes {
        let esc = |s: &str| inspect::escape_control(s).into_owned();
        println!(
            "process {pid}: {} bytes of memory{}",
            p.memory_bytes,
            if p.truncated {
                " (areas cut at 1 MiB)"
            } else {
                ""
            }
        );
        println!(
            "  cmdline: {}",
            p.cmdline
                .iter()
                .map(|a| esc(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (k, v) in &p.env {
            let v = if show_values {
                esc(v)
            } else {
                "<redacted>".into()
            };
            println!("  env {}={v}", esc(k));
        }
    }
}

/// Runs `ckvault inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.archive);
    if args.deep
        && !path.exists()
        && let Ok(id) = args.archive.parse::<RecordId>()
    {
        let key = args
            .identity
            .as_ref()
            .context("a record is encrypted: give your identity with -i KEYFILE")?;
        let identities = crate::seal::open::Identities::from_file(key)?;
        let opened = super::common::open_store(&args.store, false)?;
        let who = crate::vault::analyse::Reader {
            actor: crate::node::local_actor(),
            purpose: args.purpose.clone(),
        };
        let limits = Limits {
            deadline: std::time::Duration::from_secs(3600),
            ..Limits::default()
        };
        let (m, deep) = crate::vault::analyse::deep_record(
            &opened.rt,
            &opened.store,
            &id,
            identities,
            &limits,
            &who,
        )?;
        opened.ship_audit()?;
        match args.format {
            Format::Json => output::print_json(&serde_json::json!({
                "record": m.id.to_string(),
                "namespace": m.namespace,
                "pod": m.pod,
                "container": m.container,
                "inspection": m.inspection,
                "processes": deep_json(&deep, args.show_env_values),
            }))?,
            Format::Table => {
                println!(
                    "record {} ({}/{}/{})",
                    m.id,
                    m.namespace.as_deref().unwrap_or("?"),
                    m.pod.as_deref().unwrap_or("?"),
                    m.container.as_deref().unwrap_or("?")
                );
                deep_table(&deep, args.show_env_values);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file = fsutil::open_regular_nofollow(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match inspect::inspect_seekable(&file, &Limits::default()) {
        Ok(found) => {
            let deep = if args.deep {
                let limits = Limits {
                    deadline: std::time::Duration::from_secs(3600),
                    ..Limits::default()
                };
                use std::io::Seek;
                let mut f = &file;
                f.seek(std::io::SeekFrom::Start(0))?;
                Some(inspect::deep_seekable(f, &limits)?)
            } else {
                None
            };
            match args.format {
                Format::Json => {
                    let mut v = serde_json::to_value(&found)?;
                    if let (Some(d), Some(o)) = (&deep, v.as_object_mut()) {
                        o.insert("memory".into(), deep_json(d, args.show_env_values));
                    }
                    output::print_json(&v)?
                }
                Format::Table => {
                    print!("{}", inspect::render_table(&found));
                    if let Some(d) = &deep {
                        deep_table(d, args.show_env_values);
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
