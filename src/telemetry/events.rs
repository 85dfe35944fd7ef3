//! Events that criguard both logs and counts: one function each, so that the log line and the
//! metric always describe the same thing and a search for either finds the other. Metric
//! names live in `metrics.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::{
    AUDIT_EVENTS_TOTAL, CONFIG_LAST_RELOAD_SUCCESSFUL, CONFIG_RELOAD_TOTAL, POLICY_DECISIONS_TOTAL,
    POLICY_RELOAD_TOTAL, RUNTIME_CONNECTS_TOTAL,
};
use crate::policy::file::{Mode, PolicyError};
use crate::policy::{Finding, FindingKind};
use crate::proxy::error::RuntimeError;
use crate::proxy::rpc::Rpc;

/// An audit event that could not be queued: the writer has stopped.
pub fn audit_event_lost(audit_id: &uuid::Uuid, rpc: &Rpc) {
    metrics::counter!(AUDIT_EVENTS_TOTAL, "result" => "failed").increment(1);
    tracing::error!(audit_id = %audit_id, method = rpc.method_name(), "audit event lost: the audit writer has stopped");
}

/// The policy directory was read again and its policies put in force.
pub fn policies_reloaded(dir: &Path, names: &[Arc<str>]) {
    metrics::counter!(POLICY_RELOAD_TOTAL, "result" => "success").increment(1);
    tracing::info!(dir = %dir.display(), policies = ?names, "policies reloaded");
}

/// The policy directory could not be read again; the policies in force stay.
pub fn policy_reload_failed(err: &PolicyError) {
    metrics::counter!(POLICY_RELOAD_TOTAL, "result" => "failure").increment(1);
    tracing::error!(file = %err.file.display(), key = %err.key, problem = %err.problem, "policy reload failed; the policies in force stay");
}

/// A configuration reload (SIGHUP) and how it ended.
pub fn config_reloaded<E: std::fmt::Display>(outcome: Result<(), &E>) {
    let result = if outcome.is_ok() {
        "success"
    } else {
        "failure"
    };
    metrics::counter!(CONFIG_RELOAD_TOTAL, "result" => result).increment(1);
    metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(f64::from(u8::from(outcome.is_ok())));
    if let Err(err) = outcome {
        tracing::error!(error = %err, "configuration reload failed; the running configuration stays");
    }
}

/// A connection to a runtime endpoint was made.
pub fn runtime_connected(endpoint: &str) {
    metrics::counter!(RUNTIME_CONNECTS_TOTAL, "endpoint" => endpoint.to_string(), "result" => "ok")
        .increment(1);
    tracing::info!(endpoint, "connected to runtime");
}

/// A connection to a runtime endpoint failed; the next try waits `retry_in`.
pub fn runtime_unreachable(endpoint: &str, err: &RuntimeError, retry_in: Duration) {
    metrics::counter!(RUNTIME_CONNECTS_TOTAL, "endpoint" => endpoint.to_string(), "result" => "error")
        .increment(1);
    tracing::warn!(endpoint, error = %err, ?retry_in, "runtime unreachable");
}

/// A policy's finding on a call: counted by policy, rule, decision and mode; a warning in the
/// log for `warn` mode and for rules that could not be evaluated without refusing the call.
pub fn policy_finding(finding: &Finding, rpc: &Rpc) {
    let decision = match (&finding.outcome, finding.refuses()) {
        (_, true) => "deny",
        (FindingKind::Error(_), false) => "error",
        (FindingKind::Violation(_), false) => "violation",
    };
    metrics::counter!(
        POLICY_DECISIONS_TOTAL,
        "policy" => finding.policy.clone(),
        "rule" => finding.rule.clone(),
        "decision" => decision,
        "mode" => finding.mode.as_str()
    )
    .increment(1);
    if finding.mode == Mode::Warn
        || (!finding.refuses() && matches!(finding.outcome, FindingKind::Error(_)))
    {
        let text = finding.describe();
        tracing::warn!(method = rpc.method_name(), policy = %finding.policy, rule = %finding.rule, mode = finding.mode.as_str(), "{text}");
    }
}
