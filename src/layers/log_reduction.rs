//! Identical-error log reduction, the kubelet's `logreduction` done for every method: the same
//! error for the same method and object is logged once per window; the next line after the
//! window (or with another message) says how many were held back. A success, or a Stop/Remove
//! of the object, clears it. Memory is bounded: the oldest keys are evicted first.
//!
//! Pure bookkeeping with the time passed in, so that tests drive the clock by hand.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proxy::rpc::Method;
use crate::telemetry::metrics as names;

/// The kubelet's `identicalErrorDelay`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// What to do with a failed call's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogDecision {
    /// Log it; `suppressed` identical errors were held back since the last line for this key.
    Log { suppressed: u64 },
    /// Hold it back.
    Suppress,
}

#[derive(Debug)]
struct Entry {
    message: String,
    logged_at: Instant,
    suppressed: u64,
    /// Bumped on every insert, to tell a live key from a stale one in the eviction queue.
    generation: u64,
}

type Key = (Method, Box<str>);

/// The reducer's state: one entry per (method, object), with the last message logged.
#[derive(Debug)]
pub struct ErrorLogReducer {
    window: Duration,
    max_keys: usize,
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Key, u64)>,
    generation: u64,
}

impl ErrorLogReducer {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        ErrorLogReducer {
            window,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// A call of `method` on `object` (container, sandbox or image id; empty for id-less calls)
    /// failed with `message` at `now`.
    pub fn on_error(
        &mut self,
        method: Method,
        object: &str,
        message: &str,
        now: Instant,
    ) -> LogDecision {
        let key: Key = (method, object.into());
        if let Some(entry) = self.entries.get_mut(&key)
            && entry.message == message
            && now.duration_since(entry.logged_at) < self.window
        {
            entry.suppressed += 1;
            metrics::counter!(names::ERROR_LOGS_SUPPRESSED_TOTAL, "method" => method.as_str())
                .increment(1);
            return LogDecision::Suppress;
        }
        let suppressed = self.entries.get(&key).map_or(0, |e| e.suppressed);
        self.generation += 1;
        let entry = Entry {
            message: message.to_string(),
            logged_at: now,
            suppressed: 0,
            generation: self.generation,
        };
        if self.entries.insert(key.clone(), entry).is_none() {
            self.evict_to(self.max_keys - 1);
        }
        self.order.push_back((key, self.generation));
        LogDecision::Log { suppressed }
    }

    /// A call of `method` on `object` succeeded: its errors are forgotten. A successful
    /// Stop/Remove forgets every error of the object.
    pub fn on_success(&mut self, method: Method, object: &str) {
        if object.is_empty() {
            self.entries.remove(&(method, "".into()));
            return;
        }
        // After it the object is gone: all its remembered errors are cleared.
        if method.facts().ends_object {
            self.entries.retain(|(_, o), _| &**o != object);
        } else {
            self.entries.remove(&(method, object.into()));
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the oldest keys until at most `keep` remain (the one being inserted is counted).
    fn evict_to(&mut self, keep: usize) {
        while self.entries.len() > keep + 1 {
            let Some((key, generation)) = self.order.pop_front() else {
                return;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.entries.remove(&key);
                metrics::counter!(names::ERROR_LOG_KEYS_EVICTED_TOTAL).increment(1);
            }
        }
        // Entries cleared by successes leave stale queue items; keep the queue bounded too.
        if self.order.len() > 4 * self.max_keys {
            let entries = &self.entries;
            self.order.retain(|(key, generation)| {
                entries
                    .get(key)
                    .is_some_and(|e| e.generation == *generation)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Method = Method::ContainerStatus;

    fn reducer() -> (ErrorLogReducer, Instant) {
        (
            ErrorLogReducer::new(Duration::from_secs(60), 100),
            Instant::now(),
        )
    }

    #[test]
    fn an_identical_error_is_logged_once_per_window_then_with_the_count() {
        let (mut r, t0) = reducer();
        assert_eq!(
            r.on_error(M, "c1", "not found", t0),
            LogDecision::Log { suppressed: 0 }
        );
        for s in 1..=999 {
            let at = t0 + Duration::from_millis(s * 50);
            assert_eq!(r.on_error(M, "c1", "not found", at), LogDecision::Suppress);
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            r.on_error(M, "c1", "not found", later),
            LogDecision::Log { suppressed: 999 }
        );
        assert_eq!(
            r.on_error(M, "c1", "not found", later),
            LogDecision::Suppress
        );
    }

    #[test]
    fn another_message_another_object_or_method_logs_again() {
        let (mut r, t0) = reducer();
        r.on_error(M, "c1", "not found", t0);
        assert_eq!(r.on_error(M, "c1", "not found", t0), LogDecision::Suppress);
        assert_eq!(
            r.on_error(M, "c1", "timeout", t0),
            LogDecision::Log { suppressed: 1 }
        );
        assert_eq!(
            r.on_error(M, "c2", "timeout", t0),
            LogDecision::Log { suppressed: 0 }
        );
        assert_eq!(
            r.on_error(Method::ExecSync, "c1", "timeout", t0),
            LogDecision::Log { suppressed: 0 }
        );
    }

    #[test]
    fn a_success_or_a_removal_clears_the_object() {
        let (mut r, t0) = reducer();
        r.on_error(M, "c1", "not found", t0);
        r.on_error(Method::ExecSync, "c1", "boom", t0);
        r.on_success(M, "c1");
        assert_eq!(
            r.on_error(M, "c1", "not found", t0),
            LogDecision::Log { suppressed: 0 }
        );
        assert_eq!(
            r.on_error(Method::ExecSync, "c1", "boom", t0),
            LogDecision::Suppress
        );
        r.on_success(Method::RemoveContainer, "c1");
        assert!(r.is_empty());
        assert_eq!(
            r.on_error(Method::ExecSync, "c1", "boom", t0),
            LogDecision::Log { suppressed: 0 }
        );
    }

    #[test]
    fn memory_stays_bounded_and_the_oldest_keys_go_first() {
        let mut r = ErrorLogReducer::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for id in ["a", "b", "c", "d"] {
            r.on_error(M, id, "x", t0);
        }
        assert_eq!(r.len(), 3);
        // "a" was evicted: it logs again; "d" is still held.
        assert_eq!(r.on_error(M, "d", "x", t0), LogDecision::Suppress);
        assert_eq!(
            r.on_error(M, "a", "x", t0),
            LogDecision::Log { suppressed: 0 }
        );
        for i in 0..10_000 {
            r.on_error(M, &format!("k{i}"), "x", t0);
            r.on_success(M, &format!("k{i}"));
        }
        assert!(r.order.len() <= 4 * 3 + 1, "{}", r.order.len());
    }
}
