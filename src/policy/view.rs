//! What the policies read of a request: the fields the checks and CEL rules use, decoded with
//! prost from the caller's bytes. Every other field (environment, devices, resources, container
//! labels and annotations, DNS, credentials, ...) is skipped without being copied: decoding is
//! most of the cost of a policy check. Strings are [`Bytes`] slices of the request itself, not
//! copies (decode from a `Bytes` buffer): no allocation and no UTF-8 check per string, only for
//! the few a check reads as text ([`text`]). The pod's labels and annotations are decoded in a
//! second pass, only when a policy selects on labels or a CEL rule reads `pod` ([`PodLabels`]).
//! Field numbers are those of proto/v1.proto (a test checks them against the generated types).

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;

use crate::cri::{Int64Value, NamespaceOption, PortMapping, SeLinuxOption, SecurityProfile};

/// A string field as text. Invalid UTF-8, which a runtime refuses anyway, shows as U+FFFD.
pub fn text(field: &[u8]) -> Cow<'_, str> {
    // The plain check first: it is much faster than the lossy conversion's chunking.
    match std::str::from_utf8(field) {
        Ok(valid) => Cow::Borrowed(valid),
        Err(_) => String::from_utf8_lossy(field),
    }
}

/// `ContainerMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadataView {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
}

/// `ImageSpec`: the image and the name the user gave it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageView {
    /// In CreateContainer the kubelet sends the image's id (`sha256:...`) here.
    #[prost(bytes = "bytes", tag = "1")]
    pub image: Bytes,
    /// The image as the pod spec names it (set by the kubelet since Kubernetes 1.28).
    #[prost(bytes = "bytes", tag = "18")]
    pub user_specified_image: Bytes,
}

impl ImageView {
    /// The image as the user named it when the request says, else the `image` field.
    pub fn named(&self) -> &Bytes {
        if self.user_specified_image.is_empty() {
            &self.image
        } else {
            &self.user_specified_image
        }
    }
}

/// `Mount`, the paths.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountView {
    #[prost(bytes = "bytes", tag = "1")]
    pub container_path: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub host_path: Bytes,
}

/// `ContainerConfig`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadataView>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageView>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub command: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub args: Vec<Bytes>,
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<MountView>,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerView>,
}

/// `LinuxContainerConfig` without its resources.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainerView {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<ContainerSecurityView>,
}

/// `Capability`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CapabilityView {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub add_capabilities: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub drop_capabilities: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub add_ambient_capabilities: Vec<Bytes>,
}

/// `LinuxContainerSecurityContext`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerSecurityView {
    #[prost(message, optional, tag = "1")]
    pub capabilities: Option<CapabilityView>,
    #[prost(bool, tag = "2")]
    pub privileged: bool,
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(message, optional, tag = "4")]
    pub selinux_options: Option<SeLinuxOption>,
    #[prost(message, optional, tag = "5")]
    pub run_as_user: Option<Int64Value>,
    #[prost(bytes = "bytes", tag = "6")]
    pub run_as_username: Bytes,
    #[prost(bool, tag = "7")]
    pub readonly_rootfs: bool,
    /// Deprecated in CRI, still honoured by runtimes.
    #[prost(bytes = "bytes", tag = "9")]
    pub apparmor_profile: Bytes,
    /// Deprecated in CRI, still honoured by runtimes.
    #[prost(bytes = "bytes", tag = "10")]
    pub seccomp_profile_path: Bytes,
    #[prost(bool, tag = "11")]
    pub no_new_privs: bool,
    #[prost(bytes = "bytes", repeated, tag = "13")]
    pub masked_paths: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "14")]
    pub readonly_paths: Vec<Bytes>,
    #[prost(message, optional, tag = "15")]
    pub seccomp: Option<SecurityProfile>,
    #[prost(message, optional, tag = "16")]
    pub apparmor: Option<SecurityProfile>,
}

/// `LinuxSandboxSecurityContext`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxSecurityView {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(message, optional, tag = "2")]
    pub selinux_options: Option<SeLinuxOption>,
    #[prost(bool, tag = "6")]
    pub privileged: bool,
    /// Deprecated in CRI, still honoured by runtimes.
    #[prost(bytes = "bytes", tag = "7")]
    pub seccomp_profile_path: Bytes,
    #[prost(message, optional, tag = "9")]
    pub seccomp: Option<SecurityProfile>,
    #[prost(message, optional, tag = "10")]
    pub apparmor: Option<SecurityProfile>,
}

/// `LinuxPodSandboxConfig` without its cgroup, overhead and resources.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodView {
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<SandboxSecurityView>,
    #[prost(map = "string, string", tag = "3")]
    pub sysctls: HashMap<String, String>,
}

/// `PodSandboxMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodMetadataView {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub uid: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub namespace: Bytes,
}

/// `PodSandboxConfig`, the fields policies read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodMetadataView>,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodView>,
}

/// `PodSandboxConfig`, only its metadata: what CreateContainer and PullImage repeat of the pod
/// is judged by name (the pod's own settings were judged when its sandbox was made).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodNameView {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodMetadataView>,
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
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerView>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodNameView>,
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
    pub image: Option<ImageView>,
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodNameView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn strings(fields: &[Bytes]) -> Vec<String> {
        fields.iter().map(|f| text(f).into_owned()).collect()
    }

    #[test]
    fn views_read_the_same_fields_as_the_generated_types() {
        let full = crate::fake::samples::create_container_request();
        let bytes = Bytes::from(full.encode_to_vec());
        let view = CreateContainerView::decode(bytes.clone()).unwrap();
        let config = full.config.unwrap();
        let seen = view.config.unwrap();
        assert_eq!(seen.metadata.unwrap().name, config.metadata.unwrap().name);
        let (image, seen_image) = (config.image.unwrap(), seen.image.unwrap());
        assert_eq!(seen_image.image, image.image);
        assert_eq!(seen_image.user_specified_image, image.user_specified_image);
        assert_eq!(seen_image.named(), &image.user_specified_image);
        assert_eq!(strings(&seen.command), config.command);
        assert_eq!(strings(&seen.args), config.args);
        let mounts: Vec<_> = config
            .mounts
            .iter()
            .map(|m| (m.container_path.clone(), m.host_path.clone()))
            .collect();
        let seen_mounts: Vec<_> = seen
            .mounts
            .iter()
            .map(|m| {
                (
                    text(&m.container_path).into_owned(),
                    text(&m.host_path).into_owned(),
                )
            })
            .collect();
        assert_eq!(seen_mounts, mounts);
        let security = config.linux.unwrap().security_context.unwrap();
        let seen_security = seen.linux.unwrap().security_context.unwrap();
        let (caps, seen_caps) = (
            security.capabilities.unwrap(),
            seen_security.capabilities.unwrap(),
        );
        assert_eq!(strings(&seen_caps.add_capabilities), caps.add_capabilities);
        assert_eq!(
            strings(&seen_caps.drop_capabilities),
            caps.drop_capabilities
        );
        assert_eq!(seen_security.namespace_options, security.namespace_options);
        assert_eq!(seen_security.run_as_user, security.run_as_user);
        assert_eq!(seen_security.no_new_privs, security.no_new_privs);
        assert_eq!(strings(&seen_security.masked_paths), security.masked_paths);
        assert_eq!(
            strings(&seen_security.readonly_paths),
            security.readonly_paths
        );
        assert_eq!(seen_security.seccomp, security.seccomp);
        let pod = full.sandbox_config.clone().unwrap();
        let seen_metadata = view.sandbox_config.unwrap().metadata.unwrap();
        let metadata = pod.metadata.clone().unwrap();
        assert_eq!(
            strings(&[
                seen_metadata.name.clone(),
                seen_metadata.uid.clone(),
                seen_metadata.namespace.clone()
            ]),
            [metadata.name, metadata.uid, metadata.namespace]
        );
        let run = crate::cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            ..Default::default()
        };
        let seen = RunPodSandboxView::decode(Bytes::from(run.encode_to_vec()))
            .unwrap()
            .config
            .unwrap();
        assert_eq!(seen.metadata.unwrap(), seen_metadata);
        assert_eq!(seen.port_mappings, pod.port_mappings);
        let (linux, seen_linux) = (pod.linux.clone().unwrap(), seen.linux.unwrap());
        let (security, seen_security) = (
            linux.security_context.unwrap(),
            seen_linux.security_context.unwrap(),
        );
        assert_eq!(seen_security.namespace_options, security.namespace_options);
        assert_eq!(seen_security.seccomp, security.seccomp);
        assert_eq!(seen_security.privileged, security.privileged);
        assert_eq!(seen_linux.sysctls, linux.sysctls);
        let labels = SandboxConfigLabels::decode(bytes.clone())
            .unwrap()
            .sandbox_config
            .unwrap();
        assert_eq!(labels.labels, pod.labels);
        assert_eq!(labels.annotations, pod.annotations);
        let labels = RunPodSandboxLabels::decode(&run.encode_to_vec()[..])
            .unwrap()
            .config
            .unwrap();
        assert_eq!(labels.labels, pod.labels);
    }

    #[test]
    fn the_security_views_read_every_field_the_checks_use() {
        use crate::cri::{Capability, LinuxContainerSecurityContext, LinuxSandboxSecurityContext};
        #[allow(deprecated)]
        let container = LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_ambient_capabilities: vec!["NET_RAW".into()],
                ..Default::default()
            }),
            privileged: true,
            selinux_options: Some(SeLinuxOption {
                r#type: "spc_t".into(),
                ..Default::default()
            }),
            run_as_username: "root".into(),
            readonly_rootfs: true,
            apparmor_profile: "unconfined".into(),
            seccomp_profile_path: "unconfined".into(),
            apparmor: Some(SecurityProfile {
                profile_type: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let view = ContainerSecurityView::decode(Bytes::from(container.encode_to_vec())).unwrap();
        assert_eq!(
            strings(&view.capabilities.unwrap().add_ambient_capabilities),
            ["NET_RAW"]
        );
        assert!(view.privileged && view.readonly_rootfs);
        assert_eq!(view.selinux_options, container.selinux_options);
        assert_eq!(view.run_as_username, "root");
        #[allow(deprecated)]
        let deprecated = (container.apparmor_profile, container.seccomp_profile_path);
        assert_eq!(
            (view.apparmor_profile, view.seccomp_profile_path),
            (Bytes::from(deprecated.0), Bytes::from(deprecated.1))
        );
        assert_eq!(view.apparmor, container.apparmor);
        #[allow(deprecated)]
        let sandbox = LinuxSandboxSecurityContext {
            selinux_options: container.selinux_options.clone(),
            privileged: true,
            seccomp_profile_path: "unconfined".into(),
            apparmor: container.apparmor,
            ..Default::default()
        };
        let view = SandboxSecurityView::decode(Bytes::from(sandbox.encode_to_vec())).unwrap();
        assert_eq!(view.selinux_options, sandbox.selinux_options);
        assert!(view.privileged);
        assert_eq!(view.seccomp_profile_path, "unconfined");
        assert_eq!(view.apparmor, sandbox.apparmor);
    }
}
