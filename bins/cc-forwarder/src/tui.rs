//! Running the terminal UI next to the app.
//!
//! [`start`] spawns the UI task when the binary decided to run it (`--tui` or `tui.enabled`, not
//! `--no-tui`, stdout a terminal). Quitting the UI (q or Ctrl+C, which in raw mode are keys, not
//! signals) asks for shutdown through the [`ShutdownTrigger`], the same path as SIGTERM, so the
//! drain, the recorder's flush window and the hard-exit backstop apply alike. The UI task owns the
//! terminal; [`TuiHandle::stop`] tells it the app has stopped and waits until the terminal is
//! restored, so the final log lines land on a normal screen (the log buffer sends them to stderr
//! again once the UI has let go). A panic restores the terminal through ratatui's panic hook.

use std::sync::Arc;

use ccf_proxy::Forwarder;
use ccf_tui::{AppInfo, Exit, LogBuffer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::shutdown::ShutdownTrigger;

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

/// Starts the UI when `logs` is given; its quit requests shutdown through `trigger`.
pub fn start(
    logs: Option<LogBuffer>,
    forwarder: &Forwarder,
    store: Option<Arc<dyn ccf_store::UsageStore>>,
    webhooks: Arc<std::sync::OnceLock<ccf_webhooks::Webhooks>>,
    base_url: String,
    trigger: ShutdownTrigger,
) -> TuiHandle {
    let Some(logs) = logs else {
        return TuiHandle { running: None };
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
        match ccf_tui::run(forwarder, logs, info, store, webhooks, stopped).await {
            Ok(Exit::Quit | Exit::InputClosed) => {
                info!("terminal UI closed: shutting down");
                trigger.request("terminal UI quit");
            }
            Ok(Exit::Shutdown) => {}
            Err(error) => {
                warn!("the terminal UI stopped: {error}; the forwarder keeps running (stop it with Ctrl+C)");
            }
        }
    });
    TuiHandle {
        running: Some((task, stop_sender)),
    }
}
