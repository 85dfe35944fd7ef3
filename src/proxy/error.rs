//! The errors that criguard itself raises while handling a call. The core's own are typed
//! here, and `status.rs` turns them into gRPC statuses; a layer's refusal is typed where it is
//! decided and reaches the core as a [`Refusal`], whose code `layers/refusals.rs` gives.

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

/// A call refused above the core (who may call what, rate limits, policies, the audit trail):
/// its words, and the gRPC code the caller gets for it.
pub trait Refusal: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> tonic::Code;
}

/// Everything the stack can fail with: the core's own errors, and the refusals of the layers
/// (each defined where it is decided, its code given in `layers/refusals.rs`).
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
    Refused(Arc<dyn Refusal>),
}
