//! The audit trail as an operator reads it: one JSON line per audited call, through real
//! sockets, with the pod each call was about, the right level, and no secret anywhere.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use criguard::client;
use criguard::config::Overrides;
use criguard::cri::*;
use criguard::fake::{FakeRuntime, samples};
use serde_json::Value;
use support::*;

const SECRETS: [&str; 5] = [
    "hunter2-password",
    "cm9ib3Q6aHVudGVyMg==",
    "identity-token-secret",
    "registry-token-secret",
    "s3cret-env-value",
];

fn read_events(path: &Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(path).unwrap();
    let events = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (text, events)
}

fn audit_to(path: &Path) -> Overrides {
    Overrides {
        audit_log: Some(path.to_path_buf()),
        ..Overrides::default()
    }
}

/// A kubelet-like pod lifecycle, an exec, a list and a pull with credentials.
async fn drive_pod_lifecycle(socket: &Path) -> (String, String) {
    let channel = client::channel(socket).await.unwrap();
    let mut runtime = client::runtime(channel.clone());
    let mut images = client::image(channel);
    let mut create = samples::create_container_request();
    create.config.as_mut().unwrap().envs.push(KeyValue {
        key: "DB_PASSWORD".into(),
        value: "s3cret-env-value".into(),
    });
    let (sandbox, container) = start_pod(&mut runtime, samples::pod_config(), create).await;
    let exec = runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["echo".into(), "audited".into()],
            timeout: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exec.stdout, b"audited\n");
    runtime
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: "registry.example/team-a/app:1.0".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: "robot".into(),
                password: "hunter2-password".into(),
                auth: "cm9ib3Q6aHVudGVyMg==".into(),
                server_address: "registry.example".into(),
                identity_token: "identity-token-secret".into(),
                registry_token: "registry-token-secret".into(),
            }),
            sandbox_config: None,
        })
        .await
        .unwrap();
    runtime
        .stop_container(StopContainerRequest {
            container_id: container.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    runtime
        .remove_container(RemoveContainerRequest {
            container_id: container.clone(),
        })
        .await
        .unwrap();
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap();
    runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap();
    (sandbox, container)
}

#[tokio::test]
async fn every_lifecycle_exec_and_pull_call_is_one_event_naming_its_pod_and_no_secret() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let log = sockets.dir.path().join("audit.log");
    let criguard = Criguard::start_with(&sockets, audit_to(&log)).await;
    let (sandbox, container) = drive_pod_lifecycle(&criguard.socket).await;
    // Stopping flushes the queue.
    criguard.stop().await;

    let (text, events) = read_events(&log);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    // ListContainers is a read: the shipped rules record none.
    assert_eq!(
        methods,
        [
            "RunPodSandbox",
            "CreateContainer",
            "StartContainer",
            "ExecSync",
            "PullImage",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox"
        ]
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["auditId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "audit ids are unique");
    let me = unsafe { libc::getuid() };
    let pod = samples::pod_config().metadata.unwrap();
    for event in &events {
        let method = event["method"].as_str().unwrap();
        assert_eq!(event["level"], "Request", "{event}");
        assert_eq!(event["code"], "OK", "{event}");
        assert_eq!(event["decision"]["result"], "allowed", "{event}");
        assert_eq!(event["caller"]["uid"], me, "{event}");
        assert!(event["caller"]["pid"].as_i64().unwrap() > 0, "{event}");
        assert!(event["latencyMs"].as_f64().unwrap() >= 0.0, "{event}");
        // RFC 3339 with microseconds, UTC.
        let time = event["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-11-27T11:12:13.123456Z".len(), "{time}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(event["request"].is_object(), "{event}");
        if method == "PullImage" {
            assert_eq!(event["image"], "registry.example/team-a/app:1.0");
            assert_eq!(event["request"]["auth"]["password"], "<redacted>");
            continue;
        }
        // Even calls that name only an id carry their pod.
        assert_eq!(event["pod"]["namespace"], pod.namespace.as_str(), "{event}");
        assert_eq!(event["pod"]["name"], pod.name.as_str(), "{event}");
        assert_eq!(event["pod"]["uid"], pod.uid.as_str(), "{event}");
        assert_eq!(event["sandboxId"], sandbox.as_str(), "{event}");
        if method.contains("Container") || method == "ExecSync" {
            assert_eq!(event["container"]["id"], container.as_str(), "{event}");
            assert_eq!(event["container"]["name"], "app", "{event}");
        }
    }
    let create = &events[1];
    let envs = create["request"]["config"]["envs"].as_array().unwrap();
    let password = envs.iter().find(|e| e["key"] == "DB_PASSWORD").unwrap();
    assert_eq!(password["value"], "<redacted>");
    assert_eq!(
        events[3]["request"]["cmd"],
        serde_json::json!(["echo", "audited"])
    );
}

#[tokio::test]
async fn rules_choose_levels_by_method_and_namespace_and_can_keep_answers() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let log = sockets.dir.path().join("audit.log");
    let namespace = samples::pod_config().metadata.unwrap().namespace;
    let config = format!(
        r#"
audit:
  path: {}
  rules:
    - level: RequestResponse
      methods: [exec]
    - level: None
      methods: [StopContainer]
      namespaces: ["{namespace}"]
    - level: Metadata
      methods: [lifecycle, PullImage]
"#,
        log.display()
    );
    let criguard = Criguard::start_with_config(&sockets, Some(&config), Overrides::default()).await;
    drive_pod_lifecycle(&criguard.socket).await;
    criguard.stop().await;

    let (text, events) = read_events(&log);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    let levels: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["method"].as_str().unwrap(), e["level"].as_str().unwrap()))
        .collect();
    assert_eq!(
        levels,
        [
            ("RunPodSandbox", "Metadata"),
            ("CreateContainer", "Metadata"),
            ("StartContainer", "Metadata"),
            ("ExecSync", "RequestResponse"),
            ("PullImage", "Metadata"),
            // StopContainer in that namespace: not recorded.
            ("RemoveContainer", "Metadata"),
            ("StopPodSandbox", "Metadata"),
            ("RemovePodSandbox", "Metadata"),
        ]
    );
    assert!(events[0].get("request").is_none());
    let exec = &events[3];
    assert_eq!(exec["request"]["cmd"][1], "audited");
    // bytes in proto JSON are base64: "audited\n"
    assert_eq!(exec["response"]["stdout"], "YXVkaXRlZAo=");
}

#[tokio::test]
async fn with_on_failure_deny_an_unwritable_trail_refuses_audited_calls_and_lets_reads_pass() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    // Writes to /dev/full fail with ENOSPC, as on a full disk.
    let config = "audit:\n  path: /dev/full\n  maxSizeMB: 0\n  onFailure: deny\n";
    let criguard = Criguard::start_with_config(&sockets, Some(config), Overrides::default()).await;
    let mut runtime = client::runtime(client::channel(&criguard.socket).await.unwrap());
    // The first audited call may pass before its event fails; from then on calls are refused.
    let run = RunPodSandboxRequest {
        config: Some(samples::pod_config()),
        runtime_handler: String::new(),
    };
    let mut status = None;
    for _ in 0..100 {
        match runtime.run_pod_sandbox(run.clone()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(refused) => {
                status = Some(refused);
                break;
            }
        }
    }
    let status = status.expect("audited calls are refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("criguard: audit log /dev/full cannot be written"),
        "{message}"
    );
    assert!(message.contains("audit.onFailure: deny"), "{message}");
    // Reads are not audited by the shipped rules: the node stays Ready.
    runtime.version(VersionRequest::default()).await.unwrap();
    runtime.status(StatusRequest::default()).await.unwrap();
    criguard.stop().await;
}

#[tokio::test]
async fn with_on_failure_allow_calls_pass_when_events_cannot_be_written() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new()).await;
    let config = "audit:\n  path: /dev/full\n  maxSizeMB: 0\n  onFailure: allow\n";
    let criguard = Criguard::start_with_config(&sockets, Some(config), Overrides::default()).await;
    let mut runtime = client::runtime(client::channel(&criguard.socket).await.unwrap());
    for _ in 0..3 {
        runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(samples::pod_config()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    criguard.stop().await;
}

#[tokio::test]
async fn a_tiny_queue_slows_calls_down_but_loses_no_event() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new().stateless()).await;
    let log = sockets.dir.path().join("audit.log");
    let config = format!(
        "audit:\n  path: {}\n  queueSize: 1\n  rules:\n    - level: Request\n",
        log.display()
    );
    let criguard = Criguard::start_with_config(&sockets, Some(&config), Overrides::default()).await;
    create_containers_at_once(&criguard.socket, 300).await;
    criguard.stop().await;
    let (_, events) = read_events(&log);
    assert_eq!(events.len(), 300);
    assert!(
        events
            .iter()
            .all(|e| e["method"] == "CreateContainer" && e["code"] == "OK")
    );
}

/// The queue's byte budget: with room for one byte, every call that starts while an event is
/// queued waits for the writer. None is lost, and the waits are in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_over_its_byte_budget_makes_calls_wait_counted_and_loses_no_event() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new().stateless()).await;
    let log = sockets.dir.path().join("audit.log");
    let admin = sockets.dir.path().join("admin.sock");
    let config = sockets.dir.path().join("criguard.yaml");
    std::fs::write(
        &config,
        format!(
            "audit:\n  path: {}\n  queueBytes: 1\n  rules:\n    - level: Request\n",
            log.display()
        ),
    )
    .unwrap();
    let mut command = serve_command(&sockets);
    command
        .arg("--config")
        .arg(&config)
        .arg("--admin-address")
        .arg(&admin)
        .stderr(std::process::Stdio::null());
    // Killed if an assertion fails first.
    let mut child = Running(spawn_serving(command, &sockets, &admin).await);
    create_containers_at_once(&sockets.criguard(), 200).await;
    assert_eq!(scrape_until(&admin, "written", 200.0).await, 200.0);
    let (_, text) = admin_get(&admin, "GET", "/metrics").await;
    let metrics = samples(&text);
    let waits = metrics["criguard_audit_queue_wait_seconds_count"];
    assert!(waits >= 1.0, "no call waited: {waits}");
    assert_eq!(metrics["criguard_audit_queue_bytes"], 0.0, "all released");
    signal(&child.0, libc::SIGTERM);
    assert!(child.0.wait().unwrap().success());
    let (_, events) = read_events(&log);
    assert_eq!(events.len(), 200);
    assert!(
        events
            .iter()
            .all(|e| e["request"]["config"]["metadata"]["name"].is_string())
    );
}

#[tokio::test]
async fn criguards_own_refusals_are_recorded_with_their_status() {
    // No runtime at all: the call fails with UNAVAILABLE made by criguard, and is recorded.
    let sockets = Sockets::new();
    let log = sockets.dir.path().join("audit.log");
    let criguard = Criguard::start_with(&sockets, audit_to(&log)).await;
    let mut runtime = client::runtime(client::channel(&criguard.socket).await.unwrap());
    let status = runtime
        .start_container(StartContainerRequest {
            container_id: "c-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    criguard.stop().await;
    let (_, events) = read_events(&log);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["code"], "Unavailable");
    assert_eq!(events[0]["container"]["id"], "c-1");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
}

fn signal(child: &std::process::Child, signal: libc::c_int) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// `count` CreateContainer calls at once on one connection, each answered OK.
async fn create_containers_at_once(socket: &Path, count: usize) {
    let channel = client::channel(socket).await.unwrap();
    let calls = (0..count).map(|_| {
        let mut runtime = client::runtime(channel.clone());
        async move {
            runtime
                .create_container(samples::create_container_request())
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(calls).await;
}

async fn create_container(socket: &Path) {
    let mut runtime = client::runtime(client::channel(socket).await.unwrap());
    runtime
        .create_container(samples::create_container_request())
        .await
        .unwrap();
}

/// `criguard_audit_events_total{result}` once it reaches `want` (or after 2 s).
async fn scrape_until(admin: &Path, result: &str, want: f64) -> f64 {
    let series = format!("criguard_audit_events_total{{result=\"{result}\"}}");
    let mut count = 0.0;
    for _ in 0..100 {
        let (_, text) = admin_get(admin, "GET", "/metrics").await;
        count = samples(&text).get(&series).copied().unwrap_or(0.0);
        if count == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reopens_on_sigusr1_counts_events_and_flushes_on_sigterm() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new().stateless()).await;
    let log = sockets.dir.path().join("audit.log");
    let rotated = sockets.dir.path().join("audit.log.old");
    let admin = sockets.dir.path().join("admin.sock");
    let mut command = serve_command(&sockets);
    command
        .arg("--audit-log")
        .arg(&log)
        .arg("--admin-address")
        .arg(&admin)
        .stderr(std::process::Stdio::null());
    let mut child = spawn_serving(command, &sockets, &admin).await;
    create_container(&sockets.criguard()).await;
    create_container(&sockets.criguard()).await;
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.lines().count() == 2))
        .await
    );
    // What logrotate does: move the file, then tell criguard.
    std::fs::rename(&log, &rotated).unwrap();
    signal(&child, libc::SIGUSR1);
    assert!(
        eventually(Duration::from_secs(5), || log.exists()).await,
        "reopened"
    );
    create_container(&sockets.criguard()).await;
    assert_eq!(scrape_until(&admin, "written", 3.0).await, 3.0);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(read_events(&rotated).1.len(), 2);
    let (_, events) = read_events(&log);
    assert_eq!(events.len(), 1, "the last event was flushed before exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_are_counted_and_logged() {
    let sockets = Sockets::new();
    let _runtime = start_fake_runtime(&sockets.runtime(), FakeRuntime::new().stateless()).await;
    let admin = sockets.dir.path().join("admin.sock");
    let config = sockets.dir.path().join("criguard.yaml");
    std::fs::write(
        &config,
        "audit:\n  path: /dev/full\n  maxSizeMB: 0\n  onFailure: allow\n",
    )
    .unwrap();
    let mut command = serve_command(&sockets);
    command
        .arg("--config")
        .arg(&config)
        .arg("--admin-address")
        .arg(&admin)
        .stderr(std::process::Stdio::piped());
    let child = spawn_serving(command, &sockets, &admin).await;
    for _ in 0..3 {
        create_container(&sockets.criguard()).await;
    }
    assert_eq!(scrape_until(&admin, "failed", 3.0).await, 3.0);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("audit events cannot be written"),
        "{stderr}"
    );
    assert!(stderr.contains("/dev/full"), "{stderr}");
}
