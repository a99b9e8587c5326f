//! The forwarding engine: the [`Forwarder`] handle and the driver that runs each request through
//! its phases, one file per phase (the numbers are those of docs/ARCHITECTURE.md, "How a request
//! flows"):
//!
//! | phase | file | what it does |
//! |---|---|---|
//! | 0 limit, 1 auth, 2 admit | `admit.rs` | in-flight slot, inbound auth, monitoring routes, bounded body read, request fields, the request's lifecycle |
//! | 3 route | `route.rs` | rounds: the router's plan, fast test, session order, group failover, suspension, the final failure |
//! | 4 forward | `attempts.rs` | one group: each endpoint, `retry.max_attempts` times, following [`crate::retry`]'s effects |
//! | 5 relay, 6 finish | `finish.rs` | the answer's body to the client, then `RequestFinisher` |
//!
//! Beside the phases: `count_tokens.rs` (token counting answered without a routing round),
//! `keys.rs` (the per-key limits admission applies, their views and seeding) and `control.rs`
//! (operator actions, views for the UIs, hot reload).
//!
//! This file owns the handle, what its clones share ([`Shared`]), the configuration generation,
//! building, the background tasks and the short driver [`Forwarder::handle`]. It must not know
//! what a phase does inside: each phase is one call here.
//!
//! Cancellation: when the client disconnects, hyper drops the request future (during attempts,
//! back-off waits or suspension) or the response body (while relaying); everything upstream is
//! owned by them and dropped too, which closes the upstream connection at once.

mod admit;
mod attempts;
mod cluster;
mod control;
mod count_tokens;
mod finish;
mod keys;
mod model_rules;
mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ccf_config::{Config, Endpoint};
use ccf_health::{HealthMonitor, HealthSettings, HealthTask};
use ccf_lifecycle::{Attempt, FailureReason, RequestId};
use ccf_router::{Router, RouterEvent};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tracing::{info, Instrument};

pub use control::{OperatorAction, OperatorObserver};

use crate::auth::InboundAuth;
use crate::body::{BoxError, ProxyBody};
use crate::client::{build_upstream_client, ClientBuildError, UpstreamClient};
use crate::events::{EventBus, ForwarderEvent};
use crate::headers::X_CCF_REQUEST_ID;
use crate::honesty::{Honesty, HonestyWatch};
use crate::limits::{hold_until_body_ends, InFlightLimit};
use crate::monitoring::{self, Metrics};
use crate::probe::UpstreamProber;
use crate::reload::{ReloadStatus, Reloader};
use crate::suspend::Suspension;
use crate::tracking::{RequestObserver, Tracker, TrackingHub};
use admit::Admission;

/// Time allowed to open a TCP (and TLS) connection to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The response header telling how many upstream attempts a request took.
const X_CCF_ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-ccf-attempts");

/// Why a [`Forwarder`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream client (TLS, outbound proxy) could not be set up.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// The forwarding engine. Clone it freely; clones share everything.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

/// What every clone of a [`Forwarder`] shares.
struct Shared {
    /// The reloadable configuration and what is derived from it, swapped as one unit by
    /// [`Forwarder::reload`]. A request loads it where it needs it (admission, each group
    /// round), so a round never mixes two configurations.
    current: ArcSwap<ConfigGeneration>,
    router: Mutex<Router>,
    health: HealthMonitor,
    suspension: Arc<Suspension>,
    events: EventBus,
    metrics: Arc<Metrics>,
    hub: Arc<TrackingHub>,
    /// Requests in flight, against `server.max_in_flight`.
    in_flight_limit: InFlightLimit,
    /// Per-key rate, concurrency and budget limits (`auth.tokens[].limits`).
    key_limits: Arc<crate::key_limits::KeyLimits>,
    /// Relay honesty scores (`routing.relay_honesty`).
    honesty: Arc<Honesty>,
    /// Retries in flight against `retry.budget_percent` (`retry.rs`).
    retry_budget: crate::retry::RetryBudget,
    operator_observer: OnceLock<Arc<dyn OperatorObserver>>,
    /// The link to the other instances (`cluster.redis_url`), installed by the application.
    cluster_link: OnceLock<Arc<dyn crate::cluster::ClusterLink>>,
    /// Hot reload: who re-reads the configuration, one reload at a time, and the last result.
    reloader: OnceLock<Arc<dyn Reloader>>,
    reload_lock: Mutex<()>,
    reload_status: Mutex<Option<ReloadStatus>>,
}

/// One configuration generation: a configuration and what the engine derives from it
/// (endpoints, upstream client, inbound auth); immutable, replaced whole on reload.
pub(crate) struct ConfigGeneration {
    pub(crate) config: Arc<Config>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) client: UpstreamClient,
    pub(crate) auth: Option<InboundAuth>,
}

impl ConfigGeneration {
    /// Derives a generation from a validated configuration, sending on `client`.
    fn new(config: Arc<Config>, client: UpstreamClient) -> ConfigGeneration {
        ConfigGeneration {
            endpoints: config.endpoints.iter().cloned().map(Arc::new).collect(),
            auth: InboundAuth::from_config(&config.auth),
            client,
            config,
        }
    }

    fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
            .cloned()
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("endpoints", &self.shared.current().endpoints.len())
            .finish_non_exhaustive()
    }
}

/// Everything about one admitted request that the later phases need; made by admission
/// (`admit.rs`), carried through routing and attempts, and emptied by the relay (`finish.rs`).
struct RequestContext {
    request_id: RequestId,
    parts: http::request::Parts,
    body: Bytes,
    is_streaming: bool,
    started: Instant,
    /// The request's lifecycle; moved into the response body's observer once an answer is
    /// relayed (until then, dropping the context records a cancel).
    tracker: Option<Tracker>,
    /// Counts the request as in flight until its answer is fully relayed.
    in_flight: Option<monitoring::InFlightGuard>,
    /// Attempts made so far (mirrors the lifecycle's trail, for the response header).
    attempt_count: usize,
    /// When the current (last) attempt was sent: a non-streaming answer's deadline
    /// (`endpoint.timeout`) counts from there, not from the request's arrival.
    attempt_sent: Instant,
    /// What the request may still try after a timeout that may have left the upstream
    /// generating it (`retry.rs`).
    retries: crate::retry::RequestRetries,
    /// How long the latest attempt waited for its answer's headers: the relayed answer's
    /// latency, recorded (health, `fastest`) once its body has ended well.
    last_attempt_latency: std::time::Duration,
    /// The request's hold on its API key's limits (in flight, concurrency slot); moved into the
    /// response body's observer, so it is released when the answer ends.
    key_permit: Option<crate::key_limits::KeyPermit>,
    /// Checks the successful answer's honesty; moved into the response body's observer.
    honesty: Option<HonestyWatch>,
    /// The conversation the request belongs to (session affinity).
    session: Option<ccf_router::SessionRequest>,
    /// What session routing did to the current round's plan.
    decision: ccf_router::SessionDecision,
    /// Issue 20: the request's model as each endpoint's `model_map` rewrites it, and the
    /// `routing.model_rules` entry it matched.
    models: crate::model_map::RequestModelMapping,
    model_route: Option<ccf_router::ModelRoute>,
}

impl RequestContext {
    fn tracker(&mut self) -> Option<&mut Tracker> {
        self.tracker.as_mut()
    }

    fn retrying(&mut self, reason: FailureReason, detail: &str) {
        if let Some(tracker) = self.tracker() {
            tracker.transition(|lifecycle| lifecycle.retrying(reason, detail));
        }
    }

    fn record_attempt(&mut self, attempt: Attempt) {
        self.attempt_count += 1;
        self.last_attempt_latency = attempt.duration;
        if let Some(tracker) = self.tracker() {
            tracker.update(|lifecycle| lifecycle.attempt_finished(attempt));
        }
    }
}

/// Tasks a running forwarder needs (health probes and the health-to-routing bridge); stopped
/// when dropped.
#[derive(Debug)]
pub struct BackgroundTasks {
    health: Option<HealthTask>,
    bridge: Option<tokio::task::JoinHandle<()>>,
}

impl BackgroundTasks {
    /// Stops every task and waits for them.
    pub async fn stop(mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.abort();
            let _ = bridge.await;
        }
        if let Some(health) = self.health.take() {
            health.stop().await;
        }
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.abort();
        }
    }
}

impl Forwarder {
    /// Builds the engine from a validated configuration. Nothing runs until
    /// [`Forwarder::spawn_background`] is called (health probes) and requests arrive.
    pub fn build(config: Arc<Config>) -> Result<Forwarder, BuildError> {
        Self::build_observed(config, None)
    }

    /// Like [`Forwarder::build`], with an observer that receives every request's changes and
    /// its one final outcome (the usage recorder).
    pub fn build_observed(
        config: Arc<Config>,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Forwarder, BuildError> {
        let client = build_upstream_client(&config, CONNECT_TIMEOUT)?;
        let health = HealthMonitor::new(
            &config.endpoints,
            HealthSettings::from_config(&config),
            Arc::new(UpstreamProber::new(client.clone())),
        );
        let suspension = Arc::new(Suspension::new(
            config.request_suspend.enabled,
            config.request_suspend.timeout.get(),
            usize::try_from(config.request_suspend.max_suspended_requests).unwrap_or(usize::MAX),
        ));
        let events = EventBus::new();
        let metrics = Arc::new(Metrics::new());
        metrics.watch_suspension(Arc::clone(&suspension));
        let key_limits = Arc::new(crate::key_limits::KeyLimits::new(&config, events.clone()));
        metrics.watch_key_limits(Arc::clone(&key_limits));
        let honesty = Arc::new(Honesty::new(&config));
        metrics.watch_honesty(Arc::clone(&honesty));
        let hub = Arc::new(TrackingHub {
            events: events.clone(),
            metrics: Arc::clone(&metrics),
            observer,
        });
        Ok(Forwarder {
            shared: Arc::new(Shared {
                router: Mutex::new(Router::from_config(&config)),
                honesty,
                current: ArcSwap::from_pointee(ConfigGeneration::new(config, client)),
                health,
                suspension,
                events,
                metrics,
                hub,
                in_flight_limit: InFlightLimit::default(),
                key_limits,
                retry_budget: crate::retry::RetryBudget::default(),
                operator_observer: OnceLock::new(),
                cluster_link: OnceLock::new(),
                reloader: OnceLock::new(),
                reload_lock: Mutex::new(()),
                reload_status: Mutex::new(None),
            }),
        })
    }

    /// Starts the health probes and the task that feeds their results into routing and wakes
    /// held requests. The caller owns the returned handle; dropping it stops the tasks.
    pub fn spawn_background(&self) -> BackgroundTasks {
        let health = self.shared.health.spawn();
        let mut health_events = self.shared.health.events();
        let shared = Arc::clone(&self.shared);
        let bridge = tokio::spawn(async move {
            loop {
                let event = match health_events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                match &event {
                    ccf_health::HealthEvent::ProbeLatency { endpoint, latency } => {
                        shared.router().record_probe_latency(endpoint, *latency);
                        continue;
                    }
                    ccf_health::HealthEvent::EndpointHealthy { .. } => {
                        // A passing probe means "reachable", not "serving" (`/v1/models` answers
                        // 200 through an overload): it ends no cooldown; a cooldown ends at its
                        // time or when real traffic on the group succeeds (route.rs). It may
                        // still make an available group routable, so held requests look again.
                        shared.suspension.wake();
                    }
                    ccf_health::HealthEvent::EndpointUnhealthy { .. } => {}
                }
                shared.events.publish(ForwarderEvent::Health(event));
            }
        });
        BackgroundTasks {
            health: Some(health),
            bridge: Some(bridge),
        }
    }

    /// Serves one request. Never fails: every failure becomes an Anthropic-format response.
    /// Every answer carries the request's id (`x-ccf-request-id`).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let client_ip = request
            .extensions()
            .get::<crate::server::ClientAddr>()
            .map(|client| client.0.ip());
        self.handle_from(request, client_ip).await
    }

    /// [`Forwarder::handle`] for a request from `client_ip`, given directly: the forwarder's
    /// own server knows each connection's peer, and a request extension for it cost an
    /// extension map per request (issue 19).
    pub(crate) async fn handle_from<B>(
        &self,
        request: Request<B>,
        client_ip: Option<IpAddr>,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let request_id = RequestId::generate();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            path = %request.uri().path(),
        );
        // 0 limit: the slot is held until the answer's body ends.
        let slot = match self.in_flight_slot(request.uri().path(), &span) {
            Ok(slot) => slot,
            Err(refused) => return with_request_id(refused.to_response(), request_id),
        };
        let mut response = self
            .run_phases(request, request_id, client_ip)
            .instrument(span)
            .await;
        if let Some(slot) = slot {
            response = hold_until_body_ends(response, slot);
        }
        with_request_id(response, request_id)
    }

    /// Phases 1 to 6 of one request, inside its span.
    async fn run_phases<B>(
        &self,
        request: Request<B>,
        request_id: RequestId,
        client_ip: Option<IpAddr>,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        // 1 auth, 2 admit: the request becomes a context, or is answered here.
        let mut context = match self.admit(request, request_id, client_ip).await {
            Admission::Answered(response) => return response,
            Admission::CountTokens { parts, body } => {
                return self.count_tokens(&parts, &body).await
            }
            Admission::Forward(context) => context,
        };
        // 3 route, 4 forward: rounds of plans and attempts until an answer exists. 5 relay and
        // 6 finish happen in the answer's body (finish.rs).
        let mut response = self.route_and_forward(&mut context).await;
        response
            .headers_mut()
            .insert(X_CCF_ATTEMPTS, HeaderValue::from(context.attempt_count));
        response
    }
}

impl Shared {
    fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration generation in force now.
    fn current(&self) -> Arc<ConfigGeneration> {
        self.current.load_full()
    }

    fn publish_router(&self, events: Vec<RouterEvent>) {
        self.metrics.record_router_events(&events);
        for event in events {
            info!(?event, "routing changed");
            self.events.publish(ForwarderEvent::Router(event));
        }
    }
}

/// `response` with the request's id in `x-ccf-request-id`.
fn with_request_id(
    mut response: Response<ProxyBody>,
    request_id: RequestId,
) -> Response<ProxyBody> {
    if let Ok(value) = HeaderValue::from_str(request_id.text().as_str()) {
        response.headers_mut().insert(X_CCF_REQUEST_ID, value);
    }
    response
}

impl<B> hyper::service::Service<Request<B>> for Forwarder
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let forwarder = self.clone();
        Box::pin(async move { Ok(forwarder.handle(request).await) })
    }
}
