//! criguard: a transparent, CRI-aware proxy between the kubelet and the container runtime.
//!
//! The kubelet talks to criguard's socket; criguard forwards every CRI call, known to its proto
//! or not, to the runtime's socket as the caller's original bytes, through a tower stack of
//! layers (see [`app::build_stack`]).

pub mod allocator;
pub mod app;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod fake;
pub mod glob;
pub mod inventory;
pub mod layers;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod settings;
pub mod signal;
pub mod systemd;
pub mod telemetry;

/// The CRI v1 types and gRPC stubs generated from `proto/v1.proto`.
#[allow(clippy::all, missing_docs)]
pub mod cri {
    tonic::include_proto!("runtime.v1");

    /// The encoded `FileDescriptorSet` of `proto/v1.proto`.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptors.bin"));
}
