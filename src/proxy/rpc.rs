//! The CRI call a request makes, parsed once from its `:path` and carried in the request
//! extensions for every layer to read.
//!
//! A path that names no method our proto knows is still a valid call: it is forwarded as it
//! is, and counts as [`Method::Unknown`] wherever a bounded label is needed.

use std::fmt;

/// The gRPC service a call addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// `runtime.v1.RuntimeService`
    Runtime,
    /// `runtime.v1.ImageService`
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
    pub path: Box<str>,
}

const RUNTIME_PREFIX: &str = "runtime.v1.RuntimeService";
const IMAGE_PREFIX: &str = "runtime.v1.ImageService";

impl Rpc {
    /// Parses a gRPC path of the form `/package.Service/Method`. Never fails: anything else is
    /// an unknown method of an unknown service, and is forwarded all the same.
    pub fn from_path(path: &str) -> Rpc {
        let (service_name, method_name) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        let service = match service_name {
            RUNTIME_PREFIX => Service::Runtime,
            IMAGE_PREFIX => Service::Image,
            _ => Service::Other,
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
            "/runtime.v1alpha2.RuntimeService/Version",
        ] {
            let rpc = Rpc::from_path(path);
            assert_eq!(rpc.method, Method::Unknown, "{path}");
            assert_eq!(rpc.service, Service::Other, "{path}");
        }
    }

    #[test]
    fn every_method_round_trips_through_its_path() {
        assert_eq!(Method::ALL.len(), 34);
        for &m in Method::ALL {
            let prefix = match m.service() {
                Service::Runtime => RUNTIME_PREFIX,
                Service::Image => IMAGE_PREFIX,
                Service::Other => unreachable!(),
            };
            assert_eq!(Rpc::from_path(&format!("/{prefix}/{m}")).method, m);
        }
    }
}
