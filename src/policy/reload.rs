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

use super::events;
use super::file::{PolicyError, load_dir};
use super::{PolicySet, PolicySettings};
use crate::inventory::Inventory;
use crate::telemetry::metrics::POLICY_RELOAD_TOTAL;

/// Changes in the directory closer together than this are one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// The policies of one directory, swappable.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    /// Changed by a configuration reload, together with the set.
    settings: Arc<ArcSwap<PolicySettings>>,
    current: Arc<ArcSwap<PolicySet>>,
    /// The inventory, told whether the policies in force need it, and whether something else
    /// (the audit trail) always does.
    inventory: Option<(Inventory, bool)>,
}

impl PolicyStore {
    /// Loads `dir`; an error names the file, key and line.
    pub fn load(dir: &Path, settings: &PolicySettings) -> Result<PolicyStore, PolicyError> {
        let set = load_dir(dir, settings)?;
        tracing::info!(dir = %dir.display(), policies = ?set.policies.iter().map(|p| &p.name).collect::<Vec<_>>(), "policies loaded");
        // Both series from the start, so that the first failure is an increase.
        for result in ["success", "failure"] {
            metrics::counter!(POLICY_RELOAD_TOTAL, "result" => result).increment(0);
        }
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            settings: Arc::new(ArcSwap::from_pointee(settings.clone())),
            current: Arc::new(ArcSwap::from_pointee(set)),
            inventory: None,
        })
    }

    /// Keeps `inventory` learning only while it is needed: `always`, or by a policy in force.
    pub fn keep_inventory(&mut self, inventory: Inventory, always: bool) {
        self.inventory = Some((inventory, always));
        self.tell_inventory();
    }

    fn tell_inventory(&self) {
        if let Some((inventory, always)) = &self.inventory {
            inventory.set_needed(*always || self.current.load().needs_inventory());
        }
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
        self.reload_with(&self.settings.load())
    }

    /// [`PolicyStore::reload`] with other settings, which stay only if it succeeds.
    pub fn reload_with(&self, settings: &PolicySettings) -> Result<(), PolicyError> {
        match load_dir(&self.dir, settings) {
            Ok(set) => {
                let names: Vec<Arc<str>> = set.policies.iter().map(|p| p.name.clone()).collect();
                self.settings.store(Arc::new(settings.clone()));
                self.current.store(Arc::new(set));
                self.tell_inventory();
                events::policies_reloaded(&self.dir, &names);
                Ok(())
            }
            Err(err) => {
                events::policy_reload_failed(&err);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policies_on_calls_that_name_an_id_need_the_inventory() {
        // Registries need the names of the image ids CreateContainer carries.
        for (file, needs) in [
            ("pss-baseline.yaml", false),
            ("pss-restricted.yaml", false),
            ("image-registries.yaml", true),
            ("restrict-exec.yaml", true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy(Path::new("policies").join(file), dir.path().join(file)).unwrap();
            let mut store = PolicyStore::load(dir.path(), &PolicySettings::default()).unwrap();
            let inventory = Inventory::new();
            store.keep_inventory(inventory.clone(), false);
            assert_eq!(inventory.needed(), needs, "{file}");
            store.keep_inventory(inventory.clone(), true);
            assert!(
                inventory.needed(),
                "{file}: the audit trail always needs it"
            );
        }
    }
}
