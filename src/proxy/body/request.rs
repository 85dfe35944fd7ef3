//! The request body: its first message read ahead for the layers to inspect, then every byte
//! forwarded as the caller sent it, with the framing checked against the size limit.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use super::call::{RequestMessage, RequestStats};
use super::framing::{FrameScanner, Oversized, first_message_range};
use crate::proxy::error::{BadRequest, Direction, MessageTooLarge, ProxyError};

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

pub(super) fn too_large(
    direction: Direction,
    over: Oversized,
    scanner: &FrameScanner,
) -> ProxyError {
    MessageTooLarge {
        direction,
        size: over.size,
        limit: scanner.limit(),
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
                    if let Some(range) = first_message_range(&all) {
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
