//! The policies' events, logged and counted in one function each (as telemetry/events.rs does
//! for the rest), so that the log line and the metric always describe the same thing.

use std::path::Path;
use std::sync::Arc;

use super::file::{Mode, PolicyError};
use super::{Finding, FindingKind};
use crate::proxy::rpc::Rpc;
use crate::telemetry::metrics::{POLICY_DECISIONS_TOTAL, POLICY_RELOAD_TOTAL};

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
