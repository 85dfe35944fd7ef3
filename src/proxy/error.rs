//! The errors that criguard itself raises while handling a call. Each is typed where it
//! happens; `status.rs` is the one place that turns them into gRPC statuses.

use std::fmt;
use std::sync::Arc;

use crate::layers::access::Denied;
use crate::layers::audit::AuditUnavailable;
use crate::layers::cri_only::NotCri;
use crate::layers::limits::Throttled;
use crate::policy::PolicyRefusal;

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

/// Everything a layer can fail with: each refusal is defined where it is decided (the layer or
/// the domain module), and wrapped here. New layers add their own variant.
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
    #[error(transparent)]
    AuditUnavailable(#[from] AuditUnavailable),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    NotCri(#[from] NotCri),
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
}
