//! What criguard knows of the node's sandboxes and containers, so that a call naming only an id
//! (ExecSync, StopContainer, RemovePodSandbox, ...) can be told which pod it is about.
//!
//! It learns from the answers to RunPodSandbox and CreateContainer that pass through, forgets on
//! RemoveContainer and RemovePodSandbox, and at start-up reads what the runtime already runs
//! (ListPodSandbox, ListContainers), so that a restart of criguard loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::proxy::inspect::{PodRef, Subject};
use crate::proxy::rpc::Method;

/// At most this many sandboxes and containers are remembered; a node runs far fewer.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Debug)]
struct ContainerEntry {
    sandbox_id: Arc<str>,
    name: String,
    image: String,
}

#[derive(Debug, Default)]
struct Tables {
    sandboxes: HashMap<Arc<str>, PodRef>,
    containers: HashMap<String, ContainerEntry>,
}

/// Sandboxes and containers by id. Cheap to clone; all clones share one table.
#[derive(Clone, Debug, Default)]
pub struct Inventory(Arc<RwLock<Tables>>);

impl Inventory {
    pub fn new() -> Inventory {
        Inventory::default()
    }

    /// Fills in the pod (and container name and image) of a subject that names only ids.
    pub fn complete(&self, subject: &mut Subject) {
        if subject.pod.is_some() && subject.container_id.is_none() {
            return;
        }
        let tables = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = &subject.container_id
            && let Some(container) = tables.containers.get(id)
        {
            subject
                .sandbox_id
                .get_or_insert_with(|| container.sandbox_id.to_string());
            subject
                .container_name
                .get_or_insert_with(|| container.name.clone());
            subject.image.get_or_insert_with(|| container.image.clone());
        }
        if subject.pod.is_none()
            && let Some(sandbox) = &subject.sandbox_id
        {
            subject.pod = tables.sandboxes.get(sandbox.as_str()).cloned();
        }
    }

    /// Learns from a successful call: `subject` is what its request said, `created` the id its
    /// answer carried (RunPodSandbox, CreateContainer).
    pub fn learn(&self, method: Method, subject: &Subject, created: Option<&str>) {
        let mut tables = self.0.write().unwrap_or_else(|e| e.into_inner());
        match (method, created) {
            (Method::RunPodSandbox, Some(id)) => {
                if let Some(pod) = &subject.pod {
                    tables.add_sandbox(id, pod.clone());
                }
            }
            (Method::CreateContainer, Some(id)) => {
                if let Some(sandbox) = &subject.sandbox_id {
                    if let Some(pod) = &subject.pod
                        && !tables.sandboxes.contains_key(sandbox.as_str())
                    {
                        tables.add_sandbox(sandbox, pod.clone());
                    }
                    tables.add_container(
                        id,
                        sandbox,
                        subject.container_name.as_deref().unwrap_or_default(),
                        subject.image.as_deref().unwrap_or_default(),
                    );
                }
            }
            (Method::RemoveContainer, _) => {
                if let Some(id) = &subject.container_id {
                    tables.containers.remove(id);
                }
            }
            (Method::RemovePodSandbox, _) => {
                if let Some(id) = &subject.sandbox_id {
                    tables.sandboxes.remove(id.as_str());
                    tables.containers.retain(|_, c| *c.sandbox_id != **id);
                }
            }
            _ => {}
        }
    }

    /// Reads the sandboxes and containers the runtime has now. Errors are logged: without them
    /// the inventory still learns from the calls that pass.
    pub async fn load_from(&self, runtime: &std::path::Path) {
        match self.try_load(runtime).await {
            Ok((sandboxes, containers)) => {
                tracing::debug!(sandboxes, containers, "inventory read from the runtime")
            }
            Err(err) => tracing::info!(
                error = %err,
                "could not read the runtime's sandboxes and containers; audit events name the pods of calls made from now on"
            ),
        }
    }

    async fn try_load(&self, runtime: &std::path::Path) -> anyhow::Result<(usize, usize)> {
        use crate::cri::{ListContainersRequest, ListPodSandboxRequest};
        let mut client = crate::client::runtime(crate::client::channel(runtime).await?);
        let sandboxes = client
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        let containers = client
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        let mut tables = self.0.write().unwrap_or_else(|e| e.into_inner());
        for sandbox in &sandboxes {
            let metadata = sandbox.metadata.clone().unwrap_or_default();
            let pod = PodRef {
                namespace: metadata.namespace,
                name: metadata.name,
                uid: metadata.uid,
            };
            tables.add_sandbox(&sandbox.id, pod);
        }
        for container in &containers {
            tables.add_container(
                &container.id,
                &container.pod_sandbox_id,
                container.metadata.as_ref().map_or("", |m| m.name.as_str()),
                container.image.as_ref().map_or("", |i| i.image.as_str()),
            );
        }
        Ok((sandboxes.len(), containers.len()))
    }
}

impl Tables {
    fn add_sandbox(&mut self, id: &str, pod: PodRef) {
        if self.sandboxes.len() < MAX_ENTRIES {
            self.sandboxes.insert(id.into(), pod);
        }
    }

    /// Nothing is copied when the table is full.
    fn add_container(&mut self, id: &str, sandbox_id: &str, name: &str, image: &str) {
        if self.containers.len() < MAX_ENTRIES {
            let sandbox_id = self
                .sandboxes
                .get_key_value(sandbox_id)
                .map_or_else(|| sandbox_id.into(), |(k, _)| k.clone());
            self.containers.insert(
                id.into(),
                ContainerEntry {
                    sandbox_id,
                    name: name.into(),
                    image: image.into(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "team-a".into(),
            name: "web-1".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn a_container_id_leads_to_its_pod_until_the_sandbox_is_removed() {
        let inventory = Inventory::new();
        let run = Subject {
            pod: Some(pod()),
            ..Subject::default()
        };
        inventory.learn(Method::RunPodSandbox, &run, Some("s-1"));
        let create = Subject {
            pod: Some(pod()),
            sandbox_id: Some("s-1".into()),
            container_name: Some("app".into()),
            image: Some("busybox:1.36".into()),
            ..Subject::default()
        };
        inventory.learn(Method::CreateContainer, &create, Some("c-1"));

        let mut exec = Subject {
            container_id: Some("c-1".into()),
            ..Subject::default()
        };
        inventory.complete(&mut exec);
        assert_eq!(exec.pod, Some(pod()));
        assert_eq!(exec.sandbox_id.as_deref(), Some("s-1"));
        assert_eq!(exec.container_name.as_deref(), Some("app"));
        assert_eq!(exec.image.as_deref(), Some("busybox:1.36"));

        let remove = Subject {
            sandbox_id: Some("s-1".into()),
            ..Subject::default()
        };
        inventory.learn(Method::RemovePodSandbox, &remove, None);
        let mut exec = Subject {
            container_id: Some("c-1".into()),
            ..Subject::default()
        };
        inventory.complete(&mut exec);
        assert_eq!(exec.pod, None);
    }
}
