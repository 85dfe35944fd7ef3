//! One log line per finished call: a WARN line for each failure (method, gRPC code, message,
//! latency), successes at DEBUG. It sits above the status responder, so it also sees the
//! statuses that criguard made itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tonic::Code;

use crate::proxy::body::{Outcome, StatusBody, StatusObserver};
use crate::proxy::rpc::Rpc;

/// Layer for [`CallLog`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CallLogLayer;

impl<S> tower::Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog { inner }
    }
}

/// Logs how each call ended, once its answer is complete.
#[derive(Clone, Debug)]
pub struct CallLog<S> {
    inner: S,
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = request.extensions().get::<Rpc>().cloned();
        CallLogFuture {
            inner: self.inner.call(request),
            record: Some(CallRecord {
                rpc,
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
    start: Instant,
}

impl StatusObserver for CallRecord {
    fn on_end(self, outcome: Outcome) {
        let latency_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let path = self.rpc.as_ref().map_or("", |rpc| &rpc.path);
        let code = outcome.code;
        match code {
            Code::Ok => {
                tracing::debug!(method = path, code = ?code, latency_ms, "call finished")
            }
            Code::Cancelled => {
                tracing::debug!(method = path, code = ?code, latency_ms, "call cancelled")
            }
            _ => tracing::warn!(
                method = path,
                code = ?code,
                message = outcome.message.as_deref().unwrap_or(""),
                latency_ms,
                "call failed"
            ),
        }
    }
}
