//! criguard driven by the client stacks a node really runs — grpc-go dialled as kubelets
//! 1.24–1.30 and 1.31+ dial, grpc C-core from Debian and from PyPI, one of them sending the
//! socket path as grpc-java does — each with its own transport, reconnect and retry. A Rust
//! client proves nothing about them.
//!
//! The clients are installed and built by tests/clients/install.sh (tests/run.sh calls it).
//! Tests named `containerd_*` need the lab's containerd (`CRIGUARD_E2E_ENDPOINT`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use criguard::cri::*;
use prost::Message;
use serde_json::json;
use support::clients::{Client, Reply, Stack, reply};
use support::e2e::{self, BUSYBOX};
use support::*;

const INSTALL: &str = "real client stacks: tests/clients/install.sh, or tests/run.sh";
const RUNTIME: &str = "/runtime.v1.RuntimeService";
const IMAGES: &str = "/runtime.v1.ImageService";

fn method(service: &str, name: &str) -> String {
    format!("{service}/{name}")
}

/// criguard (the binary) on `sockets`, with its admin server on a socket of its own.
async fn start_criguard(sockets: &Sockets) -> (Running, PathBuf) {
    let admin = sockets.dir.path().join("admin.sock");
    let mut command = serve_command(sockets);
    command
        .arg("--admin-address")
        .arg(&admin)
        .stderr(Stdio::null());
    (
        Running(spawn_serving(command, sockets, &admin).await),
        admin,
    )
}

async fn rewritten_connections(admin: &Path) -> f64 {
    let (_, text) = admin_get(admin, "GET", "/metrics").await;
    value(&samples(&text), "criguard_caller_authority_rewrites_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks"]
async fn every_client_stack_gets_the_runtimes_answers_through_criguard() {
    let _ = INSTALL;
    let sockets = Sockets::new();
    let _runtime =
        start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::default()).await;
    let (_criguard, admin) = start_criguard(&sockets).await;
    // The fake runtime's own server (h2, like criguard's) takes only valid authorities:
    // the answers to compare with come from a kubelet 1.31+ connection made directly.
    let mut direct = Client::spawn(Stack::GoKubelet, &sockets.runtime());
    let version = direct
        .call(&method(RUNTIME, "Version"), &VersionRequest::default())
        .await;
    assert_eq!(version.code, 0, "{version:?}");
    let listed = direct
        .call(
            &method(RUNTIME, "ListContainers"),
            &ListContainersRequest::default(),
        )
        .await;
    let unknown = direct
        .call(&method(RUNTIME, "NoSuchMethod"), &VersionRequest::default())
        .await;
    assert_eq!(
        unknown.code, 12,
        "UNIMPLEMENTED from the runtime: {unknown:?}"
    );

    for stack in Stack::ALL {
        let mut client = Client::spawn(stack, &sockets.criguard());
        // Twice on one connection: the first header block decides how it is read.
        for _ in 0..2 {
            let through = client
                .call(&method(RUNTIME, "Version"), &VersionRequest::default())
                .await;
            assert_eq!(through, version, "{stack:?}: Version");
        }
        let through = client
            .call(
                &method(RUNTIME, "ListContainers"),
                &ListContainersRequest::default(),
            )
            .await;
        assert_eq!(through, listed, "{stack:?}: ListContainers");
        let through = client
            .call(&method(RUNTIME, "NoSuchMethod"), &VersionRequest::default())
            .await;
        assert_eq!(
            through, unknown,
            "{stack:?}: a method criguard does not know"
        );
    }
    // kubelets <= 1.30, PyPI's grpcio and the path authority: three connections rewritten.
    assert_eq!(rewritten_connections(&admin).await, 3.0);
}

/// Deadlines, metadata and cancellation from the kubelet's client stack, as it dials up to
/// 1.30: the runtime gets the caller's `grpc-timeout` and `traceparent`, the caller gets
/// DEADLINE_EXCEEDED on time, and the runtime's call is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks"]
async fn grpc_go_deadlines_metadata_and_cancellation_pass_through() {
    let sockets = Sockets::new();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |r| Answer {
        hang: r.path.ends_with("/ExecSync"),
        ..Answer::ok(b"")
    })
    .await;
    let _criguard = Criguard::start(&sockets).await;
    let mut client = Client::spawn(Stack::GoKubeletLegacy, &sockets.criguard());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let started = Instant::now();
    let exec = client
        .call_with(
            &method(RUNTIME, "ExecSync"),
            &ExecSyncRequest {
                container_id: "c1".into(),
                cmd: vec!["sleep".into(), "60".into()],
                timeout: 0,
            },
            Duration::from_millis(500),
            json!({"traceparent": traceparent}),
        )
        .await;
    assert_eq!(exec.code, 4, "DEADLINE_EXCEEDED: {exec:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "on time");
    let seen = runtime.requests().pop().unwrap();
    assert_eq!(seen.path, method(RUNTIME, "ExecSync"));
    assert_eq!(seen.headers["traceparent"], traceparent);
    let timeout = seen.headers["grpc-timeout"].to_str().unwrap();
    assert!(
        timeout.ends_with('m') || timeout.ends_with('u'),
        "{timeout}"
    );
    assert!(
        eventually(Duration::from_secs(5), || runtime
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the runtime's call is cancelled"
    );
    let version = client
        .call(&method(RUNTIME, "Version"), &VersionRequest::default())
        .await;
    assert_eq!(version.code, 0, "the connection serves on: {version:?}");
}

/// GetContainerEvents, the stream the kubelet keeps open for hours, through grpc-go and
/// C-core: every event arrives as the runtime sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks"]
async fn server_streams_reach_every_client_stack() {
    let sockets = Sockets::new();
    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = feeds.clone();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), move |_| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        keep.lock().unwrap().push(tx);
        Answer::stream(rx)
    })
    .await;
    let _criguard = Criguard::start(&sockets).await;
    for (n, stack) in [Stack::GoKubeletLegacy, Stack::GrpcioPypi]
        .into_iter()
        .enumerate()
    {
        let mut client = Client::spawn(stack, &sockets.criguard());
        client
            .start_stream(
                &method(RUNTIME, "GetContainerEvents"),
                &GetEventsRequest::default(),
                2,
                Duration::from_secs(20),
            )
            .await;
        assert!(
            eventually(Duration::from_secs(10), || feeds.lock().unwrap().len() > n).await,
            "{stack:?}: the stream reached the runtime"
        );
        let events: Vec<_> = (0..2)
            .map(|i| ContainerEventResponse {
                container_id: format!("c{i}"),
                container_event_type: i,
                created_at: 1_700_000_000 + i64::from(i),
                ..Default::default()
            })
            .collect();
        let feed = feeds.lock().unwrap()[n].clone();
        for event in &events {
            feed.send(grpc_frame(&event.encode_to_vec())).await.unwrap();
        }
        let answer = reply(client.answer().await);
        assert_eq!(answer.code, 0, "{stack:?}: {answer:?}");
        let got: Vec<_> = answer
            .responses
            .iter()
            .map(|m| ContainerEventResponse::decode(m.clone()).unwrap())
            .collect();
        assert_eq!(got, events, "{stack:?}");
    }
}

/// An agent's keepalive pings (grpc-go's shortest client interval, 10 s) never get its idle
/// connection closed: after 25 s of pings the same connection still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks"]
async fn keepalive_pings_keep_an_idle_grpc_go_connection_open() {
    let sockets = Sockets::new();
    let _runtime =
        start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::default()).await;
    let (_criguard, admin) = start_criguard(&sockets).await;
    let mut client = Client::spawn_with(
        Stack::GoKubeletLegacy,
        &sockets.criguard(),
        &["-keepalive", "10s"],
    );
    let version = client
        .call(&method(RUNTIME, "Version"), &VersionRequest::default())
        .await;
    assert_eq!(version.code, 0);
    client.idle(Duration::from_secs(25)).await;
    let version = client
        .call(&method(RUNTIME, "Version"), &VersionRequest::default())
        .await;
    assert_eq!(version.code, 0, "{version:?}");
    // A new connection would have been rewritten again.
    assert_eq!(
        rewritten_connections(&admin).await,
        1.0,
        "one connection all along"
    );
}

/// criguard restarted three times, systemd-style (the listening socket held by a parent,
/// SIGTERM, exit, start), under 8 callers on one grpc-go connection dialled as kubelets up to
/// 1.30 dial, and under C-core: not one call fails, none waits longer than a restart + 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks"]
async fn restarts_under_load_fail_no_call_of_grpc_go_or_c_core() {
    for stack in [Stack::GoKubeletLegacy, Stack::GrpcioPypi] {
        let sockets = Sockets::new();
        let _runtime =
            start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::default()).await;
        restart_under_real_load(stack, &sockets.criguard(), &sockets.runtime()).await;
    }
}

/// Restarts criguard `RESTARTS` times in front of `runtime` while `stack` calls
/// ListContainers from 8 callers on one connection, and checks what they saw.
async fn restart_under_real_load(stack: Stack, socket: &Path, runtime: &Path) {
    const RESTARTS: usize = 3;
    let runtime = format!("unix://{}", runtime.display());
    let listen = socket.display().to_string();
    let args = [
        "--listen",
        listen.as_str(),
        "--runtime-endpoint",
        runtime.as_str(),
        "--admin-address",
        "off",
    ];
    let held = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let log = socket.with_extension("log");
    let mut criguard = Running(restart::spawn_activated(&held, &args, &log));
    let mut client = Client::spawn(stack, socket);
    let warm = client
        .call(
            &method(RUNTIME, "ListContainers"),
            &ListContainersRequest::default(),
        )
        .await;
    assert_eq!(warm.code, 0, "{stack:?}: {warm:?}");
    let run_for = Duration::from_millis(1000 * (RESTARTS as u64 + 2));
    client
        .send(json!({
            "op": "load",
            "method": method(RUNTIME, "ListContainers"),
            "request": "",
            "callers": 8,
            "duration_ms": run_for.as_millis() as u64,
            "timeout_ms": 10_000,
        }))
        .await;
    let mut longest = Duration::ZERO;
    for _ in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let restart = Instant::now();
        restart::kill(&criguard.0, "TERM");
        let status = restart::wait_exit(&mut criguard.0, Duration::from_secs(20)).await;
        assert!(status.success(), "criguard exited with {status:?}");
        criguard = Running(restart::spawn_activated(&held, &args, &log));
        let mut probe = RawClient::connect(socket).await.unwrap();
        assert_serving(&mut probe).await;
        longest = longest.max(restart.elapsed());
    }
    let answer = client.answer().await;
    let log = std::fs::read_to_string(&log).unwrap();
    let ok = answer["ok"].as_u64().unwrap_or(0);
    let failed = answer["failed"].as_u64().unwrap_or(0);
    let slowest = Duration::from_secs_f64(answer["max_ms"].as_f64().unwrap_or(0.0) / 1000.0);
    println!(
        "{stack:?}: {ok} calls, {failed} failed, slowest {slowest:?}, longest restart {longest:?}"
    );
    assert_eq!(
        failed,
        0,
        "{stack:?}: {failed} of {} calls failed across {RESTARTS} restarts: {}\n{log}",
        ok + failed,
        answer["errors"]
    );
    assert!(ok > 200, "{stack:?}: a steady stream of calls ({ok})");
    assert!(
        slowest <= longest + Duration::from_millis(250),
        "{stack:?}: slowest call {slowest:?}, longest restart {longest:?}"
    );
    assert_eq!(
        log.matches("criguard serving").count(),
        RESTARTS + 1,
        "one criguard after the other served the one socket"
    );
}

// ---- against the lab's containerd ----

fn containerd_socket() -> PathBuf {
    let endpoint = std::env::var("CRIGUARD_E2E_ENDPOINT")
        .expect("CRIGUARD_E2E_ENDPOINT names the containerd socket (tests/run.sh sets it)");
    PathBuf::from(endpoint.trim_start_matches("unix://"))
}

/// criguard (the binary) in front of the lab's containerd, on a socket in `dir`.
async fn criguard_before_containerd(dir: &Path) -> (Running, PathBuf) {
    criguard_before_containerd_with(dir, &[]).await
}

/// With more flags, e.g. `--config FILE`.
async fn criguard_before_containerd_with(dir: &Path, args: &[&str]) -> (Running, PathBuf) {
    let socket = dir.join("criguard.sock");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_criguard"))
        .arg("serve")
        .args(args)
        .arg("--listen")
        .arg(&socket)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", containerd_socket().display()))
        .args(["--admin-address", "off"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    assert!(up, "criguard did not start");
    (Running(child), socket)
}

/// What a crictl-style lifecycle showed, with the ids taken out.
#[derive(Debug, PartialEq, Eq)]
struct Lifecycle {
    version: Reply,
    image_found: bool,
    exec_stdout: Vec<u8>,
    exec_code: i32,
    states: Vec<i32>,
    missing_container: (i64, bool),
}

/// `crictl runp`, `create`, `start`, `exec`, `stop`, `rm`, `rmp` as calls of `client`.
async fn lifecycle(client: &mut Client, name: &str) -> Lifecycle {
    let version = client
        .call(&method(RUNTIME, "Version"), &VersionRequest::default())
        .await;
    let image = client
        .call(
            &method(IMAGES, "ImageStatus"),
            &ImageStatusRequest {
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                verbose: false,
            },
        )
        .await;
    let image_found = ImageStatusResponse::decode(image.response.clone())
        .unwrap()
        .image
        .is_some();
    let pod = e2e::pod_config(name);
    let run = client
        .call(
            &method(RUNTIME, "RunPodSandbox"),
            &RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            },
        )
        .await;
    assert_eq!(run.code, 0, "{:?} RunPodSandbox: {run:?}", client.stack);
    let sandbox = RunPodSandboxResponse::decode(run.response)
        .unwrap()
        .pod_sandbox_id;
    let create = client
        .call(
            &method(RUNTIME, "CreateContainer"),
            &CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(e2e::container_config()),
                sandbox_config: Some(pod),
            },
        )
        .await;
    assert_eq!(
        create.code, 0,
        "{:?} CreateContainer: {create:?}",
        client.stack
    );
    let container = CreateContainerResponse::decode(create.response)
        .unwrap()
        .container_id;
    let id = ContainerStatusRequest {
        container_id: container.clone(),
        verbose: false,
    };
    let mut states = Vec::new();
    let state = |reply: Reply| {
        ContainerStatusResponse::decode(reply.response)
            .unwrap()
            .status
            .map_or(-1, |s| s.state)
    };
    states.push(state(
        client.call(&method(RUNTIME, "ContainerStatus"), &id).await,
    ));
    let start = client
        .call(
            &method(RUNTIME, "StartContainer"),
            &StartContainerRequest {
                container_id: container.clone(),
            },
        )
        .await;
    assert_eq!(start.code, 0, "{start:?}");
    states.push(state(
        client.call(&method(RUNTIME, "ContainerStatus"), &id).await,
    ));
    let exec = client
        .call(
            &method(RUNTIME, "ExecSync"),
            &ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["sh".into(), "-c".into(), "echo hello from $0".into()],
                timeout: 10,
            },
        )
        .await;
    assert_eq!(exec.code, 0, "{exec:?}");
    let exec = ExecSyncResponse::decode(exec.response).unwrap();
    let stop = client
        .call(
            &method(RUNTIME, "StopContainer"),
            &StopContainerRequest {
                container_id: container.clone(),
                timeout: 10,
            },
        )
        .await;
    assert_eq!(stop.code, 0, "{stop:?}");
    states.push(state(
        client.call(&method(RUNTIME, "ContainerStatus"), &id).await,
    ));
    for (name, request) in [
        (
            "RemoveContainer",
            RemoveContainerRequest {
                container_id: container.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "StopPodSandbox",
            StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "RemovePodSandbox",
            RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            }
            .encode_to_vec(),
        ),
    ] {
        let done = client
            .call(&method(RUNTIME, name), &RawMessage(request))
            .await;
        assert_eq!(done.code, 0, "{name}: {done:?}");
    }
    let gone = client.call(&method(RUNTIME, "ContainerStatus"), &id).await;
    Lifecycle {
        version,
        image_found,
        exec_stdout: exec.stdout,
        exec_code: exec.exit_code,
        states,
        missing_container: (gone.code, gone.message.contains(&container[..12])),
    }
}

/// A message already encoded.
#[derive(Clone, PartialEq)]
struct RawMessage(Vec<u8>);

impl std::fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _: u32,
        _: prost::encoding::WireType,
        _: &mut impl bytes::Buf,
        _: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        unreachable!("only sent")
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The crictl-style lifecycle through criguard, by every client stack, gives what the same
/// stack gets from containerd directly (containerd, a grpc-go server, takes any authority).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks and the lab's containerd"]
async fn containerd_lifecycle_by_every_client_stack_matches_direct() {
    let dir = tempfile::tempdir().unwrap();
    let (_criguard, socket) = criguard_before_containerd(dir.path()).await;
    for (n, stack) in Stack::ALL.into_iter().enumerate() {
        let mut direct = Client::spawn(stack, &containerd_socket());
        let expected = lifecycle(&mut direct, &format!("clients-direct-{n}")).await;
        assert_eq!(expected.exec_stdout, b"hello from sh\n");
        assert_eq!(expected.states, vec![0, 1, 2], "created, running, exited");
        assert!(expected.image_found);
        let mut through = Client::spawn(stack, &socket);
        let seen = lifecycle(&mut through, &format!("clients-criguard-{n}")).await;
        assert_eq!(seen, expected, "{stack:?}");
    }
}

/// The kubelet 1.36's own CRI client (k8s.io/cri-client 0.36, `:authority: localhost`, the
/// CRIListStreaming calls on) runs a pod's lifecycle through criguard exactly as directly. The
/// runtimes of the lab do not implement the `Stream*` lists: their UNIMPLEMENTED must reach
/// the client unchanged, which then lists with the unary calls, as it says on its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks and the lab's containerd"]
async fn containerd_kubelet_1_36_client_lifecycle_matches_direct() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients/kubelet-cri-client");
    assert!(client.exists(), "{INSTALL}");
    let dir = tempfile::tempdir().unwrap();
    let (_criguard, socket) = criguard_before_containerd(dir.path()).await;
    let run = |socket: &Path, name: &str| {
        let out = std::process::Command::new(&client)
            .arg("-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["-name", name, "-image", BUSYBOX])
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}{stderr}");
        (stdout, stderr)
    };
    let (direct, direct_log) = run(&containerd_socket(), "kubelet-136-direct");
    let (through, through_log) = run(&socket, "kubelet-136-criguard");
    println!("{through}");
    assert_eq!(through, direct);
    assert!(
        through.contains("ExecSync \"hello from kubelet 1.36\\n\""),
        "{through}"
    );
    assert_eq!(through.lines().count(), 15, "{through}");
    for fallback in [
        "StreamPodSandboxes not implemented, falling back to ListPodSandbox",
        "StreamImages not implemented, falling back to ListImages",
    ] {
        assert!(direct_log.contains(fallback), "{direct_log}");
        assert!(through_log.contains(fallback), "{through_log}");
    }
}

/// A kubelet with tracing on (1.36's CRI client, an SDK tracer provider exporting over
/// OTLP/gRPC), through criguard with tracing on, to containerd 2.x with tracing on, all three
/// exporting to one collector: one trace holds, for each CRI call, the kubelet's span,
/// criguard's beneath it (with the call's pod) and containerd's beneath criguard's. containerd
/// 1.x turns tracing on only in its configuration file; the lab does it for 2.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks and the lab's containerd"]
async fn containerd_one_trace_holds_the_kubelets_span_criguards_and_containerds() {
    if e2e::containerd_generation().0 < 2 {
        println!("containerd 1.x: the lab exports no spans");
        return;
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients/kubelet-cri-client");
    assert!(client.exists(), "{INSTALL}");
    let collector = support::otlp::Collector::start_on(e2e::OTLP).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("criguard.yaml");
    std::fs::write(
        &config,
        // With the audit trail, criguard knows the pod of calls that name only an id.
        format!(
            "tracing:\n  endpoint: {}\naudit:\n  path: {}\n",
            collector.endpoint(),
            dir.path().join("audit.log").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (_criguard, socket) =
        criguard_before_containerd_with(dir.path(), &["--config", &config]).await;
    let name = "kubelet-136-traced";
    let out = tokio::process::Command::new(&client)
        .arg("-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "-name",
            name,
            "-image",
            BUSYBOX,
            "-trace-endpoint",
            e2e::OTLP,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .unwrap_or_else(|| panic!("no trace id: {stderr}"))
        .to_string();
    let run_pod = "runtime.v1.RuntimeService/RunPodSandbox";
    let spans = collector
        .trace(&trace, Duration::from_secs(30), |spans| {
            ["kubelet", "criguard", "containerd"].iter().all(|service| {
                spans
                    .iter()
                    .any(|s| s.service == *service && s.name.contains("RemovePodSandbox"))
            })
        })
        .await;
    let by = |service: &str, name: &str, parent: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name.contains(name) && s.parent_span_id == parent)
            .unwrap_or_else(|| panic!("no {service} span {name} beneath {parent}: {spans:#?}"))
    };
    let sync_pod = by("kubelet", "syncPod", "");
    for call in [
        run_pod,
        "runtime.v1.RuntimeService/CreateContainer",
        "runtime.v1.RuntimeService/ExecSync",
        "runtime.v1.RuntimeService/RemovePodSandbox",
    ] {
        let kubelet = by("kubelet", call, &sync_pod.span_id);
        let criguard = by("criguard", call, &kubelet.span_id);
        let containerd = by(
            "containerd",
            call.rsplit('/').next().unwrap(),
            &criguard.span_id,
        );
        println!(
            "{call}: kubelet {} → criguard {} → containerd {} ({})",
            kubelet.span_id, criguard.span_id, containerd.span_id, containerd.name
        );
        assert_eq!(
            criguard.attribute("k8s.pod.name"),
            Some(name),
            "{criguard:?}"
        );
        assert_eq!(
            criguard.attribute("k8s.namespace.name"),
            Some("criguard-e2e")
        );
        assert_eq!(criguard.attribute("rpc.grpc.status_code"), Some("0"));
        assert_eq!(criguard.attribute("criguard.decision"), Some("allowed"));
    }
    let kubelet = by("kubelet", run_pod, &sync_pod.span_id);
    println!(
        "{}",
        support::otlp::tree(
            &spans,
            kubelet,
            &[
                "k8s.namespace.name",
                "k8s.pod.name",
                "criguard.caller.exe",
                "criguard.listener.role",
                "criguard.decision",
                "criguard.audit.level",
                "rpc.grpc.status_code"
            ]
        )
    );
}

/// The kubelet's GetContainerEvents stream, through criguard to grpc-go dialled as kubelets up
/// to 1.30 dial, ends as it does directly: containerd 1.6 answers UNIMPLEMENTED (the kubelet
/// then falls back to relisting), newer ones stream the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks and the lab's containerd"]
async fn containerd_events_stream_ends_as_directly() {
    let dir = tempfile::tempdir().unwrap();
    let (_criguard, socket) = criguard_before_containerd(dir.path()).await;
    let mut answers = Vec::new();
    for path in [containerd_socket(), socket] {
        let mut watcher = Client::spawn(Stack::GoKubeletLegacy, &path);
        watcher
            .start_stream(
                &method(RUNTIME, "GetContainerEvents"),
                &GetEventsRequest::default(),
                1,
                Duration::from_secs(2),
            )
            .await;
        let mut kubelet = Client::spawn(Stack::GoKubeletLegacy, &path);
        lifecycle(&mut kubelet, &format!("clients-events-{}", answers.len())).await;
        let events = reply(watcher.answer().await);
        answers.push((events.code, events.message, events.responses.len()));
    }
    assert_eq!(answers[1], answers[0]);
}

/// containerd's own client, `ctr`, through criguard's socket (no policies in force): the same
/// answers as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the lab's containerd (and its ctr)"]
async fn containerd_ctr_works_through_criguard() {
    let dir = tempfile::tempdir().unwrap();
    let (_criguard, socket) = criguard_before_containerd(dir.path()).await;
    let ctr = |address: &Path, args: &[&str]| {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(address)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        &["version"][..],
        &["--namespace", "k8s.io", "images", "list", "--quiet"],
    ] {
        let direct = ctr(&containerd_socket(), args);
        assert!(!direct.is_empty());
        assert_eq!(ctr(&socket, args), direct, "ctr {args:?}");
    }
}

/// The restart under load, in front of containerd, with grpc-go dialled as kubelets up to
/// 1.30 dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real client stacks and the lab's containerd"]
async fn containerd_restarts_under_grpc_go_load_fail_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("criguard.sock");
    restart_under_real_load(Stack::GoKubeletLegacy, &socket, &containerd_socket()).await;
}
