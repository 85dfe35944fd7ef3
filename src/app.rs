//! Builds THE stack every call goes through, and runs criguard: bind the socket, serve it,
//! drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::audit::AuditTrail;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::layers::access::AccessLayer;
use crate::layers::audit::AuditLayer;
use crate::layers::cri_only::CriOnlyLayer;
use crate::layers::learn::Learn;
use crate::layers::limits::LimitsLayer;
use crate::layers::log::CallLog;
use crate::layers::metrics::CallMetrics;
use crate::layers::policy::PolicyLayer;
use crate::layers::read_head::ReadHeadLayer;
use crate::layers::respond::RespondWithStatusLayer;
use crate::layers::trace::CallSpans;
use crate::policy::PolicySet;
use crate::policy::file::PolicyError;
use crate::policy::reload::PolicyStore;
use crate::proxy::h2io::RecvBody;
use crate::proxy::listener::{self, BoundListener, ListenError};
use crate::proxy::rpc::Rpc;
use crate::proxy::runtime::{Forwarder, RuntimeConnection};
use crate::proxy::server;
use crate::reload::{ConfigSource, Handles, Reloader};
use crate::signal::{Signal, Signals};
use crate::systemd::Notifier;
use crate::telemetry::admin::{self, AdminListener, AdminState};
use crate::telemetry::logging::LevelHandle;
use crate::telemetry::readiness::Readiness;
use crate::telemetry::trace::Tracing;

/// The stack, top to bottom: what a call goes through on its way to the runtime.
pub fn build_stack(
    config: &Config,
    parts: StackParts,
    forwarder: Forwarder,
) -> impl tower::Service<
    http::Request<RecvBody>,
    Response = http::Response<
        impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
    >,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        // Parse the method once from :path; every layer below reads it from the extensions.
        .map_request(with_rpc)
        // Learn the node's sandboxes and containers from the calls (outermost: it forgets a
        // removed object only after every layer inside has seen its Remove call end).
        .layer(Learn::layer(parts.inventory.clone()))
        // A span per sampled call, child of the caller's traceparent; the runtime is told
        // criguard's span is its parent. Above the rest, so the span covers all they do.
        .layer(CallSpans::layer(parts.tracing, parts.inventory.clone()))
        // Count every call by method and final code, and time it to the end of its answer.
        .layer(CallMetrics::layer())
        // Log how each call ended, including the statuses criguard makes itself below;
        // identical errors once per window.
        .layer(CallLog::layer(
            config.error_log_window,
            config.error_log_max_keys,
        ))
        // Record who called what on which pod, and how it ended (when audit is on).
        .layer(AuditLayer::new(parts.audit))
        // The one place where the errors of the layers below become gRPC statuses.
        .layer(RespondWithStatusLayer)
        // Each listener's role and allowed callers: PERMISSION_DENIED before the body is read.
        .layer(AccessLayer)
        // Rate limits and in-flight caps: RESOURCE_EXHAUSTED, or a bounded wait.
        .layer(parts.limits)
        // Read the first message of known calls for inspection; the bytes go on unchanged.
        .layer(ReadHeadLayer::new(config.max_message_size))
        // While policies are in force, only CRI calls pass: no policy can read the others.
        .layer(CriOnlyLayer::new(parts.policies.clone()))
        // Policies on the decoded request: PERMISSION_DENIED, or INVALID_ARGUMENT when a
        // request they must inspect cannot be decoded. Calls no policy matches are not decoded.
        .layer(PolicyLayer::new(parts.policies, parts.inventory))
        .service(forwarder)
}

/// What the stack is built with besides the configuration: the parts a reload can change.
#[derive(Clone, Debug, Default)]
pub struct StackParts {
    /// The rate limits and in-flight caps in force.
    pub limits: LimitsLayer,
    pub audit: Option<Arc<AuditTrail>>,
    /// The policies in force (empty without a policy directory).
    pub policies: Arc<ArcSwap<PolicySet>>,
    /// The sandboxes and containers known, when audit or policies need them.
    pub inventory: Option<Inventory>,
    /// The tracer in force, if tracing is on.
    pub tracing: Tracing,
}

fn with_rpc<B>(mut request: http::Request<B>) -> http::Request<B> {
    let rpc = Rpc::from_path(request.uri().path());
    request.extensions_mut().insert(rpc);
    request
}

/// A bound criguard, ready to serve.
pub struct Proxy {
    config: Config,
    audit: Option<Arc<AuditTrail>>,
    policies: Option<PolicyStore>,
    inventory: Option<Inventory>,
    bound: Vec<BoundListener>,
    admin: Option<AdminListener>,
    prometheus: Option<PrometheusHandle>,
    /// Where SIGHUP reads the configuration again; without it, SIGHUP reloads the policies.
    reload: Option<(ConfigSource, Option<LevelHandle>)>,
    /// The process's signals, when it is criguard's own (not a test or the demo).
    signals: Option<Signals>,
}

/// Why criguard could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("audit trail: {0}")]
    Audit(std::io::Error),
    #[error("policies: {0}")]
    Policy(#[from] PolicyError),
    #[error("admin address {address}: {source}")]
    Admin {
        address: String,
        source: std::io::Error,
    },
}

impl Proxy {
    /// Binds the listening socket (or takes the one systemd passed) and the admin address.
    /// `prometheus` is the installed metrics recorder, if metrics are on.
    pub async fn bind(
        config: Config,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<Proxy, StartError> {
        let mut policies = config
            .policies
            .as_deref()
            .map(|dir| PolicyStore::load(dir, &config.policy_settings))
            .transpose()?;
        // The pods of calls that name only a container or sandbox id, for audit and policies.
        let inventory = (config.audit.is_some() || policies.is_some())
            .then(|| Inventory::of_runtime(config.runtime_endpoint.path.clone()));
        if let (Some(store), Some(inventory)) = (&mut policies, &inventory) {
            store.keep_inventory(inventory.clone(), config.audit.is_some());
        }
        let audit = match (&config.audit, &inventory) {
            (Some(settings), Some(inventory)) => {
                Some(AuditTrail::start(settings, inventory.clone()).map_err(StartError::Audit)?)
            }
            _ => None,
        };
        let sockets: Vec<_> = config.listeners.iter().map(|l| &l.socket).collect();
        let bound = listener::listen_all(&sockets).await?;
        let admin = AdminListener::bind(&config.admin_address)
            .await
            .map_err(|source| StartError::Admin {
                address: config.admin_address.to_string(),
                source,
            })?;
        Ok(Proxy {
            config,
            audit,
            policies,
            inventory,
            bound,
            admin,
            prometheus,
            reload: None,
            signals: None,
        })
    }

    /// Makes SIGHUP read the configuration from `source` again (and set the log level through
    /// `log`), not just the policies.
    pub fn reload_from(mut self, source: ConfigSource, log: Option<LevelHandle>) -> Proxy {
        self.reload = Some((source, log));
        self
    }

    /// Handles the process's signals: SIGTERM/SIGINT shut down, SIGHUP reloads, SIGUSR1
    /// reopens the audit log.
    pub fn on_signals(mut self, signals: Signals) -> Proxy {
        self.signals = Some(signals);
        self
    }

    /// The admin server's address as bound, if it runs.
    pub fn admin_address(&self) -> Option<String> {
        self.admin.as_ref().map(AdminListener::local)
    }

    /// Serves until `shutdown` fires, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let Proxy {
            config,
            audit,
            policies,
            inventory,
            bound,
            admin,
            prometheus,
            reload,
            signals,
        } = self;
        let mut endpoints = vec![&config.runtime_endpoint];
        endpoints.extend(config.image_endpoint.as_ref());
        if let Some(admin) = admin {
            // Probes serve /readyz and criguard_runtime_up: without the admin server, none.
            let readiness = Readiness::new(&endpoints, config.probe_interval);
            tokio::spawn(readiness.clone().run(shutdown.clone()));
            tracing::info!(address = %admin.local(), metrics = prometheus.is_some(), "admin server listening");
            let state = AdminState {
                process: prometheus.as_ref().map(|_| {
                    let collector = metrics_process::Collector::default();
                    collector.describe();
                    std::sync::Arc::new(collector)
                }),
                prometheus,
                readiness,
            };
            tokio::spawn(admin::serve(admin, state, shutdown.clone()));
        }
        if audit.is_some() {
            tracing::info!(
                path = ?config.audit.as_ref().and_then(|a| a.sinks.path.as_ref()),
                "audit trail on"
            );
        }
        if let Some(store) = &policies
            && let Err(err) = store.watch(shutdown.clone())
        {
            tracing::warn!(error = %err, "cannot watch the policy directory; reload with SIGHUP");
        }
        let runtime = Arc::new(RuntimeConnection::new(config.runtime_endpoint.clone()));
        let image = config
            .image_endpoint
            .clone()
            .map(|e| Arc::new(RuntimeConnection::new(e)));
        let listen = bound
            .iter()
            .zip(&config.listeners)
            .map(|(b, l)| format!("{} (role {})", b.description, l.access.role.name))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            listen,
            runtime = %config.runtime_endpoint,
            image = %config.image_endpoint.as_ref().unwrap_or(&config.runtime_endpoint),
            max_message_size = config.max_message_size,
            "criguard serving"
        );
        let forwarder = Forwarder::new(runtime, image, config.max_message_size, shutdown.clone());
        let limits = LimitsLayer::new(&config.limits, &config.in_flight_caps());
        let tracing = Tracing::start(config.tracing.as_ref());
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|l| Arc::new(ArcSwap::from_pointee(l.access.clone())))
            .collect();
        let handles = Handles {
            limits: limits.clone(),
            listeners: config
                .listeners
                .iter()
                .map(|l| l.socket.path.clone())
                .zip(listeners.iter().cloned())
                .collect(),
            audit: audit.clone(),
            policies: policies.clone(),
            log: None,
            tracing: tracing.clone(),
        };
        if let Some(signals) = signals {
            let hangup = Hangup::new(reload, &config, handles);
            tokio::spawn(handle_signals(
                signals,
                hangup,
                audit.clone(),
                shutdown.clone(),
            ));
        }
        let parts = StackParts {
            limits,
            audit: audit.clone(),
            policies: policies
                .as_ref()
                .map(PolicyStore::current)
                .unwrap_or_default(),
            inventory,
            tracing: tracing.clone(),
        };
        let stack = build_stack(&config, parts, forwarder);
        let mut owned = Vec::new();
        let mut serving = Vec::new();
        for (bound, access) in bound.into_iter().zip(listeners) {
            owned.extend(bound.owned);
            serving.push((bound.listener, access));
        }
        let notifier = Notifier::from_env();
        notifier.serving_until(shutdown.clone());
        let watchdog = notifier.watchdog();
        server::serve(
            serving,
            stack,
            shutdown,
            config.shutdown_grace_period,
            watchdog,
        )
        .await;
        if let Some(audit) = audit {
            audit.close().await;
        }
        tracing.close().await;
        for socket in owned {
            socket.remove();
        }
        tracing::info!("criguard stopped");
    }
}

/// What SIGHUP does: read the configuration again when criguard knows where it came from;
/// otherwise reload the policies.
enum Hangup {
    Config(Arc<Reloader>),
    Policies(Option<PolicyStore>),
}

impl Hangup {
    fn new(
        reload: Option<(ConfigSource, Option<LevelHandle>)>,
        config: &Config,
        mut handles: Handles,
    ) -> Hangup {
        match reload {
            Some((source, log)) => {
                handles.log = log;
                Hangup::Config(Arc::new(Reloader::new(source, config.clone(), handles)))
            }
            None => Hangup::Policies(handles.policies),
        }
    }

    async fn reload(&self) {
        match self {
            Hangup::Config(reloader) => {
                tracing::info!(signal = "SIGHUP", "reloading the configuration");
                let reloader = reloader.clone();
                // Reading files: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
            Hangup::Policies(store) => {
                tracing::info!(signal = "SIGHUP", "reloading the policies");
                if let Some(store) = store {
                    let _ = store.reload();
                }
            }
        }
    }
}

/// The one place signals are acted on, until shutdown.
async fn handle_signals(
    mut signals: Signals,
    hangup: Hangup,
    audit: Option<Arc<AuditTrail>>,
    shutdown: CancellationToken,
) {
    loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            _ = shutdown.cancelled() => return,
        };
        match signal {
            Signal::Terminate | Signal::Interrupt => {
                tracing::info!(signal = signal.name(), "shutting down");
                shutdown.cancel();
                return;
            }
            Signal::Hangup => hangup.reload().await,
            Signal::User1 => match &audit {
                Some(trail) => {
                    tracing::info!(signal = signal.name(), "reopening the audit log");
                    trail.reopen().await;
                }
                None => tracing::info!(signal = signal.name(), "no audit log to reopen"),
            },
        }
    }
}
