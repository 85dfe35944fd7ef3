//! Only CRI calls pass while policies are in force. The runtime's socket may serve more than
//! CRI (containerd's own API: `ctr run --privileged` works through any relay); no policy can
//! read those calls, so they are refused (PERMISSION_DENIED) as soon as one policy is loaded.
//! Without policies, every call passes: criguard is transparent.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::future::Either;

use crate::policy::PolicySet;
use crate::policy::file::Mode;
use crate::proxy::decision::{Decision, DecisionSlot};
use crate::proxy::error::ProxyError;
use crate::proxy::rpc::{Rpc, Service};
use crate::telemetry::metrics::POLICY_DECISIONS_TOTAL;

/// Layer for [`CriOnly`].
#[derive(Clone, Debug)]
pub struct CriOnlyLayer {
    policies: Arc<ArcSwap<PolicySet>>,
}

impl CriOnlyLayer {
    /// In force while `policies` (swapped on reload) is not empty.
    pub fn new(policies: Arc<ArcSwap<PolicySet>>) -> CriOnlyLayer {
        CriOnlyLayer { policies }
    }
}

impl<S> tower::Layer<S> for CriOnlyLayer {
    type Service = CriOnly<S>;

    fn layer(&self, inner: S) -> CriOnly<S> {
        CriOnly {
            inner,
            policies: self.policies.clone(),
        }
    }
}

/// Refuses calls to services other than CRI's while policies are in force.
#[derive(Clone, Debug)]
pub struct CriOnly<S> {
    inner: S,
    policies: Arc<ArcSwap<PolicySet>>,
}

impl<S, B> tower::Service<http::Request<B>> for CriOnly<S>
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
        let extensions = request.extensions();
        match extensions.get::<Rpc>() {
            Some(rpc) if rpc.service == Service::Other && !self.policies.load().is_empty() => {
                Either::Right(ready(Err(not_cri(rpc, extensions.get::<DecisionSlot>()))))
            }
            _ => Either::Left(self.inner.call(request)),
        }
    }
}

/// The refusal, counted and recorded for the audit trail as criguard's own decision.
fn not_cri(rpc: &Rpc, slot: Option<&DecisionSlot>) -> ProxyError {
    let reason = format!(
        "{} is not a CRI call, and only CRI calls pass while policies are in force",
        rpc.path
    );
    metrics::counter!(
        POLICY_DECISIONS_TOTAL,
        "policy" => "criguard",
        "rule" => "cri-only",
        "decision" => "deny",
        "mode" => Mode::Enforce.as_str()
    )
    .increment(1);
    if let Some(slot) = slot {
        slot.set(Decision::denied(
            "criguard (policies in force)".into(),
            reason.clone(),
        ));
    }
    NotCri { reason }.into()
}

/// A call to a service other than CRI's while policies are in force (PERMISSION_DENIED).
#[derive(Clone, Debug, thiserror::Error)]
#[error("denied: {reason}")]
pub struct NotCri {
    reason: String,
}
