//! An in-process fake container runtime that speaks CRI v1 over a unix socket, for the demo,
//! fast tests and benchmarks. It keeps pods and containers in memory and runs nothing. It
//! never replaces the real runtime in the tests that matter (tests/e2e runs containerd).
//!
//! Methods it does not implement answer UNIMPLEMENTED, like a runtime of an older CRI version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cri::image_service_server::{ImageService, ImageServiceServer};
use crate::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use crate::cri::*;

pub mod samples;

/// The fake runtime's name in VersionResponse.
pub const RUNTIME_NAME: &str = "criguard-fake";
const MAX_MESSAGE_SIZE: usize = 256 << 20;

/// The shared in-memory state behind both services.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Benchmark mode: CreateContainer keeps nothing, so that a load run does not grow memory.
    stateless_create: bool,
    next_id: AtomicU64,
    pods: Mutex<BTreeMap<String, PodSandbox>>,
    containers: Mutex<BTreeMap<String, ContainerStatus>>,
    /// The sandbox of each container created by a call (the pre-made ones have none).
    sandbox_of: Mutex<BTreeMap<String, String>>,
    events: Mutex<Option<broadcast::Sender<ContainerEventResponse>>>,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime whose CreateContainer answers with a fresh id and keeps nothing, for load runs.
    pub fn stateless(mut self) -> Self {
        Arc::get_mut(&mut self.state)
            .expect("configured before serving")
            .stateless_create = true;
        self
    }

    /// A runtime that already has `count` running containers in one pod, each with the labels
    /// and annotations the kubelet sets, so that a ListContainers answer is realistically large
    /// (about 1.3 KB per container).
    pub fn with_containers(count: usize) -> Self {
        let runtime = FakeRuntime::new();
        {
            let mut containers = runtime.state.containers.lock().unwrap();
            for i in 0..count {
                let status = sample_container(i);
                containers.insert(status.id.clone(), status);
            }
        }
        runtime
    }

    fn id(&self, kind: &str) -> String {
        let n = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{kind}{n:0>60x}")
    }

    fn emit(&self, container_id: &str, kind: ContainerEventType) {
        if let Some(events) = self.state.events.lock().unwrap().as_ref() {
            let _ = events.send(ContainerEventResponse {
                container_id: container_id.to_string(),
                container_event_type: kind as i32,
                created_at: now_nanos(),
                ..Default::default()
            });
        }
    }

    fn pods(&self) -> Vec<PodSandbox> {
        self.state.pods.lock().unwrap().values().cloned().collect()
    }

    fn containers(&self) -> Vec<Container> {
        let sandbox_of = self.state.sandbox_of.lock().unwrap();
        self.state
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|c| {
                let sandbox = sandbox_of.get(&c.id).map_or("pod-of-the-container", |s| s);
                container_of(c, sandbox)
            })
            .collect()
    }

    fn events(&self) -> broadcast::Receiver<ContainerEventResponse> {
        let mut slot = self.state.events.lock().unwrap();
        slot.get_or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// Serves both CRI services on `path` until `shutdown` fires.
    pub async fn serve(self, path: &Path, shutdown: CancellationToken) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        self.serve_listener(listener, shutdown).await
    }

    /// Serves both CRI services on an already bound listener until `shutdown` fires.
    pub async fn serve_listener(
        self,
        listener: tokio::net::UnixListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let runtime = RuntimeServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let image = ImageServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        tonic::transport::Server::builder()
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .add_service(runtime)
            .add_service(image)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .context("fake runtime server")
    }
}

/// A streamed list (CRI 1.35+): its items in pages of [`PAGE`], as a runtime sends them.
fn pages<T: Send + 'static, A: Send + 'static>(
    items: Vec<T>,
    page: impl Fn(Vec<T>) -> A + Send + 'static,
) -> Response<tonic::codegen::BoxStream<A>> {
    let mut items = items.into_iter().peekable();
    let mut pages = Vec::new();
    while items.peek().is_some() {
        pages.push(Ok(page(items.by_ref().take(PAGE).collect())));
    }
    Response::new(Box::pin(tokio_stream::iter(pages)))
}

/// Items per message of a streamed list.
pub const PAGE: usize = 100;

fn sample_container(i: usize) -> ContainerStatus {
    let name = format!("app-{i}");
    let mut annotations = samples::container_annotations();
    annotations.insert(
        "io.kubernetes.container.preStopHandler".into(),
        r#"{"exec":{"command":["/bin/sh","-c","sleep 5 && /usr/local/bin/web --drain --timeout=25s"]}}"#.into(),
    );
    annotations.insert(
        "io.kubernetes.container.ports".into(),
        r#"[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"metrics","containerPort":9090,"protocol":"TCP"}]"#.into(),
    );
    annotations.insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-{i}","namespace":"team-a"}},"spec":{{"containers":[{{"name":"{name}","image":"registry.example.com/team-a/web:1.4.2","resources":{{"requests":{{"cpu":"100m","memory":"128Mi"}}}}}}]}}}}"#),
    );
    ContainerStatus {
        id: format!("{i:0>64x}"),
        metadata: Some(ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        state: ContainerState::ContainerRunning as i32,
        created_at: 1_700_000_000_000_000_000 + i as i64,
        started_at: 1_700_000_000_100_000_000 + i as i64,
        image: Some(ImageSpec {
            image: "registry.example.com/team-a/web:1.4.2".into(),
            ..Default::default()
        }),
        image_ref: "sha256:4b4b4b0f9d2a6f7e3c1d5e8a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c".into(),
        labels: samples::container_labels(&format!("web-{i}"), "team-a", &name),
        annotations,
        log_path: format!("/var/log/pods/team-a_web-{i}/{name}/0.log"),
        ..Default::default()
    }
}

fn container_of(status: &ContainerStatus, pod_sandbox_id: &str) -> Container {
    Container {
        id: status.id.clone(),
        pod_sandbox_id: pod_sandbox_id.to_string(),
        metadata: status.metadata.clone(),
        image: status.image.clone(),
        image_ref: status.image_ref.clone(),
        state: status.state,
        created_at: status.created_at,
        labels: status.labels.clone(),
        annotations: status.annotations.clone(),
        image_id: status.image_ref.clone(),
    }
}

#[tonic::async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let condition = |kind: &str| RuntimeCondition {
            r#type: kind.into(),
            status: true,
            ..Default::default()
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![condition("RuntimeReady"), condition("NetworkReady")],
            }),
            ..Default::default()
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let config = request.into_inner().config.unwrap_or_default();
        let id = self.id("pod");
        let pod = PodSandbox {
            id: id.clone(),
            metadata: config.metadata,
            state: PodSandboxState::SandboxReady as i32,
            created_at: now_nanos(),
            labels: config.labels,
            annotations: config.annotations,
            ..Default::default()
        };
        self.state.pods.lock().unwrap().insert(id.clone(), pod);
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        match self.state.pods.lock().unwrap().get_mut(&id) {
            Some(pod) => pod.state = PodSandboxState::SandboxNotready as i32,
            None => {
                return Err(Status::not_found(format!(
                    "an error occurred when try to find sandbox {id:?}: not found"
                )));
            }
        }
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.state.pods.lock().unwrap().remove(&id);
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let pods = self.state.pods.lock().unwrap();
        let pod = pods
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("sandbox {id:?} not found")))?;
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(PodSandboxStatus {
                id: pod.id.clone(),
                metadata: pod.metadata.clone(),
                state: pod.state,
                created_at: pod.created_at,
                labels: pod.labels.clone(),
                annotations: pod.annotations.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        Ok(Response::new(ListPodSandboxResponse { items: self.pods() }))
    }

    async fn stream_pod_sandboxes(
        &self,
        _: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<StreamPodSandboxesResponse>>, Status> {
        Ok(pages(self.pods(), |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        }))
    }

    async fn stream_containers(
        &self,
        _: Request<StreamContainersRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<StreamContainersResponse>>, Status> {
        Ok(pages(self.containers(), |containers| {
            StreamContainersResponse { containers }
        }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let request = request.into_inner();
        if self.state.stateless_create {
            return Ok(Response::new(CreateContainerResponse {
                container_id: self.id("ctr"),
            }));
        }
        if !self
            .state
            .pods
            .lock()
            .unwrap()
            .contains_key(&request.pod_sandbox_id)
        {
            return Err(Status::not_found(format!(
                "failed to get sandbox {:?}: not found",
                request.pod_sandbox_id
            )));
        }
        let config = request.config.unwrap_or_default();
        let id = self.id("ctr");
        let status = ContainerStatus {
            id: id.clone(),
            metadata: config.metadata,
            state: ContainerState::ContainerCreated as i32,
            created_at: now_nanos(),
            image: config.image.clone(),
            image_ref: config.image.map(|i| i.image).unwrap_or_default(),
            labels: config.labels,
            annotations: config.annotations,
            ..Default::default()
        };
        self.state
            .containers
            .lock()
            .unwrap()
            .insert(id.clone(), status);
        self.state
            .sandbox_of
            .lock()
            .unwrap()
            .insert(id.clone(), request.pod_sandbox_id);
        self.emit(&id, ContainerEventType::ContainerCreatedEvent);
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.set_state(&id, ContainerState::ContainerRunning)?;
        self.emit(&id, ContainerEventType::ContainerStartedEvent);
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.set_state(&id, ContainerState::ContainerExited)?;
        self.emit(&id, ContainerEventType::ContainerStoppedEvent);
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.state.sandbox_of.lock().unwrap().remove(&id);
        if self.state.containers.lock().unwrap().remove(&id).is_some() {
            self.emit(&id, ContainerEventType::ContainerDeletedEvent);
        }
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(ListContainersResponse {
            containers: self.containers(),
        }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = request.into_inner().container_id;
        let status = self.state.containers.lock().unwrap().get(&id).cloned();
        let status =
            status.ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        Ok(Response::new(ContainerStatusResponse {
            status: Some(status),
            ..Default::default()
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        self.require_running(&request.container_id)?;
        // Runs nothing: echoes the command line, as `echo` would.
        let mut stdout = request
            .cmd
            .iter()
            .skip(1)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        stdout.push('\n');
        Ok(Response::new(ExecSyncResponse {
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
            exit_code: 0,
        }))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let request = request.into_inner();
        self.require_running(&request.container_id)?;
        Ok(Response::new(ExecResponse {
            url: format!("http://127.0.0.1:10010/exec/{}", self.id("")),
        }))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let status = self.state.containers.lock().unwrap().get(&id).cloned();
        let status =
            status.ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(ContainerStats {
                attributes: Some(ContainerAttributes {
                    id: status.id,
                    metadata: status.metadata,
                    labels: status.labels,
                    annotations: status.annotations,
                }),
                cpu: Some(CpuUsage {
                    timestamp: now_nanos(),
                    usage_core_nano_seconds: Some(UInt64Value { value: 1_000_000 }),
                    ..Default::default()
                }),
                memory: Some(MemoryUsage {
                    timestamp: now_nanos(),
                    working_set_bytes: Some(UInt64Value { value: 4 << 20 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<ContainerEventResponse>>, Status> {
        let events = BroadcastStream::new(self.events()).filter_map(|event| event.ok().map(Ok));
        Ok(Response::new(Box::pin(events)))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}

impl FakeRuntime {
    fn set_state(&self, id: &str, state: ContainerState) -> Result<(), Status> {
        let mut containers = self.state.containers.lock().unwrap();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        container.state = state as i32;
        match state {
            ContainerState::ContainerRunning => container.started_at = now_nanos(),
            ContainerState::ContainerExited => container.finished_at = now_nanos(),
            _ => {}
        }
        Ok(())
    }

    fn require_running(&self, id: &str) -> Result<(), Status> {
        let containers = self.state.containers.lock().unwrap();
        match containers.get(id) {
            None => Err(Status::not_found(format!("container {id:?} not found"))),
            Some(c) if c.state != ContainerState::ContainerRunning as i32 => Err(
                Status::failed_precondition(format!("container {id:?} is not running")),
            ),
            Some(_) => Ok(()),
        }
    }
}

/// The one image the fake runtime has.
fn sample_image() -> Image {
    Image {
        id: "sha256:4b4b4b0f9d2a6f7e3c1d5e8a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c".into(),
        // Also the name the sample CreateContainer gives this id (`samples`), as the image the
        // kubelet would have asked ImageStatus about first.
        repo_tags: vec![
            "registry.k8s.io/pause:3.9".into(),
            "registry.example.com/team-a/web:1.4.2".into(),
        ],
        size: 321_000,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ImageService for FakeRuntime {
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(ListImagesResponse {
            images: vec![sample_image()],
        }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let wanted = request
            .into_inner()
            .image
            .map(|i| i.image)
            .unwrap_or_default();
        let image = sample_image();
        let found = image.repo_tags.contains(&wanted) || image.id == wanted;
        Ok(Response::new(ImageStatusResponse {
            image: found.then_some(image),
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let image = request
            .into_inner()
            .image
            .map(|i| i.image)
            .unwrap_or_default();
        Ok(Response::new(PullImageResponse {
            image_ref: format!("sha256:{:0>64}", image.len()),
        }))
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: "/var/lib/containerd".into(),
                }),
                used_bytes: Some(UInt64Value { value: 1 << 30 }),
                inodes_used: Some(UInt64Value { value: 4096 }),
            }],
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn five_thousand_containers_make_a_realistic_answer() {
        let containers: Vec<_> = (0..5000)
            .map(|i| container_of(&sample_container(i), "pod"))
            .collect();
        let size = ListContainersResponse { containers }.encoded_len();
        assert!((6_000_000..7_500_000).contains(&size), "{size} bytes");
    }
}
