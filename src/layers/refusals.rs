//! The refusals of the stack's layers and of the policies, and the gRPC code a caller gets for
//! each: the layers' half of the status map (`proxy/status.rs` maps the core's own errors and
//! writes the status). Each refusal is defined where it is decided.

use std::sync::Arc;

use tonic::Code;

use super::access::Denied;
use super::audit::AuditUnavailable;
use super::cri_only::NotCri;
use super::limits::Throttled;
use crate::policy::PolicyRefusal;
use crate::proxy::error::{ProxyError, Refusal};

/// Not allowed on this socket, or not to this caller.
impl Refusal for Denied {
    fn code(&self) -> Code {
        Code::PermissionDenied
    }
}

/// A rate limit with `action: reject`, or a wait that would outlast the call's deadline.
impl Refusal for Throttled {
    fn code(&self) -> Code {
        Code::ResourceExhausted
    }
}

/// Not a CRI call while policies are in force (containerd's own API).
impl Refusal for NotCri {
    fn code(&self) -> Code {
        Code::PermissionDenied
    }
}

/// The audit trail cannot write, with `onFailure: deny` (reads are not audited: the node
/// stays Ready).
impl Refusal for AuditUnavailable {
    fn code(&self) -> Code {
        Code::Unavailable
    }
}

/// A policy's refusal; a request it must read and cannot decode is the caller's error.
impl Refusal for PolicyRefusal {
    fn code(&self) -> Code {
        if self.undecodable {
            Code::InvalidArgument
        } else {
            Code::PermissionDenied
        }
    }
}

macro_rules! into_proxy_error {
    ($($refusal:ty),*) => {
        $(
            impl From<$refusal> for ProxyError {
                fn from(refusal: $refusal) -> ProxyError {
                    ProxyError::Refused(Arc::new(refusal))
                }
            }
        )*
    };
}

into_proxy_error!(Denied, Throttled, NotCri, AuditUnavailable, PolicyRefusal);
