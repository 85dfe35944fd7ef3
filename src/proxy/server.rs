//! Accepts callers on the listening sockets and serves each connection with HTTP/2, passing every
//! call to the stack with who is calling and through which listener. A connection that does not speak HTTP/2 (garbage, broken frames) is
//! closed on its own; every other connection goes on. At shutdown: stop accepting, tell every
//! connection to finish (GOAWAY), wait for in-flight calls up to the grace period.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use super::identity::Caller;
use crate::layers::access::Listener;

/// Streams one caller may have open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1000;
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// How long to pause accepting after an accept error such as "too many open files".
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves the listeners until `shutdown` fires, then drains within `grace`.
pub async fn serve<S, B>(
    listeners: Vec<(UnixListener, Arc<ArcSwap<Listener>>)>,
    stack: S,
    shutdown: CancellationToken,
    grace: Duration,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        // Transparent: answer with the runtime's headers only (grpc-go sends no `date`).
        .auto_date_header(false)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buf_size(128 << 10);
    let mut accepting = tokio_stream::StreamMap::new();
    let mut configured = Vec::new();
    for (index, (listener, access)) in listeners.into_iter().enumerate() {
        accepting.insert(index, UnixListenerStream::new(listener));
        configured.push(access);
    }
    loop {
        let (index, stream) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accepting.next() => match accepted {
                Some((index, Ok(stream))) => (index, stream),
                Some((_, Err(err))) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
                None => break,
            },
        };
        // Who calls is read once per connection; each of its requests carries it, and the
        // listener's settings in force when the request arrives (a reload may change them).
        let caller = Caller::of(&stream);
        let access = configured[index].clone();
        let service = tower::ServiceExt::map_request(
            stack.clone(),
            move |mut request: http::Request<Incoming>| {
                let extensions = request.extensions_mut();
                if let Some(caller) = &caller {
                    extensions.insert(caller.clone());
                }
                extensions.insert(access.load_full());
                request
            },
        );
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "caller connection closed with an error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(accepting);
    let connections = open.load(Ordering::Relaxed);
    tracing::info!(connections, grace = ?grace, "stopped accepting; draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all calls finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(
            connections = open.load(Ordering::Relaxed),
            "grace period over; cutting the remaining calls"
        ),
    }
}
