//! One log line per finished call: a WARN line for each failure (method, the object it was
//! about, gRPC code, message, latency), successes at DEBUG. It sits above the status responder,
//! so it also sees the statuses that criguard made itself. Identical failures are reduced (see
//! `log_reduction.rs`): a runtime that keeps failing the same call does not flood the journal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;

use super::log_reduction::{ErrorLogReducer, LogDecision};
use super::observe::{Observe, ObserveLayer};
use crate::proxy::body::{Outcome, RequestMessageSlot, StatusObserver};
use crate::proxy::identity::Caller;
use crate::proxy::inspect;
use crate::proxy::rpc::{Method, Rpc};

/// The call log's settings and state: [`ObserveLayer`]`<CallLog>` is the layer.
#[derive(Clone, Debug)]
pub struct CallLog {
    reducer: Arc<Mutex<ErrorLogReducer>>,
}

/// The call-log layer.
pub type CallLogLayer = ObserveLayer<CallLog>;

impl CallLog {
    /// Identical errors are logged once per `window`; at most `max_keys` are remembered.
    pub fn layer(window: Duration, max_keys: usize) -> CallLogLayer {
        ObserveLayer::new(CallLog {
            reducer: Arc::new(Mutex::new(ErrorLogReducer::new(window, max_keys))),
        })
    }
}

impl Observe for CallLog {
    type Record = LogRecord;

    fn start<B>(&self, request: &mut http::Request<B>) -> LogRecord {
        let message = RequestMessageSlot::attach(request);
        LogRecord {
            caller: request.extensions().get::<Arc<Caller>>().cloned(),
            rpc: request.extensions().get::<Rpc>().cloned(),
            message,
            reducer: self.reducer.clone(),
            start: Instant::now(),
        }
    }
}

/// What is known of a call until it ends.
#[derive(Debug)]
pub struct LogRecord {
    caller: Option<Arc<Caller>>,
    rpc: Option<Rpc>,
    message: RequestMessageSlot,
    reducer: Arc<Mutex<ErrorLogReducer>>,
    start: Instant,
}

impl StatusObserver for LogRecord {
    fn on_end(self, outcome: Outcome) {
        let latency_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let (path, method) = self
            .rpc
            .as_ref()
            .map_or(("", Method::Unknown), |rpc| (&*rpc.path, rpc.method));
        // Unknown methods have no object to read; their path keeps them apart.
        let object = match (method, self.message.get()) {
            (Method::Unknown, _) => path,
            (_, Some(message)) => inspect::object_id(method, message),
            (_, None) => "",
        };
        let code = outcome.code;
        let mut reducer = self.reducer.lock().unwrap_or_else(|e| e.into_inner());
        match code {
            Code::Ok => {
                if !reducer.is_empty() {
                    reducer.on_success(method, object);
                }
                tracing::debug!(method = path, object, code = ?code, latency_ms, "call finished")
            }
            Code::Cancelled => {
                tracing::debug!(method = path, object, code = ?code, latency_ms, "call cancelled")
            }
            _ => {
                let error = outcome.message.as_deref().unwrap_or("");
                let decision = reducer.on_error(method, object, error, Instant::now());
                if let LogDecision::Log { suppressed } = decision {
                    let caller = self.caller.as_deref();
                    tracing::warn!(
                        method = path,
                        object,
                        caller_uid = caller.map(|c| c.uid),
                        caller_pid = caller.and_then(|c| c.pid),
                        caller_exe = caller.and_then(|c| c.exe.as_deref()),
                        code = ?code,
                        error,
                        latency_ms,
                        suppressed_since_last = suppressed,
                        "call failed"
                    )
                }
            }
        }
    }
}
