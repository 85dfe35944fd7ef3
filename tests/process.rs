//! The criguard binary as an operator runs it: `check`, `serve` with its socket, signals,
//! socket activation, and the refusal to take over a live socket.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::HeaderMap;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_criguard");
const VERSION: &str = "/runtime.v1.RuntimeService/Version";

fn check(config: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("criguard.yaml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_a_good_config_and_names_the_key_of_a_bad_one() {
    let good = check(
        "listen: /run/criguard/criguard.sock\nruntimeEndpoint: unix:///run/containerd/containerd.sock\nmaxMessageSize: 80MiB\n",
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("OK"));

    let bad = check("listen: /run/criguard/criguard.sock\nmaxMessageSize: huge\n");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("criguard.yaml: maxMessageSize:"),
        "{stderr}"
    );

    let typo = check("listen: /run/criguard/criguard.sock\nruntimeEndpiont: unix:///x.sock\n");
    assert_eq!(typo.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("unknown field `runtimeEndpiont`") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_example_config_checks_clean() {
    let out = Command::new(BIN)
        .args(["check", "--config", "deploy/criguard.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn serve(sockets: &Sockets, extra: &[&str]) -> Running {
    let child = serve_command(sockets)
        .args(["--admin-address", "off"])
        .args(extra)
        .env("CRIGUARD_LOG_LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running(child)
}

async fn wait_for_socket(path: &Path) {
    assert!(
        eventually(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        })
        .await,
        "criguard did not come up on {}",
        path.display()
    );
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_ends_streams_and_exits_zero() {
    let sockets = Sockets::new();
    let feeds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = feeds.clone();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), move |r| {
        if r.path.ends_with("/GetContainerEvents") {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            keep.lock().unwrap().push(tx); // the runtime never ends this stream by itself
            Answer::stream(rx)
        } else {
            Answer {
                delay: Duration::from_millis(800),
                ..Answer::ok(b"slow but fine")
            }
        }
    })
    .await;
    let mut criguard = serve(&sockets, &["--shutdown-grace-period", "5s"]);
    wait_for_socket(&sockets.criguard()).await;
    let mode = std::fs::metadata(sockets.criguard())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let events = client
        .send(RawClient::request(
            "/runtime.v1.RuntimeService/GetContainerEvents",
            grpc_frame(b""),
            &HeaderMap::new(),
        ))
        .await
        .unwrap();
    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .call(VERSION, grpc_frame(b""), &HeaderMap::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGHUP reloads the configuration (tests/reload.rs); SIGUSR1 reopens the audit log,
    // here off (logrotate's postrotate may send it all the same): neither ends criguard.
    for name in ["HUP", "USR1"] {
        signal(&criguard.0, name);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            criguard.0.try_wait().unwrap().is_none(),
            "SIG{name} must not end criguard"
        );
    }
    signal(&criguard.0, "TERM");
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(0),
        "the call in flight finished normally"
    );
    let ended = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::collect(events.into_body()),
    )
    .await
    .expect("the event stream was ended, not left hanging")
    .unwrap();
    let trailers = ended.trailers().unwrap();
    assert_eq!(
        trailers["grpc-status"],
        (tonic::Code::Unavailable as i32).to_string().as_str()
    );
    assert!(
        criguard::proxy::status::read_message(trailers)
            .unwrap()
            .contains("shutting down")
    );

    let status = wait_exit(&mut criguard.0, Duration::from_secs(5)).expect("criguard exited");
    assert!(status.success(), "{status:?}");
    assert!(
        !sockets.criguard().exists(),
        "the socket criguard created is removed"
    );
}

#[tokio::test]
async fn a_second_criguard_refuses_to_take_over_a_live_socket() {
    let sockets = Sockets::new();
    let _first = serve(&sockets, &[]);
    wait_for_socket(&sockets.criguard()).await;
    let second = Command::new(BIN)
        .arg("serve")
        .arg("--listen")
        .arg(sockets.criguard())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first one still serves (it answers with a gRPC status: the runtime is absent).
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    let answer = client
        .call(VERSION, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(tonic::Code::Unavailable as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_passed_by_systemd_is_served_and_left_in_place() {
    let Ok(activate) = which("systemd-socket-activate") else {
        panic!(
            "systemd-socket-activate is missing: install Debian's systemd package (tests/run.sh does)"
        );
    };
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let listen = sockets.dir.path().join("activated.sock");
    let child = Command::new(activate)
        .arg("-l")
        .arg(&listen)
        .arg(BIN)
        .arg("serve")
        .arg("--listen")
        .arg("/nonexistent/ignored-when-activated.sock")
        .arg("--admin-address")
        .arg("off")
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", sockets.runtime().display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut criguard = Running(child);
    wait_for_socket(&listen).await;
    let mut client = RawClient::connect(&listen).await.unwrap();
    let answer = client
        .call(VERSION, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    signal(&criguard.0, "TERM");
    let status = wait_exit(&mut criguard.0, Duration::from_secs(5)).expect("criguard exited");
    assert!(status.success());
    assert!(listen.exists(), "a socket systemd owns is not removed");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

#[test]
fn the_demo_runs_with_no_runtime_and_shows_the_calls_passing() {
    let output = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for method in [
        "Version",
        "RunPodSandbox",
        "CreateContainer",
        "ExecSync",
        "RemovePodSandbox",
        "GetContainerEvents",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(method)),
            "{method}: {stdout}"
        );
    }
    assert!(
        stdout.contains("NotYetInTheCri") && stdout.contains("Unimplemented"),
        "{stdout}"
    );
    assert!(
        stdout.contains("14 calls passed through criguard."),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_errors_make_one_log_line_then_a_summary() {
    let sockets = Sockets::new();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), |r| {
        if r.path.ends_with("/ContainerStatus") {
            Answer {
                trailers: Some(status_trailers(5, Some("container \"c1\" not found"))),
                ..Default::default()
            }
        } else {
            Answer::ok(b"")
        }
    })
    .await;
    let child = serve_command(&sockets)
        .args([
            "--admin-address",
            "off",
            "--log-format",
            "json",
            "--error-log-window",
            "2s",
        ])
        .env("CRIGUARD_LOG_LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut criguard = Running(child);
    wait_for_socket(&sockets.criguard()).await;
    let client = RawClient::connect(sockets.criguard()).await.unwrap();
    let status = criguard::client::grpc_frame(b"\x0a\x02c1"); // container_id: "c1"
    let path = "/runtime.v1.RuntimeService/ContainerStatus";
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            let status = status.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let answer = client
                        .call(path, status.clone(), &HeaderMap::new())
                        .await
                        .unwrap();
                    assert_eq!(answer.grpc_status(), Some(5));
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the thousand calls fit in one window"
    );
    tokio::time::sleep(Duration::from_secs(2) - started.elapsed() + Duration::from_millis(100))
        .await;
    let mut client = client.clone();
    client
        .call(path, status.clone(), &HeaderMap::new())
        .await
        .unwrap();

    signal(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(5)).expect("criguard exited");
    let mut stderr = String::new();
    std::io::Read::read_to_string(criguard.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let failures: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "call failed")
        .collect();
    assert_eq!(failures.len(), 2, "{stderr}");
    assert_eq!(failures[0]["object"], "c1");
    // Who called: this test process, read from the socket's peer credentials.
    assert_eq!(failures[0]["caller_pid"], std::process::id());
    let exe = std::env::current_exe().unwrap().display().to_string();
    assert_eq!(failures[0]["caller_exe"], exe.as_str());
    assert_eq!(failures[0]["error"], "container \"c1\" not found");
    assert_eq!(failures[0]["suppressed_since_last"], 0);
    assert_eq!(failures[1]["suppressed_since_last"], 999);
}

/// Under `Type=notify` with `WatchdogSec=`: systemd hears READY=1 once the socket is bound,
/// WATCHDOG=1 at half the watchdog interval while criguard serves, and STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_bind_then_watchdog_pings_then_stopping() {
    let sockets = Sockets::new();
    let _runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let notify_path = sockets.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut criguard = Running(
        serve_command(&sockets)
            .args(["--admin-address", "off"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 256];
    let received = |buf: &mut [u8]| {
        let n = notify.recv(buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = received(&mut buf);
    assert_eq!(first, "READY=1\nSTATUS=serving\n");
    assert!(
        std::os::unix::net::UnixStream::connect(sockets.criguard()).is_ok(),
        "the socket is bound and served when systemd hears READY=1"
    );
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(1) {
        assert_eq!(received(&mut buf), "WATCHDOG=1\n");
        pings += 1;
    }
    // Every 100 ms (half of 200 ms): about ten in a second, fewer on a busy machine.
    assert!((3..=14).contains(&pings), "{pings} pings in a second");
    signal(&criguard.0, "TERM");
    let mut rest = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if rest.last().is_some_and(|m| m.starts_with("STOPPING=1")) {
            break;
        }
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("STOPPING=1\nSTATUS=draining\n")
    );
    let status = wait_exit(&mut criguard.0, Duration::from_secs(10)).expect("criguard exits");
    assert!(status.success());
}
