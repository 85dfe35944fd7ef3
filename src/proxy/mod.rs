//! The transparent core: the listening socket, the parsed call, the bodies that carry the
//! caller's bytes, the forwarder to the runtime, and the one place that makes gRPC statuses.

pub mod authority;
pub mod body;
pub mod decision;
pub mod edge_agreement;
pub mod error;
pub mod h2io;
pub mod identity;
pub mod inspect;
pub mod listener;
pub mod notes;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod status;
pub mod wire;
