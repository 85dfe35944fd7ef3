//! What the policies read of a request: the fields the checks and CEL rules use, read in place
//! from the caller's bytes with the wire reader ([`crate::proxy::wire`]). Every other field
//! (environment, devices, resources, container labels and annotations, DNS, credentials, ...) is
//! skipped without being copied: decoding is most of the cost of a policy check. Strings are
//! slices of the request itself: no allocation and no UTF-8 check per string, only for the few
//! a check reads as text ([`text`]). The pod's labels and annotations are decoded (with prost)
//! in a second pass, only when a policy selects on labels or a CEL rule reads `pod`
//! ([`PodLabels`]).
//!
//! The views read a message as the runtime does: a later value of a field replaces an earlier
//! one, and an embedded message that appears twice is the two merged, so a request cannot show
//! the policies one setting and the runtime another. Field numbers are those of proto/v1.proto
//! (a test checks them against the generated types).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::cri::{Int64Value, NamespaceOption, PortMapping, SeLinuxOption, SecurityProfile};
use crate::proxy::wire::{DecodeError, Fields, Value};

/// A string field as text. The views keep only UTF-8 strings; bytes from elsewhere (a test's
/// request) that are not show U+FFFD.
pub fn text(field: &[u8]) -> Cow<'_, str> {
    // The plain check first: it is much faster than the lossy conversion's chunking.
    match std::str::from_utf8(field) {
        Ok(valid) => Cow::Borrowed(valid),
        Err(_) => String::from_utf8_lossy(field),
    }
}

/// A message read into a view: each field it knows is kept, the others are skipped.
pub trait View<'a>: Default {
    /// Takes one field of the message.
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError>;

    /// Reads `message` into the view, as a later part of the same message.
    fn merge(&mut self, message: &'a [u8]) -> Result<(), DecodeError> {
        for field in Fields::new(message) {
            let (field, value) = field?;
            self.field(field, value)?;
        }
        Ok(())
    }

    fn decode(message: &'a [u8]) -> Result<Self, DecodeError> {
        let mut view = Self::default();
        view.merge(message)?;
        Ok(view)
    }
}

/// A string field: the last value wins; it must be UTF-8.
fn string<'a>(slot: &mut &'a [u8], field: u32, value: Value<'a>) -> Result<(), DecodeError> {
    *slot = utf8(value.bytes(field)?, field)?;
    Ok(())
}

fn utf8(bytes: &[u8], field: u32) -> Result<&[u8], DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes),
        Err(_) => Err(DecodeError::not_utf8(field)),
    }
}

fn flag(slot: &mut bool, field: u32, value: Value<'_>) -> Result<(), DecodeError> {
    *slot = value.varint(field)? != 0;
    Ok(())
}

/// An embedded message: a second occurrence merges into the first.
fn message<'a, V: View<'a>>(
    slot: &mut Option<V>,
    field: u32,
    value: Value<'a>,
) -> Result<(), DecodeError> {
    slot.get_or_insert_default().merge(value.bytes(field)?)
}

/// An embedded message of a generated type (small, rarely set), decoded with prost.
fn generated<M: prost::Message + Default>(
    slot: &mut Option<M>,
    field: u32,
    value: Value<'_>,
) -> Result<(), DecodeError> {
    let bytes = value.bytes(field)?;
    slot.get_or_insert_default()
        .merge(bytes)
        .map_err(|_| DecodeError::invalid_message(field))
}

fn strings<'a>(list: &mut Vec<&'a [u8]>, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
    list.push(utf8(value.bytes(field)?, field)?);
    Ok(())
}

fn messages<'a, V: View<'a>>(
    list: &mut Vec<V>,
    field: u32,
    value: Value<'a>,
) -> Result<(), DecodeError> {
    list.push(V::decode(value.bytes(field)?)?);
    Ok(())
}

/// `ContainerMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMetadataView<'a> {
    pub name: &'a [u8],
}

impl<'a> View<'a> for ContainerMetadataView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => string(&mut self.name, field, value),
            _ => Ok(()),
        }
    }
}

/// `ImageSpec`: the image and the name the user gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageView<'a> {
    /// In CreateContainer the kubelet sends the image's id (`sha256:...`) here.
    pub image: &'a [u8],
    /// The image as the pod spec names it (set by the kubelet since Kubernetes 1.28).
    pub user_specified_image: &'a [u8],
}

impl<'a> View<'a> for ImageView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => string(&mut self.image, field, value),
            18 => string(&mut self.user_specified_image, field, value),
            _ => Ok(()),
        }
    }
}

impl<'a> ImageView<'a> {
    /// The image as the user named it when the request says, else the `image` field.
    pub fn named(&self) -> &'a [u8] {
        if self.user_specified_image.is_empty() {
            self.image
        } else {
            self.user_specified_image
        }
    }
}

/// `Mount`: the paths, and the image an image volume mounts (Kubernetes' `image` volume
/// source, CRI 1.31+), whose files the container then holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountView<'a> {
    pub container_path: &'a [u8],
    pub host_path: &'a [u8],
    pub image: Option<ImageView<'a>>,
    /// The path inside that image that is mounted (CRI 1.33+).
    pub image_sub_path: &'a [u8],
}

impl<'a> View<'a> for MountView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => string(&mut self.container_path, field, value),
            2 => string(&mut self.host_path, field, value),
            9 => message(&mut self.image, field, value),
            10 => string(&mut self.image_sub_path, field, value),
            _ => Ok(()),
        }
    }
}

impl<'a> MountView<'a> {
    /// The image this mount mounts, when it is an image volume: a runtime mounts an image
    /// when `image.image` is set (an ImageSpec with only `user_specified_image` names none).
    pub fn mounted_image(&self) -> Option<&ImageView<'a>> {
        self.image.as_ref().filter(|i| !i.image.is_empty())
    }
}

/// `ContainerConfig`, the fields policies read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerView<'a> {
    pub metadata: Option<ContainerMetadataView<'a>>,
    pub image: Option<ImageView<'a>>,
    pub command: Vec<&'a [u8]>,
    pub args: Vec<&'a [u8]>,
    pub mounts: Vec<MountView<'a>>,
    pub linux: Option<LinuxContainerView<'a>>,
}

impl<'a> View<'a> for ContainerView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.metadata, field, value),
            2 => message(&mut self.image, field, value),
            3 => strings(&mut self.command, field, value),
            4 => strings(&mut self.args, field, value),
            7 => messages(&mut self.mounts, field, value),
            15 => message(&mut self.linux, field, value),
            _ => Ok(()),
        }
    }
}

/// `LinuxContainerConfig` without its resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinuxContainerView<'a> {
    pub security_context: Option<ContainerSecurityView<'a>>,
}

impl<'a> View<'a> for LinuxContainerView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            2 => message(&mut self.security_context, field, value),
            _ => Ok(()),
        }
    }
}

/// `Capability`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityView<'a> {
    pub add_capabilities: Vec<&'a [u8]>,
    pub drop_capabilities: Vec<&'a [u8]>,
    pub add_ambient_capabilities: Vec<&'a [u8]>,
}

impl<'a> View<'a> for CapabilityView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => strings(&mut self.add_capabilities, field, value),
            2 => strings(&mut self.drop_capabilities, field, value),
            3 => strings(&mut self.add_ambient_capabilities, field, value),
            _ => Ok(()),
        }
    }
}

/// `LinuxContainerSecurityContext`, the fields policies read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSecurityView<'a> {
    pub capabilities: Option<CapabilityView<'a>>,
    pub privileged: bool,
    pub namespace_options: Option<NamespaceOption>,
    pub selinux_options: Option<SeLinuxOption>,
    pub run_as_user: Option<Int64Value>,
    pub run_as_username: &'a [u8],
    pub readonly_rootfs: bool,
    /// Deprecated in CRI, still honoured by runtimes.
    pub apparmor_profile: &'a [u8],
    /// Deprecated in CRI, still honoured by runtimes.
    pub seccomp_profile_path: &'a [u8],
    pub no_new_privs: bool,
    pub masked_paths: Vec<&'a [u8]>,
    pub readonly_paths: Vec<&'a [u8]>,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
}

impl<'a> View<'a> for ContainerSecurityView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.capabilities, field, value),
            2 => flag(&mut self.privileged, field, value),
            3 => generated(&mut self.namespace_options, field, value),
            4 => generated(&mut self.selinux_options, field, value),
            5 => generated(&mut self.run_as_user, field, value),
            6 => string(&mut self.run_as_username, field, value),
            7 => flag(&mut self.readonly_rootfs, field, value),
            9 => string(&mut self.apparmor_profile, field, value),
            10 => string(&mut self.seccomp_profile_path, field, value),
            11 => flag(&mut self.no_new_privs, field, value),
            13 => strings(&mut self.masked_paths, field, value),
            14 => strings(&mut self.readonly_paths, field, value),
            15 => generated(&mut self.seccomp, field, value),
            16 => generated(&mut self.apparmor, field, value),
            _ => Ok(()),
        }
    }
}

/// `LinuxSandboxSecurityContext`, the fields policies read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxSecurityView<'a> {
    pub namespace_options: Option<NamespaceOption>,
    pub selinux_options: Option<SeLinuxOption>,
    pub privileged: bool,
    /// Deprecated in CRI, still honoured by runtimes.
    pub seccomp_profile_path: &'a [u8],
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
}

impl<'a> View<'a> for SandboxSecurityView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => generated(&mut self.namespace_options, field, value),
            2 => generated(&mut self.selinux_options, field, value),
            6 => flag(&mut self.privileged, field, value),
            7 => string(&mut self.seccomp_profile_path, field, value),
            9 => generated(&mut self.seccomp, field, value),
            10 => generated(&mut self.apparmor, field, value),
            _ => Ok(()),
        }
    }
}

/// `LinuxPodSandboxConfig` without its cgroup, overhead and resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinuxPodView<'a> {
    pub security_context: Option<SandboxSecurityView<'a>>,
    pub sysctls: HashMap<String, String>,
}

/// An entry of a `map<string, string>`.
#[derive(Default)]
struct MapEntry<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

impl<'a> View<'a> for MapEntry<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => string(&mut self.key, field, value),
            2 => string(&mut self.value, field, value),
            _ => Ok(()),
        }
    }
}

impl<'a> View<'a> for LinuxPodView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            2 => message(&mut self.security_context, field, value),
            3 => {
                let entry = MapEntry::decode(value.bytes(field)?)?;
                self.sysctls
                    .insert(text(entry.key).into_owned(), text(entry.value).into_owned());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `PodSandboxMetadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMetadataView<'a> {
    pub name: &'a [u8],
    pub uid: &'a [u8],
    pub namespace: &'a [u8],
}

impl<'a> View<'a> for PodMetadataView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => string(&mut self.name, field, value),
            2 => string(&mut self.uid, field, value),
            3 => string(&mut self.namespace, field, value),
            _ => Ok(()),
        }
    }
}

/// `PodSandboxConfig`, the fields policies read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView<'a> {
    pub metadata: Option<PodMetadataView<'a>>,
    pub port_mappings: Vec<PortMapping>,
    pub linux: Option<LinuxPodView<'a>>,
}

impl<'a> View<'a> for PodView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.metadata, field, value),
            5 => {
                let mut mapping = None;
                generated(&mut mapping, field, value)?;
                self.port_mappings.extend(mapping);
                Ok(())
            }
            8 => message(&mut self.linux, field, value),
            _ => Ok(()),
        }
    }
}

/// `PodSandboxConfig`, only its metadata: what CreateContainer and PullImage repeat of the pod
/// is judged by name (the pod's own settings were judged when its sandbox was made).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNameView<'a> {
    pub metadata: Option<PodMetadataView<'a>>,
}

impl<'a> View<'a> for PodNameView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.metadata, field, value),
            _ => Ok(()),
        }
    }
}

/// `PodSandboxConfig`'s labels and annotations (owned: policies select on them by key).
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CreateContainerView<'a> {
    pub config: Option<ContainerView<'a>>,
    pub sandbox_config: Option<PodNameView<'a>>,
}

impl<'a> View<'a> for CreateContainerView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            2 => message(&mut self.config, field, value),
            3 => message(&mut self.sandbox_config, field, value),
            _ => Ok(()),
        }
    }
}

/// `RunPodSandboxRequest`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunPodSandboxView<'a> {
    pub config: Option<PodView<'a>>,
}

impl<'a> View<'a> for RunPodSandboxView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.config, field, value),
            _ => Ok(()),
        }
    }
}

/// `PullImageRequest`, without the credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullImageView<'a> {
    pub image: Option<ImageView<'a>>,
    pub sandbox_config: Option<PodNameView<'a>>,
}

impl<'a> View<'a> for PullImageView<'a> {
    fn field(&mut self, field: u32, value: Value<'a>) -> Result<(), DecodeError> {
        match field {
            1 => message(&mut self.image, field, value),
            3 => message(&mut self.sandbox_config, field, value),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn strings(fields: &[&[u8]]) -> Vec<String> {
        fields.iter().map(|f| text(f).into_owned()).collect()
    }

    #[test]
    fn views_read_the_same_fields_as_the_generated_types() {
        let full = crate::fake::samples::create_container_request();
        let bytes = full.encode_to_vec();
        let view = CreateContainerView::decode(&bytes).unwrap();
        let config = full.config.unwrap();
        let seen = view.config.unwrap();
        assert_eq!(
            seen.metadata.unwrap().name,
            config.metadata.unwrap().name.as_bytes()
        );
        let (image, seen_image) = (config.image.unwrap(), seen.image.unwrap());
        assert_eq!(seen_image.image, image.image.as_bytes());
        assert_eq!(
            seen_image.user_specified_image,
            image.user_specified_image.as_bytes()
        );
        assert_eq!(seen_image.named(), image.user_specified_image.as_bytes());
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
                    text(m.container_path).into_owned(),
                    text(m.host_path).into_owned(),
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
                seen_metadata.name,
                seen_metadata.uid,
                seen_metadata.namespace
            ]),
            [metadata.name, metadata.uid, metadata.namespace]
        );
        let run = crate::cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            ..Default::default()
        };
        let run_bytes = run.encode_to_vec();
        let seen = RunPodSandboxView::decode(&run_bytes)
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
        let labels = SandboxConfigLabels::decode(&bytes[..])
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
        let container_bytes = container.encode_to_vec();
        let view = ContainerSecurityView::decode(&container_bytes).unwrap();
        assert_eq!(
            strings(&view.capabilities.unwrap().add_ambient_capabilities),
            ["NET_RAW"]
        );
        assert!(view.privileged && view.readonly_rootfs);
        assert_eq!(view.selinux_options, container.selinux_options);
        assert_eq!(view.run_as_username, b"root");
        #[allow(deprecated)]
        let deprecated = (container.apparmor_profile, container.seccomp_profile_path);
        assert_eq!(
            (view.apparmor_profile, view.seccomp_profile_path),
            (deprecated.0.as_bytes(), deprecated.1.as_bytes())
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
        let sandbox_bytes = sandbox.encode_to_vec();
        let view = SandboxSecurityView::decode(&sandbox_bytes).unwrap();
        assert_eq!(view.selinux_options, sandbox.selinux_options);
        assert!(view.privileged);
        assert_eq!(view.seccomp_profile_path, b"unconfined");
        assert_eq!(view.apparmor, sandbox.apparmor);
    }

    #[test]
    fn a_message_in_parts_reads_as_the_runtime_reads_it() {
        use crate::cri::{
            ContainerConfig, CreateContainerRequest, LinuxContainerConfig,
            LinuxContainerSecurityContext, PodSandboxConfig, PodSandboxMetadata,
        };
        let part = |privileged: bool, namespace: &str| CreateContainerRequest {
            config: Some(ContainerConfig {
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        privileged,
                        no_new_privs: !privileged,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    namespace: namespace.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Privileged in the first part, a harmless-looking second part: the runtime merges them
        // (a bool set in the first stays set when the second leaves it out).
        let mut bytes = part(true, "kube-system").encode_to_vec();
        bytes.extend(part(false, "team-a").encode_to_vec());
        let runtime = CreateContainerRequest::decode(&bytes[..]).unwrap();
        let view = CreateContainerView::decode(&bytes).unwrap();
        let security = view
            .config
            .unwrap()
            .linux
            .unwrap()
            .security_context
            .unwrap();
        let runtime_security = runtime
            .config
            .unwrap()
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert!(security.privileged && runtime_security.privileged);
        assert!(security.no_new_privs && runtime_security.no_new_privs);
        let namespace = view.sandbox_config.unwrap().metadata.unwrap().namespace;
        assert_eq!(namespace, b"team-a");
        assert_eq!(
            runtime.sandbox_config.unwrap().metadata.unwrap().namespace,
            "team-a"
        );
    }

    #[test]
    fn bytes_that_are_not_the_message_are_errors() {
        // config (2) as a varint, a string cut short, a mount that is not a message.
        for broken in [
            &b"\x10\x01"[..],
            b"\x12\x05\x0a\x01",
            b"\x12\x03\x3a\x01\xff",
        ] {
            assert!(CreateContainerView::decode(broken).is_err(), "{broken:?}");
        }
        // Unknown fields are skipped.
        let unknown = b"\xf8\x01\x01\xfa\x01\x00\x12\x00";
        assert!(
            CreateContainerView::decode(unknown)
                .unwrap()
                .config
                .is_some()
        );
    }
}
