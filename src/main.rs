//! The `ckvault` binary: parses arguments and reports errors; all work is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ckvault::Cli::parse();
    match ckvault::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The message, then each cause it does not already say.
            let text = ckvault::error_text(&e);
            // Line by line: control characters escaped in each, and every line after the
            // first indented, so no text in a message can pass for a line of its own.
            let mut lines = text.trim_end().split('\n');
            eprintln!(
                "ckvault: error: {}",
                ckvault::inspect::escape_control(lines.next().unwrap_or_default())
            );
            for line in lines {
                eprintln!("  {}", ckvault::inspect::escape_control(line));
            }
            ExitCode::FAILURE
        }
    }
}
