//! Policy files: YAML in the style of Kubernetes resources, read from a directory, validated and
//! compiled (CEL included) into a [`PolicySet`]. Every problem names the file, the key and the
//! line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::checks::{Check, HostPathParams, HostPortParams, ImageParams, NoParams, PssLevelParams};
use super::{Policy, PolicySet, PolicySettings, Rule, RuleKind};
use crate::proxy::rpc::MethodSet;

pub const API_VERSION: &str = "criguard.dev/v1alpha1";

/// What a policy does with a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the call (PERMISSION_DENIED).
    Enforce,
    /// Let it pass; record the violation in metrics and the audit trail.
    Audit,
    /// Let it pass; log a warning.
    Warn,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Warn => "warn",
        }
    }
}

/// What happens when a rule cannot be evaluated (an undecodable body, a CEL error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    /// As a violation (enforce: refused).
    #[default]
    Fail,
    /// As a pass.
    Ignore,
}

/// A problem with a policy file: the file, the key, the line when known, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct PolicyError {
    pub file: PathBuf,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    mode: Mode,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(rename = "match", default)]
    matching: MatchSpec,
    rules: Vec<RuleSpec>,
}

/// Which calls a policy looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    /// Methods or classes; absent: RunPodSandbox and CreateContainer.
    pub methods: Option<MethodSet>,
    #[serde(default)]
    pub namespaces: NamespaceMatch,
    /// Pod labels that must all be present with these values (a `matchLabels` selector).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub clients: ClientMatch,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceMatch {
    /// Globs; absent: every namespace (and calls whose pod is unknown).
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMatch {
    pub include: Option<Callers>,
    pub exclude: Option<Callers>,
}

/// Callers by uid or executable path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callers {
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub exes: Vec<String>,
}

/// One rule: a name, exactly one check (built-in or CEL), an optional message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    name: String,
    message: Option<String>,
    privileged: Option<NoParams>,
    host_namespaces: Option<NoParams>,
    host_ports: Option<HostPortParams>,
    capabilities: Option<PssLevelParams>,
    seccomp: Option<NoParams>,
    #[serde(rename = "apparmor")]
    app_armor: Option<NoParams>,
    #[serde(rename = "selinux")]
    se_linux: Option<NoParams>,
    sysctls: Option<NoParams>,
    no_new_privs: Option<NoParams>,
    run_as_non_root: Option<NoParams>,
    proc_mount: Option<PssLevelParams>,
    host_paths: Option<HostPathParams>,
    images: Option<ImageParams>,
    deny: Option<NoParams>,
    /// A CEL expression that must be true for the call to pass.
    cel: Option<CelExpr>,
}

/// A compiled CEL expression and its source.
#[derive(Clone)]
pub struct CelExpr {
    pub source: String,
    pub program: Arc<cel::Program>,
}

impl std::fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CelExpr({:?})", self.source)
    }
}

impl PartialEq for CelExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CelExpr {}

/// The variables a CEL expression may use.
pub const CEL_VARIABLES: [&str; 5] = ["request", "pod", "container", "method", "client"];

impl<'de> Deserialize<'de> for CelExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        let program = cel::Program::compile(&source).map_err(|e| {
            serde::de::Error::custom(format!("CEL syntax error: {}", one_line(&e.to_string())))
        })?;
        let references = program.references();
        for variable in references.variables() {
            // Names bound by macros (`all(c, ...)`, `exists(x, ...)`) are not free variables.
            let bound = source.contains(&format!("({variable},"))
                || source.contains(&format!("( {variable},"));
            if !CEL_VARIABLES.contains(&variable) && !bound {
                return Err(serde::de::Error::custom(format!(
                    "CEL expression uses {variable:?}; the variables are request, pod, container, method, client"
                )));
            }
        }
        Ok(CelExpr {
            source,
            program: Arc::new(program),
        })
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl RuleSpec {
    fn compile(self) -> Result<Rule, String> {
        let mut kinds: Vec<RuleKind> = Vec::new();
        let mut add = |check: Option<Check>| kinds.extend(check.map(RuleKind::Check));
        add(self.privileged.map(|_| Check::Privileged));
        add(self.host_namespaces.map(|_| Check::HostNamespaces));
        add(self.host_ports.map(Check::HostPorts));
        add(self.capabilities.map(|p| Check::Capabilities(p.level)));
        add(self.seccomp.map(|_| Check::Seccomp));
        add(self.app_armor.map(|_| Check::AppArmor));
        add(self.se_linux.map(|_| Check::SELinux));
        add(self.sysctls.map(|_| Check::Sysctls));
        add(self.no_new_privs.map(|_| Check::NoNewPrivs));
        add(self.run_as_non_root.map(|_| Check::RunAsNonRoot));
        add(self.proc_mount.map(|p| Check::ProcMount(p.level)));
        add(self.host_paths.map(Check::HostPaths));
        add(self.images.map(Check::Images));
        add(self.deny.map(|_| Check::Deny));
        kinds.extend(self.cel.map(RuleKind::Cel));
        if kinds.len() != 1 {
            return Err(format!(
                "rule {:?} must have exactly one check (a built-in such as privileged: {{}}, or cel), it has {}",
                self.name,
                kinds.len()
            ));
        }
        if matches!(kinds[0], RuleKind::Cel(_)) && self.message.is_none() {
            return Err(format!("rule {:?}: a cel rule needs a message", self.name));
        }
        Ok(Rule {
            name: self.name,
            kind: kinds.remove(0),
            message: self.message,
        })
    }
}

/// Reads and compiles one policy file.
pub fn read_policy(path: &Path) -> Result<Policy, PolicyError> {
    let error = |key: &str, problem: String| PolicyError {
        file: path.to_path_buf(),
        key: key.to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error("(file)", e.to_string()))?;
    let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
    let file: PolicyFile = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        error(
            if key == "." { "(document)" } else { &key },
            err.into_inner().to_string(),
        )
    })?;
    if file.api_version != API_VERSION {
        return Err(error(
            "apiVersion",
            format!("{:?} is not {API_VERSION}", file.api_version),
        ));
    }
    if file.kind != "Policy" {
        return Err(error("kind", format!("{:?} is not Policy", file.kind)));
    }
    if file.metadata.name.is_empty() {
        return Err(error("metadata.name", "must not be empty".into()));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (i, spec) in file.spec.rules.into_iter().enumerate() {
        let rule = spec
            .compile()
            .map_err(|p| error(&format!("spec.rules[{i}]"), p))?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(error(
                &format!("spec.rules[{i}].name"),
                format!("{:?} is used by an earlier rule", rule.name),
            ));
        }
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(error(
            "spec.rules",
            "a policy needs at least one rule".into(),
        ));
    }
    let methods =
        file.spec.matching.methods.clone().unwrap_or_else(|| {
            MethodSet::parse(&["RunPodSandbox", "CreateContainer"]).expect("valid")
        });
    Ok(Policy {
        name: file.metadata.name.into(),
        file: path.to_path_buf(),
        mode: file.spec.mode,
        failure_policy: file.spec.failure_policy,
        methods,
        matching: file.spec.matching,
        allowed: Default::default(),
        rules,
    })
}

/// The policy files of a directory: `*.yaml` and `*.yml`, not the `*.tests.yaml` cases, not
/// hidden entries (a Kubernetes ConfigMap mount keeps its real files under `..data`).
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyError {
        file: dir.to_path_buf(),
        key: "(directory)".into(),
        problem: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && !name.ends_with(".tests.yaml")
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads, validates and compiles every policy in `dir`.
pub fn load_dir(dir: &Path, settings: &PolicySettings) -> Result<PolicySet, PolicyError> {
    let mut policies: Vec<Policy> = Vec::new();
    for file in policy_files(dir)? {
        let policy = read_policy(&file)?;
        if let Some(other) = policies.iter().find(|p| p.name == policy.name) {
            return Err(PolicyError {
                file,
                key: "metadata.name".into(),
                problem: format!(
                    "{:?} is also the name of {}",
                    policy.name,
                    other.file.display()
                ),
            });
        }
        policies.push(policy);
    }
    Ok(PolicySet::new(policies, settings))
}
