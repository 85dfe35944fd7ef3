//! The policy layer: below the request reader, so that it sees the first message; it refuses a
//! call an enforcing policy denies (PERMISSION_DENIED) or must inspect and cannot decode
//! (INVALID_ARGUMENT) before anything reaches the runtime, and records every decision.

use std::future::{Ready, ready};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::future::Either;

use crate::inventory::Inventory;
use crate::policy::{Call, Evaluation, Finding, PolicySet, read_subject};
use crate::proxy::body::{RequestMessage, RequestMessageSlot};
use crate::proxy::decision::{Decision, DecisionSlot};
use crate::proxy::error::ProxyError;
use crate::proxy::identity::Caller;
use crate::proxy::rpc::Rpc;
use crate::telemetry::metrics::POLICY_EVALUATION_SECONDS;

/// Layer for [`Policies`].
#[derive(Clone, Debug)]
pub struct PolicyLayer {
    policies: Arc<ArcSwap<PolicySet>>,
    inventory: Option<Inventory>,
}

impl PolicyLayer {
    /// `policies` may be swapped at any time (reload); each call sees one set.
    pub fn new(policies: Arc<ArcSwap<PolicySet>>, inventory: Option<Inventory>) -> PolicyLayer {
        PolicyLayer {
            policies,
            inventory,
        }
    }
}

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = Policies<S>;

    fn layer(&self, inner: S) -> Policies<S> {
        Policies {
            inner,
            policies: self.policies.clone(),
            inventory: self.inventory.clone(),
        }
    }
}

/// Evaluates the policies that match each call.
#[derive(Clone, Debug)]
pub struct Policies<S> {
    inner: S,
    policies: Arc<ArcSwap<PolicySet>>,
    inventory: Option<Inventory>,
}

impl<S, B> tower::Service<http::Request<B>> for Policies<S>
where
    S: tower::Service<http::Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Either<S::Future, Ready<Result<S::Response, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let set = self.policies.load();
        let extensions = request.extensions();
        let Some(rpc) = extensions.get::<Rpc>() else {
            return Either::Left(self.inner.call(request));
        };
        if !set.inspects(rpc) {
            return Either::Left(self.inner.call(request));
        }
        let start = Instant::now();
        // A call that names only ids is about what the inventory knows of them: read once for
        // every layer (audit, learning read it too). The others carry their pod and container,
        // which the policies read from their own views of the request.
        let slot = extensions.get::<RequestMessageSlot>();
        let subject = if PolicySet::reads_views(rpc.method) {
            slot.and_then(RequestMessageSlot::read_subject)
        } else {
            slot.and_then(|slot| {
                slot.subject(|m| read_subject(rpc.method, m, self.inventory.as_ref()))
            })
        };
        let message = extensions.get::<RequestMessage>();
        let call = Call {
            rpc,
            caller: extensions.get::<Arc<Caller>>().map(|c| &**c),
            message: message.map(|m| &m.bytes[..]),
            compressed: message.is_some_and(|m| m.compressed),
            subject,
        };
        let evaluation = set.evaluate(call, self.inventory.as_ref());
        static EVALUATION_SECONDS: OnceLock<metrics::Histogram> = OnceLock::new();
        EVALUATION_SECONDS
            .get_or_init(|| metrics::histogram!(POLICY_EVALUATION_SECONDS))
            .record(start.elapsed().as_secs_f64());
        record(&evaluation, &set, rpc, extensions.get::<DecisionSlot>());
        if let Some(refusal) = evaluation.refusal() {
            return Either::Right(ready(Err(refusal.refusal().into())));
        }
        Either::Left(self.inner.call(request))
    }
}

/// Metrics, warnings and the decision for the audit trail.
fn record(evaluation: &Evaluation, set: &PolicySet, rpc: &Rpc, slot: Option<&DecisionSlot>) {
    for policy in &evaluation.evaluated {
        let mut findings = evaluation
            .findings
            .iter()
            .filter(|f| f.policy == *policy)
            .peekable();
        if findings.peek().is_none() {
            if let Some(allowing) = set.policies.iter().find(|p| Arc::ptr_eq(&p.name, policy)) {
                allowing.count_allowed();
            }
            continue;
        }
        for finding in findings {
            crate::policy::events::policy_finding(finding, rpc);
        }
    }
    if let Some(slot) = slot
        && let Some(decision) = decision(evaluation)
    {
        slot.set(decision);
    }
}

/// The decision the audit trail records: the refusal when a finding refuses the call, whatever
/// order the policies were evaluated in; else the first finding of a policy in audit or warn
/// mode. The other findings are listed beside it. `None` when nothing was found.
fn decision(evaluation: &Evaluation) -> Option<Decision> {
    let chosen = evaluation
        .refusal()
        .or_else(|| evaluation.findings.first())?;
    let by = |f: &Finding| format!("policy {} ({})", f.policy, f.mode.as_str());
    let findings = evaluation
        .findings
        .iter()
        .filter(|f| !std::ptr::eq(*f, chosen))
        .map(|f| format!("{}: {}", by(f), f.describe()))
        .collect();
    Some(Decision {
        result: if chosen.refuses() {
            "denied"
        } else {
            "allowed"
        },
        by: Some(by(chosen)),
        reason: Some(chosen.describe()),
        findings,
    })
}
