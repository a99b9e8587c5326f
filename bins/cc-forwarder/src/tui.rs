//! Running the terminal UI next to the app.
//!
//! [`start`] spawns the UI task when the binary decided to run it (`--tui` or `tui.enabled`, not
//! `--no-tui`, stdout a terminal) and returns the app's shutdown future extended with "the user
//! quit the UI" (q or Ctrl+C, which in raw mode are keys, not signals). The UI task owns the
//! terminal; [`TuiHandle::stop`] tells it the app has stopped and waits until the terminal is
//! restored, so the final log lines land on a normal screen (the log buffer sends them to stderr
//! again once the UI has let go). A panic restores the terminal through ratatui's panic hook.

use std::future::Future;
use std::sync::Arc;

use ccf_proxy::Forwarder;
use ccf_tui::{AppInfo, Exit, LogBuffer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The running UI, if any.
pub struct TuiHandle {
    running: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
}

impl TuiHandle {
    /// Stops the UI (if it still runs) and waits until the terminal is restored.
    pub async fn stop(self) {
        if let Some((task, stop)) = self.running {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// Starts the UI when `logs` is given; returns its handle and `shutdown` extended with the UI's
/// quit.
pub fn start(
    logs: Option<LogBuffer>,
    forwarder: &Forwarder,
    store: Option<Arc<dyn ccf_store::UsageStore>>,
    base_url: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (TuiHandle, impl Future<Output = ()> + Send + 'static) {
    let (quit_sender, quit_receiver) = oneshot::channel::<()>();
    let shutdown = async move {
        // Without a UI (or after it failed) the sender is dropped: only `shutdown` counts then.
        let quit = async move {
            if quit_receiver.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = quit => {}
        }
    };
    let Some(logs) = logs else {
        return (TuiHandle { running: None }, shutdown);
    };
    let (stop_sender, stop_receiver) = oneshot::channel::<()>();
    let forwarder = forwarder.clone();
    let info = AppInfo {
        base_url,
        version: crate::cli::VERSION.to_string(),
    };
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop_receiver.await;
        };
        match ccf_tui::run(forwarder, logs, info, store, stopped).await {
            Ok(Exit::Quit | Exit::InputClosed) => {
                info!("terminal UI closed: shutting down");
                let _ = quit_sender.send(());
            }
            Ok(Exit::Shutdown) => {}
            Err(error) => {
                warn!("the terminal UI stopped: {error}; the forwarder keeps running (stop it with Ctrl+C)");
            }
        }
    });
    (
        TuiHandle {
            running: Some((task, stop_sender)),
        },
        shutdown,
    )
}
