//! Process signals: SIGTERM and SIGINT start a graceful shutdown. SIGHUP, which would end the
//! process by default, is caught: configuration reload is not implemented yet, so criguard
//! says so in the log and keeps serving with the configuration it has. SIGUSR1 reopens the
//! audit log (logrotate's `postrotate`).

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

/// Runs `reopen` on every SIGUSR1 until `shutdown`.
pub fn on_sigusr1<F, Fut>(shutdown: CancellationToken, mut reopen: F) -> std::io::Result<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    tracing::info!(signal = "SIGUSR1", "reopening the audit log");
                    reopen().await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}
