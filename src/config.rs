//! criguard's configuration: the YAML file (`--config`), then `CRIGUARD_*` environment
//! variables and command-line flags over it, validated into one typed [`Config`].
//!
//! Every key of the file is documented in the README ("Configuration"). Unknown keys are
//! errors: a typo must not silently leave a setting at its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::layers::access::{FileListener, FileRoles, find_role};
use crate::layers::limits::{FileLimit, Limit};
use crate::proxy::listener::SocketOptions;
use crate::proxy::listener::{ListenerAccess, Role};
use crate::proxy::runtime::Endpoint;
use crate::settings::{ByteSize, LogFormat};
use crate::telemetry::admin::AdminAddress;

pub const DEFAULT_LISTEN: &str = "/run/criguard/criguard.sock";
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
/// The kubelet's and containerd's own limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
const MIN_MESSAGE_SIZE: usize = 4 << 10;
const MAX_MESSAGE_SIZE: usize = 2 << 30;
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(15);
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9899";
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The configuration file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub runtime_endpoint: Option<String>,
    pub image_endpoint: Option<String>,
    pub max_message_size: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace_period: Option<Duration>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub admin_address: Option<String>,
    pub metrics: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub error_log_window: Option<Duration>,
    pub error_log_max_keys: Option<usize>,
    pub audit: Option<crate::audit::FileAudit>,
    pub listeners: Option<Vec<FileListener>>,
    pub roles: Option<FileRoles>,
    pub limits: Option<Vec<FileLimit>>,
    pub policies: Option<PathBuf>,
    pub policy_exemptions: Option<PolicyExemptions>,
    pub kubelet_root_dir: Option<PathBuf>,
    pub tracing: Option<crate::telemetry::trace::FileTracing>,
}

/// `policyExemptions`: what no policy applies to.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyExemptions {
    /// Pod namespaces (globs), e.g. kube-system.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Values from flags and environment variables; each one set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub runtime_endpoint: Option<String>,
    pub image_endpoint: Option<String>,
    pub max_message_size: Option<String>,
    pub shutdown_grace_period: Option<Duration>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub admin_address: Option<String>,
    pub metrics: Option<bool>,
    pub probe_interval: Option<Duration>,
    pub error_log_window: Option<Duration>,
    /// `--audit-log`: audit to this file (with the shipped rules unless the file has some).
    pub audit_log: Option<PathBuf>,
    /// `--policies`: the policy directory.
    pub policies: Option<PathBuf>,
}

/// One socket criguard serves: where, with which role, and who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub socket: SocketOptions,
    pub access: ListenerAccess,
    /// At most this many calls of this socket in flight to the runtime.
    pub max_in_flight: Option<usize>,
}

/// The validated configuration criguard runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The sockets criguard serves; the first is the kubelet's (`listen`, role `full`) unless
    /// `listeners` says otherwise.
    pub listeners: Vec<ListenerConfig>,
    /// Rate limits, in order (`limits`).
    pub limits: Vec<Limit>,
    /// The runtime's CRI socket; every call goes there unless `image_endpoint` is set.
    pub runtime_endpoint: Endpoint,
    /// A separate socket for ImageService calls, as the kubelet's `imageServiceEndpoint`.
    pub image_endpoint: Option<Endpoint>,
    /// Largest gRPC message accepted in either direction, in bytes.
    pub max_message_size: usize,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_period: Duration,
    /// `--log-level` / `logLevel`, an `EnvFilter` directive; `None` means `RUST_LOG` or `info`.
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_address: AdminAddress,
    /// Whether Prometheus metrics are recorded.
    pub metrics: bool,
    /// How often the runtime is probed for `/readyz` and `criguard_runtime_up`.
    pub probe_interval: Duration,
    /// An identical error (method, object, message) is logged once per window.
    pub error_log_window: Duration,
    /// How many (method, object) keys the error log reduction remembers.
    pub error_log_max_keys: usize,
    /// The audit trail; `None` when off.
    pub audit: Option<crate::audit::AuditConfig>,
    /// The policy directory; `None`: no policies.
    pub policies: Option<PathBuf>,
    /// What the policies need to know of the node: exempt namespaces, the kubelet's root dir.
    pub policy_settings: crate::policy::PolicySettings,
    /// OpenTelemetry spans per call (`tracing`); `None` when off.
    pub tracing: Option<crate::telemetry::trace::TraceSettings>,
}

/// A configuration problem, naming the key (and the file) it comes from.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {problem}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub problem: String,
}

impl Config {
    /// The listeners' `maxInFlight`, by socket path.
    pub fn in_flight_caps(&self) -> Vec<(PathBuf, usize)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.socket.path.clone(), l.max_in_flight?)))
            .collect()
    }

    /// Reads `file` (if any), applies `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let (file_config, source_name) = match file {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), "flags".to_string()),
        };
        Config::resolve(file_config, overrides, &source_name)
    }

    fn resolve(
        file: FileConfig,
        over: Overrides,
        source_name: &str,
    ) -> Result<Config, ConfigError> {
        let error = |key: &str, problem: String| ConfigError {
            source_name: source_name.to_string(),
            key: key.to_string(),
            problem,
        };
        let listeners = resolve_listeners(&file, &over, &error)?;
        let runtime_endpoint = over
            .runtime_endpoint
            .or(file.runtime_endpoint)
            .unwrap_or_else(|| DEFAULT_RUNTIME_ENDPOINT.into());
        let runtime_endpoint =
            Endpoint::parse(&runtime_endpoint).map_err(|p| error("runtimeEndpoint", p))?;
        let image_endpoint = over
            .image_endpoint
            .or(file.image_endpoint)
            .map(|e| Endpoint::parse(&e))
            .transpose()
            .map_err(|p| error("imageEndpoint", p))?;
        let max_message_size = match over.max_message_size {
            Some(text) => {
                ByteSize::parse(&text)
                    .map_err(|p| error("maxMessageSize", p))?
                    .0
            }
            None => file
                .max_message_size
                .map_or(DEFAULT_MAX_MESSAGE_SIZE, |b| b.0),
        };
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&max_message_size) {
            return Err(error(
                "maxMessageSize",
                format!(
                    "{max_message_size} bytes is outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE} (4KiB to 2GiB)"
                ),
            ));
        }
        for (i, listener) in listeners.iter().enumerate() {
            let path = &listener.socket.path;
            if runtime_endpoint.path == *path
                || image_endpoint.as_ref().is_some_and(|e| e.path == *path)
            {
                let key = if file.listeners.is_some() {
                    format!("listeners[{i}].path")
                } else {
                    "listen".into()
                };
                return Err(error(
                    &key,
                    "is the same socket as the runtime endpoint: criguard would call itself".into(),
                ));
            }
        }
        let mut limits: Vec<Limit> = Vec::new();
        for (i, limit) in file.limits.into_iter().flatten().enumerate() {
            let limit = Limit::resolve(limit)
                .map_err(|(key, problem)| error(&format!("limits[{i}].{key}"), problem))?;
            if limits.iter().any(|l| l.name == limit.name) {
                return Err(error(
                    &format!("limits[{i}].name"),
                    format!("{:?} is used by an earlier limit", limit.name),
                ));
            }
            if let Some(path) = &limit.listener
                && !listeners.iter().any(|l| l.socket.path == *path)
            {
                return Err(error(
                    &format!("limits[{i}].listener"),
                    format!("{} is not one of the listeners", path.display()),
                ));
            }
            if let Some(role) = &limit.role
                && !listeners.iter().any(|l| l.access.role.name == *role)
            {
                return Err(error(
                    &format!("limits[{i}].role"),
                    format!("no listener has the role {role:?}"),
                ));
            }
            limits.push(limit);
        }
        let log_level = over.log_level.or(file.log_level);
        crate::telemetry::logging::check_level(log_level.as_deref())
            .map_err(|p| error("logLevel", p))?;
        Ok(Config {
            listeners,
            limits,
            runtime_endpoint,
            image_endpoint,
            max_message_size,
            shutdown_grace_period: over
                .shutdown_grace_period
                .or(file.shutdown_grace_period)
                .unwrap_or(DEFAULT_GRACE_PERIOD),
            log_level,
            log_format: over.log_format.or(file.log_format).unwrap_or_default(),
            admin_address: AdminAddress::parse(
                over.admin_address
                    .or(file.admin_address)
                    .as_deref()
                    .unwrap_or(DEFAULT_ADMIN_ADDRESS),
            )
            .map_err(|p| error("adminAddress", p))?,
            metrics: over.metrics.or(file.metrics).unwrap_or(true),
            probe_interval: match over.probe_interval.or(file.probe_interval) {
                None => DEFAULT_PROBE_INTERVAL,
                Some(d) if d >= Duration::from_millis(100) => d,
                Some(d) => {
                    return Err(error(
                        "probeInterval",
                        format!("{d:?} is shorter than 100ms"),
                    ));
                }
            },
            error_log_window: over
                .error_log_window
                .or(file.error_log_window)
                .unwrap_or(crate::layers::log_reduction::DEFAULT_WINDOW),
            error_log_max_keys: match file.error_log_max_keys {
                None => crate::layers::log_reduction::DEFAULT_MAX_KEYS,
                Some(0) => return Err(error("errorLogMaxKeys", "must be at least 1".into())),
                Some(n) => n,
            },
            audit: crate::audit::AuditConfig::resolve(file.audit, over.audit_log)
                .map_err(|(key, problem)| error(key, problem))?,
            policies: match over.policies.or(file.policies) {
                Some(dir) if !dir.is_dir() => {
                    return Err(error(
                        "policies",
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                dir => dir,
            },
            tracing: file
                .tracing
                .map(crate::telemetry::trace::TraceSettings::resolve)
                .transpose()
                .map_err(|(key, problem)| error(key, problem))?,
            policy_settings: crate::policy::PolicySettings {
                exempt_namespaces: file.policy_exemptions.unwrap_or_default().namespaces,
                kubelet_root_dir: match file.kubelet_root_dir {
                    None => crate::policy::DEFAULT_KUBELET_ROOT_DIR.into(),
                    Some(dir) if dir.is_absolute() => dir.display().to_string(),
                    Some(dir) => {
                        return Err(error(
                            "kubeletRootDir",
                            format!("{} is not an absolute path", dir.display()),
                        ));
                    }
                },
            },
        })
    }
}

/// `listeners`, or the one socket of `listen`/`socketMode`/`socketGroup` with role `full`.
fn resolve_listeners(
    file: &FileConfig,
    over: &Overrides,
    error: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let roles = file.roles.clone().unwrap_or_default();
    for name in roles.keys() {
        if name == "full" || name == "read-only" {
            return Err(error(
                &format!("roles.{name}"),
                "is a shipped role and cannot be redefined".into(),
            ));
        }
    }
    let Some(listeners) = &file.listeners else {
        let path = over
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        if !path.is_absolute() {
            return Err(error(
                "listen",
                format!("{} is not an absolute path", path.display()),
            ));
        }
        let mode = match over.socket_mode.clone().or(file.socket_mode.clone()) {
            None => 0o660,
            Some(text) => parse_mode(&text).map_err(|p| error("socketMode", p))?,
        };
        return Ok(vec![ListenerConfig {
            socket: SocketOptions {
                path: path.clone(),
                mode,
                group: over.socket_group.clone().or(file.socket_group.clone()),
            },
            access: ListenerAccess {
                path,
                role: Role::full(),
                allow_uids: None,
                allow_gids: None,
            },
            max_in_flight: None,
        }]);
    };
    if file.listen.is_some() || file.socket_mode.is_some() || file.socket_group.is_some() {
        return Err(error(
            "listeners",
            "set either listen/socketMode/socketGroup (one socket, role full) or listeners, not both".into(),
        ));
    }
    if over.listen.is_some() {
        return Err(error(
            "listeners",
            "--listen (CRIGUARD_LISTEN) cannot be combined with listeners in the file".into(),
        ));
    }
    if listeners.is_empty() {
        return Err(error("listeners", "needs at least one listener".into()));
    }
    let mut resolved: Vec<ListenerConfig> = Vec::new();
    for (i, listener) in listeners.iter().enumerate() {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let path = listener.path.clone();
        if !path.is_absolute() {
            return Err(error(
                &key("path"),
                format!("{} is not an absolute path", path.display()),
            ));
        }
        if resolved.iter().any(|l| l.socket.path == path) {
            return Err(error(
                &key("path"),
                format!("{} is already an earlier listener", path.display()),
            ));
        }
        let mode = match &listener.mode {
            None => 0o660,
            Some(text) => parse_mode(text).map_err(|p| error(&key("mode"), p))?,
        };
        let role = find_role(listener.role.as_deref().unwrap_or("full"), &roles)
            .map_err(|p| error(&key("role"), p))?;
        if listener.max_in_flight == Some(0) {
            return Err(error(&key("maxInFlight"), "must be at least 1".into()));
        }
        resolved.push(ListenerConfig {
            socket: SocketOptions {
                path: path.clone(),
                mode,
                group: listener.group.clone(),
            },
            access: ListenerAccess {
                path,
                role,
                allow_uids: listener.allow_uids.clone(),
                allow_gids: listener.allow_gids.clone(),
            },
            max_in_flight: listener.max_in_flight,
        });
    }
    Ok(resolved)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        key: "(file)".into(),
        problem: e.to_string(),
    })?;
    parse_yaml(&text, &name)
}

/// Parses a YAML document, reporting the failing key path and its line.
pub fn parse_yaml<T: serde::de::DeserializeOwned + Default>(
    text: &str,
    source_name: &str,
) -> Result<T, ConfigError> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(T::default());
    }
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        ConfigError {
            source_name: source_name.to_string(),
            key: if key == "." { "(document)".into() } else { key },
            problem: err.into_inner().to_string(),
        }
    })
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal mode such as \"0660\""))?;
    if mode > 0o777 {
        return Err(format!("{text:?} has bits outside 0777"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_yaml(text, "criguard.yaml")?;
        Config::resolve(file, Overrides::default(), "criguard.yaml")
    }

    #[test]
    fn defaults_match_a_containerd_node() {
        let config = from_yaml("").unwrap();
        assert_eq!(
            config.listeners[0].socket.path,
            PathBuf::from(DEFAULT_LISTEN)
        );
        assert_eq!(config.listeners[0].socket.mode, 0o660);
        assert_eq!(
            config.runtime_endpoint.to_string(),
            DEFAULT_RUNTIME_ENDPOINT
        );
        assert_eq!(config.max_message_size, 16 << 20);
        assert_eq!(config.image_endpoint, None);
        assert_eq!(
            config.admin_address,
            AdminAddress::Tcp("127.0.0.1:9899".parse().unwrap())
        );
        assert!(config.metrics);
    }

    #[test]
    fn a_full_file_is_read() {
        let config = from_yaml(
            "listen: /run/x/criguard.sock\nsocketMode: \"0600\"\nsocketGroup: kube\n\
             runtimeEndpoint: unix:///run/crio/crio.sock\nimageEndpoint: /run/img.sock\n\
             maxMessageSize: 80MiB\nshutdownGracePeriod: 30s\nlogFormat: json\n",
        )
        .unwrap();
        assert_eq!(config.listeners[0].socket.mode, 0o600);
        assert_eq!(config.listeners[0].socket.group.as_deref(), Some("kube"));
        assert_eq!(
            config.runtime_endpoint.path,
            PathBuf::from("/run/crio/crio.sock")
        );
        assert_eq!(
            config.image_endpoint.unwrap().path,
            PathBuf::from("/run/img.sock")
        );
        assert_eq!(config.max_message_size, 80 << 20);
        assert_eq!(config.shutdown_grace_period, Duration::from_secs(30));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse_yaml("maxMessageSize: 1MiB\nlisten: /a.sock\n", "f").unwrap();
        let over = Overrides {
            max_message_size: Some("32MiB".into()),
            ..Default::default()
        };
        let config = Config::resolve(file, over, "f").unwrap();
        assert_eq!(config.max_message_size, 32 << 20);
        assert_eq!(config.listeners[0].socket.path, PathBuf::from("/a.sock"));
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let err = from_yaml("listen: /a.sock\nmaxMesageSize: 10\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `maxMesageSize`"),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"), "{err}");

        let err = from_yaml("maxMessageSize: lots\n").unwrap_err();
        assert_eq!(err.key, "maxMessageSize", "{err}");

        let err = from_yaml("runtimeEndpoint: tcp://10.0.0.1:1234\n").unwrap_err();
        assert_eq!(err.key, "runtimeEndpoint");
        assert!(err.problem.contains("only unix://"), "{err}");

        let err = from_yaml("maxMessageSize: 10\n").unwrap_err();
        assert!(err.problem.contains("outside"), "{err}");

        let err = from_yaml("adminAddress: everywhere\n").unwrap_err();
        assert_eq!(err.key, "adminAddress");

        let err = from_yaml("socketMode: \"rw\"\n").unwrap_err();
        assert_eq!(err.key, "socketMode");

        let err = from_yaml("listen: /x.sock\nruntimeEndpoint: /x.sock\n").unwrap_err();
        assert!(err.problem.contains("call itself"), "{err}");
    }

    #[test]
    fn audit_settings_are_validated_with_the_key_and_line_at_fault() {
        let config = from_yaml("audit:\n  path: /var/log/criguard/audit.log\n").unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.sinks.max_size, Some(100 << 20));
        assert_eq!(audit.rules, crate::audit::Rules::shipped());
        let err = from_yaml("audit:\n  rules:\n    - level: Metadata\n").unwrap_err();
        assert_eq!(err.key, "audit");
        assert!(err.problem.contains("needs a path"), "{err}");
        let err = from_yaml(
            "audit:\n  path: /a.log\n  rules:\n    - level: Metadata\n      methods: [ExecSync, execs]\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "audit.rules[0].methods");
        // The line of the rule that holds the bad entry.
        assert!(
            err.problem.contains("\"execs\"") && err.problem.contains("line 4"),
            "{err}"
        );
        let err =
            from_yaml("audit:\n  path: /a.log\n  rules:\n    - level: Everything\n").unwrap_err();
        assert_eq!(err.key, "audit.rules[0].level");
        assert!(from_yaml("").unwrap().audit.is_none());
    }
}
