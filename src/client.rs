//! CRI clients over unix sockets, used by the demo, the tests and the benchmarks: typed tonic
//! clients (as the kubelet's), and a raw HTTP/2 client that sends prepared bytes and returns
//! the answer's bytes, headers and trailers untouched.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::cri::image_service_client::ImageServiceClient;
use crate::cri::runtime_service_client::RuntimeServiceClient;

/// Matches the kubelet's receive limit for the typed clients of tests and demo.
pub(crate) const CLIENT_MESSAGE_LIMIT: usize = 64 << 20;

/// A tonic channel to a unix socket, as the kubelet dials it (authority `localhost`).
pub async fn channel(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.as_ref().to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A RuntimeService client on `channel` with generous message limits.
pub fn runtime(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// An ImageService client on `channel` with generous message limits.
pub fn image(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// Frames one protobuf message as a gRPC message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// An answer as it came over the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only answer.
    pub fn grpc_status(&self) -> Option<i32> {
        let from = |h: &HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse().ok();
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
    }

    /// `grpc-message`, percent-decoded, from wherever the status was.
    pub fn grpc_message(&self) -> Option<String> {
        let from = |h: &HeaderMap| crate::proxy::status::read_message(h);
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
    }
}

/// A raw HTTP/2 connection that sends prepared request bytes.
#[derive(Clone)]
pub struct RawClient {
    sender: SendRequest<Full<Bytes>>,
}

impl RawClient {
    pub async fn connect(path: impl AsRef<Path>) -> std::io::Result<RawClient> {
        RawClient::over(UnixStream::connect(path).await?).await
    }

    /// A client over a connected stream (e.g. one connected by another user).
    pub async fn over(stream: UnixStream) -> std::io::Result<RawClient> {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(RawClient { sender })
    }

    /// Sends `body` (already gRPC-framed) to `path` with `headers`, as a gRPC client would.
    pub fn request(path: &str, body: Bytes, headers: &HeaderMap) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::post(format!("http://localhost{path}"))
            .body(Full::new(body))
            .expect("a valid gRPC request");
        let h = request.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("te", HeaderValue::from_static("trailers"));
        for (name, value) in headers {
            h.append(name, value.clone());
        }
        request
    }

    /// Sends a call and reads the whole answer.
    pub async fn call(
        &mut self,
        path: &str,
        body: Bytes,
        headers: &HeaderMap,
    ) -> Result<RawResponse, hyper::Error> {
        let response = self.send(RawClient::request(path, body, headers)).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes(),
        })
    }

    /// Sends a prepared request and returns the answer as it starts.
    pub async fn send(
        &mut self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }
}
