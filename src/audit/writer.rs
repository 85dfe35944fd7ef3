//! Writes audit events on a thread of its own, so that a slow or full disk never stalls the
//! proxy's thread: a queue in front bounded in events and in bytes of requests and answers
//! (callers wait for room: backpressure, counted; no event is dropped), JSON lines to
//! a file and/or stdout, size rotation, reopening on SIGUSR1 (logrotate), a flush and fsync at
//! shutdown. Every event ends counted as written or failed; failures are logged and make the
//! trail report itself unhealthy until a write succeeds again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use super::event::Event;
use crate::telemetry::metrics::{AUDIT_EVENTS_TOTAL, AUDIT_QUEUE_BYTES};

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sinks {
    pub path: Option<PathBuf>,
    pub stdout: bool,
    /// Rotate the file before it grows past this many bytes; `None`: never.
    pub max_size: Option<u64>,
    /// Rotated files kept beside the file (`audit.log.1` is the newest).
    pub max_files: usize,
}

/// What the queue carries to the writer.
#[derive(Debug)]
pub enum Entry {
    Event(Box<Event>),
    /// Close the file and open it again at its path (after logrotate moved it).
    Reopen,
    /// Write everything queued, fsync, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// Whether events are being written; read by the layer to refuse calls under `onFailure: deny`.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
    reason: Mutex<String>,
}

impl Health {
    /// Why events cannot be written, if they cannot.
    pub fn failure(&self) -> Option<String> {
        self.failing.load(Ordering::Relaxed).then(|| {
            self.reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    fn set_failing(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        self.failing.store(true, Ordering::Relaxed);
    }

    fn set_ok(&self) {
        self.failing.store(false, Ordering::Relaxed);
    }
}

/// The bytes of requests and answers queued for the writer, against their budget. A soft
/// bound: a call waits for room before it starts, so calls already running may pass it, by at
/// most their own messages (each cut to four times `maxPayloadBytes`).
///
/// It also keeps the buffers of written messages for the next events' copies: a burst of
/// audited calls then reuses memory that is already mapped, instead of allocating on the
/// proxy's thread what the writer's thread frees (and the allocator hands back to the system
/// at once, to be mapped again for the next burst).
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicUsize,
    budget: usize,
    room: Notify,
    spare: Mutex<Spare>,
}

/// Buffers kept for reuse, and their capacity in all.
#[derive(Debug, Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// What the spare buffers may hold in all, and in one buffer (a larger one is freed).
const SPARE_BYTES: usize = 256 << 10;
const SPARE_BUFFER_BYTES: usize = 64 << 10;

impl Backlog {
    pub fn new(budget: usize) -> Backlog {
        Backlog {
            bytes: AtomicUsize::new(0),
            budget,
            room: Notify::new(),
            spare: Mutex::default(),
        }
    }

    /// A copy of `message` for an event, in a buffer a written event left when there is one.
    pub fn copy(&self, message: &[u8]) -> Vec<u8> {
        let reused = {
            let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
            let buffer = spare.buffers.pop();
            if let Some(buffer) = &buffer {
                spare.bytes -= buffer.capacity();
            }
            buffer
        };
        let mut buffer = reused.unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(message);
        buffer
    }

    /// Keeps the buffers of written messages for [`Backlog::copy`], within the bounds.
    fn keep(&self, buffers: &mut Vec<Vec<u8>>) {
        if buffers.is_empty() {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        for buffer in buffers.drain(..) {
            let size = buffer.capacity();
            if size <= SPARE_BUFFER_BYTES && spare.bytes + size <= SPARE_BYTES {
                spare.bytes += size;
                spare.buffers.push(buffer);
            }
        }
    }

    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.budget
    }

    /// Returns once the queue holds fewer bytes than its budget.
    pub async fn room(&self) {
        loop {
            // Made before the check: a release between the two still wakes it.
            let released = self.room.notified();
            if !self.is_full() {
                return;
            }
            released.await;
        }
    }

    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: usize) {
        let left = self.bytes.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        metrics::gauge!(AUDIT_QUEUE_BYTES).set(left as f64);
        self.room.notify_waiters();
    }
}

/// Starts the writer thread; events are sent through the returned queue.
pub fn start(
    sinks: Sinks,
    queue_size: usize,
    backlog: Arc<Backlog>,
) -> std::io::Result<(mpsc::Sender<Entry>, Arc<Health>)> {
    let (sender, receiver) = mpsc::channel(queue_size);
    let health = Arc::new(Health::default());
    let mut writer = Writer::new(sinks, health.clone(), backlog);
    std::thread::Builder::new()
        .name("criguard-audit".into())
        .spawn(move || writer.run(receiver))?;
    Ok((sender, health))
}

struct Writer {
    sinks: Sinks,
    health: Arc<Health>,
    backlog: Arc<Backlog>,
    /// Bytes of the events taken since the backlog was last told.
    taken_bytes: usize,
    /// The message buffers of those events, handed back to the backlog with their bytes.
    emptied: Vec<Vec<u8>>,
    file: Option<File>,
    size: u64,
    /// Lines waiting to be written, and how many events they hold.
    batch: Vec<u8>,
    pending: u64,
    /// The last write failed: whatever was cut off is ended with a newline first.
    after_failure: bool,
    failed_since_logged: u64,
    last_failure_log: Option<Instant>,
}

/// How long a busy writer waits for more events before writing a batch.
const BATCH_DELAY: Duration = Duration::from_millis(2);
/// Events closer together than this mean the writer is busy.
const BUSY: Duration = Duration::from_millis(20);

/// While writes keep failing, one log line per this interval (each with the count).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Writer {
    fn new(sinks: Sinks, health: Arc<Health>, backlog: Arc<Backlog>) -> Writer {
        let mut writer = Writer {
            sinks,
            health,
            backlog,
            taken_bytes: 0,
            emptied: Vec::new(),
            file: None,
            size: 0,
            batch: Vec::with_capacity(64 << 10),
            pending: 0,
            after_failure: false,
            failed_since_logged: 0,
            last_failure_log: None,
        };
        if let Err(err) = writer.open() {
            writer.failed(0, &err);
        }
        writer
    }

    fn run(&mut self, mut receiver: mpsc::Receiver<Entry>) {
        let mut last_write: Option<Instant> = None;
        while let Some(entry) = receiver.blocking_recv() {
            // Busy (events keep coming): let them gather for a moment instead of being woken
            // for each one. A sleeping writer is not waiting on the queue, so callers do not
            // pay for wake-ups; a quiet node's event is written at once.
            if last_write.is_some_and(|at| at.elapsed() < BUSY) {
                std::thread::sleep(BATCH_DELAY);
            }
            let mut close = self.take(entry);
            // Whatever else is queued goes in the same write.
            while close.is_none() {
                match receiver.try_recv() {
                    Ok(entry) => close = self.take(entry),
                    Err(_) => break,
                }
            }
            self.write_batch();
            last_write = Some(Instant::now());
            if let Some(ack) = close {
                receiver.close();
                while let Ok(entry) = receiver.try_recv() {
                    self.take(entry);
                }
                self.write_batch();
                if let Some(file) = &self.file {
                    let _ = file.sync_data();
                }
                let _ = ack.send(());
                return;
            }
        }
        self.write_batch();
    }

    /// Adds an event to the batch or acts on a command. Returns the ack of a Close.
    fn take(&mut self, entry: Entry) -> Option<oneshot::Sender<()>> {
        match entry {
            Entry::Event(event) => {
                event.write_json_line(&mut self.batch);
                self.taken_bytes += event.payload_bytes();
                self.emptied.extend(event.into_messages());
                self.pending += 1;
                // Bound the batch: a long queue is written in pieces.
                if self.batch.len() > 1 << 20 {
                    self.write_batch();
                }
                None
            }
            Entry::Reopen => {
                self.write_batch();
                self.file = None;
                match self.open() {
                    Ok(()) => tracing::info!(path = ?self.sinks.path, "audit log reopened"),
                    Err(err) => self.failed(0, &err),
                }
                None
            }
            Entry::Close(ack) => Some(ack),
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(path) = &self.sinks.path {
            let file = open_append(path)?;
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
        Ok(())
    }

    fn write_batch(&mut self) {
        if self.taken_bytes > 0 {
            self.backlog.release(std::mem::take(&mut self.taken_bytes));
        }
        self.backlog.keep(&mut self.emptied);
        if self.pending == 0 && self.batch.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.pending);
        let result = self.write_sinks();
        self.batch.clear();
        match result {
            Ok(()) => {
                metrics::counter!(AUDIT_EVENTS_TOTAL, "result" => "written").increment(events);
                if self.health.failure().is_some() {
                    tracing::info!(
                        lost = self.failed_since_logged,
                        "audit events are written again"
                    );
                    self.failed_since_logged = 0;
                    self.last_failure_log = None;
                    self.health.set_ok();
                }
            }
            Err(err) => self.failed(events, &err),
        }
    }

    fn write_sinks(&mut self) -> std::io::Result<()> {
        if let Some(path) = self.sinks.path.clone() {
            if self.file.is_none() {
                self.open()?;
            }
            if let Some(max) = self.sinks.max_size
                && self.size > 0
                && self.size + self.batch.len() as u64 > max
            {
                self.rotate(&path)?;
            }
            let file = self.file.as_mut().expect("opened above");
            if std::mem::take(&mut self.after_failure) {
                // The failed write may have left half a line.
                file.write_all(b"\n")?;
            }
            let written = file.write_all(&self.batch);
            if written.is_err() {
                self.after_failure = true;
            }
            written?;
            self.size += self.batch.len() as u64;
        }
        if self.sinks.stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(&self.batch)?;
            out.flush()?;
        }
        Ok(())
    }

    /// `audit.log` → `audit.log.1` → ... → `audit.log.N`, the oldest dropped; a new file.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.sinks.max_files;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(numbered(keep));
            for n in (1..keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.open()
    }

    fn failed(&mut self, events: u64, err: &std::io::Error) {
        metrics::counter!(AUDIT_EVENTS_TOTAL, "result" => "failed").increment(events);
        self.failed_since_logged += events;
        let path = self
            .sinks
            .path
            .as_ref()
            .map_or_else(|| "stdout".into(), |p| p.display().to_string());
        let first = self.health.failure().is_none();
        self.health
            .set_failing(format!("audit log {path} cannot be written: {err}"));
        let due = self
            .last_failure_log
            .is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL);
        if first || due {
            tracing::error!(
                path,
                error = %err,
                lost = self.failed_since_logged,
                "audit events cannot be written"
            );
            self.last_failure_log = Some(Instant::now());
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::rules::Level;
    use crate::proxy::decision::Decision;
    use crate::proxy::rpc::Rpc;

    fn event() -> Entry {
        Entry::Event(Box::new(Event {
            id: uuid::Uuid::nil(),
            time: std::time::SystemTime::now(),
            level: Level::Metadata,
            rpc: Rpc::from_path("/runtime.v1.RuntimeService/StartContainer"),
            caller: None,
            subject: Default::default(),
            code: tonic::Code::Ok,
            message: None,
            latency_ms: 1.0,
            decision: Decision::allowed(),
            request: None,
            response: None,
            redact_env_values: true,
            max_payload_bytes: 1024,
        }))
    }

    /// Copies made for events come back once the events are written, and serve the next copies;
    /// a buffer over the bound is freed instead.
    #[tokio::test]
    async fn written_messages_leave_their_buffers_for_the_next_copies_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = Sinks {
            path: Some(dir.path().join("audit.log")),
            stdout: false,
            max_size: None,
            max_files: 0,
        };
        let backlog = Arc::new(Backlog::new(1 << 20));
        let (sender, _) = start(sinks, 16, backlog.clone()).unwrap();
        let small = backlog.copy(&[b'a'; 5000]);
        let large = backlog.copy(&vec![b'a'; SPARE_BUFFER_BYTES + 1]);
        let kept = small.as_ptr();
        for message in [small, large] {
            let Entry::Event(mut event) = event() else {
                unreachable!()
            };
            event.level = Level::Request;
            event.request = Some(crate::audit::event::Payload {
                message,
                cut_from: None,
            });
            // As a place in the queue submits it: counted until written.
            backlog.add(event.payload_bytes());
            sender.send(Entry::Event(event)).await.unwrap();
        }
        close(&sender).await;
        let written = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert_eq!(written.lines().count(), 2);
        let again = backlog.copy(b"next");
        assert_eq!(again, b"next");
        assert_eq!(again.as_ptr(), kept, "the first event's buffer is reused");
        let fresh = backlog.copy(b"after");
        assert!(
            fresh.capacity() < SPARE_BUFFER_BYTES,
            "the buffer over the bound was kept"
        );
    }

    async fn close(sender: &mpsc::Sender<Entry>) {
        let (ack, done) = oneshot::channel();
        sender.send(Entry::Close(ack)).await.unwrap();
        done.await.unwrap();
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sinks = Sinks {
            path: Some(path.clone()),
            stdout: false,
            max_size: Some(1000),
            max_files: 2,
        };
        let (sender, health) = start(sinks, 16, Arc::new(Backlog::new(1 << 20))).unwrap();
        for _ in 0..40 {
            sender.send(event()).await.unwrap();
            // One event per write, so that rotation sees each.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        close(&sender).await;
        assert!(health.failure().is_none());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        for name in &names {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.len() <= 1000, "{name}: {} bytes", text.len());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_full_disk_makes_the_trail_unhealthy_until_a_write_succeeds() {
        let sinks = Sinks {
            path: Some("/dev/full".into()),
            stdout: false,
            max_size: None,
            max_files: 0,
        };
        let (sender, health) = start(sinks, 16, Arc::new(Backlog::new(1 << 20))).unwrap();
        sender.send(event()).await.unwrap();
        close(&sender).await;
        let reason = health.failure().expect("failing");
        assert!(reason.contains("/dev/full"), "{reason}");
        assert!(reason.contains("No space left"), "{reason}");
    }

    #[tokio::test]
    async fn reopen_starts_a_new_file_after_logrotate_moved_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sinks = Sinks {
            path: Some(path.clone()),
            stdout: false,
            max_size: None,
            max_files: 0,
        };
        let (sender, _) = start(sinks, 16, Arc::new(Backlog::new(1 << 20))).unwrap();
        sender.send(event()).await.unwrap();
        // Wait until it is written, then move it away as logrotate does.
        for _ in 0..500 {
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::rename(&path, dir.path().join("audit.log.old")).unwrap();
        sender.send(Entry::Reopen).await.unwrap();
        sender.send(event()).await.unwrap();
        close(&sender).await;
        let old = std::fs::read_to_string(dir.path().join("audit.log.old")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!((old.lines().count(), new.lines().count()), (1, 1));
    }
}
