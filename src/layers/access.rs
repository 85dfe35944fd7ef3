//! Who may call what: each listening socket has a role (the methods callable through it) and
//! may admit only some uids and gids. A call outside them is refused with PERMISSION_DENIED
//! before its body is read, and never reaches the runtime.

use std::future::{Ready, ready};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use serde::Deserialize;

use crate::proxy::decision::{Decision, DecisionSlot};
use crate::proxy::error::ProxyError;
use crate::proxy::identity::Caller;
use crate::proxy::listener::{ListenerAccess, Role};
use crate::proxy::rpc::{MethodSet, Rpc};

impl ListenerAccess {
    fn check(&self, rpc: Option<&Rpc>, caller: Option<&Caller>) -> Result<(), Denied> {
        if !self.admits(caller) {
            return Err(Denied::Caller {
                caller: caller.map_or_else(|| "an unknown process".into(), |c| c.to_string()),
                listener: self.path.display().to_string(),
            });
        }
        if let Some(rpc) = rpc
            && !self.role.methods.contains(rpc)
        {
            return Err(Denied::Role {
                role: self.role.name.clone(),
                method: rpc.method_name().to_string(),
                listener: self.path.display().to_string(),
            });
        }
        Ok(())
    }
}

/// `roles:` in the configuration: role name to methods.
pub type FileRoles = std::collections::BTreeMap<String, MethodSet>;

/// Layer for [`Access`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLayer;

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { inner }
    }
}

/// Refuses calls that the request's listener does not allow (see [`ListenerAccess`]).
#[derive(Clone, Debug)]
pub struct Access<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Either<Ready<Result<S::Response, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        if let Some(listener) = extensions.get::<Arc<ListenerAccess>>() {
            let caller = extensions.get::<Arc<Caller>>().map(|c| &**c);
            if let Err(denied) = listener.check(extensions.get::<Rpc>(), caller) {
                if let Some(slot) = extensions.get::<DecisionSlot>() {
                    slot.set(Decision::denied(denied.decided_by(), denied.to_string()));
                }
                return Either::Left(ready(Err(ProxyError::from(denied))));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

/// Parses the `role:` of a listener against the shipped and configured roles.
pub fn find_role(name: &str, roles: &FileRoles) -> Result<Role, String> {
    if let Some(methods) = roles.get(name) {
        return Ok(Role {
            name: name.into(),
            methods: methods.clone(),
        });
    }
    match name {
        "full" => Ok(Role::full()),
        "read-only" => Ok(Role::read_only()),
        _ => Err(format!(
            "unknown role {name:?}: use full, read-only, or one defined under roles"
        )),
    }
}

/// A listener as written under `listeners:`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileListener {
    pub path: PathBuf,
    pub mode: Option<String>,
    pub group: Option<String>,
    pub role: Option<String>,
    pub allow_uids: Option<Vec<u32>>,
    pub allow_gids: Option<Vec<u32>>,
    pub max_in_flight: Option<usize>,
}

/// A call refused by who may call what (a listener's role or its allowed callers).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Denied {
    #[error("caller {caller} is not allowed on {listener}")]
    Caller { caller: String, listener: String },
    #[error("role {role:?} of {listener} does not allow {method}")]
    Role {
        role: String,
        method: String,
        listener: String,
    },
}

impl Denied {
    /// What decided, for the audit trail.
    pub fn decided_by(&self) -> String {
        match self {
            Denied::Caller { listener, .. } => format!("listener {listener}"),
            Denied::Role { role, .. } => format!("role {role}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str) -> Rpc {
        Rpc::from_path(&format!("/runtime.v1.RuntimeService/{method}"))
    }

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: Some(42),
            exe: Some("/usr/bin/agent".into()),
        }
    }

    #[test]
    fn read_only_lists_but_never_changes_or_enters() {
        let listener = ListenerAccess {
            path: "/run/criguard/readonly.sock".into(),
            role: Role::read_only(),
            allow_uids: None,
            allow_gids: None,
        };
        for ok in [
            "ListContainers",
            "ContainerStatus",
            "Version",
            "Status",
            "GetContainerEvents",
        ] {
            assert!(listener.check(Some(&call(ok)), None).is_ok(), "{ok}");
        }
        for refused in [
            "CreateContainer",
            "ExecSync",
            "Exec",
            "Attach",
            "PortForward",
            "RemovePodSandbox",
            "UpdateRuntimeConfig",
            "UpdatePodSandboxResources",
        ] {
            let denied = listener.check(Some(&call(refused)), None).unwrap_err();
            assert_eq!(
                denied.to_string(),
                format!(
                    "role \"read-only\" of /run/criguard/readonly.sock does not allow {refused}"
                )
            );
        }
    }

    #[test]
    fn only_the_allowed_uids_and_gids_get_in() {
        let listener = ListenerAccess {
            path: "/run/criguard/criguard.sock".into(),
            role: Role::full(),
            allow_uids: Some(vec![0]),
            allow_gids: Some(vec![994]),
        };
        assert!(listener.admits(Some(&caller(0, 0))));
        assert!(listener.admits(Some(&caller(1000, 994))));
        assert!(!listener.admits(Some(&caller(1000, 1000))));
        assert!(!listener.admits(None));
        let denied = listener
            .check(Some(&call("Version")), Some(&caller(1000, 1000)))
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "caller uid=1000 gid=1000 pid=42 exe=/usr/bin/agent is not allowed on /run/criguard/criguard.sock"
        );
    }

    #[test]
    fn roles_come_from_the_config_or_are_shipped() {
        let mut roles = FileRoles::new();
        roles.insert(
            "monitoring".into(),
            MethodSet::parse(&["read", "ExecSync"]).unwrap(),
        );
        let role = find_role("monitoring", &roles).unwrap();
        assert!(role.methods.contains(&call("ExecSync")));
        assert!(!role.methods.contains(&call("CreateContainer")));
        assert_eq!(find_role("full", &roles).unwrap(), Role::full());
        assert!(
            find_role("admin", &roles)
                .unwrap_err()
                .contains("unknown role \"admin\"")
        );
    }
}
