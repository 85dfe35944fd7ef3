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
//!
//! One file per part: `framing.rs` (the 5-byte prefix), `call.rs` (what a call's layers share),
//! `request.rs`, `response.rs`, `observed.rs` (the final status).

mod call;
pub mod framing;
mod observed;
mod request;
mod response;

pub use call::{RequestMessage, RequestMessageSlot, RequestStats};
pub use framing::{FrameScanner, Oversized};
pub use observed::{Outcome, StatusBody, StatusObserver};
pub use request::{RequestBody, read_request_head};
pub use response::{ResponseBody, error_response};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error::{Direction, MessageTooLarge, ProxyError};
    use crate::proxy::status;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use tonic::Code;

    use framing::tests::framed;

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
        let trailers_only = error_response::<TestBody>(&ProxyError::ShuttingDown);
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
