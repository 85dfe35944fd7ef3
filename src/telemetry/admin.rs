//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz`, `/readyz`. It listens on
//! loopback by default (or a unix socket) and runs on its own tasks: a slow scrape never holds
//! up a CRI call.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use super::readiness::Readiness;

/// Where the admin server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Off,
}

impl AdminAddress {
    /// `127.0.0.1:9899`, `[::1]:9899`, an absolute unix socket path, or `off`.
    pub fn parse(text: &str) -> Result<AdminAddress, String> {
        if text == "off" {
            return Ok(AdminAddress::Off);
        }
        if text.starts_with('/') {
            return Ok(AdminAddress::Unix(text.into()));
        }
        text.parse().map(AdminAddress::Tcp).map_err(|_| {
            format!("{text:?} is neither host:port (e.g. 127.0.0.1:9899), an absolute socket path, nor off")
        })
    }
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddress::Tcp(addr) => write!(f, "http://{addr}"),
            AdminAddress::Unix(path) => write!(f, "unix://{}", path.display()),
            AdminAddress::Off => f.write_str("off"),
        }
    }
}

/// What the routes read.
#[derive(Clone)]
pub struct AdminState {
    /// `None` when metrics are turned off: `/metrics` answers 404.
    pub prometheus: Option<PrometheusHandle>,
    pub process: Option<std::sync::Arc<metrics_process::Collector>>,
    pub readiness: Readiness,
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    response
}

/// Answers one admin request.
pub fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz")
        && !(path == "/metrics" && state.prometheus.is_none());
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, "GET, HEAD".parse().unwrap());
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.readiness.check() {
            Ok(summary) => text(StatusCode::OK, summary + "\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason + "\n"),
        },
        _ => {
            if let Some(process) = &state.process {
                process.collect();
            }
            let body = state
                .prometheus
                .as_ref()
                .map(|p| p.render())
                .unwrap_or_default();
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
            );
            response
        }
    }
}

/// A bound admin listener.
pub enum AdminListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl AdminListener {
    pub async fn bind(address: &AdminAddress) -> std::io::Result<Option<AdminListener>> {
        Ok(match address {
            AdminAddress::Off => None,
            AdminAddress::Tcp(addr) => Some(AdminListener::Tcp(
                tokio::net::TcpListener::bind(addr).await?,
            )),
            AdminAddress::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Some(AdminListener::Unix(
                    tokio::net::UnixListener::bind(path)?,
                    path.clone(),
                ))
            }
        })
    }

    /// The address actually bound (a TCP port 0 becomes the port chosen).
    pub fn local(&self) -> String {
        match self {
            AdminListener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default(),
            AdminListener::Unix(_, path) => format!("unix://{}", path.display()),
        }
    }
}

/// Serves the admin routes until `shutdown`.
pub async fn serve(listener: AdminListener, state: AdminState, shutdown: CancellationToken) {
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            SCRAPE_TIMEOUT,
        ))
        .service(tower::service_fn(move |request: Request<Incoming>| {
            let response = route(&state, &request);
            async move { Ok::<_, Infallible>(response) }
        }));
    loop {
        let io: Box<dyn AdminIo> = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = async {
                match &listener {
                    AdminListener::Tcp(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn AdminIo>),
                    AdminListener::Unix(l, _) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn AdminIo>),
                }
            } => match accepted {
                Ok(io) => io,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
    }
    if let AdminListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

trait AdminIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AdminIo for T {}
