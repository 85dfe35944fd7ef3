//! The policy set in force and how it changes: loaded at start (a bad file stops criguard with
//! the file and line), reloaded on SIGHUP and when the directory changes (a Kubernetes
//! ConfigMap mount swaps its `..data` symlink: the directory is watched, not the files). A reload
//! parses, compiles and validates everything first; only then is the new set swapped in. A bad
//! file keeps the old set, and says why in the log and in `criguard_policy_reload_total`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use tokio_util::sync::CancellationToken;

use super::PolicySet;
use super::file::{PolicyError, load_dir};
use crate::telemetry::metrics::POLICY_RELOAD_TOTAL;

/// Changes in the directory closer together than this are one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// The policies of one directory, swappable.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    /// Changed by a configuration reload, together with the set.
    exempt_namespaces: Arc<ArcSwap<Vec<String>>>,
    current: Arc<ArcSwap<PolicySet>>,
}

impl PolicyStore {
    /// Loads `dir`; an error names the file, key and line.
    pub fn load(dir: &Path, exempt_namespaces: &[String]) -> Result<PolicyStore, PolicyError> {
        let set = load_dir(dir, exempt_namespaces)?;
        tracing::info!(dir = %dir.display(), policies = ?set.policies.iter().map(|p| &p.name).collect::<Vec<_>>(), "policies loaded");
        // Both series from the start, so that the first failure is an increase.
        for result in ["success", "failure"] {
            metrics::counter!(POLICY_RELOAD_TOTAL, "result" => result).increment(0);
        }
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            exempt_namespaces: Arc::new(ArcSwap::from_pointee(exempt_namespaces.to_vec())),
            current: Arc::new(ArcSwap::from_pointee(set)),
        })
    }

    /// What the policy layer reads.
    pub fn current(&self) -> Arc<ArcSwap<PolicySet>> {
        self.current.clone()
    }

    /// The directory the policies come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the directory again and swaps the new set in; on error the old set stays.
    pub fn reload(&self) -> Result<(), PolicyError> {
        self.reload_with(&self.exempt_namespaces.load())
    }

    /// [`PolicyStore::reload`] with other exempt namespaces, which stay only if it succeeds.
    pub fn reload_with(&self, exempt_namespaces: &[String]) -> Result<(), PolicyError> {
        match load_dir(&self.dir, exempt_namespaces) {
            Ok(set) => {
                let names: Vec<Arc<str>> = set.policies.iter().map(|p| p.name.clone()).collect();
                self.exempt_namespaces
                    .store(Arc::new(exempt_namespaces.to_vec()));
                self.current.store(Arc::new(set));
                metrics::counter!(POLICY_RELOAD_TOTAL, "result" => "success").increment(1);
                tracing::info!(dir = %self.dir.display(), policies = ?names, "policies reloaded");
                Ok(())
            }
            Err(err) => {
                metrics::counter!(POLICY_RELOAD_TOTAL, "result" => "failure").increment(1);
                tracing::error!(file = %err.file.display(), key = %err.key, problem = %err.problem, "policy reload failed; the policies in force stay");
                Err(err)
            }
        }
    }

    /// Reloads whenever something in the directory changes, until `shutdown`.
    pub fn watch(&self, shutdown: CancellationToken) -> notify::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        let store = self.clone();
        tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = rx.recv() => if changed.is_none() { return },
                }
                // A ConfigMap update is several events; act once they settle.
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                let _ = store.reload();
            }
        });
        Ok(())
    }
}
