//! The CRI call a request makes, parsed once from its `:path` and carried in the request
//! extensions for every layer to read.
//!
//! A path that names no method our proto knows is still a valid call: it is forwarded as it
//! is, and counts as [`Method::Unknown`] wherever a bounded label is needed.

use std::fmt;

/// The gRPC service a call addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// `runtime.v1.RuntimeService` (or `runtime.v1alpha2.RuntimeService`)
    Runtime,
    /// `runtime.v1.ImageService` (or `runtime.v1alpha2.ImageService`)
    Image,
    /// Any other service; forwarded to the runtime endpoint.
    Other,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Runtime => "RuntimeService",
            Service::Image => "ImageService",
            Service::Other => "other",
        }
    }

    /// The service's full name in the vendored proto (CRI v1), if it is a CRI service.
    pub fn proto_name(self) -> Option<&'static str> {
        match self {
            Service::Runtime => Some(RUNTIME_SERVICES[0]),
            Service::Image => Some(IMAGE_SERVICES[0]),
            Service::Other => None,
        }
    }
}

macro_rules! methods {
    ($($service:ident => [$($name:ident),* $(,)?]),* $(,)?) => {
        /// Every method of CRI v1 that the vendored proto knows, and `Unknown` for the rest.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Method {
            $($($name,)*)*
            Unknown,
        }

        impl Method {
            /// All known methods, in proto order.
            pub const ALL: &'static [Method] = &[$($(Method::$name,)*)*];

            /// The method's name as in the proto, or `unknown`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($(Method::$name => stringify!($name),)*)*
                    Method::Unknown => "unknown",
                }
            }

            /// The service that declares this method.
            pub fn service(self) -> Service {
                match self {
                    $($(Method::$name => Service::$service,)*)*
                    Method::Unknown => Service::Other,
                }
            }

            fn lookup(service: Service, name: &str) -> Method {
                match (service, name) {
                    $($((Service::$service, stringify!($name)) => Method::$name,)*)*
                    _ => Method::Unknown,
                }
            }
        }
    };
}

methods! {
    Runtime => [
        Version, RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
        ListPodSandbox, CreateContainer, StartContainer, StopContainer, RemoveContainer,
        ListContainers, ContainerStatus, UpdateContainerResources, ReopenContainerLog, ExecSync,
        Exec, Attach, PortForward, ContainerStats, ListContainerStats, PodSandboxStats,
        ListPodSandboxStats, UpdateRuntimeConfig, Status, CheckpointContainer,
        GetContainerEvents, ListMetricDescriptors, ListPodSandboxMetrics, RuntimeConfig,
    ],
    Image => [ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo],
}

impl Method {
    /// Whether the runtime answers this method with a stream of messages that can stay open for
    /// hours. Such answers are ended cleanly at shutdown instead of being cut off.
    pub fn is_server_streaming(self) -> bool {
        matches!(self, Method::GetContainerEvents)
    }
}

/// Groups of methods that configuration names instead of listing each method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodClass {
    /// Sandboxes and containers created, started, stopped, removed, updated, checkpointed.
    Lifecycle,
    /// Exec, ExecSync, Attach, PortForward: a way into a running container.
    Exec,
    /// Every ImageService method.
    Image,
    /// Calls that change nothing: Version, Status, RuntimeConfig, List*, *Status, *Stats,
    /// ImageFsInfo, ListMetricDescriptors, ListPodSandboxMetrics, GetContainerEvents.
    Read,
}

impl MethodClass {
    pub const ALL: [MethodClass; 4] = [
        MethodClass::Lifecycle,
        MethodClass::Exec,
        MethodClass::Image,
        MethodClass::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Lifecycle => "lifecycle",
            MethodClass::Exec => "exec",
            MethodClass::Image => "image",
            MethodClass::Read => "read",
        }
    }

    /// Whether `method` belongs to the class. Methods our proto does not know belong to none.
    pub fn contains(self, method: Method) -> bool {
        use Method::*;
        match self {
            MethodClass::Lifecycle => matches!(
                method,
                RunPodSandbox
                    | StopPodSandbox
                    | RemovePodSandbox
                    | CreateContainer
                    | StartContainer
                    | StopContainer
                    | RemoveContainer
                    | UpdateContainerResources
                    | CheckpointContainer
            ),
            MethodClass::Exec => matches!(method, Exec | ExecSync | Attach | PortForward),
            MethodClass::Image => method.service() == Service::Image,
            MethodClass::Read => matches!(
                method,
                Version
                    | Status
                    | RuntimeConfig
                    | ListPodSandbox
                    | ListContainers
                    | ListContainerStats
                    | ListPodSandboxStats
                    | ListImages
                    | ListMetricDescriptors
                    | ListPodSandboxMetrics
                    | PodSandboxStatus
                    | ContainerStatus
                    | ImageStatus
                    | ContainerStats
                    | PodSandboxStats
                    | ImageFsInfo
                    | GetContainerEvents
            ),
        }
    }
}

/// A set of methods as configuration writes it: method names (`ExecSync`, or a name our proto
/// does not know yet, such as `UpdatePodSandboxResources`), classes (`lifecycle`, `exec`,
/// `image`, `read`), or `"*"` for every call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSet {
    all: bool,
    classes: Vec<MethodClass>,
    names: Vec<Box<str>>,
}

impl MethodSet {
    /// Every call.
    pub fn all() -> MethodSet {
        MethodSet {
            all: true,
            ..MethodSet::default()
        }
    }

    /// Parses the entries of a configuration list; the error names the entry at fault.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<MethodSet, String> {
        let mut set = MethodSet::default();
        for entry in entries {
            let entry = entry.as_ref();
            if entry == "*" {
                set.all = true;
            } else if let Some(class) = MethodClass::ALL.iter().find(|c| c.as_str() == entry) {
                set.classes.push(*class);
            } else if entry.starts_with(|c: char| c.is_ascii_uppercase())
                && entry.chars().all(|c| c.is_ascii_alphanumeric())
            {
                set.names.push(entry.into());
            } else {
                return Err(format!(
                    "{entry:?} is neither a CRI method name (e.g. ExecSync) nor one of \"*\", lifecycle, exec, image, read"
                ));
            }
        }
        Ok(set)
    }

    /// Whether the set names the call's method itself (not only through a class or `*`).
    pub fn names(&self, rpc: &Rpc) -> bool {
        self.names.iter().any(|n| **n == *rpc.method_name())
    }

    /// Whether the call is in the set.
    pub fn contains(&self, rpc: &Rpc) -> bool {
        self.all || self.classes.iter().any(|c| c.contains(rpc.method)) || self.names(rpc)
    }
}

impl<'de> serde::Deserialize<'de> for MethodSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = <Vec<String> as serde::Deserialize>::deserialize(d)?;
        MethodSet::parse(&entries).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed call: which service and method, and the original path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rpc {
    pub service: Service,
    pub method: Method,
    /// The path exactly as the caller sent it, e.g. `/runtime.v1.RuntimeService/Version`.
    /// Shared, not copied, by the layers that keep it (log, audit).
    pub path: std::sync::Arc<str>,
}

/// The CRI services by the names callers use: v1, and v1alpha2, which containerd 1.x still
/// serves on the same socket with the same messages (v1 is v1alpha2 copied; fields added since
/// have new numbers). A v1alpha2 call is judged, audited and counted as the v1 call of the same
/// name: otherwise naming the older version would pass every policy unread.
const RUNTIME_SERVICES: [&str; 2] = [
    "runtime.v1.RuntimeService",
    "runtime.v1alpha2.RuntimeService",
];
const IMAGE_SERVICES: [&str; 2] = ["runtime.v1.ImageService", "runtime.v1alpha2.ImageService"];

impl Rpc {
    /// Parses a gRPC path of the form `/package.Service/Method`. Never fails: anything else is
    /// an unknown method of an unknown service, and is forwarded all the same.
    pub fn from_path(path: &str) -> Rpc {
        let (service_name, method_name) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        let service = if RUNTIME_SERVICES.contains(&service_name) {
            Service::Runtime
        } else if IMAGE_SERVICES.contains(&service_name) {
            Service::Image
        } else {
            Service::Other
        };
        Rpc {
            service,
            method: Method::lookup(service, method_name),
            path: path.into(),
        }
    }

    /// The method name as the caller wrote it (the last path segment), for logs.
    pub fn method_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_methods_of_both_services() {
        let rpc = Rpc::from_path("/runtime.v1.RuntimeService/CreateContainer");
        assert_eq!(rpc.service, Service::Runtime);
        assert_eq!(rpc.method, Method::CreateContainer);
        let rpc = Rpc::from_path("/runtime.v1.ImageService/PullImage");
        assert_eq!(rpc.service, Service::Image);
        assert_eq!(rpc.method, Method::PullImage);
    }

    #[test]
    fn v1alpha2_calls_are_the_v1_calls_of_the_same_name() {
        let rpc = Rpc::from_path("/runtime.v1alpha2.RuntimeService/ExecSync");
        assert_eq!(
            (rpc.service, rpc.method),
            (Service::Runtime, Method::ExecSync)
        );
        assert_eq!(&*rpc.path, "/runtime.v1alpha2.RuntimeService/ExecSync");
        let rpc = Rpc::from_path("/runtime.v1alpha2.ImageService/PullImage");
        assert_eq!(
            (rpc.service, rpc.method),
            (Service::Image, Method::PullImage)
        );
        for path in [
            "/runtime.v1alpha1.RuntimeService/ExecSync",
            "/runtime.v2.RuntimeService/ExecSync",
            "/runtime.v1alpha2.RuntimeService/ExecSync/",
        ] {
            assert_eq!(Rpc::from_path(path).method, Method::Unknown, "{path}");
        }
    }

    #[test]
    fn unknown_methods_keep_their_service_and_path() {
        let rpc = Rpc::from_path("/runtime.v1.RuntimeService/UpdatePodSandboxResources");
        assert_eq!(rpc.service, Service::Runtime);
        assert_eq!(rpc.method, Method::Unknown);
        assert_eq!(rpc.method_name(), "UpdatePodSandboxResources");
        assert_eq!(
            &*rpc.path,
            "/runtime.v1.RuntimeService/UpdatePodSandboxResources"
        );
    }

    #[test]
    fn a_method_of_the_other_service_is_not_mistaken() {
        let rpc = Rpc::from_path("/runtime.v1.ImageService/Version");
        assert_eq!(rpc.method, Method::Unknown);
    }

    #[test]
    fn garbage_paths_are_unknown_not_errors() {
        for path in [
            "",
            "/",
            "//",
            "/x",
            "no-slash",
            "/containerd.services.tasks.v1.Tasks/Exec",
        ] {
            let rpc = Rpc::from_path(path);
            assert_eq!(rpc.method, Method::Unknown, "{path}");
            assert_eq!(rpc.service, Service::Other, "{path}");
        }
    }

    #[test]
    fn method_sets_match_names_classes_and_unknown_names() {
        let set = MethodSet::parse(&["exec", "PullImage", "UpdatePodSandboxResources"]).unwrap();
        let call = |m: &str| Rpc::from_path(&format!("/runtime.v1.RuntimeService/{m}"));
        assert!(set.contains(&call("ExecSync")));
        assert!(set.contains(&call("PortForward")));
        assert!(set.contains(&Rpc::from_path("/runtime.v1.ImageService/PullImage")));
        assert!(set.contains(&call("UpdatePodSandboxResources")));
        assert!(!set.contains(&call("CreateContainer")));
        assert!(
            MethodSet::parse(&["*"])
                .unwrap()
                .contains(&call("Anything"))
        );
        assert!(
            MethodSet::parse(&["execs"])
                .unwrap_err()
                .contains("\"execs\"")
        );
    }

    #[test]
    fn read_class_is_exactly_the_calls_that_change_nothing() {
        let reads: Vec<_> = Method::ALL
            .iter()
            .filter(|m| MethodClass::Read.contains(**m))
            .map(|m| m.as_str())
            .collect();
        assert_eq!(reads.len(), 17, "{reads:?}");
        for m in Method::ALL {
            let name = m.as_str();
            let looks_read = name.starts_with("List")
                || name.ends_with("Status")
                || name.ends_with("Stats")
                || matches!(
                    name,
                    "Version" | "RuntimeConfig" | "ImageFsInfo" | "GetContainerEvents"
                );
            assert_eq!(MethodClass::Read.contains(*m), looks_read, "{name}");
        }
        assert!(!MethodClass::Read.contains(Method::Unknown));
    }

    #[test]
    fn every_method_round_trips_through_its_path() {
        assert_eq!(Method::ALL.len(), 34);
        for &m in Method::ALL {
            let service = m.service().proto_name().unwrap();
            assert_eq!(Rpc::from_path(&format!("/{service}/{m}")).method, m);
        }
    }
}
