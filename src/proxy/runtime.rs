//! The connection to a runtime socket (containerd, CRI-O) and the forwarder at the core of the
//! stack, which sends each call to it as the caller's original bytes.
//!
//! One HTTP/2 connection per runtime endpoint carries all calls, as the kubelet's own does.
//! It is made on first use and made again after it breaks; while the runtime cannot be
//! reached, calls fail at once with UNAVAILABLE naming the socket, and reconnect attempts back
//! off from 100 ms to 1 s so a dead runtime is not hammered.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::body::{RequestBody, ResponseBody};
use super::error::{ProxyError, RuntimeError};
use super::h2io::{RecvBody, send_body};
use super::rpc::{Rpc, Service};

/// Connections made to a runtime endpoint, by endpoint and result (telemetry/metrics.rs
/// describes it; the core names what it counts itself, as it imports nothing above it).
pub const RUNTIME_CONNECTS_TOTAL: &str = "criguard_runtime_connects_total";

/// A connection to a runtime endpoint was made: logged and counted.
fn runtime_connected(endpoint: &str) {
    metrics::counter!(RUNTIME_CONNECTS_TOTAL, "endpoint" => endpoint.to_string(), "result" => "ok")
        .increment(1);
    tracing::info!(endpoint, "connected to runtime");
}

/// A connection to a runtime endpoint failed; the next try waits `retry_in`.
fn runtime_unreachable(endpoint: &str, err: &RuntimeError, retry_in: Duration) {
    metrics::counter!(RUNTIME_CONNECTS_TOTAL, "endpoint" => endpoint.to_string(), "result" => "error")
        .increment(1);
    tracing::warn!(endpoint, error = %err, ?retry_in, "runtime unreachable");
}

/// Flow-control windows towards the runtime: large enough that a multi-megabyte answer
/// (ListContainers on a busy node) is not sent in small pieces waiting for window updates,
/// small enough that criguard never holds more than a few MB of answers in memory. Measured in
/// docs/performance.md.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Largest HTTP/2 frame the runtime may send us.
const MAX_FRAME_SIZE: u32 = 128 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A CRI endpoint: a unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub path: PathBuf,
}

impl Endpoint {
    /// Accepts `unix:///path` (as the kubelet's flags do) or a plain absolute path.
    pub fn parse(value: &str) -> Result<Endpoint, String> {
        let path = match value.split_once("://") {
            Some(("unix", path)) => path,
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported endpoint scheme {scheme:?}: only unix:// sockets are supported"
                ));
            }
            None => value,
        };
        if !path.starts_with('/') {
            return Err(format!(
                "endpoint {value:?} must be an absolute socket path, e.g. unix:///run/containerd/containerd.sock"
            ));
        }
        Ok(Endpoint { path: path.into() })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

/// A handle on the live connection and a flag its driver sets when the connection ends.
#[derive(Clone)]
struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// A runtime socket and the one HTTP/2 connection to it.
pub struct RuntimeConnection {
    endpoint: Endpoint,
    name: Arc<str>,
    current: Mutex<Option<Sender>>,
    /// Held while connecting, so that concurrent calls share one attempt.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    last_failure: Option<(Instant, Duration, RuntimeError)>,
}

impl RuntimeConnection {
    pub fn new(endpoint: Endpoint) -> Self {
        RuntimeConnection {
            name: endpoint.to_string().into(),
            endpoint,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Backoff::default()),
        }
    }

    /// The endpoint as written in logs and statuses, e.g. `unix:///run/containerd/containerd.sock`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn live_sender(&self) -> Option<Sender> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|s| !s.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// A handle on the live connection, connecting first if there is none.
    async fn sender(&self) -> Result<Sender, RuntimeError> {
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        let mut backoff = self.connecting.lock().await;
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        if let Some((at, wait, err)) = &backoff.last_failure
            && at.elapsed() < *wait
        {
            return Err(err.clone());
        }
        match self.connect().await {
            Ok(sender) => {
                backoff.last_failure = None;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
                runtime_connected(&self.name);
                Ok(sender)
            }
            Err(err) => {
                let wait = match &backoff.last_failure {
                    None => BACKOFF_MIN,
                    Some((_, wait, _)) => (*wait * 2).min(BACKOFF_MAX),
                };
                runtime_unreachable(&self.name, &err, wait);
                backoff.last_failure = Some((Instant::now(), wait, err.clone()));
                Err(err)
            }
        }
    }

    async fn connect(&self) -> Result<Sender, RuntimeError> {
        let unreachable = |reason: String| RuntimeError::Unreachable {
            endpoint: self.name.clone(),
            reason,
        };
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.endpoint.path))
                .await
                .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| unreachable(e.to_string()))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(1 << 20)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let closed = Arc::new(AtomicBool::new(false));
        let name = self.name.clone();
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(endpoint = %name, error = %err, "runtime connection closed");
            } else {
                tracing::debug!(endpoint = %name, "runtime connection closed");
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Sender { send, closed })
    }

    /// Sends one call and returns the runtime's answer as it starts to arrive.
    ///
    /// A unary request, already read whole, goes out with its headers in one go; a streaming
    /// request body is piped by a task of its own, with HTTP/2 flow control.
    async fn send(
        &self,
        request: http::Request<RequestBody<RecvBody>>,
    ) -> Result<http::Response<RecvBody>, ProxyError> {
        let sender = self.sender().await?;
        let mut send = sender.send.ready().await.map_err(|e| {
            sender.closed.store(true, Ordering::Release);
            self.lost(&e)
        })?;
        let (mut parts, mut body) = request.into_parts();
        if parts.uri.authority().is_none() {
            // A caller may leave out :authority; HTTP/2 requests from a client must have one.
            parts.uri = local_authority(&parts.uri);
        }
        let stats = body.stats();
        let (response, mut stream) = send
            .send_request(http::Request::from_parts(parts, ()), false)
            .map_err(|e| self.lost(&e))?;
        match body.take_complete() {
            Some(whole) => stream.send_data(whole, true).map_err(|e| self.lost(&e))?,
            None => {
                tokio::spawn(send_body(body, stream));
            }
        }
        let response = response.await.map_err(|e| match stats.failure() {
            // Our own request body failed (an oversized message, a caller that broke off):
            // say so, not "runtime lost".
            Some(own) => own.clone(),
            None => self.lost(&e),
        })?;
        let (mut parts, recv) = response.into_parts();
        parts.extensions.insert(stats);
        Ok(http::Response::from_parts(parts, RecvBody::new(recv)))
    }

    fn lost(&self, err: &h2::Error) -> ProxyError {
        RuntimeError::ConnectionLost {
            endpoint: self.name.clone(),
            reason: describe(err),
        }
        .into()
    }
}

/// `uri` with the authority `localhost`, what kubelets 1.31+ send.
fn local_authority(uri: &http::Uri) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::from_static("localhost"));
    parts.path_and_query = uri.path_and_query().cloned();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The innermost cause says what happened.
fn describe(err: &h2::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The innermost service of the stack: forwards each call to the runtime endpoint that serves
/// its service (ImageService calls to the image endpoint when one is configured). Cloned for
/// every call by the layers that read the request first, so it is one shared pointer.
#[derive(Clone)]
pub struct Forwarder(Arc<Targets>);

struct Targets {
    runtime: Arc<RuntimeConnection>,
    image: Option<Arc<RuntimeConnection>>,
    max_message_size: usize,
    shutdown: CancellationToken,
}

impl Forwarder {
    pub fn new(
        runtime: Arc<RuntimeConnection>,
        image: Option<Arc<RuntimeConnection>>,
        max_message_size: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Forwarder(Arc::new(Targets {
            runtime,
            image,
            max_message_size,
            shutdown,
        }))
    }
}

impl tower::Service<http::Request<RequestBody<RecvBody>>> for Forwarder {
    type Response = http::Response<ResponseBody<RecvBody>>;
    type Error = ProxyError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody<RecvBody>>) -> Self::Future {
        let rpc = request.extensions().get::<Rpc>();
        let streaming = rpc.is_some_and(|rpc| rpc.method.is_server_streaming());
        let targets = &*self.0;
        let connection = match (&targets.image, rpc.map(|rpc| rpc.service)) {
            (Some(image), Some(Service::Image)) => image.clone(),
            _ => targets.runtime.clone(),
        };
        let limit = targets.max_message_size;
        let shutdown = streaming.then(|| targets.shutdown.clone().cancelled_owned());
        Box::pin(async move {
            let response = connection.send(request).await?;
            let endpoint = connection.name().clone();
            Ok(response.map(|body| {
                let body = ResponseBody::runtime(body, limit, endpoint);
                match shutdown {
                    Some(signal) => body.end_on(signal),
                    None => body,
                }
            }))
        })
    }
}
