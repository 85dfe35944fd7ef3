//! One log line per finished call: a WARN line for each failure (method, the object it was
//! about, gRPC code, message, latency), successes at DEBUG. It sits above the status responder,
//! so it also sees the statuses that criguard made itself. Identical failures are reduced (see
//! `log_reduction.rs`): a runtime that keeps failing the same call does not flood the journal.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tonic::Code;

use super::log_reduction::{ErrorLogReducer, LogDecision};
use crate::proxy::body::{Outcome, RequestMessageSlot, StatusBody, StatusObserver};
use crate::proxy::inspect;
use crate::proxy::rpc::{Method, Rpc};

/// Layer for [`CallLog`].
#[derive(Clone, Debug)]
pub struct CallLogLayer {
    reducer: Arc<Mutex<ErrorLogReducer>>,
}

impl CallLogLayer {
    /// Identical errors are logged once per `window`; at most `max_keys` are remembered.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        CallLogLayer {
            reducer: Arc::new(Mutex::new(ErrorLogReducer::new(window, max_keys))),
        }
    }
}

impl<S> tower::Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog {
            inner,
            reducer: self.reducer.clone(),
        }
    }
}

/// Logs how each call ended, once its answer is complete.
#[derive(Clone, Debug)]
pub struct CallLog<S> {
    inner: S,
    reducer: Arc<Mutex<ErrorLogReducer>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CallLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: http_body::Body,
{
    type Response = http::Response<StatusBody<RB, CallRecord>>;
    type Error = S::Error;
    type Future = CallLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let rpc = request.extensions().get::<Rpc>().cloned();
        let message = RequestMessageSlot::default();
        request.extensions_mut().insert(message.clone());
        CallLogFuture {
            inner: self.inner.call(request),
            record: Some(CallRecord {
                rpc,
                message,
                reducer: self.reducer.clone(),
                start: Instant::now(),
            }),
        }
    }
}

pin_project! {
    /// Future of [`CallLog`].
    pub struct CallLogFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
    }
}

impl<F, RB, E> Future for CallLogFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: http_body::Body,
{
    type Output = Result<http::Response<StatusBody<RB, CallRecord>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let record = this.record.take().expect("polled after completion");
        Poll::Ready(Ok(StatusBody::wrap(response, record)))
    }
}

/// What is known of a call until it ends.
#[derive(Debug)]
pub struct CallRecord {
    rpc: Option<Rpc>,
    message: RequestMessageSlot,
    reducer: Arc<Mutex<ErrorLogReducer>>,
    start: Instant,
}

impl StatusObserver for CallRecord {
    fn on_end(self, outcome: Outcome) {
        let latency_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let (path, method) = self
            .rpc
            .as_ref()
            .map_or(("", Method::Unknown), |rpc| (&*rpc.path, rpc.method));
        // Unknown methods have no object to read; their path keeps them apart.
        let object = match (method, self.message.get()) {
            (Method::Unknown, _) => path,
            (_, Some(message)) => inspect::object_id(method, message),
            (_, None) => "",
        };
        let code = outcome.code;
        let mut reducer = self.reducer.lock().unwrap_or_else(|e| e.into_inner());
        match code {
            Code::Ok => {
                if !reducer.is_empty() {
                    reducer.on_success(method, object);
                }
                tracing::debug!(method = path, object, code = ?code, latency_ms, "call finished")
            }
            Code::Cancelled => {
                tracing::debug!(method = path, object, code = ?code, latency_ms, "call cancelled")
            }
            _ => {
                let error = outcome.message.as_deref().unwrap_or("");
                let decision = reducer.on_error(method, object, error, Instant::now());
                if let LogDecision::Log { suppressed } = decision {
                    tracing::warn!(
                        method = path,
                        object,
                        code = ?code,
                        error,
                        latency_ms,
                        suppressed_since_last = suppressed,
                        "call failed"
                    )
                }
            }
        }
    }
}
