//! The runtime's answer on its way to the caller, untouched, ended with a gRPC status of
//! criguard's when a message is over the limit, the runtime connection breaks, or criguard
//! shuts down a long stream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::framing::FrameScanner;
use super::request::too_large;
use crate::proxy::error::{Direction, ProxyError, RuntimeError};
use crate::proxy::status;

pin_project! {
    /// The runtime's answer on its way to the caller.
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// No body: a trailers-only answer made by criguard.
        Empty,
        /// The runtime's body, streamed through.
        Runtime {
            #[pin]
            inner: B,
            scanner: FrameScanner,
            endpoint: std::sync::Arc<str>,
            // Ends a long-lived stream at shutdown; only set for streaming methods.
            shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
            // A frame to send before polling `inner` again.
            pending: Option<Frame<Bytes>>,
            done: bool,
        },
    }
}

impl<B> ResponseBody<B> {
    pub fn empty() -> Self {
        ResponseBody::Empty
    }

    /// Streams `inner` through, ending it with RESOURCE_EXHAUSTED if a message is over `limit`.
    pub fn runtime(inner: B, limit: usize, endpoint: std::sync::Arc<str>) -> Self {
        ResponseBody::Runtime {
            inner,
            scanner: FrameScanner::new(limit),
            endpoint,
            shutdown: None,
            pending: None,
            done: false,
        }
    }

    /// Ends the stream with UNAVAILABLE ("criguard is shutting down") when `shutdown` fires,
    /// so that the caller reconnects at once instead of waiting on a dead stream.
    pub fn end_on(mut self, shutdown: WaitForCancellationFutureOwned) -> Self {
        if let ResponseBody::Runtime { shutdown: slot, .. } = &mut self {
            *slot = Some(Box::pin(shutdown));
        }
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let ResponseBodyProj::Runtime {
            inner,
            scanner,
            endpoint,
            shutdown,
            pending,
            done,
        } = self.project()
        else {
            return Poll::Ready(None);
        };
        if let Some(frame) = pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if *done {
            return Poll::Ready(None);
        }
        if let Some(signal) = shutdown
            && signal.as_mut().poll(cx).is_ready()
        {
            *done = true;
            let trailers = status::error_trailers(&ProxyError::ShuttingDown);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = match ready!(inner.poll_frame(cx)) {
            None => {
                *done = true;
                return Poll::Ready(None);
            }
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                *done = true;
                let err = ProxyError::from(RuntimeError::ConnectionLost {
                    endpoint: endpoint.clone(),
                    reason: err.to_string(),
                });
                return Poll::Ready(Some(Ok(Frame::trailers(status::error_trailers(&err)))));
            }
        };
        let Some(data) = frame.data_ref() else {
            *done = true;
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(over) = scanner.scan(data) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // Forward the complete messages before the oversized one, then end with the status.
        *done = true;
        let trailers = Frame::trailers(status::error_trailers(&too_large(
            Direction::Response,
            over,
            scanner,
        )));
        if over.offset == 0 {
            return Poll::Ready(Some(Ok(trailers)));
        }
        let before = data.slice(..over.offset);
        *pending = Some(trailers);
        Poll::Ready(Some(Ok(Frame::data(before))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Runtime {
                inner,
                pending,
                done,
                ..
            } => pending.is_none() && (*done || inner.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Runtime { inner, .. } => inner.size_hint(),
        }
    }
}

/// A trailers-only gRPC response (HTTP 200, the status in its headers) for `err`.
pub fn error_response<B>(err: &ProxyError) -> http::Response<ResponseBody<B>> {
    let mut response = http::Response::new(ResponseBody::empty());
    *response.headers_mut() = status::error_headers(err);
    response
}
