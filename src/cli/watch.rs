//! `ckvault watch`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::capture::watch;
use crate::inspect::escape_control;

/// Arguments of `ckvault watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    capture: super::common::CaptureArgs,
    /// The kubelet checkpoint directory (default [watch] dir, /var/lib/kubelet/checkpoints).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds a file must be quiet after its last write before it is captured; only a
    /// file its writer closed (or, found at start, that no process holds open for
    /// writing) is captured, however long it stays quiet (default [watch] settle, 2 s).
    #[arg(long, value_name = "SECONDS")]
    settle: Option<f64>,
    /// Capture what is in the directory now, then exit (for cron or a one-off sweep).
    #[arg(long)]
    once: bool,
}

/// Runs `ckvault watch`.
pub(super) fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let config = args.capture.config()?;
    let dir = args.dir.clone().unwrap_or_else(|| config.watch.dir.clone());
    let settle = match args.settle {
        Some(s) => {
            let max = crate::config::MAX_WATCH_SETTLE.as_secs_f64();
            anyhow::ensure!(
                s.is_finite() && (0.0..=max).contains(&s),
                "--settle must be a number of seconds from 0 to {max}"
            );
            Duration::from_secs_f64(s)
        }
        None => config.watch.settle,
    };
    let capture =
        super::common::capture_setup(&config, &args.capture, crate::manifest::SourceKind::Watch)?;
    let store = capture.intake.store();
    // With a bucket the store is a spool: an uploader drains it (woken by the intake).
    let _uploading = match capture.uploader.clone() {
        Some(u) => Some(crate::store::s3::upload::spawn_thread(u)?),
        None => None,
    };
    let wopts = watch::WatchOptions {
        dir: dir.clone(),
        settle,
        once: args.once,
    };
    eprintln!(
        "ckvault: watching {} (store {})",
        dir.display(),
        store.root().display()
    );
    let mut failures = 0u32;
    watch::run(&capture.intake, &wopts, &mut |name, outcome| {
        let name = escape_control(name);
        match outcome {
            watch::Outcome::Sealed {
                manifest: m,
                warning,
            } => {
                // Identity fields come from the archive: escaped, and named when they break
                // Kubernetes' naming rules.
                let flagged = if m.identity_invalid.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; breaking Kubernetes naming: {}",
                        m.identity_invalid.join(", ")
                    )
                };
                println!(
                    "sealed {name} as {} ({}, inspection {}{flagged})",
                    m.id,
                    escape_control(m.namespace.as_deref().unwrap_or("?")),
                    escape_control(m.inspection.code.as_deref().unwrap_or("ok"))
                );
                if let Some(w) = warning {
                    tracing::warn!("{name}: {}", escape_control(w));
                }
            }
            watch::Outcome::Ignored(why) => {
                tracing::info!("ignoring {name}: {}", escape_control(why));
            }
            watch::Outcome::InUse(why) if args.once => {
                tracing::info!("leaving {name} for the next sweep: {}", escape_control(why));
            }
            watch::Outcome::InUse(why) => {
                tracing::info!("waiting for {name} to be closed: {}", escape_control(why));
            }
            watch::Outcome::Changed(id) => {
                tracing::warn!(
                    "{name} changed while it was sealed (record {id} holds what was read); kept, to be sealed again once closed"
                );
            }
            watch::Outcome::Failed(why) => {
                failures += 1;
                tracing::error!(
                    "could not seal {name}: {}",
                    escape_control(&why.to_string())
                );
            }
            watch::Outcome::NotSettled => {}
        }
    })?;
    // --once: upload before exiting; what cannot go up stays in the spool for next time.
    if let Some(u) = capture.uploader {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match rt.block_on(u.drain()) {
            Ok(d) => {
                println!("uploaded {} record(s)", d.uploaded);
                for (id, why) in &d.stuck {
                    failures += 1;
                    eprintln!("ckvault: record {id} stays in the spool: {why}");
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("ckvault: upload: {e} (the records stay in the spool)");
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
