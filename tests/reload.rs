//! Restarts and reloads that the kubelet never notices: criguard restarted under a steady stream
//! of calls while a parent holds the listening socket (as systemd's criguard.socket does), and
//! SIGHUP reloading the configuration file.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criguard::cri::{ListContainersRequest, VersionRequest};
use http::HeaderMap;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_criguard");
const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

/// Starts criguard with `listener` as its socket-activated fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`
/// its own pid), as systemd starts criguard.service with criguard.socket.
fn spawn_activated(
    listener: &std::os::unix::net::UnixListener,
    args: &[&str],
    log: &Path,
) -> Child {
    let fd = listener.as_raw_fd();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@""#)
        .arg("socket-holder")
        .arg(BIN)
        .arg("serve")
        .args(args)
        .env("CRIGUARD_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "criguard did not exit in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the callers saw over the whole run.
#[derive(Debug, Default)]
struct Calls {
    ok: usize,
    /// Calls the server never took (cut off by its GOAWAY), sent again as grpc-go does.
    retried: usize,
    failed: Vec<String>,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_the_socket_held_by_a_parent_fail_no_call() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(
        &sockets.runtime(),
        criguard::fake::FakeRuntime::with_containers(20),
    )
    .await;
    // The holder: this test binds the socket once and keeps it through every restart.
    let held = std::os::unix::net::UnixListener::bind(sockets.criguard()).unwrap();
    let runtime = format!("unix://{}", sockets.runtime().display());
    let listen = sockets.criguard().display().to_string();
    let args = [
        "--listen",
        listen.as_str(),
        "--runtime-endpoint",
        runtime.as_str(),
        "--admin-address",
        "off",
        "--shutdown-grace-period",
        "5s",
    ];
    let log = sockets.dir.path().join("criguard.log");
    let mut criguard = spawn_activated(&held, &args, &log);

    // The kubelet's pattern: a few long-lived clients on one connection each, calling all the
    // time (Version and lists, as PLEG and the node status loop do).
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for n in 0..4 {
        let channel = criguard::client::channel(sockets.criguard()).await.unwrap();
        let mut client = criguard::client::runtime(channel);
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let mut calls = Calls::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = loop {
                    let outcome = if n % 2 == 0 {
                        client.version(VersionRequest::default()).await.map(drop)
                    } else {
                        client
                            .list_containers(ListContainersRequest::default())
                            .await
                            .map(drop)
                    };
                    match outcome {
                        Err(status) if unprocessed(&status) => calls.retried += 1,
                        outcome => break outcome,
                    }
                };
                calls.slowest = calls.slowest.max(started.elapsed());
                match outcome {
                    Ok(()) => calls.ok += 1,
                    Err(status) => calls.failed.push(format!(
                        "{:?}: {} ({})",
                        status.code(),
                        status.message(),
                        chain(&status)
                    )),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        }));
    }

    let mut longest_restart = Duration::ZERO;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // What systemd does on `systemctl restart criguard`: SIGTERM, wait for the exit, start.
        let restart = Instant::now();
        kill(&criguard, "TERM");
        let status = wait_exit(&mut criguard, Duration::from_secs(10)).await;
        assert!(status.success(), "criguard exited with {status:?}");
        criguard = spawn_activated(&held, &args, &log);
        let mut probe = RawClient::connect(sockets.criguard()).await.unwrap();
        assert_serving(&mut probe).await;
        longest_restart = longest_restart.max(restart.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = Calls::default();
    for caller in callers {
        let calls = caller.await.unwrap();
        total.ok += calls.ok;
        total.retried += calls.retried;
        total.failed.extend(calls.failed);
        total.slowest = total.slowest.max(calls.slowest);
    }
    kill(&criguard, "TERM");
    wait_exit(&mut criguard, Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        total.failed.is_empty(),
        "{} of {} calls failed across 3 restarts: {:?}\n{log}",
        total.failed.len(),
        total.ok + total.failed.len(),
        total.failed
    );
    assert!(total.ok > 200, "a steady stream of calls: {total:?}");
    assert!(
        total.retried <= 4 * 3 * 2,
        "only calls cut off by a restart are sent again: {total:?}"
    );
    assert!(
        total.slowest <= longest_restart + Duration::from_millis(250),
        "no call waits longer than a restart: slowest {:?}, longest restart {longest_restart:?}",
        total.slowest
    );
    assert_eq!(
        log.matches("criguard serving").count(),
        4,
        "four criguards served the one socket:\n{log}"
    );
    assert!(
        sockets.criguard().exists(),
        "the held socket stays in place"
    );
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

/// Whether a call failed before the server took it, as grpc-go tells for its transparent
/// retry (the kubelet's client): never written because the connection was closing, refused, or
/// above the last stream id of the server's GOAWAY. Such a call did not reach criguard's stack.
fn unprocessed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = err.source();
    }
    false
}

fn chain(status: &tonic::Status) -> String {
    let mut out = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            out.push(format!(
                "h2 reason={:?} go_away={} remote={} io={}",
                h2.reason(),
                h2.is_go_away(),
                h2.is_remote(),
                h2.is_io()
            ));
        } else if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            out.push(format!(
                "hyper canceled={} closed={}",
                hyper.is_canceled(),
                hyper.is_closed()
            ));
        } else {
            out.push(format!("{err:?}"));
        }
        source = err.source();
    }
    out.join(" <- ")
}
