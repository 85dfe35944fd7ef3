//! The audit policy: ordered rules, the first that matches a call picks its level, as in the
//! Kubernetes API server's audit policy.

use serde::{Deserialize, Serialize};

use crate::glob::glob_match;
use crate::proxy::identity::Caller;
use crate::proxy::rpc::{MethodSet, Rpc};

/// How much of a call its audit event records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum Level {
    /// No event.
    #[default]
    None,
    /// Who called what, on which pod, and how it ended.
    Metadata,
    /// Metadata and the decoded request.
    Request,
    /// Metadata, the decoded request and the decoded answer.
    RequestResponse,
}

impl Level {
    /// The level as written in the rules.
    pub fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// One rule as written under `audit.rules`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditRule {
    pub level: Level,
    /// Method names or classes (`lifecycle`, `exec`, `image`, `read`); absent means every call.
    #[serde(default = "MethodSet::all")]
    pub methods: MethodSet,
    /// Pod namespaces, `*` matching any run of characters; absent means any pod or none.
    /// A call whose pod is not known matches no rule that names namespaces.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Caller uids; absent means every caller.
    #[serde(default)]
    pub uids: Option<Vec<u32>>,
    /// Whether environment variable values are replaced by a marker (default true).
    #[serde(default = "yes")]
    pub redact_env_values: bool,
}

fn yes() -> bool {
    true
}

/// The level a call is recorded at, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub level: Level,
    pub redact_env_values: bool,
}

const NO_EVENT: Choice = Choice {
    level: Level::None,
    redact_env_values: true,
};

/// The ordered rules; a call no rule matches is not recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules(Vec<AuditRule>);

impl Rules {
    pub fn new(rules: Vec<AuditRule>) -> Rules {
        Rules(rules)
    }

    /// The shipped policy: the decoded request of every lifecycle, exec and image-changing
    /// call; metadata of the other calls that change something; nothing for reads.
    pub fn shipped() -> Rules {
        let rule = |level, methods: &[&str]| AuditRule {
            level,
            methods: MethodSet::parse(methods).expect("valid shipped rule"),
            namespaces: None,
            uids: None,
            redact_env_values: true,
        };
        Rules(vec![
            rule(
                Level::Request,
                &["lifecycle", "exec", "PullImage", "RemoveImage"],
            ),
            rule(Level::None, &["read"]),
            rule(Level::Metadata, &["*"]),
        ])
    }

    /// The level of a call whose pod namespace is `namespace` (`None` when the call names no
    /// pod, or one criguard does not know).
    pub fn choose(&self, rpc: &Rpc, caller: Option<&Caller>, namespace: Option<&str>) -> Choice {
        self.0
            .iter()
            .find(|rule| {
                rule.matches_call(rpc, caller)
                    && rule.namespaces.as_ref().is_none_or(|patterns| {
                        namespace.is_some_and(|ns| patterns.iter().any(|p| glob_match(p, ns)))
                    })
            })
            .map_or(NO_EVENT, |rule| Choice {
                level: rule.level,
                redact_env_values: rule.redact_env_values,
            })
    }

    /// The highest level the call can get whatever its pod: known before the request is read,
    /// it says whether the call is audited at all, and whether its answer must be kept.
    pub fn highest(&self, rpc: &Rpc, caller: Option<&Caller>) -> Level {
        let mut highest = Level::None;
        for rule in self.0.iter().filter(|r| r.matches_call(rpc, caller)) {
            highest = highest.max(rule.level);
            if rule.namespaces.is_none() {
                break;
            }
        }
        highest
    }
}

impl AuditRule {
    fn matches_call(&self, rpc: &Rpc, caller: Option<&Caller>) -> bool {
        self.methods.contains(rpc)
            && self
                .uids
                .as_ref()
                .is_none_or(|uids| caller.is_some_and(|c| uids.contains(&c.uid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str) -> Rpc {
        let service = if method.contains("Image") {
            "ImageService"
        } else {
            "RuntimeService"
        };
        Rpc::from_path(&format!("/runtime.v1.{service}/{method}"))
    }

    fn rules(yaml: &str) -> Rules {
        Rules::new(serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn shipped_rules_record_lifecycle_exec_and_image_changes_and_skip_reads() {
        let rules = Rules::shipped();
        let level = |m| rules.choose(&call(m), None, None).level;
        assert_eq!(level("CreateContainer"), Level::Request);
        assert_eq!(level("ExecSync"), Level::Request);
        assert_eq!(level("PullImage"), Level::Request);
        assert_eq!(level("RemoveImage"), Level::Request);
        assert_eq!(level("ListContainers"), Level::None);
        assert_eq!(level("ImageStatus"), Level::None);
        assert_eq!(level("Version"), Level::None);
        assert_eq!(level("UpdateRuntimeConfig"), Level::Metadata);
        assert_eq!(level("ReopenContainerLog"), Level::Metadata);
        // A pod's resources resized in place (CRI 1.35): a lifecycle change, with its request.
        assert_eq!(level("UpdatePodSandboxResources"), Level::Request);
        assert_eq!(level("StreamContainers"), Level::None);
        assert_eq!(level("NotYetInTheCri"), Level::Metadata);
    }

    #[test]
    fn first_match_wins_and_namespaces_and_uids_narrow_a_rule() {
        let rules = rules(
            r#"
- level: None
  methods: [exec]
  namespaces: ["kube-*"]
- level: RequestResponse
  methods: [exec]
  uids: [1000]
- level: Metadata
"#,
        );
        let exec = call("ExecSync");
        let user = Caller {
            uid: 1000,
            gid: 1000,
            pid: None,
            exe: None,
        };
        let root = Caller {
            uid: 0,
            ..user.clone()
        };
        assert_eq!(
            rules.choose(&exec, Some(&user), Some("kube-system")).level,
            Level::None
        );
        assert_eq!(
            rules.choose(&exec, Some(&user), Some("team-a")).level,
            Level::RequestResponse
        );
        assert_eq!(
            rules.choose(&exec, Some(&user), None).level,
            Level::RequestResponse
        );
        assert_eq!(
            rules.choose(&exec, Some(&root), Some("team-a")).level,
            Level::Metadata
        );
        // Before the pod is known: the namespace rule may or may not apply.
        assert_eq!(rules.highest(&exec, Some(&user)), Level::RequestResponse);
        assert_eq!(rules.highest(&exec, Some(&root)), Level::Metadata);
    }

    #[test]
    fn env_values_stay_redacted_unless_a_rule_says_otherwise() {
        let rules = rules("- level: Request\n  redactEnvValues: false\n");
        assert!(
            !rules
                .choose(&call("CreateContainer"), None, None)
                .redact_env_values
        );
        assert!(
            Rules::shipped()
                .choose(&call("CreateContainer"), None, None)
                .redact_env_values
        );
    }
}
