//! The final gRPC status of an answer, told to an observer once the answer has ended.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use crate::proxy::status;

/// How an answer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: Code,
    /// `grpc-message`, read only when the code is not OK.
    pub message: Option<String>,
    /// Bytes of response body that went to the caller.
    pub response_bytes: u64,
}

impl Outcome {
    /// A call whose caller went away before its answer began: what an observer dropped before
    /// its end records.
    pub fn cancelled() -> Outcome {
        Outcome {
            code: Code::Cancelled,
            message: Some("the caller went away before the answer".into()),
            response_bytes: 0,
        }
    }
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
