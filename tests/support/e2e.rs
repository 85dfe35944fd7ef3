//! What the end-to-end tests run in the lab's containerd: the busybox image the lab builds
//! offline, a pod and a container the way the tests' kubelet-like callers make them.

use std::collections::HashMap;

use criguard::cri::*;

/// Built offline and imported by tests/e2e/containerd-lab.sh.
pub const BUSYBOX: &str = "docker.io/library/busybox:1.36";

/// busybox's files under the name of a registry no test policy allows (the lab tags it).
pub const FOREIGN_IMAGE: &str = "quay.io/criguard-e2e/tools:1.0";

/// Where the lab's containerd 2.x sends its spans (OTLP/gRPC): the trace test's collector.
pub const OTLP: &str = "127.0.0.1:4327";

/// The containerd generation the lab runs (`CRIGUARD_E2E_CONTAINERD`: 1.6, 1.7 or 2.1).
pub fn containerd_generation() -> (u32, u32) {
    let given = std::env::var("CRIGUARD_E2E_CONTAINERD").unwrap_or_else(|_| "1.6".into());
    let (major, minor) = given.split_once('.').expect("a generation such as 2.1");
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// A pod in the `criguard-e2e` namespace, labelled with its name (clean-ups find it by that).
pub fn pod_config(name: &str) -> PodSandboxConfig {
    let uid = format!("e2e-{name}-uid");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "criguard-e2e".into(),
            uid: uid.clone(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: HashMap::from([("criguard-e2e".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            // containerd 1.6 needs a cgroup parent for container stats.
            cgroup_parent: format!("/criguard-e2e/{uid}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container that runs until SIGTERM.
pub fn container_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while true; do sleep 0.2; done".into(),
        ],
        labels: HashMap::from([("criguard-e2e".to_string(), "app".to_string())]),
        ..Default::default()
    }
}
