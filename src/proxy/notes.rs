//! What layers note about a call beside their decision, for its span: how long rate limits
//! held it, the audit level it was recorded at. The layer that reads them (tracing) puts a
//! [`CallNotes`] in the request extensions; the others fill it in when it is there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct CallNotes(Arc<Notes>);

#[derive(Debug, Default)]
struct Notes {
    rate_limit_wait_micros: AtomicU64,
    audit_level: OnceLock<&'static str>,
}

impl CallNotes {
    /// The notes of `request`, put in its extensions if no layer above did.
    pub fn attach<B>(request: &mut http::Request<B>) -> CallNotes {
        request
            .extensions_mut()
            .get_or_insert_default::<CallNotes>()
            .clone()
    }

    pub fn add_rate_limit_wait(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.0
            .rate_limit_wait_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// The time rate limits (`action: wait`) held the call, in all.
    pub fn rate_limit_wait(&self) -> Duration {
        Duration::from_micros(self.0.rate_limit_wait_micros.load(Ordering::Relaxed))
    }

    /// The audit level the call was recorded at (`None` included); the first one noted stays.
    pub fn set_audit_level(&self, level: &'static str) {
        let _ = self.0.audit_level.set(level);
    }

    pub fn audit_level(&self) -> Option<&'static str> {
        self.0.audit_level.get().copied()
    }
}
