//! Reads the first message of each known CRI call ahead of forwarding, so that layers can
//! decode and inspect it, while the runtime still receives the caller's exact bytes.
//!
//! Methods our proto does not know are never read ahead: nothing could decode them, and a
//! future streaming method must not wait on us. Their messages are still held to the size limit
//! as they stream through.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body;

use crate::proxy::body::{RequestBody, RequestMessageSlot, read_request_head};
use crate::proxy::error::ProxyError;
use crate::proxy::rpc::{Method, Rpc};

/// Layer for [`ReadHead`].
#[derive(Clone, Copy, Debug)]
pub struct ReadHeadLayer {
    max_message_size: usize,
}

impl ReadHeadLayer {
    pub fn new(max_message_size: usize) -> Self {
        ReadHeadLayer { max_message_size }
    }
}

impl<S> tower::Layer<S> for ReadHeadLayer {
    type Service = ReadHead<S>;

    fn layer(&self, inner: S) -> ReadHead<S> {
        ReadHead {
            inner,
            max_message_size: self.max_message_size,
        }
    }
}

/// Puts the first request message in the extensions as a
/// [`RequestMessage`](super::body::RequestMessage).
#[derive(Clone, Debug)]
pub struct ReadHead<S> {
    inner: S,
    max_message_size: usize,
}

impl<S, B> tower::Service<http::Request<B>> for ReadHead<S>
where
    S: tower::Service<http::Request<RequestBody<B>>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The inner service was made ready for this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.max_message_size;
        let known = request
            .extensions()
            .get::<Rpc>()
            .is_some_and(|rpc| rpc.method != Method::Unknown);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let body = if known {
                let (message, body) = read_request_head(body, limit).await?;
                if let Some(message) = message {
                    if let Some(slot) = parts.extensions.get::<RequestMessageSlot>() {
                        slot.set(&message);
                    }
                    parts.extensions.insert(message);
                }
                body
            } else {
                RequestBody::streaming(body, limit)
            };
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}
