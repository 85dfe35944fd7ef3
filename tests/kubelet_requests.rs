//! The CRI requests a real kubelet (1.32, containerd 1.6) sent for typical pods
//! (tests/fixtures/kubelet-requests, with its README), judged by each shipped Pod Security
//! policy: a pod is admitted when none of its requests is refused. Each level must decide as
//! Kubernetes' Pod Security Admission decides the pod at that level — where the CRI cannot
//! tell two pods apart, the reading that never denies what the level admits.

use std::path::{Path, PathBuf};

use criguard::policy::cases::{Known, evaluate};
use criguard::policy::{Call, PolicySet, PolicySettings, file};
use criguard::proxy::rpc::Rpc;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kubelet-requests"
);

/// Pod Security Admission's decision for each recorded pod: (pod, baseline, restricted),
/// `true` for admitted.
const ADMISSION: [(&str, bool, bool); 6] = [
    // No securityContext: baseline admits; restricted wants runAsNonRoot, seccomp,
    // allowPrivilegeEscalation: false and capabilities dropped.
    ("plain", true, false),
    // Written to the restricted level.
    ("runtime-default", true, true),
    ("privileged", false, false),
    // hostNetwork, hostPID, hostIPC and hostPath volumes.
    ("host-ns", false, false),
    // NET_ADMIN and SYS_TIME added (outside baseline's list); its sysctl and Localhost
    // seccomp profile are allowed.
    ("caps", false, false),
    // shareProcessNamespace, init container, emptyDirs: baseline admits; no securityContext,
    // so restricted does not.
    ("projected", true, false),
];

/// The requests of one pod, in the order the kubelet sent them: (method, bytes, file).
fn requests(pod: &str) -> Vec<(String, Vec<u8>, PathBuf)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(FIXTURES).join(pod))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let method = name.split('-').nth(1).unwrap().to_string();
            (method, std::fs::read(&path).unwrap(), path)
        })
        .collect()
}

/// The refusals each policy of `set` makes of `pod`'s requests, as the caller would read
/// them: (policy, refusal). The runtime names each image id as the pod spec did (the kubelet
/// asks ImageStatus before CreateContainer, and criguard learns the names from the answer).
fn refusals(set: &PolicySet, pod: &str) -> Vec<(String, String)> {
    let mut refusals = Vec::new();
    for (method, bytes, path) in requests(pod) {
        let rpc = Rpc::named(&method);
        let named = image_named(&method, &bytes);
        let names = named.map(|n| vec![n]);
        let known = Known {
            pod: None,
            image_names: names.as_deref(),
            user_namespaces: false,
        };
        let evaluation = evaluate(set, &rpc, &bytes.into(), None, known);
        for finding in evaluation.findings.iter().filter(|f| f.refuses()) {
            refusals.push((
                finding.policy.to_string(),
                format!(
                    "{}: {}",
                    path.file_name().unwrap().to_string_lossy(),
                    finding.describe()
                ),
            ));
        }
    }
    refusals
}

/// The image as the pod spec names it, in a CreateContainer.
fn image_named(method: &str, bytes: &[u8]) -> Option<String> {
    use prost::Message;
    (method == "CreateContainer")
        .then(|| criguard::cri::CreateContainerRequest::decode(bytes).ok())
        .flatten()
        .and_then(|r| r.config?.image)
        .map(|i| i.user_specified_image)
}

/// Every shipped policy, loaded together.
fn shipped() -> PolicySet {
    file::load_dir(Path::new("policies"), &PolicySettings::default()).unwrap()
}

fn level(name: &str) -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("{name}.yaml");
    std::fs::copy(Path::new("policies").join(&file), dir.path().join(&file)).unwrap();
    file::load_dir(dir.path(), &PolicySettings::default()).unwrap()
}

/// With the whole shipped set loaded, each Pod Security policy decides every recorded pod as
/// Pod Security Admission does at its level, and no other policy refuses a kubelet's request
/// for these pods (their images come from registry.k8s.io; cel-examples only audits).
#[test]
fn each_shipped_level_decides_every_recorded_pod_as_pod_security_admission() {
    let set = shipped();
    let mut wrong = Vec::new();
    for (pod, admitted_baseline, admitted_restricted) in ADMISSION {
        let refused = refusals(&set, pod);
        for (name, admitted) in [
            ("pss-baseline", admitted_baseline),
            ("pss-restricted", admitted_restricted),
        ] {
            let by: Vec<_> = refused.iter().filter(|(p, _)| p == name).collect();
            if by.is_empty() != admitted {
                wrong.push(format!(
                    "{pod} under {name}: Pod Security Admission {}, criguard {}",
                    if admitted { "admits" } else { "denies" },
                    if by.is_empty() {
                        "admits".to_string()
                    } else {
                        format!("refuses: {by:#?}")
                    }
                ));
            }
        }
        let others: Vec<_> = refused
            .iter()
            .filter(|(p, _)| !p.starts_with("pss-"))
            .collect();
        if !others.is_empty() {
            wrong.push(format!("{pod}: refused by {others:#?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A kubelet with another root directory (`--root-dir`, as some distributions set it) mounts
/// its volumes from there: with `kubeletRootDir` set, the same pods pass host-paths.
#[test]
fn another_kubelet_root_dir_is_not_a_host_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/pss-baseline.yaml",
        dir.path().join("pss-baseline.yaml"),
    )
    .unwrap();
    let set = file::load_dir(
        dir.path(),
        &PolicySettings {
            kubelet_root_dir: "/var/lib/k0s/kubelet".into(),
            ..PolicySettings::default()
        },
    )
    .unwrap();
    let create = moved_create_container("/var/lib/kubelet", "/var/lib/k0s/kubelet");
    let rpc = Rpc::from_path("/runtime.v1.RuntimeService/CreateContainer");
    let judge = |set: &PolicySet| {
        set.evaluate(
            Call {
                rpc: &rpc,
                caller: None,
                message: Some(&create),
                compressed: false,
                subject: None,
            },
            None,
        )
        .refusal()
        .map(|r| r.describe())
    };
    assert_eq!(judge(&set), None, "the moved root is the kubelet's");
    let default = level("pss-baseline");
    let refused = judge(&default).expect("under the default root, those are host paths");
    assert!(refused.contains("/var/lib/k0s/kubelet/pods/"), "{refused}");
}

/// The plain pod's CreateContainer with every host path under `from` moved under `to`.
fn moved_create_container(from: &str, to: &str) -> Vec<u8> {
    use prost::Message;
    let (_, bytes, _) = requests("plain")
        .into_iter()
        .find(|(m, _, _)| m == "CreateContainer")
        .unwrap();
    let mut request = criguard::cri::CreateContainerRequest::decode(&bytes[..]).unwrap();
    let config = request.config.as_mut().unwrap();
    assert!(!config.mounts.is_empty());
    for mount in &mut config.mounts {
        assert!(mount.host_path.starts_with(from), "{}", mount.host_path);
        mount.host_path = mount.host_path.replacen(from, to, 1);
    }
    request.encode_to_vec()
}
