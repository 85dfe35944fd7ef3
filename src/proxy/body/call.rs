//! What a call's layers share about its request: the first message as read, what it is
//! about, and what happened to the body on its way to the runtime.

use bytes::Bytes;
use http_body::Frame;

use crate::proxy::error::ProxyError;
use crate::proxy::inspect::Subject;
use crate::proxy::rpc::Method;

/// The first gRPC message of a request, as the caller sent it (without the 5-byte prefix).
/// Put in the request extensions by [`read_request_head`] for layers that decode it.
#[derive(Clone, Debug)]
pub struct RequestMessage {
    pub bytes: Bytes,
    /// Set by the caller's prefix (with `grpc-encoding`): criguard cannot read the bytes, so a
    /// layer that must inspect the call refuses it rather than pass it unread.
    pub compressed: bool,
}

/// A place for the first request message, put in the request extensions by a layer above the
/// one that reads it, so that it can still read the message when the call has failed. It also
/// keeps what the call is about ([`Subject`]), read from the message once for every layer.
#[derive(Clone, Debug, Default)]
pub struct RequestMessageSlot(std::sync::Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    message: std::sync::OnceLock<Bytes>,
    subject: std::sync::OnceLock<Subject>,
}

impl RequestMessageSlot {
    /// The slot of `request`, put in its extensions if no layer above did: all layers that
    /// watch a call share one.
    pub fn attach<B>(request: &mut http::Request<B>) -> RequestMessageSlot {
        request
            .extensions_mut()
            .get_or_insert_default::<RequestMessageSlot>()
            .clone()
    }

    pub fn set(&self, message: &RequestMessage) {
        if !message.compressed {
            let _ = self.0.message.set(message.bytes.clone());
        }
    }

    pub fn get(&self) -> Option<&Bytes> {
        self.0.message.get()
    }

    /// The call's subject if a layer has read it already.
    pub fn read_subject(&self) -> Option<&Subject> {
        self.0.subject.get()
    }

    /// The call's subject: `read` from the message by the first layer that asks (it may fill
    /// in what criguard knows of the ids), the same for every later one. `None` without a
    /// message.
    pub fn subject(&self, read: impl FnOnce(&Bytes) -> Subject) -> Option<&Subject> {
        let message = self.0.message.get()?;
        Some(self.0.subject.get_or_init(|| read(message)))
    }

    /// A copy of the call's subject as `method`'s request names it (empty without a message),
    /// for a layer to complete with what it knows.
    pub fn subject_of(&self, method: Method) -> Subject {
        self.subject(|m| Subject::of_request(method, m))
            .cloned()
            .unwrap_or_default()
    }
}

/// What happened to a request body on its way to the runtime, shared with the forwarder and,
/// through the response extensions, with the layers above.
#[derive(Clone, Debug, Default)]
pub struct RequestStats(std::sync::Arc<RequestStatsInner>);

#[derive(Debug, Default)]
struct RequestStatsInner {
    /// Why the body failed: the HTTP/2 client only reports a reset stream, and the caller
    /// should learn the real reason (e.g. a message over the limit).
    failure: std::sync::OnceLock<ProxyError>,
    /// Bytes of body forwarded.
    bytes: std::sync::atomic::AtomicU64,
}

impl RequestStats {
    pub fn failure(&self) -> Option<&ProxyError> {
        self.0.failure.get()
    }

    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn record_failure(&self, err: ProxyError) -> ProxyError {
        let _ = self.0.failure.set(err.clone());
        err
    }

    pub(super) fn count(&self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.count_bytes(data.len());
        }
    }

    pub(super) fn count_bytes(&self, len: usize) {
        self.0
            .bytes
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
