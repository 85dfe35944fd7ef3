//! OpenTelemetry traces: a span per call in the trace its caller started, exported over
//! OTLP/gRPC (`tracing:` in the configuration; off without it).
//!
//! Sampling follows the caller: a `traceparent` whose sampled flag is set gets a span, one
//! whose flag is clear gets none; calls without one get a span at `samplingRatePerMillion`
//! (0 by default), as the kubelet's own `tracing` setting works.
//!
//! Never in a call's way: a finished span goes to a bounded queue and nothing more happens on
//! the call's task; one background task sends batches to the collector. A full queue, or a
//! collector that is down, slow or refuses, drops spans: counted in
//! `criguard_trace_spans_dropped_total` and logged at most every 30 s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use opentelemetry::trace::{
    SpanKind, TraceContextExt, TraceFlags, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::traceparent::TraceParent;
use crate::telemetry::metrics::{TRACE_SPANS_DROPPED_TOTAL, TRACE_SPANS_EXPORTED_TOTAL};

/// The kubelet's default collector address.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
pub const DEFAULT_SERVICE_NAME: &str = "criguard";
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans per export, and how long the exporter waits for a batch to fill.
const BATCH: usize = 64;
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long criguard waits at shutdown for the last spans to go out.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(3);

/// `tracing:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileTracing {
    pub endpoint: Option<String>,
    pub sampling_rate_per_million: Option<u32>,
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    pub queue_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub export_timeout: Option<Duration>,
}

/// The tracing settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSettings {
    /// The OTLP/gRPC collector, `http://host:port`.
    pub endpoint: String,
    /// Of the calls without a `traceparent`, how many per million get a span.
    pub sampling_rate_per_million: u32,
    pub service_name: String,
    pub resource_attributes: BTreeMap<String, String>,
    /// Finished spans waiting for export, at most.
    pub queue_size: usize,
    pub export_timeout: Duration,
}

impl TraceSettings {
    /// Validates `tracing:`; the error names the key.
    pub fn resolve(file: FileTracing) -> Result<TraceSettings, (&'static str, String)> {
        let endpoint = file.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        // The kubelet's form (host:port) is taken as well.
        let endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("http://{endpoint}")
        };
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.port_u16().is_some() => {}
            Ok(_) => {
                return Err((
                    "tracing.endpoint",
                    format!("{endpoint:?} is not http://host:port (OTLP/gRPC without TLS)"),
                ));
            }
            Err(err) => return Err(("tracing.endpoint", format!("{endpoint:?}: {err}"))),
        }
        let rate = file.sampling_rate_per_million.unwrap_or(0);
        if rate > 1_000_000 {
            return Err((
                "tracing.samplingRatePerMillion",
                format!("{rate} is more than 1000000"),
            ));
        }
        let queue_size = file.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
        if !(1..=1 << 20).contains(&queue_size) {
            return Err((
                "tracing.queueSize",
                format!("{queue_size} is outside 1..=1048576"),
            ));
        }
        let export_timeout = file.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT);
        if export_timeout.is_zero() {
            return Err(("tracing.exportTimeout", "must be more than 0".into()));
        }
        Ok(TraceSettings {
            endpoint,
            sampling_rate_per_million: rate,
            service_name: file
                .service_name
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            resource_attributes: file.resource_attributes,
            queue_size,
            export_timeout,
        })
    }
}

/// The tracer in force, or none; swapped by a reload. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tracing(Arc<ArcSwapOption<Tracer>>);

impl Tracing {
    /// Starts exporting with `settings` (none: tracing off). Needs a Tokio runtime.
    pub fn start(settings: Option<&TraceSettings>) -> Tracing {
        let tracing = Tracing::default();
        tracing.apply(settings);
        tracing
    }

    /// The tracer, while tracing is on.
    pub fn current(&self) -> Option<Arc<Tracer>> {
        // The common case, tracing off, costs one atomic load.
        let guard = self.0.load();
        guard.as_ref().map(Arc::clone)
    }

    /// Puts `settings` in force for the calls that start from now on. Spans of calls under
    /// way still go to the collector they started with.
    pub fn apply(&self, settings: Option<&TraceSettings>) {
        let current = self.0.load();
        if current.as_ref().map(|t| &t.settings) == settings {
            return;
        }
        // The old tracer shuts down when the last call that holds one of its spans ends.
        self.0.swap(settings.map(|s| Arc::new(Tracer::start(s))));
        match settings {
            Some(s) => tracing::info!(
                endpoint = s.endpoint,
                sampling_rate_per_million = s.sampling_rate_per_million,
                "tracing on: spans go to the OTLP collector"
            ),
            None if current.is_some() => tracing::info!("tracing off"),
            None => {}
        }
    }

    /// Stops tracing and gives the last spans up to a few seconds to go out.
    pub async fn close(&self) {
        let Some(tracer) = self.0.swap(None) else {
            return;
        };
        tracer.stop();
        let exporter = tracer.exporter.lock().ok().and_then(|mut e| e.take());
        if let Some(exporter) = exporter
            && tokio::time::timeout(FLUSH_AT_SHUTDOWN, exporter)
                .await
                .is_err()
        {
            tracing::warn!("the last spans did not reach the collector before shutdown");
        }
    }
}

/// One tracer provider and its exporter.
#[derive(Debug)]
pub struct Tracer {
    settings: TraceSettings,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    exporter: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Tracer {
    fn start(settings: &TraceSettings) -> Tracer {
        // Every series from the start, so that the first drop is an increase.
        metrics::counter!(TRACE_SPANS_EXPORTED_TOTAL).increment(0);
        for reason in ["queue_full", "export_failed", "shut_down"] {
            metrics::counter!(TRACE_SPANS_DROPPED_TOTAL, "reason" => reason).increment(0);
        }
        let (queue, finished) = mpsc::channel(settings.queue_size);
        let exporter = tokio::spawn(export(finished, settings.clone()));
        let root_ratio = f64::from(settings.sampling_rate_per_million) / 1e6;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                root_ratio,
            ))))
            .with_resource(resource_of(settings))
            .with_span_processor(QueueProcessor {
                queue: ArcSwapOption::from_pointee(queue),
            })
            .build();
        Tracer {
            tracer: provider.tracer("criguard"),
            provider,
            settings: settings.clone(),
            exporter: std::sync::Mutex::new(Some(exporter)),
        }
    }

    /// Whether calls without a `traceparent` may get a span.
    pub fn samples_roots(&self) -> bool {
        self.settings.sampling_rate_per_million > 0
    }

    /// A span for the call `name` under `parent` (the caller's `traceparent` and
    /// `tracestate`), or a new trace without one. `None` when the sampler says no.
    pub fn start_span(
        &self,
        name: String,
        parent: Option<(TraceParent, Option<&[u8]>)>,
        attributes: Vec<KeyValue>,
    ) -> Option<opentelemetry_sdk::trace::Span> {
        let context = match parent {
            Some((parent, state)) => {
                Context::new().with_remote_span_context(parent.remote_context(state))
            }
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &context);
        let sampled = opentelemetry::trace::Span::span_context(&span).is_sampled();
        sampled.then_some(span)
    }

    /// No more spans from this tracer reach the queue; the exporter sends what is there and
    /// ends. (Dropping the last `Tracer` and span does the same.)
    fn stop(&self) {
        let _ = self.provider.shutdown();
    }
}

/// The `traceparent` that names `span` as the parent: sampled, and random-trace-id when the
/// caller said so (the trace id is the caller's); the flags W3C leaves undefined are zero, as
/// it asks.
pub fn traceparent_of(
    span: &opentelemetry_sdk::trace::Span,
    caller: Option<TraceFlags>,
) -> TraceParent {
    const RANDOM: TraceFlags = TraceFlags::new(0x02);
    let context = opentelemetry::trace::Span::span_context(span);
    TraceParent {
        trace_id: context.trace_id(),
        parent_id: context.span_id(),
        flags: (caller.unwrap_or_default() & RANDOM) | TraceFlags::SAMPLED,
    }
}

/// Hands finished spans to the exporter's queue, never waiting.
#[derive(Debug)]
struct QueueProcessor {
    queue: ArcSwapOption<mpsc::Sender<Box<SpanData>>>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let queue = self.queue.load();
        let reason = match queue.as_deref().map(|q| {
            q.try_send(Box::new(span))
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)))
        }) {
            Some(Ok(())) => return,
            Some(Err(true)) => ("queue_full", "the export queue is full"),
            Some(Err(false)) | None => ("shut_down", "tracing was turned off"),
        };
        dropped(1, reason.0, reason.1);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.queue.store(None);
        Ok(())
    }
}

/// The background exporter: batches from the queue to the collector, until the queue closes.
async fn export(mut finished: mpsc::Receiver<Box<SpanData>>, settings: TraceSettings) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.export_timeout)
        .build();
    let mut exporter = match exporter {
        Ok(exporter) => exporter,
        Err(err) => {
            tracing::warn!(endpoint = settings.endpoint, error = %err, "cannot export spans");
            let mut lost = Vec::new();
            while finished.recv_many(&mut lost, BATCH).await > 0 {
                dropped(lost.len() as u64, "export_failed", "cannot export spans");
                lost.clear();
            }
            return;
        }
    };
    exporter.set_resource(&resource_of(&settings));
    let mut batch = Vec::with_capacity(BATCH);
    while finished.recv_many(&mut batch, BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, finished.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let count = batch.len() as u64;
        let sent: Vec<SpanData> = batch.drain(..).map(|span| *span).collect();
        let result = tokio::time::timeout(settings.export_timeout, exporter.export(sent)).await;
        match result {
            Ok(Ok(())) => metrics::counter!(TRACE_SPANS_EXPORTED_TOTAL).increment(count),
            Ok(Err(err)) => dropped(
                count,
                "export_failed",
                &format!("{}: {err}", settings.endpoint),
            ),
            Err(_) => dropped(
                count,
                "export_failed",
                &format!(
                    "{}: no answer within {:?}",
                    settings.endpoint, settings.export_timeout
                ),
            ),
        }
    }
    let _ = exporter.shutdown();
}

fn resource_of(settings: &TraceSettings) -> Resource {
    Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes(
            [KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))]
                .into_iter()
                .chain(
                    settings
                        .resource_attributes
                        .iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
                ),
        )
        .build()
}

/// Counts dropped spans, and says so in the log at most every 30 s. Cheap enough for the
/// call's path when the queue is full: the counters are looked up once.
fn dropped(count: u64, reason: &'static str, why: &str) {
    const EVERY: Duration = Duration::from_secs(30);
    const REASONS: [&str; 3] = ["queue_full", "export_failed", "shut_down"];
    static COUNTERS: [OnceLock<metrics::Counter>; 3] = [const { OnceLock::new() }; 3];
    static SINCE_LOGGED: AtomicU64 = AtomicU64::new(0);
    static LAST_LOGGED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
    COUNTERS[index]
        .get_or_init(|| metrics::counter!(TRACE_SPANS_DROPPED_TOTAL, "reason" => REASONS[index]))
        .increment(count);
    SINCE_LOGGED.fetch_add(count, Ordering::Relaxed);
    let Ok(mut last) = LAST_LOGGED.try_lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < EVERY) {
        return;
    }
    *last = Some(Instant::now());
    let total = SINCE_LOGGED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        dropped = total,
        reason,
        error = why,
        "spans dropped; calls are not affected (at most one such line every 30s)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<TraceSettings, (&'static str, String)> {
        TraceSettings::resolve(serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn the_defaults_are_the_kubelets_and_off_for_calls_without_a_traceparent() {
        let settings = resolve("{}").unwrap();
        assert_eq!(settings.endpoint, "http://localhost:4317");
        assert_eq!(settings.sampling_rate_per_million, 0);
        assert_eq!(settings.service_name, "criguard");
        assert_eq!(settings.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(settings.export_timeout, DEFAULT_EXPORT_TIMEOUT);
    }

    #[test]
    fn the_kubelets_endpoint_form_is_taken_and_tls_is_refused_by_name() {
        assert_eq!(
            resolve("endpoint: collector.monitoring:4317")
                .unwrap()
                .endpoint,
            "http://collector.monitoring:4317"
        );
        for (yaml, key) in [
            ("endpoint: https://collector:4317", "tracing.endpoint"),
            ("endpoint: http://collector", "tracing.endpoint"),
            ("endpoint: 'http://[::1'", "tracing.endpoint"),
            (
                "samplingRatePerMillion: 1000001",
                "tracing.samplingRatePerMillion",
            ),
            ("queueSize: 0", "tracing.queueSize"),
            ("exportTimeout: 0s", "tracing.exportTimeout"),
        ] {
            assert_eq!(resolve(yaml).unwrap_err().0, key, "{yaml}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        assert!(serde_yaml_ng::from_str::<FileTracing>("samplingRate: 5").is_err());
    }
}
