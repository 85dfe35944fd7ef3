//! An OTLP/gRPC trace receiver for the tests, served from the official opentelemetry-proto
//! definitions (the `opentelemetry-proto` crate): criguard's exporter, containerd's and the
//! kubelet client's all send their spans here, and the tests read them back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio_util::sync::CancellationToken;

/// One span as a collector received it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: HashMap<String, String>,
    /// The status code (0 unset, 1 ok, 2 error).
    pub status: i32,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The receiver; stops when dropped.
pub struct Collector {
    pub address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    shutdown: CancellationToken,
}

impl Collector {
    /// On a free loopback port.
    pub async fn start() -> Collector {
        Collector::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(address: &str) -> Collector {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let service = TraceServiceServer::new(Receiver(spans.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        Collector {
            address,
            spans,
            shutdown,
        }
    }

    /// `http://127.0.0.1:PORT`, for criguard's `tracing.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of `trace_id` once `ready` says they are all there, or what came within
    /// `within`.
    pub async fn trace(
        &self,
        trace_id: &str,
        within: Duration,
        ready: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if ready(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The spans beneath `root` (itself included) as an indented tree: service, name and the
/// `attributes` asked for, one span a line.
pub fn tree(spans: &[ReceivedSpan], root: &ReceivedSpan, attributes: &[&str]) -> String {
    let mut out = String::new();
    let mut stack = vec![(root, 0)];
    while let Some((span, depth)) = stack.pop() {
        let shown: Vec<String> = attributes
            .iter()
            .filter_map(|key| Some(format!("{key}={}", span.attribute(key)?)))
            .collect();
        out += &format!(
            "{}{} {} {}\n",
            "  ".repeat(depth),
            span.service,
            span.name,
            shown.join(" ")
        );
        let mut children: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_id)
            .collect();
        children.reverse();
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    out
}

struct Receiver(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attributes(&r.attributes).remove("service.name"))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    status: span.status.map_or(0, |s| s.code),
                });
            }
        }
        self.0.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// An attribute's value as text: strings as they are, numbers in decimal, arrays joined by
/// commas.
fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::ArrayValue(array)) => {
            array.values.iter().map(text).collect::<Vec<_>>().join(",")
        }
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
