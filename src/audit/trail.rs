//! The running audit trail: its rules, the writer's queue (bounded in events and in bytes) and
//! health, and the pod inventory that names the pods of calls that carry only ids. The layer
//! that records calls (`layers/audit.rs`) takes a place in the queue and submits events.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::oneshot;

use super::event::Event;
use super::rules::Rules;
use super::writer::{self, Backlog, Entry, Health};
use super::{AuditConfig, OnFailure};
use crate::inventory::Inventory;
use crate::telemetry::metrics::AUDIT_QUEUE_WAIT_SECONDS;

/// The running audit trail: rules, the writer's queue and health, and the pod inventory.
#[derive(Debug)]
pub struct AuditTrail {
    /// Swapped when the configuration is reloaded.
    rules: ArcSwap<Rules>,
    sender: mpsc::Sender<Entry>,
    backlog: Arc<Backlog>,
    health: Arc<Health>,
    on_failure: OnFailure,
    max_payload_bytes: usize,
    inventory: Inventory,
}

impl AuditTrail {
    /// Starts the writer thread.
    pub fn start(config: &AuditConfig, inventory: Inventory) -> std::io::Result<Arc<AuditTrail>> {
        let backlog = Arc::new(Backlog::new(config.queue_bytes));
        let (sender, health) =
            writer::start(config.sinks.clone(), config.queue_size, backlog.clone())?;
        // Both series from the start, so that the first failure is an increase.
        for result in ["written", "failed"] {
            metrics::counter!(crate::telemetry::metrics::AUDIT_EVENTS_TOTAL, "result" => result)
                .increment(0);
        }
        Ok(Arc::new(AuditTrail {
            rules: ArcSwap::from_pointee(config.rules.clone()),
            sender,
            backlog,
            health,
            on_failure: config.on_failure,
            max_payload_bytes: config.max_payload_bytes,
            inventory,
        }))
    }

    /// Puts new rules in force for the calls that arrive from now on.
    pub fn replace_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Opens the file anew (SIGUSR1, after logrotate moved it).
    pub async fn reopen(&self) {
        let _ = self.sender.send(Entry::Reopen).await;
    }

    /// A place in the writer's queue, once it has room in events and in bytes: a writer that
    /// cannot keep up slows calls down, it never drops their events. Waits are counted.
    /// `None` when the writer has stopped.
    pub async fn room(&self) -> Option<Place> {
        let full = self.sender.capacity() == 0 || self.backlog.is_full();
        let start = full.then(Instant::now);
        // Only a queue over its bytes is waited on here (the common case costs one load). A
        // writer that has stopped frees no room: then the permit below fails at once.
        if self.backlog.is_full() {
            tokio::select! {
                _ = self.backlog.room() => {}
                _ = self.sender.closed() => {}
            }
        }
        let permit = self.sender.clone().reserve_owned().await.ok()?;
        if let Some(start) = start {
            metrics::histogram!(AUDIT_QUEUE_WAIT_SECONDS).record(start.elapsed().as_secs_f64());
        }
        Some(Place {
            permit,
            backlog: self.backlog.clone(),
        })
    }

    /// A copy of a message for an event (see [`Backlog::copy`]).
    pub fn copy(&self, message: &[u8]) -> Vec<u8> {
        self.backlog.copy(message)
    }

    /// The rules in force.
    pub fn rules(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// Why events cannot be written, if they cannot.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Decoded messages longer than this (in JSON bytes) are cut.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// The node's sandboxes and containers, which name the pods of calls that carry only ids.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Writes every queued event and syncs the file. Calls still running after this are not
    /// recorded; call it once the server has drained.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.sender.send(Entry::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// A place in the writer's queue, taken before a call goes on and filled when it ends.
#[derive(Debug)]
pub struct Place {
    permit: OwnedPermit<Entry>,
    backlog: Arc<Backlog>,
}

impl Place {
    /// Queues the event; its messages count against the queue's bytes until written.
    pub fn submit(self, event: Event) {
        self.backlog.add(event.payload_bytes());
        self.permit.send(Entry::Event(Box::new(event)));
    }
}
