//! The admin API of cc-forwarder: the `/api/v1` REST routes, the live event stream (SSE) and the
//! web dashboard's embedded assets, served with hyper on `web.host:web.port`.
//!
//! It owns what operators see and do from a browser or a script: live state (status, endpoints,
//! groups, connections, charts), the usage database's listings, stats and exports, operator
//! actions (activate, pause, resume, priority, health check), the masked effective configuration
//! and the OpenAPI description of all that. It answers from the running
//! [`ccf_proxy::Forwarder`] (its methods and its event bus) and from a `dyn`
//! [`ccf_store::UsageStore`]; it must not know which database adapter is behind the store, nor
//! how requests are forwarded.
//!
//! Security: on a non-loopback host every `/api/v1` route needs a bearer token (`web.auth_token`,
//! else `auth.token`), and [`Admin::new`] refuses to start without one; POST routes check
//! `Origin`; no CORS headers are sent; every credential of the configuration is masked in every
//! answer.
//!
//! Main types: [`AdminState`] (what the admin API is built from), [`Admin`] (the built API: a
//! request handler for embedding), [`serve`] (the listener loop), [`AdminError`].
//!
//! Tasks: [`Admin::new`] spawns one aggregator task (the admin API's only subscriber of the
//! forwarder's event bus), owned by the [`Admin`] and aborted when its last clone is dropped;
//! each live stream client has a writer task that ends when the client leaves or
//! [`Admin::shutdown`] is called (which [`serve`] does when its shutdown future resolves).

mod actions;
mod assets;
mod auth;
mod charts;
mod dispatch;
mod dto;
mod error;
mod http_util;
mod live;
mod routes;
mod stream;
mod tickets;
mod usage;
mod views;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ccf_proxy::Forwarder;
use ccf_store::{DayZone, Pricing, RecorderHandle, UsageStore};
use http::Request;
use http_body::Body as HttpBody;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use assets::dashboard_built;
pub use http_util::{AdminBody, AdminResponse};
pub use tickets::DEFAULT_TICKET_TTL;
pub use views::effective_config;

use auth::AuthPolicy;
use live::Hub;
use tickets::DownloadTickets;

/// Default interval of the live stream's `: ping` comments.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// How long [`serve`] waits for open connections after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bound to a non-loopback address without a token.
    #[error(
        "refusing to serve the admin API on non-loopback host `{host}` without a token: set \
         web.auth_token (or auth.token), or bind web.host to 127.0.0.1"
    )]
    NoToken {
        /// The configured `web.host`.
        host: String,
    },
}

/// What the admin API is built from.
#[derive(Clone)]
pub struct AdminState {
    forwarder: Forwarder,
    store: Option<Arc<dyn UsageStore>>,
    recorder: Option<RecorderHandle>,
    config_path: Option<PathBuf>,
    heartbeat: Duration,
    download_ticket_ttl: Duration,
    webhooks: Option<ccf_webhooks::Webhooks>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.store.as_ref().map(|store| store.backend()))
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// The admin API of `forwarder`, without usage tracking (database routes answer 503).
    pub fn new(forwarder: Forwarder) -> Self {
        AdminState {
            forwarder,
            store: None,
            recorder: None,
            config_path: None,
            heartbeat: DEFAULT_HEARTBEAT,
            download_ticket_ttl: DEFAULT_TICKET_TTL,
            webhooks: None,
        }
    }

    /// The usage database (usage routes, request details, endpoint costs).
    pub fn with_store(mut self, store: Arc<dyn UsageStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The usage recorder (its backlog is shown in `status` and exported as a metric).
    pub fn with_recorder(mut self, recorder: RecorderHandle) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The webhook dispatcher whose counters `GET /api/v1/webhooks` shows.
    pub fn with_webhooks(mut self, webhooks: ccf_webhooks::Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// The configuration file shown in `status` (default: the one the config was loaded from).
    pub fn with_config_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    /// The live stream's heartbeat interval (default [`DEFAULT_HEARTBEAT`]).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a usage-export download ticket stays valid (default [`DEFAULT_TICKET_TTL`]);
    /// tests shorten it to see tickets expire.
    pub fn with_download_ticket_ttl(mut self, ttl: Duration) -> Self {
        self.download_ticket_ttl = ttl;
        self
    }
}

/// State shared by every route.
pub(crate) struct Shared {
    pub(crate) forwarder: Forwarder,
    pub(crate) store: Option<Arc<dyn UsageStore>>,
    pub(crate) recorder: Option<RecorderHandle>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) heartbeat: Duration,
    pub(crate) hub: Hub,
    pub(crate) auth: AuthPolicy,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The zone of usage days ("today", daily buckets, zone-less API dates): the configured
    /// `timezone` at start, else the machine's, the same the store counts in.
    pub(crate) day_zone: DayZone,
    /// Outstanding usage-export download tickets.
    pub(crate) tickets: DownloadTickets,
    /// The webhook dispatcher, when the application runs one.
    pub(crate) webhooks: Option<ccf_webhooks::Webhooks>,
    /// The admin token (`web.auth_token`), fixed at start like the listener.
    admin_token: Option<String>,
    /// What is derived from the running configuration; see [`Shared::derived`].
    derived: std::sync::Mutex<Arc<ConfigDerived>>,
}

/// What the admin API derives from the forwarder's configuration: rebuilt when a hot reload
/// swaps it, so new prices and new credentials apply at once.
pub(crate) struct ConfigDerived {
    config: Arc<ccf_config::Config>,
    /// Prices for live costs and affinity savings.
    pub(crate) pricing: Pricing,
    /// Every configured credential, for [`Shared::sweep`].
    secrets: Vec<String>,
}

impl ConfigDerived {
    fn new(config: Arc<ccf_config::Config>, admin_token: Option<&str>) -> ConfigDerived {
        let mut secrets = views::collect_secrets(&config);
        secrets.extend(admin_token.map(str::to_string));
        ConfigDerived {
            pricing: Pricing::from_config(&config.usage_tracking),
            secrets,
            config,
        }
    }
}

impl ConfigDerived {
    /// Replaces every configured credential in `text`; see [`ccf_types::sweep_secrets`] for
    /// which occurrences of short secrets count.
    pub(crate) fn sweep(&self, text: String) -> String {
        ccf_types::sweep_secrets(text, &self.secrets)
    }
}

impl Shared {
    /// The values derived from the running configuration (rebuilt after a reload).
    pub(crate) fn derived(&self) -> Arc<ConfigDerived> {
        let config = self.forwarder.config();
        let mut cached = self
            .derived
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Arc::ptr_eq(&cached.config, &config) {
            *cached = Arc::new(ConfigDerived::new(config, self.admin_token.as_deref()));
        }
        Arc::clone(&cached)
    }

    /// Replaces every configured credential that might have slipped into an answer.
    pub(crate) fn sweep(&self, text: String) -> String {
        self.derived().sweep(text)
    }
}

/// Aborts the aggregator when the last [`Admin`] clone goes away.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The admin API, ready to answer requests. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    _aggregator: Arc<TaskGuard>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("auth", &self.shared.auth.enabled())
            .finish_non_exhaustive()
    }
}

/// Checks that the admin API may start with `config` (a token exists when `web.host` is not
/// loopback). [`Admin::new`] checks the same; call this before binding the listener.
pub fn check_security(config: &ccf_config::Config) -> Result<(), AdminError> {
    AuthPolicy::from_config(config).map(|_| ())
}

impl Admin {
    /// Builds the admin API and starts its aggregator task (must run inside a tokio runtime).
    pub fn new(state: AdminState) -> Result<Admin, AdminError> {
        let config = state.forwarder.config();
        let auth = AuthPolicy::from_config(&config)?;
        let admin_token = auth.token().map(|token| token.expose().to_string());
        let derived = ConfigDerived::new(Arc::clone(&config), admin_token.as_deref());
        let day_zone = DayZone::from_config(config.timezone.as_deref());
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            forwarder: state.forwarder,
            store: state.store,
            recorder: state.recorder,
            config_path: state.config_path,
            heartbeat: state.heartbeat,
            hub: Hub::new(),
            auth,
            shutdown,
            day_zone,
            tickets: DownloadTickets::new(state.download_ticket_ttl),
            webhooks: state.webhooks,
            admin_token,
            derived: std::sync::Mutex::new(Arc::new(derived)),
        });
        let aggregator = live::spawn_aggregator(&shared);
        Ok(Admin {
            shared,
            _aggregator: Arc::new(TaskGuard(aggregator)),
        })
    }

    /// Answers one request (for embedding the admin API in another hyper service).
    pub async fn handle<B>(&self, request: Request<B>) -> AdminResponse
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        dispatch::handle(Arc::clone(&self.shared), request).await
    }

    /// Ends every live stream (their writers stop; clients see the stream end).
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for Admin {
    type Response = AdminResponse;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<AdminResponse, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let admin = self.clone();
        Box::pin(async move { Ok(admin.handle(request).await) })
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves, then ends the live streams and
/// drains the other connections for up to 5 s.
///
/// Fails before accepting anything when the configuration does not allow the admin API to start
/// (see [`check_security`]).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    let admin = Admin::new(state)?;
    let address = listener.local_addr().ok();
    info!(address = ?address, auth = admin.shared.auth.enabled(), "admin API listening");
    let streams = admin.clone();
    let report = ccf_proxy::serve_connections(
        listener,
        |_peer| admin.clone(),
        ccf_proxy::ServeOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        },
        async move {
            shutdown.await;
            // Live streams never end by themselves: end them so the drain can finish.
            streams.shutdown();
        },
    )
    .await;
    if report.abandoned_connections > 0 {
        warn!("admin API: connections still open after the drain timeout");
    }
    Ok(())
}
