//! Reads what a call is about (pod, sandbox, container, image) straight from the request's
//! protobuf bytes, without decoding the whole message: cheap enough for every call.

use super::rpc::{Method, Names};
use super::wire::{DecodeError, Fields, Value};

/// The id of the object `method` acts on, read from its request message: a container id, a
/// sandbox id, an image reference, `namespace/name` for RunPodSandbox, or `""` when the call has
/// none (Version, List*, ...) or the bytes cannot be read.
pub fn object_id(method: Method, message: &[u8]) -> &str {
    use Method::*;
    let path: &[u32] = match (method, method.facts().names) {
        // container_id = 1, pod_sandbox_id = 1
        (_, Names::Container | Names::Sandbox) | (CreateContainer, _) => &[1],
        // image = 1 (ImageSpec), image = 1
        (_, Names::Image) | (PullImage, _) => &[1, 1],
        // config = 1 (PodSandboxConfig), metadata = 1, name = 1
        (RunPodSandbox, _) => &[1, 1, 1],
        _ => return "",
    };
    string_at(message, path).unwrap_or("")
}

/// A pod as CRI names it (`PodSandboxMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// What a call is about, as far as its request says. Calls that name only a container or
/// sandbox id leave the pod to be looked up (see [`crate::inventory`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub pod: Option<PodRef>,
    pub sandbox_id: Option<String>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub image: Option<String>,
}

impl Subject {
    /// Reads the subject of a `method` request. Unreadable bytes give an empty subject.
    pub fn of_request(method: Method, message: &[u8]) -> Subject {
        use Method::*;
        let text = |path: &[u32]| string_at(message, path).map(str::to_string);
        match method {
            // config = 1 → metadata = 1
            RunPodSandbox => Subject {
                pod: pod_ref(bytes_at_each(
                    message,
                    [&[1, 1], &[1, 1, 1], &[1, 1, 2], &[1, 1, 3]],
                )),
                ..Subject::default()
            },
            // pod_sandbox_id = 1, config = 2 (metadata.name, image), sandbox_config = 3. The
            // kubelet puts the image's id in image.image and the pod spec's name in
            // image.user_specified_image (18): the name is what an operator recognises.
            CreateContainer => {
                let [metadata, pod, uid, namespace, sandbox, name, named, image] = bytes_at_each(
                    message,
                    [
                        &[3, 1],
                        &[3, 1, 1],
                        &[3, 1, 2],
                        &[3, 1, 3],
                        &[1],
                        &[2, 1, 1],
                        &[2, 2, 18],
                        &[2, 2, 1],
                    ],
                );
                Subject {
                    pod: pod_ref([metadata, pod, uid, namespace]),
                    sandbox_id: owned(sandbox),
                    container_name: owned(name),
                    image: owned(named.filter(|name| !name.is_empty())).or_else(|| owned(image)),
                    ..Subject::default()
                }
            }
            // image = 1 → image = 1; sandbox_config = 3 → metadata = 1
            PullImage => {
                let [metadata, pod, uid, namespace, image] = bytes_at_each(
                    message,
                    [&[3, 1], &[3, 1, 1], &[3, 1, 2], &[3, 1, 3], &[1, 1]],
                );
                Subject {
                    pod: pod_ref([metadata, pod, uid, namespace]),
                    image: owned(image),
                    ..Subject::default()
                }
            }
            ImageStatus | RemoveImage => Subject {
                image: text(&[1, 1]),
                ..Subject::default()
            },
            m if m.facts().names == Names::Sandbox => Subject {
                sandbox_id: text(&[1]),
                ..Subject::default()
            },
            m if m.facts().names == Names::Container => Subject {
                container_id: text(&[1]),
                ..Subject::default()
            },
            _ => Subject::default(),
        }
    }
}

/// A string field read with [`bytes_at_each`], as [`string_at`] gives it: `None` when absent
/// or not UTF-8.
fn owned(field: Option<&[u8]>) -> Option<String> {
    field
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .map(str::to_string)
}

/// The pod of a `PodSandboxMetadata` read with [`bytes_at_each`] (the message, then its name,
/// uid and namespace): none without the message. Each field is read on its own: the message
/// may come in parts.
fn pod_ref([metadata, name, uid, namespace]: [Option<&[u8]>; 4]) -> Option<PodRef> {
    metadata?;
    let field = |f: Option<&[u8]>| owned(f).unwrap_or_default();
    Some(PodRef {
        name: field(name),
        uid: field(uid),
        namespace: field(namespace),
    })
}

/// The bytes at several paths, each as [`bytes_at`] reads it (`None` for an error), in one
/// pass over the message and over each embedded message the paths go through: a message is
/// not read once per path.
fn bytes_at_each<'a, const N: usize>(
    message: &'a [u8],
    paths: [&[u32]; N],
) -> [Option<&'a [u8]>; N] {
    const { assert!(N <= MAX_PATHS) };
    let mut found = [const { Ok(None) }; N];
    let all: [(usize, &[u32]); N] = std::array::from_fn(|i| (i, paths[i]));
    collect_at(message, &all, &mut found);
    found.map(|at| at.ok().flatten())
}

/// At most this many paths are read in one pass ([`bytes_at_each`]).
const MAX_PATHS: usize = 8;

/// Reads `paths` (index in `found`, the path's rest) in `message` as [`bytes_at`] reads each:
/// the last value wins, a later part of an embedded message merges, and a message on a path
/// that cannot be read makes that path an error.
fn collect_at<'a>(
    message: &'a [u8],
    paths: &[(usize, &[u32])],
    found: &mut [Result<Option<&'a [u8]>, DecodeError>],
) {
    for field in Fields::new(message) {
        let (number, value) = match field {
            Ok(field) => field,
            Err(err) => {
                for &(i, _) in paths {
                    found[i] = Err(err.clone());
                }
                return;
            }
        };
        let Value::Bytes(bytes) = value else {
            continue;
        };
        let mut inner = [(0, &[][..]); MAX_PATHS];
        let mut deeper = 0;
        for &(i, path) in paths {
            match path.split_first() {
                Some((&head, rest)) if head == number && found[i].is_ok() => {
                    if rest.is_empty() {
                        found[i] = Ok(Some(bytes));
                    } else {
                        inner[deeper] = (i, rest);
                        deeper += 1;
                    }
                }
                _ => {}
            }
        }
        if deeper > 0 {
            collect_at(bytes, &inner[..deeper], found);
        }
    }
}

/// The id a successful RunPodSandbox or CreateContainer answer carries, or the image a
/// PullImage answer says it pulled (field 1 of all three).
pub fn created_id(method: Method, response: &[u8]) -> Option<&str> {
    method.facts().creates?;
    string_at(response, &[1])
}

/// The image an ImageStatus answer describes: its id, and every name the runtime knows it by
/// (`repo_tags`, `repo_digests`). `None` when the answer names no image.
pub fn image_status(response: &[u8]) -> Option<(&str, Vec<&str>)> {
    let id = string_at(response, &[1, 1]).filter(|id| !id.is_empty())?;
    Fields::new(response).try_for_each(|f| f.map(drop)).ok()?;
    let mut names = Vec::new();
    // image = 1 → repo_tags = 2, repo_digests = 3 (repeated: every value, in every part).
    for (field, value) in Fields::new(response).map_while(Result::ok) {
        if let (1, Value::Bytes(image)) = (field, value) {
            for (field, value) in Fields::new(image).map_while(Result::ok) {
                if let (2 | 3, Value::Bytes(name)) = (field, value)
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    names.push(name);
                }
            }
        }
    }
    Some((id, names))
}

/// From a Status answer: whether the runtime says every one of its handlers runs pods in user
/// namespaces (`runtime_handlers[].features.user_namespaces`, CRI 1.30+; none listed: no).
/// `None` when the answer cannot be read.
pub fn user_namespaces_everywhere(response: &[u8]) -> Option<bool> {
    use prost::Message;
    let status = crate::cri::StatusResponse::decode(response).ok()?;
    let handlers = status.runtime_handlers;
    Some(
        !handlers.is_empty()
            && handlers
                .iter()
                .all(|h| h.features.is_some_and(|f| f.user_namespaces)),
    )
}

/// The string at a path of field numbers through nested messages, as the runtime reads it;
/// `None` when absent, not UTF-8, or when the message cannot be read.
fn string_at<'a>(message: &'a [u8], path: &[u32]) -> Option<&'a str> {
    bytes_at(message, path)
        .ok()
        .flatten()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
}

/// The bytes at a path of field numbers through nested messages, read as protobuf reads a
/// message: when a field appears twice the last value wins, and an embedded message that
/// appears twice is the two merged (so a later one that leaves the field out keeps the earlier
/// value). Unknown fields of every wire type, groups included, are skipped. Reading the first
/// value instead, or stopping at a field it cannot read, would let a request show criguard one
/// container and the runtime another; a message it cannot read whole is an error.
fn bytes_at<'a>(message: &'a [u8], path: &[u32]) -> Result<Option<&'a [u8]>, DecodeError> {
    let Some((&wanted, inner)) = path.split_first() else {
        return Ok(None);
    };
    let mut found = None;
    for field in Fields::new(message) {
        let (field, value) = field?;
        match value {
            Value::Bytes(bytes) if field == wanted => {
                if inner.is_empty() {
                    found = Some(bytes);
                } else if let Some(value) = bytes_at(bytes, inner)? {
                    found = Some(value);
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

macro_rules! requests {
    ($($method:ident => $request:ident),* $(,)?) => {
        /// Decodes a `method` request with its generated type (prost, which reads the wire
        /// format by the same rules as the runtimes' decoders): `Ok` when a protobuf decoder
        /// reads the whole message. Methods our proto does not know are not judged here.
        pub fn validate(method: Method, message: &[u8]) -> Result<(), prost::DecodeError> {
            use prost::Message;
            match method {
                $(Method::$method => crate::cri::$request::decode(message).map(drop),)*
                Method::Unknown => Ok(()),
            }
        }
    };
}

requests! {
    Version => VersionRequest, RunPodSandbox => RunPodSandboxRequest,
    StopPodSandbox => StopPodSandboxRequest, RemovePodSandbox => RemovePodSandboxRequest,
    PodSandboxStatus => PodSandboxStatusRequest, ListPodSandbox => ListPodSandboxRequest,
    CreateContainer => CreateContainerRequest, StartContainer => StartContainerRequest,
    StopContainer => StopContainerRequest, RemoveContainer => RemoveContainerRequest,
    ListContainers => ListContainersRequest, ContainerStatus => ContainerStatusRequest,
    UpdateContainerResources => UpdateContainerResourcesRequest,
    ReopenContainerLog => ReopenContainerLogRequest, ExecSync => ExecSyncRequest,
    Exec => ExecRequest, Attach => AttachRequest, PortForward => PortForwardRequest,
    ContainerStats => ContainerStatsRequest, ListContainerStats => ListContainerStatsRequest,
    PodSandboxStats => PodSandboxStatsRequest, ListPodSandboxStats => ListPodSandboxStatsRequest,
    UpdateRuntimeConfig => UpdateRuntimeConfigRequest, Status => StatusRequest,
    CheckpointContainer => CheckpointContainerRequest, GetContainerEvents => GetEventsRequest,
    ListMetricDescriptors => ListMetricDescriptorsRequest,
    ListPodSandboxMetrics => ListPodSandboxMetricsRequest, RuntimeConfig => RuntimeConfigRequest,
    ListImages => ListImagesRequest, ImageStatus => ImageStatusRequest,
    PullImage => PullImageRequest, RemoveImage => RemoveImageRequest,
    ImageFsInfo => ImageFsInfoRequest,
    StreamPodSandboxes => StreamPodSandboxesRequest, StreamContainers => StreamContainersRequest,
    StreamContainerStats => StreamContainerStatsRequest,
    StreamPodSandboxStats => StreamPodSandboxStatsRequest,
    StreamPodSandboxMetrics => StreamPodSandboxMetricsRequest,
    UpdatePodSandboxResources => UpdatePodSandboxResourcesRequest,
    StreamImages => StreamImagesRequest,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::*;
    use prost::Message;

    /// Several paths read in one pass give what each gives read alone, on the recorded
    /// requests and thousands of mutations of them (fields twice, messages in parts, unknown
    /// fields, other orders, strings that are not UTF-8, cut bytes).
    #[test]
    fn paths_read_in_one_pass_are_read_as_each_alone() {
        use crate::policy::agreement::{mutate, seeds};
        let paths: [&[u32]; 8] = [
            &[3, 1],
            &[3, 1, 1],
            &[3, 1, 3],
            &[1],
            &[2, 1, 1],
            &[2, 2, 18],
            &[2, 2, 1],
            &[1, 1, 2],
        ];
        let mut rng = fastrand::Rng::with_seed(23);
        let (mut found, mut failed) = (0, 0);
        for (_, seed) in seeds() {
            for round in 0..400 {
                let mut bytes = mutate(&mut rng, &seed);
                if round % 10 == 0 {
                    bytes.truncate(rng.usize(0..=bytes.len()));
                }
                let together = bytes_at_each(&bytes, paths);
                for (path, together) in paths.iter().zip(together) {
                    let alone = bytes_at(&bytes, path);
                    assert_eq!(
                        together,
                        alone.clone().ok().flatten(),
                        "{path:?} in {bytes:02x?}"
                    );
                    found += usize::from(together.is_some());
                    failed += usize::from(alone.is_err());
                }
            }
        }
        assert!(
            found > 1000 && failed > 100,
            "found {found}, failed {failed}"
        );
    }

    #[test]
    fn reads_the_object_of_each_kind_of_call() {
        let status = ContainerStatusRequest {
            container_id: "c-123".into(),
            verbose: true,
        }
        .encode_to_vec();
        assert_eq!(object_id(Method::ContainerStatus, &status), "c-123");
        let create = crate::fake::samples::create_container_request();
        let bytes = create.encode_to_vec();
        assert_eq!(
            object_id(Method::CreateContainer, &bytes),
            create.pod_sandbox_id
        );
        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "registry.k8s.io/pause:3.9".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            object_id(Method::PullImage, &pull),
            "registry.k8s.io/pause:3.9"
        );
        let run = RunPodSandboxRequest {
            config: Some(crate::fake::samples::pod_config()),
            runtime_handler: String::new(),
        }
        .encode_to_vec();
        assert_eq!(object_id(Method::RunPodSandbox, &run), "web-1");
        assert_eq!(object_id(Method::Version, &status), "");
    }

    #[test]
    fn subjects_name_pod_container_and_image() {
        let create = crate::fake::samples::create_container_request();
        let subject = Subject::of_request(Method::CreateContainer, &create.encode_to_vec());
        let pod = create
            .sandbox_config
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(
            subject.pod,
            Some(PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            })
        );
        let config = create.config.as_ref().unwrap();
        assert_eq!(subject.sandbox_id.as_deref(), Some(&*create.pod_sandbox_id));
        assert_eq!(
            subject.container_name.as_deref(),
            Some(&*config.metadata.as_ref().unwrap().name)
        );
        // The kubelet's CreateContainer: the image's id in `image`, its name beside it.
        let image = config.image.as_ref().unwrap();
        assert!(image.image.starts_with("sha256:"));
        assert_eq!(subject.image.as_deref(), Some(&*image.user_specified_image));
        let mut by_id = create.clone();
        by_id
            .config
            .as_mut()
            .unwrap()
            .image
            .as_mut()
            .unwrap()
            .user_specified_image = String::new();
        let subject = Subject::of_request(Method::CreateContainer, &by_id.encode_to_vec());
        assert_eq!(subject.image.as_deref(), Some(&*image.image));
        let exec = ExecSyncRequest {
            container_id: "c-9".into(),
            cmd: vec!["true".into()],
            timeout: 1,
        }
        .encode_to_vec();
        let subject = Subject::of_request(Method::ExecSync, &exec);
        assert_eq!(subject.container_id.as_deref(), Some("c-9"));
        assert_eq!(subject.pod, None);
        let answer = CreateContainerResponse {
            container_id: "c-10".into(),
        }
        .encode_to_vec();
        assert_eq!(created_id(Method::CreateContainer, &answer), Some("c-10"));
        assert_eq!(created_id(Method::StartContainer, &answer), None);
    }

    #[test]
    fn a_field_given_twice_reads_as_the_runtime_reads_it() {
        // The last container id wins.
        let mut exec = ExecSyncRequest {
            container_id: "c-first".into(),
            ..Default::default()
        }
        .encode_to_vec();
        exec.extend(
            ExecSyncRequest {
                container_id: "c-last".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let subject = Subject::of_request(Method::ExecSync, &exec);
        assert_eq!(subject.container_id.as_deref(), Some("c-last"));
        assert_eq!(object_id(Method::ExecSync, &exec), "c-last");

        // Pod metadata in two parts: merged, field by field, as prost (and Go) merge it.
        let part = |metadata: PodSandboxMetadata| {
            RunPodSandboxRequest {
                config: Some(PodSandboxConfig {
                    metadata: Some(metadata),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let mut run = part(PodSandboxMetadata {
            name: "web-1".into(),
            namespace: "dev".into(),
            ..Default::default()
        });
        run.extend(part(PodSandboxMetadata {
            namespace: "prod-payments".into(),
            ..Default::default()
        }));
        let merged = RunPodSandboxRequest::decode(run.as_slice()).unwrap();
        let metadata = merged.config.unwrap().metadata.unwrap();
        let subject = Subject::of_request(Method::RunPodSandbox, &run);
        assert_eq!(
            subject.pod,
            Some(PodRef {
                namespace: metadata.namespace,
                name: metadata.name,
                uid: metadata.uid,
            })
        );
        assert_eq!(subject.pod.unwrap().namespace, "prod-payments");
    }

    #[test]
    fn an_image_status_answer_gives_the_id_and_every_name() {
        let answer = ImageStatusResponse {
            image: Some(Image {
                id: "sha256:0123".into(),
                repo_tags: vec![
                    "docker.io/library/busybox:1.36".into(),
                    "docker.io/library/busybox:latest".into(),
                ],
                repo_digests: vec!["docker.io/library/busybox@sha256:abcd".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let (id, names) = image_status(&answer).unwrap();
        assert_eq!(id, "sha256:0123");
        assert_eq!(
            names,
            [
                "docker.io/library/busybox:1.36",
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox@sha256:abcd"
            ]
        );
        assert_eq!(
            image_status(&ImageStatusResponse::default().encode_to_vec()),
            None
        );
        let pulled = PullImageResponse {
            image_ref: "sha256:0123".into(),
        }
        .encode_to_vec();
        assert_eq!(created_id(Method::PullImage, &pulled), Some("sha256:0123"));
    }

    #[test]
    fn garbage_gives_no_object_and_never_panics() {
        for bytes in [
            &b""[..],
            b"\xff\xff\xff",
            b"\x0a\x10short",
            b"\x0b",
            b"\x0a\x02\xff\xfe",
        ] {
            assert_eq!(object_id(Method::ContainerStatus, bytes), "");
        }
    }
}
