//! Restarts and reloads that the kubelet never notices: criguard restarted under a steady stream
//! of calls while a parent holds the listening socket (as systemd's criguard.socket does), and
//! SIGHUP reloading the configuration file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::HeaderMap;
use support::restart::{kill, restart_under_load, wait_exit};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_criguard");
const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_the_socket_held_by_a_parent_fail_no_call() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(
        &sockets.runtime(),
        criguard::fake::FakeRuntime::with_containers(20),
    )
    .await;
    restart_under_load(&sockets.criguard(), &sockets.runtime(), 3)
        .await
        .assert_no_gap();
}

/// The configuration as a file: the kubelet's socket, the fake runtime, the admin socket, and
/// whatever `extra` adds.
fn write_config(sockets: &Sockets, extra: &str) {
    write_file_config(
        sockets,
        &format!(
            "listen: {}\nlogLevel: info\n{extra}",
            sockets.criguard().display()
        ),
    );
}

/// `yaml`, with the fake runtime and the admin socket, as criguard.yaml.
fn write_file_config(sockets: &Sockets, yaml: &str) {
    let yaml = format!(
        "runtimeEndpoint: unix://{}\nadminAddress: {}\n{yaml}",
        sockets.runtime().display(),
        sockets.dir.path().join("admin.sock").display(),
    );
    std::fs::write(sockets.dir.path().join("criguard.yaml"), yaml).unwrap();
}

/// `criguard serve --config criguard.yaml` (the binary), its log in criguard.log.
async fn serve_config(sockets: &Sockets) -> (Running, PathBuf) {
    let log = sockets.dir.path().join("criguard.log");
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(sockets.dir.path().join("criguard.yaml"))
        .stderr(std::fs::File::create(&log).unwrap());
    let admin = sockets.dir.path().join("admin.sock");
    (Running(spawn_serving(command, sockets, &admin).await), log)
}

async fn reloads(admin: &Path, result: &str) -> f64 {
    let (_, body) = admin_get(admin, "GET", "/metrics").await;
    samples(&body)
        .get(&format!(
            "criguard_config_reload_total{{result=\"{result}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

/// The gRPC codes of `n` ListContainers calls made back to back.
async fn list_codes(client: &mut RawClient, n: usize) -> Vec<i32> {
    let mut codes = Vec::new();
    for _ in 0..n {
        let answer = client
            .call(LIST_CONTAINERS, grpc_frame(b""), &HeaderMap::new())
            .await
            .unwrap();
        codes.push(answer.grpc_status().unwrap());
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_a_bad_file_keeps_the_running_one() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let admin = sockets.dir.path().join("admin.sock");
    write_config(&sockets, "");
    let (mut criguard, log) = serve_config(&sockets).await;
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    assert_eq!(
        list_codes(&mut client, 5).await,
        [0; 5],
        "no limits at first"
    );

    // A limit added to the file is in force after SIGHUP, on the connection already open.
    write_config(
        &sockets,
        "limits:\n  - {name: lists, methods: [ListContainers], rate: 0.1, burst: 2}\n",
    );
    kill(&criguard.0, "HUP");
    assert!(
        eventually_async(|| async { reloads(&admin, "success").await == 1.0 }).await,
        "the reload succeeded"
    );
    let throttled = tonic::Code::ResourceExhausted as i32;
    assert_eq!(list_codes(&mut client, 3).await, [0, 0, throttled]);

    // A broken file changes nothing: the limit stays, the log and the metrics say why.
    write_config(
        &sockets,
        "limits:\n  - {name: lists, methods: [ListContainers], rate: -1}\n",
    );
    kill(&criguard.0, "HUP");
    assert!(
        eventually_async(|| async { reloads(&admin, "failure").await == 1.0 }).await,
        "the failed reload is counted"
    );
    let (_, body) = admin_get(&admin, "GET", "/metrics").await;
    assert_eq!(
        value(&samples(&body), "criguard_config_last_reload_successful"),
        0.0
    );
    assert_eq!(list_codes(&mut client, 1).await, [throttled]);

    // A setting that needs a restart is named, and the rest of the file still applies.
    let moved = sockets.dir.path().join("elsewhere.sock");
    write_config(&sockets, "");
    let text = std::fs::read_to_string(sockets.dir.path().join("criguard.yaml")).unwrap();
    let text = text.replace(
        &format!("listen: {}", sockets.criguard().display()),
        &format!("listen: {}", moved.display()),
    );
    std::fs::write(sockets.dir.path().join("criguard.yaml"), text).unwrap();
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 2.0 }).await);
    assert_eq!(
        list_codes(&mut client, 3).await,
        [0; 3],
        "the limit is gone"
    );
    assert!(!moved.exists(), "the socket does not move before a restart");

    kill(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("configuration reload failed")
            && log.contains("limits[0].rate")
            && log.contains("running configuration stays"),
        "{log}"
    );
    assert!(
        log.contains("apply only at the next restart") && log.contains("listeners (paths"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_who_may_call_and_the_log_level_on_open_connections() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let admin = sockets.dir.path().join("admin.sock");
    let listener = |settings: &str| {
        format!(
            "listeners:\n  - {{path: {}{settings}}}\n",
            sockets.criguard().display()
        )
    };
    write_file_config(&sockets, &(listener("") + "logLevel: info\n"));
    let (mut criguard, log) = serve_config(&sockets).await;
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let remove = "/runtime.v1.RuntimeService/RemoveContainer";
    let denied = tonic::Code::PermissionDenied as i32;
    let code = |answer: criguard::client::RawResponse| answer.grpc_status().unwrap();
    let empty = || grpc_frame(b"");
    let first = code(
        client
            .call(remove, empty(), &HeaderMap::new())
            .await
            .unwrap(),
    );
    assert_ne!(first, denied, "role full: a change reaches the runtime");

    // Read-only from now on, and every finished call logged at debug.
    write_file_config(
        &sockets,
        &(listener(", role: read-only") + "logLevel: debug\n"),
    );
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 1.0 }).await);
    let answer = client
        .call(remove, empty(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(code(answer), denied, "the open connection is read-only now");
    assert_eq!(list_codes(&mut client, 1).await, [0]);

    // Nobody but uid 4242 (this test runs as another uid).
    assert_ne!(unsafe { libc::geteuid() }, 4242);
    write_file_config(
        &sockets,
        &(listener(", allowUids: [4242]") + "logLevel: debug\n"),
    );
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 2.0 }).await);
    assert_eq!(list_codes(&mut client, 1).await, [denied]);

    kill(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&log).unwrap();
    let debug_lines = log.lines().filter(|l| l.contains("call finished")).count();
    assert!(debug_lines >= 1, "logLevel: debug took effect:\n{log}");
    assert!(
        log.lines()
            .take_while(|l| !l.contains("configuration reloaded"))
            .all(|l| !l.contains("call finished")),
        "no debug lines before the reload:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_audit_rules() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let admin = sockets.dir.path().join("admin.sock");
    let trail = sockets.dir.path().join("audit.log");
    let audit = |rules: &str| format!("audit:\n  path: {}\n  rules:\n{rules}", trail.display());
    write_config(&sockets, &audit("    - level: None\n"));
    let (mut criguard, _) = serve_config(&sockets).await;
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let listed = || {
        std::fs::read_to_string(&trail)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"method\":\"ListContainers\""))
            .count()
    };
    assert_eq!(list_codes(&mut client, 2).await, [0, 0]);

    write_config(
        &sockets,
        &audit("    - level: Metadata\n      methods: [ListContainers]\n"),
    );
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 1.0 }).await);
    assert_eq!(list_codes(&mut client, 3).await, [0, 0, 0]);
    assert!(
        eventually(Duration::from_secs(5), || listed() == 3).await,
        "the three calls after the reload are audited, the two before are not: {}",
        listed()
    );
    kill(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(10)).await;
}

/// `tracing:` turns on and off with SIGHUP: spans for the calls after, none for those before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_tracing_on_and_off() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let admin = sockets.dir.path().join("admin.sock");
    let collector = support::otlp::Collector::start().await;
    write_config(&sockets, "");
    let (mut criguard, _) = serve_config(&sockets).await;
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let traced = |trace: u8| {
        let mut headers = HeaderMap::new();
        let value = format!("00-{:032x}-00f067aa0ba902b7-01", trace);
        headers.insert("traceparent", value.parse().unwrap());
        headers
    };
    let call = async |client: &mut RawClient, trace: u8| {
        let answer = client
            .call(LIST_CONTAINERS, grpc_frame(b""), &traced(trace))
            .await
            .unwrap();
        assert_eq!(answer.grpc_status(), Some(0));
    };
    call(&mut client, 1).await;

    write_config(
        &sockets,
        &format!("tracing:\n  endpoint: {}\n", collector.endpoint()),
    );
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 1.0 }).await);
    call(&mut client, 2).await;
    let trace_2 = format!("{:032x}", 2);
    let spans = collector
        .trace(&trace_2, Duration::from_secs(10), |s| !s.is_empty())
        .await;
    assert_eq!(spans.len(), 1, "the call after the reload has its span");

    write_config(&sockets, "");
    kill(&criguard.0, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 2.0 }).await);
    call(&mut client, 3).await;
    kill(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(10)).await;
    let traces: Vec<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert_eq!(
        traces,
        [trace_2],
        "no span before tracing was on, nor after it was off"
    );
}

/// Polls an async check for up to five seconds.
async fn eventually_async<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
