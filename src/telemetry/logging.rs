//! Log setup: `tracing` to stderr, as text (colours only on a terminal) or JSON lines.
//!
//! Levels: ERROR criguard cannot do its job (cannot bind); WARN a call failed or the runtime is
//! unreachable; INFO start, stop, connections to the runtime; DEBUG every finished call.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::settings::LogFormat;

/// Changes the level of the installed subscriber (a configuration reload).
#[derive(Clone, Debug)]
pub struct LevelHandle(reload::Handle<EnvFilter, Registry>);

impl LevelHandle {
    /// Puts `level` in force (as [`init`] reads it); an invalid directive changes nothing.
    pub fn set(&self, level: Option<&str>) -> Result<(), String> {
        let filter = filter(level)?;
        self.0.reload(filter).map_err(|err| err.to_string())
    }
}

/// Whether `level` is a directive [`init`] accepts.
pub fn check_level(level: Option<&str>) -> Result<(), String> {
    filter(level).map(drop)
}

fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    match level {
        Some(directive) => EnvFilter::try_new(directive).map_err(|err| err.to_string()),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive; without it `RUST_LOG`
/// is used, and without that `info`. `None` when a subscriber was installed already (tests,
/// the demo): that one stays.
pub fn init(level: Option<&str>, format: LogFormat) -> Option<LevelHandle> {
    // An invalid directive logs at info rather than not at all.
    let filter = filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .ok()
        .map(|()| LevelHandle(handle))
}
