//! Prometheus metrics per call: finished calls by gRPC code, latency to the end of the answer,
//! calls and streams in flight, body bytes each way. It sits at the top of the stack, so it
//! counts the statuses criguard makes itself as well as the runtime's.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tonic::Code;

use crate::proxy::body::{Outcome, RequestStats, StatusBody, StatusObserver};
use crate::proxy::rpc::{Method, Rpc, Service};
use crate::proxy::status;
use crate::telemetry::metrics as names;

/// Layer for [`CallMetrics`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CallMetricsLayer;

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> CallMetrics<S> {
        CallMetrics { inner }
    }
}

/// Records the metrics of each call once its answer has ended.
#[derive(Clone, Debug)]
pub struct CallMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: http_body::Body,
{
    type Response = http::Response<StatusBody<RB, CallRecord>>;
    type Error = S::Error;
    type Future = CallMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = match request.extensions().get::<Rpc>() {
            Some(rpc) => {
                if rpc.method == Method::Unknown {
                    note_unknown_method(rpc);
                }
                (rpc.service, rpc.method)
            }
            None => (Service::Other, Method::Unknown),
        };
        CallMetricsFuture {
            inner: self.inner.call(request),
            record: Some(CallRecord::start(service, method)),
        }
    }
}

/// Logs each unknown method name once (up to a bound), since metrics only say `unknown`.
fn note_unknown_method(rpc: &Rpc) {
    static SEEN: Mutex<Option<HashSet<Box<str>>>> = Mutex::new(None);
    const MAX_NAMES: usize = 256;
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.len() < MAX_NAMES && seen.insert(rpc.path.clone()) {
        tracing::info!(method = %rpc.path, "forwarding a method criguard's proto does not know; metrics count it as method=\"unknown\"");
    }
}

pin_project! {
    /// Future of [`CallMetrics`].
    pub struct CallMetricsFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
    }
}

impl<F, RB, E> Future for CallMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: http_body::Body,
{
    type Output = Result<http::Response<StatusBody<RB, CallRecord>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut record = this.record.take().expect("polled after completion");
        record.request_stats = response.extensions().get::<RequestStats>().cloned();
        let trailers_only = status::read_code(response.headers()).is_some();
        if record.method.is_server_streaming() && !trailers_only {
            metrics::gauge!(names::STREAMS_ACTIVE, "method" => record.method.as_str())
                .increment(1.0);
            record.streaming = true;
        }
        Poll::Ready(Ok(StatusBody::wrap(response, record)))
    }
}

/// One call, from its start to the end of its answer. Dropped without an end (the caller went
/// away before the answer started), it counts as CANCELLED.
#[derive(Debug)]
pub struct CallRecord {
    service: Service,
    method: Method,
    start: Instant,
    streaming: bool,
    request_stats: Option<RequestStats>,
    ended: bool,
}

impl CallRecord {
    fn start(service: Service, method: Method) -> CallRecord {
        metrics::gauge!(names::REQUESTS_IN_FLIGHT, "service" => service.as_str(), "method" => method.as_str())
            .increment(1.0);
        CallRecord {
            service,
            method,
            start: Instant::now(),
            streaming: false,
            request_stats: None,
            ended: false,
        }
    }

    fn end(&mut self, code: Code, response_bytes: u64) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let (service, method) = (self.service.as_str(), self.method.as_str());
        metrics::counter!(names::REQUESTS_TOTAL, "service" => service, "method" => method, "code" => code_name(code))
            .increment(1);
        metrics::histogram!(names::REQUEST_DURATION, "service" => service, "method" => method)
            .record(self.start.elapsed().as_secs_f64());
        let request_bytes = self.request_stats.as_ref().map_or(0, RequestStats::bytes);
        metrics::counter!(names::MESSAGE_BYTES_TOTAL, "method" => method, "direction" => "request")
            .increment(request_bytes);
        metrics::counter!(names::MESSAGE_BYTES_TOTAL, "method" => method, "direction" => "response")
            .increment(response_bytes);
        // Last, so that a scrape never sees a call gone from in-flight but not yet counted.
        metrics::gauge!(names::REQUESTS_IN_FLIGHT, "service" => service, "method" => method)
            .decrement(1.0);
        if self.streaming {
            metrics::gauge!(names::STREAMS_ACTIVE, "method" => method).decrement(1.0);
        }
    }
}

impl StatusObserver for CallRecord {
    fn on_end(mut self, outcome: Outcome) {
        self.end(outcome.code, outcome.response_bytes);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.end(Code::Cancelled, 0);
    }
}

/// gRPC code names as grpc-go prints them (`OK`, `NotFound`, ...): the `code` label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}
