//! Turning SIGINT/SIGTERM (or the terminal UI's quit) into the application's shutdown future,
//! with a backstop.
//!
//! [`watch_signals`] spawns one task that owns the signal streams and the receiving end of the
//! [`ShutdownTrigger`]. The first signal, or the first [`ShutdownTrigger::request`] (the terminal
//! UI's quit: in raw mode Ctrl+C is a key, not a signal), resolves the `shutdown` future handed to
//! `App::run`, which stops accepting, drains in-flight requests for up to
//! `server.shutdown_timeout` and then flushes the usage recorder for up to
//! `usage_tracking.shutdown_flush_timeout`. The same task then resolves `forced` if a second
//! signal arrives or if the shutdown overruns those two windows by [`BACKSTOP_MARGIN`]; `main`
//! races `App::run` against `forced`, so the process always ends, whichever way it was asked to.
//! The task lives on the runtime and is dropped with it.

use std::future::Future;
use std::time::Duration;

use tracing::info;

/// How long past `server.shutdown_timeout` the process waits for the app before giving up.
pub const BACKSTOP_MARGIN: Duration = Duration::from_secs(5);

/// Asks for the same graceful shutdown a signal starts, with the same backstop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(tokio::sync::mpsc::UnboundedSender<&'static str>);

impl ShutdownTrigger {
    /// Starts the shutdown (once; later requests change nothing); `why` is logged.
    pub fn request(&self, why: &'static str) {
        let _ = self.0.send(why);
    }
}

/// Why the process stopped waiting for a graceful shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forced(pub String);

/// Installs the signal handlers and returns `(shutdown, forced, trigger)`; see the module docs.
/// `drain_timeout` is `server.shutdown_timeout`, `flush_timeout`
/// `usage_tracking.shutdown_flush_timeout` (zero without usage tracking). Must be called inside
/// the tokio runtime.
pub fn watch_signals(
    drain_timeout: Duration,
    flush_timeout: Duration,
) -> std::io::Result<(
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = Forced> + Send + 'static,
    ShutdownTrigger,
)> {
    let mut signals = Signals::install()?;
    let (trigger, mut requests) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (shutdown_sender, shutdown_receiver) = tokio::sync::oneshot::channel::<()>();
    let (forced_sender, forced_receiver) = tokio::sync::oneshot::channel::<Forced>();
    tokio::spawn(async move {
        let name = tokio::select! {
            name = signals.next() => name,
            Some(why) = requests.recv() => why,
        };
        info!(
            signal = name,
            "shutting down: no new connections; draining in-flight requests for up to {}s, then \
             writing usage records for up to {}s (send SIGINT or SIGTERM again to exit at once)",
            drain_timeout.as_secs(),
            flush_timeout.as_secs()
        );
        let _ = shutdown_sender.send(());
        let limit = drain_timeout + flush_timeout + BACKSTOP_MARGIN;
        let reason = tokio::select! {
            name = signals.next() => {
                format!("received {name} again; exiting without waiting for in-flight requests")
            }
            () = tokio::time::sleep(limit) => format!(
                "graceful shutdown did not finish within {}s; exiting",
                limit.as_secs()
            ),
        };
        // Logged once, by `main`, where it ends the process.
        let _ = forced_sender.send(Forced(reason));
    });
    // If the task were dropped early (runtime shutting down), neither future should fire.
    let shutdown = async move {
        if shutdown_receiver.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let forced = async move {
        match forced_receiver.await {
            Ok(forced) => forced,
            Err(_) => std::future::pending().await,
        }
    };
    Ok((shutdown, forced, ShutdownTrigger(trigger)))
}

/// The signals that stop the forwarder.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The signals that stop the forwarder (Ctrl+C only where there are no Unix signals).
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "Ctrl+C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The terminal UI's quit goes through the trigger: it starts the same shutdown a signal
    /// starts and arms the same backstop (`forced` fires when the app does not stop).
    #[tokio::test]
    async fn a_requested_shutdown_arms_the_backstop_like_a_signal() {
        let (shutdown, forced, trigger) =
            watch_signals(Duration::ZERO, Duration::ZERO).expect("signal handlers");
        trigger.request("terminal UI quit");
        tokio::time::timeout(Duration::from_secs(30), shutdown)
            .await
            .expect("the request starts the shutdown");
        let Forced(reason) = tokio::time::timeout(Duration::from_secs(60), forced)
            .await
            .expect("the backstop fires for an app that does not stop");
        assert_eq!(
            reason,
            format!(
                "graceful shutdown did not finish within {}s; exiting",
                BACKSTOP_MARGIN.as_secs()
            )
        );
    }
}
