//! The composition root of cc-forwarder.
//!
//! [`App`] turns a validated [`Config`] into running listeners and tasks (the proxy listener,
//! the health probes) and owns their shutdown order: stop accepting, drain in-flight requests
//! (streams included) for up to `server.shutdown_timeout`, then stop background tasks. It is the only crate that knows every
//! other one (later: which store adapter to use, the admin listener, the health task, the TUI);
//! the binary and the end-to-end tests start the forwarder through it and nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use ccf_config::Config;

/// The effective configuration with every secret masked (`check-config --print`).
pub use ccf_admin::effective_config;
use ccf_proxy::{serve, serve_per_core, Forwarder, RequestObserver, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod cluster;
mod key_budgets;
mod metrics;
pub mod reload;
pub mod usage;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address as configured (`host:port`).
        address: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The forwarding engine could not be built.
    #[error(transparent)]
    Proxy(#[from] ccf_proxy::BuildError),
    /// The usage store could not be opened or migrated.
    #[error("usage store: {0}")]
    Store(#[source] ccf_store::StoreError),
    /// The usage recorder's journal could not be opened (`usage_tracking.journal_dir`).
    #[error("usage recorder: {0}")]
    Journal(#[source] ccf_store::JournalError),
    /// The admin API may not start as configured (e.g. a public address without a token).
    #[error(transparent)]
    Admin(#[from] ccf_admin::AdminError),
    /// A listener would be reachable from other machines without authentication (the message
    /// names the key to change; `server.allow_insecure: true` overrides the proxy check).
    #[error(transparent)]
    Insecure(#[from] ccf_config::InsecureExposure),
    /// The per-core runtimes (`server.threads`) could not start or one stopped unexpectedly.
    #[error("per-core runtimes: {0}")]
    PerCore(#[from] ccf_proxy::PerCoreError),
    /// The Redis link (`cluster.redis_url`) could not be prepared (never because Redis is down:
    /// the link connects in the background).
    #[error("cluster.redis_url: {0}")]
    Cluster(#[from] ccf_cluster::ClusterError),
}

/// The proxy's listening socket(s).
#[derive(Debug)]
enum ProxyListeners {
    /// One listener served on the runtime that runs [`App::run`] (`server.threads: 0`).
    Shared(TcpListener),
    /// One `SO_REUSEPORT` listener per per-core runtime (`server.threads` absent or > 0).
    PerCore(Vec<std::net::TcpListener>),
}

/// The checks that make [`App::bind`] refuse a configuration before it opens anything: a
/// listener reachable from other machines without authentication, or an admin API that may not
/// start as configured. `check-config` runs this same function, so a file it accepts starts.
pub fn check_startable(config: &Config) -> Result<(), AppError> {
    config.check_exposure()?;
    if config.web.enabled {
        ccf_admin::check_security(config)?;
    }
    Ok(())
}

/// A bound, ready-to-run forwarder.
#[derive(Debug)]
pub struct App {
    config: Arc<Config>,
    forwarder: Forwarder,
    usage: Option<usage::UsageTracking>,
    proxy_listeners: ProxyListeners,
    proxy_addr: SocketAddr,
    admin_listener: Option<(TcpListener, SocketAddr)>,
    /// Operator actions shared with other instances (MySQL `cluster_state`, or Redis).
    cluster: Option<cluster::Cluster>,
    /// Hot routing state shared with other instances through Redis (`cluster.redis_url`).
    redis: Option<ccf_cluster::RedisCluster>,
    instance_id: String,
    /// Hot reload: how to re-read the configuration, and what else to update on a reload.
    reload_source: Option<reload::ConfigSource>,
    reload_hooks: reload::ReloadHooks,
    /// The webhook dispatcher's state, filled when [`App::run`] starts it (for the terminal UI).
    webhooks: Arc<OnceLock<ccf_webhooks::Webhooks>>,
}

impl App {
    /// Builds the engine and binds the proxy listener on `server.host:server.port` (port 0 picks
    /// a free port; see [`App::proxy_addr`]).
    pub async fn bind(config: Config) -> Result<App, AppError> {
        Self::bind_observed(config, None).await
    }

    /// Like [`App::bind`], with an extra observer of every request's changes and outcome (tests
    /// and embedders use it to watch outcomes).
    pub async fn bind_observed(
        config: Config,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<App, AppError> {
        let config = Arc::new(config);
        let address = format!("{}:{}", config.server.host, config.server.port);
        check_startable(&config)?;
        if config.server.allow_insecure
            && !config.auth.enabled
            && !ccf_config::is_loopback_host(&config.server.host)
        {
            warn!(
                host = %config.server.host,
                "server.allow_insecure is set: the proxy accepts unauthenticated requests from other machines"
            );
        }
        let usage = usage::open(&config).await?;
        let bind_error = |source| AppError::Bind {
            address: address.clone(),
            source,
        };
        let (proxy_listeners, proxy_addr) = match config.server.per_core_runtimes() {
            None => {
                let listener = bind_listener(&address).await.map_err(bind_error)?;
                let local = listener.local_addr().map_err(bind_error)?;
                (ProxyListeners::Shared(listener), local)
            }
            Some(cores) => {
                let listeners = bind_per_core_listeners(&address, cores)
                    .await
                    .map_err(bind_error)?;
                let local = listeners
                    .first()
                    .map(std::net::TcpListener::local_addr)
                    .transpose()
                    .map_err(bind_error)?
                    .ok_or_else(|| {
                        bind_error(std::io::Error::new(
                            std::io::ErrorKind::AddrNotAvailable,
                            "no listener bound",
                        ))
                    })?;
                (ProxyListeners::PerCore(listeners), local)
            }
        };
        let instance_id = usage::instance_id(&config, proxy_addr.port());
        let redis = match config.cluster.redis_url {
            Some(_) => Some(ccf_cluster::RedisCluster::new(
                &config.cluster,
                &instance_id,
            )?),
            None => None,
        };
        let cluster = cluster::open(&config, redis.as_ref()).await?;
        let mut observers: Vec<Arc<dyn RequestObserver>> = Vec::new();
        if let Some(tracking) = &usage {
            observers.push(Arc::new(usage::StoreObserver {
                recorder: tracking.recorder.clone(),
                instance_id: Arc::from(instance_id.as_str()),
            }));
        }
        observers.extend(observer);
        let forwarder = Forwarder::build_observed(
            Arc::clone(&config),
            Some(Arc::new(usage::Observers(observers))),
        )?;
        key_budgets::install_calendar(&forwarder, &config);
        if let Some(tracking) = &usage {
            key_budgets::seed_spend(&forwarder, &config, &tracking.store).await;
            metrics::install_recorder_health(&forwarder, tracking.recorder.clone());
        }
        // Costs are shown by the usage store and the admin API and spent against per-key
        // budgets: the metric counts them whenever one of these runs (a reload installs the
        // pricing in any case).
        if usage.is_some() || config.web.enabled || key_budgets::any_budget(&config) {
            metrics::install_cost_metric(
                &forwarder,
                ccf_store::Pricing::from_config(&config.usage_tracking),
                usage.is_some(),
            );
        }
        let admin_listener = if config.web.enabled {
            let address = format!("{}:{}", config.web.host, config.web.port);
            let listener = bind_listener(&address)
                .await
                .map_err(|source| AppError::Bind {
                    address: address.clone(),
                    source,
                })?;
            let local = listener
                .local_addr()
                .map_err(|source| AppError::Bind { address, source })?;
            Some((listener, local))
        } else {
            None
        };
        Ok(App {
            reload_source: None,
            reload_hooks: reload::ReloadHooks::default(),
            webhooks: Arc::default(),
            admin_listener,
            cluster,
            redis,
            instance_id,
            config,
            forwarder,
            usage,
            proxy_listeners,
            proxy_addr,
        })
    }

    /// Turns hot reload on: the configuration is re-read from `source` (same file, environment,
    /// overrides and `-p`) when its watched file changes, on `SIGHUP` and on
    /// `POST /api/v1/config/reload`. See [`reload`].
    pub fn with_reload(mut self, source: reload::ConfigSource) -> App {
        self.reload_source = Some(source);
        self
    }

    /// Calls `hook` with every configuration a reload applied (the binary updates its log
    /// level with it).
    pub fn on_reload(mut self, hook: reload::ReloadHook) -> App {
        self.reload_hooks.0.push(hook);
        self
    }

    /// The address the proxy listener is bound to.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// What to put in `ANTHROPIC_BASE_URL`: the configured host (a wildcard bind address is shown
    /// as `127.0.0.1`) and the bound port.
    pub fn base_url(&self) -> String {
        let host = match self.config.server.host.as_str() {
            "0.0.0.0" | "::" | "[::]" | "" => "127.0.0.1".to_string(),
            host if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
            host => host.to_string(),
        };
        format!("http://{host}:{}", self.proxy_addr.port())
    }

    /// The engine, for embedding or inspection.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The address of the admin API and dashboard, when `web.enabled`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.as_ref().map(|(_, address)| *address)
    }

    /// This instance's id (`instance_id`, else `<host name>:<proxy port>`), written on every
    /// usage row and on the shared operator state.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The usage store and recorder, when usage tracking is on.
    pub fn usage(&self) -> Option<&usage::UsageTracking> {
        self.usage.as_ref()
    }

    /// The webhook dispatcher's delivery counters: empty until [`App::run`] starts the
    /// dispatcher, then its shared state (the terminal UI starts before `run` and reads it).
    pub fn webhooks(&self) -> Arc<OnceLock<ccf_webhooks::Webhooks>> {
        Arc::clone(&self.webhooks)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for up to
    /// `server.shutdown_timeout` and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let per_core = match &self.proxy_listeners {
            ProxyListeners::Shared(_) => 0,
            ProxyListeners::PerCore(listeners) => listeners.len(),
        };
        info!(
            address = %self.proxy_addr,
            base_url = %self.base_url(),
            per_core_runtimes = per_core,
            "forwarder listening"
        );
        let options = ServeOptions {
            header_read_timeout: self.config.server.header_read_timeout.get(),
            drain_timeout: self.config.server.shutdown_timeout.get(),
        };
        // Webhooks: subscribed to the event bus before anything below can publish (the start-up
        // probes' health changes, a rejected reload); deliveries run on this runtime, never on
        // the request path.
        let webhooks = ccf_webhooks::Webhooks::spawn(
            self.forwarder.clone(),
            self.instance_id.clone(),
            ccf_webhooks::DeliveryPolicy::default(),
        );
        let _ = self.webhooks.set(webhooks.webhooks());
        // The health probes run while the listener serves and stop after the drain.
        let background = self.forwarder.spawn_background();
        // Hot reload triggers; they end when the listeners have drained.
        let reload_stop = CancellationToken::new();
        let mut reload_tasks = Vec::new();
        if let Some(source) = self.reload_source {
            let reloader = Arc::new(reload::AppReloader {
                forwarder: self.forwarder.clone(),
                recorder: self
                    .usage
                    .as_ref()
                    .map(|tracking| tracking.recorder.clone()),
                hooks: self.reload_hooks,
                source: source.clone(),
            });
            self.forwarder.set_reloader(reloader.clone());
            #[cfg(unix)]
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => reload_tasks.push(tokio::spawn(reload::watch_sighup(
                    hangups,
                    Arc::clone(&reloader),
                    reload_stop.clone(),
                ))),
                Err(error) => warn!("cannot listen for SIGHUP, reload by signal is off: {error}"),
            }
            if let Some(path) = source.watched_file() {
                info!(file = %path.display(), "watching the configuration file for changes");
                reload_tasks.push(tokio::spawn(reload::watch_file(
                    path.to_path_buf(),
                    source.interval(),
                    reloader,
                    reload_stop.clone(),
                )));
            }
        }
        // Several instances linked through Redis: the hot routing state is shared (read once
        // before serving, bounded; Redis down never holds the start).
        let redis = match self.redis {
            Some(redis) => Some(redis.start(self.forwarder.clone()).await),
            None => None,
        };
        // Several instances on one MySQL store (or one Redis): operator actions are shared
        // (applied before serving, then polled, and at once when Redis says so).
        let cluster = match self.cluster {
            Some(cluster) => Some(
                cluster
                    .start(self.forwarder.clone(), self.instance_id.clone())
                    .await,
            ),
            None => None,
        };
        let retention = self.usage.as_ref().map(|tracking| {
            tokio::spawn(usage::retention_loop(
                Arc::clone(&tracking.store),
                self.config.usage_tracking.retention_days,
                self.config.usage_tracking.cleanup_interval.get(),
            ))
        });
        // One shutdown signal for every listener.
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let admin = self.admin_listener.map(|(listener, address)| {
            let mut state = ccf_admin::AdminState::new(self.forwarder.clone())
                .with_webhooks(webhooks.webhooks());
            if let Some(tracking) = &self.usage {
                state = state
                    .with_store(Arc::clone(&tracking.store))
                    .with_recorder(tracking.recorder.clone());
            }
            if let Some(path) = &self.config.source {
                state = state.with_config_path(path.clone());
            }
            info!(dashboard = %format!("http://{address}/"), "admin API and dashboard listening");
            let admin_stop = stop.clone();
            tokio::spawn(async move {
                if let Err(error) =
                    ccf_admin::serve(listener, state, admin_stop.cancelled_owned()).await
                {
                    warn!("admin API stopped: {error}");
                }
            })
        });
        // Per-core runtimes serve on their own threads; this runtime keeps the background work
        // above (admin API, reload, cluster, retention, health probes, usage recorder).
        let (report, per_core_failure) = match self.proxy_listeners {
            ProxyListeners::Shared(listener) => (
                serve(listener, self.forwarder, options, stop.cancelled_owned()).await,
                None,
            ),
            ProxyListeners::PerCore(listeners) => {
                let serving_stop = stop.clone();
                match serve_per_core(
                    listeners,
                    self.forwarder,
                    options,
                    serving_stop.cancelled_owned(),
                )
                .await
                {
                    Ok(report) => (report, None),
                    Err(error) => {
                        // Everything else stops and flushes as on a signal, then the error.
                        stop.cancel();
                        (
                            ccf_proxy::ServeReport {
                                abandoned_connections: 0,
                            },
                            Some(error),
                        )
                    }
                }
            }
        };
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
        // After the operator sync: its last "state changed" message goes out with the link's
        // final flush.
        if let Some(redis) = redis {
            redis.stop().await;
        }
        reload_stop.cancel();
        for task in reload_tasks {
            let _ = task.await;
        }
        background.stop().await;
        webhooks.stop().await;
        if let Some(retention) = retention {
            retention.abort();
        }
        // Every outcome of the drained requests is written before the process may exit, or,
        // past `usage_tracking.shutdown_flush_timeout`, journaled (and written at the next
        // start); the recorder logs the count and the file.
        if let Some(tracking) = &self.usage {
            let report = tracking
                .recorder
                .shutdown_within(self.config.usage_tracking.shutdown_flush_timeout.get())
                .await;
            info!(
                written = tracking.recorder.written(),
                journaled = report.journaled,
                lost = report.lost,
                "usage recorder flushed"
            );
        }
        info!(
            abandoned_connections = report.abandoned_connections,
            "forwarder stopped"
        );
        match per_core_failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// Pending connections the kernel queues per listener before the accept loop takes them
/// (Tokio's `TcpListener::bind` uses 1024; a burst of thousands of clients would otherwise wait on
/// SYN retransmits for seconds).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `count` `SO_REUSEPORT` listeners on `address` (`host:port`, names resolved; the first
/// address that binds wins) for the per-core runtimes, with [`LISTEN_BACKLOG`] each.
async fn bind_per_core_listeners(
    address: &str,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut last_error = None;
    let backlog = i32::try_from(LISTEN_BACKLOG).unwrap_or(i32::MAX);
    for candidate in tokio::net::lookup_host(address).await? {
        match ccf_proxy::bind_reuseport_listeners(candidate, count, backlog) {
            Ok(listeners) => return Ok(listeners),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{address} resolves to no address"),
        )
    }))
}

/// Binds `address` (`host:port`, names resolved; the first address that binds wins) with
/// [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, like `TcpListener::bind` otherwise.
async fn bind_listener(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(address).await? {
        let socket = if candidate.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{address} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The terminal UI starts before [`App::run`] and reads the webhook counters through
    /// [`App::webhooks`]: empty until `run` starts the dispatcher, then its receivers.
    #[tokio::test]
    async fn the_webhooks_slot_is_filled_when_run_starts_the_dispatcher() {
        let config = Config::from_yaml_str(
            "server:\n  host: 127.0.0.1\n  port: 0\nweb:\n  enabled: false\nusage_tracking:\n  enabled: false\nwebhooks:\n  - url: http://127.0.0.1:9/hook\n    events: [group_switched]\nendpoints:\n  - name: main\n    url: http://127.0.0.1:9\n",
        )
        .unwrap();
        let app = App::bind(config).await.unwrap();
        let webhooks = app.webhooks();
        assert!(webhooks.get().is_none());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        for _ in 0..1000 {
            if webhooks.get().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let stats = webhooks.get().map(ccf_webhooks::Webhooks::stats).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].url, "http://127.0.0.1:9/hook");
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }
}
