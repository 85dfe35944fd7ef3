//! What criguard's own checks (roles, rate limits, policies, the audit trail) decided about a
//! call: the layer that decides puts it in the call's slot, the audit trail records it.

use std::sync::{Arc, OnceLock};

use serde::Serialize;

/// One decision: allowed, or denied/throttled, and by what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `allowed`, `denied` or `throttled`.
    pub result: &'static str,
    /// The role, limit or policy that decided, when the call was not simply allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What other policies in audit or warn mode found about the call, beside the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

impl Decision {
    pub fn allowed() -> Decision {
        Decision {
            result: "allowed",
            by: None,
            reason: None,
            findings: Vec::new(),
        }
    }

    pub fn denied(by: String, reason: String) -> Decision {
        Decision {
            result: "denied",
            by: Some(by),
            reason: Some(reason),
            findings: Vec::new(),
        }
    }

    pub fn throttled(by: String, reason: String) -> Decision {
        Decision {
            result: "throttled",
            by: Some(by),
            reason: Some(reason),
            findings: Vec::new(),
        }
    }
}

/// Where the deciding layer leaves its decision; put in the request extensions by a layer that
/// wants to know (the audit trail). The first decision stays.
#[derive(Clone, Debug, Default)]
pub struct DecisionSlot(Arc<OnceLock<Decision>>);

impl DecisionSlot {
    /// The slot of `request`, put in its extensions if no layer above did.
    pub fn attach<B>(request: &mut http::Request<B>) -> DecisionSlot {
        request
            .extensions_mut()
            .get_or_insert_default::<DecisionSlot>()
            .clone()
    }

    pub fn set(&self, decision: Decision) {
        let _ = self.0.set(decision);
    }

    pub fn get(&self) -> Option<&Decision> {
        self.0.get()
    }
}
