//! criguard restarted under a steady stream of calls while this process holds the listening
//! socket, as systemd's criguard.socket does: each criguard gets it as fd 3 (`LISTEN_FDS=1`,
//! `LISTEN_PID` its own pid).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criguard::cri::{ListContainersRequest, ListPodSandboxRequest, VersionRequest};

use super::{RawClient, Running, assert_serving};

/// Kubelet-like clients, each on its own connection.
const CALLERS: usize = 4;

/// What the callers saw over a run, and how long the restarts took.
#[derive(Debug, Default)]
pub struct RestartRun {
    pub restarts: usize,
    pub ok: usize,
    /// Calls criguard never took (cut off by its GOAWAY), sent again as grpc-go does.
    pub retried: usize,
    pub failed: Vec<String>,
    pub slowest: Duration,
    pub longest_restart: Duration,
    /// criguard's log over every run.
    pub log: String,
}

impl RestartRun {
    /// What the kubelet would notice: a failed call, or one that waited longer than a restart.
    pub fn assert_no_gap(&self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} calls failed across {} restarts: {:?}\n{}",
            self.failed.len(),
            self.ok + self.failed.len(),
            self.restarts,
            self.failed,
            self.log
        );
        assert!(
            self.ok > 100 * self.restarts,
            "a steady stream of calls: {self:?}"
        );
        assert!(
            self.retried <= CALLERS * self.restarts * 2,
            "only calls cut off by a restart are sent again: {self:?}"
        );
        assert!(
            self.slowest <= self.longest_restart + Duration::from_millis(250),
            "no call waits longer than a restart: slowest {:?}, longest restart {:?}",
            self.slowest,
            self.longest_restart
        );
        assert_eq!(
            self.log.matches("criguard serving").count(),
            self.restarts + 1,
            "one criguard after the other served the one socket:\n{}",
            self.log
        );
    }
}

/// Binds `socket`, runs criguard on it in front of the runtime at `runtime` (a socket path) and
/// restarts it `restarts` times while clients call Version, ListContainers and ListPodSandbox
/// all the time.
pub async fn restart_under_load(socket: &Path, runtime: &Path, restarts: usize) -> RestartRun {
    let listen = socket.display().to_string();
    let runtime = format!("unix://{}", runtime.display());
    let args = &[
        "--listen",
        listen.as_str(),
        "--runtime-endpoint",
        runtime.as_str(),
        "--admin-address",
        "off",
    ];
    // The holder: bound once, kept through every restart.
    let held = UnixListener::bind(socket).unwrap();
    let log = socket.with_extension("log");
    let mut criguard = Running(spawn_activated(&held, args, &log));

    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for n in 0..CALLERS {
        callers.push(tokio::spawn(call_until(
            socket.to_path_buf(),
            n,
            stop.clone(),
        )));
    }
    let mut run = RestartRun {
        restarts,
        ..RestartRun::default()
    };
    for _ in 0..restarts {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // What systemd does on `systemctl restart criguard`: SIGTERM, wait for the exit, start.
        let restart = Instant::now();
        kill(&criguard.0, "TERM");
        let status = wait_exit(&mut criguard.0, Duration::from_secs(20)).await;
        assert!(status.success(), "criguard exited with {status:?}");
        criguard = Running(spawn_activated(&held, args, &log));
        let mut probe = RawClient::connect(socket).await.unwrap();
        assert_serving(&mut probe).await;
        run.longest_restart = run.longest_restart.max(restart.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let calls = caller.await.unwrap();
        run.ok += calls.ok;
        run.retried += calls.retried;
        run.failed.extend(calls.failed);
        run.slowest = run.slowest.max(calls.slowest);
    }
    kill(&criguard.0, "TERM");
    wait_exit(&mut criguard.0, Duration::from_secs(20)).await;
    assert!(socket.exists(), "the held socket stays in place");
    run.log = std::fs::read_to_string(&log).unwrap();
    run
}

/// One caller: its own connection, a call every 5 ms until `stop`, as the kubelet's PLEG and
/// node status loops call all the time.
async fn call_until(socket: PathBuf, n: usize, stop: Arc<AtomicBool>) -> RestartRun {
    let channel = criguard::client::channel(&socket).await.unwrap();
    let mut client = criguard::client::runtime(channel);
    let mut calls = RestartRun::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = loop {
            let outcome = match n % 3 {
                0 => client.version(VersionRequest::default()).await.map(drop),
                1 => client
                    .list_containers(ListContainersRequest::default())
                    .await
                    .map(drop),
                _ => client
                    .list_pod_sandbox(ListPodSandboxRequest::default())
                    .await
                    .map(drop),
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
                causes(&status)
            )),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    calls
}

/// Whether a call failed before the server took it, as grpc-go tells for its transparent retry
/// (the kubelet's client): never written because the connection was closing, refused, or above
/// the last stream id of the server's GOAWAY. Such a call never reached criguard's stack.
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

/// The chain of errors under a failed call, for the test's message.
fn causes(status: &tonic::Status) -> String {
    let mut out = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        out.push(format!("{err:?}"));
        source = err.source();
    }
    out.join(" <- ")
}

/// Starts `criguard serve ARGS` with `listener` as its fd 3, logging to `log`.
pub fn spawn_activated(listener: &UnixListener, args: &[&str], log: &Path) -> Child {
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
        .arg(env!("CARGO_BIN_EXE_criguard"))
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

pub fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
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
