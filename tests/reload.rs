//! Restarts and reloads that the kubelet never notices: criguard restarted under a steady stream
//! of calls while a parent holds the listening socket (as systemd's criguard.socket does), and
//! SIGHUP reloading the configuration file.

mod support;

use std::path::Path;
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
    let runtime = format!("unix://{}", sockets.runtime().display());
    let listen = sockets.criguard().display().to_string();
    let args = [
        "--listen",
        listen.as_str(),
        "--runtime-endpoint",
        runtime.as_str(),
        "--admin-address",
        "off",
    ];
    restart_under_load(&sockets.criguard(), &args, 3)
        .await
        .assert_no_gap();
}

/// The configuration as a file: the kubelet's socket, the fake runtime, the admin socket, and
/// whatever `extra` adds.
fn write_config(sockets: &Sockets, extra: &str) {
    let yaml = format!(
        "listen: {}\nruntimeEndpoint: unix://{}\nadminAddress: {}\nlogLevel: info\n{extra}",
        sockets.criguard().display(),
        sockets.runtime().display(),
        sockets.dir.path().join("admin.sock").display(),
    );
    std::fs::write(sockets.dir.path().join("criguard.yaml"), yaml).unwrap();
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
    let log = sockets.dir.path().join("criguard.log");
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(sockets.dir.path().join("criguard.yaml"))
        .stderr(std::fs::File::create(&log).unwrap());
    let mut criguard = spawn_serving(command, &sockets, &admin).await;
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
    kill(&criguard, "HUP");
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
    kill(&criguard, "HUP");
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
    kill(&criguard, "HUP");
    assert!(eventually_async(|| async { reloads(&admin, "success").await == 2.0 }).await);
    assert_eq!(
        list_codes(&mut client, 3).await,
        [0; 3],
        "the limit is gone"
    );
    assert!(!moved.exists(), "the socket does not move before a restart");

    kill(&criguard, "TERM");
    wait_exit(&mut criguard, Duration::from_secs(10)).await;
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
