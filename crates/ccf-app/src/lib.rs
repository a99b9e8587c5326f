//! The composition root of cc-forwarder.
//!
//! [`App`] turns a validated [`Config`] into running listeners and tasks (the proxy listener,
//! the health probes) and owns their shutdown order: stop accepting, drain in-flight requests
//! (streams included) for up to `server.shutdown_timeout`, then stop background tasks. It is the only crate that knows every
//! other one (later: which store adapter to use, the admin listener, the health task, the TUI);
//! the binary and the end-to-end tests start the forwarder through it and nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ccf_config::Config;
use ccf_proxy::{serve, Forwarder, RequestObserver, ServeOptions};
use tokio::net::TcpListener;
use tracing::info;

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
}

/// A bound, ready-to-run forwarder.
#[derive(Debug)]
pub struct App {
    config: Arc<Config>,
    forwarder: Forwarder,
    usage: Option<usage::UsageTracking>,
    proxy_listener: TcpListener,
    proxy_addr: SocketAddr,
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
        let usage = usage::open(&config).await?;
        let proxy_listener =
            TcpListener::bind(&address)
                .await
                .map_err(|source| AppError::Bind {
                    address: address.clone(),
                    source,
                })?;
        let proxy_addr = proxy_listener
            .local_addr()
            .map_err(|source| AppError::Bind { address, source })?;
        let mut observers: Vec<Arc<dyn RequestObserver>> = Vec::new();
        if let Some(tracking) = &usage {
            observers.push(Arc::new(usage::StoreObserver {
                recorder: tracking.recorder.clone(),
                instance_id: usage::instance_id(&config, proxy_addr.port()),
            }));
        }
        observers.extend(observer);
        let forwarder = Forwarder::build_observed(
            Arc::clone(&config),
            Some(Arc::new(usage::Observers(observers))),
        )?;
        Ok(App {
            config,
            forwarder,
            usage,
            proxy_listener,
            proxy_addr,
        })
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

    /// The usage store and recorder, when usage tracking is on.
    pub fn usage(&self) -> Option<&usage::UsageTracking> {
        self.usage.as_ref()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for up to
    /// `server.shutdown_timeout` and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        info!(address = %self.proxy_addr, base_url = %self.base_url(), "forwarder listening");
        let options = ServeOptions {
            header_read_timeout: self.config.server.header_read_timeout.get(),
            drain_timeout: self.config.server.shutdown_timeout.get(),
        };
        // The health probes run while the listener serves and stop after the drain.
        let background = self.forwarder.spawn_background();
        let retention = self.usage.as_ref().map(|tracking| {
            tokio::spawn(usage::retention_loop(
                Arc::clone(&tracking.store),
                self.config.usage_tracking.retention_days,
                self.config.usage_tracking.cleanup_interval.get(),
            ))
        });
        let report = serve(self.proxy_listener, self.forwarder, options, shutdown).await;
        background.stop().await;
        if let Some(retention) = retention {
            retention.abort();
        }
        // Every outcome of the drained requests is written before the process may exit.
        if let Some(tracking) = &self.usage {
            tracking.recorder.shutdown().await;
            info!(
                written = tracking.recorder.written(),
                "usage recorder flushed"
            );
        }
        info!(
            abandoned_connections = report.abandoned_connections,
            "forwarder stopped"
        );
        Ok(())
    }
}
