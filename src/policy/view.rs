//! What the policies read of a request: the fields the checks and CEL rules use, decoded with
//! prost from the caller's bytes. Every other field (environment, devices, resources, container
//! labels and annotations, DNS, credentials, ...) is skipped without being copied: decoding is
//! most of the cost of a policy check. The pod's labels and annotations are decoded in a second
//! pass, only when a policy selects on labels or a CEL rule reads `pod` ([`PodLabels`]). Field
//! numbers are those of proto/v1.proto (a test checks them).

use std::collections::HashMap;

use crate::cri::{
    ContainerMetadata, ImageSpec, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    Mount, PodSandboxMetadata, PortMapping,
};

/// `ContainerConfig`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<Mount>,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerView>,
}

/// `LinuxContainerConfig` without its resources.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerView {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

/// `LinuxPodSandboxConfig` without its cgroup, overhead and resources.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodView {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
    #[prost(map = "string, string", tag = "3")]
    pub sysctls: HashMap<String, String>,
}

/// `PodSandboxConfig`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodView>,
}

/// `PodSandboxConfig`'s labels and annotations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodLabels {
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
}

/// The pod's labels of a RunPodSandboxRequest (its `config`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxLabels {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodLabels>,
}

/// The pod's labels of a CreateContainerRequest or PullImageRequest (their `sandbox_config`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxConfigLabels {
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodLabels>,
}

/// `CreateContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerView {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerView>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodView>,
}

/// `RunPodSandboxRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxView {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodView>,
}

/// `PullImageRequest`, without the credentials.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageView {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn views_read_the_same_fields_as_the_generated_types() {
        let full = crate::fake::samples::create_container_request();
        let bytes = full.encode_to_vec();
        let view = CreateContainerView::decode(&bytes[..]).unwrap();
        let config = full.config.unwrap();
        let seen = view.config.unwrap();
        assert_eq!(seen.metadata, config.metadata);
        assert_eq!(seen.image, config.image);
        assert_eq!((seen.command, seen.args), (config.command, config.args));
        assert_eq!(seen.mounts, config.mounts);
        let linux = config.linux.unwrap();
        assert_eq!(seen.linux.unwrap().security_context, linux.security_context);
        let pod = full.sandbox_config.clone().unwrap();
        let seen = view.sandbox_config.unwrap();
        assert_eq!(seen.metadata, pod.metadata);
        assert_eq!(seen.port_mappings, pod.port_mappings);
        let (linux, seen_linux) = (pod.linux.unwrap(), seen.linux.unwrap());
        assert_eq!(seen_linux.security_context, linux.security_context);
        assert_eq!(seen_linux.sysctls, linux.sysctls);
        assert_eq!(view.pod_sandbox_id, full.pod_sandbox_id);
        let labels = SandboxConfigLabels::decode(&bytes[..])
            .unwrap()
            .sandbox_config
            .unwrap();
        assert_eq!(labels.labels, pod.labels);
        assert_eq!(labels.annotations, pod.annotations);
        let run = crate::cri::RunPodSandboxRequest {
            config: full.sandbox_config,
            ..Default::default()
        };
        let labels = RunPodSandboxLabels::decode(&run.encode_to_vec()[..])
            .unwrap()
            .config
            .unwrap();
        assert_eq!(labels.labels, pod.labels);
    }
}
