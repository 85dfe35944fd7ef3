//! Every metric criguard exports: names, descriptions, units and histogram buckets in one
//! place, described at start-up. Layers record through the `metrics` macros with these names.
//!
//! Label values stay bounded: service and method come from the proto (methods it does not know
//! count as `unknown`), codes from the gRPC code list, endpoints from the configuration.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::proxy::rpc::Method;

pub const REQUESTS_TOTAL: &str = "criguard_requests_total";
pub const REQUEST_DURATION: &str = "criguard_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "criguard_requests_in_flight";
pub const STREAMS_ACTIVE: &str = "criguard_streams_active";
pub const MESSAGE_BYTES_TOTAL: &str = "criguard_message_bytes_total";
pub const RUNTIME_UP: &str = "criguard_runtime_up";
// Counted by the proxy core, which names what it counts itself (it imports nothing above it).
pub use crate::proxy::authority::CALLER_AUTHORITY_REWRITES_TOTAL;
pub use crate::proxy::runtime::RUNTIME_CONNECTS_TOTAL;
pub const BUILD_INFO: &str = "criguard_build_info";
pub const ERROR_LOGS_SUPPRESSED_TOTAL: &str = "criguard_error_logs_suppressed_total";
pub const ERROR_LOG_KEYS_EVICTED_TOTAL: &str = "criguard_error_log_keys_evicted_total";
pub const AUDIT_EVENTS_TOTAL: &str = "criguard_audit_events_total";
pub const AUDIT_QUEUE_BYTES: &str = "criguard_audit_queue_bytes";
pub const AUDIT_QUEUE_WAIT_SECONDS: &str = "criguard_audit_queue_wait_seconds";
pub const CONFIG_RELOAD_TOTAL: &str = "criguard_config_reload_total";
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "criguard_config_last_reload_successful";
pub const POLICY_DECISIONS_TOTAL: &str = "criguard_policy_decisions_total";
pub const POLICY_EVALUATION_SECONDS: &str = "criguard_policy_evaluation_duration_seconds";
pub const POLICY_RELOAD_TOTAL: &str = "criguard_policy_reload_total";
pub const RATELIMIT_DECISIONS_TOTAL: &str = "criguard_ratelimit_decisions_total";
pub const RATELIMIT_WAIT_SECONDS: &str = "criguard_ratelimit_wait_seconds";
pub const TRACE_SPANS_EXPORTED_TOTAL: &str = "criguard_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "criguard_trace_spans_dropped_total";

/// Buckets of `criguard_policy_evaluation_duration_seconds`: 1 µs to 10 ms.
pub const EVALUATION_BUCKETS: [f64; 9] = [1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2];

/// Buckets of `criguard_ratelimit_wait_seconds` and `criguard_audit_queue_wait_seconds`: 1 ms
/// to 10 s.
pub const WAIT_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Buckets of `criguard_request_duration_seconds`: 0.5 ms × 2.5^k up to 466 s, then 600 s.
/// Like the kubelet's runtime-operation buckets (5 ms × 2.5^k) with the lower end extended to
/// sub-millisecond calls such as Version and Status, and the upper end to the longest pulls.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.0005,
    0.00125,
    0.003125,
    0.0078125,
    0.01953125,
    0.048828125,
    0.1220703125,
    0.30517578125,
    0.762939453125,
    1.9073486328125,
    4.76837158203125,
    11.920928955078125,
    29.802322387695312,
    74.50580596923828,
    186.2645149230957,
    465.66128730773926,
    600.0,
];

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// How often the samples recorded into histograms are folded into their buckets.
///
/// The recorder keeps every sample until then: at 50 000 calls/s that is about 0.5 MiB a
/// second. Without upkeep only a scrape folds them, so a criguard nobody scrapes grows forever.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder, describes every metric and starts the recorder's upkeep
/// (a thread of its own, so that folding samples never stalls calls). Call once, at start-up.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RATELIMIT_WAIT_SECONDS.into()), &WAIT_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(AUDIT_QUEUE_WAIT_SECONDS.into()),
            &WAIT_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(POLICY_EVALUATION_SECONDS.into()),
            &EVALUATION_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("criguard-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(InstallError::Upkeep)?;
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "CRI calls that finished, by service, method and gRPC code (OK, NotFound, ...)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a CRI call's arrival to the end of its answer, by service and method."
    );
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        "CRI calls under way, by service and method."
    );
    describe_gauge!(
        STREAMS_ACTIVE,
        "Open server streams (GetContainerEvents, ...), by method."
    );
    describe_counter!(
        MESSAGE_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of request and response bodies, by method and direction."
    );
    describe_gauge!(
        RUNTIME_UP,
        "1 when the last readiness probe of the runtime endpoint succeeded, else 0."
    );
    describe_counter!(
        RUNTIME_CONNECTS_TOTAL,
        "Connection attempts to the runtime endpoint, by result (ok, error)."
    );
    describe_counter!(
        CALLER_AUTHORITY_REWRITES_TOTAL,
        "Caller connections whose :authority the HTTP/2 server would refuse (a socket path, as kubelets up to 1.30 send), served with their header blocks rewritten."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels say which criguard runs.");
    describe_counter!(
        ERROR_LOGS_SUPPRESSED_TOTAL,
        "Log lines of failed calls held back as identical to one logged within the window, by method."
    );
    describe_counter!(
        ERROR_LOG_KEYS_EVICTED_TOTAL,
        "Keys dropped by identical-error log reduction to stay within its bound (errorLogMaxKeys)."
    );
    describe_counter!(
        AUDIT_EVENTS_TOTAL,
        "Audit events by result: written, or failed (lost: the file could not be written)."
    );
    describe_gauge!(
        AUDIT_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of requests and answers queued for the audit writer (bounded by audit.queueBytes)."
    );
    describe_histogram!(
        AUDIT_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Calls that waited for room in the audit queue, by how long: the writer fell behind (backpressure; no event is dropped)."
    );
    describe_counter!(
        POLICY_DECISIONS_TOTAL,
        "Policy decisions by policy, rule, decision (allow, deny, violation, error) and mode (enforce, audit, warn)."
    );
    describe_histogram!(
        POLICY_EVALUATION_SECONDS,
        Unit::Seconds,
        "Time to evaluate the policies that match a call."
    );
    describe_counter!(
        CONFIG_RELOAD_TOTAL,
        "Configuration reloads (SIGHUP) by result: success, failure (the running configuration stays)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 when the last configuration reload succeeded (or none was tried), 0 when it failed."
    );
    describe_counter!(
        POLICY_RELOAD_TOTAL,
        "Policy reloads (SIGHUP, a change in the policy directory) by result: success, failure (the old set stays)."
    );
    describe_counter!(
        RATELIMIT_DECISIONS_TOTAL,
        "Calls a rate limit looked at, by limit and outcome: allowed, delayed (waited, then allowed), rejected."
    );
    describe_histogram!(
        RATELIMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time calls waited for a rate limit (action: wait) before they went on, by limit."
    );
    describe_counter!(
        TRACE_SPANS_EXPORTED_TOTAL,
        "Spans the OTLP collector took (tracing on)."
    );
    describe_counter!(
        TRACE_SPANS_DROPPED_TOTAL,
        "Spans lost, by reason: queue_full (the export queue was full), export_failed (the collector was down, slow or refused), shut_down (tracing was turned off first). Calls are never held for a span."
    );
    // Streams start at zero, so that dashboards and alerts find the series before the first.
    for method in Method::ALL.iter().filter(|m| m.is_server_streaming()) {
        metrics::gauge!(STREAMS_ACTIVE, "method" => method.as_str()).set(0.0);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => env!("CRIGUARD_REVISION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_buckets_grow_by_two_and_a_half_from_half_a_millisecond_to_ten_minutes() {
        assert_eq!(DURATION_BUCKETS[0], 0.0005);
        for pair in DURATION_BUCKETS[..16].windows(2) {
            assert!((pair[1] / pair[0] - 2.5).abs() < 1e-9);
        }
        assert_eq!(*DURATION_BUCKETS.last().unwrap(), 600.0);
    }
}
