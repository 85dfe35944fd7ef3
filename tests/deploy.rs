//! deploy/kubernetes as an operator applies it: every manifest a valid object of its kind, the
//! pieces agreeing with each other and with the files they copy, and the node installer doing
//! the right thing on a node (a temporary root, systemctl recorded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use serde_json::Value;

const DIR: &str = "deploy/kubernetes";

/// Every document of every manifest in deploy/kubernetes, as (file, document).
fn documents() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for name in manifest_files() {
        let text = std::fs::read_to_string(Path::new(DIR).join(&name)).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            if !value.is_null() {
                found.push((name.clone(), value));
            }
        }
    }
    found
}

fn manifest_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

/// Deserializes `value` as `T` and back: a field that `T` does not know (a typo, a wrong level)
/// is dropped on the way, and the two differ.
fn valid_as<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("{file}: not a valid {}: {err}", value["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(path) = difference(value, &back, String::new()) {
        panic!(
            "{file}: {} {}: {path} is not a field of its kind (or not of its type)",
            value["kind"], value["metadata"]["name"]
        );
    }
    typed
}

/// The first path at which `written` and `understood` differ.
fn difference(written: &Value, understood: &Value, path: String) -> Option<String> {
    match (written, understood) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(key, value)| {
            let at = format!("{path}.{key}");
            match b.get(key) {
                Some(other) => difference(value, other, at),
                None => Some(at),
            }
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| difference(x, y, format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path),
    }
}

fn only_fields(file: &str, object: &Value, known: &[&str]) {
    for key in object.as_object().unwrap().keys() {
        assert!(known.contains(&key.as_str()), "{file}: unknown field {key}");
    }
}

fn find<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    &documents
        .iter()
        .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {DIR}"))
        .1
}

#[test]
fn every_manifest_is_a_valid_object_of_its_kind() {
    let documents = documents();
    let mut kinds = Vec::new();
    for (file, document) in &documents {
        let kind = document["kind"].as_str().unwrap_or_default();
        match kind {
            "Namespace" => drop(valid_as::<Namespace>(file, document)),
            "ConfigMap" => drop(valid_as::<ConfigMap>(file, document)),
            "DaemonSet" => drop(valid_as::<DaemonSet>(file, document)),
            // Prometheus Operator kinds: k8s-openapi does not have them; their fields are
            // checked against the operator's API (v1) here, their contents below.
            "PodMonitor" => {
                assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1", "{file}");
                only_fields(
                    file,
                    &document["spec"],
                    &["jobLabel", "selector", "podMetricsEndpoints"],
                );
                for endpoint in document["spec"]["podMetricsEndpoints"].as_array().unwrap() {
                    only_fields(file, endpoint, &["port", "path", "interval", "relabelings"]);
                }
            }
            "PrometheusRule" => {
                assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1", "{file}");
                only_fields(file, &document["spec"], &["groups"]);
            }
            other => panic!("{file}: a {other} that this test does not check"),
        }
        if kind != "Namespace" {
            assert_eq!(
                document["metadata"]["namespace"], "criguard-system",
                "{file}: {kind}"
            );
        }
        kinds.push(kind.to_string());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "PodMonitor",
            "PrometheusRule"
        ]
    );
    // `kubectl apply -k deploy/kubernetes` applies every file.
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(Path::new(DIR).join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut resources: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    resources.sort();
    assert_eq!(resources, manifest_files());
}

#[test]
fn the_daemonset_probes_and_exposes_the_admin_address_of_its_config() {
    let documents = documents();
    let daemonset: DaemonSet =
        valid_as("daemonset.yaml", find(&documents, "DaemonSet", "criguard"));
    let spec = daemonset.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let config = config_map(&documents, "criguard-config");
    let yaml: Value = serde_yaml_ng::from_str(&config["criguard.yaml"]).unwrap();
    let admin_port: i32 = yaml["adminAddress"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    for (probe, path) in [
        (container.readiness_probe.as_ref(), "/readyz"),
        (container.liveness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe.unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            Value::from(admin_port)
        );
    }
    // The pod shares the node's network: its port is criguard's admin port on the node, the
    // one the PodMonitor scrapes by name.
    assert_eq!(pod.host_network, Some(true));
    let port = &container.ports.as_ref().unwrap()[0];
    assert_eq!(port.container_port, admin_port);
    let monitor = find(&documents, "PodMonitor", "criguard");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"].as_str(),
        port.name.as_deref()
    );
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels.get(key).map(String::as_str), value.as_str());
    }
    // The alert rules and the dashboard select job="criguard": the PodMonitor's job label.
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(labels[job_label], "criguard");
    // Every mount has its volume, and every ConfigMap volume its ConfigMap.
    let volumes = pod.volumes.unwrap();
    for mount in container.volume_mounts.as_ref().unwrap() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name));
        if let Some(config_map) = &volume.config_map {
            config_map_of(&documents, &config_map.name);
            assert!(
                mount.sub_path.is_none(),
                "a subPath mount never sees ConfigMap updates"
            );
        }
    }
    // criguard's own pod is privileged: the policies must not apply to its namespace.
    assert!(
        yaml["policyExemptions"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&Value::from("criguard-system"))
    );
}

fn config_map_of(documents: &[(String, Value)], name: &str) -> ConfigMap {
    valid_as("configmap", find(documents, "ConfigMap", name))
}

fn config_map(documents: &[(String, Value)], name: &str) -> BTreeMap<String, String> {
    config_map_of(documents, name).data.unwrap()
}

#[test]
fn the_configmaps_hold_a_config_that_checks_and_the_shipped_policies_unchanged() {
    let documents = documents();
    let policies = config_map(&documents, "criguard-policies");
    for (name, text) in &policies {
        let shipped = std::fs::read_to_string(Path::new("policies").join(name))
            .unwrap_or_else(|_| panic!("{name} is not one of policies/"));
        assert_eq!(text, &shipped, "{name} differs from policies/{name}");
    }
    let node = tempfile::tempdir().unwrap();
    let (config, _) = materialize(&documents, node.path());
    let out = Command::new(env!("CARGO_BIN_EXE_criguard"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("({} policies", policies.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_prometheus_rule_and_the_dashboard_are_the_files_they_copy() {
    let documents = documents();
    let rule = find(&documents, "PrometheusRule", "criguard");
    let alerts: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string("deploy/prometheus/criguard-alerts.yml").unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"], alerts,
        "prometheusrule.yaml differs from deploy/prometheus/criguard-alerts.yml"
    );
    let dashboard = config_map(&documents, "criguard-dashboard");
    let embedded: Value = serde_json::from_str(&dashboard["criguard-dashboard.json"]).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/criguard-dashboard.json").unwrap(),
    )
    .unwrap();
    assert_eq!(
        embedded, file,
        "grafana-dashboard.yaml differs from deploy/grafana"
    );
}

/// Writes the ConfigMaps as the pod sees them under `root`: config/criguard.yaml (its policy
/// directory pointed at `root`/policies) and policies/*.yaml. Returns both paths.
fn materialize(documents: &[(String, Value)], root: &Path) -> (PathBuf, PathBuf) {
    let policy_dir = root.join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    for (name, text) in config_map(documents, "criguard-policies") {
        std::fs::write(policy_dir.join(name), text).unwrap();
    }
    let config_dir = root.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_map(documents, "criguard-config")["criguard.yaml"].replace(
        "policies: /etc/criguard/policies",
        &format!("policies: {}", policy_dir.display()),
    );
    let path = config_dir.join("criguard.yaml");
    std::fs::write(&path, config).unwrap();
    (path, policy_dir)
}

/// One run of `criguard-install --once` on a node rooted at `host`: (success, systemctl calls,
/// log). systemctl fails `reload-or-restart` while the pod directory has a file `fail-reload`.
fn install_once(pod: &Path, host: &Path) -> (bool, Vec<String>, String) {
    let calls = pod.join("systemctl.calls");
    let _ = std::fs::remove_file(&calls);
    let stub = pod.join("systemctl");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\n[ -e {} ] && [ \"$1\" = reload-or-restart ] && exit 1\nexit 0\n",
            calls.display(),
            pod.join("fail-reload").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(Path::new(DIR).join("criguard-install"))
        .arg("--once")
        .env("CRIGUARD_HOST_ROOT", host)
        .env("CRIGUARD_CONFIG_DIR", pod.join("config"))
        .env("CRIGUARD_POLICY_DIR", pod.join("policies"))
        .env("CRIGUARD_BIN", env!("CARGO_BIN_EXE_criguard"))
        .env("CRIGUARD_UNITS", "deploy/systemd")
        .env("CRIGUARD_SYSTEMCTL", &stub)
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    (
        out.status.success(),
        calls.lines().map(str::to_string).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_installer_puts_criguard_on_the_node_restarts_on_upgrade_and_reloads_on_change() {
    let documents = documents();
    let pod = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let (config, policy_dir) = materialize(&documents, pod.path());

    // First run: binary, units, config and policies land; systemd learns the units, owns the
    // socket and starts criguard.
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(ok, "{log}");
    let installed = |path: &str| host.path().join(path);
    assert_eq!(
        std::fs::read(installed("usr/local/bin/criguard")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_criguard")).unwrap()
    );
    for unit in ["criguard.socket", "criguard.service"] {
        assert_eq!(
            std::fs::read_to_string(installed(&format!("etc/systemd/system/{unit}"))).unwrap(),
            std::fs::read_to_string(Path::new("deploy/systemd").join(unit)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read_to_string(installed("etc/criguard/criguard.yaml")).unwrap(),
        std::fs::read_to_string(&config).unwrap()
    );
    assert!(installed("etc/criguard/policies/pss-baseline.yaml").exists());
    assert_eq!(
        calls,
        [
            "daemon-reload",
            "enable --now criguard.socket",
            "enable criguard.service",
            "restart criguard.service"
        ]
    );

    // Nothing changed: criguard is left alone (started if it was not running).
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(ok, "{log}");
    assert_eq!(
        calls,
        [
            "enable --now criguard.socket",
            "enable criguard.service",
            "start criguard.service"
        ]
    );

    // A policy added and one removed in the ConfigMap: the node follows, criguard reloads; a
    // reload that fails is done at the next sync.
    std::fs::remove_file(policy_dir.join("pss-baseline.yaml")).unwrap();
    std::fs::copy(
        "policies/restrict-exec.yaml",
        policy_dir.join("restrict-exec.yaml"),
    )
    .unwrap();
    std::fs::write(pod.path().join("fail-reload"), "").unwrap();
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(!ok, "{log}");
    assert_eq!(calls.last().unwrap(), "reload-or-restart criguard.service");
    assert!(
        log.contains("systemctl reload-or-restart criguard.service failed"),
        "{log}"
    );
    assert!(!installed("etc/criguard/policies/pss-baseline.yaml").exists());
    assert!(installed("etc/criguard/policies/restrict-exec.yaml").exists());
    std::fs::remove_file(pod.path().join("fail-reload")).unwrap();
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(ok, "{log}");
    assert_eq!(calls.last().unwrap(), "reload-or-restart criguard.service");
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(ok, "{log}");
    assert_eq!(calls.last().unwrap(), "start criguard.service", "done once");

    // A broken configuration is not installed: the node keeps what it runs.
    let good = std::fs::read_to_string(installed("etc/criguard/criguard.yaml")).unwrap();
    std::fs::write(&config, "listen: relative.sock\n").unwrap();
    let (ok, calls, log) = install_once(pod.path(), host.path());
    assert!(!ok);
    assert!(calls.is_empty(), "{calls:?}");
    assert!(
        log.contains("listen") && log.contains("keeps the criguard it runs"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(installed("etc/criguard/criguard.yaml")).unwrap(),
        good
    );
}
