//! Keeps call storms away from the runtime: rate limits (governor, GCRA) chosen by listener,
//! role, caller uid and method, each rejecting or waiting a bounded time; and a cap on the calls
//! in flight to the runtime per listener.
//!
//! Status, Version and the Stop/Remove calls are never throttled unless a rule names them: a
//! throttled Status makes the node NotReady, a throttled Stop or Remove leaks containers.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::proxy::decision::{Decision, DecisionSlot};
use crate::proxy::error::ProxyError;
use crate::proxy::identity::Caller;
use crate::proxy::listener::ListenerAccess;
use crate::proxy::notes::CallNotes;
use crate::proxy::rpc::{MethodSet, Rpc};
use crate::telemetry::metrics::{RATELIMIT_DECISIONS_TOTAL, RATELIMIT_WAIT_SECONDS};

pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// What a rule does with a call over its rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// RESOURCE_EXHAUSTED at once.
    #[default]
    Reject,
    /// Wait for room, up to `maxWait`; then RESOURCE_EXHAUSTED.
    Wait,
}

/// One rule as written under `limits:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileLimit {
    pub name: String,
    pub listener: Option<PathBuf>,
    pub role: Option<String>,
    pub uids: Option<Vec<u32>>,
    #[serde(default = "MethodSet::all")]
    pub methods: MethodSet,
    /// Calls per second (may be fractional: 0.5 is one every two seconds).
    pub rate: f64,
    /// Calls allowed at once after a quiet time; default: one second's worth.
    pub burst: Option<u32>,
    /// One budget per caller uid instead of one for all callers.
    #[serde(default)]
    pub per_caller: bool,
    #[serde(default)]
    pub action: Action,
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub name: String,
    pub listener: Option<PathBuf>,
    pub role: Option<String>,
    pub uids: Option<Vec<u32>>,
    pub methods: MethodSet,
    pub rate: f64,
    pub burst: u32,
    pub per_caller: bool,
    pub action: Action,
    pub max_wait: Duration,
}

/// The slowest rate a limit may have: one call a year.
const MIN_RATE: f64 = 1.0 / (365.0 * 24.0 * 3600.0);

impl Eq for Limit {}

impl Limit {
    /// Validates a rule; the error is (key, problem) under the rule's own key.
    pub fn resolve(file: FileLimit) -> Result<Limit, (&'static str, String)> {
        if file.name.is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        if !(file.rate.is_finite() && file.rate > 0.0) {
            return Err((
                "rate",
                format!("{} is not a positive number of calls per second", file.rate),
            ));
        }
        // The bucket refills one call every 1/rate seconds; slower than a call a year, that
        // period no longer fits the rate limiter's clock (and nobody means it).
        if file.rate < MIN_RATE {
            return Err((
                "rate",
                format!(
                    "{} calls per second is less than one call a year ({MIN_RATE:e})",
                    file.rate
                ),
            ));
        }
        let burst = file.burst.unwrap_or(file.rate.ceil() as u32).max(1);
        if file.max_wait.is_some() && file.action != Action::Wait {
            return Err(("maxWait", "applies only to action: wait".into()));
        }
        Ok(Limit {
            name: file.name,
            listener: file.listener,
            role: file.role,
            uids: file.uids,
            methods: file.methods,
            rate: file.rate,
            burst,
            per_caller: file.per_caller,
            action: file.action,
            max_wait: file.max_wait.unwrap_or(DEFAULT_MAX_WAIT),
        })
    }

    /// The bucket: `burst` calls at once, one more every 1/`rate` seconds (a period that
    /// [`Limit::resolve`] keeps within a year).
    fn quota(&self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.rate).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(self.burst).expect("burst at least 1"))
    }

    /// Whether the rule applies to a call on `listener` by `caller`.
    fn applies(
        &self,
        rpc: &Rpc,
        listener: Option<&ListenerAccess>,
        caller: Option<&Caller>,
    ) -> bool {
        self.listener
            .as_ref()
            .is_none_or(|path| listener.is_some_and(|l| l.path == *path))
            && self
                .role
                .as_ref()
                .is_none_or(|role| listener.is_some_and(|l| l.role.name == *role))
            && self
                .uids
                .as_ref()
                .is_none_or(|uids| caller.is_some_and(|c| uids.contains(&c.uid)))
            && self.methods.contains(rpc)
            && (!rpc.method.facts().throttled_only_by_name || self.methods.names(rpc))
    }
}

/// A rule with its budget.
#[derive(Debug)]
pub struct Limiter<C: Clock + Clone = DefaultClock> {
    limit: Limit,
    clock: C,
    state: State<C>,
}

#[derive(Debug)]
enum State<C: Clock + Clone> {
    Shared(RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>),
    PerCaller(RateLimiter<u32, HashMapStateStore<u32>, C, NoOpMiddleware<C::Instant>>),
}

/// What a rule says about one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Try again after this long.
    Wait(Duration),
    Reject,
}

impl<C: Clock + Clone> Limiter<C> {
    pub fn new(limit: Limit, clock: C) -> Limiter<C> {
        let quota = limit.quota();
        let state = if limit.per_caller {
            State::PerCaller(RateLimiter::hashmap_with_clock(quota, clock.clone()))
        } else {
            State::Shared(RateLimiter::direct_with_clock(quota, clock.clone()))
        };
        Limiter {
            limit,
            clock,
            state,
        }
    }

    /// The verdict on a call by `uid` that has already waited `waited` for this rule.
    pub fn check(&self, uid: u32, waited: Duration) -> Verdict {
        let refused = match &self.state {
            State::Shared(limiter) => limiter.check().err(),
            State::PerCaller(limiter) => limiter.check_key(&uid).err(),
        };
        let Some(not_until) = refused else {
            return Verdict::Allow;
        };
        let wait = not_until.wait_time_from(self.clock.now());
        match self.limit.action {
            Action::Wait if waited + wait <= self.limit.max_wait => Verdict::Wait(wait),
            _ => Verdict::Reject,
        }
    }

    fn throttled(&self, waited: Duration) -> Throttled {
        Throttled {
            limit: self.limit.name.clone(),
            rate: self.limit.rate,
            burst: self.limit.burst,
            waited: if self.limit.action == Action::Wait {
                format!(", after waiting {}", humantime::format_duration(waited))
            } else {
                String::new()
            },
        }
    }
}

/// The limits in force: swapped whole when the configuration is reloaded.
#[derive(Debug, Default)]
struct LimitSet {
    limiters: Vec<Arc<Limiter>>,
    /// Per listener path: the cap, and the semaphore that holds it.
    in_flight: HashMap<PathBuf, (usize, Arc<Semaphore>)>,
}

impl LimitSet {
    /// Rules and caps equal to ones in `previous` keep their budgets and the calls they hold.
    fn new(limits: &[Limit], max_in_flight: &[(PathBuf, usize)], previous: &LimitSet) -> LimitSet {
        let clock = DefaultClock::default();
        LimitSet {
            limiters: limits
                .iter()
                .map(|limit| {
                    previous
                        .limiters
                        .iter()
                        .find(|old| old.limit == *limit)
                        .cloned()
                        .unwrap_or_else(|| {
                            for outcome in ["allowed", "delayed", "rejected"] {
                                metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "limit" => limit.name.clone(), "outcome" => outcome).increment(0);
                            }
                            Arc::new(Limiter::new(limit.clone(), clock.clone()))
                        })
                })
                .collect(),
            in_flight: max_in_flight
                .iter()
                .map(|(path, n)| {
                    let cap = previous
                        .in_flight
                        .get(path)
                        .filter(|(old, _)| old == n)
                        .cloned()
                        .unwrap_or_else(|| (*n, Arc::new(Semaphore::new(*n))));
                    (path.clone(), cap)
                })
                .collect(),
        }
    }
}

/// Layer for [`Limits`]; [`LimitsLayer::replace`] changes the limits while serving.
#[derive(Clone, Debug, Default)]
pub struct LimitsLayer {
    set: Arc<ArcSwap<LimitSet>>,
}

impl LimitsLayer {
    /// `limits` in order; `max_in_flight` per listener path.
    pub fn new(limits: &[Limit], max_in_flight: &[(PathBuf, usize)]) -> LimitsLayer {
        let set = LimitSet::new(limits, max_in_flight, &LimitSet::default());
        LimitsLayer {
            set: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// Puts new limits in force for the calls that arrive from now on. A rule or cap that is
    /// unchanged keeps its budget; a changed one starts afresh.
    pub fn replace(&self, limits: &[Limit], max_in_flight: &[(PathBuf, usize)]) {
        let set = LimitSet::new(limits, max_in_flight, &self.set.load());
        self.set.store(Arc::new(set));
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            set: self.set.clone(),
        }
    }
}

/// Applies every matching rate limit in order, then the listener's in-flight cap.
#[derive(Clone, Debug)]
pub struct Limits<S> {
    inner: S,
    set: Arc<ArcSwap<LimitSet>>,
}

impl<S, B> tower::Service<http::Request<B>> for Limits<S>
where
    S: tower::Service<http::Request<B>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future =
        Either<S::Future, Pin<Box<dyn Future<Output = Result<S::Response, ProxyError>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let listener = extensions.get::<Arc<ListenerAccess>>().map(|l| &**l);
        let caller = extensions.get::<Arc<Caller>>().map(|c| &**c);
        let rpc = extensions.get::<Rpc>();
        let set = self.set.load();
        let matching: Vec<Arc<Limiter>> = match rpc {
            Some(rpc) => set
                .limiters
                .iter()
                .filter(|l| l.limit.applies(rpc, listener, caller))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        // Streams stay open for hours: they would hold a place for good.
        let streaming = rpc.is_some_and(|r| r.method.is_server_streaming());
        let in_flight = listener
            .filter(|_| !streaming)
            .and_then(|l| set.in_flight.get(&l.path))
            .map(|(_, semaphore)| semaphore.clone());
        if matching.is_empty() && in_flight.is_none() {
            return Either::Left(self.inner.call(request));
        }
        // The inner service was made ready for this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let uid = caller.map_or(u32::MAX, |c| c.uid);
        Either::Right(Box::pin(async move {
            for limiter in matching {
                let name = limiter.limit.name.clone();
                let mut waited = Duration::ZERO;
                loop {
                    match limiter.check(uid, waited) {
                        Verdict::Allow => {
                            let outcome = if waited.is_zero() {
                                "allowed"
                            } else {
                                "delayed"
                            };
                            metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "limit" => name.clone(), "outcome" => outcome).increment(1);
                            if !waited.is_zero() {
                                metrics::histogram!(RATELIMIT_WAIT_SECONDS, "limit" => name)
                                    .record(waited.as_secs_f64());
                                if let Some(notes) = request.extensions().get::<CallNotes>() {
                                    notes.add_rate_limit_wait(waited);
                                }
                            }
                            break;
                        }
                        Verdict::Wait(wait) => {
                            tokio::time::sleep(wait).await;
                            waited += wait;
                        }
                        Verdict::Reject => {
                            metrics::counter!(RATELIMIT_DECISIONS_TOTAL, "limit" => name.clone(), "outcome" => "rejected").increment(1);
                            let throttled = limiter.throttled(waited);
                            if let Some(notes) = request.extensions().get::<CallNotes>() {
                                notes.add_rate_limit_wait(waited);
                            }
                            if let Some(slot) = request.extensions().get::<DecisionSlot>() {
                                slot.set(Decision::throttled(
                                    format!("limit {name}"),
                                    throttled.to_string(),
                                ));
                            }
                            return Err(throttled.into());
                        }
                    }
                }
            }
            // Held until the runtime's answer begins: for CRI's unary calls, until it is done.
            let _permit = match in_flight {
                Some(semaphore) => semaphore.acquire_owned().await.ok(),
                None => None,
            };
            inner.call(request).await
        }))
    }
}

/// A call refused by a rate limit (`limits:`).
#[derive(Clone, Debug, thiserror::Error)]
#[error("rate limit {limit:?} ({rate}/s, burst {burst}) exceeded{waited}")]
pub struct Throttled {
    pub limit: String,
    pub rate: f64,
    pub burst: u32,
    /// ", after waiting 1s" when the limit waits first.
    pub waited: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(yaml: &str) -> Limit {
        Limit::resolve(serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    fn call(method: &str) -> Rpc {
        Rpc::from_path(&format!("/runtime.v1.RuntimeService/{method}"))
    }

    /// Every rate the validation takes makes a working limiter; slower ones are refused with
    /// the key, never a panic at start.
    #[test]
    fn rates_from_a_call_a_year_to_huge_make_limiters_and_slower_ones_are_refused() {
        for rate in ["0.0000000318", "0.001", "1", "1e6", "1e300"] {
            let rule = limit(&format!("{{name: r, rate: {rate}}}"));
            let layer = LimitsLayer::new(std::slice::from_ref(&rule), &[]);
            assert_eq!(layer.set.load_full().limiters.len(), 1, "{rate}");
        }
        for rate in ["1e-8", "1e-300", "0", "-1", ".nan", ".inf"] {
            let file = serde_yaml_ng::from_str(&format!("{{name: r, rate: {rate}}}")).unwrap();
            let (key, problem) = Limit::resolve(file).unwrap_err();
            assert_eq!(key, "rate", "{rate}: {problem}");
        }
    }

    #[test]
    fn a_reload_keeps_the_budgets_of_unchanged_rules_and_caps() {
        let lists = limit("{name: lists, rate: 1, burst: 1}");
        let socket = PathBuf::from("/run/criguard/readonly.sock");
        let layer = LimitsLayer::new(std::slice::from_ref(&lists), &[(socket.clone(), 4)]);
        let before = layer.set.load_full();
        assert_eq!(before.limiters[0].check(0, Duration::ZERO), Verdict::Allow);

        let pulls = limit("{name: pulls, rate: 5}");
        layer.replace(&[lists.clone(), pulls], &[(socket.clone(), 4)]);
        let after = layer.set.load_full();
        assert!(Arc::ptr_eq(&before.limiters[0], &after.limiters[0]));
        assert_eq!(
            after.limiters[0].check(0, Duration::ZERO),
            Verdict::Reject,
            "the spent budget stays spent"
        );
        assert!(Arc::ptr_eq(
            &before.in_flight[&socket].1,
            &after.in_flight[&socket].1
        ));

        layer.replace(
            &[limit("{name: lists, rate: 2, burst: 1}")],
            &[(socket.clone(), 8)],
        );
        let changed = layer.set.load_full();
        assert_eq!(changed.limiters.len(), 1);
        assert_eq!(changed.limiters[0].check(0, Duration::ZERO), Verdict::Allow);
        assert_eq!(changed.in_flight[&socket].1.available_permits(), 8);
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_time_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::new(limit("{name: lists, rate: 20, burst: 10}"), clock.clone());
        let verdicts: Vec<Verdict> = (0..12).map(|_| limiter.check(0, Duration::ZERO)).collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Allow).count(),
            10
        );
        assert_eq!(verdicts[10], Verdict::Reject);
        // 20/s: one more call every 50 ms.
        clock.advance(Duration::from_millis(50));
        assert_eq!(limiter.check(0, Duration::ZERO), Verdict::Allow);
        assert_eq!(limiter.check(0, Duration::ZERO), Verdict::Reject);
        clock.advance(Duration::from_secs(10));
        let refilled = (0..20)
            .filter(|_| limiter.check(0, Duration::ZERO) == Verdict::Allow)
            .count();
        assert_eq!(refilled, 10, "the burst is the most that can pass at once");
    }

    #[test]
    fn wait_says_how_long_and_gives_up_past_max_wait() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::new(
            limit("{name: pulls, rate: 2, burst: 1, action: wait, maxWait: 1s}"),
            clock.clone(),
        );
        assert_eq!(limiter.check(0, Duration::ZERO), Verdict::Allow);
        assert_eq!(
            limiter.check(0, Duration::ZERO),
            Verdict::Wait(Duration::from_millis(500))
        );
        // Already waited 600 ms: 500 ms more would pass the bound.
        assert_eq!(
            limiter.check(0, Duration::from_millis(600)),
            Verdict::Reject
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check(0, Duration::from_millis(500)), Verdict::Allow);
    }

    #[test]
    fn per_caller_budgets_are_separate() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::new(limit("{name: agents, rate: 1, perCaller: true}"), clock);
        assert_eq!(limiter.check(1000, Duration::ZERO), Verdict::Allow);
        assert_eq!(limiter.check(1000, Duration::ZERO), Verdict::Reject);
        assert_eq!(limiter.check(1001, Duration::ZERO), Verdict::Allow);
    }

    #[test]
    fn status_version_stop_and_remove_are_throttled_only_when_named() {
        let every = limit("{name: all, rate: 1}");
        let named = limit("{name: named, rate: 1, methods: [read, Status, StopContainer]}");
        for method in ["Status", "Version", "StopContainer", "RemovePodSandbox"] {
            assert!(!every.applies(&call(method), None, None), "{method}");
        }
        assert!(every.applies(&call("ListContainers"), None, None));
        assert!(every.applies(&call("CreateContainer"), None, None));
        assert!(named.applies(&call("Status"), None, None));
        assert!(named.applies(&call("StopContainer"), None, None));
        assert!(
            !named.applies(&call("Version"), None, None),
            "in `read`, but not named"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_key() {
        let bad = |yaml: &str| Limit::resolve(serde_yaml_ng::from_str(yaml).unwrap()).unwrap_err();
        assert_eq!(bad("{name: x, rate: 0}").0, "rate");
        assert_eq!(bad("{name: x, rate: 5, maxWait: 1s}").0, "maxWait");
        assert_eq!(bad("{name: '', rate: 5}").0, "name");
        assert_eq!(limit("{name: x, rate: 2.5}").burst, 3);
    }
}
