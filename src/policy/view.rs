//! What the policies read of a request: the fields the checks and CEL rules use, decoded with
//! prost from the caller's bytes. Every other field (environment, devices, container labels and
//! annotations, DNS, credentials, ...) is skipped without being copied: decoding is most of the
//! cost of a policy check. Field numbers are those of proto/v1.proto (a test checks them).

use std::collections::HashMap;

use crate::cri::{
    ContainerMetadata, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig, Mount,
    PodSandboxMetadata, PortMapping,
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
    pub linux: Option<LinuxContainerConfig>,
}

/// `PodSandboxConfig`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
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
        let view = CreateContainerView::decode(&full.encode_to_vec()[..]).unwrap();
        let config = full.config.unwrap();
        let seen = view.config.unwrap();
        assert_eq!(seen.metadata, config.metadata);
        assert_eq!(seen.image, config.image);
        assert_eq!((seen.command, seen.args), (config.command, config.args));
        assert_eq!(seen.mounts, config.mounts);
        assert_eq!(seen.linux, config.linux);
        let pod = full.sandbox_config.unwrap();
        let seen = view.sandbox_config.unwrap();
        assert_eq!(seen.metadata, pod.metadata);
        assert_eq!(seen.port_mappings, pod.port_mappings);
        assert_eq!(seen.labels, pod.labels);
        assert_eq!(seen.annotations, pod.annotations);
        assert_eq!(seen.linux, pod.linux);
        assert_eq!(view.pod_sandbox_id, full.pod_sandbox_id);
    }
}
