//! The Pod Security Standards controls that CRI carries (see the field map in the README):
//! one function per check, each saying what is wrong in words an operator understands, naming
//! the offending field.

// The deprecated seccomp and AppArmor path fields are still honoured by runtimes: checked too.
#![allow(deprecated)]

use super::{HostPortParams, PssLevel, Target};
use crate::cri::{NamespaceMode, NamespaceOption, SecurityProfile, security_profile::ProfileType};
use crate::policy::view::text;

/// Capabilities the baseline level allows to be added (PSS baseline).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls PSS baseline calls safe.
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types PSS baseline allows.
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Privileged mode, for the pod or the container.
pub(super) fn privileged(target: &Target) -> Option<String> {
    if target.sandbox_security().is_some_and(|s| s.privileged) {
        return Some("requests privileged mode for the pod".into());
    }
    target
        .container_security()
        .is_some_and(|s| s.privileged)
        .then(|| "requests privileged mode".into())
}

/// The node's network, PID or IPC namespace.
pub(super) fn host_namespaces(target: &Target) -> Option<String> {
    let pod = target
        .sandbox_security()
        .and_then(|s| s.namespace_options.as_ref());
    let container = target
        .container_security()
        .and_then(|s| s.namespace_options.as_ref());
    pod.into_iter().chain(container).find_map(host_namespace)
}

/// Host ports mapped by the pod, except the allowed ones.
pub(super) fn host_ports(target: &Target, params: &HostPortParams) -> Option<String> {
    if !target.creates_sandbox {
        return None;
    }
    target.pod?.port_mappings.iter().find_map(|m| {
        let port = u16::try_from(m.host_port).unwrap_or(0);
        (m.host_port != 0 && !params.allowed.contains(&port))
            .then(|| format!("maps host port {} (port_mappings.host_port)", m.host_port))
    })
}

/// Capabilities added beyond the level, or (restricted) ALL not dropped.
pub(super) fn capabilities(target: &Target, level: &PssLevel) -> Option<String> {
    let capabilities = target.container_security()?.capabilities.as_ref();
    let added = capabilities
        .into_iter()
        .flat_map(|c| c.add_capabilities.iter().chain(&c.add_ambient_capabilities));
    for cap in added {
        let allowed = match level {
            PssLevel::Baseline => BASELINE_CAPABILITIES.iter().any(|c| is_capability(cap, c)),
            PssLevel::Restricted => is_capability(cap, "NET_BIND_SERVICE"),
        };
        if !allowed {
            return Some(format!(
                "adds capability {} (capabilities.add_capabilities)",
                normalise_capability(&text(cap))
            ));
        }
    }
    let drops_all =
        capabilities.is_some_and(|c| c.drop_capabilities.iter().any(|d| is_capability(d, "ALL")));
    (*level == PssLevel::Restricted && !drops_all)
        .then(|| "does not drop ALL capabilities (capabilities.drop_capabilities)".into())
}

/// Seccomp unconfined, for the pod or the container.
pub(super) fn seccomp(target: &Target) -> Option<String> {
    if let Some(sandbox) = target.sandbox_security()
        && let Some(problem) =
            seccomp_problem(sandbox.seccomp.as_ref(), sandbox.seccomp_profile_path)
    {
        return Some(format!("{problem} for the pod"));
    }
    let container = target.container_security();
    if target.container.is_some() {
        let (profile, path) = container.map_or((None, &b""[..]), |s| {
            (s.seccomp.as_ref(), s.seccomp_profile_path)
        });
        return seccomp_problem(profile, path);
    }
    None
}

/// AppArmor unconfined.
pub(super) fn apparmor(target: &Target) -> Option<String> {
    let pod = target.sandbox_security().and_then(|s| s.apparmor.as_ref());
    let container = target.container_security();
    let unconfined = |p: Option<&SecurityProfile>| {
        p.is_some_and(|p| p.profile_type == ProfileType::Unconfined as i32)
    };
    if unconfined(pod)
        || unconfined(container.and_then(|s| s.apparmor.as_ref()))
        || container.is_some_and(|s| s.apparmor_profile == b"unconfined")
    {
        return Some("sets AppArmor to Unconfined (apparmor.profile_type)".into());
    }
    None
}

/// SELinux types outside the allowed set, or a user or role.
pub(super) fn selinux(target: &Target) -> Option<String> {
    let pod = target
        .sandbox_security()
        .and_then(|s| s.selinux_options.as_ref());
    let container = target
        .container_security()
        .and_then(|s| s.selinux_options.as_ref());
    pod.into_iter().chain(container).find_map(|o| {
        if !SELINUX_TYPES.contains(&o.r#type.as_str()) {
            Some(format!(
                "sets SELinux type {:?} (selinux_options.type)",
                o.r#type
            ))
        } else if !o.user.is_empty() || !o.role.is_empty() {
            Some("sets a SELinux user or role (selinux_options)".into())
        } else {
            None
        }
    })
}

/// Sysctls outside the safe set.
pub(super) fn sysctls(target: &Target) -> Option<String> {
    if !target.creates_sandbox {
        return None;
    }
    let sysctls = &target.pod?.linux.as_ref()?.sysctls;
    let mut unsafe_ones: Vec<&String> = sysctls
        .keys()
        .filter(|k| !SAFE_SYSCTLS.contains(&k.as_str()))
        .collect();
    unsafe_ones.sort();
    unsafe_ones
        .first()
        .map(|k| format!("sets sysctl {k} outside the safe set (linux.sysctls)"))
}

/// Privilege escalation allowed.
pub(super) fn no_new_privs(target: &Target) -> Option<String> {
    target.container?;
    (!target.container_security().is_some_and(|s| s.no_new_privs))
        .then(|| "allows privilege escalation (no_new_privs is false)".into())
}

/// Running as root, or without saying as whom.
pub(super) fn run_as_non_root(target: &Target) -> Option<String> {
    target.container?;
    // Root in a user namespace of the pod's own is not the node's root (Kubernetes 1.35+).
    if in_user_namespace(target) {
        return None;
    }
    let security = target.container_security();
    match security.and_then(|s| s.run_as_user.as_ref()) {
        Some(user) if user.value == 0 => Some("runs as uid 0 (run_as_user)".into()),
        Some(_) => None,
        None => match security.map_or(&b""[..], |s| s.run_as_username) {
            b"" => Some("does not set a non-root user (run_as_user / run_as_username)".into()),
            b"root" | b"0" => Some("runs as user root (run_as_username)".into()),
            _ => None,
        },
    }
}

/// /proc unmasked: Baseline allows it in a user namespace of the pod's own (Kubernetes
/// 1.35+), Restricted never.
pub(super) fn proc_mount(target: &Target, level: &PssLevel) -> Option<String> {
    let security = target.container_security()?;
    if *level == PssLevel::Baseline && in_user_namespace(target) {
        return None;
    }
    (!security.privileged && security.masked_paths.is_empty() && security.readonly_paths.is_empty())
        .then(|| "unmasks /proc (masked_paths and readonly_paths are empty)".into())
}

/// Whether the container runs in a user namespace of the pod's own, as the runtime will make
/// it: `userns_options` in mode POD with uid and gid mappings (Kubernetes `hostUsers: false`),
/// on a runtime that said it runs pods so.
fn in_user_namespace(target: &Target) -> bool {
    let userns = target
        .container_security()
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|o| o.userns_options.as_ref());
    target.runtime_user_namespaces
        && userns.is_some_and(|u| {
            u.mode == NamespaceMode::Pod as i32 && !u.uids.is_empty() && !u.gids.is_empty()
        })
}

fn host_namespace(options: &NamespaceOption) -> Option<String> {
    let node = NamespaceMode::Node as i32;
    [
        (options.network, "network"),
        (options.pid, "PID"),
        (options.ipc, "IPC"),
    ]
    .into_iter()
    .find(|(mode, _)| *mode == node)
    .map(|(_, name)| format!("uses the host's {name} namespace (namespace_options)"))
}

fn seccomp_problem(profile: Option<&SecurityProfile>, deprecated_path: &[u8]) -> Option<String> {
    match profile {
        Some(p) if p.profile_type == ProfileType::Unconfined as i32 => {
            Some("sets seccomp to Unconfined (seccomp.profile_type)".into())
        }
        Some(_) => None,
        // An absent message is not RuntimeDefault: runtimes run such a container unconfined.
        None => match deprecated_path {
            b"" | b"unconfined" => Some("runs without a seccomp profile (seccomp is absent, which runtimes treat as unconfined)".into()),
            _ => None,
        },
    }
}

/// Whether `name` is the capability `wanted` (upper case, without `CAP_`), written in any case,
/// with or without the `CAP_` prefix.
pub(super) fn is_capability(name: &[u8], wanted: &str) -> bool {
    let name = name.trim_ascii();
    let name = match name.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"CAP_") => &name[4..],
        _ => name,
    };
    name.eq_ignore_ascii_case(wanted.as_bytes())
}

fn normalise_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map_or(upper.clone(), str::to_string)
}
