//! Where the process's log goes: one `tracing` subscriber writing to stderr, either text
//! for a person (`ckvault: [WARNING: ]message key=value ...`, the message first as it always
//! was) or one JSON object per line for a log pipeline (`--log-format json`). Which events
//! pass comes from `CKVAULT_LOG`, else `RUST_LOG` (an `EnvFilter`), else `info` for
//! ckvault and `warn` for the libraries under it.
//!
//! What a command says to its user (results, prompts, the final error) is not a log line
//! and is not written here.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `ckvault: message key=value ...`, for a person reading a terminal or a journal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, the event's fields, and
    /// the `spans` it happened in: request, connection, stream, file), for a log pipeline.
    Json,
}

/// The filter when neither `CKVAULT_LOG` nor `RUST_LOG` is set.
const DEFAULT_FILTER: &str = "warn,ckvault=info";

/// Installs the subscriber for this process (once; later calls do nothing).
pub(super) fn init(format: LogFormat) {
    let (filter, bad) = filter_from_env();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.event_format(Text).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
    if let Some((var, e)) = bad {
        tracing::warn!(variable = var, error = %e, "log filter not understood; using the default ({DEFAULT_FILTER})");
    }
}

/// The filter from `CKVAULT_LOG` or `RUST_LOG`, and the variable that did not parse.
fn filter_from_env() -> (EnvFilter, Option<(&'static str, String)>) {
    for var in ["CKVAULT_LOG", "RUST_LOG"] {
        if let Ok(spec) = std::env::var(var)
            && !spec.trim().is_empty()
        {
            return match EnvFilter::try_new(&spec) {
                Ok(f) => (f, None),
                Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((var, e.to_string()))),
            };
        }
    }
    (EnvFilter::new(DEFAULT_FILTER), None)
}

/// The text format: `ckvault: `, `WARNING: ` or `ERROR: ` for those levels, the message
/// and the event's fields, then the fields of the spans it happened in, outermost first.
struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("ckvault: ")?;
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("ERROR: ")?,
            Level::WARN => writer.write_str("WARNING: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, " {fields}")?;
                }
            }
        }
        writeln!(writer)
    }
}
