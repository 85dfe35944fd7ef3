//! The command line: `criguard serve | check | demo`, each runtime flag with a `CRIGUARD_*`
//! environment twin. Flags and environment variables win over the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::settings::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "criguard",
    version,
    about = "A transparent, CRI-aware proxy between the kubelet and the container runtime"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CRI socket and forward every call to the runtime.
    Serve(Box<ServeArgs>),
    /// Validate a configuration file and exit (non-zero on any problem).
    Check {
        /// The configuration file to check.
        #[arg(long, env = "CRIGUARD_CONFIG")]
        config: PathBuf,
    },
    /// Test and debug policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Start an embedded fake runtime with criguard in front of it, drive a kubelet-like
    /// sequence of calls through it and print what passed. Needs no container runtime.
    Demo,
    /// Serve the embedded fake runtime on a socket (for benchmarks and experiments).
    #[command(hide = true)]
    FakeRuntime {
        /// Socket path to serve on.
        #[arg(long)]
        listen: PathBuf,
        /// Containers to pre-create, so that ListContainers answers are large.
        #[arg(long, default_value_t = 0)]
        containers: usize,
        /// CreateContainer keeps nothing (for load runs).
        #[arg(long)]
        stateless: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the test cases next to the policies (NAME.tests.yaml beside NAME.yaml); non-zero
    /// exit on any failure.
    Test {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Evaluate one request and print the decision and every rule that matched.
    Eval {
        /// The policy directory.
        #[arg(long)]
        policies: PathBuf,
        /// The CRI method, e.g. CreateContainer.
        #[arg(long)]
        method: String,
        /// The request in CRI JSON form (proto JSON).
        #[arg(long)]
        request: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML); flags and environment variables override it.
    #[arg(long, env = "CRIGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Socket to serve the kubelet on [default: /run/criguard/criguard.sock].
    #[arg(long, env = "CRIGUARD_LISTEN")]
    pub listen: Option<PathBuf>,
    /// Permission bits of the socket, octal [default: 0660].
    #[arg(long, env = "CRIGUARD_SOCKET_MODE")]
    pub socket_mode: Option<String>,
    /// Group owning the socket (name or gid).
    #[arg(long, env = "CRIGUARD_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// The runtime's CRI socket [default: unix:///run/containerd/containerd.sock].
    #[arg(long, env = "CRIGUARD_RUNTIME_ENDPOINT")]
    pub runtime_endpoint: Option<String>,
    /// A separate socket for ImageService calls.
    #[arg(long, env = "CRIGUARD_IMAGE_ENDPOINT")]
    pub image_endpoint: Option<String>,
    /// Largest gRPC message in either direction: bytes or e.g. 16MiB [default: 16MiB].
    #[arg(long, env = "CRIGUARD_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<String>,
    /// Time in-flight calls get to finish on SIGTERM/SIGINT, e.g. 15s [default: 15s].
    #[arg(long, env = "CRIGUARD_SHUTDOWN_GRACE_PERIOD", value_parser = humantime::parse_duration)]
    pub shutdown_grace_period: Option<Duration>,
    /// Log filter, e.g. `info` or `criguard=debug` [default: RUST_LOG, else info].
    #[arg(long, env = "CRIGUARD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, env = "CRIGUARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Admin server for /metrics, /healthz, /readyz: host:port, a socket path, or off
    /// [default: 127.0.0.1:9899].
    #[arg(long, env = "CRIGUARD_ADMIN_ADDRESS")]
    pub admin_address: Option<String>,
    /// Record no Prometheus metrics (/metrics answers 404).
    #[arg(long, env = "CRIGUARD_DISABLE_METRICS")]
    pub disable_metrics: bool,
    /// Threads that serve calls. One thread (the default) handles thousands of calls per
    /// second at the least CPU per call; more help only on busy nodes with idle cores.
    #[arg(long, env = "CRIGUARD_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// How often the runtime is probed for /readyz, e.g. 5s [default: 5s].
    #[arg(long, env = "CRIGUARD_PROBE_INTERVAL", value_parser = humantime::parse_duration)]
    pub probe_interval: Option<Duration>,
    /// An identical failed call (method, object, message) is logged once per window [default: 1m].
    #[arg(long, env = "CRIGUARD_ERROR_LOG_WINDOW", value_parser = humantime::parse_duration)]
    pub error_log_window: Option<Duration>,
    /// Write the audit trail of runtime calls to this file, with the shipped rules unless the
    /// configuration file has its own (`audit:`).
    #[arg(long, env = "CRIGUARD_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Load every policy in this directory (reloaded on SIGHUP and when the directory changes).
    #[arg(long, env = "CRIGUARD_POLICIES")]
    pub policies: Option<PathBuf>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            socket_mode: self.socket_mode.clone(),
            socket_group: self.socket_group.clone(),
            runtime_endpoint: self.runtime_endpoint.clone(),
            image_endpoint: self.image_endpoint.clone(),
            max_message_size: self.max_message_size.clone(),
            shutdown_grace_period: self.shutdown_grace_period,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            admin_address: self.admin_address.clone(),
            metrics: self.disable_metrics.then_some(false),
            probe_interval: self.probe_interval,
            error_log_window: self.error_log_window,
            audit_log: self.audit_log.clone(),
            policies: self.policies.clone(),
        }
    }
}
