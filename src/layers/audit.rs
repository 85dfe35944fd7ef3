//! The audit layer: for each call that a rule may record, it takes a place in the writer's
//! queue before the call goes on (waiting while the queue is full, in events or in bytes:
//! backpressure, counted), watches the answer to its end, and queues the event. With
//! `onFailure: deny`, calls that would be recorded are refused while events cannot be written.

use futures_util::future::{Either, MapOk, TryFutureExt};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::audit::OnFailure;
use crate::audit::event::{Event, Payload};
use crate::audit::rules::Level;
use crate::audit::trail::{AuditTrail, Place};
use crate::proxy::body::error_response;
use crate::proxy::body::framing::{PREFIX_LEN, declared_length, first_message};
use crate::proxy::body::{Outcome, RequestMessageSlot, ResponseBody, StatusBody, StatusObserver};
use crate::proxy::decision::{Decision, DecisionSlot};
use crate::proxy::error::ProxyError;
use crate::proxy::identity::Caller;
use crate::proxy::inspect;
use crate::proxy::notes::CallNotes;
use crate::proxy::rpc::{Method, Object, Rpc};

/// Layer for [`Audit`]; without a trail (audit off) calls pass unrecorded.
#[derive(Clone, Debug)]
pub struct AuditLayer {
    trail: Option<Arc<AuditTrail>>,
}

impl AuditLayer {
    pub fn new(trail: Option<Arc<AuditTrail>>) -> AuditLayer {
        AuditLayer { trail }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            trail: self.trail.clone(),
        }
    }
}

/// Records each call its rules select; sits above the status responder, so that it records the
/// statuses criguard makes itself (denials, limits, an unreachable runtime) too.
#[derive(Clone, Debug)]
pub struct Audit<S> {
    inner: S,
    trail: Option<Arc<AuditTrail>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Audit<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<ResponseBody<RB>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResponseBody<RB>: http_body::Body,
{
    type Response = http::Response<StatusBody<ResponseBody<RB>, AuditRecord>>;
    type Error = Infallible;
    /// Calls the rules do not select pass with nothing boxed or allocated.
    type Future = Either<
        MapOk<S::Future, fn(S::Response) -> Self::Response>,
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The inner service was made ready for this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let extensions = request.extensions();
        let caller = extensions.get::<Arc<Caller>>();
        let highest = match (&self.trail, extensions.get::<Rpc>()) {
            (Some(trail), Some(rpc)) => trail.rules().highest(rpc, caller.map(|c| &**c)),
            _ => Level::None,
        };
        let notes = extensions.get::<CallNotes>().cloned();
        let (Some(trail), Some(rpc), true) = (
            &self.trail,
            extensions.get::<Rpc>().cloned(),
            highest > Level::None,
        ) else {
            if let (Some(notes), Some(_)) = (&notes, &self.trail) {
                notes.set_audit_level(Level::None.name());
            }
            return Either::Left(inner.call(request).map_ok(unaudited::<RB>));
        };
        let caller = caller.cloned();
        let message = RequestMessageSlot::attach(&mut request);
        let decided = DecisionSlot::attach(&mut request);
        let trail = trail.clone();
        Either::Right(Box::pin(async move {
            let time = SystemTime::now();
            let start = Instant::now();
            let place = trail.room().await;
            let keep_response = highest == Level::RequestResponse
                || matches!(
                    rpc.method.facts().creates,
                    Some(Object::Sandbox | Object::Container)
                );
            let mut record = Record {
                trail: trail.clone(),
                place,
                rpc,
                caller,
                message,
                time,
                start,
                decision: None,
                decided,
                notes,
                response: keep_response.then(BytesMut::new),
            };
            let failure = match &record.place {
                None => Some("the audit writer has stopped".to_string()),
                Some(_) => trail.failure(),
            };
            if let (Some(reason), OnFailure::Deny) = (failure, trail.on_failure()) {
                let err = ProxyError::from(AuditUnavailable(reason));
                record.decision = Some(Decision::denied("audit.onFailure".into(), err.to_string()));
                let response = error_response(&err);
                return Ok(StatusBody::wrap(response, AuditRecord(Some(record))));
            }
            let response = inner.call(request).await?;
            Ok(StatusBody::wrap(response, AuditRecord(Some(record))))
        }))
    }
}

fn unaudited<RB>(
    response: http::Response<ResponseBody<RB>>,
) -> http::Response<StatusBody<ResponseBody<RB>, AuditRecord>>
where
    ResponseBody<RB>: http_body::Body,
{
    StatusBody::wrap(response, AuditRecord(None))
}

/// Audit events cannot be written and `audit.onFailure` is `deny`: the calls a rule records
/// are refused (UNAVAILABLE) until they can.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}; refusing calls that must be audited (audit.onFailure: deny)")]
pub struct AuditUnavailable(pub String);

/// The audit side of one call, until it ends. Dropped before its end (the caller went away
/// before the answer began), it records the call as cancelled.
#[derive(Debug)]
pub struct AuditRecord(Option<Record>);

#[derive(Debug)]
struct Record {
    trail: Arc<AuditTrail>,
    place: Option<Place>,
    rpc: Rpc,
    caller: Option<Arc<Caller>>,
    message: RequestMessageSlot,
    time: SystemTime,
    start: Instant,
    /// The audit trail's own decision (a refusal under `onFailure: deny`).
    decision: Option<Decision>,
    /// Where the layers below leave theirs.
    decided: DecisionSlot,
    /// Where the call's span learns the level it was recorded at.
    notes: Option<CallNotes>,
    /// The head of the answer, when the event or the inventory needs it.
    response: Option<BytesMut>,
}

impl StatusObserver for AuditRecord {
    fn on_data(&mut self, data: &Bytes) {
        let Some(record) = &mut self.0 else { return };
        let limit = PREFIX_LEN + record.trail.max_payload_bytes().max(4096);
        if let Some(buffer) = &mut record.response
            && buffer.len() < limit
        {
            let room = limit - buffer.len();
            buffer.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    fn on_end(mut self, outcome: Outcome) {
        if let Some(record) = self.0.take() {
            record.finish(outcome);
        }
    }
}

impl Drop for AuditRecord {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish(Outcome::cancelled());
        }
    }
}

impl Record {
    fn finish(self, outcome: Outcome) {
        let trail = &self.trail;
        let method = self.rpc.method;
        let mut subject = self.message.subject_of(method);
        trail.inventory().complete(&mut subject);
        let answer = self.response.as_deref().and_then(first_message);
        if outcome.code == tonic::Code::Ok {
            let created = answer.and_then(|m| inspect::created_id(method, m));
            match (method, created) {
                (Method::RunPodSandbox, Some(id)) => subject.sandbox_id = Some(id.into()),
                (Method::CreateContainer, Some(id)) => subject.container_id = Some(id.into()),
                _ => {}
            }
        }
        let namespace = subject.pod.as_ref().map(|p| p.namespace.as_str());
        let choice = trail
            .rules()
            .choose(&self.rpc, self.caller.as_deref(), namespace);
        if let Some(notes) = &self.notes {
            notes.set_audit_level(choice.level.name());
        }
        if choice.level == Level::None {
            return;
        }
        let payload = |message: &[u8], whole: usize| Payload {
            message: trail.copy(message),
            cut_from: (whole > message.len()).then_some(whole),
        };
        let request = (choice.level >= Level::Request)
            .then(|| self.message.get())
            .flatten()
            .map(|m| {
                // A message far over the limit is not decoded at all: it could not be shown.
                let whole = m.len();
                let shown = if whole > 4 * trail.max_payload_bytes() {
                    &m[..0]
                } else {
                    &m[..]
                };
                payload(shown, whole)
            });
        let response = (choice.level == Level::RequestResponse)
            .then_some(self.response.as_deref())
            .flatten()
            .and_then(|buffer| {
                let whole = declared_length(buffer)?;
                Some(match first_message(buffer) {
                    Some(m) => payload(m, whole),
                    None => payload(&[], whole),
                })
            });
        let event = Event {
            // Random (version 4) from a fast generator: an id must be unique, not secret.
            id: uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid(),
            time: self.time,
            level: choice.level,
            rpc: self.rpc,
            caller: self.caller,
            subject,
            code: outcome.code,
            message: outcome.message,
            latency_ms: self.start.elapsed().as_secs_f64() * 1e3,
            decision: self
                .decision
                .or_else(|| self.decided.get().cloned())
                .unwrap_or_else(Decision::allowed),
            request,
            response,
            redact_env_values: choice.redact_env_values,
            max_payload_bytes: trail.max_payload_bytes(),
        };
        match self.place {
            Some(place) => place.submit(event),
            None => crate::telemetry::events::audit_event_lost(&event.id, &event.rpc),
        }
    }
}
