//! Policy checks on runtime calls: the last line of defence on a node, which sees static pods
//! and direct crictl calls that admission webhooks never see.
//!
//! A [`PolicySet`] is immutable and compiled; evaluating a call is pure and synchronous. A call
//! that no policy matches is never decoded. See `file.rs` for the file format, `checks/` for
//! the built-in checks, `cel.rs` for CEL rules, `reload.rs` for reloading; the layer that
//! applies them is `layers/policy.rs`.

#[doc(hidden)]
pub mod agreement;
pub mod cases;
pub mod cel;
pub mod checks;
pub mod events;
pub mod file;
pub mod image_ref;
pub mod reload;
pub mod view;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use prost::Message;

use self::checks::{Check, Target};
use self::file::{CelExpr, FailurePolicy, MatchSpec, Mode};
use self::view::{
    CreateContainerView, ImageView, PodLabels, PodMetadataView, PodView, PullImageView,
    RunPodSandboxLabels, RunPodSandboxView, SandboxConfigLabels, View,
};
use crate::glob::glob_match;
use crate::inventory::Inventory;
use crate::proxy::identity::Caller;
use crate::proxy::inspect::{PodRef, Subject};
use crate::proxy::rpc::{Method, MethodSet, Names, Rpc};
use crate::proxy::wire::DecodeError;
use crate::telemetry::metrics::POLICY_DECISIONS_TOTAL;

/// A compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Shared with every evaluation and metric label that names the policy.
    pub name: Arc<str>,
    pub file: PathBuf,
    pub mode: Mode,
    pub failure_policy: FailurePolicy,
    pub methods: MethodSet,
    pub matching: MatchSpec,
    pub rules: Vec<Rule>,
    /// Its count of allowed calls, registered on its first allowed call.
    pub allowed: OnceLock<metrics::Counter>,
}

impl Policy {
    /// Counts a call this policy allowed without a finding.
    pub fn count_allowed(&self) {
        self.allowed
            .get_or_init(|| {
                metrics::counter!(POLICY_DECISIONS_TOTAL, "policy" => self.name.clone(), "rule" => "", "decision" => "allow", "mode" => "")
            })
            .increment(1);
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    /// Replaces the check's own words (and is required for CEL rules).
    pub message: Option<String>,
}

#[derive(Clone, Debug)]
pub enum RuleKind {
    Check(Check),
    Cel(CelExpr),
}

/// The kubelet's `--root-dir` unless configured otherwise (`kubeletRootDir`).
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

/// What the policies need to know of the node, from criguard's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    /// Pod namespaces (globs) no policy applies to (`policyExemptions.namespaces`).
    pub exempt_namespaces: Vec<String>,
    /// The kubelet's root directory (`kubeletRootDir`): the volumes, `/etc/hosts` and
    /// termination logs it mounts into containers live under `<root>/pods/`.
    pub kubelet_root_dir: String,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            exempt_namespaces: Vec::new(),
            kubelet_root_dir: DEFAULT_KUBELET_ROOT_DIR.into(),
        }
    }
}

/// Every policy in force, and the settings they are judged with.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    exempt_namespaces: Vec<String>,
    /// `<kubelet root dir>/pods/`: mounts from below it are the kubelet's own, not host paths.
    kubelet_pods_dir: String,
    /// What the CEL rules read (the rest of their variables is not built).
    cel_needs: self::cel::Needs,
    /// Whether a policy selects pods by label or a CEL rule reads `pod`: only then are the
    /// pod's labels and annotations decoded.
    needs_pod_labels: bool,
}

/// What a rule found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// The call breaks the rule; the text says how.
    Violation(String),
    /// The rule could not be evaluated (undecodable body, CEL error).
    Error(String),
}

/// An enforcing policy's refusal of a call: PERMISSION_DENIED, or INVALID_ARGUMENT when the
/// policy must read the request and cannot decode it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyRefusal {
    pub policy: Arc<str>,
    pub rule: String,
    /// What the caller reads (the policy, the rule and the reason, in words).
    pub message: String,
    pub undecodable: bool,
}

/// One rule's finding on a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub policy: Arc<str>,
    pub rule: String,
    pub mode: Mode,
    pub failure_policy: FailurePolicy,
    pub outcome: FindingKind,
    /// The body could not be decoded at all (as opposed to a rule failing).
    pub undecodable: bool,
}

impl Finding {
    /// Whether the call must be refused.
    pub fn refuses(&self) -> bool {
        self.mode == Mode::Enforce
            && match self.outcome {
                FindingKind::Violation(_) => true,
                FindingKind::Error(_) => self.failure_policy == FailurePolicy::Fail,
            }
    }

    /// `denied by policy "p", rule "r": ...`, for the caller and the log.
    /// The refusal this finding makes, when it refuses the call.
    pub fn refusal(&self) -> PolicyRefusal {
        PolicyRefusal {
            policy: self.policy.clone(),
            rule: self.rule.clone(),
            message: self.describe(),
            undecodable: self.undecodable,
        }
    }

    pub fn describe(&self) -> String {
        match &self.outcome {
            FindingKind::Violation(text) if self.refuses() => {
                format!(
                    "denied by policy {:?}, rule {:?}: {text}",
                    self.policy, self.rule
                )
            }
            FindingKind::Violation(text) => format!(
                "violates policy {:?} ({}), rule {:?}: {text}",
                self.policy,
                self.mode.as_str(),
                self.rule
            ),
            FindingKind::Error(text) if self.undecodable => format!(
                "policy {:?} must inspect this request and cannot decode it: {text}",
                self.policy
            ),
            FindingKind::Error(text) => format!(
                "policy {:?}, rule {:?} could not be evaluated (failurePolicy: Fail): {text}",
                self.policy, self.rule
            ),
        }
    }
}

/// The result of evaluating a call.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    /// The policies that matched the call (evaluated), by name.
    pub evaluated: Vec<Arc<str>>,
    pub findings: Vec<Finding>,
}

impl Evaluation {
    /// The first finding that refuses the call, if any.
    pub fn refusal(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.refuses())
    }
}

/// A call as the policies see it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub rpc: &'a Rpc,
    pub caller: Option<&'a Caller>,
    /// The first request message; `None` for a call without one. The views borrow from it.
    pub message: Option<&'a [u8]>,
    /// The message is compressed: criguard cannot read it, so the policies on the call treat
    /// it as undecodable (refused, or passed as an error with `failurePolicy: Ignore`).
    pub compressed: bool,
    /// What the call is about, when a layer above has read it already; else it is read here.
    pub subject: Option<&'a Subject>,
}

/// What a `method` request is about, with what the inventory knows of the ids it names.
pub fn read_subject(method: Method, message: &[u8], inventory: Option<&Inventory>) -> Subject {
    let mut subject = Subject::of_request(method, message);
    if let Some(inventory) = inventory {
        inventory.complete(&mut subject);
    }
    subject
}

/// The request decoded for the checks: views over the request's bytes.
#[derive(Debug, Default)]
struct Decoded<'a> {
    run: Option<RunPodSandboxView<'a>>,
    create: Option<CreateContainerView<'a>>,
    pull: Option<PullImageView<'a>>,
    /// The pod's labels and annotations, when a policy needs them.
    labels: Option<PodLabels>,
}

impl<'a> Decoded<'a> {
    fn decode(method: Method, bytes: &'a [u8], with_labels: bool) -> Result<Self, DecodeError> {
        let mut decoded = match method {
            Method::RunPodSandbox => Decoded {
                run: Some(RunPodSandboxView::decode(bytes)?),
                ..Decoded::default()
            },
            Method::CreateContainer => Decoded {
                create: Some(CreateContainerView::decode(bytes)?),
                ..Decoded::default()
            },
            Method::PullImage => Decoded {
                pull: Some(PullImageView::decode(bytes)?),
                ..Decoded::default()
            },
            // Calls that name only ids: read whole by a protobuf decoder first, so that the ids
            // the policies judge are those the runtime will read, or the call is refused.
            _ => {
                crate::proxy::inspect::validate(method, bytes)?;
                Decoded::default()
            }
        };
        if with_labels {
            let labels = match method {
                Method::RunPodSandbox => RunPodSandboxLabels::decode(bytes).map(|r| r.config),
                Method::CreateContainer | Method::PullImage => {
                    SandboxConfigLabels::decode(bytes).map(|r| r.sandbox_config)
                }
                _ => Ok(None),
            };
            decoded.labels = labels.map_err(|_| DecodeError::invalid_message(0))?;
        }
        Ok(decoded)
    }

    /// The pod being made (RunPodSandbox): its settings are judged there.
    fn pod(&self) -> Option<&PodView<'a>> {
        self.run.as_ref().and_then(|r| r.config.as_ref())
    }

    fn pod_metadata(&self) -> Option<&PodMetadataView<'a>> {
        let repeated = || {
            let create = self.create.as_ref().and_then(|c| c.sandbox_config.as_ref());
            create.or_else(|| self.pull.as_ref().and_then(|p| p.sandbox_config.as_ref()))
        };
        match self.pod() {
            Some(pod) => pod.metadata.as_ref(),
            None => repeated().and_then(|p| p.metadata.as_ref()),
        }
    }

    fn target(&self) -> Target<'_> {
        let container = self.create.as_ref().and_then(|c| c.config.as_ref());
        let spec = container
            .and_then(|c| c.image.as_ref())
            .or_else(|| self.pull.as_ref().and_then(|p| p.image.as_ref()));
        Target {
            pod: self.pod(),
            pod_metadata: self.pod_metadata(),
            labels: self.labels.as_ref(),
            container,
            image: spec.map(ImageView::named),
            runtime_image: spec.map(|s| s.image),
            runtime_image_names: None,
            mount_image_names: &[],
            runtime_user_namespaces: false,
            creates_sandbox: self.run.is_some(),
            kubelet_pods_dir: "",
        }
    }
}

impl PolicySet {
    pub fn new(policies: Vec<Policy>, settings: &PolicySettings) -> PolicySet {
        let cel_needs = self::cel::Needs::of(policies.iter().flat_map(|p| &p.rules).filter_map(
            |r| match &r.kind {
                RuleKind::Cel(expr) => Some(expr),
                RuleKind::Check(_) => None,
            },
        ));
        let needs_pod_labels = cel_needs.labels
            || cel_needs.annotations
            || policies.iter().any(|p| !p.matching.labels.is_empty());
        PolicySet {
            policies,
            exempt_namespaces: settings.exempt_namespaces.clone(),
            kubelet_pods_dir: format!("{}/pods/", settings.kubelet_root_dir.trim_end_matches('/')),
            cel_needs,
            needs_pod_labels,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether a policy judges calls that name only an id (ExecSync, StopContainer, ...): their
    /// pod is known only from the inventory; or the registry of images that CreateContainer
    /// names by id: their names are known only from the inventory too. (Whether the runtime
    /// runs user namespaces is learned from its Status answers whether needed or not.)
    pub fn needs_inventory(&self) -> bool {
        let by_id = Method::ALL
            .iter()
            .filter(|m| !PolicySet::reads_views(**m))
            .any(|&m| self.inspects(&Rpc::of(m)));
        let create = Rpc::of(Method::CreateContainer);
        let registries = self.policies.iter().any(|p| {
            p.methods.contains(&create)
                && p.rules.iter().any(|r| match &r.kind {
                    RuleKind::Check(Check::Images(params)) => {
                        !params.allow.is_empty() || !params.deny.is_empty()
                    }
                    _ => false,
                })
        });
        by_id || registries
    }

    /// Whether the policies read `method`'s request through views (the calls that carry a pod
    /// or an image); the others name only ids.
    pub fn reads_views(method: Method) -> bool {
        method.facts().names == Names::Described
    }

    /// Whether any policy looks at this method (then the request is read ahead and decoded).
    pub fn inspects(&self, rpc: &Rpc) -> bool {
        self.policies.iter().any(|p| p.methods.contains(rpc))
    }

    /// Evaluates every policy that matches the call. Pure: the same call gives the same result.
    pub fn evaluate(&self, call: Call<'_>, inventory: Option<&Inventory>) -> Evaluation {
        let candidates: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.methods.contains(call.rpc) && clients_match(&p.matching, call.caller))
            .collect();
        let mut evaluation = Evaluation::default();
        if candidates.is_empty() {
            return evaluation;
        }
        let bytes = call.message.unwrap_or_default();
        let decoded = if call.compressed {
            Err(format!(
                "a compressed {} request (grpc-encoding): criguard reads only uncompressed messages",
                call.rpc.method
            ))
        } else {
            Decoded::decode(call.rpc.method, bytes, self.needs_pod_labels).map_err(|err| {
                format!(
                    "{} bytes that are not a {} request: {err}",
                    bytes.len(),
                    call.rpc.method
                )
            })
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(why) => {
                for policy in candidates {
                    evaluation.evaluated.push(policy.name.clone());
                    evaluation.findings.push(Finding {
                        policy: policy.name.clone(),
                        rule: String::new(),
                        mode: policy.mode,
                        failure_policy: policy.failure_policy,
                        outcome: FindingKind::Error(why.clone()),
                        undecodable: true,
                    });
                }
                return evaluation;
            }
        };
        // The subject (who and what the call is about, in words) is read only when a finding
        // or a CEL rule needs it: the views name the pod of the calls that carry one.
        let read = OnceCell::new();
        let subject = || {
            call.subject.unwrap_or_else(|| {
                read.get_or_init(|| read_subject(call.rpc.method, bytes, inventory))
            })
        };
        let namespace = match decoded.pod_metadata() {
            Some(metadata) => Some(view::text(metadata.namespace)),
            None => subject()
                .pod
                .as_ref()
                .map(|p| Cow::Borrowed(p.namespace.as_str())),
        };
        let namespace = namespace.as_deref();
        if namespace.is_some_and(|ns| self.exempt_namespaces.iter().any(|e| glob_match(e, ns))) {
            return evaluation;
        }
        let labels = decoded.labels.as_ref().map(|p| &p.labels);
        let mut target = decoded.target();
        target.kubelet_pods_dir = &self.kubelet_pods_dir;
        // An image run by id beside the name the user gave: the names the runtime gives the id.
        let image_names = target
            .runtime_image
            .filter(|id| target.image.is_some_and(|named| named != *id))
            .and_then(|id| inventory?.image_names(&view::text(id)));
        target.runtime_image_names = image_names.as_deref();
        // The same for each image a container mounts as a volume (rare: looked up only then).
        let mount_image_names: Vec<Option<Vec<String>>> = target
            .container
            .iter()
            .flat_map(|c| c.mounts.iter().filter_map(|m| m.mounted_image()))
            .map(|image| inventory?.image_names(&view::text(image.image)))
            .collect();
        target.mount_image_names = &mount_image_names;
        target.runtime_user_namespaces = inventory.is_some_and(Inventory::user_namespaces);
        let who = || describe_subject(call.rpc.method, subject());
        // CEL's built-in functions are registered once per thread; each call gets its variables
        // in a scope of its own.
        thread_local! {
            static CEL_ROOT: ::cel::Context<'static> = ::cel::Context::default();
        }
        CEL_ROOT.with(|root| {
            let mut cel_context: Option<::cel::Context> = None;
            for policy in candidates {
                if !namespaces_match(&policy.matching, namespace)
                    || !labels_match(&policy.matching, labels)
                {
                    continue;
                }
                evaluation.evaluated.push(policy.name.clone());
                for rule in &policy.rules {
                    let outcome = match &rule.kind {
                        RuleKind::Check(check) => check.violation(&target).map(|detail| {
                            FindingKind::Violation(format!(
                                "{} {}",
                                who(),
                                rule.message.as_deref().unwrap_or(&detail)
                            ))
                        }),
                        RuleKind::Cel(expr) => {
                            let context = cel_context.get_or_insert_with(|| {
                                self::cel::context(root, call, &target, subject(), self.cel_needs)
                            });
                            match self::cel::holds(expr, context) {
                                Ok(true) => None,
                                Ok(false) => Some(FindingKind::Violation(format!(
                                    "{}: {}",
                                    who(),
                                    rule.message.as_deref().unwrap_or(&expr.source)
                                ))),
                                Err(err) => Some(FindingKind::Error(err)),
                            }
                        }
                    };
                    if let Some(outcome) = outcome {
                        evaluation.findings.push(Finding {
                            policy: policy.name.clone(),
                            rule: rule.name.clone(),
                            mode: policy.mode,
                            failure_policy: policy.failure_policy,
                            outcome,
                            undecodable: false,
                        });
                    }
                }
            }
        });
        evaluation
    }
}

fn clients_match(matching: &MatchSpec, caller: Option<&Caller>) -> bool {
    let is = |callers: &file::Callers| {
        caller.is_some_and(|c| {
            callers.uids.contains(&c.uid)
                || c.exe
                    .as_deref()
                    .is_some_and(|exe| callers.exes.iter().any(|e| e == exe))
        })
    };
    matching.clients.include.as_ref().is_none_or(is)
        && !matching.clients.exclude.as_ref().is_some_and(is)
}

fn namespaces_match(matching: &MatchSpec, namespace: Option<&str>) -> bool {
    let patterns = &matching.namespaces;
    let included = match (&patterns.include, namespace) {
        (None, _) => true,
        (Some(include), Some(ns)) => include.iter().any(|p| glob_match(p, ns)),
        // A policy for some namespaces does not apply where the namespace is unknown.
        (Some(include), None) => include.iter().any(|p| p == "*"),
    };
    included && !namespace.is_some_and(|ns| patterns.exclude.iter().any(|p| glob_match(p, ns)))
}

fn labels_match(
    matching: &MatchSpec,
    labels: Option<&std::collections::HashMap<String, String>>,
) -> bool {
    matching
        .labels
        .iter()
        .all(|(k, v)| labels.is_some_and(|l| l.get(k) == Some(v)))
}

/// `container "app" in pod "team-a/web-1"`, `pod "team-a/web-1"`, `image "..."`, ...
fn describe_subject(method: Method, subject: &Subject) -> String {
    let pod = |p: &PodRef| format!("pod \"{}/{}\"", p.namespace, p.name);
    match (method, &subject.pod) {
        (Method::RunPodSandbox, Some(p)) => pod(p),
        (Method::PullImage, _) => format!(
            "image pull of \"{}\"",
            subject.image.as_deref().unwrap_or("")
        ),
        (_, p) => {
            let container = subject
                .container_name
                .as_deref()
                .or(subject.container_id.as_deref())
                .map(|c| format!("container \"{c}\""));
            match (container, p) {
                (Some(c), Some(p)) => format!("{c} in {}", pod(p)),
                (Some(c), None) => c,
                (None, Some(p)) => pod(p),
                (None, None) => format!("{method} call"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_label_selector_decodes_the_pod_labels_and_selects_by_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: criguard.dev/v1alpha1\nkind: Policy\nmetadata: {name: web}\nspec:\n  mode: enforce\n  match: {labels: {tier: web}}\n  rules:\n    - {name: nothing, deny: {}}\n",
        )
        .unwrap();
        let set = file::load_dir(dir.path(), &PolicySettings::default()).unwrap();
        assert!(set.needs_pod_labels);
        let rpc = Rpc::from_path("/runtime.v1.RuntimeService/CreateContainer");
        let mut request = crate::fake::samples::create_container_request();
        let verdict = |request: &crate::cri::CreateContainerRequest| {
            let bytes = request.encode_to_vec();
            set.evaluate(
                Call {
                    rpc: &rpc,
                    caller: None,
                    message: Some(&bytes),
                    subject: None,
                    compressed: false,
                },
                None,
            )
            .refusal()
            .is_some()
        };
        assert!(!verdict(&request), "no tier label: not selected");
        let pod = request.sandbox_config.as_mut().unwrap();
        pod.labels.insert("tier".into(), "web".into());
        assert!(verdict(&request), "tier=web: selected and denied");

        // The shipped PSS policies select no labels and use no CEL: labels are not decoded.
        let shipped =
            file::load_dir(std::path::Path::new("policies"), &PolicySettings::default()).unwrap();
        let pss = PolicySet::new(
            shipped
                .policies
                .into_iter()
                .filter(|p| p.name.starts_with("pss-"))
                .collect(),
            &PolicySettings::default(),
        );
        assert!(!pss.needs_pod_labels);
    }
}
