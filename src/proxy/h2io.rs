//! Bodies over HTTP/2 streams, the same both ways: what arrives on a stream (a caller's request,
//! a runtime's answer) read as an [`http_body::Body`] that gives flow-control capacity back as
//! it is passed on, and a body sent on a stream (a request to the runtime, an answer to a
//! caller) frame by frame, as the peer's window allows.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};

/// What arrives on an HTTP/2 stream: its DATA frames, then its trailers. Capacity is released
/// as each frame is passed on, so the peer sends at the pace of whoever reads.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(recv: h2::RecvStream) -> Self {
        RecvBody {
            recv,
            data_done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// Sends `body` on `stream` to its end: each DATA frame once the peer's window has room for
/// part of it (so a slow reader holds at most one frame per stream here), then the trailers,
/// or an empty end-of-stream frame. Stops when the peer resets the stream, dropping the body
/// (which cancels whatever feeds it); a body error resets the stream with CANCEL.
pub async fn send_body<B>(body: B, mut stream: h2::SendStream<Bytes>)
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut waiting: Option<Bytes> = None;
    std::future::poll_fn(|cx| poll_send(body.as_mut(), &mut stream, &mut waiting, cx)).await
}

fn poll_send<B>(
    mut body: Pin<&mut B>,
    stream: &mut h2::SendStream<Bytes>,
    waiting: &mut Option<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<()>
where
    B: Body<Data = Bytes>,
{
    loop {
        if stream.poll_reset(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some(data) = waiting.take() {
            if stream.capacity() == 0 {
                match stream.poll_capacity(cx) {
                    Poll::Pending => {
                        *waiting = Some(data);
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(_))) => {
                        *waiting = Some(data);
                        continue;
                    }
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                }
            }
            // The part beyond the granted capacity waits in the stream's send buffer.
            if stream.send_data(data, false).is_err() {
                return Poll::Ready(());
            }
            continue;
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
            Some(Err(_)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Poll::Ready(());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    // Capacity is claimed only for data in hand: a claim made ahead could hold
                    // the connection window that another stream needs.
                    stream.reserve_capacity(data.len());
                    *waiting = Some(data);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                    } else {
                        let _ = stream.send_data(Bytes::new(), true);
                    }
                    return Poll::Ready(());
                }
            },
        }
    }
}
