//! The `ckvault` binary: parses arguments and reports errors; all work is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ckvault::cli::Cli::parse();
    match ckvault::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!(
                "ckvault: error: {}",
                ckvault::inspect::escape_control(&text)
            );
            ExitCode::FAILURE
        }
    }
}
