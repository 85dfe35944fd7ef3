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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::body::{RequestBody, ResponseBody};
use super::error::{ProxyError, RuntimeError};
use super::rpc::{Rpc, Service};
use crate::telemetry::metrics as names;

/// Flow-control windows towards the runtime. Large answers (ListContainers on a busy node is
/// several MB) must not be sent in small pieces waiting for window updates.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame the runtime may send us: fewer, larger frames cost less CPU.
const MAX_FRAME_SIZE: u32 = 1 << 20;
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

type Sender = SendRequest<RequestBody<Incoming>>;

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
        current.as_ref().filter(|s| !s.is_closed()).cloned()
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
        let result = self.connect().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::RUNTIME_CONNECTS_TOTAL, "endpoint" => self.name.to_string(), "result" => outcome)
            .increment(1);
        match result {
            Ok(sender) => {
                backoff.last_failure = None;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
                tracing::info!(endpoint = %self.name, "connected to runtime");
                Ok(sender)
            }
            Err(err) => {
                let wait = match &backoff.last_failure {
                    None => BACKOFF_MIN,
                    Some((_, wait, _)) => (*wait * 2).min(BACKOFF_MAX),
                };
                tracing::warn!(endpoint = %self.name, error = %err, retry_in = ?wait, "runtime unreachable");
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
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buf_size(1 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(endpoint = %name, error = %err, "runtime connection closed");
            } else {
                tracing::debug!(endpoint = %name, "runtime connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends one call and returns the runtime's answer as it starts to arrive.
    async fn send(
        &self,
        request: http::Request<RequestBody<Incoming>>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(|e| self.lost(&e))?;
        let stats = request.body().stats();
        let mut response = sender.send_request(request).await.map_err(|e| {
            // Our own request body failed (an oversized message, a caller that broke off):
            // say so, not "runtime lost".
            match stats.failure() {
                Some(own) => own.clone(),
                None => self.lost(&e),
            }
        })?;
        response.extensions_mut().insert(stats);
        Ok(response)
    }

    fn lost(&self, err: &hyper::Error) -> ProxyError {
        RuntimeError::ConnectionLost {
            endpoint: self.name.clone(),
            reason: describe(err),
        }
        .into()
    }
}

/// hyper's errors say little at the top level; the innermost cause says what happened.
fn describe(err: &hyper::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The innermost service of the stack: forwards each call to the runtime endpoint that serves
/// its service (ImageService calls to the image endpoint when one is configured).
#[derive(Clone)]
pub struct Forwarder {
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
        Forwarder {
            runtime,
            image,
            max_message_size,
            shutdown,
        }
    }
}

impl tower::Service<http::Request<RequestBody<Incoming>>> for Forwarder {
    type Response = http::Response<ResponseBody<Incoming>>;
    type Error = ProxyError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody<Incoming>>) -> Self::Future {
        let rpc = request.extensions().get::<Rpc>();
        let streaming = rpc.is_some_and(|rpc| rpc.method.is_server_streaming());
        let connection = match (&self.image, rpc.map(|rpc| rpc.service)) {
            (Some(image), Some(Service::Image)) => image.clone(),
            _ => self.runtime.clone(),
        };
        let limit = self.max_message_size;
        let shutdown = streaming.then(|| self.shutdown.clone().cancelled_owned());
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
