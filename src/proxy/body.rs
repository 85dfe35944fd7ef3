//! Request and response bodies as they pass through criguard: the caller's bytes, never
//! re-encoded, with the gRPC message framing watched for the size limit and the final
//! status made visible to the layers.
//!
//! - [`read_request_head`] reads a request's first gRPC message so that layers can inspect it;
//!   [`RequestBody`] then forwards exactly the bytes that were read, followed by the rest.
//! - [`ResponseBody`] streams the runtime's answer through untouched; it ends the answer with a
//!   gRPC status in trailers when a message is over the limit, when the runtime connection
//!   breaks, or when criguard shuts down a long stream.
//! - [`StatusBody`] tells an observer the final gRPC status of an answer once it has ended.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Code;

use super::error::{BadRequest, Direction, MessageTooLarge, ProxyError, RuntimeError};
use super::inspect::Subject;
use super::status;

/// Every gRPC message starts with a 5-byte prefix: a compression flag and a big-endian length.
const PREFIX_LEN: usize = 5;

/// Follows the gRPC length-prefixed framing across body chunks and flags a message over the
/// limit as soon as its prefix has been seen, before any of its payload is forwarded.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    limit: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    remaining: usize,
}

/// A message whose prefix declares more bytes than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversized {
    /// The declared length of the message.
    pub size: usize,
    /// Where the message's prefix starts in the chunk being scanned (0 when it started in an
    /// earlier chunk).
    pub offset: usize,
}

impl FrameScanner {
    pub fn new(limit: usize) -> Self {
        FrameScanner {
            limit,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Advances over one chunk of the body.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<(), Oversized> {
        let mut at = 0;
        while at < chunk.len() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() - at);
                self.remaining -= skip;
                at += skip;
                continue;
            }
            self.prefix[self.prefix_len] = chunk[at];
            self.prefix_len += 1;
            at += 1;
            if self.prefix_len == PREFIX_LEN {
                self.prefix_len = 0;
                let size = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if size > self.limit {
                    return Err(Oversized {
                        size,
                        offset: at.saturating_sub(PREFIX_LEN),
                    });
                }
                self.remaining = size;
            }
        }
        Ok(())
    }
}

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
}

pin_project! {
    /// The request body forwarded to the runtime: the bytes read ahead by
    /// [`read_request_head`], then the rest of the caller's body, with its framing checked.
    pub struct RequestBody<B> {
        head: Option<Bytes>,
        #[pin]
        rest: B,
        rest_done: bool,
        trailers: Option<HeaderMap>,
        scanner: FrameScanner,
        stats: RequestStats,
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

    fn record_failure(&self, err: ProxyError) -> ProxyError {
        let _ = self.0.failure.set(err.clone());
        err
    }

    fn count(&self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.count_bytes(data.len());
        }
    }

    fn count_bytes(&self, len: usize) {
        self.0
            .bytes
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<B> RequestBody<B> {
    /// Forwards `body` as it comes, checking each message against `limit`.
    pub fn streaming(body: B, limit: usize) -> Self {
        RequestBody {
            head: None,
            rest: body,
            rest_done: false,
            trailers: None,
            scanner: FrameScanner::new(limit),
            stats: RequestStats::default(),
        }
    }

    /// What happens to this body, readable once it has gone.
    pub fn stats(&self) -> RequestStats {
        self.stats.clone()
    }

    /// The whole body, when it has already been read completely (a unary call): it can then be
    /// sent in one go, with no task to pipe it.
    pub fn take_complete(&mut self) -> Option<Bytes> {
        if !self.rest_done || self.trailers.is_some() {
            return None;
        }
        let head = self.head.take().unwrap_or_default();
        self.stats.count_bytes(head.len());
        Some(head)
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.project();
        if let Some(head) = this.head.take() {
            let frame = Frame::data(head);
            this.stats.count(&frame);
            return Poll::Ready(Some(Ok(frame)));
        }
        if *this.rest_done {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        match ready!(this.rest.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(over) = this.scanner.scan(data)
                {
                    *this.rest_done = true;
                    let err = too_large(Direction::Request, over, this.scanner);
                    return Poll::Ready(Some(Err(this.stats.record_failure(err))));
                }
                this.stats.count(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                *this.rest_done = true;
                let err = BadRequest(err.to_string()).into();
                Poll::Ready(Some(Err(this.stats.record_failure(err))))
            }
            None => {
                *this.rest_done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none()
            && self.trailers.is_none()
            && (self.rest_done || self.rest.is_end_stream())
    }
}

fn too_large(direction: Direction, over: Oversized, scanner: &FrameScanner) -> ProxyError {
    MessageTooLarge {
        direction,
        size: over.size,
        limit: scanner.limit,
    }
    .into()
}

/// Reads the caller's body until its first gRPC message is complete (or the body ends), and
/// returns that message for inspection together with a body that forwards every byte read,
/// unchanged, followed by the rest.
///
/// A first message over `limit` is refused as soon as its prefix arrives, before its payload is
/// read.
pub async fn read_request_head<B>(
    mut body: B,
    limit: usize,
) -> Result<(Option<RequestMessage>, RequestBody<B>), ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut scanner = FrameScanner::new(limit);
    // Everything read so far; the usual case, a whole unary request in one chunk, costs no copy.
    let mut read: Option<Bytes> = None;
    let mut trailers = None;
    let mut ended = body.is_end_stream();
    while !ended {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if let Err(over) = scanner.scan(&data) {
                        return Err(too_large(Direction::Request, over, &scanner));
                    }
                    let all = match read.take() {
                        None => data,
                        Some(before) => {
                            let mut joined = BytesMut::with_capacity(before.len() + data.len());
                            joined.extend_from_slice(&before);
                            joined.extend_from_slice(&data);
                            joined.freeze()
                        }
                    };
                    if let Some(range) = first_message(&all) {
                        let message = RequestMessage {
                            compressed: all[0] != 0,
                            bytes: all.slice(range),
                        };
                        let rest_done = body.is_end_stream();
                        let forwarded = RequestBody {
                            head: Some(all),
                            rest: body,
                            rest_done,
                            trailers: None,
                            scanner,
                            stats: RequestStats::default(),
                        };
                        return Ok((Some(message), forwarded));
                    }
                    read = Some(all);
                }
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
            Some(Err(err)) => return Err(BadRequest(err.to_string()).into()),
            None => ended = true,
        }
    }
    let forwarded = RequestBody {
        head: read,
        rest: body,
        rest_done: true,
        trailers,
        scanner,
        stats: RequestStats::default(),
    };
    Ok((None, forwarded))
}

/// The byte range of the first complete message in `buf`, if it is all there.
fn first_message(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let prefix = buf.get(..PREFIX_LEN)?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let end = PREFIX_LEN.checked_add(len)?;
    (buf.len() >= end).then_some(PREFIX_LEN..end)
}

pin_project! {
    /// The runtime's answer on its way to the caller.
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// No body: a trailers-only answer made by criguard.
        Empty,
        /// The runtime's body, streamed through.
        Runtime {
            #[pin]
            inner: B,
            scanner: FrameScanner,
            endpoint: std::sync::Arc<str>,
            // Ends a long-lived stream at shutdown; only set for streaming methods.
            shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
            // A frame to send before polling `inner` again.
            pending: Option<Frame<Bytes>>,
            done: bool,
        },
    }
}

impl<B> ResponseBody<B> {
    pub fn empty() -> Self {
        ResponseBody::Empty
    }

    /// Streams `inner` through, ending it with RESOURCE_EXHAUSTED if a message is over `limit`.
    pub fn runtime(inner: B, limit: usize, endpoint: std::sync::Arc<str>) -> Self {
        ResponseBody::Runtime {
            inner,
            scanner: FrameScanner::new(limit),
            endpoint,
            shutdown: None,
            pending: None,
            done: false,
        }
    }

    /// Ends the stream with UNAVAILABLE ("criguard is shutting down") when `shutdown` fires,
    /// so that the caller reconnects at once instead of waiting on a dead stream.
    pub fn end_on(mut self, shutdown: WaitForCancellationFutureOwned) -> Self {
        if let ResponseBody::Runtime { shutdown: slot, .. } = &mut self {
            *slot = Some(Box::pin(shutdown));
        }
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let ResponseBodyProj::Runtime {
            inner,
            scanner,
            endpoint,
            shutdown,
            pending,
            done,
        } = self.project()
        else {
            return Poll::Ready(None);
        };
        if let Some(frame) = pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if *done {
            return Poll::Ready(None);
        }
        if let Some(signal) = shutdown
            && signal.as_mut().poll(cx).is_ready()
        {
            *done = true;
            let trailers = status::error_trailers(&ProxyError::ShuttingDown);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = match ready!(inner.poll_frame(cx)) {
            None => {
                *done = true;
                return Poll::Ready(None);
            }
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                *done = true;
                let err = ProxyError::from(RuntimeError::ConnectionLost {
                    endpoint: endpoint.clone(),
                    reason: err.to_string(),
                });
                return Poll::Ready(Some(Ok(Frame::trailers(status::error_trailers(&err)))));
            }
        };
        let Some(data) = frame.data_ref() else {
            *done = true;
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(over) = scanner.scan(data) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // Forward the complete messages before the oversized one, then end with the status.
        *done = true;
        let trailers = Frame::trailers(status::error_trailers(&too_large(
            Direction::Response,
            over,
            scanner,
        )));
        if over.offset == 0 {
            return Poll::Ready(Some(Ok(trailers)));
        }
        let before = data.slice(..over.offset);
        *pending = Some(trailers);
        Poll::Ready(Some(Ok(Frame::data(before))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Runtime {
                inner,
                pending,
                done,
                ..
            } => pending.is_none() && (*done || inner.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Runtime { inner, .. } => inner.size_hint(),
        }
    }
}

/// How an answer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: Code,
    /// `grpc-message`, read only when the code is not OK.
    pub message: Option<String>,
    /// Bytes of response body that went to the caller.
    pub response_bytes: u64,
}

/// Told once how an answer ended.
pub trait StatusObserver {
    /// Each piece of the answer's body as it passes, before the end.
    fn on_data(&mut self, _data: &Bytes) {}

    fn on_end(self, outcome: Outcome);
}

impl<F: FnOnce(Outcome)> StatusObserver for F {
    fn on_end(self, outcome: Outcome) {
        self(outcome)
    }
}

pin_project! {
    /// Passes a body through and tells `observer` the final gRPC status: from the headers for a
    /// trailers-only answer, from the trailers otherwise, CANCELLED when the caller went away
    /// first, UNKNOWN when the answer ended with no status at all.
    pub struct StatusBody<B, O: StatusObserver> {
        #[pin]
        inner: B,
        observer: Option<O>,
        bytes: u64,
    }

    impl<B, O: StatusObserver> PinnedDrop for StatusBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                observer.on_end(Outcome { code: Code::Cancelled, message: None, response_bytes: *this.bytes });
            }
        }
    }
}

impl<B: Body, O: StatusObserver> StatusBody<B, O> {
    /// Wraps the body of `response`; a trailers-only answer is reported at once.
    pub fn wrap(response: http::Response<B>, observer: O) -> http::Response<Self> {
        let trailers_only = status::read_code(response.headers())
            .map(|code| outcome_from(code, response.headers(), 0));
        let (parts, inner) = response.into_parts();
        let observer = match trailers_only {
            Some(outcome) if inner.is_end_stream() => {
                observer.on_end(outcome);
                None
            }
            _ => Some(observer),
        };
        http::Response::from_parts(
            parts,
            StatusBody {
                inner,
                observer,
                bytes: 0,
            },
        )
    }
}

fn outcome_from(code: Code, headers: &HeaderMap, response_bytes: u64) -> Outcome {
    let message = (code != Code::Ok)
        .then(|| status::read_message(headers))
        .flatten();
    Outcome {
        code,
        message,
        response_bytes,
    }
}

impl<B: Body<Data = Bytes>, O: StatusObserver> Body for StatusBody<B, O> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                    if let Some(observer) = this.observer.as_mut() {
                        observer.on_data(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(observer) = this.observer.take()
                {
                    let code = status::read_code(trailers).unwrap_or(Code::Unknown);
                    observer.on_end(outcome_from(code, trailers, *this.bytes));
                }
            }
            Some(Err(_)) | None => {
                if let Some(observer) = this.observer.take() {
                    observer.on_end(Outcome {
                        code: Code::Unknown,
                        message: Some("answer ended without a gRPC status".into()),
                        response_bytes: *this.bytes,
                    });
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    type TestBody = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn body_of(frames: Vec<Frame<Bytes>>) -> TestBody {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    fn trailers(code: Code) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", (code as i32).into());
        t
    }

    #[test]
    fn scanner_follows_messages_split_anywhere() {
        let mut stream = framed(b"hello");
        stream.extend(framed(&[7; 300]));
        stream.extend(framed(b""));
        for split in 0..stream.len() {
            let mut scanner = FrameScanner::new(300);
            scanner.scan(&stream[..split]).unwrap();
            scanner.scan(&stream[split..]).unwrap();
            assert_eq!(
                (scanner.prefix_len, scanner.remaining),
                (0, 0),
                "split at {split}"
            );
        }
    }

    #[test]
    fn scanner_flags_the_first_message_over_the_limit_at_its_prefix() {
        let mut stream = framed(b"ok");
        stream.extend(framed(&[1; 101]));
        let mut scanner = FrameScanner::new(100);
        assert_eq!(
            scanner.scan(&stream),
            Err(Oversized {
                size: 101,
                offset: 7
            })
        );
        let mut scanner = FrameScanner::new(101);
        assert_eq!(scanner.scan(&stream), Ok(()));
    }

    #[tokio::test]
    async fn request_head_is_the_first_message_and_the_bytes_go_on_unchanged() {
        let wire = framed(b"\x0a\x03abc\xf8\x06\x01"); // field 1 and an unknown field 111
        let split = wire.len() / 2;
        let body = body_of(vec![
            Frame::data(Bytes::copy_from_slice(&wire[..split])),
            Frame::data(Bytes::copy_from_slice(&wire[split..])),
        ]);
        let (message, forwarded) = read_request_head(body, 1024).await.unwrap();
        let message = message.unwrap();
        assert_eq!(&message.bytes[..], &wire[5..]);
        assert!(!message.compressed);
        let sent = forwarded.collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], &wire[..]);
    }

    #[tokio::test]
    async fn request_over_the_limit_is_refused_before_its_payload() {
        let wire = framed(&[0; 2000]);
        let body = body_of(vec![Frame::data(Bytes::copy_from_slice(&wire[..5]))]);
        let err = read_request_head(body, 1000).await.err().unwrap();
        assert!(matches!(
            err,
            ProxyError::MessageTooLarge(MessageTooLarge {
                direction: Direction::Request,
                size: 2000,
                limit: 1000
            })
        ));
    }

    #[tokio::test]
    async fn empty_request_body_is_forwarded_as_empty() {
        let (message, forwarded) = read_request_head(body_of(vec![]), 1000).await.unwrap();
        assert!(message.is_none());
        assert!(forwarded.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn oversized_answer_ends_with_resource_exhausted_after_the_good_messages() {
        let mut wire = framed(b"first");
        wire.extend(framed(&[9; 50]));
        let inner = body_of(vec![
            Frame::data(wire.into()),
            Frame::trailers(trailers(Code::Ok)),
        ]);
        let body = ResponseBody::runtime(inner, 10, "unix:///rt.sock".into());
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(status::read_code(&trailers), Some(Code::ResourceExhausted));
        assert_eq!(&collected.to_bytes()[..], &framed(b"first")[..]);
    }

    #[tokio::test]
    async fn status_body_reports_the_code_from_trailers() {
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        let inner = body_of(vec![
            Frame::data(framed(b"x").into()),
            Frame::trailers(trailers(Code::NotFound)),
        ]);
        let response = StatusBody::wrap(http::Response::new(inner), move |o: Outcome| {
            *sink.lock().unwrap() = Some(o)
        });
        response.into_body().collect().await.unwrap();
        let outcome = seen.lock().unwrap().take().unwrap();
        assert_eq!(outcome.code, Code::NotFound);
        assert_eq!(outcome.response_bytes, 6);
    }

    #[tokio::test]
    async fn status_body_reports_trailers_only_answers_at_once_and_cancels_on_drop() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let trailers_only = status::error_response::<TestBody>(&ProxyError::ShuttingDown);
        let _ = StatusBody::wrap(trailers_only, move |o: Outcome| {
            sink.lock().unwrap().push(o.code)
        });
        let sink = seen.clone();
        let open = http::Response::new(body_of(vec![Frame::data(framed(b"x").into())]));
        drop(StatusBody::wrap(open, move |o: Outcome| {
            sink.lock().unwrap().push(o.code)
        }));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Code::Unavailable, Code::Cancelled]
        );
    }
}
