//! Policies through real sockets: denials that name the policy, rule and field and never reach
//! the runtime, undecodable requests refused rather than forwarded blind, exemptions, and
//! reloads that swap a good set in and keep the old one on a bad file.

mod support;

use std::path::Path;
use std::time::Duration;

use criguard::config::Overrides;
use criguard::cri::*;
use criguard::fake::samples;
use http::HeaderMap;
use prost::Message;
use support::*;
use tokio_util::sync::CancellationToken;

const CREATE: &str = "/runtime.v1.RuntimeService/CreateContainer";
const LIST: &str = "/runtime.v1.RuntimeService/ListContainers";

/// The sample CreateContainer with its container's security context set by `set`.
fn container_with(set: impl FnOnce(&mut LinuxContainerSecurityContext)) -> CreateContainerRequest {
    let mut request = samples::create_container_request();
    let security = request
        .config
        .as_mut()
        .unwrap()
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    set(security);
    request
}

fn privileged_container() -> CreateContainerRequest {
    container_with(|security| security.privileged = true)
}

fn compliant_container() -> CreateContainerRequest {
    container_with(|security| {
        security.privileged = false;
        security.seccomp = Some(SecurityProfile::default());
        security.masked_paths = vec!["/proc/kcore".into()];
        security.readonly_paths = vec!["/proc/sys".into()];
        security.capabilities = None;
    })
}

const RESTRICT_EXEC: &str = include_str!("../policies/restrict-exec.yaml");

/// criguard with the policies of `dir` in front of a fake runtime, which keeps the pods and
/// containers made through it.
async fn start_on_fake(sockets: &Sockets, dir: &Path) -> (CancellationToken, Criguard) {
    let runtime = start_fake_runtime(&sockets.runtime(), criguard::fake::FakeRuntime::new()).await;
    let config = format!("policies: {}\n", dir.display());
    let criguard = Criguard::start_with_config(sockets, Some(&config), Overrides::default()).await;
    (runtime, criguard)
}

async fn start(sockets: &Sockets, policies: &Path, extra: &str) -> (RecordingRuntime, Criguard) {
    let runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    let config = format!("policies: {}\n{extra}", policies.display());
    let criguard = Criguard::start_with_config(sockets, Some(&config), Overrides::default()).await;
    (runtime, criguard)
}

async fn create(client: &mut RawClient, request: &CreateContainerRequest) -> (Option<i32>, String) {
    let answer = client
        .call(
            CREATE,
            grpc_frame(&request.encode_to_vec()),
            &HeaderMap::new(),
        )
        .await
        .unwrap();
    (
        answer.grpc_status(),
        answer.grpc_message().unwrap_or_default(),
    )
}

fn created(runtime: &RecordingRuntime) -> usize {
    runtime
        .requests()
        .iter()
        .filter(|r| r.path == CREATE)
        .count()
}

#[tokio::test]
async fn a_privileged_container_is_denied_by_name_and_never_reaches_the_runtime() {
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let (runtime, criguard) = start(&sockets, &dir, "").await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let (code, message) = create(&mut client, &privileged_container()).await;
    assert_eq!(code, Some(tonic::Code::PermissionDenied as i32));
    let pod = samples::pod_config().metadata.unwrap();
    assert_eq!(
        message,
        format!(
            "criguard: denied by policy \"pss-baseline\", rule \"privileged\": container \"app\" in pod \"{}/{}\" requests privileged mode",
            pod.namespace, pod.name
        )
    );
    assert_eq!(created(&runtime), 0);
    // Encoded once: prost writes map entries in random order.
    let sent = grpc_frame(&compliant_container().encode_to_vec());
    let answer = client
        .call(CREATE, sent.clone(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
    assert_eq!(created(&runtime), 1);
    // The runtime received the caller's bytes, unchanged.
    let reached: Vec<_> = runtime
        .requests()
        .into_iter()
        .filter(|r| r.path == CREATE)
        .collect();
    assert_eq!(reached[0].body, sent);
}

#[tokio::test]
async fn an_undecodable_request_that_must_be_inspected_is_refused_not_forwarded() {
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let (runtime, criguard) = start(&sockets, &dir, "").await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let garbage = grpc_frame(b"\x0a\xff\xff\xff\xff\x0f garbage");
    let answer = client
        .call(CREATE, garbage.clone(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::InvalidArgument as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(
        message.starts_with(
            "criguard: policy \"pss-baseline\" must inspect this request and cannot decode it"
        ),
        "{message}"
    );
    assert_eq!(created(&runtime), 0);
    // No policy looks at ListContainers: its bytes are not decoded, whatever they are.
    let answer = client
        .call(LIST, garbage.clone(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    // (criguard's own start-up ListContainers, for the pod inventory, has an empty body.)
    assert!(
        runtime
            .requests()
            .iter()
            .any(|r| r.path == LIST && r.body == garbage)
    );
}

#[tokio::test]
async fn exempt_namespaces_pass_by_configuration_not_by_editing_policies() {
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let namespace = samples::pod_config().metadata.unwrap().namespace;
    let extra = format!("policyExemptions:\n  namespaces: [\"{namespace}\"]\n");
    let (runtime, criguard) = start(&sockets, &dir, &extra).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let (code, message) = create(&mut client, &privileged_container()).await;
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(created(&runtime), 1);
}

/// Points `dir/..data` at a fresh directory holding `files`, as a ConfigMap update does, and
/// links each file name to `..data/NAME`.
fn configmap_update(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_reloads_and_a_broken_file_keeps_the_policies_in_force() {
    let sockets = Sockets::new();
    let dir = sockets.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    configmap_update(&dir, 1, &[("pss.yaml", BASELINE)]);
    let _runtime = RecordingRuntime::start(&sockets.runtime(), |_| Answer::ok(b"")).await;
    // The binary, for its metrics: a rejected reload is seen as it happens, not slept for.
    let admin = sockets.dir.path().join("admin.sock");
    let mut command = serve_command(&sockets);
    command
        .arg("--policies")
        .arg(&dir)
        .arg("--admin-address")
        .arg(&admin)
        .stderr(std::process::Stdio::null());
    let _criguard = Running(spawn_serving(command, &sockets, &admin).await);
    let mut client = RawClient::connect(sockets.criguard()).await.unwrap();
    assert_eq!(
        create(&mut client, &privileged_container()).await.0,
        Some(tonic::Code::PermissionDenied as i32)
    );

    // A broken file: the reload fails, and the old set stays.
    configmap_update(
        &dir,
        2,
        &[(
            "pss.yaml",
            "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nspec: [",
        )],
    );
    let failed = "criguard_policy_reload_total{result=\"failure\"}";
    let mut failures = 0.0;
    for _ in 0..100 {
        let (_, text) = admin_get(&admin, "GET", "/metrics").await;
        failures = samples(&text).get(failed).copied().unwrap_or(0.0);
        if failures > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 1.0, "the broken file was read and rejected");
    assert_eq!(
        create(&mut client, &privileged_container()).await.0,
        Some(tonic::Code::PermissionDenied as i32)
    );

    // A good file in audit mode: calls pass again.
    let audit_only = BASELINE.replace("mode: enforce", "mode: audit");
    configmap_update(&dir, 3, &[("pss.yaml", &audit_only)]);
    let mut passed = false;
    for _ in 0..50 {
        if create(&mut client, &privileged_container()).await.0 == Some(0) {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        passed,
        "the reloaded policy (audit mode) lets the call pass"
    );
}

#[tokio::test]
async fn the_audit_trail_records_which_policy_denied() {
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let log = sockets.dir.path().join("audit.log");
    let extra = format!("audit:\n  path: {}\n", log.display());
    let (_runtime, criguard) = start(&sockets, &dir, &extra).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    create(&mut client, &privileged_container()).await;
    criguard.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["code"], "PermissionDenied");
    assert_eq!(event["decision"]["result"], "denied");
    assert_eq!(event["decision"]["by"], "policy pss-baseline (enforce)");
    assert!(
        event["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("requests privileged mode")
    );
}

/// The whole shipped set loaded (policies evaluated in file order, `cel-examples`, in audit
/// mode, before `pss-baseline`): the audit trail records the enforced refusal as the decision,
/// and the audit-mode findings beside it.
#[tokio::test]
async fn with_every_shipped_policy_the_audit_trail_records_the_refusal() {
    let sockets = Sockets::new();
    let dir = sockets.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir("policies").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !name.ends_with(".tests.yaml") {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    let log = sockets.dir.path().join("audit.log");
    let extra = format!("audit:\n  path: {}\n", log.display());
    let (_runtime, criguard) = start(&sockets, &dir, &extra).await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let (code, message) = create(&mut client, &privileged_container()).await;
    assert_eq!(code, Some(7), "{message}");
    criguard.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["code"], "PermissionDenied");
    assert_eq!(event["decision"]["result"], "denied", "{event}");
    let by = event["decision"]["by"].as_str().unwrap();
    assert!(by.ends_with("(enforce)"), "{event}");
    assert_eq!(
        event["decision"]["reason"].as_str().unwrap(),
        message.trim_start_matches("criguard: "),
        "the refusal the caller got"
    );
    let findings = event["decision"]["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f
            .as_str()
            .unwrap()
            .starts_with("policy cel-examples (audit)")),
        "{event}"
    );
}

#[test]
fn random_bytes_as_create_container_and_run_pod_sandbox_never_panic() {
    // A fuzz-style run through decoding and every shipped policy: each input is answered.
    let set = criguard::policy::file::load_dir(Path::new("policies"), &Default::default()).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = samples::create_container_request().encode_to_vec();
    for method in ["CreateContainer", "RunPodSandbox", "PullImage", "ExecSync"] {
        let rpc = criguard::proxy::rpc::Rpc::named(method);
        for i in 0..3000 {
            let mut bytes = if i % 2 == 0 {
                valid.clone()
            } else {
                (0..(next() % 200)).map(|_| next() as u8).collect()
            };
            // Flip some bytes of the valid message too.
            for _ in 0..(next() % 8) {
                if !bytes.is_empty() {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            let bytes = bytes::Bytes::from(bytes);
            let _ = criguard::policy::cases::evaluate(&set, &rpc, &bytes, None, Default::default());
        }
    }
}

/// Pod Security policies alone need no inventory (their calls name their pod), so criguard
/// learns nothing then; a policy on exec added later must still know the pods of containers
/// created meanwhile: the inventory is read again from the runtime when it is needed again.
#[tokio::test]
async fn an_exec_policy_added_later_knows_the_containers_created_before_it() {
    use criguard::client;
    let sockets = Sockets::new();
    let dir = policy_dir(&sockets, &[]);
    configmap_update(&dir, 1, &[("pss.yaml", BASELINE)]);
    let (_runtime, criguard) = start_on_fake(&sockets, &dir).await;

    let mut runtime = client::runtime(client::channel(&criguard.socket).await.unwrap());
    let mut pod = samples::pod_config();
    pod.metadata.as_mut().unwrap().namespace = "prod-payments".into();
    let (_, container) = start_pod(&mut runtime, pod, compliant_container()).await;
    let exec = ExecSyncRequest {
        container_id: container,
        cmd: vec!["echo".into(), "in".into()],
        timeout: 5,
    };
    assert!(runtime.exec_sync(exec.clone()).await.is_ok());

    configmap_update(
        &dir,
        2,
        &[
            ("pss.yaml", BASELINE),
            ("restrict-exec.yaml", RESTRICT_EXEC),
        ],
    );
    let mut refused = None;
    for _ in 0..50 {
        match runtime.exec_sync(exec.clone()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("the exec policy refuses the exec once it is in force");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("prod-payments/web-1"),
        "{}",
        status.message()
    );
}

/// A container id given twice: the runtime execs into the last one (protobuf's rule for a field
/// that appears twice), so the policy must judge that one, not the first.
#[tokio::test]
async fn an_exec_naming_two_containers_is_judged_on_the_one_the_runtime_uses() {
    use criguard::client::{self, RawClient, grpc_frame};
    let sockets = Sockets::new();
    let dir = policy_dir(&sockets, &[("restrict-exec.yaml", RESTRICT_EXEC)]);
    let (_runtime, criguard) = start_on_fake(&sockets, &dir).await;

    let mut runtime = client::runtime(client::channel(&criguard.socket).await.unwrap());
    let pod_in = |namespace: &str, name: &str| {
        let mut pod = samples::pod_config();
        let metadata = pod.metadata.as_mut().unwrap();
        metadata.namespace = namespace.into();
        metadata.name = name.into();
        metadata.uid = format!("uid-{name}");
        pod
    };
    let (_, open) = start_pod(&mut runtime, pod_in("dev", "tools"), compliant_container()).await;
    let (_, protected) = start_pod(
        &mut runtime,
        pod_in("prod-payments", "web-1"),
        compliant_container(),
    )
    .await;
    let exec = |container: &str| ExecSyncRequest {
        container_id: container.into(),
        cmd: vec!["id".into()],
        timeout: 5,
    };

    let mut raw = RawClient::connect(&criguard.socket).await.unwrap();
    let path = "/runtime.v1.RuntimeService/ExecSync";
    let allowed = raw
        .call(
            path,
            grpc_frame(&exec(&open).encode_to_vec()),
            &HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        allowed.grpc_status(),
        Some(0),
        "{:?}",
        allowed.grpc_message()
    );

    let mut twice = exec(&open).encode_to_vec();
    twice.extend(exec(&protected).encode_to_vec());
    assert_eq!(
        ExecSyncRequest::decode(twice.as_slice())
            .unwrap()
            .container_id,
        protected,
        "a runtime reads the last container id"
    );
    let refused = raw
        .call(path, grpc_frame(&twice), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(
        refused.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32),
        "{:?}",
        refused.grpc_message()
    );
    let message = refused.grpc_message().unwrap_or_default();
    assert!(message.contains("prod-payments/web-1"), "{message}");
}

/// criguard reads only uncompressed messages: a compressed call that a policy must judge is
/// refused (a runtime that accepts gzip would otherwise run an exec nobody looked at), and one
/// no policy looks at passes unchanged.
#[tokio::test]
async fn a_compressed_request_that_must_be_inspected_is_refused_not_forwarded() {
    const EXEC: &str = "/runtime.v1.RuntimeService/ExecSync";
    let sockets = Sockets::new();
    let dir = policy_dir(&sockets, &[("restrict-exec.yaml", RESTRICT_EXEC)]);
    let (runtime, criguard) = start(&sockets, &dir, "").await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let compressed = |payload: &[u8]| {
        let mut frame = grpc_frame(payload).to_vec();
        frame[0] = 1;
        bytes::Bytes::from(frame)
    };
    let mut gzip = HeaderMap::new();
    gzip.insert("grpc-encoding", "gzip".parse().unwrap());
    // A gzip stream's first bytes: not a protobuf message criguard could read.
    let exec =
        compressed(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\x01\x0a\x00\xf5\xffsome-container");

    let answer = client.call(EXEC, exec, &gzip).await.unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::InvalidArgument as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(
        message.contains("policy \"restrict-exec\"") && message.contains("compressed ExecSync"),
        "{message}"
    );
    assert!(!runtime.requests().iter().any(|r| r.path == EXEC));

    let list = compressed(b"\x1f\x8b\x08\x00 any bytes");
    let answer = client.call(LIST, list.clone(), &gzip).await.unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    assert!(
        runtime
            .requests()
            .iter()
            .any(|r| r.path == LIST && r.body == list)
    );
}

/// containerd 1.x serves CRI v1alpha2 beside v1 on the same socket, with the same messages: a
/// call naming the older version is judged like its v1 twin, not waved through as unknown.
#[tokio::test]
async fn a_v1alpha2_call_is_judged_like_its_v1_twin() {
    const CREATE_V1ALPHA2: &str = "/runtime.v1alpha2.RuntimeService/CreateContainer";
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let (runtime, criguard) = start(&sockets, &dir, "").await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let privileged = grpc_frame(&privileged_container().encode_to_vec());
    let answer = client
        .call(CREATE_V1ALPHA2, privileged, &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(message.contains("requests privileged mode"), "{message}");

    let compliant = grpc_frame(&compliant_container().encode_to_vec());
    let answer = client
        .call(CREATE_V1ALPHA2, compliant.clone(), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
    let reached: Vec<_> = runtime
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("CreateContainer"))
        .collect();
    assert_eq!(
        reached.len(),
        1,
        "only the compliant one reaches the runtime"
    );
    assert_eq!(reached[0].path, CREATE_V1ALPHA2);
    assert_eq!(reached[0].body, compliant);
}

/// The runtime's socket serves more than CRI (containerd's own API: `ctr run --privileged`
/// through criguard's socket would create what every policy denies). While policies are in
/// force only CRI calls pass; CRI methods criguard does not know yet still do.
#[tokio::test]
async fn while_policies_are_in_force_only_cri_calls_pass() {
    const TASKS: &str = "/containerd.services.tasks.v1.Tasks/Create";
    const NEWER_CRI: &str = "/runtime.v1.RuntimeService/NotYetInTheCri";
    let sockets = Sockets::new();
    let dir = baseline_dir(&sockets);
    let (runtime, criguard) = start(&sockets, &dir, "").await;
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();

    let answer = client
        .call(TASKS, grpc_frame(b"\x0a\x03abc"), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(
        answer.grpc_status(),
        Some(tonic::Code::PermissionDenied as i32)
    );
    let message = answer.grpc_message().unwrap();
    assert!(
        message.contains(TASKS) && message.contains("not a CRI call"),
        "{message}"
    );
    assert!(!runtime.requests().iter().any(|r| r.path == TASKS));

    let answer = client
        .call(NEWER_CRI, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0), "{:?}", answer.grpc_message());
    assert!(runtime.requests().iter().any(|r| r.path == NEWER_CRI));
}

/// As the kubelet starts a container: ImageStatus for the pod spec's image, then CreateContainer
/// with the id it answered and the pod spec's name beside it. criguard learns the id's names
/// from the answer; an id run under a name the runtime does not give it is refused.
#[tokio::test]
async fn an_image_id_runs_only_under_a_name_the_runtime_gives_it() {
    use criguard::client;
    let sockets = Sockets::new();
    let registries = "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: registries}\nspec:\n  mode: enforce\n  match: {methods: [CreateContainer]}\n  rules:\n    - name: trusted\n      images: {allow: [registry.k8s.io]}\n";
    let dir = policy_dir(&sockets, &[("registries.yaml", registries)]);
    let (_runtime, criguard) = start_on_fake(&sockets, &dir).await;
    let channel = client::channel(&criguard.socket).await.unwrap();
    let mut runtime = client::runtime(channel.clone());
    let mut images = client::image(channel);

    let pause = "registry.k8s.io/pause:3.9";
    let id = image_status(&mut images, pause)
        .await
        .expect("the fake runtime has the pause image")
        .id;
    let sandbox = runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(samples::pod_config()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |named: &str| {
        let mut request = samples::create_container_request();
        request.pod_sandbox_id = sandbox.clone();
        request.config.as_mut().unwrap().image = Some(ImageSpec {
            image: id.clone(),
            user_specified_image: named.into(),
            ..Default::default()
        });
        request
    };
    runtime
        .create_container(create(pause))
        .await
        .expect("the id under the name the runtime gave it");

    // Another image of an allowed registry: the name passes the list, the id is not that image.
    let denied = runtime
        .create_container(create("registry.k8s.io/coredns/coredns:v1.11.1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("is not registry.k8s.io/coredns/coredns:v1.11.1")
            && denied.message().contains(pause),
        "{}",
        denied.message()
    );
}

/// Kubernetes 1.36's Pod Security lets root run in a pod with `hostUsers: false`: its user
/// namespace maps root to an unprivileged host uid. criguard relaxes run-as-non-root only once
/// the runtime has said (its Status answer, which the kubelet asks for every few seconds) that
/// it runs pods so: a runtime that ignores `userns_options` would run the host's root.
#[tokio::test]
async fn root_in_a_user_namespace_passes_once_the_runtime_says_it_runs_them() {
    const STATUS: &str = "/runtime.v1.RuntimeService/Status";
    let sockets = Sockets::new();
    let dir = policy_dir(
        &sockets,
        &[(
            "pss-restricted.yaml",
            include_str!("../policies/pss-restricted.yaml"),
        )],
    );
    let status = StatusResponse {
        runtime_handlers: vec![RuntimeHandler {
            name: String::new(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: true,
            }),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let runtime = RecordingRuntime::start(&sockets.runtime(), move |r| {
        Answer::ok(if r.path == STATUS { &status } else { b"" })
    })
    .await;
    let config = format!("policies: {}\n", dir.display());
    let criguard = Criguard::start_with_config(&sockets, Some(&config), Overrides::default()).await;
    let mapping = IdMapping {
        host_id: 100_000,
        container_id: 0,
        length: 65_536,
    };
    let root_in_userns = container_with(|security| {
        security.privileged = false;
        security.seccomp = Some(SecurityProfile::default());
        security.masked_paths = vec!["/proc/kcore".into()];
        security.readonly_paths = vec!["/proc/sys".into()];
        security.capabilities = Some(Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        security.no_new_privs = true;
        security.run_as_user = Some(Int64Value { value: 0 });
        security.namespace_options = Some(NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping],
                gids: vec![mapping],
            }),
            ..Default::default()
        });
    });
    let mut client = RawClient::connect(&criguard.socket).await.unwrap();
    let (code, message) = create(&mut client, &root_in_userns).await;
    assert_eq!(
        code,
        Some(tonic::Code::PermissionDenied as i32),
        "{message}"
    );
    assert!(message.contains("run-as-non-root"), "{message}");
    assert_eq!(created(&runtime), 0);

    let answer = client
        .call(STATUS, grpc_frame(b""), &HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(answer.grpc_status(), Some(0));
    let (code, message) = create(&mut client, &root_in_userns).await;
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(created(&runtime), 1);
}
