//! The one layer where the errors of the layers below become gRPC statuses (mapped in
//! `proxy/status.rs`): a caller always gets a real gRPC status, never an HTTP error page.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::proxy::body::{ResponseBody, error_response};
use crate::proxy::error::ProxyError;

/// Layer for [`RespondWithStatus`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RespondWithStatusLayer;

impl<S> tower::Layer<S> for RespondWithStatusLayer {
    type Service = RespondWithStatus<S>;

    fn layer(&self, inner: S) -> RespondWithStatus<S> {
        RespondWithStatus {
            inner,
            not_ready: None,
        }
    }
}

/// Answers every error of the layers below with its gRPC status; never fails itself.
#[derive(Clone, Debug)]
pub struct RespondWithStatus<S> {
    inner: S,
    /// A readiness error of the layers below, answered on the next call.
    not_ready: Option<ProxyError>,
}

impl<S, Req, B> tower::Service<Req> for RespondWithStatus<S>
where
    S: tower::Service<Req, Response = http::Response<ResponseBody<B>>, Error = ProxyError>,
{
    type Response = http::Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = RespondFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_none()
            && let Err(err) = ready!(self.inner.poll_ready(cx))
        {
            self.not_ready = Some(err);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.not_ready.take() {
            Some(err) => RespondFuture::Failed { err: Some(err) },
            None => RespondFuture::Called {
                inner: self.inner.call(request),
            },
        }
    }
}

pin_project! {
    /// Future of [`RespondWithStatus`].
    #[project = RespondFutureProj]
    pub enum RespondFuture<F> {
        Called { #[pin] inner: F },
        Failed { err: Option<ProxyError> },
    }
}

impl<F, B> Future for RespondFuture<F>
where
    F: Future<Output = Result<http::Response<ResponseBody<B>>, ProxyError>>,
{
    type Output = Result<http::Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.project() {
            RespondFutureProj::Called { inner } => ready!(inner.poll(cx)),
            RespondFutureProj::Failed { err } => Err(err.take().expect("polled after completion")),
        };
        Poll::Ready(Ok(result.unwrap_or_else(|err| error_response(&err))))
    }
}
