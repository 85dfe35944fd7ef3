//! The audit trail of runtime calls: who called what, on which pod, and how it ended — one JSON
//! line per call, at the level the first matching rule picks (see `rules.rs`). Events are never
//! sampled or reduced, and none is lost silently: see `writer.rs`.

pub mod event;
pub mod json;
pub mod rules;
pub mod trail;
pub mod writer;

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::ByteSize;
pub use rules::{AuditRule, Level, Rules};
pub use trail::AuditTrail;
pub use writer::Sinks;

pub const DEFAULT_MAX_SIZE_MB: u64 = 100;
pub const DEFAULT_MAX_FILES: usize = 5;
pub const DEFAULT_QUEUE_SIZE: usize = 4096;
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// The `audit:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAudit {
    pub path: Option<PathBuf>,
    pub stdout: Option<bool>,
    /// Built-in rotation: the file is rotated before it passes this size; 0 turns it off
    /// (for logrotate, which sends SIGUSR1).
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: Option<u64>,
    pub max_files: Option<usize>,
    pub on_failure: Option<OnFailure>,
    pub queue_size: Option<usize>,
    /// Bytes of requests and answers the queue may hold; calls wait beyond (backpressure).
    pub queue_bytes: Option<ByteSize>,
    pub max_payload_bytes: Option<ByteSize>,
    pub rules: Option<Vec<AuditRule>>,
}

/// What happens to calls when their events cannot be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Calls that would be audited fail with UNAVAILABLE until events are written again.
    #[default]
    Deny,
    /// Calls pass; every lost event is counted and logged.
    Allow,
}

/// The validated audit settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub sinks: Sinks,
    pub on_failure: OnFailure,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub max_payload_bytes: usize,
    pub rules: Rules,
}

impl AuditConfig {
    /// Validates the section; `path` (`--audit-log`) wins over the file's. `None` when audit is
    /// off (no section and no flag). Errors name the key.
    pub fn resolve(
        file: Option<FileAudit>,
        path: Option<PathBuf>,
    ) -> Result<Option<AuditConfig>, (&'static str, String)> {
        if file.is_none() && path.is_none() {
            return Ok(None);
        }
        let file = file.unwrap_or_default();
        let path = path.or(file.path);
        let stdout = file.stdout.unwrap_or(false);
        if path.is_none() && !stdout {
            return Err(("audit", "needs a path, stdout: true, or both".into()));
        }
        if let Some(path) = &path
            && !path.is_absolute()
        {
            return Err((
                "audit.path",
                format!("{} is not an absolute path", path.display()),
            ));
        }
        let max_size_mb = file.max_size_mb.unwrap_or(DEFAULT_MAX_SIZE_MB);
        let queue_size = file.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
        if queue_size == 0 {
            return Err(("audit.queueSize", "must be at least 1".into()));
        }
        let queue_bytes = file.queue_bytes.map_or(DEFAULT_QUEUE_BYTES, |b| b.0);
        if queue_bytes == 0 {
            return Err(("audit.queueBytes", "must be at least 1".into()));
        }
        Ok(Some(AuditConfig {
            sinks: Sinks {
                path,
                stdout,
                max_size: (max_size_mb > 0).then_some(max_size_mb << 20),
                max_files: file.max_files.unwrap_or(DEFAULT_MAX_FILES),
            },
            on_failure: file.on_failure.unwrap_or_default(),
            queue_size,
            queue_bytes,
            max_payload_bytes: file
                .max_payload_bytes
                .map_or(DEFAULT_MAX_PAYLOAD_BYTES, |b| b.0),
            rules: file.rules.map_or_else(Rules::shipped, Rules::new),
        }))
    }
}
