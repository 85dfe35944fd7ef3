//! Tells systemd how criguard is doing, under `Type=notify` (sd_notify): `READY=1` once the
//! listening sockets are bound and the stack is built, `STOPPING=1` when a shutdown starts,
//! and `WATCHDOG=1` from the serving loop itself (`WatchdogSec=`), so that a criguard whose
//! loop stops turning is killed and restarted by systemd instead of leaving the node NotReady.
//! Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Where criguard's state goes: systemd's notify socket, if it gave one.
#[derive(Clone)]
pub struct Notifier {
    /// Half of `WATCHDOG_USEC`, as systemd advises, when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    pub fn from_env() -> Notifier {
        let watchdog = sd_notify::watchdog_enabled()
            .map(|timeout| (timeout / 2).max(Duration::from_millis(1)));
        Notifier { watchdog }
    }

    /// Says READY=1 (the sockets are bound, calls are served from now on), then STOPPING=1
    /// when `shutdown` fires and the calls in flight are drained.
    pub fn serving_until(&self, shutdown: CancellationToken) {
        send(&[NotifyState::Ready, NotifyState::Status("serving")]);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        });
    }

    /// The watchdog the serving loop must feed, if systemd asked for one.
    pub fn watchdog(&self) -> Option<Watchdog> {
        self.watchdog.map(|every| Watchdog {
            every,
            ping: Arc::new(|| send(&[NotifyState::Watchdog])),
        })
    }
}

/// A ping the serving loop sends every `every` while it turns; when the loop is stuck, the
/// pings stop and systemd restarts criguard after `WatchdogSec`.
#[derive(Clone)]
pub struct Watchdog {
    pub every: Duration,
    pub ping: Arc<dyn Fn() + Send + Sync>,
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
