//! A span per call (with `tracing:` on), as a child of the caller's `traceparent`: the call's
//! method, pod and container, caller, listener role, what criguard decided and how the call
//! ended. The `traceparent` sent on to the runtime names criguard's span as the parent, so
//! that the runtime's span hangs beneath it; no other byte of the call changes. A call whose
//! `traceparent` is malformed, repeated or not sampled passes untouched and gets no span.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status};
use tonic::Code;

use super::observe::{Observe, ObserveLayer};
use crate::inventory::Inventory;
use crate::proxy::body::{Outcome, RequestMessageSlot, RequestStats, StatusObserver};
use crate::proxy::decision::DecisionSlot;
use crate::proxy::identity::Caller;
use crate::proxy::listener::ListenerAccess;
use crate::proxy::notes::CallNotes;
use crate::proxy::rpc::Rpc;
use crate::telemetry::trace::{Tracing, traceparent_of};
use crate::telemetry::traceparent::{TRACEPARENT, TRACESTATE, TraceParent};

/// The tracing layer: [`ObserveLayer`]`<CallSpans>`.
pub type CallSpansLayer = ObserveLayer<CallSpans>;

/// Starts each sampled call's span and ends it with the call.
#[derive(Clone, Debug)]
pub struct CallSpans {
    tracing: Tracing,
    /// To name the pod of calls that name only a container or sandbox id.
    inventory: Option<Inventory>,
}

impl CallSpans {
    pub fn layer(tracing: Tracing, inventory: Option<Inventory>) -> CallSpansLayer {
        ObserveLayer::new(CallSpans { tracing, inventory })
    }
}

impl Observe for CallSpans {
    type Record = SpanRecord;

    fn start<B>(&self, request: &mut http::Request<B>) -> SpanRecord {
        let Some(tracer) = self.tracing.current() else {
            return SpanRecord(None);
        };
        let headers = request.headers();
        let mut values = headers.get_all(TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (None, _) if tracer.samples_roots() => None,
            (Some(value), None) => match TraceParent::parse(value.as_bytes()) {
                Some(parent) if parent.flags.is_sampled() => Some(parent),
                _ => return SpanRecord(None),
            },
            _ => return SpanRecord(None),
        };
        let mut states = headers.get_all(TRACESTATE).iter();
        let state = match (states.next(), states.next()) {
            (Some(state), None) => Some(state.as_bytes()),
            _ => None,
        };
        let extensions = request.extensions();
        let Some(rpc) = extensions.get::<Rpc>().cloned() else {
            return SpanRecord(None);
        };
        let caller = extensions.get::<Arc<Caller>>();
        let name = rpc.path.trim_start_matches('/');
        let (service, method) = name.rsplit_once('/').unwrap_or(("", name));
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_string()),
            KeyValue::new("rpc.method", method.to_string()),
        ];
        if let Some(listener) = extensions.get::<Arc<ListenerAccess>>() {
            attributes.push(KeyValue::new(
                "criguard.listener.role",
                listener.role.name.clone(),
            ));
        }
        if let Some(caller) = caller {
            attributes.push(KeyValue::new("criguard.caller.uid", i64::from(caller.uid)));
            if let Some(pid) = caller.pid {
                attributes.push(KeyValue::new("criguard.caller.pid", i64::from(pid)));
            }
            if let Some(exe) = &caller.exe {
                attributes.push(KeyValue::new("criguard.caller.exe", exe.to_string()));
            }
        }
        let name = name.to_string();
        let Some(span) = tracer.start_span(name, parent.map(|p| (p, state)), attributes) else {
            return SpanRecord(None);
        };
        let forwarded = traceparent_of(&span, parent.map(|p| p.flags)).to_header();
        request.headers_mut().insert(TRACEPARENT, forwarded);
        SpanRecord(Some(Box::new(Record {
            span,
            rpc,
            message: RequestMessageSlot::attach(request),
            decided: DecisionSlot::attach(request),
            notes: CallNotes::attach(request),
            request_stats: None,
            inventory: self.inventory.clone(),
        })))
    }

    fn on_response<B>(record: &mut SpanRecord, response: &http::Response<B>) {
        if let Some(record) = &mut record.0 {
            record.request_stats = response.extensions().get::<RequestStats>().cloned();
        }
    }
}

/// The span of one call, until it ends; `None` for calls without one.
#[derive(Debug)]
pub struct SpanRecord(Option<Box<Record>>);

#[derive(Debug)]
pub struct Record {
    span: opentelemetry_sdk::trace::Span,
    rpc: Rpc,
    message: RequestMessageSlot,
    decided: DecisionSlot,
    notes: CallNotes,
    request_stats: Option<RequestStats>,
    inventory: Option<Inventory>,
}

impl StatusObserver for SpanRecord {
    fn on_end(self, outcome: Outcome) {
        if let Some(record) = self.0 {
            record.end(outcome);
        }
    }
}

impl Record {
    fn end(mut self, outcome: Outcome) {
        let method = self.rpc.method;
        let mut subject = self.message.subject_of(method);
        if let Some(inventory) = &self.inventory {
            inventory.complete(&mut subject);
        }
        let mut attributes = Vec::with_capacity(16);
        let mut text = |key: &'static str, value: Option<String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                attributes.push(KeyValue::new(key, value));
            }
        };
        if let Some(pod) = subject.pod {
            text("k8s.namespace.name", Some(pod.namespace));
            text("k8s.pod.name", Some(pod.name));
            text("k8s.pod.uid", Some(pod.uid));
        }
        text("criguard.sandbox.id", subject.sandbox_id);
        text("container.id", subject.container_id);
        text("k8s.container.name", subject.container_name);
        text("container.image.name", subject.image);
        if let Some(decision) = self.decided.get() {
            text("criguard.decision", Some(decision.result.to_string()));
            text("criguard.decision.by", decision.by.clone());
            text("criguard.decision.reason", decision.reason.clone());
            if !decision.findings.is_empty() {
                attributes.push(KeyValue::new(
                    "criguard.policy.findings",
                    opentelemetry::Value::Array(
                        decision
                            .findings
                            .iter()
                            .map(|f| f.clone().into())
                            .collect::<Vec<opentelemetry::StringValue>>()
                            .into(),
                    ),
                ));
            }
        } else {
            text("criguard.decision", Some("allowed".into()));
        }
        if let Some(level) = self.notes.audit_level() {
            attributes.push(KeyValue::new("criguard.audit.level", level));
        }
        let waited = self.notes.rate_limit_wait();
        if !waited.is_zero() {
            attributes.push(KeyValue::new(
                "criguard.ratelimit.wait_ms",
                waited.as_secs_f64() * 1e3,
            ));
        }
        let request_bytes = self.request_stats.as_ref().map_or(0, RequestStats::bytes);
        attributes.push(KeyValue::new(
            "criguard.request.bytes",
            i64::try_from(request_bytes).unwrap_or(i64::MAX),
        ));
        attributes.push(KeyValue::new(
            "criguard.response.bytes",
            i64::try_from(outcome.response_bytes).unwrap_or(i64::MAX),
        ));
        attributes.push(KeyValue::new(
            "rpc.grpc.status_code",
            i64::from(outcome.code as i32),
        ));
        self.span.set_attributes(attributes);
        if server_error(outcome.code) {
            self.span
                .set_status(Status::error(outcome.message.unwrap_or_default()));
        }
        self.span.end();
    }
}

/// The codes OpenTelemetry's conventions count as a gRPC server's own errors; the others are
/// the caller's (a denial included).
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}
