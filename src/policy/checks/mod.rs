//! The built-in checks: Pod Security Standards where CRI carries the field (see the field map
//! in the README), image registries, and a plain `deny` for calls a policy matches (exec,
//! attach, port-forward). Each check reads the decoded request and says what is wrong, in words
//! an operator understands, naming the offending field.
//!
//! One file per family: `pss.rs` (the Pod Security Standards controls), `host_paths.rs`,
//! `images.rs`; this one holds what the request looks like to them and the table of checks.

mod host_paths;
mod images;
mod pss;

use serde::Deserialize;

use super::view::{
    ContainerSecurityView, ContainerView, PodLabels, PodMetadataView, PodView, SandboxSecurityView,
};

/// The decoded request as the checks see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Target<'a> {
    /// The pod's config as RunPodSandbox makes it (`config`).
    pub pod: Option<&'a PodView<'a>>,
    /// The pod's name, namespace and uid: RunPodSandbox's, or those CreateContainer and
    /// PullImage repeat in their `sandbox_config`.
    pub pod_metadata: Option<&'a PodMetadataView<'a>>,
    /// The pod's labels and annotations, decoded only when a policy needs them.
    pub labels: Option<&'a PodLabels>,
    /// CreateContainer's `config`.
    pub container: Option<&'a ContainerView<'a>>,
    /// The image of CreateContainer (as the user named it, when the request says) or PullImage.
    pub image: Option<&'a [u8]>,
    /// The `image` field of that image itself (CreateContainer's or PullImage's), which the
    /// runtime resolves, whatever `user_specified_image` says beside it.
    pub runtime_image: Option<&'a [u8]>,
    /// The names the runtime gives `runtime_image` when it is an id, as far as criguard has
    /// seen them (ImageStatus and PullImage answers); `None` when it has not.
    pub runtime_image_names: Option<&'a [String]>,
    /// For each image volume of the container (each mount with `image.image`, in order), the
    /// names the runtime gives its image when it is named by id, as far as criguard has seen.
    pub mount_image_names: &'a [Option<Vec<String>>],
    /// Whether the runtime said (its last Status answer) that every handler runs pods in user
    /// namespaces: only then does a container's own user namespace relax the checks that
    /// Kubernetes relaxes for `hostUsers: false` (run_as_non_root, Baseline's proc_mount).
    pub runtime_user_namespaces: bool,
    /// Whether the call creates the sandbox itself (pod-level fields are checked there).
    pub creates_sandbox: bool,
    /// `<kubelet root dir>/pods/`: where the kubelet keeps the volumes it mounts.
    pub kubelet_pods_dir: &'a str,
}

impl<'a> Target<'a> {
    /// `<kubelet root dir>/pods/`, the default root's when none was set.
    fn kubelet_pods_dir(&self) -> &'a str {
        match self.kubelet_pods_dir {
            "" => "/var/lib/kubelet/pods/",
            dir => dir,
        }
    }

    fn container_security(&self) -> Option<&'a ContainerSecurityView<'a>> {
        self.container?.linux.as_ref()?.security_context.as_ref()
    }

    fn sandbox_security(&self) -> Option<&'a SandboxSecurityView<'a>> {
        if !self.creates_sandbox {
            return None;
        }
        self.pod?.linux.as_ref()?.security_context.as_ref()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PssLevel {
    #[default]
    Baseline,
    Restricted,
}

/// No parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PssLevelParams {
    #[serde(default)]
    pub level: PssLevel,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPortParams {
    /// Host ports that may be mapped.
    #[serde(default)]
    pub allowed: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostPathParams {
    /// Host path prefixes that may be mounted besides the kubelet's pod directories.
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageParams {
    /// Repository patterns (`registry.k8s.io`, `ghcr.io/acme/*`); when set, images must match one.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Repository patterns that are refused even when allowed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Images must be pinned by digest (`@sha256:...`).
    #[serde(default)]
    pub require_digest: bool,
}

/// A built-in check with its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Privileged,
    HostNamespaces,
    HostPorts(HostPortParams),
    Capabilities(PssLevel),
    Seccomp,
    AppArmor,
    SELinux,
    Sysctls,
    NoNewPrivs,
    RunAsNonRoot,
    ProcMount(PssLevel),
    HostPaths(HostPathParams),
    Images(ImageParams),
    Deny,
}

impl Check {
    /// What is wrong with the request, or `None` when the check passes.
    pub fn violation(&self, target: &Target) -> Option<String> {
        match self {
            Check::Privileged => pss::privileged(target),
            Check::HostNamespaces => pss::host_namespaces(target),
            Check::HostPorts(params) => pss::host_ports(target, params),
            Check::Capabilities(level) => pss::capabilities(target, level),
            Check::Seccomp => pss::seccomp(target),
            Check::AppArmor => pss::apparmor(target),
            Check::SELinux => pss::selinux(target),
            Check::Sysctls => pss::sysctls(target),
            Check::NoNewPrivs => pss::no_new_privs(target),
            Check::RunAsNonRoot => pss::run_as_non_root(target),
            Check::ProcMount(level) => pss::proc_mount(target, level),
            Check::HostPaths(params) => host_paths::host_paths(target, params),
            Check::Images(params) => images::images(target, params),
            Check::Deny => Some("is not allowed".into()),
        }
    }
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::host_paths::resolve_dots;
    use super::*;
    use crate::cri::security_profile::ProfileType;
    use crate::cri::*;
    use crate::policy::view::{ContainerView, LinuxPodView, MountView, PodView, View};
    use prost::Message;

    /// The container as the policy layer sees it: encoded, then decoded into the view.
    fn container(security: LinuxContainerSecurityContext) -> ContainerView<'static> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            linux: Some(LinuxContainerConfig {
                security_context: Some(security),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Leaked: the view borrows the bytes, as it borrows the request's in the layer.
        ContainerView::decode(config.encode_to_vec().leak()).unwrap()
    }

    /// A container that passes every restricted check.
    fn restricted() -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            run_as_user: Some(Int64Value { value: 1000 }),
            no_new_privs: true,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }
    }

    fn check_container(check: &Check, security: LinuxContainerSecurityContext) -> Option<String> {
        let config = container(security);
        check.violation(&Target {
            container: Some(&config),
            ..Target::default()
        })
    }

    /// The pod as the policy layer sees it: encoded, then decoded into the view.
    fn sandbox(security: LinuxSandboxSecurityContext) -> PodView<'static> {
        let config = PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(security),
                ..Default::default()
            }),
            ..Default::default()
        };
        PodView::decode(config.encode_to_vec().leak()).unwrap()
    }

    fn check_sandbox(check: &Check, pod: &PodView) -> Option<String> {
        check.violation(&Target {
            pod: Some(pod),
            creates_sandbox: true,
            ..Target::default()
        })
    }

    #[test]
    fn a_restricted_container_passes_every_check() {
        for check in [
            Check::Privileged,
            Check::HostNamespaces,
            Check::Capabilities(PssLevel::Restricted),
            Check::Seccomp,
            Check::AppArmor,
            Check::SELinux,
            Check::NoNewPrivs,
            Check::RunAsNonRoot,
            Check::ProcMount(PssLevel::Baseline),
            Check::ProcMount(PssLevel::Restricted),
            Check::HostPaths(HostPathParams::default()),
        ] {
            assert_eq!(check_container(&check, restricted()), None, "{check:?}");
        }
    }

    #[test]
    fn privileged_on_either_level() {
        let c = LinuxContainerSecurityContext {
            privileged: true,
            ..restricted()
        };
        assert_eq!(
            check_container(&Check::Privileged, c).unwrap(),
            "requests privileged mode"
        );
        let pod = sandbox(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
        assert!(
            check_sandbox(&Check::Privileged, &pod)
                .unwrap()
                .contains("for the pod")
        );
        // The same pod config repeated in CreateContainer is judged where the sandbox is made.
        let config = container(restricted());
        let target = Target {
            pod: Some(&pod),
            container: Some(&config),
            ..Target::default()
        };
        assert_eq!(Check::Privileged.violation(&target), None);
    }

    #[test]
    fn host_namespaces_node_mode_is_a_violation_pod_mode_is_not() {
        let mut pod = sandbox(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(
            check_sandbox(&Check::HostNamespaces, &pod)
                .unwrap()
                .contains("network")
        );
        set_namespaces(
            &mut pod,
            NamespaceOption {
                pid: NamespaceMode::Node as i32,
                ..Default::default()
            },
        );
        assert!(
            check_sandbox(&Check::HostNamespaces, &pod)
                .unwrap()
                .contains("PID")
        );
        set_namespaces(
            &mut pod,
            NamespaceOption {
                ipc: NamespaceMode::Container as i32,
                ..Default::default()
            },
        );
        assert_eq!(check_sandbox(&Check::HostNamespaces, &pod), None);
    }

    fn set_namespaces(pod: &mut PodView, namespaces: NamespaceOption) {
        let linux = pod.linux.as_mut().unwrap();
        linux.security_context.as_mut().unwrap().namespace_options = Some(namespaces);
    }

    #[test]
    fn host_ports_except_the_allowed_ones() {
        let pod = PodView {
            port_mappings: vec![PortMapping {
                container_port: 80,
                host_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            check_sandbox(&Check::HostPorts(HostPortParams::default()), &pod)
                .unwrap()
                .contains("8080")
        );
        let allowed = HostPortParams {
            allowed: vec![8080],
        };
        assert_eq!(check_sandbox(&Check::HostPorts(allowed), &pod), None);
        let no_host = PodView {
            port_mappings: vec![PortMapping {
                container_port: 80,
                host_port: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            check_sandbox(&Check::HostPorts(HostPortParams::default()), &no_host),
            None
        );
    }

    #[test]
    fn capabilities_baseline_and_restricted_boundaries() {
        let with = |add: &[&str], drop: &[&str]| LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..restricted()
        };
        let baseline = Check::Capabilities(PssLevel::Baseline);
        let restricted_check = Check::Capabilities(PssLevel::Restricted);
        assert_eq!(
            check_container(&baseline, with(&["CAP_CHOWN", "kill"], &[])),
            None
        );
        assert!(
            check_container(&baseline, with(&["CAP_SYS_ADMIN"], &[]))
                .unwrap()
                .contains("SYS_ADMIN")
        );
        assert!(
            check_container(&baseline, with(&["NET_RAW"], &[]))
                .unwrap()
                .contains("NET_RAW")
        );
        assert_eq!(
            check_container(&restricted_check, with(&["NET_BIND_SERVICE"], &["ALL"])),
            None
        );
        assert!(
            check_container(&restricted_check, with(&["CHOWN"], &["ALL"]))
                .unwrap()
                .contains("CHOWN")
        );
        assert!(
            check_container(&restricted_check, with(&[], &["NET_RAW"]))
                .unwrap()
                .contains("drop ALL")
        );
        assert_eq!(
            check_container(&restricted_check, with(&[], &["cap_all"])),
            None
        );
    }

    #[test]
    fn seccomp_absent_or_unconfined_is_a_violation() {
        let absent = LinuxContainerSecurityContext {
            seccomp: None,
            ..restricted()
        };
        assert!(
            check_container(&Check::Seccomp, absent)
                .unwrap()
                .contains("absent")
        );
        let unconfined = LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            ..restricted()
        };
        assert!(
            check_container(&Check::Seccomp, unconfined)
                .unwrap()
                .contains("Unconfined")
        );
        let localhost = LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "p.json".into(),
            }),
            ..restricted()
        };
        assert_eq!(check_container(&Check::Seccomp, localhost), None);
        let deprecated = LinuxContainerSecurityContext {
            seccomp: None,
            seccomp_profile_path: "runtime/default".into(),
            ..restricted()
        };
        assert_eq!(check_container(&Check::Seccomp, deprecated), None);
        let pod = sandbox(LinuxSandboxSecurityContext::default());
        assert!(
            check_sandbox(&Check::Seccomp, &pod)
                .unwrap()
                .contains("for the pod")
        );
    }

    #[test]
    fn apparmor_and_selinux() {
        let unconfined = LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            ..restricted()
        };
        assert!(check_container(&Check::AppArmor, unconfined).is_some());
        let legacy = LinuxContainerSecurityContext {
            apparmor_profile: "unconfined".into(),
            ..restricted()
        };
        assert!(check_container(&Check::AppArmor, legacy).is_some());
        let selinux = |t: &str, user: &str| LinuxContainerSecurityContext {
            selinux_options: Some(SeLinuxOption {
                r#type: t.into(),
                user: user.into(),
                ..Default::default()
            }),
            ..restricted()
        };
        assert_eq!(
            check_container(&Check::SELinux, selinux("container_t", "")),
            None
        );
        assert!(
            check_container(&Check::SELinux, selinux("spc_t", ""))
                .unwrap()
                .contains("spc_t")
        );
        assert!(check_container(&Check::SELinux, selinux("container_t", "system_u")).is_some());
    }

    #[test]
    fn sysctls_outside_the_safe_set() {
        let mut pod = PodView {
            linux: Some(LinuxPodView::default()),
            ..Default::default()
        };
        let sysctls = &mut pod.linux.as_mut().unwrap().sysctls;
        sysctls.insert("net.ipv4.tcp_syncookies".into(), "1".into());
        assert_eq!(check_sandbox(&Check::Sysctls, &pod), None);
        pod.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert("kernel.msgmax".into(), "1".into());
        assert!(
            check_sandbox(&Check::Sysctls, &pod)
                .unwrap()
                .contains("kernel.msgmax")
        );
    }

    #[test]
    fn no_new_privs_run_as_non_root_and_proc_mount() {
        let escalates = LinuxContainerSecurityContext {
            no_new_privs: false,
            ..restricted()
        };
        assert!(check_container(&Check::NoNewPrivs, escalates).is_some());
        let root = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 0 }),
            ..restricted()
        };
        assert!(
            check_container(&Check::RunAsNonRoot, root)
                .unwrap()
                .contains("uid 0")
        );
        let unset = LinuxContainerSecurityContext {
            run_as_user: None,
            ..restricted()
        };
        assert!(check_container(&Check::RunAsNonRoot, unset).is_some());
        let named = LinuxContainerSecurityContext {
            run_as_user: None,
            run_as_username: "app".into(),
            ..restricted()
        };
        assert_eq!(check_container(&Check::RunAsNonRoot, named), None);
        let unmasked = LinuxContainerSecurityContext {
            masked_paths: vec![],
            readonly_paths: vec![],
            ..restricted()
        };
        assert!(
            check_container(&Check::ProcMount(PssLevel::Baseline), unmasked)
                .unwrap()
                .contains("/proc")
        );
    }

    /// Kubernetes 1.36's Pod Security (policy version 1.35) for `hostUsers: false`: a pod in
    /// a user namespace of its own may run as root and, under Baseline, unmask /proc; Restricted
    /// keeps /proc masked. Only where the runtime runs such pods (its Status answer says so):
    /// a runtime that ignores `userns_options` runs the container as the host's root.
    #[test]
    fn a_user_namespace_relaxes_run_as_non_root_and_baseline_proc_mount() {
        let pod_userns = |mode: NamespaceMode, mapped: bool| {
            let mapping = IdMapping {
                host_id: 100_000,
                container_id: 0,
                length: 65_536,
            };
            let mappings = if mapped { vec![mapping] } else { vec![] };
            Some(NamespaceOption {
                userns_options: Some(UserNamespace {
                    mode: mode as i32,
                    uids: mappings.clone(),
                    gids: mappings,
                }),
                ..Default::default()
            })
        };
        let judge = |check: &Check, options: Option<NamespaceOption>, supported: bool| {
            let config = container(LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 0 }),
                masked_paths: vec![],
                readonly_paths: vec![],
                namespace_options: options,
                ..restricted()
            });
            check.violation(&Target {
                container: Some(&config),
                runtime_user_namespaces: supported,
                ..Target::default()
            })
        };
        let root = Check::RunAsNonRoot;
        let baseline = Check::ProcMount(PssLevel::Baseline);
        let restricted_proc = Check::ProcMount(PssLevel::Restricted);
        let own = pod_userns(NamespaceMode::Pod, true);
        assert_eq!(judge(&root, own.clone(), true), None);
        assert_eq!(judge(&baseline, own.clone(), true), None);
        assert!(judge(&restricted_proc, own.clone(), true).is_some());
        // The runtime has not said it runs user namespaces: as strict as without one.
        assert!(judge(&root, own.clone(), false).is_some());
        assert!(judge(&baseline, own, false).is_some());
        // The host's user namespace, or a pod one without mappings, relaxes nothing.
        assert!(judge(&root, pod_userns(NamespaceMode::Node, true), true).is_some());
        assert!(judge(&root, pod_userns(NamespaceMode::Pod, false), true).is_some());
        assert!(judge(&root, None, true).is_some());
    }

    #[test]
    fn host_paths_in_every_spelling_the_runtime_takes() {
        let check = Check::HostPaths(HostPathParams::default());
        let judge = |path: &'static [u8], pods: &'static str| {
            let mut config = container(restricted());
            config.mounts = vec![MountView {
                host_path: path,
                container_path: b"/data",
                ..MountView::default()
            }];
            let target = Target {
                container: Some(&config),
                kubelet_pods_dir: pods,
                ..Target::default()
            };
            check.violation(&target).is_none()
        };
        let default = "/var/lib/kubelet/pods/";
        for (path, allowed) in [
            (&b"/var/lib/kubelet/pods/u/volumes/v"[..], true),
            (b"//var/lib/kubelet//pods/u/etc-hosts", true),
            (b"/var/lib/kubelet/pods/./u/x/", true),
            (b"/", false),
            (b"//", false),
            (b"/./", false),
            (b"/etc/", false),
            (b"/var/lib/kubelet/pods", false), // every pod's volumes
            (b"/var/lib/kubelet/pods/", false),
            (b"/var/lib/kubelet/pods/..", false),
            (b"/var/lib/kubelet/podsx/u", false),
            (b"var/lib/kubelet/pods/u", false), // relative: to the runtime's working directory
            (b"etc", false),
            (b"./etc", false),
        ] {
            let shown = String::from_utf8_lossy(path);
            assert_eq!(judge(path, default), allowed, "{shown}");
        }
        // Another root directory, configured with or without its trailing slash.
        assert!(judge(
            b"/var/lib/k0s/kubelet/pods/u/v",
            "/var/lib/k0s/kubelet/pods/"
        ));
        assert!(!judge(
            b"/var/lib/kubelet/pods/u/v",
            "/var/lib/k0s/kubelet/pods/"
        ));
    }

    #[test]
    fn host_paths_outside_the_pod_directories() {
        let mut config = container(restricted());
        config.mounts = vec![MountView {
            host_path: b"/var/lib/kubelet/pods/uid/volumes/kubernetes.io~empty-dir/data",
            container_path: b"/data",
            ..MountView::default()
        }];
        let check = Check::HostPaths(HostPathParams::default());
        fn target<'a>(c: &'a ContainerView<'a>) -> Target<'a> {
            Target {
                container: Some(c),
                ..Target::default()
            }
        }
        assert_eq!(check.violation(&target(&config)), None);
        config.mounts[0].host_path = b"/etc";
        assert!(check.violation(&target(&config)).unwrap().contains("/etc"));
        // `..` cannot climb out of the pod directories, `.` and doubled slashes change nothing.
        config.mounts[0].host_path = b"/var/lib/kubelet/pods/uid/../../../../etc";
        assert!(
            check
                .violation(&target(&config))
                .unwrap()
                .contains("/var/lib/kubelet/pods/uid/../../../../etc")
        );
        config.mounts[0].host_path = b"/var/lib/kubelet/pods/../pods/uid/./volumes//x";
        assert_eq!(check.violation(&target(&config)), None);
        config.mounts[0].host_path = b"/var/log/app";
        let allowed = Check::HostPaths(HostPathParams {
            allowed_prefixes: vec!["/var/log".into()],
        });
        assert_eq!(allowed.violation(&target(&config)), None);
        config.mounts[0].host_path = b"/var/logs";
        assert!(
            allowed.violation(&target(&config)).is_some(),
            "a prefix is a directory, not a string"
        );
        config.mounts[0].host_path = b"/var/log/../../etc";
        assert!(allowed.violation(&target(&config)).is_some());
    }

    #[test]
    fn host_paths_resolve_dots_and_double_slashes_only() {
        use std::borrow::Cow;
        for plain in ["/var/log/app", "/var/log/", "/", "", "a/b"] {
            assert!(matches!(resolve_dots(plain), Cow::Borrowed(p) if p == plain));
        }
        // Dots that are part of a name are kept.
        for named in ["/a.b/..c/.d", "/a/...", "/.hidden/x", "/a/.../"] {
            assert_eq!(resolve_dots(named), named);
        }
        for (given, named) in [
            ("/var/log/../../etc", "/etc"),
            ("/var//log/./app", "/var/log/app"),
            (
                "/var/lib/kubelet/pods/../pods/uid/",
                "/var/lib/kubelet/pods/uid/",
            ),
            ("/..", "/"),
            ("/a/.", "/a"),
            ("/a/..", "/"),
            ("//etc", "/etc"),
            ("./etc", "/etc"),
            ("../etc", "/etc"),
        ] {
            assert_eq!(resolve_dots(given), named, "{given}");
        }
    }

    /// An image volume gives the container the image's whole filesystem: each is judged as
    /// the container's own image is, by name, or by id through the names the runtime gives it.
    #[test]
    fn image_volumes_are_judged_as_the_container_image_is() {
        use crate::policy::view::ImageView;
        let check = Check::Images(ImageParams {
            allow: vec!["registry.k8s.io".into()],
            ..ImageParams::default()
        });
        let id = "sha256:1c0ffee1c0ffee1c0ffee1c0ffee1c0ffee1c0ffee1c0ffee1c0ffee1c0ffee1";
        let mount = |image: &'static str, user: &'static str| MountView {
            container_path: b"/tools",
            image: Some(ImageView {
                image: image.as_bytes(),
                user_specified_image: user.as_bytes(),
            }),
            image_sub_path: b"bin",
            ..MountView::default()
        };
        let judge = |mounts: Vec<MountView<'static>>, names: &[Option<Vec<String>>]| {
            let mut config = container(restricted());
            config.image = Some(ImageView {
                image: b"registry.k8s.io/pause:3.9",
                user_specified_image: b"",
            });
            config.mounts = mounts;
            check.violation(&Target {
                image: Some(b"registry.k8s.io/pause:3.9"),
                container: Some(&config),
                mount_image_names: names,
                ..Target::default()
            })
        };
        assert_eq!(
            judge(vec![mount("registry.k8s.io/data:1", "")], &[None]),
            None
        );
        let foreign = judge(vec![mount("quay.io/evil/miner:1", "")], &[None]).unwrap();
        assert_eq!(
            foreign,
            "mounts an image volume at /tools (its path bin) (mounts.image): uses image quay.io/evil/miner:1 from a registry outside the allowlist (quay.io/evil/miner)"
        );
        // An allowed name beside a foreign one in `image`: the runtime mounts `image`.
        assert!(
            judge(
                vec![mount("quay.io/evil/miner:1", "registry.k8s.io/data:1")],
                &[None]
            )
            .is_some()
        );
        // By id: one of the names the runtime gives it must pass; unseen names are refused.
        let allowed = Some(vec!["registry.k8s.io/data:1".to_string()]);
        let evil = Some(vec!["quay.io/evil/miner:1".to_string()]);
        assert_eq!(
            judge(vec![mount(id, "")], std::slice::from_ref(&allowed)),
            None
        );
        assert!(
            judge(vec![mount(id, "")], std::slice::from_ref(&evil))
                .unwrap()
                .contains("quay.io/evil/miner:1")
        );
        assert!(
            judge(vec![mount(id, "")], &[None])
                .unwrap()
                .contains("has not seen")
        );
        // By id beside a name: the id must be an image the runtime knows by that name.
        assert_eq!(
            judge(
                vec![mount(id, "registry.k8s.io/data:1")],
                std::slice::from_ref(&allowed)
            ),
            None
        );
        assert!(judge(vec![mount(id, "registry.k8s.io/data:1")], &[evil]).is_some());
        // Every volume is judged, not only the first; a mount without an image is no volume.
        let plain = MountView {
            host_path: b"/var/lib/kubelet/pods/u/volumes/v",
            ..MountView::default()
        };
        let second = judge(
            vec![
                plain,
                mount("registry.k8s.io/data:1", ""),
                mount("quay.io/x/y:1", ""),
            ],
            &[None, None],
        );
        assert!(second.is_some_and(|v| v.contains("quay.io/x/y:1")));
    }

    #[test]
    fn image_references_are_normalised_before_matching() {
        let params = ImageParams {
            allow: vec!["registry.k8s.io".into(), "docker.io/library".into()],
            deny: vec!["docker.io/library/evil".into()],
            require_digest: false,
        };
        let check = Check::Images(params);
        let image = |i: &'static str| Target {
            image: Some(i.as_bytes()),
            ..Target::default()
        };
        assert_eq!(check.violation(&image("busybox:1.36")), None);
        assert!(
            check
                .violation(&image("quay.io/x/y:1"))
                .unwrap()
                .contains("outside the allowlist")
        );
        assert!(
            check
                .violation(&image("evil"))
                .unwrap()
                .contains("denied registry")
        );
        // Named twice: the runtime runs `image.image`, so an allowed user_specified_image does
        // not cover a foreign one there; the kubelet's id there is judged by the name beside it.
        let twice = |user: &'static str, runtime: &'static str| Target {
            image: Some(user.as_bytes()),
            runtime_image: Some(runtime.as_bytes()),
            ..Target::default()
        };
        let foreign = check.violation(&twice("busybox:1.36", "quay.io/x/y:1"));
        assert!(
            foreign
                .as_deref()
                .is_some_and(|v| v.contains("quay.io/x/y:1") && v.contains("outside the allowlist")),
            "{foreign:?}"
        );
        // An id beside the name: it must be an image the runtime knows by that repository.
        let id = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        fn by_id<'a>(named: &'a str, id: &'a str, names: Option<&'a [String]>) -> Target<'a> {
            Target {
                image: Some(named.as_bytes()),
                runtime_image: Some(id.as_bytes()),
                runtime_image_names: names,
                ..Target::default()
            }
        }
        let unseen = check.violation(&by_id("busybox:1.36", id, None));
        assert!(
            unseen
                .as_deref()
                .is_some_and(|v| v.contains("has not seen")),
            "{unseen:?}"
        );
        let busybox = ["docker.io/library/busybox:1.35".to_string()];
        assert_eq!(
            check.violation(&by_id("busybox:1.36", id, Some(&busybox))),
            None
        );
        let miner = ["quay.io/x/miner:1".to_string()];
        let other = check.violation(&by_id("busybox:1.36", id, Some(&miner)));
        assert!(
            other.as_deref().is_some_and(
                |v| v.contains("is not busybox:1.36") && v.contains("quay.io/x/miner:1")
            ),
            "{other:?}"
        );
        // Without an allow or deny list there is no registry to protect: the id is not looked up.
        let pinned_only = Check::Images(ImageParams {
            require_digest: true,
            ..ImageParams::default()
        });
        assert_eq!(
            pinned_only.violation(&by_id(
                "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                id,
                None
            )),
            None
        );
        assert_eq!(
            check.violation(&twice("busybox:1.36", "docker.io/library/busybox:1.36")),
            None
        );
        let pinned = Check::Images(ImageParams {
            require_digest: true,
            ..ImageParams::default()
        });
        assert!(pinned.violation(&image("busybox:1.36")).is_some());
        assert_eq!(
            pinned.violation(&image(
                "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )),
            None
        );
    }
}
