//! Process signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads the policies
//! (see `app.rs`); SIGUSR1 reopens the audit log (logrotate's `postrotate`).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = shutdown.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down");
        shutdown.cancel();
    });
    Ok(())
}

/// Runs `action` on every `kind` signal until `shutdown`. Catching a signal also keeps it from
/// ending the process, as SIGHUP and SIGUSR1 would by default.
pub fn on_signal<F, Fut>(
    kind: SignalKind,
    shutdown: CancellationToken,
    mut action: F,
) -> std::io::Result<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut signals = signal(kind)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = signals.recv() => action().await,
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}
