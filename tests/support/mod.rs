//! Shared pieces of the integration tests: temporary sockets, criguard started in-process in
//! front of a backend, a fake runtime, and a recording runtime that shows exactly what reached
//! it and answers as the test says.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criguard::app::Proxy;
use criguard::config::{Config, Overrides};
use criguard::fake::FakeRuntime;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod clients;
pub mod e2e;
pub mod otlp;
pub mod restart;

/// A child process (criguard, Prometheus) killed when dropped, so that a failing test leaves
/// nothing running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(unused_imports)]
pub use criguard::client::{RawClient, grpc_frame};

/// A temporary directory holding the sockets of one test.
pub struct Sockets {
    pub dir: tempfile::TempDir,
}

impl Sockets {
    pub fn new() -> Sockets {
        Sockets {
            dir: tempfile::Builder::new()
                .prefix("criguard-test")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("runtime.sock")
    }
    pub fn criguard(&self) -> PathBuf {
        self.dir.path().join("criguard.sock")
    }
}

/// The shipped pss-baseline policy.
pub const BASELINE: &str = include_str!("../../policies/pss-baseline.yaml");

/// A policy directory in the test's directory holding `files` (name, text).
pub fn policy_dir(sockets: &Sockets, files: &[(&str, &str)]) -> PathBuf {
    let dir = sockets.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// A policy directory in the test's directory holding the shipped pss-baseline.
pub fn baseline_dir(sockets: &Sockets) -> PathBuf {
    policy_dir(sockets, &[("pss-baseline.yaml", BASELINE)])
}

/// `criguard serve` (the binary) on `sockets.criguard()` in front of `sockets.runtime()`;
/// callers add their own flags.
pub fn serve_command(sockets: &Sockets) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_criguard"));
    command
        .arg("serve")
        .arg("--listen")
        .arg(sockets.criguard())
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", sockets.runtime().display()));
    command
}

/// Spawns `command` (a `serve_command` with its flags) and waits until both its socket and its
/// admin socket `admin` exist.
pub async fn spawn_serving(
    mut command: std::process::Command,
    sockets: &Sockets,
    admin: &Path,
) -> std::process::Child {
    let child = command.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || admin.exists()
            && sockets.criguard().exists())
        .await,
        "criguard did not start"
    );
    child
}

/// criguard running in-process; stops when dropped.
pub struct Criguard {
    pub socket: PathBuf,
    pub shutdown: CancellationToken,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Criguard {
    /// Starts criguard on `sockets.criguard()` in front of `sockets.runtime()`.
    pub async fn start(sockets: &Sockets) -> Criguard {
        Criguard::start_with(sockets, Overrides::default()).await
    }

    pub async fn start_with(sockets: &Sockets, overrides: Overrides) -> Criguard {
        Criguard::start_with_config(sockets, None, overrides).await
    }

    /// Starts criguard with a configuration file of `yaml` (if any) under the overrides.
    pub async fn start_with_config(
        sockets: &Sockets,
        yaml: Option<&str>,
        mut overrides: Overrides,
    ) -> Criguard {
        if !yaml.is_some_and(|y| y.contains("listeners:")) {
            overrides.listen.get_or_insert(sockets.criguard());
        }
        overrides
            .runtime_endpoint
            .get_or_insert(format!("unix://{}", sockets.runtime().display()));
        overrides
            .shutdown_grace_period
            .get_or_insert(Duration::from_secs(2));
        overrides.admin_address.get_or_insert("off".into());
        let file = yaml.map(|text| {
            let path = sockets.dir.path().join("criguard.yaml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let config = Config::load(file.as_deref(), overrides).unwrap();
        let socket = config.listeners[0].socket.path.clone();
        let proxy = Proxy::bind(config, None).await.unwrap();
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(proxy.run(shutdown.clone()));
        Criguard {
            socket,
            shutdown,
            done: Some(done),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
    }
}

impl Drop for Criguard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the fake runtime on `path`; it stops when the token is cancelled.
pub async fn start_fake_runtime(path: &Path, runtime: FakeRuntime) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(runtime.serve_listener(listener, shutdown.clone()));
    shutdown
}

/// A request as it reached the recording runtime.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// The `:authority` the runtime received, if any.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the recording runtime answers.
#[derive(Default)]
pub struct Answer {
    pub headers: HeaderMap,
    /// Body chunks, sent one after the other.
    pub chunks: Vec<Bytes>,
    /// `None` ends the answer with the body (no trailers).
    pub trailers: Option<HeaderMap>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer at all.
    pub hang: bool,
    /// Keep the stream open after the chunks; further frames come from this channel.
    pub stream: Option<mpsc::Receiver<Bytes>>,
}

impl Answer {
    /// A stream that stays open until the sender of `rx` is dropped, then ends OK.
    pub fn stream(rx: mpsc::Receiver<Bytes>) -> Answer {
        Answer {
            stream: Some(rx),
            trailers: Some(status_trailers(0, None)),
            ..Default::default()
        }
    }

    /// An OK answer carrying one message.
    pub fn ok(message: &[u8]) -> Answer {
        Answer {
            chunks: vec![grpc_frame(message)],
            trailers: Some(status_trailers(0, None)),
            ..Default::default()
        }
    }
}

pub fn status_trailers(code: i32, message: Option<&str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", code.into());
    if let Some(m) = message {
        t.insert("grpc-message", m.parse().unwrap());
    }
    t
}

type Handler = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;
type CallContext = (
    Handler,
    Arc<Mutex<Vec<Recorded>>>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
);

/// A runtime that records every request and answers with `handler`.
pub struct RecordingRuntime {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Calls whose answer has not ended (or been cancelled) yet.
    pub in_flight: Arc<AtomicUsize>,
    /// Calls the caller went away from before the answer ended.
    pub cancelled: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
}

impl RecordingRuntime {
    pub async fn start(
        path: &Path,
        handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
    ) -> RecordingRuntime {
        let listener = UnixListener::bind(path).unwrap();
        let runtime = RecordingRuntime {
            requests: Default::default(),
            in_flight: Default::default(),
            cancelled: Default::default(),
            shutdown: CancellationToken::new(),
        };
        let handler: Handler = Arc::new(handler);
        let (requests, in_flight, cancelled, shutdown) = (
            runtime.requests.clone(),
            runtime.in_flight.clone(),
            runtime.cancelled.clone(),
            runtime.shutdown.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let ctx = (
                    handler.clone(),
                    requests.clone(),
                    in_flight.clone(),
                    cancelled.clone(),
                );
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(answer(req, ctx).await) }
                });
                // Like containerd (grpc-go): no `date` header in answers.
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .auto_date_header(false)
                    .serve_connection(TokioIo::new(stream), service);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // Dropping the connection at shutdown breaks it, as a crashing runtime does.
                    tokio::select! {
                        _ = connection => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        });
        runtime
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RecordingRuntime {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type BoxBody = Pin<Box<dyn http_body::Body<Data = Bytes, Error = Infallible> + Send>>;

/// Counts a call in flight until its answer body ends or is dropped.
struct InFlight {
    in_flight: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn answer(
    req: http::Request<Incoming>,
    (handler, requests, in_flight, cancelled): CallContext,
) -> http::Response<BoxBody> {
    in_flight.fetch_add(1, Ordering::SeqCst);
    let mut guard = InFlight {
        in_flight,
        cancelled,
        finished: false,
    };
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        path: parts.uri.path().to_string(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: parts.headers,
        body,
    };
    requests.lock().unwrap().push(recorded.clone());
    let answer = handler(&recorded);
    if answer.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(answer.delay).await;
    let mut response = http::Response::new(());
    *response.headers_mut() = answer.headers;
    response
        .headers_mut()
        .entry("content-type")
        .or_insert("application/grpc".parse().unwrap());
    let trailers = answer.trailers;
    let mut frames: Vec<Frame<Bytes>> = answer.chunks.into_iter().map(Frame::data).collect();
    let body: BoxBody = match answer.stream {
        None => {
            frames.extend(trailers.map(Frame::trailers));
            guard.finished = true;
            drop(guard);
            Box::pin(StreamBody::new(futures_util::stream::iter(
                frames.into_iter().map(Ok),
            )))
        }
        Some(rx) => Box::pin(streaming_body(frames, rx, trailers, guard)),
    };
    response.map(|_| body)
}

/// A streaming body: `first` frames, then what arrives on `rx` until it closes, then
/// `trailers`. The call counts as cancelled if the caller goes away first.
fn streaming_body(
    first: Vec<Frame<Bytes>>,
    mut rx: mpsc::Receiver<Bytes>,
    trailers: Option<HeaderMap>,
    guard: InFlight,
) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send {
    let (tx, out) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        let mut guard = guard;
        for frame in first {
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                next = rx.recv() => match next {
                    Some(data) => if tx.send(Ok(Frame::data(data))).await.is_err() { return },
                    None => break,
                },
            }
        }
        if let Some(t) = trailers {
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        }
        guard.finished = true;
    });
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(out))
}

/// criguard still answers on this connection: a Version call comes back OK.
pub async fn assert_serving(client: &mut RawClient) {
    let path = "/runtime.v1.RuntimeService/Version";
    let answer = client
        .call(path, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `path` from the admin server on a unix socket: (status, body).
pub async fn admin_get(admin: &Path, method: &str, path: &str) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(admin).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The samples of a scrape: series (name with labels, as exposed) to value.
pub fn samples(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// The image the runtime knows by `image` (ImageStatus, as the kubelet asks before it creates
/// a container), if it has one.
pub async fn image_status(
    images: &mut criguard::cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    image: &str,
) -> Option<criguard::cri::Image> {
    images
        .image_status(criguard::cri::ImageStatusRequest {
            image: Some(criguard::cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

/// Runs a pod of `pod` and creates and starts the container of `create` in it, as the kubelet
/// does. Returns the sandbox and container ids.
pub async fn start_pod(
    runtime: &mut criguard::cri::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    pod: criguard::cri::PodSandboxConfig,
    mut create: criguard::cri::CreateContainerRequest,
) -> (String, String) {
    let sandbox = runtime
        .run_pod_sandbox(criguard::cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    create.pod_sandbox_id = sandbox.clone();
    create.sandbox_config = Some(pod);
    let container = runtime
        .create_container(create)
        .await
        .unwrap()
        .into_inner()
        .container_id;
    runtime
        .start_container(criguard::cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .unwrap();
    (sandbox, container)
}
