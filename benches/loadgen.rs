//! Load generator: in one run, the same calls against the fake runtime directly and through
//! criguard, and their ratio. Run it with
//!
//! ```sh
//! cargo bench --bench loadgen                     # every scenario, 3 s per side
//! CRIGUARD_BENCH_SECONDS=1 cargo bench --bench loadgen -- Version
//! CRIGUARD_BENCH_SECONDS=16 CRIGUARD_BENCH_ROUNDS=8 cargo bench --bench loadgen -- policies audit
//! cargo bench --bench loadgen -- hardened CreateContainer kubelet   # named scenarios only
//! cargo bench --bench loadgen -- tracing          # spans off / every call sampled
//! ```
//!
//! Scenarios: Version, ListContainers (100 and 5000 containers), CreateContainer (5 KB) and a
//! kubelet-like mix of status, list, stats, exec, image and create calls (`kubelet_mix`).
//!
//! The fake runtime and criguard run as their own processes (the release binary), so
//! criguard's CPU time and memory are read from /proc for criguard alone. The client sends
//! prepared request bytes and never decodes answers: decoding a 6.6 MB ListContainers costs a
//! client tens of milliseconds of CPU and would hide the proxy. Each scenario alternates
//! direct and proxied rounds, so drift on a shared machine hits both sides alike.
//!
//! In the same rounds, the proxies an operator would pick instead, when Debian's packages are
//! installed: socat (a byte relay, the floor for any proxy) and HAProxy (`mode http`, HTTP/2 on
//! both sides over the unix sockets), each with its ratio to direct, p50 ratio and CPU per call
//! (socat's forked children included).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criguard::client::{RawClient, grpc_frame};
use hdrhistogram::Histogram;
use http::HeaderMap;
use http_body_util::BodyExt;
use prost::Message;

/// The tests' OTLP/gRPC collector, for the cost of tracing.
#[path = "../tests/support/otlp.rs"]
#[allow(dead_code)]
mod otlp;

const BIN: &str = env!("CARGO_BIN_EXE_criguard");
/// Alternating rounds per side and scenario (`CRIGUARD_BENCH_ROUNDS`): more rounds spread a
/// shared machine's drift more evenly over both sides.
fn rounds() -> u32 {
    std::env::var("CRIGUARD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(2)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not come up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str], socket: &Path) -> Process {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "error")
        .env("CRIGUARD_LOG_LEVEL", "error")
        .env(
            "TOKIO_WORKER_THREADS",
            std::env::var("CRIGUARD_BENCH_THREADS").unwrap_or_else(|_| "2".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("criguard binary");
    wait_for(socket);
    Process(child)
}

/// A fake runtime and criguard in front of it.
struct Pair {
    runtime: PathBuf,
    proxy: PathBuf,
    proxy_process: Process,
    /// The same criguard with metrics off, for the cost of metrics.
    unmetered: PathBuf,
    unmetered_process: Process,
    admin: PathBuf,
    /// socat between the client and the runtime, a baseline for any proxy.
    relay: Option<PathBuf>,
    relay_process: Option<Process>,
    /// HAProxy in HTTP/2 mode between the client and the runtime: the proxy an operator
    /// would pick instead, when Debian's haproxy is installed.
    haproxy: Option<PathBuf>,
    haproxy_process: Option<Process>,
    _runtime_process: Process,
}

fn pair(dir: &Path, name: &str, containers: usize) -> Pair {
    let runtime = dir.join(format!("{name}-runtime.sock"));
    let proxy = dir.join(format!("{name}-criguard.sock"));
    let runtime_process = spawn(
        &[
            "fake-runtime",
            "--stateless",
            "--containers",
            &containers.to_string(),
            "--listen",
            runtime.to_str().unwrap(),
        ],
        &runtime,
    );
    let proxy_process = spawn(
        &[
            "serve",
            "--listen",
            proxy.to_str().unwrap(),
            "--runtime-endpoint",
            &format!("unix://{}", runtime.display()),
            "--admin-address",
            dir.join(format!("{name}-admin.sock")).to_str().unwrap(),
        ],
        &proxy,
    );
    let unmetered = dir.join(format!("{name}-criguard-no-metrics.sock"));
    let unmetered_process = spawn(
        &[
            "serve",
            "--listen",
            unmetered.to_str().unwrap(),
            "--runtime-endpoint",
            &format!("unix://{}", runtime.display()),
            "--admin-address",
            "off",
            "--disable-metrics",
        ],
        &unmetered,
    );
    // A plain L4 relay as a baseline, when socat is installed (Debian's socat package).
    let relay = dir.join(format!("{name}-socat.sock"));
    let relay_process = Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", relay.display()))
        .arg(format!("UNIX-CONNECT:{}", runtime.display()))
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(|child| {
            wait_for(&relay);
            Process(child)
        });
    let haproxy = dir.join(format!("{name}-haproxy.sock"));
    let haproxy_process = spawn_haproxy(dir, name, &haproxy, &runtime);
    Pair {
        runtime,
        proxy,
        proxy_process,
        relay: relay_process.as_ref().map(|_| relay),
        relay_process,
        haproxy: haproxy_process.as_ref().map(|_| haproxy),
        haproxy_process,
        unmetered,
        unmetered_process,
        admin: dir.join(format!("{name}-admin.sock")),
        _runtime_process: runtime_process,
    }
}

/// HAProxy relaying gRPC (HTTP/2 with prior knowledge on both sides) from `listen` to the
/// runtime's socket, as its documentation configures gRPC: `mode http`, `proto h2` on the bind
/// and the server, long timeouts for streams. One process, its default threads.
fn spawn_haproxy(dir: &Path, name: &str, listen: &Path, runtime: &Path) -> Option<Process> {
    let config = dir.join(format!("{name}-haproxy.cfg"));
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 4096\n  tune.h2.initial-window-size 1048576\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n\
             frontend cri\n  bind unix@{} proto h2\n  default_backend runtime\n\
             backend runtime\n  server runtime unix@{} proto h2\n",
            listen.display(),
            runtime.display()
        ),
    )
    .ok()?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for(listen);
    Some(Process(child))
}

/// `run` added to what `acc` holds.
fn add(acc: &mut Option<Run>, run: Run) {
    match acc {
        None => *acc = Some(run),
        Some(a) => {
            a.calls += run.calls;
            a.elapsed += run.elapsed;
            a.latency.add(run.latency).unwrap();
        }
    }
}

/// CPU time of a process and of its children that have ended (socat forks one per
/// connection), in microseconds; read after a pause that lets a child end.
fn cpu_micros(pid: u32) -> u64 {
    std::thread::sleep(Duration::from_millis(50));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime, stime, cutime, cstime
    let ticks: u64 = (11..15)
        .map(|i| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    ticks * 1_000_000 / 100 // USER_HZ is 100 on Linux
}

/// A line of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Run {
    calls: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// The scenario's callers on one HTTP/2 connection, for `duration`. Each caller goes round the
/// scenario's calls, starting where its number points, so a mix is mixed at every moment.
async fn drive(socket: &Path, scenario: &Scenario, duration: Duration) -> Run {
    let client = RawClient::connect(socket).await.expect("connect");
    // Warm the connection up, and check that every call of the scenario succeeds.
    let mut warm = client.clone();
    for (path, body) in scenario.calls.iter() {
        let answer = warm
            .call(path, body.clone(), &HeaderMap::new())
            .await
            .expect("warm-up call");
        assert_eq!(
            answer.grpc_status(),
            Some(0),
            "{path}: {:?}",
            answer.grpc_message()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..scenario.concurrency)
        .map(|n| {
            let mut client = client.clone();
            let calls = scenario.calls.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut made = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (path, body) = &calls[(n + made as usize) % calls.len()];
                    let t = Instant::now();
                    let request = RawClient::request(path, body.clone(), &HeaderMap::new());
                    let response = client.send(request).await.expect("call");
                    let mut body = response.into_body();
                    let mut ok = false;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.expect("answer body");
                        if let Some(t) = frame.trailers_ref() {
                            ok = t.get("grpc-status").is_some_and(|s| s == "0");
                        }
                    }
                    assert!(ok, "{path} failed under load");
                    latency.record(t.elapsed().as_micros() as u64).unwrap();
                    made += 1;
                }
                (made, latency)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Run {
        calls: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    for worker in workers {
        let (calls, latency) = worker.await.unwrap();
        total.calls += calls;
        total.latency.add(latency).unwrap();
    }
    total.elapsed = started.elapsed();
    total
}

/// Scrapes /metrics on the admin socket every 100 ms until `stop`; returns the slowest scrape.
async fn scrape_while(admin: PathBuf, stop: Arc<AtomicBool>) -> Duration {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let stream = tokio::net::UnixStream::connect(&admin)
            .await
            .expect("admin socket");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("http://localhost/metrics")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

/// Throughput of `variant` against `base` for the c=64 scenarios, alternating rounds; with an
/// admin socket, /metrics is scraped every 100 ms during the variant's runs.
/// One side of a comparison: a name for the table, the socket, the criguard process.
struct Side<'a> {
    name: &'a str,
    socket: &'a Path,
    pid: u32,
}

impl<'a> Side<'a> {
    fn new(name: &'a str, socket: &'a Path, process: &Process) -> Side<'a> {
        Side {
            name,
            socket,
            pid: process.0.id(),
        }
    }
}

fn compare(
    runtime: &tokio::runtime::Runtime,
    base: Side<'_>,
    variant: Side<'_>,
    scrape: Option<&Path>,
    per_round: Duration,
) {
    let (base_name, variant_name) = (base.name, variant.name);
    println!();
    println!(
        "| scenario (c=64) | {base_name} req/s | {variant_name} req/s | {variant_name} / {base_name} | CPU µs/call {base_name} / {variant_name} | slowest scrape during load |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for s in scenarios()
        .into_iter()
        .filter(|s| s.concurrency == 64 && !s.big)
    {
        let (mut off, mut on, mut slowest) = (0.0, 0.0, Duration::ZERO);
        // criguard's CPU time and the calls it served, per side.
        let (mut off_cpu, mut on_cpu) = ((0u64, 0u64), (0u64, 0u64));
        for _ in 0..rounds() {
            let before = cpu_micros(base.pid);
            let run = runtime.block_on(drive(base.socket, &s, per_round));
            off_cpu = (
                off_cpu.0 + cpu_micros(base.pid) - before,
                off_cpu.1 + run.calls,
            );
            off += run.rate();
            let stop = Arc::new(AtomicBool::new(false));
            let scraper =
                scrape.map(|admin| runtime.spawn(scrape_while(admin.into(), stop.clone())));
            let before = cpu_micros(variant.pid);
            let run = runtime.block_on(drive(variant.socket, &s, per_round));
            on_cpu = (
                on_cpu.0 + cpu_micros(variant.pid) - before,
                on_cpu.1 + run.calls,
            );
            on += run.rate();
            stop.store(true, Ordering::Relaxed);
            if let Some(scraper) = scraper {
                slowest = slowest.max(runtime.block_on(scraper).unwrap());
            }
        }
        let scraped = match scrape {
            Some(_) => format!("{:.1} ms", slowest.as_secs_f64() * 1e3),
            None => "n/a".into(),
        };
        let per_call = |(cpu, calls): (u64, u64)| cpu as f64 / calls.max(1) as f64;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} / {:.1} | {scraped} |",
            s.name,
            off / rounds() as f64,
            on / rounds() as f64,
            on / off,
            per_call(off_cpu),
            per_call(on_cpu),
        );
    }
}

/// One call of a scenario: the method's path and the framed request.
type Call = (&'static str, Bytes);

#[derive(Clone)]
struct Scenario {
    name: String,
    /// What each caller makes, in turn.
    calls: Arc<[Call]>,
    concurrency: usize,
    big: bool,
}

impl Scenario {
    fn new(name: String, calls: Vec<Call>, concurrency: usize, big: bool) -> Scenario {
        Scenario {
            name,
            calls: calls.into(),
            concurrency,
            big,
        }
    }
}

fn framed(message: &impl Message) -> Bytes {
    grpc_frame(&message.encode_to_vec())
}

fn scenarios() -> Vec<Scenario> {
    use criguard::cri::*;
    let version: Call = (
        "/runtime.v1.RuntimeService/Version",
        framed(&VersionRequest {
            version: "v1".into(),
        }),
    );
    let list: Call = (
        "/runtime.v1.RuntimeService/ListContainers",
        framed(&ListContainersRequest::default()),
    );
    let create: Call = (
        "/runtime.v1.RuntimeService/CreateContainer",
        framed(&criguard::fake::samples::create_container_request()),
    );
    let mut all = Vec::new();
    for c in [1, 64] {
        all.push(Scenario::new(
            format!("Version c={c}"),
            vec![version.clone()],
            c,
            false,
        ));
    }
    for (containers, big) in [(100, false), (5000, true)] {
        for c in [1, 16] {
            all.push(Scenario::new(
                format!("ListContainers {containers} c={c}"),
                vec![list.clone()],
                c,
                big,
            ));
        }
    }
    for c in [1, 64] {
        all.push(Scenario::new(
            format!("CreateContainer {}B c={c}", create.1.len() - 5),
            vec![create.clone()],
            c,
            false,
        ));
    }
    all
}

/// The calls of a kubelet on a node that runs pods, as in its sync loops: container and
/// sandbox status (the PLEG's relist), lists, stats, an exec probe, runtime status, image file
/// systems and, now and then, a container created after its image's status. Made on the
/// runtime at `socket`, where it starts a sandbox for the status calls to find; the container
/// is one of the canned runtime's running ones.
fn kubelet_mix(runtime: &tokio::runtime::Runtime, socket: &Path) -> Scenario {
    use criguard::cri::*;
    let (pod, container) = runtime.block_on(async {
        let mut client = RawClient::connect(socket).await.expect("connect");
        let sandbox = RunPodSandboxRequest {
            config: Some(criguard::fake::samples::pod_config()),
            ..Default::default()
        };
        let answer = unary(&mut client, "RunPodSandbox", framed(&sandbox)).await;
        let pod = RunPodSandboxResponse::decode(answer)
            .expect("RunPodSandbox answer")
            .pod_sandbox_id;
        let list = framed(&ListContainersRequest::default());
        let answer = unary(&mut client, "ListContainers", list).await;
        let container = ListContainersResponse::decode(answer)
            .expect("ListContainers answer")
            .containers
            .into_iter()
            .find(|c| c.state == ContainerState::ContainerRunning as i32)
            .expect("a running container")
            .id;
        (pod, container)
    });
    let create = criguard::fake::samples::create_container_request();
    let image = create.config.as_ref().and_then(|c| c.image.clone());
    let container_status = framed(&ContainerStatusRequest {
        container_id: container.clone(),
        verbose: false,
    });
    let sandbox_status = framed(&PodSandboxStatusRequest {
        pod_sandbox_id: pod,
        verbose: false,
    });
    let calls: Vec<Call> = vec![
        (RUNTIME_CONTAINER_STATUS, container_status.clone()),
        (RUNTIME_POD_SANDBOX_STATUS, sandbox_status.clone()),
        (
            "/runtime.v1.RuntimeService/ListPodSandbox",
            framed(&ListPodSandboxRequest::default()),
        ),
        (RUNTIME_CONTAINER_STATUS, container_status.clone()),
        (RUNTIME_POD_SANDBOX_STATUS, sandbox_status.clone()),
        (
            "/runtime.v1.RuntimeService/ExecSync",
            exec_probe(&container),
        ),
        (RUNTIME_CONTAINER_STATUS, container_status.clone()),
        (
            "/runtime.v1.RuntimeService/ListContainers",
            framed(&ListContainersRequest::default()),
        ),
        (
            "/runtime.v1.RuntimeService/ContainerStats",
            framed(&ContainerStatsRequest {
                container_id: container.clone(),
            }),
        ),
        (RUNTIME_POD_SANDBOX_STATUS, sandbox_status),
        (
            "/runtime.v1.RuntimeService/Status",
            framed(&StatusRequest::default()),
        ),
        (RUNTIME_CONTAINER_STATUS, container_status),
        (
            "/runtime.v1.ImageService/ImageFsInfo",
            framed(&ImageFsInfoRequest::default()),
        ),
        (
            "/runtime.v1.ImageService/ImageStatus",
            framed(&ImageStatusRequest {
                image,
                verbose: false,
            }),
        ),
        (
            "/runtime.v1.RuntimeService/CreateContainer",
            framed(&create),
        ),
        (
            "/runtime.v1.RuntimeService/Version",
            framed(&VersionRequest {
                version: "v1".into(),
            }),
        ),
    ];
    Scenario::new(
        format!("kubelet mix of {} c=16", calls.len()),
        calls,
        16,
        false,
    )
}

const RUNTIME_CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";
const RUNTIME_POD_SANDBOX_STATUS: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

/// A RuntimeService call that must succeed; its answer's message.
async fn unary(client: &mut RawClient, method: &str, body: Bytes) -> Bytes {
    let path = format!("/runtime.v1.RuntimeService/{method}");
    let answer = client
        .call(&path, body, &HeaderMap::new())
        .await
        .expect(method);
    assert_eq!(answer.grpc_status(), Some(0), "{method}");
    answer.body.slice(5..)
}

/// ExecSync of `echo ok` in `container`, as an exec probe runs.
fn exec_probe(container: &str) -> Bytes {
    framed(&criguard::cri::ExecSyncRequest {
        container_id: container.into(),
        cmd: vec!["echo".into(), "ok".into()],
        timeout: 1,
    })
}

fn main() {
    // `cargo bench` passes --bench; anything else is a filter on scenario names.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: f64 = std::env::var("CRIGUARD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rounds = rounds();
    let per_round = Duration::from_secs_f64(seconds / rounds as f64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let small = pair(dir.path(), "small", 100);
    let big = pair(dir.path(), "big", 5000);
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = [&small, &big].map(|p| status_kib(p.proxy_process.0.id(), "VmRSS:"));
    let mix = kubelet_mix(&runtime, &small.runtime);

    println!(
        "criguard load generator: {seconds} s per side per scenario, {rounds} alternating rounds, one HTTP/2 connection"
    );
    println!();
    println!(
        "| scenario | direct req/s | criguard req/s | ratio | direct p50 / p99 (µs) | criguard p50 / p99 (µs) | p50 ratio | criguard CPU µs/call | socat ratio, p50 ratio, CPU µs/call | HAProxy ratio, p50 ratio, CPU µs/call |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in scenarios().into_iter().chain([mix.clone()]) {
        if filter.iter().any(|f| {
            [
                "metrics",
                "audit",
                "limits",
                "policies",
                "hardened",
                "authority",
                "tracing",
            ]
            .contains(&f.as_str())
        }) {
            break;
        }
        if !filter.is_empty() && !filter.iter().any(|f| s.name.contains(f.as_str())) {
            continue;
        }
        let p = if s.big { &big } else { &small };
        // criguard and its peers, each driven right after a direct run of its own round.
        let sides: Vec<(&str, &Path, u32)> = [
            Some(("criguard", p.proxy.as_path(), &p.proxy_process)),
            p.relay
                .as_deref()
                .zip(p.relay_process.as_ref())
                .map(|(s, r)| ("socat", s, r)),
            p.haproxy
                .as_deref()
                .zip(p.haproxy_process.as_ref())
                .map(|(s, r)| ("haproxy", s, r)),
        ]
        .into_iter()
        .flatten()
        .map(|(name, socket, process)| (name, socket, process.0.id()))
        .collect();
        let mut direct: Option<Run> = None;
        let mut through: Vec<(Option<Run>, u64)> = sides.iter().map(|_| (None, 0)).collect();
        for _ in 0..rounds {
            let d = runtime.block_on(drive(&p.runtime, &s, per_round));
            add(&mut direct, d);
            for ((_, socket, pid), (acc, cpu)) in sides.iter().zip(&mut through) {
                let before = cpu_micros(*pid);
                let run = runtime.block_on(drive(socket, &s, per_round));
                *cpu += cpu_micros(*pid) - before;
                add(acc, run);
            }
        }
        let d = direct.unwrap();
        let p50 = |r: &Run| r.latency.value_at_quantile(0.5) as f64;
        let peer = |name: &str| match sides.iter().position(|side| side.0 == name) {
            Some(i) => match &through[i] {
                (Some(r), cpu) => format!(
                    "{:.2}, {:.2}×, {:.1}",
                    r.rate() / d.rate(),
                    p50(r) / p50(&d),
                    *cpu as f64 / r.calls.max(1) as f64
                ),
                (None, _) => "n/a".into(),
            },
            None => "n/a".into(),
        };
        let (socat, haproxy) = (peer("socat"), peer("haproxy"));
        let (x, cpu) = match &through[0] {
            (Some(x), cpu) => (x, *cpu),
            _ => unreachable!("criguard ran"),
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} / {} | {} / {} | {:.2}× | {:.1} | {socat} | {haproxy} |",
            s.name,
            d.rate(),
            x.rate(),
            x.rate() / d.rate(),
            d.latency.value_at_quantile(0.5),
            d.latency.value_at_quantile(0.99),
            x.latency.value_at_quantile(0.5),
            x.latency.value_at_quantile(0.99),
            p50(x) / p50(&d),
            cpu as f64 / x.calls.max(1) as f64,
        );
    }
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| f == name);
    if wanted("metrics") {
        compare(
            &runtime,
            Side::new("metrics off", &small.unmetered, &small.unmetered_process),
            Side::new("metrics on", &small.proxy, &small.proxy_process),
            Some(&small.admin),
            per_round,
        );
    }
    if wanted("limits") {
        // One limit rule that every measured call passes through, and the listener's uid check.
        let config = dir.path().join("limits.yaml");
        let limited = dir.path().join("small-criguard-limits.sock");
        std::fs::write(
            &config,
            format!(
                "listeners:\n  - path: {}\n    allowUids: [{}]\nlimits:\n  - name: everything\n    methods: [\"*\", Version]\n    rate: 10000000\n    burst: 1000000\n",
                limited.display(),
                unsafe { libc::geteuid() },
            ),
        )
        .unwrap();
        let limited_process = spawn(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--runtime-endpoint",
                &format!("unix://{}", small.runtime.display()),
                "--admin-address",
                dir.path().join("small-limits-admin.sock").to_str().unwrap(),
            ],
            &limited,
        );
        compare(
            &runtime,
            Side::new("no limits", &small.proxy, &small.proxy_process),
            Side::new("one limit + uid check", &limited, &limited_process),
            None,
            per_round,
        );
    }
    if wanted("policies") {
        // pss-restricted enforced; the sample CreateContainer complies, so calls pass.
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::copy(
            "policies/pss-restricted.yaml",
            policies.join("pss-restricted.yaml"),
        )
        .unwrap();
        let guarded = dir.path().join("small-criguard-policies.sock");
        let guarded_process = spawn(
            &[
                "serve",
                "--policies",
                policies.to_str().unwrap(),
                "--listen",
                guarded.to_str().unwrap(),
                "--runtime-endpoint",
                &format!("unix://{}", small.runtime.display()),
                "--admin-address",
                dir.path()
                    .join("small-policies-admin.sock")
                    .to_str()
                    .unwrap(),
            ],
            &guarded,
        );
        compare(
            &runtime,
            Side::new("no policies", &small.proxy, &small.proxy_process),
            Side::new("pss-restricted", &guarded, &guarded_process),
            None,
            per_round,
        );
    }
    if wanted("audit") {
        // Every call at Metadata, to a file: the audit trail's cost on the hot path.
        let log = dir.path().join("audit.log");
        let (audited, audited_process) = spawn_configured(
            dir.path(),
            &small,
            "audit",
            &format!(
                "audit:\n  path: {}\n  rules:\n    - level: Metadata\n",
                log.display()
            ),
        );
        compare(
            &runtime,
            Side::new("audit off", &small.proxy, &small.proxy_process),
            Side::new("audit Metadata", &audited, &audited_process),
            None,
            per_round,
        );
        // Built-in rotation may have moved older events to audit.log.1, .2, ...
        let events: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
            .map(|e| {
                std::fs::read(e.path()).map_or(0, |t| t.iter().filter(|&&b| b == b'\n').count())
            })
            .sum();
        println!("audit events written: {events}");
    }
    if wanted("tracing") {
        // Every call sampled (no caller sends a traceparent here: each call starts a trace),
        // its span exported to an OTLP/gRPC collector in this process.
        let collector = runtime.block_on(otlp::Collector::start());
        let (traced, traced_process) = spawn_configured(
            dir.path(),
            &small,
            "tracing",
            &format!(
                "tracing:\n  endpoint: {}\n  samplingRatePerMillion: 1000000\n",
                collector.endpoint()
            ),
        );
        compare(
            &runtime,
            Side::new("tracing off", &small.proxy, &small.proxy_process),
            Side::new("tracing on", &traced, &traced_process),
            None,
            per_round,
        );
        std::thread::sleep(Duration::from_secs(1));
        println!("spans the collector received: {}", collector.spans().len());
    }
    if wanted("hardened") {
        let cases: Vec<&String> = filter.iter().filter(|f| *f != "hardened").collect();
        compare_hardened(
            &runtime,
            dir.path(),
            [&small, &big],
            &mix,
            &cases,
            per_round,
        );
    }
    if wanted("authority") {
        compare_authorities(&small, per_round);
    }
    println!();
    println!(
        "criguard memory: idle RSS {} KiB (100-container pair), {} KiB (5000-container pair); peak RSS (VmHWM) {} KiB and {} KiB",
        idle_rss[0],
        idle_rss[1],
        status_kib(small.proxy_process.0.id(), "VmHWM:"),
        status_kib(big.proxy_process.0.id(), "VmHWM:"),
    );
}

/// criguard with the configuration `yaml`, in front of `pair`'s runtime, on its own socket
/// and admin socket named after `name`.
fn spawn_configured(dir: &Path, pair: &Pair, name: &str, yaml: &str) -> (PathBuf, Process) {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let socket = dir.join(format!("criguard-{name}.sock"));
    let process = spawn(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            socket.to_str().unwrap(),
            "--runtime-endpoint",
            &format!("unix://{}", pair.runtime.display()),
            "--admin-address",
            dir.join(format!("{name}-admin.sock")).to_str().unwrap(),
        ],
        &socket,
    );
    (socket, process)
}

/// Version at c=64 from grpc-go (tests/clients/go, built by tests/clients/install.sh) through
/// criguard, dialled as kubelets 1.31+ dial (`localhost`: criguard reads only the first header
/// block) and as kubelets up to 1.30 dial (the socket path: every header block rewritten), in
/// alternating rounds: the rewrite's cost per call.
fn compare_authorities(pair: &Pair, per_round: Duration) {
    let go = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients/cri-go-client");
    println!();
    if !go.exists() {
        println!(
            "(authority: {} is not built; tests/clients/install.sh builds it)",
            go.display()
        );
        return;
    }
    println!("| grpc-go, Version c=64 | :authority | req/s | criguard CPU µs/call |");
    println!("| --- | --- | ---: | ---: |");
    let pid = pair.proxy_process.0.id();
    let mut totals = [(0u64, Duration::ZERO, 0u64); 2];
    for _ in 0..rounds() {
        for (n, dial) in ["localhost", "legacy"].into_iter().enumerate() {
            let mut client = Command::new(&go)
                .arg("-socket")
                .arg(&pair.proxy)
                .args(["-dial", dial])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("grpc-go client");
            let mut stdin = client.stdin.take().unwrap();
            let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
            let mut exchange = |line: String| {
                use std::io::{BufRead, Write};
                writeln!(stdin, "{line}").unwrap();
                let mut answer = String::new();
                stdout.read_line(&mut answer).unwrap();
                serde_json::from_str::<serde_json::Value>(&answer).unwrap()
            };
            let version = "/runtime.v1.RuntimeService/Version";
            // The connection is made and warm before the clock starts.
            exchange(format!(
                r#"{{"op":"call","method":"{version}","request":""}}"#
            ));
            let before = cpu_micros(pid);
            let started = Instant::now();
            let answer = exchange(format!(
                r#"{{"op":"load","method":"{version}","request":"","callers":64,"duration_ms":{}}}"#,
                per_round.as_millis()
            ));
            let calls = answer["ok"].as_u64().unwrap_or(0);
            assert_eq!(answer["failed"].as_u64().unwrap_or(0), 0, "{answer}");
            totals[n].0 += calls;
            totals[n].1 += started.elapsed();
            totals[n].2 += cpu_micros(pid) - before;
            drop(stdin);
            let _ = client.wait();
        }
    }
    for ((calls, elapsed, cpu), authority) in totals.into_iter().zip([
        "localhost (kubelet 1.31+): passed as it came",
        "socket path (kubelet <= 1.30): rewritten",
    ]) {
        println!(
            "| Version c=64 | {authority} | {:.0} | {:.1} |",
            calls as f64 / elapsed.as_secs_f64(),
            cpu as f64 / calls.max(1) as f64
        );
    }
}

/// The stack a hardened node runs, against the default one: metrics, the audit trail with its
/// default rules (CreateContainer and exec at Request level), pss-baseline, restrict-exec and
/// image-registries (allowing the canned runtime's registry), and a read-only second listener
/// with a rate limit. Direct, default and hardened in the same alternating rounds: ratios to
/// direct, CPU per call of both stacks, and the hardened criguards' peak memory. `only`, when
/// not empty, picks scenarios by name.
fn compare_hardened(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    pairs: [&Pair; 2],
    mix: &Scenario,
    only: &[&String],
    per_round: Duration,
) {
    let policies = dir.join("hardened-policies");
    std::fs::create_dir_all(&policies).unwrap();
    for name in ["pss-baseline", "restrict-exec"] {
        let file = format!("{name}.yaml");
        std::fs::copy(Path::new("policies").join(&file), policies.join(&file)).unwrap();
    }
    let registries = std::fs::read_to_string("policies/image-registries.yaml")
        .unwrap()
        .replace(
            "allow: [registry.k8s.io, docker.io/library]",
            "allow: [registry.k8s.io, docker.io/library, registry.example.com]",
        );
    assert!(registries.contains("registry.example.com"));
    std::fs::write(policies.join("image-registries.yaml"), registries).unwrap();
    // One hardened criguard in front of each canned runtime (100 and 5000 containers).
    let hardened = pairs.map(|pair| spawn_hardened(runtime, dir, &policies, pair));
    let exec = Scenario::new(
        "ExecSync c=64".into(),
        vec![(
            "/runtime.v1.RuntimeService/ExecSync",
            mix.calls
                .iter()
                .find(|(path, _)| path.ends_with("/ExecSync"))
                .expect("the mix execs")
                .1
                .clone(),
        )],
        64,
        false,
    );
    let cases = scenarios()
        .into_iter()
        .filter(|s| s.concurrency > 1)
        .chain([exec, mix.clone()])
        .filter(|s| only.is_empty() || only.iter().any(|f| s.name.contains(f.as_str())));
    println!();
    println!(
        "| scenario | direct req/s | default / direct | hardened / direct | hardened p50 / p99 (µs) | CPU µs/call default | CPU µs/call hardened | hardened / default CPU (rounds' range) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in cases {
        let pair = pairs[usize::from(s.big)];
        let (socket, process) = &hardened[usize::from(s.big)];
        let (mut direct, mut through) = (None, [None, None]);
        let mut cpu = [(0u64, 0u64); 2];
        let per_call = |(micros, calls): (u64, u64)| micros as f64 / calls.max(1) as f64;
        // Each round's hardened / default CPU ratio: how far one round can be from the whole.
        let (mut lowest, mut highest) = (f64::INFINITY, 0f64);
        for _ in 0..rounds() {
            add(
                &mut direct,
                runtime.block_on(drive(&pair.runtime, &s, per_round)),
            );
            let mut round = [(0u64, 0u64); 2];
            for (i, (socket, pid)) in [
                (&pair.proxy, pair.proxy_process.0.id()),
                (socket, process.0.id()),
            ]
            .into_iter()
            .enumerate()
            {
                let before = cpu_micros(pid);
                let r = runtime.block_on(drive(socket, &s, per_round));
                round[i] = (cpu_micros(pid) - before, r.calls);
                cpu[i] = (cpu[i].0 + round[i].0, cpu[i].1 + r.calls);
                add(&mut through[i], r);
            }
            let ratio = per_call(round[1]) / per_call(round[0]);
            (lowest, highest) = (lowest.min(ratio), highest.max(ratio));
        }
        let direct = direct.unwrap();
        let [Some(base), Some(hard)] = through else {
            unreachable!("every round ran")
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} / {} | {:.1} | {:.1} | {:.2} ({lowest:.2}–{highest:.2}) |",
            s.name,
            direct.rate(),
            base.rate() / direct.rate(),
            hard.rate() / direct.rate(),
            hard.latency.value_at_quantile(0.5),
            hard.latency.value_at_quantile(0.99),
            per_call(cpu[0]),
            per_call(cpu[1]),
            per_call(cpu[1]) / per_call(cpu[0]),
        );
    }
    for ((_, process), containers) in hardened.iter().zip([100, 5000]) {
        println!(
            "hardened criguard ({containers} containers): peak RSS (VmHWM) {} KiB, now {} KiB",
            status_kib(process.0.id(), "VmHWM:"),
            status_kib(process.0.id(), "VmRSS:"),
        );
    }
}

/// A hardened criguard in front of `pair`'s runtime (see `compare_hardened`), told the canned
/// image's names by one ImageStatus, as the kubelet's call before every CreateContainer does.
fn spawn_hardened(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    policies: &Path,
    pair: &Pair,
) -> (PathBuf, Process) {
    let name = pair
        .runtime
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("runtime socket name");
    let socket = dir.join(format!("{name}-hardened.sock"));
    let readonly = dir.join(format!("{name}-hardened-ro.sock"));
    let config = dir.join(format!("{name}-hardened.yaml"));
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - path: {}\n  - path: {}\n    role: read-only\n\
             limits:\n  - name: monitoring\n    listener: {}\n    methods: [read]\n    rate: 50\n\
             audit:\n  path: {}\n\
             policies: {}\n",
            socket.display(),
            readonly.display(),
            readonly.display(),
            dir.join(format!("{name}-hardened-audit.log")).display(),
            policies.display(),
        ),
    )
    .unwrap();
    let process = spawn(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--runtime-endpoint",
            &format!("unix://{}", pair.runtime.display()),
            "--admin-address",
            dir.join(format!("{name}-hardened-admin.sock"))
                .to_str()
                .unwrap(),
        ],
        &socket,
    );
    runtime.block_on(async {
        let mut client = RawClient::connect(&socket).await.expect("connect");
        let request = criguard::cri::ImageStatusRequest {
            image: criguard::fake::samples::create_container_request()
                .config
                .and_then(|c| c.image),
            verbose: false,
        };
        let answer = client
            .call(
                "/runtime.v1.ImageService/ImageStatus",
                framed(&request),
                &HeaderMap::new(),
            )
            .await
            .expect("ImageStatus");
        assert_eq!(answer.grpc_status(), Some(0));
    });
    (socket, process)
}
