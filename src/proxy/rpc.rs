//! The CRI call a request makes, parsed once from its `:path` and carried in the request
//! extensions for every layer to read.
//!
//! A path that names no method our proto knows is still a valid call: it is forwarded as it
//! is, and counts as [`Method::Unknown`] wherever a bounded label is needed.

use std::fmt;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

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
    ($($service:ident => [$($name:ident = $facts:expr),* $(,)?]),* $(,)?) => {
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

            /// What every layer needs to know about the method: its row of the table below.
            pub const fn facts(self) -> Facts {
                match self {
                    $($(Method::$name => $facts,)*)*
                    Method::Unknown => Facts::UNKNOWN,
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

// The table of methods: one row each, with everything criguard's layers know about it. A
// method that needs special handling is added here, and only here.
methods! {
    Runtime => [
        Version = Facts::read().throttled_only_by_name(),
        RunPodSandbox = Facts::lifecycle(Names::Described).creates(Object::Sandbox).learned(),
        StopPodSandbox = Facts::lifecycle(Names::Sandbox).ends_object().throttled_only_by_name(),
        RemovePodSandbox = Facts::lifecycle(Names::Sandbox)
            .ends_object()
            .learned()
            .throttled_only_by_name(),
        PodSandboxStatus = Facts::read().naming(Names::Sandbox),
        ListPodSandbox = Facts::read(),
        CreateContainer = Facts::lifecycle(Names::Described).creates(Object::Container).learned(),
        StartContainer = Facts::lifecycle(Names::Container),
        StopContainer = Facts::lifecycle(Names::Container).ends_object().throttled_only_by_name(),
        RemoveContainer = Facts::lifecycle(Names::Container)
            .ends_object()
            .learned()
            .throttled_only_by_name(),
        ListContainers = Facts::read(),
        ContainerStatus = Facts::read().naming(Names::Container),
        UpdateContainerResources = Facts::lifecycle(Names::Container),
        ReopenContainerLog = Facts::other(Names::Container),
        ExecSync = Facts::exec(Names::Container),
        Exec = Facts::exec(Names::Container),
        Attach = Facts::exec(Names::Container),
        PortForward = Facts::exec(Names::Sandbox),
        ContainerStats = Facts::read().naming(Names::Container),
        ListContainerStats = Facts::read(),
        PodSandboxStats = Facts::read().naming(Names::Sandbox),
        ListPodSandboxStats = Facts::read(),
        UpdateRuntimeConfig = Facts::other(Names::Nothing),
        // Learned: whether every runtime handler runs pods in user namespaces (PSS relaxes).
        Status = Facts::read().throttled_only_by_name().learned(),
        CheckpointContainer = Facts::lifecycle(Names::Container),
        GetContainerEvents = Facts::read().server_streaming(),
        ListMetricDescriptors = Facts::read(),
        ListPodSandboxMetrics = Facts::read(),
        RuntimeConfig = Facts::read(),
        // CRI 1.34-1.36: the list calls' streaming twins (each answer a stream of pages, ended
        // by the runtime once the list is sent) and in-place pod resize at the sandbox level.
        StreamPodSandboxes = Facts::read().server_streaming(),
        StreamContainers = Facts::read().server_streaming(),
        StreamContainerStats = Facts::read().server_streaming(),
        StreamPodSandboxStats = Facts::read().server_streaming(),
        StreamPodSandboxMetrics = Facts::read().server_streaming(),
        UpdatePodSandboxResources = Facts::lifecycle(Names::Sandbox),
    ],
    Image => [
        ListImages = Facts::read(),
        ImageStatus = Facts::read().naming(Names::Image).learned(),
        PullImage = Facts::images(Names::Described).creates(Object::Image).learned(),
        RemoveImage = Facts::images(Names::Image).ends_object(),
        ImageFsInfo = Facts::read(),
        StreamImages = Facts::read().server_streaming(),
    ],
}

/// What a call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Changes nothing.
    Read,
    /// Creates, starts, stops, removes, updates or checkpoints a sandbox or container.
    Lifecycle,
    /// A way into a running container.
    Exec,
    /// Pulls or removes an image.
    Images,
    /// Anything else (ReopenContainerLog, UpdateRuntimeConfig, methods the proto does not know).
    Other,
}

/// What a call's request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    Nothing,
    /// A container, by its id (`container_id = 1`).
    Container,
    /// A sandbox, by its id (`pod_sandbox_id = 1`).
    Sandbox,
    /// An image (`image = 1`, an ImageSpec).
    Image,
    /// The pod, container or image it creates, described in full (RunPodSandbox,
    /// CreateContainer, PullImage): what policies read through their views.
    Described,
}

/// The kinds of objects the runtime keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Sandbox,
    Container,
    Image,
}

/// One row of the table of methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub effect: Effect,
    pub names: Names,
    /// A successful answer names what the call created (its field 1).
    pub creates: Option<Object>,
    /// After it the object is gone (log reduction forgets its errors).
    pub ends_object: bool,
    /// The answer is a stream of messages (GetContainerEvents stays open for hours; the
    /// `Stream*` lists end once sent): ended cleanly at shutdown, outside in-flight bounds.
    pub server_streaming: bool,
    /// The pod inventory learns from the call and its answer.
    pub learned: bool,
    /// A rate limit throttles it only when it names the method itself (not by class or `*`):
    /// the calls that keep a node Ready or free its resources.
    pub throttled_only_by_name: bool,
}

impl Facts {
    const UNKNOWN: Facts = Facts::new(Effect::Other, Names::Nothing);

    const fn new(effect: Effect, names: Names) -> Facts {
        Facts {
            effect,
            names,
            creates: None,
            ends_object: false,
            server_streaming: false,
            learned: false,
            throttled_only_by_name: false,
        }
    }

    const fn read() -> Facts {
        Facts::new(Effect::Read, Names::Nothing)
    }

    const fn lifecycle(names: Names) -> Facts {
        Facts::new(Effect::Lifecycle, names)
    }

    const fn exec(names: Names) -> Facts {
        Facts::new(Effect::Exec, names)
    }

    const fn images(names: Names) -> Facts {
        Facts::new(Effect::Images, names)
    }

    const fn other(names: Names) -> Facts {
        Facts::new(Effect::Other, names)
    }

    const fn naming(self, names: Names) -> Facts {
        Facts { names, ..self }
    }

    const fn creates(self, object: Object) -> Facts {
        Facts {
            creates: Some(object),
            ..self
        }
    }

    const fn ends_object(self) -> Facts {
        Facts {
            ends_object: true,
            ..self
        }
    }

    const fn server_streaming(self) -> Facts {
        Facts {
            server_streaming: true,
            ..self
        }
    }

    const fn learned(self) -> Facts {
        Facts {
            learned: true,
            ..self
        }
    }

    const fn throttled_only_by_name(self) -> Facts {
        Facts {
            throttled_only_by_name: true,
            ..self
        }
    }
}

impl Method {
    /// Whether the runtime answers this method with a stream of messages that can stay open for
    /// hours. Such answers are ended cleanly at shutdown instead of being cut off.
    pub fn is_server_streaming(self) -> bool {
        self.facts().server_streaming
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
    /// Calls that change nothing: Version, Status, RuntimeConfig, List*, Stream*, *Status,
    /// *Stats, ImageFsInfo, ListMetricDescriptors, ListPodSandboxMetrics, GetContainerEvents.
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
        let effect = method.facts().effect;
        match self {
            MethodClass::Lifecycle => effect == Effect::Lifecycle,
            MethodClass::Exec => effect == Effect::Exec,
            MethodClass::Image => method.service() == Service::Image,
            MethodClass::Read => effect == Effect::Read,
        }
    }
}

/// A set of methods as configuration writes it: method names (`ExecSync`, or a name our proto
/// does not know yet), classes (`lifecycle`, `exec`, `image`, `read`), or `"*"` for every call.
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
    /// The call of a known method on its CRI v1 service (`Unknown` is sent to the runtime
    /// service under the name `unknown`).
    pub fn of(method: Method) -> Rpc {
        let service = method.service().proto_name().unwrap_or(RUNTIME_SERVICES[0]);
        Rpc::from_path(&format!("/{service}/{}", method.as_str()))
    }

    /// The call of the method `name`, as configuration and policy cases name methods: on its
    /// own service when criguard's proto knows it, else on the runtime service.
    pub fn named(name: &str) -> Rpc {
        match Method::ALL.iter().find(|m| m.as_str() == name) {
            Some(&method) => Rpc::of(method),
            None => Rpc::from_path(&format!("/{}/{name}", RUNTIME_SERVICES[0])),
        }
    }

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

/// The request (`input`) or answer type of a call, if the proto knows its method.
pub fn message_type(rpc: &Rpc, input: bool) -> Option<MessageDescriptor> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(crate::cri::DESCRIPTORS).ok())
        .as_ref()?;
    let method = pool
        .get_service_by_name(rpc.service.proto_name()?)?
        .methods()
        .find(|m| m.name() == rpc.method_name())?;
    Some(if input {
        method.input()
    } else {
        method.output()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with the vendored proto: each row's streaming, the field that names
    /// its object, and the field of the answer that names what it created.
    #[test]
    fn the_table_of_methods_agrees_with_the_proto() {
        let pool = prost_reflect::DescriptorPool::decode(crate::cri::DESCRIPTORS).unwrap();
        for &method in Method::ALL {
            let service = pool
                .get_service_by_name(method.service().proto_name().unwrap())
                .unwrap();
            let proto = service
                .methods()
                .find(|m| m.name() == method.as_str())
                .unwrap();
            let facts = method.facts();
            assert_eq!(
                facts.server_streaming,
                proto.is_server_streaming(),
                "{method}"
            );
            let first = |m: prost_reflect::MessageDescriptor| {
                m.get_field(1)
                    .map(|f| f.name().to_string())
                    .unwrap_or_default()
            };
            let named = match facts.names {
                Names::Container => Some("container_id"),
                Names::Sandbox => Some("pod_sandbox_id"),
                Names::Image => Some("image"),
                Names::Nothing | Names::Described => None,
            };
            if let Some(name) = named {
                assert_eq!(first(proto.input()), name, "{method}");
            }
            let created = match facts.creates {
                Some(Object::Sandbox) => Some("pod_sandbox_id"),
                Some(Object::Container) => Some("container_id"),
                Some(Object::Image) => Some("image_ref"),
                None => None,
            };
            if let Some(name) = created {
                assert_eq!(first(proto.output()), name, "{method}");
            }
        }
    }

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
        let rpc = Rpc::from_path("/runtime.v1.RuntimeService/NotYetInTheCri");
        assert_eq!(rpc.service, Service::Runtime);
        assert_eq!(rpc.method, Method::Unknown);
        assert_eq!(rpc.method_name(), "NotYetInTheCri");
        assert_eq!(&*rpc.path, "/runtime.v1.RuntimeService/NotYetInTheCri");
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
        let set = MethodSet::parse(&["exec", "PullImage", "NotYetInTheCri"]).unwrap();
        let call = |m: &str| Rpc::from_path(&format!("/runtime.v1.RuntimeService/{m}"));
        assert!(set.contains(&call("ExecSync")));
        assert!(set.contains(&call("PortForward")));
        assert!(set.contains(&Rpc::from_path("/runtime.v1.ImageService/PullImage")));
        assert!(set.contains(&call("NotYetInTheCri")));
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
        assert_eq!(reads.len(), 23, "{reads:?}");
        for m in Method::ALL {
            let name = m.as_str();
            let looks_read = name.starts_with("List")
                || name.starts_with("Stream")
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
        assert_eq!(Method::ALL.len(), 41);
        for &m in Method::ALL {
            let service = m.service().proto_name().unwrap();
            assert_eq!(Rpc::from_path(&format!("/{service}/{m}")).method, m);
        }
    }
}
