//! Process signals, watched in one place: SIGTERM and SIGINT start a graceful shutdown, SIGHUP
//! reloads (the configuration, or the policies), SIGUSR1 reopens the audit log (logrotate's
//! `postrotate`). `app.rs` handles the stream in one loop.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A signal criguard acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
    User1,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
            Signal::User1 => "SIGUSR1",
        }
    }
}

/// Every signal criguard handles, registered at once: from then on none of them ends the
/// process by its default action (SIGHUP and SIGUSR1 would), and one that arrives before it
/// is read waits for it.
#[derive(Debug)]
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn watch() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Terminate,
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.hangup.recv() => Signal::Hangup,
            _ = self.user1.recv() => Signal::User1,
        }
    }

    /// For a process that only stops on signals (the fake runtime): cancels `shutdown` on the
    /// first SIGTERM or SIGINT; the others are ignored.
    pub fn shutdown_only(mut self, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                let signal = tokio::select! {
                    signal = self.next() => signal,
                    _ = shutdown.cancelled() => return,
                };
                if matches!(signal, Signal::Terminate | Signal::Interrupt) {
                    tracing::info!(signal = signal.name(), "shutting down");
                    shutdown.cancel();
                    return;
                }
            }
        });
    }
}
