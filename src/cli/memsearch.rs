//! `ckvault memsearch`: search a checkpoint's memory, in an archive, in a record of a store
//! (decrypted in memory, audited) or in a sealed record file fetched from a server (the
//! download audited there; decrypted in memory here), without unpacking anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::inspect;
use crate::inspect::memory::{MAX_CONTEXT, MAX_MATCH, Match, Pattern, Search};
use crate::manifest::RecordId;
use crate::vault::analyse::{Reader, memsearch_record};

/// Arguments of `ckvault memsearch`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["string", "regex"])))]
pub struct MemsearchArgs {
    /// A record ID (with --store or --config, and --identity), a sealed record file as
    /// `ckvault fetch` writes it (with its manifest beside it, and --identity), or a
    /// checkpoint archive file.
    target: String,
    #[command(flatten)]
    store: StoreArg,
    /// Your age identity file or unencrypted SSH private key (for a record).
    #[arg(long, short = 'i', value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Only the process with this pid (as in the checkpoint).
    #[arg(long)]
    pid: Option<u32>,
    /// Search for this text.
    #[arg(long, value_name = "TEXT")]
    string: Option<String>,
    /// Search for this regular expression (over bytes).
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
    /// Context bytes shown on each side of a match.
    #[arg(long, default_value_t = 32)]
    context: usize,
    /// Stop after this many matches.
    #[arg(long, default_value_t = 1000)]
    max_matches: usize,
    /// Why you read this record (recorded in the audit log).
    #[arg(long)]
    purpose: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Bytes as text: printable ASCII as is, everything else `\xNN` (backslash doubled).
fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(c as char),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out
}

/// Runs `ckvault memsearch`.
pub(super) fn run(args: MemsearchArgs) -> anyhow::Result<ExitCode> {
    let pattern = match (&args.string, &args.regex) {
        (Some(s), _) => {
            anyhow::ensure!(
                !s.is_empty() && s.len() <= MAX_MATCH,
                "--string must be 1 to {MAX_MATCH} bytes"
            );
            Pattern::Literal(s.as_bytes().to_vec())
        }
        (None, Some(r)) => Pattern::Regex(
            regex::bytes::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .with_context(|| format!("--regex {r:?}"))?,
        ),
        (None, None) => anyhow::bail!("give --string or --regex"),
    };
    anyhow::ensure!(
        args.context <= MAX_CONTEXT,
        "--context is at most {MAX_CONTEXT}"
    );
    let search = Search {
        pattern,
        pid: args.pid,
        context: args.context,
        max_matches: args.max_matches,
    };
    // Memory takes longer than metadata: an hour, not two minutes.
    let limits = super::common::analysis_limits();
    let as_file = PathBuf::from(&args.target);
    let (record, found) = match args.target.parse::<RecordId>() {
        Ok(id) if !as_file.exists() => {
            let identities =
                super::common::identities(args.identity.as_ref(), "a record is encrypted")?;
            let opened = super::common::open_store(&args.store, false)?;
            let who = Reader {
                actor: crate::node::local_actor(),
                purpose: args.purpose.clone(),
            };
            let (m, found) = memsearch_record(
                &opened.rt,
                &opened.store,
                &id,
                identities,
                &search,
                &limits,
                &who,
            )?;
            opened.ship_audit()?;
            (Some(m.id.to_string()), found)
        }
        _ => {
            let sealed = crate::vault::analyse::sealed_file(&as_file).with_context(|| {
                format!(
                    "{:?} is neither a record ID nor a readable archive",
                    args.target
                )
            })?;
            match sealed {
                Some((m, blob)) => {
                    let identities = super::common::identities(
                        args.identity.as_ref(),
                        "this file is a sealed record",
                    )?;
                    let found = crate::vault::analyse::memsearch_sealed(
                        &m, blob, identities, &search, &limits,
                    )?;
                    (Some(m.id.to_string()), found)
                }
                None => {
                    let file = crate::fsutil::open_regular_nofollow(&as_file)?;
                    (None, inspect::memsearch_seekable(file, &limits, &search)?)
                }
            }
        }
    };
    let shown = |m: &Match| {
        serde_json::json!({
            "pid": m.pid,
            "address": format!("{:#x}", m.address),
            "match": escape_bytes(&m.matched),
            "context": escape_bytes(&m.context),
        })
    };
    match args.format {
        Format::Json => output::print_json(&serde_json::json!({
            "record": record,
            "matches": found.matches.iter().map(shown).collect::<Vec<_>>(),
            "truncated": found.truncated,
            "scanned_bytes": found.scanned.values().sum::<u64>(),
        }))?,
        Format::Table => {
            println!("{:<8} {:<18} CONTEXT", "PID", "ADDRESS");
            for m in &found.matches {
                println!(
                    "{:<8} {:<18} {}",
                    m.pid,
                    format!("{:#x}", m.address),
                    escape_bytes(&m.context)
                );
            }
            eprintln!(
                "{} match(es){}; {} bytes of memory scanned",
                found.matches.len(),
                if found.truncated {
                    " (stopped at --max-matches)"
                } else {
                    ""
                },
                found.scanned.values().sum::<u64>()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
