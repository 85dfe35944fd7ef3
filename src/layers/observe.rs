//! The mechanism shared by the layers that watch calls to their end (spans, metrics, the call
//! log): a record is made when a call arrives, sees the answer's head, and is told the final
//! gRPC status once the answer body has ended (see [`StatusBody`]), or CANCELLED when the
//! caller goes away first, before or after the answer began.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::proxy::body::{Outcome, StatusBody, StatusObserver};

/// Makes the record of one call. Implemented by each observing layer's settings.
pub trait Observe: Clone {
    type Record: StatusObserver;

    /// Called as the call arrives; may put what later layers must fill in the extensions.
    fn start<B>(&self, request: &mut http::Request<B>) -> Self::Record;

    /// Called when the head of the answer is there, before its body flows.
    fn on_response<B>(_record: &mut Self::Record, _response: &http::Response<B>) {}
}

/// Layer for [`Observed`].
#[derive(Clone, Debug)]
pub struct ObserveLayer<O> {
    observe: O,
}

impl<O> ObserveLayer<O> {
    pub fn new(observe: O) -> Self {
        ObserveLayer { observe }
    }
}

impl<S, O: Clone> tower::Layer<S> for ObserveLayer<O> {
    type Service = Observed<S, O>;

    fn layer(&self, inner: S) -> Observed<S, O> {
        Observed {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// Passes each call on and wraps its answer body so that the record learns how it ended.
#[derive(Clone, Debug)]
pub struct Observed<S, O> {
    inner: S,
    observe: O,
}

impl<S, O, B, RB> tower::Service<http::Request<B>> for Observed<S, O>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    O: Observe,
    RB: http_body::Body,
{
    type Response = http::Response<StatusBody<RB, O::Record>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future, O>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let record = self.observe.start(&mut request);
        ObservedFuture {
            inner: self.inner.call(request),
            record: Some(record),
            _observe: std::marker::PhantomData,
        }
    }
}

pin_project! {
    /// Future of [`Observed`].
    pub struct ObservedFuture<F, O: Observe> {
        #[pin]
        inner: F,
        record: Option<O::Record>,
        _observe: std::marker::PhantomData<fn() -> O>,
    }

    /// Dropped before the answer's head came (the caller went away), the record is told the
    /// call was cancelled; after it, the answer's [`StatusBody`] tells it how the call ended.
    impl<F, O: Observe> PinnedDrop for ObservedFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(record) = this.project().record.take() {
                record.on_end(Outcome::cancelled());
            }
        }
    }
}

impl<F, O, RB, E> Future for ObservedFuture<F, O>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    O: Observe,
    RB: http_body::Body,
{
    type Output = Result<http::Response<StatusBody<RB, O::Record>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut record = this.record.take().expect("polled after completion");
        O::on_response(&mut record, &response);
        Poll::Ready(Ok(StatusBody::wrap(response, record)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tonic::Code;
    use tower::{Layer, Service};

    use super::*;

    /// Keeps the codes its records are told.
    #[derive(Clone, Default)]
    struct Codes(Arc<Mutex<Vec<Code>>>);

    struct Record(Codes);

    impl StatusObserver for Record {
        fn on_end(self, outcome: Outcome) {
            self.0.0.lock().unwrap().push(outcome.code);
        }
    }

    impl Observe for Codes {
        type Record = Record;

        fn start<B>(&self, _request: &mut http::Request<B>) -> Record {
            Record(self.clone())
        }
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_began_is_told_cancelled_once() {
        let codes = Codes::default();
        // The runtime never answers.
        let never = tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<
                Result<http::Response<http_body_util::Empty<bytes::Bytes>>, Infallible>,
            >()
        });
        let mut service = ObserveLayer::new(codes.clone()).layer(never);
        let call = service.call(http::Request::new(()));
        assert!(codes.0.lock().unwrap().is_empty());
        drop(call);
        assert_eq!(*codes.0.lock().unwrap(), [Code::Cancelled]);
    }
}
