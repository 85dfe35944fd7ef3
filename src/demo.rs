//! `criguard demo`: the embedded fake runtime, criguard in front of it, and a kubelet-like
//! sequence of calls through criguard's socket, printed as they pass. Needs no container
//! runtime, no root and no network.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::app::Proxy;
use crate::config::{Config, Overrides};
use crate::cri::*;
use crate::fake::FakeRuntime;

struct Printer {
    passed: usize,
}

impl Printer {
    fn line(&mut self, method: &str, started: Instant, result: Result<String, tonic::Status>) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("  ok   {method:<26} {ms:>7.2} ms  {detail}");
            }
            Err(status) => println!(
                "  {:<4} {method:<26} {ms:>7.2} ms  {}",
                format!("{:?}", status.code()),
                status.message()
            ),
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
}

/// Runs the demo and prints what passed.
pub async fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("criguard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = drive(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn drive(dir: &std::path::Path) -> anyhow::Result<()> {
    let runtime_socket = dir.join("fake-runtime.sock");
    let criguard_socket: PathBuf = dir.join("criguard.sock");
    let shutdown = CancellationToken::new();

    let listener = tokio::net::UnixListener::bind(&runtime_socket)?;
    tokio::spawn(FakeRuntime::new().serve_listener(listener, shutdown.clone()));

    let config = Config::load(
        None,
        Overrides {
            listen: Some(criguard_socket.clone()),
            runtime_endpoint: Some(format!("unix://{}", runtime_socket.display())),
            shutdown_grace_period: Some(Duration::from_secs(1)),
            admin_address: Some("off".into()),
            ..Default::default()
        },
    )?;
    let proxy = Proxy::bind(config, None).await?;
    let served = tokio::spawn(proxy.run(shutdown.clone()));

    println!("criguard demo");
    println!("  fake runtime : unix://{}", runtime_socket.display());
    println!(
        "  criguard     : unix://{}  (the kubelet would point here)",
        criguard_socket.display()
    );
    println!();

    let channel = crate::client::channel(&criguard_socket).await?;
    let mut rt = crate::client::runtime(channel.clone());
    let mut img = crate::client::image(channel.clone());
    let mut p = Printer { passed: 0 };

    macro_rules! call {
        ($name:literal, $fut:expr, |$r:ident| $detail:expr) => {{
            let started = Instant::now();
            let result = $fut.await.map(|r| r.into_inner());
            let value = result.as_ref().ok().cloned();
            p.line($name, started, result.map(|$r| $detail));
            value
        }};
    }

    call!(
        "Version",
        rt.version(VersionRequest::default()),
        |r| format!(
            "{} {} (CRI {})",
            r.runtime_name, r.runtime_version, r.runtime_api_version
        )
    );
    call!("Status", rt.status(StatusRequest::default()), |r| {
        let conditions = r.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .iter()
            .map(|c| format!("{}={}", c.r#type, c.status))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut events = rt
        .get_container_events(GetEventsRequest::default())
        .await?
        .into_inner();
    println!("  ok   {:<26} stream open", "GetContainerEvents");

    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web-1".into(),
            namespace: "team-a".into(),
            uid: "0b8c7f3e-demo".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let pod = call!(
        "RunPodSandbox",
        rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        }),
        |r| format!("pod {} (team-a/web-1)", short(&r.pod_sandbox_id))
    )
    .context("RunPodSandbox failed")?
    .pod_sandbox_id;
    let created = call!(
        "CreateContainer",
        rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0
                }),
                image: Some(ImageSpec {
                    image: "registry.k8s.io/pause:3.9".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config),
        }),
        |r| format!("container {}", short(&r.container_id))
    )
    .context("CreateContainer failed")?
    .container_id;
    call!(
        "StartContainer",
        rt.start_container(StartContainerRequest {
            container_id: created.clone()
        }),
        |_r| "running".to_string()
    );
    call!(
        "ListContainers",
        rt.list_containers(ListContainersRequest::default()),
        |r| format!("{} container(s)", r.containers.len())
    );
    call!(
        "ContainerStatus",
        rt.container_status(ContainerStatusRequest {
            container_id: created.clone(),
            verbose: false
        }),
        |r| format!(
            "state {:?}",
            r.status.map(|s| s.state()).unwrap_or_default()
        )
    );
    call!(
        "ExecSync",
        rt.exec_sync(ExecSyncRequest {
            container_id: created.clone(),
            cmd: vec![
                "echo".into(),
                "hello".into(),
                "through".into(),
                "criguard".into()
            ],
            timeout: 5
        }),
        |r| format!("stdout {:?}", String::from_utf8_lossy(&r.stdout).trim_end())
    );
    call!(
        "StopContainer",
        rt.stop_container(StopContainerRequest {
            container_id: created.clone(),
            timeout: 10
        }),
        |_r| "exited".to_string()
    );
    call!(
        "RemoveContainer",
        rt.remove_container(RemoveContainerRequest {
            container_id: created.clone()
        }),
        |_r| "removed".to_string()
    );
    call!(
        "StopPodSandbox",
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone()
        }),
        |_r| "stopped".to_string()
    );
    call!(
        "RemovePodSandbox",
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone()
        }),
        |_r| "removed".to_string()
    );
    call!(
        "ListImages",
        img.list_images(ListImagesRequest::default()),
        |r| format!("{} image(s)", r.images.len())
    );
    call!(
        "ImageFsInfo",
        img.image_fs_info(ImageFsInfoRequest::default()),
        |r| format!("{} filesystem(s)", r.image_filesystems.len())
    );

    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(2), events.message()).await {
            Ok(Ok(Some(event))) => seen.push(format!("{:?}", event.container_event_type())),
            _ => break,
        }
    }
    println!(
        "  ok   {:<26} events seen: {}",
        "GetContainerEvents",
        seen.join(", ")
    );

    // A method newer than criguard's proto: forwarded all the same; the runtime answers.
    let mut raw = crate::client::RawClient::connect(&criguard_socket).await?;
    let started = Instant::now();
    let answer = raw
        .call(
            "/runtime.v1.RuntimeService/NotYetInTheCri",
            crate::client::grpc_frame(b""),
            &Default::default(),
        )
        .await?;
    println!(
        "  pass {:<26} {:>7.2} ms  not in criguard's proto: forwarded; the runtime answered {:?}",
        "NotYetInTheCri",
        started.elapsed().as_secs_f64() * 1e3,
        tonic::Code::from_i32(answer.grpc_status().unwrap_or(2)),
    );

    println!();
    println!("{} calls passed through criguard.", p.passed);
    drop(events);
    shutdown.cancel();
    let _ = served.await;
    Ok(())
}
