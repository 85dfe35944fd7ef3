//! Prometheus metrics per call: finished calls by gRPC code, latency to the end of the answer,
//! calls and streams in flight, body bytes each way. It sits at the top of the stack, so it
//! counts the statuses criguard makes itself as well as the runtime's.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};
use tonic::Code;

use super::observe::{Observe, ObserveLayer};
use crate::proxy::body::{Outcome, RequestStats, StatusObserver};
use crate::proxy::rpc::{Method, Rpc, Service};
use crate::proxy::status;
use crate::telemetry::metrics as names;

/// The metrics layer: [`ObserveLayer`]`<CallMetrics>`.
pub type CallMetricsLayer = ObserveLayer<CallMetrics>;

/// Records the metrics of each call once its answer has ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallMetrics;

impl CallMetrics {
    pub fn layer() -> CallMetricsLayer {
        ObserveLayer::new(CallMetrics)
    }
}

impl Observe for CallMetrics {
    type Record = MetricsRecord;

    fn start<B>(&self, request: &mut http::Request<B>) -> MetricsRecord {
        let (service, method) = match request.extensions().get::<Rpc>() {
            Some(rpc) => {
                if rpc.method == Method::Unknown {
                    note_unknown_method(rpc);
                }
                (rpc.service, rpc.method)
            }
            None => (Service::Other, Method::Unknown),
        };
        MetricsRecord::start(service, method)
    }

    fn on_response<B>(record: &mut MetricsRecord, response: &http::Response<B>) {
        record.request_stats = response.extensions().get::<RequestStats>().cloned();
        let trailers_only = status::read_code(response.headers()).is_some();
        if record.metrics.method.is_server_streaming() && !trailers_only {
            record.metrics.streams.increment(1.0);
            record.streaming = true;
        }
    }
}

/// Logs each unknown method name once (up to a bound), since metrics only say `unknown`.
fn note_unknown_method(rpc: &Rpc) {
    static SEEN: Mutex<Option<HashSet<std::sync::Arc<str>>>> = Mutex::new(None);
    const MAX_NAMES: usize = 256;
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.len() < MAX_NAMES && seen.insert(rpc.path.clone()) {
        tracing::info!(method = %rpc.path, "forwarding a method criguard's proto does not know; metrics count it as method=\"unknown\"");
    }
}

/// One call, from its start to the end of its answer (CANCELLED when the caller went away
/// first: see `observe.rs`).
#[derive(Debug)]
pub struct MetricsRecord {
    metrics: &'static MethodMetrics,
    start: Instant,
    streaming: bool,
    request_stats: Option<RequestStats>,
}

impl MetricsRecord {
    fn start(service: Service, method: Method) -> MetricsRecord {
        let metrics = MethodMetrics::of(service, method);
        metrics.in_flight.increment(1.0);
        MetricsRecord {
            metrics,
            start: Instant::now(),
            streaming: false,
            request_stats: None,
        }
    }

    fn end(self, code: Code, response_bytes: u64) {
        let metrics = self.metrics;
        metrics.finished(code).increment(1);
        metrics.duration.record(self.start.elapsed().as_secs_f64());
        let request_bytes = self.request_stats.as_ref().map_or(0, RequestStats::bytes);
        metrics.request_bytes.increment(request_bytes);
        metrics.response_bytes.increment(response_bytes);
        // Last, so that a scrape never sees a call gone from in-flight but not yet counted.
        metrics.in_flight.decrement(1.0);
        if self.streaming {
            metrics.streams.decrement(1.0);
        }
    }
}

/// The metrics of one service and method, registered with the recorder on first use: looking
/// labelled metrics up in the registry on every call cost several µs per call.
#[derive(Debug)]
struct MethodMetrics {
    service: Service,
    method: Method,
    in_flight: Gauge,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    streams: Gauge,
    /// Finished calls, by gRPC code (0..=16).
    by_code: [OnceLock<Counter>; 17],
}

impl MethodMetrics {
    fn of(service: Service, method: Method) -> &'static MethodMetrics {
        const SERVICES: usize = 3;
        static TABLE: OnceLock<Box<[OnceLock<MethodMetrics>]>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            (0..SERVICES * (Method::ALL.len() + 1))
                .map(|_| OnceLock::new())
                .collect()
        });
        let index = service as usize * (Method::ALL.len() + 1) + method as usize;
        table[index].get_or_init(|| MethodMetrics::register(service, method))
    }

    fn register(service: Service, method: Method) -> MethodMetrics {
        let (s, m) = (service.as_str(), method.as_str());
        MethodMetrics {
            service,
            method,
            in_flight: metrics::gauge!(names::REQUESTS_IN_FLIGHT, "service" => s, "method" => m),
            duration: metrics::histogram!(names::REQUEST_DURATION, "service" => s, "method" => m),
            request_bytes: metrics::counter!(names::MESSAGE_BYTES_TOTAL, "method" => m, "direction" => "request"),
            response_bytes: metrics::counter!(names::MESSAGE_BYTES_TOTAL, "method" => m, "direction" => "response"),
            streams: metrics::gauge!(names::STREAMS_ACTIVE, "method" => m),
            by_code: Default::default(),
        }
    }

    fn finished(&self, code: Code) -> &Counter {
        let slot = &self.by_code[(code as usize).min(16)];
        slot.get_or_init(|| {
            metrics::counter!(names::REQUESTS_TOTAL, "service" => self.service.as_str(), "method" => self.method.as_str(), "code" => status::code_name(code))
        })
    }
}

impl StatusObserver for MetricsRecord {
    fn on_end(self, outcome: Outcome) {
        self.end(outcome.code, outcome.response_bytes);
    }
}
