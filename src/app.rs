//! Builds THE stack every call goes through, and runs criguard: bind the socket, serve it,
//! drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::config::Config;
use crate::layers::log::CallLogLayer;
use crate::proxy::head::ReadHeadLayer;
use crate::proxy::listener::{self, BoundListener, ListenError};
use crate::proxy::rpc::Rpc;
use crate::proxy::runtime::{Forwarder, RuntimeConnection};
use crate::proxy::server;
use crate::proxy::status::RespondWithStatusLayer;

/// The stack, top to bottom: what a call goes through on its way to the runtime.
pub fn build_stack(
    config: &Config,
    forwarder: Forwarder,
) -> impl tower::Service<
    http::Request<Incoming>,
    Response = http::Response<
        impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
    >,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        // Parse the method once from :path; every layer below reads it from the extensions.
        .map_request(with_rpc)
        // Log how each call ended, including the statuses criguard makes itself below.
        .layer(CallLogLayer)
        // The one place where the errors of the layers below become gRPC statuses.
        .layer(RespondWithStatusLayer)
        // Read the first message of known calls for inspection; the bytes go on unchanged.
        .layer(ReadHeadLayer::new(config.max_message_size))
        .service(forwarder)
}

fn with_rpc<B>(mut request: http::Request<B>) -> http::Request<B> {
    let rpc = Rpc::from_path(request.uri().path());
    request.extensions_mut().insert(rpc);
    request
}

/// A bound criguard, ready to serve.
pub struct Proxy {
    config: Config,
    bound: BoundListener,
}

impl Proxy {
    /// Binds the listening socket (or takes the one systemd passed).
    pub async fn bind(config: Config) -> Result<Proxy, ListenError> {
        let bound = listener::listen(&config.socket).await?;
        Ok(Proxy { config, bound })
    }

    /// Serves until `shutdown` fires, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let Proxy { config, bound } = self;
        let runtime = Arc::new(RuntimeConnection::new(config.runtime_endpoint.clone()));
        let image = config
            .image_endpoint
            .clone()
            .map(|e| Arc::new(RuntimeConnection::new(e)));
        tracing::info!(
            listen = %bound.description,
            runtime = %config.runtime_endpoint,
            image = %config.image_endpoint.as_ref().unwrap_or(&config.runtime_endpoint),
            max_message_size = config.max_message_size,
            "criguard serving"
        );
        let forwarder = Forwarder::new(runtime, image, config.max_message_size, shutdown.clone());
        let stack = build_stack(&config, forwarder);
        server::serve(
            bound.listener,
            stack,
            shutdown,
            config.shutdown_grace_period,
        )
        .await;
        if let Some(socket) = bound.owned {
            socket.remove();
        }
        tracing::info!("criguard stopped");
    }
}
