//! The errors that criguard itself raises while handling a call. Each is typed where it
//! happens; `status.rs` is the one place that turns them into gRPC statuses.

use std::fmt;
use std::sync::Arc;

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// A gRPC message larger than the configured limit (`maxMessageSize`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{direction} message of {size} bytes is larger than the limit of {limit} bytes (maxMessageSize)"
)]
pub struct MessageTooLarge {
    pub direction: Direction,
    pub size: usize,
    pub limit: usize,
}

/// The runtime endpoint could not serve the call.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No connection could be made (socket absent, refused, handshake failed).
    #[error("runtime endpoint {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: Arc<str>, reason: String },
    /// The connection broke while the call was under way (runtime restarted or crashed).
    #[error("connection to runtime endpoint {endpoint} was lost: {reason}")]
    ConnectionLost { endpoint: Arc<str>, reason: String },
}

/// The request body could not be read from the caller.
#[derive(Clone, Debug, thiserror::Error)]
#[error("could not read the request from the caller: {0}")]
pub struct BadRequest(pub String);

/// A call refused by who may call what (a listener's role or its allowed callers).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Denied {
    #[error("caller {caller} is not allowed on {listener}")]
    Caller { caller: String, listener: String },
    #[error("role {role:?} of {listener} does not allow {method}")]
    Role {
        role: String,
        method: String,
        listener: String,
    },
}

impl Denied {
    /// What decided, for the audit trail.
    pub fn decided_by(&self) -> String {
        match self {
            Denied::Caller { listener, .. } => format!("listener {listener}"),
            Denied::Role { role, .. } => format!("role {role}"),
        }
    }
}

/// A call refused by a rate limit (`limits:`).
#[derive(Clone, Debug, thiserror::Error)]
#[error("rate limit {limit:?} ({rate}/s, burst {burst}) exceeded{waited}")]
pub struct Throttled {
    pub limit: String,
    pub rate: f64,
    pub burst: u32,
    /// ", after waiting 1s" when the limit waits first.
    pub waited: String,
}

/// Everything a layer can fail with. New layers add their own variant.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    MessageTooLarge(#[from] MessageTooLarge),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error("shutting down; reconnect to the socket")]
    ShuttingDown,
    /// Audit events cannot be written and `audit.onFailure` is `deny`.
    #[error("{0}; refusing calls that must be audited (audit.onFailure: deny)")]
    AuditUnavailable(String),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    /// An enforcing policy denies the call.
    #[error("{0}")]
    PolicyDenied(String),
    /// An enforcing policy must inspect the request and cannot decode it.
    #[error("{0}")]
    PolicyUndecodable(String),
}
