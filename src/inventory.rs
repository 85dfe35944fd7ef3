//! What criguard knows of the node's sandboxes and containers, so that a call naming only an id
//! (ExecSync, StopContainer, RemovePodSandbox, ...) can be told which pod it is about; and the
//! names the runtime gives image ids, so that a CreateContainer naming its image by id can be
//! told which image it runs.
//!
//! It learns from the answers to RunPodSandbox and CreateContainer that pass through, forgets on
//! RemoveContainer and RemovePodSandbox, and reads what the runtime runs (StreamPodSandboxes
//! and StreamContainers where the runtime has them, else ListPodSandbox and ListContainers,
//! as the kubelet 1.36 reads them): at start-up, so that a restart of criguard loses nothing (retried until the
//! runtime answers), and again whenever the tables are full, which on a real node means they
//! hold objects removed behind criguard's back (`crictl rm` on the runtime's own socket).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::proxy::inspect::{PodRef, Subject};
use crate::proxy::rpc::Method;

/// At most this many sandboxes, and as many containers, are remembered (about 2.5 MB): a node
/// runs a few hundred. Reaching it makes criguard read the runtime's lists again.
const MAX_ENTRIES: usize = 10_000;
/// At most this many names are kept per image id (pulls may add names of their own).
const MAX_IMAGE_NAMES: usize = 64;
/// The runtime's lists are read again at most this often when the tables stay full.
const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Retries of the first read while the runtime does not answer: from 1 s, doubling, to 30 s.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct SandboxEntry {
    pod: PodRef,
    /// The refresh during which it was learned: an object learned while the runtime's lists
    /// were being read is kept even if the lists do not show it yet.
    generation: u64,
}

#[derive(Clone, Debug)]
struct ContainerEntry {
    sandbox_id: Arc<str>,
    name: String,
    image: String,
    generation: u64,
}

/// Ordered by id, so that a unique prefix finds its entry (see [`by_id`]).
#[derive(Debug, Default)]
struct Tables {
    sandboxes: BTreeMap<Arc<str>, SandboxEntry>,
    containers: BTreeMap<String, ContainerEntry>,
    /// The names the runtime gives each image id (without `sha256:`), from its ImageStatus and
    /// PullImage answers: the kubelet asks ImageStatus before every CreateContainer.
    images: BTreeMap<String, Vec<String>>,
    generation: u64,
}

/// An image id as the tables key it: `sha256:` is optional for the runtime.
fn image_key(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

/// The entry that `id` names: the id itself, or the one id it is a prefix of. Runtimes resolve
/// short ids (`crictl exec 3f9a1c ...`: containerd and CRI-O accept any unique prefix), so
/// criguard must too, or a short id would hide its pod from the policies and the audit trail.
/// An ambiguous prefix names nothing (the runtime refuses it as well).
fn by_id<'t, K: Borrow<str> + Ord, V>(
    table: &'t BTreeMap<K, V>,
    id: &str,
) -> Option<(&'t K, &'t V)> {
    if id.is_empty() {
        return None;
    }
    let mut named = table
        .range::<str, _>((Bound::Included(id), Bound::Unbounded))
        .take_while(|(key, _)| (*key).borrow().starts_with(id));
    let first = named.next()?;
    // The id itself sorts first among the ids it begins.
    if first.0.borrow() == id || named.next().is_none() {
        Some(first)
    } else {
        None
    }
}

#[derive(Debug, Default)]
struct Shared {
    tables: RwLock<Tables>,
    /// Told when the tables should be read from the runtime again: an object could not be
    /// added because they are full, or learning resumes after a pause.
    stale: Notify,
    /// Whether anything reads the inventory now (see [`Inventory::set_needed`]).
    needed: AtomicBool,
    /// Whether the runtime's last Status answer said every handler runs pods in user
    /// namespaces: only then does a pod's own user namespace relax the Pod Security checks.
    user_namespaces: AtomicBool,
}

/// Sandboxes and containers by id. Cheap to clone; all clones share one table.
#[derive(Clone, Debug)]
pub struct Inventory(Arc<Shared>);

impl Default for Inventory {
    fn default() -> Inventory {
        Inventory::new()
    }
}

impl Inventory {
    /// An inventory that learns only from the calls it is shown.
    pub fn new() -> Inventory {
        Inventory(Arc::new(Shared {
            needed: AtomicBool::new(true),
            ..Shared::default()
        }))
    }

    /// Whether the calls that pass should be learned: only while something reads the
    /// inventory (the audit trail, or a policy on calls that name only an id, such as ExecSync).
    /// Pod Security policies alone judge RunPodSandbox and CreateContainer, which name their pod
    /// themselves, so their calls skip the learning. When it is needed again, the tables are
    /// read again from the runtime: what was created meanwhile was not learned.
    pub fn set_needed(&self, needed: bool) {
        let was = self.0.needed.swap(needed, Ordering::Relaxed);
        if needed && !was {
            self.0.stale.notify_one();
        }
    }

    pub fn needed(&self) -> bool {
        self.0.needed.load(Ordering::Relaxed)
    }

    /// An inventory that also reads the runtime's sandboxes and containers: now (retried until
    /// the runtime answers), whenever its tables fill up, and when learning resumes.
    pub fn of_runtime(runtime: PathBuf) -> Inventory {
        let inventory = Inventory::new();
        let keeper = inventory.clone();
        tokio::spawn(async move { keeper.keep(&runtime).await });
        inventory
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.0.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.0.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills in the pod (and container name and image) of a subject that names only ids.
    pub fn complete(&self, subject: &mut Subject) {
        if subject.pod.is_some() && subject.container_id.is_none() {
            return;
        }
        let tables = self.read();
        if let Some(id) = &subject.container_id
            && let Some((_, container)) = by_id(&tables.containers, id)
        {
            subject
                .sandbox_id
                .get_or_insert_with(|| container.sandbox_id.to_string());
            subject
                .container_name
                .get_or_insert_with(|| container.name.clone());
            subject.image.get_or_insert_with(|| container.image.clone());
        }
        if subject.pod.is_none()
            && let Some(sandbox) = &subject.sandbox_id
        {
            subject.pod = by_id(&tables.sandboxes, sandbox).map(|(_, s)| s.pod.clone());
        }
    }

    /// Learns from a Status answer whether every runtime handler runs pods in user namespaces.
    pub fn learn_user_namespaces(&self, everywhere: bool) {
        self.0.user_namespaces.store(everywhere, Ordering::Relaxed);
    }

    /// Whether the runtime said so in its last Status answer criguard saw (not before one).
    pub fn user_namespaces(&self) -> bool {
        self.0.user_namespaces.load(Ordering::Relaxed)
    }

    /// The names the runtime gave image `id` (or the one id it is a prefix of), if criguard
    /// has seen them.
    pub fn image_names(&self, id: &str) -> Option<Vec<String>> {
        by_id(&self.read().images, image_key(id)).map(|(_, names)| names.clone())
    }

    /// Learns the names the runtime gives an image now (an ImageStatus answer): they replace
    /// what was known, since a tag may have moved to another image.
    pub fn learn_image(&self, id: &str, names: &[&str]) {
        let mut tables = self.write();
        if let Some(known) = tables.images.get_mut(image_key(id)) {
            known.clear();
        }
        tables.add_image(id, names);
    }

    /// Learns from a successful call: `subject` is what its request said, `created` the id its
    /// answer carried (RunPodSandbox, CreateContainer; PullImage: the image pulled).
    pub fn learn(&self, method: Method, subject: &Subject, created: Option<&str>) {
        let mut tables = self.write();
        let added = match (method, created) {
            (Method::PullImage, Some(id)) => {
                if let Some(name) = &subject.image {
                    tables.add_image(id, &[name.as_str()]);
                }
                true
            }
            (Method::RunPodSandbox, Some(id)) => match &subject.pod {
                Some(pod) => tables.add_sandbox(id, pod.clone()),
                None => true,
            },
            (Method::CreateContainer, Some(id)) => match &subject.sandbox_id {
                Some(sandbox) => {
                    // The sandbox may be named by a prefix: the container is kept under its id.
                    let known = by_id(&tables.sandboxes, sandbox).map(|(id, _)| id.clone());
                    let sandbox = match &known {
                        Some(id) => id,
                        None => {
                            if let Some(pod) = &subject.pod {
                                tables.add_sandbox(sandbox, pod.clone());
                            }
                            sandbox.as_str()
                        }
                    };
                    tables.add_container(
                        id,
                        sandbox,
                        subject.container_name.as_deref().unwrap_or_default(),
                        subject.image.as_deref().unwrap_or_default(),
                    )
                }
                None => true,
            },
            (Method::RemoveContainer, _) => {
                if let Some(id) = subject.container_id.as_deref()
                    && let Some((id, _)) = by_id(&tables.containers, id)
                {
                    let id = id.clone();
                    tables.containers.remove(&id);
                }
                true
            }
            (Method::RemovePodSandbox, _) => {
                if let Some(id) = subject.sandbox_id.as_deref()
                    && let Some((id, _)) = by_id(&tables.sandboxes, id)
                {
                    let id = id.clone();
                    tables.sandboxes.remove(&id);
                    tables.containers.retain(|_, c| c.sandbox_id != id);
                }
                true
            }
            _ => true,
        };
        if !added {
            self.0.stale.notify_one();
        }
    }

    /// Reads the runtime's lists until it answers once, then again each time the tables fill
    /// up or learning resumes (at most every [`REFRESH_INTERVAL`]). Errors are logged: without
    /// the lists the inventory still learns from the calls that pass.
    async fn keep(&self, runtime: &Path) {
        let mut retry = RETRY_MIN;
        loop {
            match self.refresh(runtime).await {
                Ok((sandboxes, containers)) => {
                    tracing::debug!(sandboxes, containers, "inventory read from the runtime");
                    break;
                }
                Err(err) => {
                    if retry == RETRY_MIN {
                        tracing::info!(
                            error = %err,
                            "could not read the runtime's sandboxes and containers; audit events and policies know the pods of calls made from now on until it answers"
                        );
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        loop {
            self.0.stale.notified().await;
            match self.refresh(runtime).await {
                Ok((sandboxes, containers)) => tracing::info!(
                    sandboxes,
                    containers,
                    bound = MAX_ENTRIES,
                    "inventory read again from the runtime"
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "the runtime's lists could not be read again for the inventory")
                }
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
    }

    /// Replaces the tables by the runtime's lists, keeping what was learned while they were
    /// read. Returns how many sandboxes and containers the runtime has.
    async fn refresh(&self, runtime: &Path) -> anyhow::Result<(usize, usize)> {
        let started = {
            let mut tables = self.write();
            tables.generation += 1;
            tables.generation
        };
        let channel = crate::client::channel(runtime).await?;
        let sandboxes = listed::sandboxes(channel.clone()).await?;
        let containers = listed::containers(channel).await?;
        let mut tables = self.write();
        let listed: std::collections::HashSet<&str> = sandboxes
            .iter()
            .map(|s| s.id.as_str())
            .chain(containers.iter().map(|c| c.id.as_str()))
            .collect();
        tables
            .sandboxes
            .retain(|id, s| s.generation >= started || listed.contains(&**id));
        tables
            .containers
            .retain(|id, c| c.generation >= started || listed.contains(id.as_str()));
        for sandbox in &sandboxes {
            if tables.sandboxes.contains_key(sandbox.id.as_str()) {
                continue;
            }
            let metadata = sandbox.metadata.clone().unwrap_or_default();
            let pod = PodRef {
                namespace: metadata.namespace,
                name: metadata.name,
                uid: metadata.uid,
            };
            tables.add_sandbox(&sandbox.id, pod);
        }
        for container in &containers {
            if tables.containers.contains_key(&container.id) {
                continue;
            }
            tables.add_container(
                &container.id,
                &container.pod_sandbox_id,
                container.metadata.as_ref().map_or("", |m| m.name.as_str()),
                container.image.as_ref().map_or("", |i| i.image.as_str()),
            );
        }
        Ok((sandboxes.len(), containers.len()))
    }
}

/// The runtime's lists as the inventory reads them: only the fields it keeps. prost skips the
/// others (labels and annotations are most of a list's bytes: 6.6 MB for 5,000 containers)
/// without allocating them: decoding whole `Container`s at start-up put criguard's peak memory
/// at 33.8 MiB in front of 5,000 containers, against 20.6 MiB now. Same field numbers and
/// types as the CRI's messages, so what is kept is read exactly as a full decode reads it (a
/// test compares them).
mod listed {
    use http::uri::PathAndQuery;
    use tonic::transport::Channel;

    use crate::cri::{ContainerMetadata, ImageSpec, PodSandboxMetadata};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "4")]
        pub image: Option<ImageSpec>,
    }

    /// `ListPodSandboxResponse`, and a page of `StreamPodSandboxes` (the same field).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sandboxes {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<Sandbox>,
    }

    /// `ListContainersResponse`, and a page of `StreamContainers` (the same field).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Containers {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }

    pub async fn sandboxes(channel: Channel) -> Result<Vec<Sandbox>, tonic::Status> {
        let request = crate::cri::ListPodSandboxRequest::default();
        let stream = "/runtime.v1.RuntimeService/StreamPodSandboxes";
        let list = "/runtime.v1.RuntimeService/ListPodSandbox";
        let pages = read::<_, Sandboxes>(channel, stream, list, request).await?;
        Ok(pages.into_iter().flat_map(|page| page.items).collect())
    }

    pub async fn containers(channel: Channel) -> Result<Vec<Container>, tonic::Status> {
        let request = crate::cri::ListContainersRequest::default();
        let stream = "/runtime.v1.RuntimeService/StreamContainers";
        let list = "/runtime.v1.RuntimeService/ListContainers";
        let pages = read::<_, Containers>(channel, stream, list, request).await?;
        Ok(pages.into_iter().flat_map(|page| page.containers).collect())
    }

    /// A list by its streaming twin (CRI 1.35+: pages, so that a node's list is not bound by
    /// one message's size) where the runtime has it, else by the unary call, as the kubelet
    /// 1.36 reads them. The twins' requests and pages have the List calls' fields.
    pub(super) async fn read<Q, A>(
        channel: Channel,
        stream: &'static str,
        list: &'static str,
        request: Q,
    ) -> Result<Vec<A>, tonic::Status>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        match streamed(channel.clone(), stream, request.clone()).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                Ok(vec![unary(channel, list, request).await?])
            }
            pages => pages,
        }
    }

    /// The pages of a streamed list, holding at most [`MAX_KEPT`] bytes of what is kept.
    async fn streamed<Q, A>(
        channel: Channel,
        path: &'static str,
        request: Q,
    ) -> Result<Vec<A>, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = ready(channel).await?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let mut stream = grpc
            .server_streaming(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?
            .into_inner();
        let (mut pages, mut kept) = (Vec::new(), 0);
        while let Some(page) = stream.message().await? {
            kept += page.encoded_len();
            if kept > MAX_KEPT {
                return Err(tonic::Status::resource_exhausted(format!(
                    "{path}: more than {MAX_KEPT} bytes of ids and names"
                )));
            }
            pages.push(page);
        }
        Ok(pages)
    }

    /// A gRPC client on `channel` once it can send, with the client's message limit.
    async fn ready(channel: Channel) -> Result<tonic::client::Grpc<Channel>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(crate::client::CLIENT_MESSAGE_LIMIT);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(grpc)
    }

    /// What a streamed list may leave in memory (each page its size once decoded: ids,
    /// names, images; each page on the wire is bounded by the client's message limit). The
    /// tables keep `MAX_ENTRIES` of each kind, a few hundred bytes each: far below.
    const MAX_KEPT: usize = 32 << 20;

    pub(super) async fn unary<Q, A>(
        channel: Channel,
        path: &'static str,
        request: Q,
    ) -> Result<A, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = ready(channel).await?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let answer = grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(answer.into_inner())
    }
}

impl Tables {
    /// Adds names to an image's. A full table is emptied: the kubelet's next ImageStatus
    /// answers fill it again, and ids are never re-read from the runtime's lists.
    fn add_image(&mut self, id: &str, names: &[&str]) {
        let key = image_key(id);
        if key.is_empty() {
            return;
        }
        if self.images.len() >= MAX_ENTRIES && !self.images.contains_key(key) {
            self.images.clear();
        }
        let known = self.images.entry(key.to_string()).or_default();
        for name in names {
            if known.len() < MAX_IMAGE_NAMES && !known.iter().any(|k| k == name) {
                known.push(name.to_string());
            }
        }
    }

    /// Whether it was added (or known); false when the table is full.
    fn add_sandbox(&mut self, id: &str, pod: PodRef) -> bool {
        if self.sandboxes.len() >= MAX_ENTRIES && !self.sandboxes.contains_key(id) {
            return false;
        }
        let generation = self.generation;
        self.sandboxes
            .insert(id.into(), SandboxEntry { pod, generation });
        true
    }

    /// Whether it was added (or known); false when the table is full. Nothing is copied then.
    fn add_container(&mut self, id: &str, sandbox_id: &str, name: &str, image: &str) -> bool {
        if self.containers.len() >= MAX_ENTRIES && !self.containers.contains_key(id) {
            return false;
        }
        let sandbox_id = self
            .sandboxes
            .get_key_value(sandbox_id)
            .map_or_else(|| sandbox_id.into(), |(k, _)| k.clone());
        let generation = self.generation;
        self.containers.insert(
            id.into(),
            ContainerEntry {
                sandbox_id,
                name: name.into(),
                image: image.into(),
                generation,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists read with only the kept fields give what a whole decode gives, also when a
    /// container's fields come twice (merged, the last value winning) and around labels,
    /// annotations and fields unknown to both.
    #[test]
    fn lists_read_lean_agree_with_a_whole_decode() {
        use crate::cri::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
        use prost::Message;
        let container = |id: &str, name: &str, image: &str| cri::Container {
            id: id.into(),
            pod_sandbox_id: format!("pod-of-{id}"),
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 2,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            image_ref: "sha256:abc".into(),
            labels: crate::fake::samples::container_labels("web-1", "team-a", name),
            annotations: crate::fake::samples::container_annotations(),
            ..Default::default()
        };
        let mut first = container("c1", "app", "nginx:1").encode_to_vec();
        // The same container's fields again: a later id and a merged metadata.
        first.extend(container("c1b", "", "nginx:2").encode_to_vec());
        // A field neither message knows, of each wire type.
        first.extend([0xf8, 0x07, 0x01, 0x81, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
        first.extend([0x8a, 0x08, 0x01, b'x', 0x95, 0x08, 1, 2, 3, 4]);
        let mut bytes = Vec::new();
        prost::encoding::bytes::encode(1, &first, &mut bytes);
        let second = cri::ListContainersResponse {
            containers: vec![container("c2", "sidecar", "registry.k8s.io/pause:3.10")],
        };
        bytes.extend(second.encode_to_vec());
        let whole = cri::ListContainersResponse::decode(&bytes[..]).unwrap();
        let lean = listed::Containers::decode(&bytes[..]).unwrap();
        assert_eq!(whole.containers.len(), 2);
        assert_eq!(whole.containers[0].id, "c1b");
        let kept = |c: &cri::Container| listed::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_sandbox_id.clone(),
            metadata: c.metadata.clone(),
            image: c.image.clone(),
        };
        assert_eq!(
            lean.containers,
            whole.containers.iter().map(kept).collect::<Vec<_>>()
        );

        let sandbox = cri::PodSandbox {
            id: "s1".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web-1".into(),
                uid: "u-1".into(),
                namespace: "team-a".into(),
                attempt: 0,
            }),
            labels: crate::fake::samples::container_labels("web-1", "team-a", "pod"),
            ..Default::default()
        };
        let bytes = cri::ListPodSandboxResponse {
            items: vec![sandbox.clone(), sandbox],
        }
        .encode_to_vec();
        let whole = cri::ListPodSandboxResponse::decode(&bytes[..]).unwrap();
        let lean = listed::Sandboxes::decode(&bytes[..]).unwrap();
        let kept = |s: &cri::PodSandbox| listed::Sandbox {
            id: s.id.clone(),
            metadata: s.metadata.clone(),
        };
        assert_eq!(lean.items, whole.items.iter().map(kept).collect::<Vec<_>>());
    }

    fn pod() -> PodRef {
        PodRef {
            namespace: "team-a".into(),
            name: "web-1".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn a_container_id_leads_to_its_pod_until_the_sandbox_is_removed() {
        let inventory = Inventory::new();
        let run = Subject {
            pod: Some(pod()),
            ..Subject::default()
        };
        inventory.learn(Method::RunPodSandbox, &run, Some("s-1"));
        let create = Subject {
            pod: Some(pod()),
            sandbox_id: Some("s-1".into()),
            container_name: Some("app".into()),
            image: Some("busybox:1.36".into()),
            ..Subject::default()
        };
        inventory.learn(Method::CreateContainer, &create, Some("c-1"));

        let mut exec = Subject {
            container_id: Some("c-1".into()),
            ..Subject::default()
        };
        inventory.complete(&mut exec);
        assert_eq!(exec.pod, Some(pod()));
        assert_eq!(exec.sandbox_id.as_deref(), Some("s-1"));
        assert_eq!(exec.container_name.as_deref(), Some("app"));
        assert_eq!(exec.image.as_deref(), Some("busybox:1.36"));

        let remove = Subject {
            sandbox_id: Some("s-1".into()),
            ..Subject::default()
        };
        inventory.learn(Method::RemovePodSandbox, &remove, None);
        let mut exec = Subject {
            container_id: Some("c-1".into()),
            ..Subject::default()
        };
        inventory.complete(&mut exec);
        assert_eq!(exec.pod, None);
    }

    #[test]
    fn a_unique_prefix_of_an_id_names_it_as_the_runtime_reads_it() {
        let inventory = Inventory::new();
        let run = Subject {
            pod: Some(pod()),
            ..Subject::default()
        };
        inventory.learn(Method::RunPodSandbox, &run, Some("5a1e0000"));
        // Created naming its sandbox by a prefix, as `crictl create 5a1e ...` may.
        let create = |sandbox: &str| Subject {
            pod: Some(pod()),
            sandbox_id: Some(sandbox.into()),
            ..Subject::default()
        };
        inventory.learn(Method::CreateContainer, &create("5a1e"), Some("3f9a1c77"));
        inventory.learn(
            Method::CreateContainer,
            &create("5a1e0000"),
            Some("3f9a2d88"),
        );

        let sandbox_of = |id: &str| {
            let mut subject = container(id);
            inventory.complete(&mut subject);
            (subject.sandbox_id, subject.pod.map(|p| p.namespace))
        };
        let known = (Some("5a1e0000".to_string()), Some("team-a".to_string()));
        assert_eq!(sandbox_of("3f9a1c77"), known);
        assert_eq!(sandbox_of("3f9a1"), known);
        assert_eq!(sandbox_of("3f9a2"), known);
        // Ambiguous, or nothing: no pod (the runtime refuses both too).
        assert_eq!(sandbox_of("3f9a"), (None, None));
        assert_eq!(sandbox_of("3f9b"), (None, None));
        assert_eq!(sandbox_of(""), (None, None));

        let mut port_forward = Subject {
            sandbox_id: Some("5a".into()),
            ..Subject::default()
        };
        inventory.complete(&mut port_forward);
        assert_eq!(port_forward.pod, Some(pod()));

        // Removed by a prefix: forgotten under its full id.
        inventory.learn(Method::RemoveContainer, &container("3f9a1"), None);
        assert_eq!(sandbox_of("3f9a"), known);
        inventory.learn(
            Method::RemovePodSandbox,
            &Subject {
                sandbox_id: Some("5a1e".into()),
                ..Subject::default()
            },
            None,
        );
        assert_eq!(sandbox_of("3f9a2d88"), (None, None));
    }

    #[test]
    fn image_ids_are_known_by_the_names_the_runtime_gives_them() {
        let inventory = Inventory::new();
        let id = "sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097";
        assert_eq!(inventory.image_names(id), None);
        inventory.learn_image(id, &["registry.k8s.io/pause:3.9"]);
        let names = Some(vec!["registry.k8s.io/pause:3.9".to_string()]);
        assert_eq!(inventory.image_names(id), names);
        // With or without `sha256:`, or a unique prefix, as containerd resolves them.
        assert_eq!(inventory.image_names(&id[7..]), names);
        assert_eq!(inventory.image_names("7031c1b28338"), names);
        // A pull adds the name it was asked for; ImageStatus says what the names are now.
        let pulled = Subject {
            image: Some("registry.k8s.io/pause:latest".into()),
            ..Subject::default()
        };
        inventory.learn(Method::PullImage, &pulled, Some(id));
        assert_eq!(inventory.image_names(id).unwrap().len(), 2);
        inventory.learn_image(id, &["registry.k8s.io/pause:3.10"]);
        assert_eq!(
            inventory.image_names(id),
            Some(vec!["registry.k8s.io/pause:3.10".to_string()])
        );
    }

    fn container(id: &str) -> Subject {
        Subject {
            container_id: Some(id.into()),
            ..Subject::default()
        }
    }

    fn knows(inventory: &Inventory, id: &str) -> bool {
        let mut subject = container(id);
        inventory.complete(&mut subject);
        subject.sandbox_id.is_some()
    }

    async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A runtime with the streamed lists (CRI 1.35+) is read by them, every page; the fake
    /// sends 100 items a page.
    #[tokio::test]
    async fn the_runtime_is_read_by_its_streamed_lists_every_page() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runtime.sock");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let runtime = crate::fake::FakeRuntime::with_containers(250);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(runtime.serve_listener(listener, shutdown.clone()));
        let channel = crate::client::channel(&socket).await.unwrap();
        let stream = "/runtime.v1.RuntimeService/StreamContainers";
        let list = "/runtime.v1.RuntimeService/ListContainers";
        let request = crate::cri::ListContainersRequest::default();
        let pages = listed::read::<_, listed::Containers>(channel.clone(), stream, list, request)
            .await
            .unwrap();
        assert_eq!(
            pages.len(),
            3,
            "250 containers in pages of {}",
            crate::fake::PAGE
        );
        let streamed = listed::containers(channel.clone()).await.unwrap();
        assert_eq!(streamed.len(), 250);
        // The same containers as the unary list gives.
        let request = crate::cri::ListContainersRequest::default();
        let whole = listed::unary::<_, listed::Containers>(channel, list, request)
            .await
            .unwrap()
            .containers;
        assert_eq!(streamed, whole);
        // A runtime without them (containerd up to 2.1): their UNIMPLEMENTED, then the list.
        let missing = "/runtime.v1.RuntimeService/NotYetInTheCri";
        let channel = crate::client::channel(&socket).await.unwrap();
        let request = crate::cri::ListContainersRequest::default();
        let pages = listed::read::<_, listed::Containers>(channel, missing, list, request)
            .await
            .unwrap();
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].containers.len(), 250);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_runtime_is_read_once_it_answers_and_again_when_the_tables_are_full() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runtime.sock");
        // criguard may start before the runtime: the first read is retried.
        let inventory = Inventory::of_runtime(socket.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let runtime = crate::fake::FakeRuntime::with_containers(3);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(runtime.serve_listener(listener, shutdown.clone()));
        let channel = crate::client::channel(&socket).await.unwrap();
        let listed: Vec<String> = crate::client::runtime(channel)
            .list_containers(crate::cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(listed.len(), 3);
        assert!(eventually(|| knows(&inventory, &listed[0])).await);

        // Containers removed behind criguard's back fill the table ...
        let create = Subject {
            pod: Some(pod()),
            sandbox_id: Some("s-gone".into()),
            ..Subject::default()
        };
        for i in 0..MAX_ENTRIES {
            inventory.learn(Method::CreateContainer, &create, Some(&format!("gone-{i}")));
        }
        assert!(knows(&inventory, "gone-0"));
        // ... so the next one cannot be added, and the runtime's lists replace them.
        inventory.learn(Method::CreateContainer, &create, Some("new-1"));
        assert!(eventually(|| !knows(&inventory, "gone-0")).await);
        assert!(listed.iter().all(|id| knows(&inventory, id)));
        inventory.learn(Method::CreateContainer, &create, Some("new-2"));
        assert!(knows(&inventory, "new-2"));
        shutdown.cancel();
    }
}
