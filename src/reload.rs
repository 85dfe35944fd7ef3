//! SIGHUP: the configuration file and the policies are read again, while criguard serves.
//!
//! Everything is read and validated first; only then does anything change, all at once. A bad
//! file (config or policy) leaves the running configuration whole, and says why in the log and
//! in `criguard_config_reload_total{result="failure"}` / `criguard_config_last_reload_successful`.
//!
//! What changes while serving, for the calls that arrive from then on: rate limits and
//! in-flight caps, each listener's role and allowed callers, the audit rules, the policies and
//! their exempt namespaces, the log level, tracing. What needs a restart (socket paths and modes, the
//! runtime endpoints, message size, admin address, audit sinks, …) is named in the log when it
//! changes, and stays as it was until the restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::audit::AuditTrail;
use crate::config::{Config, ConfigError, Overrides};
use crate::layers::limits::LimitsLayer;
use crate::policy::file::PolicyError;
use crate::policy::reload::PolicyStore;
use crate::proxy::listener::ListenerAccess;
use crate::telemetry::logging::LevelHandle;
use crate::telemetry::metrics::{CONFIG_LAST_RELOAD_SUCCESSFUL, CONFIG_RELOAD_TOTAL};
use crate::telemetry::trace::Tracing;

/// Where the configuration comes from, to read it again: the file and the flags.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.file.as_deref(), self.overrides.clone())
    }
}

/// The parts of the running stack a reload changes.
#[derive(Clone, Debug)]
pub struct Handles {
    pub limits: LimitsLayer,
    /// Per listener path, the settings its requests are checked against.
    pub listeners: Vec<(PathBuf, Arc<ArcSwap<ListenerAccess>>)>,
    pub audit: Option<Arc<AuditTrail>>,
    pub policies: Option<PolicyStore>,
    pub log: Option<LevelHandle>,
    pub tracing: Tracing,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("policy {}: {}: {}", .0.file.display(), .0.key, .0.problem)]
    Policy(#[from] PolicyError),
}

/// Reloads the configuration into the running stack.
#[derive(Debug)]
pub struct Reloader {
    source: ConfigSource,
    /// What is in force: the configuration at start with every reload applied to it.
    running: Mutex<Config>,
    handles: Handles,
}

impl Reloader {
    pub fn new(source: ConfigSource, running: Config, handles: Handles) -> Reloader {
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
        // Both series from the start, so that the first failure is an increase.
        for result in ["success", "failure"] {
            metrics::counter!(CONFIG_RELOAD_TOTAL, "result" => result).increment(0);
        }
        Reloader {
            source,
            running: Mutex::new(running),
            handles,
        }
    }

    /// Reads the configuration and the policies again and puts in force what can change while
    /// serving. Logs and counts the outcome; on error nothing changed.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let outcome = self.try_reload();
        crate::telemetry::events::config_reloaded(outcome.as_ref().map(drop));
        outcome
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let new = self.source.load()?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let pending = restart_only_changes(&running, &new);
        // The policies are the last thing that can fail: once they are in, the rest follows.
        let policies_reloaded = match &self.handles.policies {
            Some(store) if new.policies.as_deref() == Some(store.dir()) => {
                store.reload_with(&new.policy_settings)?;
                true
            }
            _ => false,
        };
        let mut changed = Vec::new();
        if running.limits != new.limits || running.in_flight_caps() != new.in_flight_caps() {
            self.handles
                .limits
                .replace(&new.limits, &new.in_flight_caps());
            running.limits = new.limits.clone();
            changed.push("limits");
        }
        for listener in &new.listeners {
            let Some((_, access)) = self
                .handles
                .listeners
                .iter()
                .find(|(path, _)| *path == listener.socket.path)
            else {
                continue;
            };
            if **access.load() != listener.access {
                access.store(Arc::new(listener.access.clone()));
                changed.push("listeners");
            }
            if let Some(old) = running
                .listeners
                .iter_mut()
                .find(|l| l.socket.path == listener.socket.path)
            {
                old.access = listener.access.clone();
                old.max_in_flight = listener.max_in_flight;
            }
        }
        if let (Some(trail), Some(old), Some(new)) =
            (&self.handles.audit, running.audit.as_mut(), &new.audit)
            && old.rules != new.rules
        {
            trail.replace_rules(new.rules.clone());
            old.rules = new.rules.clone();
            changed.push("audit.rules");
        }
        if running.policy_settings != new.policy_settings && self.handles.policies.is_some() {
            running.policy_settings = new.policy_settings.clone();
            changed.push("policyExemptions/kubeletRootDir");
        }
        if running.log_level != new.log_level
            && let Some(log) = &self.handles.log
        {
            // Validated with the configuration: it cannot fail here.
            let _ = log.set(new.log_level.as_deref());
            running.log_level = new.log_level.clone();
            changed.push("logLevel");
        }
        if running.tracing != new.tracing {
            self.handles.tracing.apply(new.tracing.as_ref());
            running.tracing = new.tracing.clone();
            changed.push("tracing");
        }
        changed.dedup();
        if !pending.is_empty() {
            tracing::warn!(
                settings = ?pending,
                "these settings changed but apply only at the next restart"
            );
        }
        tracing::info!(
            changed = ?changed,
            policies_reloaded,
            "configuration reloaded"
        );
        Ok(())
    }
}

/// The keys whose new values differ from the running ones but cannot change while serving.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let sockets = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| l.socket.clone())
            .collect::<Vec<_>>()
    };
    // Everything about the audit trail but its rules is the writer's, set up at start.
    let audit_sinks = |c: &Config| {
        c.audit.as_ref().map(|a| {
            (
                a.sinks.clone(),
                a.on_failure,
                a.queue_size,
                a.queue_bytes,
                a.max_payload_bytes,
            )
        })
    };
    [
        (
            "listeners (paths, modes, groups)",
            sockets(running) != sockets(new),
        ),
        (
            "runtimeEndpoint",
            running.runtime_endpoint != new.runtime_endpoint,
        ),
        (
            "imageEndpoint",
            running.image_endpoint != new.image_endpoint,
        ),
        (
            "maxMessageSize",
            running.max_message_size != new.max_message_size,
        ),
        (
            "shutdownGracePeriod",
            running.shutdown_grace_period != new.shutdown_grace_period,
        ),
        ("logFormat", running.log_format != new.log_format),
        ("adminAddress", running.admin_address != new.admin_address),
        ("metrics", running.metrics != new.metrics),
        (
            "probeInterval",
            running.probe_interval != new.probe_interval,
        ),
        (
            "errorLogWindow",
            running.error_log_window != new.error_log_window,
        ),
        (
            "errorLogMaxKeys",
            running.error_log_max_keys != new.error_log_max_keys,
        ),
        (
            "audit (on/off, path, stdout, rotation, onFailure, queueSize, queueBytes, maxPayloadBytes)",
            audit_sinks(running) != audit_sinks(new),
        ),
        ("policies (the directory)", running.policies != new.policies),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("criguard.yaml");
        std::fs::write(&path, yaml).unwrap();
        Config::load(Some(&path), Overrides::default()).unwrap()
    }

    #[test]
    fn only_what_cannot_change_while_serving_is_named() {
        let running = config("listen: /run/criguard/criguard.sock\nlogLevel: info\n");
        let same_but_reloadable = config(
            "listen: /run/criguard/criguard.sock\nlogLevel: debug\nlimits: [{name: all, rate: 5}]\n",
        );
        assert!(restart_only_changes(&running, &same_but_reloadable).is_empty());
        let moved = config(
            "listen: /run/criguard/other.sock\nmaxMessageSize: 32MiB\naudit: {stdout: true}\n",
        );
        assert_eq!(
            restart_only_changes(&running, &moved),
            [
                "listeners (paths, modes, groups)",
                "maxMessageSize",
                "audit (on/off, path, stdout, rotation, onFailure, queueSize, queueBytes, maxPayloadBytes)"
            ]
        );
    }
}
