//! Process signals: SIGTERM and SIGINT start a graceful shutdown. SIGHUP, which would end the
//! process by default, is caught: configuration reload is not implemented yet, so criguard
//! says so in the log and keeps serving with the configuration it has.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT; logs and ignores SIGHUP.
pub fn shutdown_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::warn!(signal = "SIGHUP", "configuration reload is not supported yet; keeping the running configuration (restart criguard to apply changes)");
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            tracing::info!(signal = name, "shutting down");
            shutdown.cancel();
            return;
        }
    });
    Ok(())
}
