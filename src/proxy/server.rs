//! Accepts callers on the listening sockets and serves each connection with HTTP/2 (the `h2`
//! crate, as on the runtime side), passing every call to the stack with who is calling and
//! through which listener. A connection that does not speak HTTP/2 (garbage, broken frames) is
//! closed on its own; every other connection goes on. A caller that resets a stream cancels
//! its call.
//!
//! At shutdown, in this order: stop accepting and close our handle on each listening socket
//! (a socket passed by systemd stays open in systemd, whose backlog the next criguard accepts
//! from); then tell every connection to finish (GOAWAY) and wait for the calls in flight up to
//! the grace period. A connection accepted before that is always served: its HTTP/2 handshake
//! completes before its GOAWAY, so a caller never sees a connection closed before the server's
//! preface (grpc-go would back off for a second and fail its calls meanwhile).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::authority::{CallerStream, EdgeLimits};
use super::h2io::{RecvBody, send_body};
use super::identity::Caller;
use super::listener::ListenerAccess;
use crate::systemd::Watchdog;

/// Streams one caller may have open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1000;
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Answer bytes buffered per stream towards a caller that reads slowly.
const MAX_SEND_BUFFER: usize = 128 << 10;
/// Request headers and metadata of one call, at most.
const MAX_HEADER_LIST_SIZE: u32 = 16 << 10;
/// Calls taken from one connection before the others (and the runtime connection) get a turn:
/// measured with the load generator, 8 keeps a burst of 64 calls moving through criguard and
/// the runtime at once (Version at 64: +0.04 of throughput ratio over taking the whole burst).
const CALLS_PER_TURN: usize = 8;
/// How long to pause accepting after an accept error such as "too many open files".
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a connection accepted before shutdown may still take to send its preface.
const DRAIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The limits h2's server reads callers' frames with, which the caller's edge shares.
pub const EDGE_LIMITS: EdgeLimits = EdgeLimits {
    max_frame_size: MAX_FRAME_SIZE,
    max_header_list_size: MAX_HEADER_LIST_SIZE,
};

/// h2's server as criguard serves callers with it.
pub fn caller_h2() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(EDGE_LIMITS.max_frame_size)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(EDGE_LIMITS.max_header_list_size);
    builder
}

/// Serves the listeners until `shutdown` fires, then drains within `grace`. `watchdog` is
/// fed from the accept loop, so it stops when the loop is stuck.
pub async fn serve<S, B>(
    listeners: Vec<(UnixListener, Arc<ArcSwap<ListenerAccess>>)>,
    stack: S,
    shutdown: CancellationToken,
    grace: Duration,
    watchdog: Option<Watchdog>,
) where
    S: tower::Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let connections = TaskTracker::new();
    // Connections are told to finish only once nothing more is accepted.
    let drain = CancellationToken::new();
    let mut accepting = tokio_stream::StreamMap::new();
    let mut configured = Vec::new();
    for (index, (listener, access)) in listeners.into_iter().enumerate() {
        accepting.insert(index, UnixListenerStream::new(listener));
        configured.push(access);
    }
    let mut ping = watchdog.as_ref().map(|w| {
        let mut interval = tokio::time::interval(w.every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let (index, stream) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = feed(&mut ping, watchdog.as_ref()) => continue,
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
        let connection = Connection {
            // Who calls is read once per connection; each of its requests carries it.
            caller: Caller::of(&stream),
            access: configured[index].clone(),
            stack: stack.clone(),
        };
        connections.spawn(connection.serve(stream, drain.clone()));
    }
    // Nothing more is accepted: connections waiting in the backlog are the next criguard's.
    drop(accepting);
    connections.close();
    tracing::info!(connections = connections.len(), grace = ?grace, "stopped accepting; draining");
    drain.cancel();
    let mut over = std::pin::pin!(tokio::time::sleep(grace));
    loop {
        tokio::select! {
            _ = connections.wait() => {
                tracing::info!("all calls finished");
                break;
            }
            _ = &mut over => {
                tracing::warn!(
                    connections = connections.len(),
                    "grace period over; cutting the remaining calls"
                );
                break;
            }
            // A drain may take longer than the watchdog's interval.
            _ = feed(&mut ping, watchdog.as_ref()) => {}
        }
    }
}

/// Waits for the next watchdog tick and pings; never ends without a watchdog.
async fn feed(ping: &mut Option<tokio::time::Interval>, watchdog: Option<&Watchdog>) {
    match (ping, watchdog) {
        (Some(interval), Some(watchdog)) => {
            interval.tick().await;
            (watchdog.ping)();
        }
        _ => std::future::pending().await,
    }
}

/// One caller's connection: who it is, the listener it came through, and the stack its calls
/// go to.
struct Connection<S> {
    caller: Option<Arc<Caller>>,
    access: Arc<ArcSwap<ListenerAccess>>,
    stack: S,
}

impl<S, B> Connection<S>
where
    S: tower::Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    async fn serve(mut self, stream: UnixStream, drain: CancellationToken) {
        let handshake = caller_h2().handshake::<_, Bytes>(CallerStream::new(stream, EDGE_LIMITS));
        let mut stop = std::pin::pin!(drain.cancelled());
        // An accepted connection is served even when a drain starts now: its handshake
        // completes (within a bound), then it gets its GOAWAY below.
        let late = async {
            drain.cancelled().await;
            tokio::time::sleep(DRAIN_HANDSHAKE_TIMEOUT).await;
        };
        let mut connection = tokio::select! {
            handshake = handshake => match handshake {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::debug!(error = %err, "caller connection closed before HTTP/2 started");
                    return;
                }
            },
            _ = late => {
                tracing::debug!("caller connection sent no preface before the drain ended");
                return;
            }
        };
        let mut draining = false;
        let mut accepted = 0usize;
        loop {
            // Polling for the next stream also drives the connection's I/O for the calls in
            // flight; after GOAWAY it ends once they have all finished.
            let next = tokio::select! {
                next = connection.accept() => next,
                _ = &mut stop, if !draining => {
                    connection.graceful_shutdown();
                    draining = true;
                    continue;
                }
            };
            match next {
                Some(Ok((request, respond))) => {
                    let call = self.call(request.map(RecvBody::new)).await;
                    tokio::spawn(answer(call, respond));
                    accepted += 1;
                    if accepted.is_multiple_of(CALLS_PER_TURN) {
                        // Let these calls reach the runtime before reading more of a burst,
                        // so that the runtime works on them while criguard reads the rest.
                        tokio::task::yield_now().await;
                    }
                }
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "caller connection closed with an error");
                    return;
                }
                None => return,
            }
        }
    }

    /// Hands one request to the stack, with the caller and the listener's settings in force
    /// when it arrives (a reload may change them).
    async fn call(&mut self, mut request: http::Request<RecvBody>) -> S::Future {
        let extensions = request.extensions_mut();
        if let Some(caller) = &self.caller {
            extensions.insert(caller.clone());
        }
        extensions.insert(self.access.load_full());
        // The stack is always ready: its layers wait inside their futures, never here.
        match std::future::poll_fn(|cx| self.stack.poll_ready(cx)).await {
            Ok(()) => self.stack.call(request),
            Err(never) => match never {},
        }
    }
}

/// Runs one call and sends its answer: the headers, then the body as the caller's window
/// allows. A caller that resets the stream first cancels the call (dropping it cancels the
/// runtime's stream too).
async fn answer<F, B>(call: F, mut respond: h2::server::SendResponse<Bytes>)
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
    B: http_body::Body<Data = Bytes>,
{
    let mut call = std::pin::pin!(call);
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(Ok(response)) = response else {
        return;
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    match respond.send_response(http::Response::from_parts(parts, ()), end) {
        Ok(stream) if !end => send_body(body, stream).await,
        Ok(_) => {}
        Err(err) => {
            tracing::debug!(error = %err, "answer headers not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::proxy::listener::Role;

    /// The watchdog is fed by the accept loop itself: when the thread it runs on is stuck, the
    /// pings stop (and systemd restarts criguard); when it turns again, they go on.
    #[test]
    fn watchdog_pings_stop_while_the_serving_loop_is_stuck() {
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = pings.clone();
        let watchdog = Watchdog {
            every: Duration::from_millis(20),
            ping: Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = UnixListener::bind(dir.path().join("criguard.sock")).unwrap();
            let access = Arc::new(ArcSwap::from_pointee(ListenerAccess {
                path: dir.path().join("criguard.sock"),
                role: Role::full(),
                allow_uids: None,
                allow_gids: None,
            }));
            let stack = tower::service_fn(|_: http::Request<RecvBody>| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
            });
            let shutdown = CancellationToken::new();
            let serving = tokio::spawn(serve(
                vec![(listener, access)],
                stack,
                shutdown.clone(),
                Duration::from_secs(1),
                Some(watchdog),
            ));
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(pings.load(Ordering::SeqCst) >= 5, "pings while serving");

            // The loop's thread is stuck for 600 ms; another thread watches the pings.
            let watched = pings.clone();
            let watcher = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let early = watched.load(Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(400));
                (early, watched.load(Ordering::SeqCst))
            });
            std::thread::sleep(Duration::from_millis(600));
            let (early, late) = watcher.join().unwrap();
            assert_eq!(early, late, "no ping while the loop is stuck");

            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                pings.load(Ordering::SeqCst) > late,
                "pings again once it turns"
            );
            shutdown.cancel();
            serving.await.unwrap();
        });
    }
}
