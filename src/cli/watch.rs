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
    /// Seconds a file must be quiet after its last write before it is captured
    /// (default [watch] settle, 2 s).
    #[arg(long, value_name = "SECONDS")]
    settle: Option<f64>,
    /// Capture what is in the directory now, then exit (for cron or a one-off sweep).
    #[arg(long)]
    once: bool,
}

/// Runs `ckvault watch`.
pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let config = args.capture.config()?;
    let dir = args.dir.clone().unwrap_or_else(|| config.watch.dir.clone());
    let settle = match args.settle {
        Some(s) => {
            anyhow::ensure!(
                s.is_finite() && s >= 0.0,
                "--settle must be a number of seconds"
            );
            Duration::from_secs_f64(s)
        }
        None => config.watch.settle,
    };
    let capture = super::common::capture_setup(&config, &args.capture, "watch")?;
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
            watch::Outcome::Sealed(m) => {
                println!(
                    "sealed {name} as {} ({}, inspection {})",
                    m.id,
                    m.namespace.as_deref().unwrap_or("?"),
                    m.inspection.code.as_deref().unwrap_or("ok")
                );
            }
            watch::Outcome::Ignored(why) => eprintln!("ckvault: ignoring {name}: {why}"),
            watch::Outcome::Failed(why) => {
                failures += 1;
                eprintln!("ckvault: could not seal {name}: {}", escape_control(why));
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
