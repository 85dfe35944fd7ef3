//! criguard between a real CRI client and a real containerd (Debian's package, runc, CNI,
//! images built offline). Run by tests/run.sh after tests/e2e/containerd-lab.sh has started
//! containerd; by hand:
//!
//! ```sh
//! sudo tests/e2e/containerd-lab.sh up
//! CRIGUARD_E2E_ENDPOINT=unix:///run/criguard-e2e/containerd.sock \
//!     cargo test --test containerd -- --ignored --test-threads 1
//! ```

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criguard::cri::image_service_client::ImageServiceClient;
use criguard::cri::runtime_service_client::RuntimeServiceClient;
use criguard::cri::*;
use prost::Message;
use support::e2e::{BUSYBOX, FOREIGN_IMAGE, container_config, containerd_generation, pod_config};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_criguard");

fn runtime_socket() -> PathBuf {
    let endpoint = std::env::var("CRIGUARD_E2E_ENDPOINT")
        .expect("CRIGUARD_E2E_ENDPOINT names the containerd socket (tests/run.sh sets it)");
    PathBuf::from(endpoint.trim_start_matches("unix://"))
}

/// The criguard binary in front of containerd; killed when dropped.
struct Criguard {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Criguard {
    async fn start(runtime: &Path, extra: &[&str]) -> Criguard {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("criguard.sock");
        let path = socket.to_str().unwrap().to_string();
        let listen = ["--listen", path.as_str()];
        Criguard::spawn(runtime, dir, socket, &[&listen[..], extra].concat()).await
    }

    /// With the configuration `config` writes for the temporary directory it is given; its
    /// first listener must be `criguard.sock` in that directory.
    async fn start_configured(runtime: &Path, config: impl Fn(&Path) -> String) -> Criguard {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("criguard.sock");
        let file = dir.path().join("criguard.yaml");
        std::fs::write(&file, config(dir.path())).unwrap();
        let args = ["--config", file.to_str().unwrap()];
        Criguard::spawn(runtime, dir, socket, &args).await
    }

    async fn spawn(
        runtime: &Path,
        dir: tempfile::TempDir,
        socket: PathBuf,
        extra: &[&str],
    ) -> Criguard {
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--admin-address")
            .arg("off")
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", runtime.display()))
            .args(extra)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        assert!(
            support::eventually(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            })
            .await,
            "criguard did not start"
        );
        Criguard {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Criguard {
    /// SIGTERM, as systemd stops it, and wait for the exit.
    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Criguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Clients {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

async fn clients(socket: &Path) -> Clients {
    let channel = criguard::client::channel(socket).await.unwrap();
    Clients {
        rt: criguard::client::runtime(channel.clone()),
        img: criguard::client::image(channel),
    }
}

/// ImageStatus of busybox, through whichever socket `c` speaks to.
async fn busybox_status(c: &mut Clients) -> Option<Image> {
    support::image_status(&mut c.img, BUSYBOX).await
}

/// `container` running `image` (an id or a name), named `user_specified` as the pod spec would.
fn with_image(container: &ContainerConfig, image: &str, user_specified: &str) -> ContainerConfig {
    let mut container = container.clone();
    container.image = Some(ImageSpec {
        image: image.into(),
        user_specified_image: user_specified.into(),
        ..Default::default()
    });
    container
}

/// A CreateContainer in `sandbox` that criguard refuses: PERMISSION_DENIED, saying `why`.
async fn assert_create_denied(
    c: &mut Clients,
    sandbox: &str,
    config: ContainerConfig,
    pod: &PodSandboxConfig,
    why: &str,
) {
    let denied =
        c.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains(why), "{}", denied.message());
}

/// Runs `pod` through `c`: its sandbox id.
async fn run_pod(c: &mut Clients, pod: &PodSandboxConfig) -> String {
    c.rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

/// Creates `config`'s container in the pod and starts it; its id.
async fn create_and_start(
    c: &mut Clients,
    sandbox: &str,
    pod: PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id =
        c.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    c.rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

/// Stops and removes a container, as the kubelet ends one.
async fn remove_container(c: &mut Clients, id: String) {
    c.rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 5,
    })
    .await
    .unwrap();
    c.rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
}

/// restrict-exec as shipped, protecting the tests' namespace, in the policy directory `dir`.
fn restrict_exec_in_test_namespace(dir: &Path) {
    let exec = std::fs::read_to_string("policies/restrict-exec.yaml")
        .unwrap()
        .replace(
            "include: [\"prod-*\", \"kube-system\"]",
            "include: [criguard-e2e]",
        );
    assert!(exec.contains("include: [criguard-e2e]"));
    std::fs::write(dir.join("restrict-exec.yaml"), exec).unwrap();
}

/// Stops and removes a pod's sandbox, as the kubelet ends a pod.
async fn remove_pod(c: &mut Clients, sandbox: String) {
    c.rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    c.rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .unwrap();
}

/// Removes pods left by an earlier, interrupted run.
async fn clean_up(c: &mut Clients, name: &str) {
    let filter = PodSandboxFilter {
        label_selector: HashMap::from([("criguard-e2e".to_string(), name.to_string())]),
        ..Default::default()
    };
    let pods =
        c.rt.list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner();
    for pod in pods.items {
        let _ =
            c.rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await;
        let _ =
            c.rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            })
            .await;
    }
}

/// What a step of the lifecycle showed, with the ids and times that differ between runs left
/// out, so that the run through criguard and the direct run can be compared.
type Transcript = Vec<(&'static str, String)>;

/// The kubelet's lifecycle of one pod with one container, step by step.
async fn lifecycle(c: &mut Clients, name: &str) -> Transcript {
    clean_up(c, name).await;
    let mut t: Transcript = Vec::new();
    let v =
        c.rt.version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "Version",
        format!(
            "{} {} {}",
            v.runtime_name, v.runtime_version, v.runtime_api_version
        ),
    ));
    let s =
        c.rt.status(StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
    let conditions = s.status.unwrap().conditions;
    t.push((
        "Status",
        format!(
            "{:?}",
            conditions
                .iter()
                .map(|c| (&c.r#type, c.status))
                .collect::<Vec<_>>()
        ),
    ));

    // containerd 1.6 (Debian 12) answers UNIMPLEMENTED here at once: the answer must then be
    // the same through criguard. Newer runtimes stream events, and containerd 2.x (grpc-go)
    // sends the stream's headers only with its first event: the call waits beside the pod's.
    let mut rt = c.rt.clone();
    let mut subscription = Some(tokio::spawn(async move {
        rt.get_container_events(GetEventsRequest::default()).await
    }));
    let mut events = None;
    let early =
        tokio::time::timeout(Duration::from_millis(500), subscription.as_mut().unwrap()).await;
    if let Ok(answered) = early {
        subscription = None;
        match answered.unwrap() {
            Ok(stream) => events = Some(stream.into_inner()),
            Err(status) => t.push((
                "GetContainerEvents",
                format!("{:?}: {}", status.code(), status.message()),
            )),
        }
    }

    let config = pod_config(name);
    let pod =
        c.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    t.push(("RunPodSandbox", "ok".into()));
    let id =
        c.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config()),
            sandbox_config: Some(config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    t.push(("CreateContainer", "ok".into()));
    c.rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    t.push(("StartContainer", "ok".into()));

    let exec =
        c.rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "hello from a real container".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "ExecSync",
        format!(
            "exit {} stdout {:?}",
            exec.exit_code,
            String::from_utf8_lossy(&exec.stdout)
        ),
    ));

    let status =
        c.rt.container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    t.push((
        "ContainerStatus",
        format!("{:?} image {}", status.state(), status.image.unwrap().image),
    ));

    let listed =
        c.rt.list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "ListContainers",
        format!(
            "{} in pod: {:?}",
            listed.containers.len(),
            listed
                .containers
                .iter()
                .map(|c| c.state())
                .collect::<Vec<_>>()
        ),
    ));

    let pods =
        c.rt.list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    t.push((
        "ListPodSandbox",
        format!(
            "{:?}",
            pods.items.iter().map(|p| p.state()).collect::<Vec<_>>()
        ),
    ));

    let url =
        c.rt.exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    t.push((
        "Exec",
        format!("url on loopback: {}", url.starts_with("http://127.0.0.1:")),
    ));

    let stats =
        c.rt.container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    t.push((
        "ContainerStats",
        format!(
            "for the container: {}, cpu reported: {}",
            stats.attributes.unwrap().id == id,
            stats.cpu.is_some()
        ),
    ));

    c.rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 5,
    })
    .await
    .unwrap();
    t.push(("StopContainer", "ok".into()));
    c.rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    t.push(("RemoveContainer", "ok".into()));
    c.rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    t.push(("StopPodSandbox", "ok".into()));
    c.rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    t.push(("RemovePodSandbox", "ok".into()));

    if let Some(subscription) = subscription {
        let answered = tokio::time::timeout(Duration::from_secs(10), subscription)
            .await
            .expect("the event stream starts with the pod's events");
        events = Some(answered.unwrap().expect("events are streamed").into_inner());
    }
    if let Some(events) = events.as_mut() {
        let mut seen = Vec::new();
        while !seen.contains(&ContainerEventType::ContainerDeletedEvent) {
            let event = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("container events arrive")
                .unwrap()
                .expect("the event stream stays open");
            if event.container_id == id {
                seen.push(event.container_event_type());
            }
        }
        t.push(("GetContainerEvents", format!("{seen:?}")));
    }

    let images = c
        .img
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    t.push((
        "ListImages",
        format!(
            "busybox listed: {}",
            images
                .images
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX))
        ),
    ));
    let image = busybox_status(c).await;
    let mut tags = image.map(|i| i.repo_tags).unwrap_or_default();
    tags.sort();
    t.push(("ImageStatus", format!("{tags:?}")));
    let fs = c
        .img
        .image_fs_info(ImageFsInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    t.push((
        "ImageFsInfo",
        format!("{} image filesystem(s)", fs.image_filesystems.len()),
    ));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh (or see the module docs)"]
async fn a_pod_lifecycle_through_criguard_matches_the_same_calls_made_directly() {
    let runtime = runtime_socket();
    let criguard = Criguard::start(&runtime, &[]).await;

    let through = lifecycle(&mut clients(&criguard.socket).await, "through-criguard").await;
    let direct = lifecycle(&mut clients(&runtime).await, "direct").await;
    for (step, (a, b)) in through.iter().zip(&direct).enumerate() {
        println!("{:>2} {:<20} {}", step + 1, a.0, a.1);
        assert_eq!(a, b, "step {} differs through criguard", step + 1);
    }
    assert_eq!(through.len(), direct.len());
    assert_eq!(through.len(), 19);
    let steps = |t: &Transcript| t.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(" ");
    println!("all steps match: {}", steps(&through));
    assert!(
        through
            .iter()
            .any(|(m, s)| *m == "ExecSync" && s.contains("hello from a real container"))
    );
    let events = &through
        .iter()
        .find(|(m, _)| *m == "GetContainerEvents")
        .unwrap()
        .1;
    assert!(
        events.starts_with("Unimplemented")
            || events
                == "[ContainerCreatedEvent, ContainerStartedEvent, ContainerStoppedEvent, ContainerDeletedEvent]",
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh (or see the module docs)"]
async fn read_calls_answer_the_same_through_criguard_and_directly() {
    let runtime = runtime_socket();
    let criguard = Criguard::start(&runtime, &[]).await;
    let mut through = clients(&criguard.socket).await;
    let mut direct = clients(&runtime).await;

    assert_eq!(
        through
            .rt
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner(),
        direct
            .rt
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    // containerd lists images in no fixed order: compare them sorted.
    let a = through
        .img
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let b = direct
        .img
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sorted_images(a), sorted_images(b));
    let spec = || ImageStatusRequest {
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        verbose: true,
    };
    let normalize = |mut r: ImageStatusResponse| {
        if let Some(image) = r.image.as_mut() {
            image.repo_tags.sort();
            image.repo_digests.sort();
        }
        r
    };
    assert_eq!(
        normalize(through.img.image_status(spec()).await.unwrap().into_inner()),
        normalize(direct.img.image_status(spec()).await.unwrap().into_inner())
    );
    // An error is passed through unchanged: containerd's code and message.
    let missing = || ContainerStatusRequest {
        container_id: "no-such-container".into(),
        verbose: false,
    };
    let a = through.rt.container_status(missing()).await.unwrap_err();
    let b = direct.rt.container_status(missing()).await.unwrap_err();
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));
    assert_eq!(a.code(), tonic::Code::NotFound);
    // Methods of CRI 1.34-1.36 that containerd 1.6, 1.7 and 2.1 do not implement: their own
    // UNIMPLEMENTED comes back, code and message, the streaming list calls included.
    let mut raw = criguard::client::RawClient::connect(&criguard.socket)
        .await
        .unwrap();
    let mut raw_direct = criguard::client::RawClient::connect(&runtime)
        .await
        .unwrap();
    for path in [
        "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
        "/runtime.v1.RuntimeService/StreamPodSandboxes",
        "/runtime.v1.RuntimeService/StreamContainers",
        "/runtime.v1.ImageService/StreamImages",
    ] {
        let frame = criguard::client::grpc_frame(b"");
        let answer = raw
            .call(path, frame.clone(), &Default::default())
            .await
            .unwrap();
        let directly = raw_direct
            .call(path, frame, &Default::default())
            .await
            .unwrap();
        assert_eq!(
            answer.grpc_status(),
            Some(tonic::Code::Unimplemented as i32),
            "{path}"
        );
        assert_eq!(answer.grpc_message(), directly.grpc_message(), "{path}");
    }
    // containerd 1.x also serves CRI v1alpha2, same messages: criguard treats those calls as
    // their v1 twins (policies, audit), so they must really reach the same runtime. containerd
    // 2.x removed it: its UNIMPLEMENTED comes back as it is.
    let v1alpha2 = "/runtime.v1alpha2.RuntimeService/Version";
    let frame = criguard::client::grpc_frame(b"");
    let answer = raw
        .call(v1alpha2, frame.clone(), &Default::default())
        .await
        .unwrap();
    if containerd_generation() < (2, 0) {
        assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
        let version = VersionResponse::decode(&answer.body[5..]).unwrap();
        assert_eq!(version.runtime_name, "containerd");
    } else {
        let directly = raw_direct
            .call(v1alpha2, frame, &Default::default())
            .await
            .unwrap();
        assert_eq!(
            answer.grpc_status(),
            Some(tonic::Code::Unimplemented as i32)
        );
        assert_eq!(answer.grpc_message(), directly.grpc_message());
    }
    // containerd's own API is on the same socket, and passes too (without policies).
    let answer = raw
        .call(
            CONTAINERD_VERSION,
            criguard::client::grpc_frame(b""),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
}

/// A call of containerd's own API, served on the CRI socket beside CRI.
const CONTAINERD_VERSION: &str = "/containerd.services.version.v1.Version/Version";

/// Images in a fixed order (by id, tags sorted), for comparing two listings.
fn sorted_images(mut list: ListImagesResponse) -> Vec<Image> {
    for image in &mut list.images {
        image.repo_tags.sort();
        image.repo_digests.sort();
    }
    list.images.sort_by(|a, b| a.id.cmp(&b.id));
    list.images
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over HTTP/1.1 on loopback: (status, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", format!("127.0.0.1:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Runs `program args` with `input` on stdin; panics with its output unless it succeeds.
fn run_with_input(program: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (tests/run.sh installs Debian's prometheus package)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd and Debian's prometheus: run tests/run.sh"]
async fn a_real_prometheus_scrapes_the_calls_made_through_criguard() {
    let runtime = runtime_socket();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("criguard.sock");
    let admin_port = free_port();
    // Every layer on, so that each metric the dashboard and the alerts use is exported.
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        "policies/cel-examples.yaml",
        policies.join("cel-examples.yaml"),
    )
    .unwrap();
    let config = dir.path().join("criguard.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}\nruntimeEndpoint: unix://{}\nadminAddress: 127.0.0.1:{admin_port}\nprobeInterval: 1s\naudit: {{path: {}}}\npolicies: {}\nlimits: [{{name: lists, methods: [ListContainers], rate: 1000}}]\ntracing: {{endpoint: '127.0.0.1:{}'}}\n",
            socket.display(),
            runtime.display(),
            dir.path().join("audit.log").display(),
            policies.display(),
            // No collector: nothing is sampled here; the tracing metrics are exported all the same.
            free_port(),
        ),
    )
    .unwrap();
    let criguard = support::Running(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(support::eventually(Duration::from_secs(10), || socket.exists()).await);

    let prometheus_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: criguard\n    static_configs:\n      - targets: ['127.0.0.1:{admin_port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = support::Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (tests/run.sh installs Debian's prometheus package)"),
    );

    let through = lifecycle(&mut clients(&socket).await, "scraped").await;
    assert_eq!(through.len(), 19);

    // The exposition passes promtool, and the dashboard and alert rules name only metrics
    // that criguard exports.
    let (status, scrape) = http_get(admin_port, "/metrics").await;
    assert_eq!(status, 200);
    let lint = run_with_input("promtool", &["check", "metrics"], &scrape);
    assert!(!lint.to_lowercase().contains("error"), "{lint}");
    let exported: std::collections::HashSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let manifests = [
        "deploy/grafana/criguard-dashboard.json",
        "deploy/prometheus/criguard-alerts.yml",
    ];
    for file in manifests {
        let text = std::fs::read_to_string(file).unwrap();
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("criguard_") || w.starts_with("process_"))
        {
            assert!(
                exported.contains(name),
                "{file} uses {name}, which criguard does not export"
            );
        }
    }

    // Prometheus scraped the calls: its query API shows them per method.
    for method in ["RunPodSandbox", "CreateContainer"] {
        let query = format!(
            "/api/v1/query?query=criguard_requests_total%7Bmethod%3D%22{method}%22%2Ccode%3D%22OK%22%7D"
        );
        let mut seen = 0.0;
        let mut last = String::new();
        for _ in 0..100 {
            let (status, body) = http_get(prometheus_port, &query).await;
            last = body.clone();
            if status == 200 {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                if let Some(value) = answer["data"]["result"][0]["value"][1].as_str() {
                    seen = value.parse().unwrap();
                    if seen >= 1.0 {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            seen, 1.0,
            "Prometheus shows the one {method} call made through criguard: {last}"
        );
    }
    drop(criguard);
}

/// The lab registry (tests/e2e/containerd-lab.sh) and the credentials it demands.
const PRIVATE_IMAGE: &str = "127.0.0.1:5055/criguard-e2e/private:1.0";
const REGISTRY_USER: &str = "criguard-e2e";
const REGISTRY_PASSWORD: &str = "e2e-registry-password-7f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd and the lab registry: run tests/run.sh"]
async fn the_audit_trail_records_each_change_with_its_pod_and_no_credential() {
    let runtime = runtime_socket();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let criguard = Criguard::start(&runtime, &["--audit-log", log.to_str().unwrap()]).await;
    let mut c = clients(&criguard.socket).await;
    let registry_log = PathBuf::from(
        std::env::var("CRIGUARD_E2E_LAB").unwrap_or_else(|_| "/var/lib/criguard-e2e".into()),
    )
    .join("log/registry-requests.log");
    let seen_before = std::fs::read_to_string(&registry_log)
        .unwrap_or_default()
        .len();

    let pulled = c
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: PRIVATE_IMAGE.into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: REGISTRY_USER.into(),
                password: REGISTRY_PASSWORD.into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config("audited")),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    // The credentials went through criguard to the registry.
    let requests = std::fs::read_to_string(&registry_log).unwrap();
    assert!(
        requests[seen_before..].contains(&format!("user={REGISTRY_USER}")),
        "{requests}"
    );
    let transcript = lifecycle(&mut c, "audited").await;
    drop(c);
    assert!(criguard.stop().success());

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(REGISTRY_PASSWORD),
        "the password is in the audit log"
    );
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for event in &events {
        println!("{event}");
    }
    // The shipped rules: one event per call that changes something or enters a container.
    let is_read = |m: &str| {
        criguard::proxy::rpc::Method::ALL
            .iter()
            .any(|k| k.as_str() == m && criguard::proxy::rpc::MethodClass::Read.contains(*k))
    };
    let mut expected = vec!["PullImage"];
    expected.extend(transcript.iter().map(|(m, _)| *m).filter(|m| !is_read(m)));
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, expected);
    let me = unsafe { libc::getuid() };
    for event in &events {
        assert_eq!(event["level"], "Request", "{event}");
        assert_eq!(event["code"], "OK", "{event}");
        assert_eq!(event["caller"]["uid"], me, "{event}");
        assert_eq!(event["pod"]["namespace"], "criguard-e2e", "{event}");
        assert_eq!(event["pod"]["name"], "audited", "{event}");
        assert_eq!(event["pod"]["uid"], "e2e-audited-uid", "{event}");
        let method = event["method"].as_str().unwrap();
        if method.contains("Container") || method.starts_with("Exec") {
            assert_eq!(event["container"]["name"], "app", "{event}");
            assert_eq!(event["image"], BUSYBOX, "{event}");
            assert!(
                event["container"]["id"].as_str().unwrap().len() == 64,
                "{event}"
            );
        }
    }
    let pull = &events[0];
    assert_eq!(pull["image"], PRIVATE_IMAGE);
    assert_eq!(pull["request"]["auth"]["username"], REGISTRY_USER);
    assert_eq!(pull["request"]["auth"]["password"], "<redacted>");
    let exec = events.iter().find(|e| e["method"] == "ExecSync").unwrap();
    assert!(exec["request"]["cmd"].is_array(), "{exec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh"]
async fn a_read_only_socket_with_a_rate_limit_in_front_of_containerd() {
    let runtime = runtime_socket();
    let criguard = Criguard::start_configured(&runtime, |dir| {
        format!(
            "listeners:\n  - path: {0}/criguard.sock\n  - path: {0}/readonly.sock\n    role: read-only\n\
             limits:\n  - name: monitor-lists\n    listener: {0}/readonly.sock\n    methods: [ListContainers]\n    rate: 20\n    burst: 10\n",
            dir.display()
        )
    })
    .await;
    let monitor_socket = criguard.socket.with_file_name("readonly.sock");
    let mut monitor = clients(&monitor_socket).await;
    let mut kubelet = clients(&criguard.socket).await;
    clean_up(&mut kubelet, "read-only").await;

    // The monitoring socket reads what containerd has, and changes nothing.
    let listed = monitor
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    let direct = clients(&runtime)
        .await
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    assert_eq!(
        listed.into_inner().containers.len(),
        direct.into_inner().containers.len()
    );
    let refused = monitor
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("read-only")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = monitor
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let filter = PodSandboxFilter {
        label_selector: HashMap::from([("criguard-e2e".to_string(), "read-only".to_string())]),
        ..Default::default()
    };
    let pods = kubelet
        .rt
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.is_empty(),
        "a refused RunPodSandbox left a sandbox: {pods:?}"
    );

    // A storm of lists on the monitoring socket is cut; the kubelet's socket serves them all.
    let storm = (0..100).map(|_| {
        let mut rt = monitor.rt.clone();
        async move { rt.list_containers(ListContainersRequest::default()).await }
    });
    let calm = (0..100).map(|_| {
        let mut rt = kubelet.rt.clone();
        async move { rt.list_containers(ListContainersRequest::default()).await }
    });
    let (storm, calm) = tokio::join!(
        futures_util::future::join_all(storm),
        futures_util::future::join_all(calm)
    );
    let rejected: Vec<_> = storm.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(rejected.len() >= 50, "{} of 100 rejected", rejected.len());
    assert!(
        rejected
            .iter()
            .all(|s| s.code() == tonic::Code::ResourceExhausted)
    );
    assert!(
        calm.iter().all(|r| r.is_ok()),
        "the kubelet's calls are all served"
    );
}

/// The pods labelled `criguard-e2e=NAME` that containerd has.
async fn pods_named(c: &mut Clients, name: &str) -> usize {
    let filter = PodSandboxFilter {
        label_selector: HashMap::from([("criguard-e2e".to_string(), name.to_string())]),
        ..Default::default()
    };
    c.rt.list_pod_sandbox(ListPodSandboxRequest {
        filter: Some(filter),
    })
    .await
    .unwrap()
    .into_inner()
    .items
    .len()
}

fn runtime_default() -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh"]
async fn policies_deny_privileged_host_network_foreign_images_and_exec_in_front_of_containerd() {
    let runtime = runtime_socket();
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/pss-baseline.yaml",
        policies.path().join("pss-baseline.yaml"),
    )
    .unwrap();
    std::fs::write(
        policies.path().join("registries.yaml"),
        "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: registries}\nspec:\n  mode: enforce\n  match: {methods: [CreateContainer, PullImage]}\n  rules:\n    - name: trusted\n      images: {allow: [docker.io/library]}\n",
    )
    .unwrap();
    restrict_exec_in_test_namespace(policies.path());
    let criguard =
        Criguard::start(&runtime, &["--policies", policies.path().to_str().unwrap()]).await;
    let mut c = clients(&criguard.socket).await;
    let mut direct = clients(&runtime).await;
    for name in ["privileged", "host-network", "compliant"] {
        clean_up(&mut direct, name).await;
    }

    // A privileged pod: denied, and containerd has no sandbox for it.
    let mut privileged = pod_config("privileged");
    let security = privileged
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default);
    security.privileged = true;
    security.seccomp = runtime_default();
    let denied =
        c.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(privileged),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "criguard: denied by policy \"pss-baseline\", rule \"privileged\": pod \"criguard-e2e/privileged\" requests privileged mode for the pod"
    );
    assert_eq!(pods_named(&mut direct, "privileged").await, 0);

    // A host-network pod: denied too.
    let mut host_network = pod_config("host-network");
    let security = host_network
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default);
    security.namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    });
    security.seccomp = runtime_default();
    let denied =
        c.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_network),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("rule \"host-namespaces\""),
        "{}",
        denied.message()
    );
    assert_eq!(pods_named(&mut direct, "host-network").await, 0);

    // A compliant pod runs, with a compliant container.
    let mut compliant = pod_config("compliant");
    compliant.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        seccomp: runtime_default(),
        ..Default::default()
    });
    let sandbox = run_pod(&mut c, &compliant).await;
    let mut container = container_config();
    container.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: runtime_default(),
            masked_paths: vec!["/proc/kcore".into(), "/proc/keys".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    // As the kubelet creates containers: the image's id in `image`, the pod spec's name in
    // `user_specified_image`; the name is what the registry rule judges.
    let image_id = busybox_status(&mut c).await.expect("busybox is pulled").id;
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    container.image = Some(ImageSpec {
        image: image_id.clone(),
        user_specified_image: BUSYBOX.into(),
        ..Default::default()
    });
    // From a registry outside the allowlist: denied, though the id is of an image the node has.
    let foreign = with_image(
        &container,
        &image_id,
        "registry.k8s.io/e2e-test-images/busybox:1.29-4",
    );
    assert_create_denied(
        &mut c,
        &sandbox,
        foreign,
        &compliant,
        "outside the allowlist",
    )
    .await;
    // containerd takes hex digits it has no image name for as a short image id: the name
    // `<12 hex>` is the busybox image, not docker.io/library/<12 hex>. criguard refuses it.
    let short_id = image_id.trim_start_matches("sha256:")[..12].to_string();
    let found = support::image_status(&mut direct.img, &short_id)
        .await
        .expect("containerd resolves a short image id");
    assert_eq!(found.id, image_id);
    let by_short_id = with_image(&container, &short_id, "");
    let why = "may take for an image id";
    assert_create_denied(&mut c, &sandbox, by_short_id, &compliant, why).await;
    // busybox's id under the name of another image of an allowed repository: containerd would
    // run busybox; criguard knows the id's names from the ImageStatus answer above.
    let disguised = with_image(&container, &image_id, "docker.io/library/nginx:1.27");
    let why = "is not docker.io/library/nginx:1.27";
    assert_create_denied(&mut c, &sandbox, disguised, &compliant, why).await;
    // Docker Hub under its legacy name: containerd runs index.docker.io/library/busybox:1.36
    // as docker.io/library/busybox:1.36; criguard reads it so too, and the allowlist of
    // docker.io/library admits it. Under another repository it is refused.
    let legacy = with_image(&container, "index.docker.io/library/busybox:1.36", "");
    let legacy =
        c.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(legacy),
            sandbox_config: Some(compliant.clone()),
        })
        .await
        .expect("index.docker.io/library/busybox is docker.io/library/busybox")
        .into_inner()
        .container_id;
    direct
        .rt
        .remove_container(RemoveContainerRequest {
            container_id: legacy,
        })
        .await
        .unwrap();
    let foreign = with_image(&container, "index.docker.io/evil/app:1", "");
    assert_create_denied(&mut c, &sandbox, foreign, &compliant, "docker.io/evil/app").await;
    let id = create_and_start(&mut c, &sandbox, compliant, container).await;

    // Exec into the protected namespace by anyone but the kubelet: denied.
    let denied =
        c.rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "in".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("restrict-exec"),
        "{}",
        denied.message()
    );
    // containerd's own API (what `ctr` speaks) is refused while policies are in force.
    let mut raw = criguard::client::RawClient::connect(&criguard.socket)
        .await
        .unwrap();
    let answer = raw
        .call(
            CONTAINERD_VERSION,
            criguard::client::grpc_frame(b""),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32)
    );
    // As crictl users type it: the 13 characters `crictl ps` shows. containerd resolves a
    // unique prefix (the exec runs, directly); through criguard it is the same container, denied.
    let short = || ExecSyncRequest {
        container_id: id[..13].into(),
        cmd: vec!["echo".into(), "in".into()],
        timeout: 5,
    };
    let ran = direct.rt.exec_sync(short()).await.unwrap().into_inner();
    assert_eq!(ran.stdout, b"in\n");
    let denied = c.rt.exec_sync(short()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("restrict-exec"),
        "{}",
        denied.message()
    );
    // One ExecSync naming a container of no protected pod, then an empty unknown group
    // (field 19), then the protected container: containerd skips the group and, the field given
    // twice, runs the command in the last one. criguard reads it the same way and refuses it.
    let mut crafted = ExecSyncRequest {
        container_id: "0000000000000000000000000000000000000000000000000000000000000000".into(),
        ..Default::default()
    }
    .encode_to_vec();
    crafted.extend([0x9b, 0x01, 0x9c, 0x01]);
    crafted.extend(
        ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["touch".into(), "/tmp/criguard-group-exec".into()],
            timeout: 5,
        }
        .encode_to_vec(),
    );
    let answer = raw
        .call(
            "/runtime.v1.RuntimeService/ExecSync",
            criguard::client::grpc_frame(&crafted),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32),
        "{:?}",
        answer.grpc_message()
    );
    let ran = direct
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "test".into(),
                "-e".into(),
                "/tmp/criguard-group-exec".into(),
            ],
            timeout: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ran.exit_code, 1, "the crafted command never ran");
    // The lifecycle calls still pass.
    remove_container(&mut c, id).await;
    remove_pod(&mut c, sandbox).await;
}

/// An image volume (Kubernetes' `image` volume source) gives the container the whole
/// filesystem of the image it mounts: containerd 2.x mounts it. An allowed container image
/// with a volume of an image from outside the allowlist is refused; without the volume it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh"]
async fn an_image_volume_from_outside_the_allowlist_is_refused_in_front_of_containerd() {
    if containerd_generation() < (2, 0) {
        eprintln!(
            "containerd {:?} has no image volumes: nothing to judge",
            containerd_generation()
        );
        return;
    }
    let runtime = runtime_socket();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("registries.yaml"),
        "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: registries}\nspec:\n  mode: enforce\n  match: {methods: [CreateContainer, PullImage]}\n  rules:\n    - name: trusted\n      images: {allow: [docker.io/library]}\n",
    )
    .unwrap();
    let criguard =
        Criguard::start(&runtime, &["--policies", policies.path().to_str().unwrap()]).await;
    let mut c = clients(&criguard.socket).await;
    let mut direct = clients(&runtime).await;
    clean_up(&mut direct, "image-volume").await;
    let pod = pod_config("image-volume");
    let sandbox = run_pod(&mut c, &pod).await;
    let mut with_volume = container_config();
    with_volume.mounts.push(Mount {
        container_path: "/tools".into(),
        image: Some(ImageSpec {
            image: FOREIGN_IMAGE.into(),
            ..Default::default()
        }),
        readonly: true,
        ..Default::default()
    });
    let create = |config: &ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: sandbox.clone(),
        config: Some(config.clone()),
        sandbox_config: Some(pod.clone()),
    };
    // Directly, containerd creates it, and the container holds the foreign image's files.
    let id = direct
        .rt
        .create_container(create(&with_volume))
        .await
        .expect("containerd 2.x mounts image volumes")
        .into_inner()
        .container_id;
    direct
        .rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let ran = direct
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["test".into(), "-x".into(), "/tools/bin/busybox".into()],
            timeout: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ran.exit_code, 0, "the image volume is mounted at /tools");
    direct
        .rt
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    // Through criguard: refused, naming the volume; containerd made nothing.
    let before = direct
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len();
    let denied =
        c.rt.create_container(create(&with_volume))
            .await
            .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        format!(
            "criguard: denied by policy \"registries\", rule \"trusted\": container \"app\" in pod \"criguard-e2e/image-volume\" mounts an image volume at /tools (mounts.image): uses image {FOREIGN_IMAGE} from a registry outside the allowlist (quay.io/criguard-e2e/tools)"
        )
    );
    let after = direct
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len();
    assert_eq!(after, before);
    // A volume of an allowed name the node does not have: containerd's own error, unchanged.
    let mut missing = container_config();
    missing.mounts.push(Mount {
        container_path: "/data".into(),
        image: Some(ImageSpec {
            image: "docker.io/library/not-on-this-node:1.0".into(),
            ..Default::default()
        }),
        readonly: true,
        ..Default::default()
    });
    let through = c.rt.create_container(create(&missing)).await.unwrap_err();
    let directly = direct
        .rt
        .create_container(create(&missing))
        .await
        .unwrap_err();
    assert_eq!(
        (through.code(), through.message()),
        (directly.code(), directly.message())
    );
    assert!(
        !through.message().contains("criguard"),
        "{}",
        through.message()
    );
    // The same container without the volume passes.
    let id =
        c.rt.create_container(create(&container_config()))
            .await
            .unwrap()
            .into_inner()
            .container_id;
    c.rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    remove_pod(&mut c, sandbox).await;
}

/// A container made on containerd's own socket before criguard started: criguard reads it
/// from containerd's lists (by StreamContainers where the runtime has it; containerd 1.6 to
/// 2.1 answer UNIMPLEMENTED, so by ListContainers), and an exec naming only its id is judged
/// with its pod's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh"]
async fn containers_made_before_criguard_started_are_known_by_their_pod() {
    let runtime = runtime_socket();
    let mut direct = clients(&runtime).await;
    clean_up(&mut direct, "made-before").await;
    let pod = pod_config("made-before");
    let sandbox = run_pod(&mut direct, &pod).await;
    let id = create_and_start(&mut direct, &sandbox, pod, container_config()).await;

    let policies = tempfile::tempdir().unwrap();
    restrict_exec_in_test_namespace(policies.path());
    let criguard =
        Criguard::start(&runtime, &["--policies", policies.path().to_str().unwrap()]).await;
    let mut c = clients(&criguard.socket).await;
    let exec = || ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        timeout: 5,
    };
    // The lists are read as criguard starts: retried briefly, the pod is then known.
    let mut denied = None;
    for _ in 0..50 {
        match c.rt.exec_sync(exec()).await {
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                denied = Some(status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let denied = denied.expect("the exec is judged with the container's pod");
    assert!(
        denied.message().contains("criguard-e2e/made-before"),
        "{}",
        denied.message()
    );
    remove_container(&mut direct, id).await;
    remove_pod(&mut direct, sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real containerd: run tests/run.sh"]
async fn restarts_in_front_of_containerd_under_load_fail_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("criguard.sock");
    support::restart::restart_under_load(&socket, &runtime_socket(), 2)
        .await
        .assert_no_gap();
}
