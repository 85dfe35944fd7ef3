//! Log setup: `tracing` to stderr, as text (colours only on a terminal) or JSON lines.
//!
//! Levels: ERROR criguard cannot do its job (cannot bind); WARN a call failed or the runtime is
//! unreachable; INFO start, stop, connections to the runtime; DEBUG every finished call.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is an `EnvFilter` directive; without it `RUST_LOG`
/// is used, and without that `info`.
pub fn init(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(directive) => EnvFilter::new(directive),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber installed already (tests, the demo) stays.
    let _ = result;
}
