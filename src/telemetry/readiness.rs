//! Readiness: criguard checks each runtime endpoint in the background with a Version call on
//! a connection of its own, and is ready while every endpoint answered within the last
//! interval. `/readyz` and `criguard_runtime_up` read the result.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::client::{RawClient, grpc_frame};
use crate::proxy::runtime::Endpoint;
use crate::telemetry::metrics as names;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";
const NOT_PROBED: &str = "not probed yet";

/// The last probe of one endpoint.
#[derive(Clone, Debug)]
struct Probe {
    endpoint: String,
    path: PathBuf,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// The readiness of every runtime endpoint, shared with the admin server.
#[derive(Clone, Debug)]
pub struct Readiness {
    probes: Arc<Mutex<Vec<Probe>>>,
    interval: Duration,
}

impl Readiness {
    pub fn new(endpoints: &[&Endpoint], interval: Duration) -> Readiness {
        let mut probes: Vec<Probe> = Vec::new();
        for e in endpoints {
            if !probes.iter().any(|p| p.path == e.path) {
                probes.push(Probe {
                    endpoint: e.to_string(),
                    path: e.path.clone(),
                    last_ok: None,
                    last_error: Some(NOT_PROBED.into()),
                });
            }
        }
        Readiness {
            probes: Arc::new(Mutex::new(probes)),
            interval,
        }
    }

    /// `Ok(summary)` when every endpoint answered within the last interval, else `Err(reason)`.
    pub fn check(&self) -> Result<String, String> {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.interval * 2;
        let mut ok = Vec::new();
        let mut failing = Vec::new();
        for p in probes.iter() {
            match p.last_ok {
                Some(at) if at.elapsed() <= window => ok.push(format!(
                    "{} answered {:.1}s ago",
                    p.endpoint,
                    at.elapsed().as_secs_f64()
                )),
                _ => failing.push(format!(
                    "{} has not answered within {:?}: {}",
                    p.endpoint,
                    window,
                    p.last_error.as_deref().unwrap_or("no answer")
                )),
            }
        }
        if failing.is_empty() {
            Ok(format!("ready: {}", ok.join("; ")))
        } else {
            Err(format!("not ready: {}", failing.join("; ")))
        }
    }

    /// Probes every endpoint now and then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let targets: Vec<(String, PathBuf)> = {
                let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
                probes
                    .iter()
                    .map(|p| (p.endpoint.clone(), p.path.clone()))
                    .collect()
            };
            for (endpoint, path) in targets {
                let result = probe(&path, self.interval).await;
                let up = result.is_ok();
                metrics::gauge!(names::RUNTIME_UP, "endpoint" => endpoint.clone()).set(if up {
                    1.0
                } else {
                    0.0
                });
                let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = probes.iter_mut().find(|p| p.endpoint == endpoint) {
                    let was_up = p.last_error.is_none();
                    let first = p.last_ok.is_none() && p.last_error.as_deref() == Some(NOT_PROBED);
                    match result {
                        Ok(()) => {
                            p.last_ok = Some(Instant::now());
                            p.last_error = None;
                            if !was_up {
                                tracing::info!(endpoint = %endpoint, "runtime answers the readiness probe");
                            }
                        }
                        Err(reason) => {
                            if was_up || first {
                                tracing::warn!(endpoint = %endpoint, reason = %reason, "runtime fails the readiness probe");
                            }
                            p.last_error = Some(reason);
                        }
                    }
                }
            }
        }
    }
}

/// One Version call on a fresh connection, bounded by `timeout`.
async fn probe(path: &std::path::Path, timeout: Duration) -> Result<(), String> {
    let call = async {
        let mut client = RawClient::connect(path).await.map_err(|e| e.to_string())?;
        let answer = client
            .call(VERSION, grpc_frame(b""), &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        match answer.grpc_status() {
            Some(0) => Ok(()),
            code => Err(format!(
                "Version answered gRPC code {code:?}: {}",
                answer.grpc_message().unwrap_or_default()
            )),
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer to Version within {timeout:?}"))?
}
