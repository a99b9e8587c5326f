//! Hot reload: re-reading the configuration and applying it to the running application.
//!
//! A [`ConfigSource`] knows how the running configuration was made (the file, the `CCF_`
//! environment captured at start, the command-line overrides and `-p`), so every reload applies
//! the same layers over the new file. Three triggers ask for a reload: a change of the file's
//! content (polled, see [`watch_file`]), `SIGHUP`, and `POST /api/v1/config/reload` (through the
//! [`ccf_proxy::Reloader`] installed on the forwarder). Each attempt is logged once here and
//! recorded on the forwarder ([`Forwarder::record_reload`]): the admin API, its live stream and
//! the dashboard show the last result. An invalid file is rejected and the old configuration
//! stays in force.
//!
//! Tasks: [`crate::App::run`] spawns the file watcher and the `SIGHUP` listener and aborts them
//! when the listeners have drained; a reload itself runs on the blocking pool (it reads a file)
//! and holds no lock across an await.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ccf_config::{Config, ConfigError, ConfigLoader};
use ccf_proxy::{Forwarder, ReloadStatus, Reloader};
use ccf_store::{Pricing, RecorderHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often the watcher looks at the configuration file.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How the running configuration is made, so that a reload can make it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    loader: ConfigLoader,
    primary_endpoint: Option<String>,
    watched: Option<PathBuf>,
    poll_interval: Duration,
    /// The watched file's content as read by the last [`ConfigSource::load`]: the watcher's
    /// starting point, so an edit made while the application starts is not missed.
    loaded_content: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ConfigSource {
    /// Reloads with this loader (file, environment and overrides as configured on it).
    pub fn new(loader: ConfigLoader) -> ConfigSource {
        ConfigSource {
            loader,
            primary_endpoint: None,
            watched: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            loaded_content: Arc::default(),
        }
    }

    /// `-p <name>`: applied again after every load, so the preference survives reloads.
    pub fn primary_endpoint(mut self, name: Option<String>) -> ConfigSource {
        self.primary_endpoint = name;
        self
    }

    /// Reloads when this file's content changes (normally the loader's file).
    pub fn watch(mut self, path: impl Into<PathBuf>) -> ConfigSource {
        self.watched = Some(path.into());
        self
    }

    /// How often the watched file is looked at (default [`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, interval: Duration) -> ConfigSource {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The file watched for changes, if any.
    pub fn watched_file(&self) -> Option<&std::path::Path> {
        self.watched.as_deref()
    }

    /// How often the watched file is looked at.
    pub fn interval(&self) -> Duration {
        self.poll_interval
    }

    /// Loads and validates the configuration, `-p` applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        if let Some(path) = &self.watched {
            // Read before the loader does: if the file changes in between, the watcher sees a
            // change and loads again, which is harmless; the other order could miss an edit.
            *self
                .loaded_content
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = std::fs::read(path).ok();
        }
        let loaded = self.loader.load()?;
        for warning in &loaded.warnings {
            warn!(file = %warning.file, key = %warning.key, "configuration: {}", warning.message);
        }
        let mut config = loaded.config;
        if let Some(name) = &self.primary_endpoint {
            config.prefer_endpoint(name)?;
        }
        Ok(config)
    }
}

/// Something else to update on every applied reload (the binary's log level).
pub type ReloadHook = Arc<dyn Fn(&Config) + Send + Sync>;

/// The hooks of one application.
#[derive(Clone, Default)]
pub(crate) struct ReloadHooks(pub(crate) Vec<ReloadHook>);

impl std::fmt::Debug for ReloadHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} reload hook(s)", self.0.len())
    }
}

/// Reads the configuration again and applies it to the forwarder and the usage recorder.
pub(crate) struct AppReloader {
    pub(crate) source: ConfigSource,
    pub(crate) forwarder: Forwarder,
    pub(crate) recorder: Option<RecorderHandle>,
    pub(crate) hooks: ReloadHooks,
}

impl Reloader for AppReloader {
    fn reload(&self, trigger: &str) -> ReloadStatus {
        let running = self.forwarder.config();
        let loaded = self
            .source
            .load()
            .map_err(|error| error.to_string())
            .and_then(|config| {
                // A reload must not open the door a start would refuse: neither the file as
                // written nor what would run (the listeners keep their running settings).
                let mut would_run = config.clone();
                would_run.server = running.server.clone();
                would_run.web = running.web.clone();
                config
                    .check_exposure()
                    .and_then(|()| would_run.check_exposure())
                    .map(|()| config)
                    .map_err(|error| error.to_string())
            });
        let status = match loaded {
            Err(message) => {
                error!(
                    trigger,
                    "configuration reload rejected, the old configuration stays: {message}"
                );
                ReloadStatus::rejected(trigger, message)
            }
            Ok(config) => {
                let config = Arc::new(config);
                match self.forwarder.reload(Arc::clone(&config)) {
                    Err(error) => {
                        let message = error.to_string();
                        error!(
                            trigger,
                            "configuration reload rejected, the old configuration stays: {message}"
                        );
                        ReloadStatus::rejected(trigger, message)
                    }
                    Ok(report) => {
                        let pricing = Pricing::from_config(&config.usage_tracking);
                        if let Some(recorder) = &self.recorder {
                            recorder.set_pricing(pricing.clone());
                        }
                        crate::metrics::install_cost_metric(
                            &self.forwarder,
                            pricing,
                            self.recorder.is_some(),
                        );
                        for hook in &self.hooks.0 {
                            hook(&config);
                        }
                        for change in &report.applied {
                            info!(trigger, change = %change, "configuration change applied");
                        }
                        for change in &report.restart_required {
                            warn!(trigger, change = %change, "configuration change needs a restart");
                        }
                        info!(
                            trigger,
                            applied = report.applied.len(),
                            restart_required = report.restart_required.len(),
                            "configuration reloaded"
                        );
                        ReloadStatus::applied(trigger, report)
                    }
                }
            }
        };
        self.forwarder.record_reload(status.clone());
        status
    }
}

/// Runs one reload on the blocking pool (it reads the file).
async fn reload_off_thread(reloader: &Arc<AppReloader>, trigger: &'static str) {
    let reloader = Arc::clone(reloader);
    if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload(trigger)).await {
        error!("configuration reload task failed: {error}");
    }
}

/// Watches the file's content and reloads when it changed and then stayed the same for one
/// more poll (an editor that writes in several steps is seen once, when it is done).
///
/// Polling the content rather than subscribing to file-system events keeps working whatever
/// the editor does: writing in place, writing a temporary file and renaming it over the old one
/// (the inode changes), or a symlink swap (Kubernetes ConfigMaps); a file that is briefly
/// missing during such a swap is not a change. Runs until `stop` is cancelled.
pub(crate) async fn watch_file(
    path: PathBuf,
    interval: Duration,
    reloader: Arc<AppReloader>,
    stop: CancellationToken,
) {
    let mut applied = reloader
        .source
        .loaded_content
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if applied.is_none() {
        applied = tokio::fs::read(&path).await.ok();
    }
    let mut candidate: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Ok(content) = tokio::fs::read(&path).await else {
            // Missing or unreadable for a moment (an editor replacing it): wait for it.
            continue;
        };
        if applied.as_ref() == Some(&content) {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&content) {
            // Changed: reload once it is stable for one poll.
            candidate = Some(content);
            continue;
        }
        info!(file = %path.display(), "configuration file changed: reloading");
        applied = candidate.take();
        reload_off_thread(&reloader, "file").await;
    }
}

/// Reloads on every `SIGHUP` received on `hangups` until `stop` is cancelled. The caller
/// registers the signal before spawning this, so that from then on `SIGHUP` no longer ends the
/// process (its default action).
#[cfg(unix)]
pub(crate) async fn watch_sighup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Arc<AppReloader>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                info!("SIGHUP received: reloading the configuration");
                reload_off_thread(&reloader, "sighup").await;
            }
        }
    }
}
