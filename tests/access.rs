//! Who may call what, and how often, through real sockets: a read-only socket for monitoring
//! agents, callers refused by uid, and rate limits that keep a storm on one socket away from
//! the kubelet's calls on another.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criguard::client;
use criguard::config::Overrides;
use criguard::cri::*;
use http::HeaderMap;
use prost::Message;
use support::*;

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

struct Node {
    sockets: Sockets,
    runtime: RecordingRuntime,
    _criguard: Criguard,
    kubelet: PathBuf,
    monitor: PathBuf,
}

/// criguard with the kubelet's socket (role full, root only) and a monitoring socket
/// (read-only, open to all, lists limited to 20/s with a burst of 10), in front of a runtime
/// that answers every call with an empty OK.
async fn node(limit_action: &str) -> Node {
    let sockets = Sockets::new();
    // Other users must reach the sockets in the test directory.
    std::fs::set_permissions(sockets.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let kubelet = sockets.dir.path().join("criguard.sock");
    let monitor = sockets.dir.path().join("readonly.sock");
    let config = format!(
        r#"
listeners:
  - path: {kubelet}
    role: full
    mode: "0666"
    allowUids: [0]
  - path: {monitor}
    role: read-only
    mode: "0666"
limits:
  - name: monitor-lists
    listener: {monitor}
    methods: [ListContainers, ListPodSandbox, ListContainerStats]
    rate: 20
    burst: 10
    action: {limit_action}
"#,
        kubelet = kubelet.display(),
        monitor = monitor.display(),
    );
    let criguard = Criguard::start_with_config(&sockets, Some(&config), Overrides::default()).await;
    Node {
        sockets,
        runtime,
        _criguard: criguard,
        kubelet,
        monitor,
    }
}

fn reached(runtime: &RecordingRuntime, method: &str) -> usize {
    runtime
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/{method}")))
        .count()
}

#[tokio::test]
async fn the_read_only_socket_lists_but_cannot_create_or_exec() {
    let node = node("reject").await;
    let mut monitor = client::runtime(client::channel(&node.monitor).await.unwrap());
    monitor
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    monitor.version(VersionRequest::default()).await.unwrap();
    let create = monitor
        .create_container(CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(create.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        create.message(),
        format!(
            "criguard: role \"read-only\" of {} does not allow CreateContainer",
            node.monitor.display()
        )
    );
    let exec = monitor
        .exec_sync(ExecSyncRequest::default())
        .await
        .unwrap_err();
    assert_eq!(exec.code(), tonic::Code::PermissionDenied);
    assert!(exec.message().contains("does not allow ExecSync"));
    // Methods criguard's proto does not know change nothing only if proven: refused too.
    let mut raw = RawClient::connect(&node.monitor).await.unwrap();
    let unknown = raw
        .call(
            "/runtime.v1.RuntimeService/NotYetInTheCri",
            grpc_frame(b""),
            &HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        unknown.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32)
    );
    // Nothing refused reached the runtime; the kubelet's socket may do it all.
    assert_eq!(reached(&node.runtime, "ListContainers"), 1);
    assert_eq!(reached(&node.runtime, "CreateContainer"), 0);
    assert_eq!(reached(&node.runtime, "ExecSync"), 0);
    assert_eq!(reached(&node.runtime, "NotYetInTheCri"), 0);
    let mut kubelet = client::runtime(client::channel(&node.kubelet).await.unwrap());
    kubelet
        .create_container(CreateContainerRequest::default())
        .await
        .unwrap();
    assert_eq!(reached(&node.runtime, "CreateContainer"), 1);
}

/// Connects to `path` as `uid`/`gid`: a thread of this process changes its own credentials
/// (setresgid/setresuid act on the calling thread only), connects, and ends.
fn connect_as(uid: u32, gid: u32, path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: raw syscalls on this thread only; it ends right after connecting.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        std::os::unix::net::UnixStream::connect(path)
    })
    .join()
    .unwrap()
}

/// A Version call on `socket` by uid/gid 65534 (nobody).
async fn version_as_nobody(socket: &Path) -> criguard::client::RawResponse {
    let stream = connect_as(65534, 65534, socket).unwrap();
    stream.set_nonblocking(true).unwrap();
    let mut nobody = RawClient::over(tokio::net::UnixStream::from_std(stream).unwrap())
        .await
        .unwrap();
    let version = VersionRequest::default().encode_to_vec();
    nobody
        .call(
            "/runtime.v1.RuntimeService/Version",
            grpc_frame(&version),
            &HeaderMap::new(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_caller_outside_the_allowed_uids_is_refused_with_its_uid_named() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test changes users: run it as root (tests/run.sh does)"
    );
    let node = node("reject").await;
    let answer = version_as_nobody(&node.kubelet).await;
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(
        message.starts_with("criguard: caller uid=65534 gid=65534 pid="),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("is not allowed on {}", node.kubelet.display())),
        "{message}"
    );
    assert_eq!(reached(&node.runtime, "Version"), 0);
    // The same user may use the monitoring socket, which admits everyone.
    let answer = version_as_nobody(&node.monitor).await;
    assert_eq!(answer.grpc_status(), Some(0));
    drop(node.sockets);
}

/// Sends `n` ListContainers at once over one connection; returns (ok, rejected) and the time.
async fn burst(socket: &Path, n: usize) -> (usize, usize, Duration) {
    let client = RawClient::connect(socket).await.unwrap();
    let body = grpc_frame(&ListContainersRequest::default().encode_to_vec());
    let start = Instant::now();
    let calls = (0..n).map(|_| {
        let mut client = client.clone();
        let body = body.clone();
        async move {
            client
                .call(LIST_CONTAINERS, body, &HeaderMap::new())
                .await
                .unwrap()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let elapsed = start.elapsed();
    let ok = answers
        .iter()
        .filter(|a| a.grpc_status() == Some(0))
        .count();
    let rejected = answers
        .iter()
        .filter(|a| a.grpc_status() == Some(tonic::Code::ResourceExhausted as i32))
        .count();
    if let Some(rejection) = answers.iter().find(|a| a.grpc_status() != Some(0)) {
        let message = rejection.grpc_message().unwrap();
        assert!(
            message.starts_with("criguard: rate limit \"monitor-lists\" (20/s, burst 10) exceeded"),
            "{message}"
        );
    }
    (ok, rejected, elapsed)
}

#[tokio::test]
async fn a_list_storm_on_the_monitoring_socket_is_cut_while_the_kubelet_is_served() {
    let node = node("reject").await;
    let (storm, kubelet) = tokio::join!(burst(&node.monitor, 200), burst(&node.kubelet, 200));
    let (ok, rejected, elapsed) = storm;
    assert_eq!(ok + rejected, 200);
    // The burst, plus 20 per second for as long as the storm lasted.
    let most = 10 + (elapsed.as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!((10..=most).contains(&ok), "{ok} passed in {elapsed:?}");
    assert_eq!(kubelet.0, 200, "every kubelet call is served");
    assert_eq!(reached(&node.runtime, "ListContainers"), 200 + ok);
}

#[tokio::test]
async fn with_action_wait_calls_wait_for_their_turn_up_to_max_wait() {
    let node = node("wait").await;
    // 20 calls: 10 at once (the burst), then one every 50 ms: all within the 1 s bound.
    let (ok, rejected, elapsed) = burst(&node.monitor, 20).await;
    assert_eq!((ok, rejected), (20, 0));
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    // 60 at once: those that would wait past 1 s are refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (ok, rejected, _) = burst(&node.monitor, 60).await;
    assert!(rejected > 0 && ok >= 20, "{ok} ok, {rejected} rejected");
}
