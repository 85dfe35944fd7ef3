//! Test cases next to the policies (`NAME.tests.yaml` beside `NAME.yaml`), and the commands
//! that run them: `criguard policy test DIR` and `criguard policy eval`.
//!
//! A case is a request in CRI JSON form (proto JSON: field names as in the proto or in
//! lowerCamelCase), the method, and the expected decision:
//!
//! ```yaml
//! - name: a privileged container is denied
//!   method: CreateContainer
//!   request: {config: {metadata: {name: app}, linux: {security_context: {privileged: true}}}}
//!   expect: deny          # allow (no finding), deny (refused), violation (audit/warn finding)
//!   rule: privileged      # optional: the rule that must decide
//! ```
//!
//! Optional: `client` (the caller), `pod` (what the inventory knows of the request's ids) and
//! `image_names` (the names the runtime gives the request's image ids: the container's and
//! its image volumes'), `user_namespaces` (the runtime said it runs pods in user namespaces).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde::Deserialize;

use super::file::{PolicyError, policy_files, read_policy};
use super::{Call, Evaluation, PolicySet, PolicySettings};
use crate::inventory::Inventory;
use crate::proxy::identity::Caller;
use crate::proxy::inspect::{PodRef, Subject};
use crate::proxy::rpc::message_type;
use crate::proxy::rpc::{Method, Rpc};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub method: String,
    #[serde(default)]
    pub request: serde_json::Value,
    pub expect: Expect,
    pub rule: Option<String>,
    pub client: Option<CaseClient>,
    /// The pod criguard knows the request's container or sandbox id belongs to.
    pub pod: Option<PodRef>,
    /// The names the runtime gives the image ids of the request (its `image`, its image
    /// volumes' `mounts.image`: what criguard learns from ImageStatus answers); absent:
    /// criguard has not seen them.
    pub image_names: Option<Vec<String>>,
    /// Whether the runtime said (Status) that it runs pods in user namespaces; absent: no.
    #[serde(default)]
    pub user_namespaces: bool,
}

/// What criguard knows beside a case's request: the pod of its ids, the names of its image id.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known<'a> {
    pub pod: Option<&'a PodRef>,
    pub image_names: Option<&'a [String]>,
    pub user_namespaces: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
    Violation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseClient {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub exe: Option<String>,
}

/// Encodes a request given in CRI JSON form as the protobuf bytes a client would send.
pub fn encode_request(rpc: &Rpc, request: &serde_json::Value) -> Result<bytes::Bytes, String> {
    let descriptor = message_type(rpc, true).ok_or_else(|| {
        format!(
            "criguard's proto does not know the method {}",
            rpc.method_name()
        )
    })?;
    let request = if request.is_null() {
        &serde_json::json!({})
    } else {
        request
    };
    let message = DynamicMessage::deserialize(descriptor, request)
        .map_err(|e| format!("the request is not a {}: {e}", rpc.method_name()))?;
    debug_assert!(message.descriptor().name().ends_with("Request"));
    Ok(message.encode_to_vec().into())
}

/// Evaluates one request against `set`, with what the inventory knows.
pub fn evaluate(
    set: &PolicySet,
    rpc: &Rpc,
    bytes: &bytes::Bytes,
    client: Option<&CaseClient>,
    known: Known<'_>,
) -> Evaluation {
    let inventory = Inventory::new();
    inventory.learn_user_namespaces(known.user_namespaces);
    if let Some(names) = known.image_names {
        // The request's image ids: the container's (or the pull's) and its image volumes'.
        let images: Vec<crate::cri::ImageSpec> = match rpc.method {
            Method::CreateContainer => crate::cri::CreateContainerRequest::decode(bytes.clone())
                .ok()
                .and_then(|r| r.config)
                .map(|c| {
                    let mounted = c.mounts.into_iter().filter_map(|m| m.image);
                    c.image.into_iter().chain(mounted).collect()
                })
                .unwrap_or_default(),
            Method::PullImage => crate::cri::PullImageRequest::decode(bytes.clone())
                .ok()
                .and_then(|r| r.image)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for image in images.iter().filter(|i| !i.image.is_empty()) {
            inventory.learn_image(&image.image, &names);
        }
    }
    if let Some(pod) = known.pod {
        let subject = Subject::of_request(rpc.method, bytes);
        let sandbox = subject
            .sandbox_id
            .clone()
            .unwrap_or_else(|| "case-sandbox".into());
        let run = Subject {
            pod: Some(pod.clone()),
            ..Subject::default()
        };
        inventory.learn(Method::RunPodSandbox, &run, Some(&sandbox));
        if let Some(container) = &subject.container_id {
            let created = Subject {
                pod: Some(pod.clone()),
                sandbox_id: Some(sandbox),
                container_name: Some("case-container".into()),
                ..Subject::default()
            };
            inventory.learn(Method::CreateContainer, &created, Some(container));
        }
    }
    let caller = client.map(|c| Caller {
        uid: c.uid,
        gid: c.gid,
        pid: None,
        exe: c.exe.as_deref().map(Arc::from),
    });
    set.evaluate(
        Call {
            rpc,
            caller: caller.as_ref(),
            message: Some(&bytes[..]),
            subject: None,
            compressed: false,
        },
        Some(&inventory),
    )
}

/// What a case got: allow, deny or violation, and the deciding rule.
fn decision(evaluation: &Evaluation) -> (Expect, Option<&str>) {
    if let Some(refusal) = evaluation.refusal() {
        return (Expect::Deny, Some(&refusal.rule));
    }
    match evaluation.findings.first() {
        Some(f) => (Expect::Violation, Some(&f.rule)),
        None => (Expect::Allow, None),
    }
}

/// The outcome of `criguard policy test`.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failures: Vec<String>,
}

/// Runs every `*.tests.yaml` in `dir` against the policy file of the same name.
pub fn test_dir(dir: &Path) -> Result<Report, PolicyError> {
    let mut report = Report::default();
    for policy_file in policy_files(dir)? {
        let policy = read_policy(&policy_file)?;
        let cases_file = tests_file_of(&policy_file);
        if !cases_file.exists() {
            report.failures.push(format!(
                "{}: no test cases ({} is missing)",
                policy_file.display(),
                cases_file.display()
            ));
            continue;
        }
        let set = PolicySet::new(vec![policy], &PolicySettings::default());
        let text = std::fs::read_to_string(&cases_file).map_err(|e| PolicyError {
            file: cases_file.clone(),
            key: "(file)".into(),
            problem: e.to_string(),
        })?;
        let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
        let cases: Vec<Case> =
            serde_path_to_error::deserialize(deserializer).map_err(|err| PolicyError {
                file: cases_file.clone(),
                key: err.path().to_string(),
                problem: err.into_inner().to_string(),
            })?;
        for case in cases {
            let rpc = Rpc::named(&case.method);
            let label = format!("{}: {}", cases_file.display(), case.name);
            let bytes = match encode_request(&rpc, &case.request) {
                Ok(bytes) => bytes,
                Err(problem) => {
                    report.failures.push(format!("{label}: {problem}"));
                    continue;
                }
            };
            let known = Known {
                pod: case.pod.as_ref(),
                image_names: case.image_names.as_deref(),
                user_namespaces: case.user_namespaces,
            };
            let evaluation = evaluate(&set, &rpc, &bytes, case.client.as_ref(), known);
            let (got, rule) = decision(&evaluation);
            let rule_ok = case.rule.as_deref().is_none_or(|want| rule == Some(want));
            if got == case.expect && rule_ok {
                report.passed += 1;
            } else {
                report.failures.push(format!(
                    "{label}: expected {:?}{}, got {got:?}{}{}",
                    case.expect,
                    case.rule
                        .as_deref()
                        .map(|r| format!(" by rule {r:?}"))
                        .unwrap_or_default(),
                    rule.map(|r| format!(" by rule {r:?}")).unwrap_or_default(),
                    evaluation
                        .findings
                        .first()
                        .map(|f| format!(" ({})", f.describe()))
                        .unwrap_or_default(),
                ));
            }
        }
    }
    Ok(report)
}

fn tests_file_of(policy_file: &Path) -> PathBuf {
    let stem = policy_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    policy_file.with_file_name(format!("{stem}.tests.yaml"))
}
