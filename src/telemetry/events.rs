//! Events that criguard both logs and counts: one function each, so that the log line and the
//! metric always describe the same thing and a search for either finds the other. Metric
//! names live in `metrics.rs`. The policies' events are in policy/events.rs, the runtime
//! connection's in proxy/runtime.rs (each module logs what it decides).

use super::metrics::{AUDIT_EVENTS_TOTAL, CONFIG_LAST_RELOAD_SUCCESSFUL, CONFIG_RELOAD_TOTAL};
use crate::proxy::rpc::Rpc;

/// An audit event that could not be queued: the writer has stopped.
pub fn audit_event_lost(audit_id: &uuid::Uuid, rpc: &Rpc) {
    metrics::counter!(AUDIT_EVENTS_TOTAL, "result" => "failed").increment(1);
    tracing::error!(audit_id = %audit_id, method = rpc.method_name(), "audit event lost: the audit writer has stopped");
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
