//! Host paths a container mounts: only below the kubelet's pod directories or an allowed
//! prefix, judged as the kernel resolves the path.

use super::{HostPathParams, Target};
use crate::policy::view::text;

/// Host paths mounted outside the pod directories and the allowed prefixes.
pub(super) fn host_paths(target: &Target, params: &HostPathParams) -> Option<String> {
    let container = target.container?;
    container.mounts.iter().find_map(|m| {
        let given = text(m.host_path);
        // `/var/lib/kubelet/pods/../../../etc` is /etc: judge the path it names.
        let path = resolve_dots(&given);
        let path = path.as_ref();
        let allowed = path.is_empty()
            // Below it, not the directory itself: that holds every pod's volumes.
            || path
                .strip_prefix(target.kubelet_pods_dir())
                .is_some_and(|rest| !rest.trim_matches('/').is_empty())
            || params.allowed_prefixes.iter().any(|p| under(path, p));
        (!allowed).then(|| format!("mounts host path {given} (mounts.host_path)"))
    })
}

/// `path` with its `.` and `..` components resolved as the kernel resolves them (symbolic
/// links aside, which only the node's filesystem knows); unchanged when it has none.
pub(super) fn resolve_dots(path: &str) -> std::borrow::Cow<'_, str> {
    // The common case, a plain absolute path, is judged as it is, without a copy.
    if !has_dot_segments(path) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    // A trailing slash is kept: the kubelet's directories are written with one.
    let slash = if path.ends_with('/') && !parts.is_empty() {
        "/"
    } else {
        ""
    };
    std::borrow::Cow::Owned(format!("/{}{slash}", parts.join("/")))
}

/// Whether a path may have an empty, `.` or `..` component: a path with none is what it names.
/// A quick test for the common case (every mount's path is checked on every call), which may
/// also hold for a name such as `/.hidden`; those are resolved, and come out unchanged.
fn has_dot_segments(path: &str) -> bool {
    path.starts_with('.') || path.contains("/.") || path.contains("//")
}

/// Whether `path` is `prefix` or below it (as directories, not as strings).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix || path.starts_with(&format!("{prefix}/"))
}
