//! `ckvault inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Format, output};
use crate::fsutil;
use crate::inspect::{self, Limits};

/// Arguments of `ckvault inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The checkpoint archive (.tar, .tar.gz or .tar.zst); never unpacked.
    pub archive: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Runs `ckvault inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let file = fsutil::open_regular_nofollow(&args.archive)
        .with_context(|| format!("cannot open {}", args.archive.display()))?;
    match inspect::inspect_seekable(file, &Limits::default()) {
        Ok(found) => {
            match args.format {
                Format::Json => output::print_json(&found)?,
                Format::Table => print!("{}", inspect::render_table(&found)),
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
