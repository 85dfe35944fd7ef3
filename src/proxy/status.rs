//! The one place that turns criguard's errors into gRPC statuses: the core's own here, and a
//! layer's refusal by the code it gives (`layers/refusals.rs`).
//!
//! A caller always gets a real gRPC status, never an HTTP error page: before the runtime
//! answered, as a trailers-only response (HTTP 200, `grpc-status` in the headers); after the
//! answer started, as trailers that end the stream.

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::Code;

use super::error::ProxyError;

/// The status a caller sees for an error.
pub fn code_of(err: &ProxyError) -> Code {
    match err {
        ProxyError::MessageTooLarge(_) => Code::ResourceExhausted,
        ProxyError::Runtime(_) => Code::Unavailable,
        ProxyError::BadRequest(_) => Code::InvalidArgument,
        ProxyError::ShuttingDown => Code::Unavailable,
        ProxyError::Refused(refusal) => refusal.code(),
    }
}

/// The status message: always says that it comes from criguard, not from the runtime.
pub fn message_of(err: &ProxyError) -> String {
    format!("criguard: {err}")
}

/// The headers of a trailers-only gRPC response carrying the status for `err`.
pub fn error_headers(err: &ProxyError) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    insert_status(&mut headers, code_of(err), &message_of(err));
    headers
}

/// Trailers that end an answer which is already under way with the status for `err`.
pub fn error_trailers(err: &ProxyError) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    insert_status(&mut trailers, code_of(err), &message_of(err));
    trailers
}

/// gRPC's percent-encoding for `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Header names read on every call, made once rather than parsed from text per lookup.
const GRPC_STATUS_HEADER: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE_HEADER: HeaderName = HeaderName::from_static("grpc-message");

fn insert_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(GRPC_STATUS_HEADER, HeaderValue::from(code as i32));
    let encoded = utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert(GRPC_MESSAGE_HEADER, value);
    }
}

/// gRPC code names as grpc-go prints them (`OK`, `NotFound`, ...): the `code` label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Reads `grpc-status` from headers or trailers; `None` when absent or malformed.
pub fn read_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS_HEADER)?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// Reads and decodes `grpc-message`.
pub fn read_message(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(&GRPC_MESSAGE_HEADER)?.as_bytes();
    Some(
        percent_encoding::percent_decode(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error::{Direction, MessageTooLarge, RuntimeError};

    #[test]
    fn runtime_unreachable_is_unavailable_and_names_the_socket() {
        let err = ProxyError::from(RuntimeError::Unreachable {
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            reason: "No such file or directory (os error 2)".into(),
        });
        let headers = error_headers(&err);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(read_code(&headers), Some(Code::Unavailable));
        let msg = read_message(&headers).unwrap();
        assert!(
            msg.starts_with("criguard: runtime endpoint unix:///run/containerd/containerd.sock"),
            "{msg}"
        );
    }

    #[test]
    fn oversized_message_is_resource_exhausted_and_names_the_limit() {
        let err = ProxyError::from(MessageTooLarge {
            direction: Direction::Response,
            size: 20 << 20,
            limit: 16 << 20,
        });
        let trailers = error_trailers(&err);
        assert_eq!(read_code(&trailers), Some(Code::ResourceExhausted));
        assert!(
            read_message(&trailers)
                .unwrap()
                .contains("limit of 16777216 bytes")
        );
    }

    #[test]
    fn messages_survive_percent_encoding() {
        let mut headers = HeaderMap::new();
        insert_status(&mut headers, Code::Internal, "100% broken: ünïcode\nline");
        assert_eq!(
            read_message(&headers).unwrap(),
            "100% broken: ünïcode\nline"
        );
    }
}
