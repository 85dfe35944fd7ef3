//! Realistic CRI requests, as the kubelet sends them, for benchmarks and tests.

use std::collections::HashMap;

use crate::cri::*;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The labels the kubelet puts on every container of a pod.
pub fn container_labels(pod: &str, namespace: &str, container: &str) -> HashMap<String, String> {
    map(&[
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", namespace),
        (
            "io.kubernetes.pod.uid",
            "5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11",
        ),
        ("io.kubernetes.container.name", container),
    ])
}

/// The annotations the kubelet puts on every container.
pub fn container_annotations() -> HashMap<String, String> {
    map(&[
        ("io.kubernetes.container.hash", "6a3c0f5e"),
        ("io.kubernetes.container.restartCount", "0"),
        (
            "io.kubernetes.container.terminationMessagePath",
            "/dev/termination-log",
        ),
        ("io.kubernetes.container.terminationMessagePolicy", "File"),
        ("io.kubernetes.pod.terminationGracePeriod", "30"),
    ])
}

/// The pod config the kubelet sends for `team-a/web-1`.
pub fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web-1".into(),
            uid: "5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11".into(),
            namespace: "team-a".into(),
            attempt: 0,
        }),
        hostname: "web-1".into(),
        log_directory: "/var/log/pods/team-a_web-1_5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11".into(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "team-a.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![PortMapping {
            protocol: 0,
            container_port: 8080,
            ..Default::default()
        }],
        labels: map(&[
            ("app", "web"),
            ("pod-template-hash", "7d9f8b6c5d"),
            ("io.kubernetes.pod.name", "web-1"),
            ("io.kubernetes.pod.namespace", "team-a"),
            (
                "io.kubernetes.pod.uid",
                "5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11",
            ),
        ]),
        annotations: map(&[
            (
                "kubernetes.io/config.seen",
                "2026-11-27T08:00:00.000000000Z",
            ),
            ("kubernetes.io/config.source", "api"),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/burstable/pod5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11".into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: 0,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A CreateContainer request of about 5 KB: environment, mounts, labels, annotations,
/// resources and security context, with the pod config the kubelet repeats in it.
pub fn create_container_request() -> CreateContainerRequest {
    let envs = (0..38)
        .map(|i| KeyValue {
            key: format!("WEB_SERVICE_SETTING_{i}"),
            value: format!("value-{i}-for-the-web-service-with-some-length").into_bytes(),
        })
        .collect();
    let mounts = [
        ("/var/run/secrets/kubernetes.io/serviceaccount", "/var/lib/kubelet/pods/5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11/volumes/kubernetes.io~projected/kube-api-access-x7k2p", true),
        ("/etc/web/config", "/var/lib/kubelet/pods/5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11/volumes/kubernetes.io~configmap/config", true),
        ("/data", "/var/lib/kubelet/pods/5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11/volumes/kubernetes.io~empty-dir/data", false),
        ("/etc/hosts", "/var/lib/kubelet/pods/5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11/etc-hosts", false),
        ("/dev/termination-log", "/var/lib/kubelet/pods/5f0c3bd4-94a5-4bb4-9f3a-2b0c2f7c9d11/containers/app/8a3b1c2d", false),
    ]
    .into_iter()
    .map(|(container_path, host_path, readonly)| Mount {
        container_path: container_path.into(),
        host_path: host_path.into(),
        readonly,
        ..Default::default()
    })
    .collect();
    CreateContainerRequest {
        pod_sandbox_id: "9c1f3e0b7a2d4c6e8f0a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e".into(),
        config: Some(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "sha256:4b4b4b0f9d2a6f7e3c1d5e8a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c"
                    .into(),
                user_specified_image: "registry.example.com/team-a/web:1.4.2".into(),
                ..Default::default()
            }),
            command: vec!["/usr/local/bin/web".into()],
            args: vec![
                "--listen=:8080".into(),
                "--config=/etc/web/config/web.yaml".into(),
            ],
            working_dir: "/srv".into(),
            envs,
            mounts,
            labels: container_labels("web-1", "team-a", "app"),
            annotations: {
                let mut annotations = container_annotations();
                annotations.insert(
                    "io.kubernetes.container.ports".into(),
                    r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#.into(),
                );
                annotations
            },
            log_path: "app/0.log".into(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 102,
                    memory_limit_in_bytes: 268_435_456,
                    oom_score_adj: 968,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        drop_capabilities: vec!["ALL".into()],
                        add_capabilities: vec!["NET_BIND_SERVICE".into()],
                        ..Default::default()
                    }),
                    namespace_options: Some(NamespaceOption {
                        pid: 1,
                        ..Default::default()
                    }),
                    run_as_user: Some(Int64Value { value: 1000 }),
                    no_new_privs: true,
                    masked_paths: [
                        "/proc/acpi",
                        "/proc/kcore",
                        "/proc/keys",
                        "/proc/latency_stats",
                        "/proc/timer_list",
                        "/proc/timer_stats",
                        "/proc/sched_debug",
                        "/proc/scsi",
                        "/sys/firmware",
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                    readonly_paths: [
                        "/proc/asound",
                        "/proc/bus",
                        "/proc/fs",
                        "/proc/irq",
                        "/proc/sys",
                        "/proc/sysrq-trigger",
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                    seccomp: Some(SecurityProfile {
                        profile_type: 0,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        sandbox_config: Some(pod_config()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_create_container_sample_is_about_five_kilobytes() {
        let size = create_container_request().encoded_len();
        assert!((4_000..6_500).contains(&size), "{size} bytes");
    }
}
