//! `ckvault audit verify` and `ckvault audit show`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, StoreArg, output};
use crate::audit::{self, verify::verify_with_keys};
use crate::inspect::escape_control;
use crate::manifest::VerifyingKey;
use crate::store::LocalStore;

/// `ckvault audit ...` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain and signed heads (edited, removed, truncated or
    /// forked history is reported). Exit status 1 on failure.
    Verify {
        /// The audit log file (default: the store's audit.log). Its signed heads are read
        /// from FILE.head.json and FILE.heads beside it.
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
        /// Vault public key (SPKI PEM) kept out of band; default: the store's keys/signing.pub.
        #[arg(long, value_name = "PEM")]
        public_key: Option<PathBuf>,
        /// A head seen earlier (`SIZE:HASH`, printed by `audit verify` and by the server's
        /// /healthz and /metrics): the log must still hold that event, so a rollback of the
        /// whole log (tail and head files together) below it fails.
        #[arg(long, value_name = "SIZE:HASH")]
        expect_head: Option<audit::verify::ExpectedHead>,
    },
    /// Print audit events, oldest first.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Only events about this record.
        #[arg(long)]
        record: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Verifies the audit segments every node and replica shipped to the bucket.
fn verify_bucket(config: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let mut s3 = crate::store::s3::S3Store::new(&config.store)?;
    // The first keys of node names this machine's spool remembers, when it has one.
    if let Ok(spool) = LocalStore::open(&config.store.spool) {
        s3 = s3.with_key_memory(spool.known_keys_dir());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(s3.check())?;
    match rt.block_on(crate::store::s3::ship::verify_bucket(&s3)) {
        Ok(sources) => {
            for s in &sources {
                println!(
                    "OK audit s3://{}/…/audit/{}: {} events in {} segments, head {}",
                    s3.bucket(),
                    escape_control(&s.source),
                    s.events,
                    s.segments,
                    s.head
                );
            }
            // What this node logged but has not shipped yet is not in the bucket: say so
            // (an "OK" over a bucket missing this node's events would not be true).
            let node = crate::node::node_name(config);
            let local = crate::audit::latest_head(
                &crate::store::LocalStore::at_config(config).audit_path(),
            )
            .map_or(0, |h| h.size);
            let shipped = sources
                .iter()
                .find(|s| s.source == node)
                .map_or(0, |s| s.events);
            if local > shipped {
                println!(
                    "PENDING audit of {}: {} of its {local} events are not in the bucket yet (its uploader ships them; `ckvault upload --config` does it now)",
                    escape_control(&node),
                    local - shipped
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("OK {} sources", sources.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!(
                "FAILED audit in s3://{}: {}",
                s3.bucket(),
                escape_control(&e.to_string())
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `ckvault audit ...`.
pub(super) fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            file,
            store,
            public_key,
            expect_head,
        } => {
            if let Some(cfg) = &store.config {
                let config = crate::config::Config::load(cfg)?;
                if config.store.kind == crate::config::StoreKind::S3 && file.is_none() {
                    anyhow::ensure!(
                        expect_head.is_none(),
                        "--expect-head pins a local log; in a bucket the shipped heads anchor each source's log"
                    );
                    return verify_bucket(&config);
                }
            }
            // The log of `--store`, or of `--config` (its [audit] path; with a bucket, the
            // spool's log, when a FILE is named or to check it before it is shipped).
            let local = || -> anyhow::Result<LocalStore> {
                let node =
                    crate::wiring::Node::build(store.config()?, crate::wiring::Open::Existing)?;
                Ok(node.local().clone())
            };
            let keys = match public_key {
                Some(p) => {
                    let pem = crate::fsutil::read_regular_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    vec![VerifyingKey::from_pem(&pem, &p)?]
                }
                // The current key and the keys it replaced (`ckvault key rotate`).
                None => local()?.all_keys()?,
            };
            let log = match file {
                Some(f) => f,
                None => local()?.audit_path(),
            };
            match verify_with_keys(&log, &keys, expect_head.as_ref()) {
                Ok(v) => {
                    println!(
                        "OK audit log: {} events, head {}:{} (signed size {}, {} signed heads checked{})",
                        v.events,
                        v.events,
                        v.head_hash,
                        v.signed_size,
                        v.heads_checked,
                        if v.torn_bytes > 0 {
                            format!(
                                "; {} bytes of an interrupted append at the end, cut by the next append",
                                v.torn_bytes
                            )
                        } else {
                            String::new()
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED audit log {}: {e}", log.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Show {
            store,
            record,
            limit,
            format,
        } => {
            let st = store.open_local("audit show")?;
            let events = audit::read_events(
                &st.audit_path(),
                &|e| {
                    record
                        .as_deref()
                        .is_none_or(|r| e.input.record.as_deref() == Some(r))
                },
                limit,
            )?;
            match format {
                Format::Json => output::print_json(&events)?,
                Format::Table => {
                    for e in &events {
                        let line = format!(
                            "{:>6}  {}  {:<28} {:<14} {:<7} {} {}",
                            e.seq,
                            e.time.get(..19).unwrap_or(&e.time),
                            e.input.actor,
                            e.input.action,
                            e.input.outcome,
                            e.input.record.as_deref().unwrap_or("-"),
                            e.input
                                .detail
                                .as_deref()
                                .or(e.input.purpose.as_deref())
                                .unwrap_or("")
                        );
                        println!("{}", escape_control(&line));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
