//! The forwarding engine: admit -> route -> forward -> relay -> finish.
//!
//! [`Forwarder`] is cheap to clone (one `Arc`) and is a hyper `Service`, so it can be served on
//! any listener or mounted inside another hyper application. Per request it:
//! 1. admits: an in-flight slot (`server.max_in_flight`, else 529), inbound auth (every path
//!    but `/health`, recording the key's name), monitoring routes, reads the body once (bounded)
//!    as `Bytes`, parses `model` and `stream` from the JSON, gives the request its [`RequestId`];
//! 2. routes: asks the [`Router`] for the active group's endpoints, best first;
//! 3. forwards: up to `retry.max_attempts` attempts per endpoint, acting on each result's class
//!    ([`crate::classify`]); when every endpoint of the group failed, the group fails (auto mode:
//!    cooldown, and the same request continues on the next group); when nothing is left, the
//!    request is held (`request_suspend`) or answered with the last upstream error verbatim;
//! 4. relays: the first success (or final answer) goes to the client untouched;
//! 5. finishes: logs and counts the outcome when the body ends, fails or the client leaves.
//!
//! Cancellation: when the client disconnects, hyper drops the request future (during attempts,
//! back-off waits or suspension) or the response body (while relaying); everything upstream is
//! owned by them and dropped too, which closes the upstream connection at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ccf_config::{Config, Endpoint};
use ccf_health::{HealthMonitor, HealthSettings, HealthSnapshot, HealthTask, PassiveFailure};
use ccf_lifecycle::{Attempt, AttemptOutcome, FailureReason, Lifecycle, RequestId, RequestStart};
use ccf_router::{EndpointView, GroupView, RoutePlan, Router, RouterError, RouterEvent};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tracing::{debug, info, warn, Instrument};

use crate::auth::InboundAuth;
use crate::body::{
    full_body, BoxError, ProxyBody, RelayBody, RelayEnd, RelayObserver, RelayOptions,
};
use crate::classify::{backoff, classify_status, AttemptClass};
use crate::client::{build_upstream_client, ClientBuildError, UpstreamClient};
use crate::error::{anthropic_error_response, ProxyError};
use crate::events::{EventBus, ForwarderEvent};
use crate::headers::{remove_hop_by_hop, rewrite_request_headers, X_CCF_REQUEST_ID};
use crate::honesty::{Honesty, HonestyProbe};
use crate::limits::{hold_until_body_ends, InFlightLimit};
use crate::monitoring::{self, Metrics};
use crate::probe::UpstreamProber;
use crate::reload::{ReloadError, ReloadReport, ReloadStatus, Reloader};
use crate::server::ClientAddr;
use crate::suspend::{HoldPermit, Suspension};
use crate::tracking::{RequestObserver, Tracker, TrackingHub};
use ccf_tokens::BodyTap;

/// Time allowed to open a TCP (and TLS) connection to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest upstream error body kept to be relayed verbatim after other attempts failed.
const MAX_BUFFERED_ERROR_BODY: usize = 1024 * 1024;

/// The token counting path answered locally when no upstream can.
const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

/// The response header telling how many upstream attempts a request took.
const X_CCF_ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-ccf-attempts");

/// Why a [`Forwarder`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream client (TLS, outbound proxy) could not be set up.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// An operator action made on this forwarder (admin API, TUI), reported to its
/// [`OperatorObserver`] after it was applied. [`Forwarder::apply_remote`] applies one made
/// elsewhere (another instance sharing the database) without reporting it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// `group` was activated (`force`: as asked by the operator).
    Activate {
        /// The group.
        group: String,
        /// Activation with no healthy endpoint was allowed.
        force: bool,
    },
    /// `group` was paused until `until` (wall clock), or until resumed when `None`.
    Pause {
        /// The group.
        group: String,
        /// End of a timed pause.
        until: Option<SystemTime>,
    },
    /// `group`'s pause ended.
    Resume {
        /// The group.
        group: String,
    },
    /// `endpoint` got this priority (`set_endpoint_priority`, or each endpoint whose priority
    /// `prefer_endpoint` changed).
    Priority {
        /// The endpoint.
        endpoint: String,
        /// Its new priority.
        priority: u32,
    },
}

/// Learns of every operator action made through this forwarder's methods (not of those applied
/// with [`Forwarder::apply_remote`]). Called synchronously after the action was applied: do not
/// block.
pub trait OperatorObserver: Send + Sync {
    /// An action was applied.
    fn on_action(&self, action: &OperatorAction);
}

/// The forwarding engine. Clone it freely; clones share everything.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

struct Shared {
    /// The reloadable configuration and what is derived from it, swapped as one unit by
    /// [`Forwarder::reload`]. A request loads it where it needs it (admission, each group
    /// round), so a round never mixes two configurations.
    current: ArcSwap<Snapshot>,
    router: Mutex<Router>,
    health: HealthMonitor,
    suspension: Arc<Suspension>,
    events: EventBus,
    metrics: Arc<Metrics>,
    hub: Arc<TrackingHub>,
    /// Requests in flight, against `server.max_in_flight`.
    in_flight_limit: InFlightLimit,
    /// Relay honesty scores (`routing.relay_honesty`).
    honesty: Honesty,
    operator_observer: OnceLock<Arc<dyn OperatorObserver>>,
    /// Hot reload: who re-reads the configuration, one reload at a time, and the last result.
    reloader: OnceLock<Arc<dyn Reloader>>,
    reload_lock: Mutex<()>,
    reload_status: Mutex<Option<ReloadStatus>>,
}

/// One configuration and what the engine derives from it; immutable, replaced whole on reload.
pub(crate) struct Snapshot {
    pub(crate) config: Arc<Config>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) client: UpstreamClient,
    pub(crate) auth: Option<InboundAuth>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("endpoints", &self.shared.current().endpoints.len())
            .finish_non_exhaustive()
    }
}

/// What the engine needs to know about the request body.
#[derive(serde::Deserialize, Default)]
struct BodyProbe {
    model: Option<String>,
    stream: Option<bool>,
    // Smart routing (session.rs): read in the same parse, never copied as text.
    metadata: Option<crate::session::Metadata>,
    system: Option<crate::session::SystemPrompt>,
    messages: Option<crate::session::Messages>,
    tools: Option<crate::session::CacheScan>,
    cache_control: Option<crate::session::CacheScan>,
}

impl BodyProbe {
    /// The parts a session is identified by.
    fn session(&self) -> crate::session::BodySession<'_> {
        crate::session::BodySession {
            user_id: self.metadata.as_ref().and_then(|m| m.user_id.as_deref()),
            system: self.system.map(|part| part.0),
            messages: self.messages.map(|part| part.0),
            long_ttl_elsewhere: self.tools.is_some_and(|scan| scan.0)
                || self.cache_control.is_some_and(|scan| scan.0),
        }
    }
}

/// Everything about one request that the routing loop needs.
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
    /// Checks the successful answer's honesty; moved into the response body's observer.
    honesty: Option<HonestyProbe>,
    /// The conversation the request belongs to (session affinity).
    session: Option<ccf_router::SessionRequest>,
    /// What session routing did to the current round's plan.
    decision: ccf_router::SessionDecision,
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
        if let Some(tracker) = self.tracker() {
            tracker.update(|lifecycle| lifecycle.attempt_finished(attempt));
        }
    }
}

/// An upstream answer kept whole so it can be relayed later, verbatim.
struct BufferedAnswer {
    parts: http::response::Parts,
    body: Bytes,
}

/// How trying one group ended.
enum GroupOutcome {
    /// A response for the client (success, or a final upstream answer).
    Answered(Response<ProxyBody>),
    /// Every endpoint failed.
    Exhausted,
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
        let client = build_upstream_client(&config.proxy, CONNECT_TIMEOUT)?;
        let endpoints: Vec<Arc<Endpoint>> =
            config.endpoints.iter().cloned().map(Arc::new).collect();
        let auth = InboundAuth::from_config(&config.auth);
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
        let hub = Arc::new(TrackingHub {
            events: events.clone(),
            metrics: Arc::clone(&metrics),
            observer,
        });
        Ok(Forwarder {
            shared: Arc::new(Shared {
                router: Mutex::new(Router::from_config(&config)),
                honesty: Honesty::new(&config),
                current: ArcSwap::from_pointee(Snapshot {
                    config,
                    endpoints,
                    client,
                    auth,
                }),
                health,
                suspension,
                events,
                metrics,
                hub,
                in_flight_limit: InFlightLimit::default(),
                operator_observer: OnceLock::new(),
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
                    ccf_health::HealthEvent::EndpointHealthy { endpoint, .. } => {
                        let events = shared.router().endpoint_recovered(endpoint, Instant::now());
                        shared.publish_router(events);
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

    /// The configuration the engine runs with now (replaced by [`Forwarder::reload`]).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.shared.current().config)
    }

    /// Hot reload: applies a new validated configuration without dropping anything.
    ///
    /// Endpoints, priorities, groups, strategy, retry, health, streaming, suspension, inbound
    /// auth, token counting and the outbound proxy take effect for the next routing round;
    /// requests already relaying keep the upstream connection they have. Live state carries
    /// over by name (see [`Router::reconfigure`] and [`HealthMonitor::reconfigure`]): health,
    /// cooldowns, pauses, the active group and operator priority edits; held requests wake up
    /// and route again under the new configuration. Listen addresses, storage and the admin API
    /// are left as they are and listed in [`ReloadReport::restart_required`]. On error nothing
    /// changed.
    pub fn reload(&self, config: Arc<Config>) -> Result<ReloadReport, ReloadError> {
        let shared = &self.shared;
        let _one_at_a_time = shared
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = shared.current();
        let report = crate::reload::diff(&old.config, &config);
        let config = Arc::new(crate::reload::effective(&old.config, &config));
        let client = if serde_json::to_value(&old.config.proxy).ok()
            == serde_json::to_value(&config.proxy).ok()
        {
            old.client.clone()
        } else {
            build_upstream_client(&config.proxy, CONNECT_TIMEOUT)?
        };
        let reset = |name: &str| match (old.config.endpoint(name), config.endpoint(name)) {
            (Some(before), Some(after)) => crate::reload::connection_changed(before, after),
            _ => false,
        };
        shared.health.reconfigure(
            &config.endpoints,
            HealthSettings::from_config(&config),
            Arc::new(UpstreamProber::new(client.clone())),
        );
        shared.current.store(Arc::new(Snapshot {
            endpoints: config.endpoints.iter().cloned().map(Arc::new).collect(),
            auth: InboundAuth::from_config(&config.auth),
            client,
            config: Arc::clone(&config),
        }));
        let health = shared.health.snapshot();
        let events = shared.router().reconfigure_from_config(
            &config,
            &reset,
            &|name| health.is_healthy(name),
            Instant::now(),
        );
        shared.publish_router(events);
        shared.suspension.reconfigure(
            config.request_suspend.enabled,
            config.request_suspend.timeout.get(),
            usize::try_from(config.request_suspend.max_suspended_requests).unwrap_or(usize::MAX),
        );
        Ok(report)
    }

    /// Installs what [`Forwarder::request_reload`] calls (the application's configuration
    /// reader). Only the first call takes effect; returns whether this one did.
    pub fn set_reloader(&self, reloader: Arc<dyn Reloader>) -> bool {
        self.shared.reloader.set(reloader).is_ok()
    }

    /// Whether a [`Reloader`] is installed (the application was started from a file).
    pub fn reload_enabled(&self) -> bool {
        self.shared.reloader.get().is_some()
    }

    /// Re-reads and applies the configuration through the installed [`Reloader`] (the admin
    /// API's `POST /api/v1/config/reload`); `None` when no reloader is installed.
    pub fn request_reload(&self, trigger: &str) -> Option<ReloadStatus> {
        let reloader = Arc::clone(self.shared.reloader.get()?);
        Some(reloader.reload(trigger))
    }

    /// Keeps `status` as the last reload result and publishes it on the event bus.
    pub fn record_reload(&self, status: ReloadStatus) {
        *self
            .shared
            .reload_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status.clone());
        self.shared
            .events
            .publish(ForwarderEvent::ConfigReloaded(status));
    }

    /// The last reload result, if any reload was attempted.
    pub fn reload_status(&self) -> Option<ReloadStatus> {
        self.shared
            .reload_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The event bus (routing, health and suspension changes).
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// The Prometheus metrics (`/metrics`): the application sets the recorder backlog and
    /// installs the pricing through it.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Endpoint health.
    pub fn health(&self) -> &HealthMonitor {
        &self.shared.health
    }

    /// Requests held now and how long each has waited.
    pub fn held_requests(&self) -> Vec<(RequestId, Duration)> {
        self.shared.suspension.held_requests()
    }

    /// Every group's state.
    pub fn groups(&self) -> Vec<GroupView> {
        let health = self.shared.health.snapshot();
        self.shared
            .router()
            .groups(&|name| health.is_healthy(name), Instant::now())
    }

    /// Session affinity: settings, counters, per-endpoint cache numbers and up to `limit` live
    /// sessions (most recent first).
    pub fn affinity(&self, limit: usize) -> ccf_router::AffinityView {
        self.shared.router().affinity_view(Instant::now(), limit)
    }

    /// Every endpoint's last rate-limit readings, burn rate and predicted exhaustion.
    pub fn quota(&self) -> Vec<ccf_router::EndpointQuotaView> {
        self.shared.router().quota_view(Instant::now())
    }

    /// A success from `endpoint` is relayed: binds the request's session there (noting a move
    /// on the request) and returns what records the turn's tokens when the body ends.
    fn session_turn(
        &self,
        endpoint: &Endpoint,
        context: &RequestContext,
        tracker: &mut Option<Tracker>,
    ) -> crate::session::TurnRecorder {
        let session = context.session;
        if let Some(session) = &session {
            let moved =
                self.shared
                    .router()
                    .session_served(session, &endpoint.name, Instant::now());
            if let Some(moved) = moved {
                info!(session = %moved.session, from = %moved.from, to = %moved.to, "session affinity moved");
                if let Some(tracker) = tracker.as_mut() {
                    tracker.update(|lifecycle| lifecycle.affinity_moved(&moved.from));
                }
            }
        }
        let held = context.decision.held
            && context.decision.preferred.as_deref() == Some(endpoint.name.as_str());
        let forwarder = self.clone();
        let name = endpoint.name.clone();
        crate::session::TurnRecorder::new(move |model, tokens| {
            forwarder
                .shared
                .router()
                .record_turn(session.as_ref(), &name, model, tokens, held);
        })
    }

    /// Every endpoint's routing state.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let health = self.shared.health.snapshot();
        self.shared
            .router()
            .endpoints(&|name| health.is_healthy(name), Instant::now())
    }

    /// Operator action: make `group` the active one (`force` allows a group without healthy
    /// endpoints).
    pub fn activate_group(&self, group: &str, force: bool) -> Result<(), RouterError> {
        self.activate_local(group, force)?;
        self.report(OperatorAction::Activate {
            group: group.to_string(),
            force,
        });
        Ok(())
    }

    fn activate_local(&self, group: &str, force: bool) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.activate(
                group,
                force,
                &|name| health.is_healthy(name),
                Instant::now(),
            )
        })
    }

    /// Operator action: take `group` out of rotation, for `duration` or until resumed.
    pub fn pause_group(&self, group: &str, duration: Option<Duration>) -> Result<(), RouterError> {
        self.pause_local(group, duration)?;
        let until = duration
            .filter(|duration| !duration.is_zero())
            .and_then(|duration| SystemTime::now().checked_add(duration));
        self.report(OperatorAction::Pause {
            group: group.to_string(),
            until,
        });
        Ok(())
    }

    fn pause_local(&self, group: &str, duration: Option<Duration>) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.pause(
                group,
                duration,
                &|name| health.is_healthy(name),
                Instant::now(),
            )
        })
    }

    /// Operator action: put a paused group back into rotation.
    pub fn resume_group(&self, group: &str) -> Result<(), RouterError> {
        self.resume_local(group)?;
        self.report(OperatorAction::Resume {
            group: group.to_string(),
        });
        Ok(())
    }

    fn resume_local(&self, group: &str) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.resume(group, &|name| health.is_healthy(name), Instant::now())
        })
    }

    /// Operator action: change an endpoint's priority at once (health is kept).
    pub fn set_endpoint_priority(&self, endpoint: &str, priority: u32) -> Result<(), RouterError> {
        self.operator_action(|router| router.set_priority(endpoint, priority))?;
        self.report(OperatorAction::Priority {
            endpoint: endpoint.to_string(),
            priority,
        });
        Ok(())
    }

    /// Operator action: the `-p` override at run time.
    pub fn prefer_endpoint(&self, endpoint: &str) -> Result<(), RouterError> {
        let events = self.shared.router().prefer_endpoint(endpoint)?;
        for event in &events {
            if let RouterEvent::PriorityChanged { endpoint, priority } = event {
                self.report(OperatorAction::Priority {
                    endpoint: endpoint.clone(),
                    priority: *priority,
                });
            }
        }
        self.shared.publish_router(events);
        self.shared.suspension.wake();
        Ok(())
    }

    /// Every endpoint's relay honesty scores, flags and demotion (see `docs/routing.md`).
    pub fn honesty(&self) -> Vec<ccf_router::honesty::EndpointHonesty> {
        self.shared.honesty.view(Instant::now())
    }

    /// Folds a successful answer's honesty check into the scores and applies the demotions it
    /// causes to routing.
    fn record_honesty(&self, endpoint: &str, check: ccf_router::honesty::HonestyCheck) {
        let shared = &self.shared;
        let current = shared.current();
        shared
            .honesty
            .record_check(&current.config, &shared.metrics, endpoint, check);
        // Every endpoint's state, not only what this check changed: a configuration reload may
        // have rebuilt an endpoint's routing state since it was demoted. Only real changes make
        // events.
        let demotions = shared.honesty.demotions();
        let mut events = Vec::new();
        {
            let mut router = shared.router();
            for (name, demoted) in demotions {
                events.extend(router.set_demoted(&name, demoted));
            }
        }
        shared.publish_router(events);
    }

    /// Installs the observer of operator actions (the multi-instance sync). Only the first call
    /// takes effect; returns whether this one did.
    pub fn set_operator_observer(&self, observer: Arc<dyn OperatorObserver>) -> bool {
        self.shared.operator_observer.set(observer).is_ok()
    }

    /// Applies an operator action made on another instance, without reporting it to the
    /// [`OperatorObserver`] (so it is not published again). Idempotent where the router allows:
    /// resuming a group that is not paused and a pause whose end has passed are no-ops. An
    /// activation the local health refuses is returned as the router's error.
    pub fn apply_remote(&self, action: &OperatorAction) -> Result<(), RouterError> {
        match action {
            OperatorAction::Activate { group, force } => self.activate_local(group, *force),
            OperatorAction::Pause { group, until } => match until {
                None => self.pause_local(group, None),
                Some(until) => match until.duration_since(SystemTime::now()) {
                    Ok(left) if !left.is_zero() => self.pause_local(group, Some(left)),
                    // Already over: the group is not paused.
                    _ => self.resume_remote(group),
                },
            },
            OperatorAction::Resume { group } => self.resume_remote(group),
            OperatorAction::Priority { endpoint, priority } => {
                self.operator_action(|router| router.set_priority(endpoint, *priority))
            }
        }
    }

    fn resume_remote(&self, group: &str) -> Result<(), RouterError> {
        match self.resume_local(group) {
            Err(RouterError::NotPaused { .. }) => Ok(()),
            other => other,
        }
    }

    fn report(&self, action: OperatorAction) {
        if let Some(observer) = self.shared.operator_observer.get() {
            observer.on_action(&action);
        }
    }

    fn operator_action(
        &self,
        action: impl FnOnce(&mut Router) -> Result<Vec<RouterEvent>, RouterError>,
    ) -> Result<(), RouterError> {
        let events = action(&mut self.shared.router())?;
        self.shared.publish_router(events);
        self.shared.suspension.wake();
        Ok(())
    }

    /// Serves one request. Never fails: every failure becomes an Anthropic-format response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
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
        // Monitoring routes stay answerable when the forwarder is saturated.
        let slot = if crate::limits::is_monitoring_path(request.uri().path()) {
            None
        } else {
            let limit = usize::try_from(self.shared.current().config.server.max_in_flight)
                .unwrap_or(usize::MAX);
            match self.shared.in_flight_limit.try_acquire(limit) {
                Some(slot) => Some(slot),
                None => {
                    let error = ProxyError::Overloaded { limit };
                    span.in_scope(|| info!(status = 529, "rejected: {error}"));
                    self.shared.metrics.record_request("", error.status());
                    let mut response = error.to_response();
                    if let Ok(value) = HeaderValue::try_from(request_id.to_string()) {
                        response.headers_mut().insert(X_CCF_REQUEST_ID, value);
                    }
                    return response;
                }
            }
        };
        let mut response = self
            .handle_inner(request, request_id)
            .instrument(span)
            .await;
        if let Some(slot) = slot {
            response = hold_until_body_ends(response, slot);
        }
        if let Ok(value) = HeaderValue::try_from(request_id.to_string()) {
            response.headers_mut().insert(X_CCF_REQUEST_ID, value);
        }
        response
    }

    async fn handle_inner<B>(
        &self,
        request: Request<B>,
        request_id: RequestId,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        let current = shared.current();
        // Inbound auth covers every path but `/health` and credential-less reachability probes
        // (`/health/detailed`, `/metrics` and friends included); the name of the matching key is
        // recorded on the request.
        let api_key_name = match current.auth.as_ref().filter(|_| {
            !is_reachability_check(&request) && !crate::auth::is_open_path(request.uri().path())
        }) {
            Some(auth) => match auth.check(request.headers()) {
                Ok(name) => Some(name.to_string()),
                Err(error) => {
                    info!(status = 401, "rejected: {error}");
                    shared.metrics.record_request("", error.status());
                    return error.to_response();
                }
            },
            None => None,
        };
        if let Some(response) = monitoring::respond(
            request.method(),
            request.uri().path(),
            &current.endpoints,
            &shared.health.snapshot(),
            &shared.metrics,
        ) {
            return response;
        }
        let started = Instant::now();
        let started_at = SystemTime::now();
        let client_ip = request
            .extensions()
            .get::<ClientAddr>()
            .map(|client| client.0.ip());
        let (parts, body) = request.into_parts();
        let limit = current.config.server.max_request_body_size.bytes();
        let body = match read_body(body, parts.headers.get(header::CONTENT_LENGTH), limit).await {
            Ok(bytes) => bytes,
            Err(error) => {
                info!(status = error.status().as_u16(), "rejected: {error}");
                shared.metrics.record_request("", error.status());
                return error.to_response();
            }
        };
        if current.config.token_counting.enabled
            && parts.method == http::Method::POST
            && parts.uri.path() == COUNT_TOKENS_PATH
        {
            return self.count_tokens(&parts, &body).await;
        }
        let probe = probe_body(&parts.headers, &body);
        let session = crate::session::identify(
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            &probe.session(),
        );
        let is_streaming = probe.stream == Some(true)
            || parts
                .headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
        info!(
            model = probe.model.as_deref().unwrap_or("unknown"),
            streaming = is_streaming,
            body_bytes = body.len(),
            "request started"
        );
        let (lifecycle, started_event) = Lifecycle::start(
            RequestStart {
                id: request_id,
                client_ip,
                user_agent: parts
                    .headers
                    .get(header::USER_AGENT)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string),
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                is_streaming,
                request_model: probe.model.clone(),
                api_key_name,
            },
            started_at,
        );
        let mut context = RequestContext {
            request_id,
            honesty: Honesty::probe(
                &current.config,
                request_id,
                &parts,
                &body,
                probe.model.as_deref(),
            ),
            parts,
            body,
            is_streaming,
            started,
            tracker: Some(Tracker::start(
                Arc::clone(&shared.hub),
                lifecycle,
                started_event,
            )),
            in_flight: Some(shared.metrics.in_flight_guard()),
            attempt_count: 0,
            session,
            decision: ccf_router::SessionDecision::default(),
        };
        if let (Some(session), Some(tracker)) = (session, context.tracker()) {
            tracker.update(|lifecycle| lifecycle.set_session(&session.key.to_string()));
        }
        let mut response = self.route_and_forward(&mut context).await;
        if let Ok(value) = HeaderValue::try_from(context.attempt_count.to_string()) {
            response.headers_mut().insert(X_CCF_ATTEMPTS, value);
        }
        response
    }

    /// `POST /v1/messages/count_tokens` with `token_counting.enabled`: the first `200` of the
    /// healthy endpoints that support it (routing order) is relayed verbatim; otherwise a local
    /// estimate answers, marked with `x-token-estimation: true`. Not billed, so not tracked.
    async fn count_tokens(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let current = shared.current();
        let plan = shared.plan();
        for planned in plan.endpoints.iter().filter(|planned| planned.healthy) {
            let Some(endpoint) = current.endpoint(&planned.name) else {
                continue;
            };
            if !endpoint.supports_count_tokens {
                continue;
            }
            match self.send_upstream(parts, body, false, &endpoint).await {
                Ok(response) if response.status() == StatusCode::OK => {
                    info!(endpoint = %endpoint.name, "count_tokens answered by upstream");
                    shared
                        .metrics
                        .record_request(&endpoint.name, StatusCode::OK);
                    let (mut response_parts, upstream_body) = response.into_parts();
                    remove_hop_by_hop(&mut response_parts.headers);
                    return Response::from_parts(
                        response_parts,
                        upstream_body.map_err(Into::into).boxed_unsync(),
                    );
                }
                Ok(response) => {
                    debug!(endpoint = %endpoint.name, status = response.status().as_u16(), "count_tokens refused: next endpoint");
                }
                Err(error) => debug!(endpoint = %endpoint.name, "count_tokens failed: {error}"),
            }
        }
        match ccf_tokens::estimate_input_tokens(
            body,
            current.config.token_counting.estimation_ratio,
        ) {
            Ok(tokens) => {
                info!(input_tokens = tokens, "count_tokens estimated locally");
                shared.metrics.record_request("", StatusCode::OK);
                let mut response = Response::new(full_body(
                    serde_json::json!({ "input_tokens": tokens }).to_string(),
                ));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response.headers_mut().insert(
                    http::HeaderName::from_static("x-token-estimation"),
                    HeaderValue::from_static("true"),
                );
                response
            }
            Err(error) => {
                shared.metrics.record_request("", StatusCode::BAD_REQUEST);
                anthropic_error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("cannot count tokens: {error}"),
                )
            }
        }
    }

    /// Routes the request until an answer exists; groups fail over, and when nothing is left the
    /// request is held or answered with the last upstream error.
    async fn route_and_forward(&self, context: &mut RequestContext) -> Response<ProxyBody> {
        let shared = &self.shared;
        let mut last_answer: Option<BufferedAnswer> = None;
        let mut last_error: Option<ProxyError> = None;
        let mut permit: Option<HoldPermit> = None;
        loop {
            // Subscribe before routing so that a wake-up during the round is not lost.
            let mut wakes = shared.suspension.subscribe();
            let mut tried_groups: Vec<String> = Vec::new();
            loop {
                let mut plan = shared.plan();
                let Some(group) = plan.group.clone() else {
                    break;
                };
                self.rank_by_fast_test(&mut plan).await;
                // Session affinity and quota draining reorder the plan last, so they win.
                context.decision =
                    shared
                        .router()
                        .arrange(&mut plan, context.session.as_ref(), Instant::now());
                if tried_groups.contains(&group) {
                    break;
                }
                tried_groups.push(group.clone());
                match self
                    .try_group(context, &plan, &mut last_answer, &mut last_error)
                    .await
                {
                    GroupOutcome::Answered(response) => {
                        if let Some(permit) = permit.take() {
                            if let Some(tracker) = context.tracker() {
                                tracker.transition(|lifecycle| lifecycle.resumed());
                            }
                            shared.metrics.record_suspension("resumed");
                            shared.events.publish(ForwarderEvent::RequestResumed {
                                request_id: context.request_id,
                                waited: permit.waited(),
                            });
                        }
                        return response;
                    }
                    GroupOutcome::Exhausted => {
                        warn!(group = %group, "every endpoint of the group failed");
                        if !shared.router().is_auto() {
                            // Manual mode: mark the group as needing attention, never switch.
                            let events =
                                shared.router().record_group_failure(&group, Instant::now());
                            shared.publish_router(events);
                            break;
                        }
                        if shared.another_group_available(&group) {
                            let events =
                                shared.router().record_group_failure(&group, Instant::now());
                            shared.publish_router(events);
                        } else {
                            // Cooling down the last available group would turn every request
                            // away until the cooldown ends while it may recover any second.
                            info!(group = %group, "no other group to fail over to: no cooldown");
                        }
                    }
                }
            }
            // Nothing (more) to try: hold the request when allowed.
            if permit.is_none() {
                permit = shared.suspension.try_hold(context.request_id);
                if permit.is_some() {
                    if let Some(tracker) = context.tracker() {
                        tracker.transition(|lifecycle| lifecycle.suspended());
                    }
                    info!(
                        held = shared.suspension.held(),
                        "no upstream available: request held"
                    );
                    shared.metrics.record_suspension("held");
                    shared.events.publish(ForwarderEvent::RequestSuspended {
                        request_id: context.request_id,
                        held: shared.suspension.held(),
                    });
                }
            }
            let Some(held) = &permit else { break };
            let deadline = held_deadline(held, shared.suspension.timeout());
            if !self.wait_for_change(&mut wakes, deadline).await {
                let waited = held.waited();
                warn!(waited_ms = waited.as_millis(), "held request timed out");
                shared.metrics.record_suspension("timed_out");
                shared
                    .events
                    .publish(ForwarderEvent::RequestSuspensionTimedOut {
                        request_id: context.request_id,
                        waited,
                    });
                shared
                    .metrics
                    .record_request("", StatusCode::SERVICE_UNAVAILABLE);
                let message = format!(
                    "no upstream endpoint became available within {:?}",
                    shared.suspension.timeout()
                );
                if let Some(tracker) = context.tracker() {
                    tracker.finish(|lifecycle, now| {
                        lifecycle.fail(FailureReason::NoHealthy, &message, Some(503), now)
                    });
                }
                return anthropic_error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded_error",
                    &message,
                );
            }
            debug!("held request routes again");
        }
        self.final_failure(context, last_answer, last_error)
    }

    /// With `strategy: fastest` and `fast_test_enabled`, probes the plan's endpoints (results
    /// cached for `fast_test_cache_ttl`) and puts the reachable ones first, fastest first; the
    /// others stay as a last resort.
    async fn rank_by_fast_test(&self, plan: &mut RoutePlan) {
        let shared = &self.shared;
        let current = shared.current();
        let strategy = &current.config.strategy;
        if strategy.kind != ccf_config::StrategyType::Fastest
            || !strategy.fast_test_enabled
            || plan.endpoints.len() < 2
        {
            return;
        }
        let names: Vec<String> = plan.endpoints.iter().map(|e| e.name.clone()).collect();
        let ranked = shared.health.fast_test(&names).await;
        if ranked.is_empty() {
            return;
        }
        {
            let mut router = shared.router();
            for (name, latency) in &ranked {
                router.record_probe_latency(name, *latency);
            }
        }
        // Endpoints demoted for a low honesty score stay behind the others, as in the router.
        let demoted: Vec<String> = shared
            .honesty
            .demotions()
            .into_iter()
            .filter_map(|(name, demoted)| demoted.then_some(name))
            .collect();
        plan.endpoints.sort_by_key(|planned| {
            let rank = ranked
                .iter()
                .position(|(name, _)| *name == planned.name)
                .unwrap_or(usize::MAX);
            (demoted.contains(&planned.name), rank)
        });
    }

    /// Waits until something may have changed (a wake-up, or the router's next scheduled
    /// change) or the deadline; `false` when the deadline passed.
    async fn wait_for_change(
        &self,
        wakes: &mut tokio::sync::watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let now = Instant::now();
        let next_change = self
            .shared
            .router()
            .next_change_at(now)
            .map(tokio::time::Instant::from_std);
        let wake_at = next_change.map_or(deadline, |next| next.min(deadline));
        tokio::select! {
            changed = wakes.changed() => changed.is_ok() || tokio::time::Instant::now() < deadline,
            () = tokio::time::sleep_until(wake_at) => tokio::time::Instant::now() < deadline,
        }
    }

    /// The answer when nothing succeeded: the last upstream answer verbatim, else an
    /// Anthropic-format error.
    fn final_failure(
        &self,
        context: &mut RequestContext,
        last_answer: Option<BufferedAnswer>,
        last_error: Option<ProxyError>,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let attempts = context.attempt_count;
        if let Some(answer) = last_answer {
            let status = answer.parts.status;
            warn!(
                status = status.as_u16(),
                attempts, "every attempt failed: relaying the last upstream answer"
            );
            shared.metrics.record_request("", status);
            if let Some(tracker) = context.tracker() {
                // Error answers (429, 5xx) may carry usage: it is billed once, here.
                let extraction = extract_buffered(&answer);
                tracker.observe(
                    extraction.model.as_deref(),
                    extraction.usage,
                    extraction.partial,
                );
                let detail = match &extraction.error {
                    Some(error) => format!(
                        "every attempt failed; last answer HTTP {}: {}: {}",
                        status.as_u16(),
                        error.error_type,
                        error.message
                    ),
                    None => format!("every attempt failed; last answer HTTP {}", status.as_u16()),
                };
                tracker.finish(|lifecycle, now| {
                    lifecycle.fail(
                        FailureReason::EndpointExhausted,
                        &detail,
                        Some(status.as_u16()),
                        now,
                    )
                });
            }
            return Response::from_parts(answer.parts, full_body(answer.body));
        }
        let error = last_error.unwrap_or(ProxyError::NoEndpoint);
        warn!(
            status = error.status().as_u16(),
            attempts, "request failed: {error}"
        );
        shared.metrics.record_request("", error.status());
        if let Some(tracker) = context.tracker() {
            let reason = match &error {
                ProxyError::Connect { .. } => FailureReason::NetworkError,
                ProxyError::HeaderTimeout { .. } => FailureReason::Timeout,
                ProxyError::NoEndpoint => FailureReason::NoHealthy,
                _ => FailureReason::UnknownError,
            };
            let message = error.to_string();
            let status = error.status().as_u16();
            tracker.finish(|lifecycle, now| lifecycle.fail(reason, &message, Some(status), now));
        }
        error.to_response()
    }

    /// Tries every endpoint of the plan, `retry.max_attempts` times each, as the result classes
    /// say.
    async fn try_group(
        &self,
        context: &mut RequestContext,
        plan: &RoutePlan,
        last_answer: &mut Option<BufferedAnswer>,
        last_error: &mut Option<ProxyError>,
    ) -> GroupOutcome {
        let shared = &self.shared;
        let current = shared.current();
        let retry = &current.config.retry;
        let max_attempts = retry.max_attempts.max(1);
        for planned in &plan.endpoints {
            let Some(endpoint) = current.endpoint(&planned.name) else {
                continue;
            };
            if let Some(tracker) = context.tracker() {
                tracker
                    .transition(|lifecycle| lifecycle.forwarding(&endpoint.name, &endpoint.group));
            }
            let mut attempt_number = 0;
            while attempt_number < max_attempts {
                attempt_number += 1;
                let sent_at = SystemTime::now();
                let sent = Instant::now();
                let result = self.attempt(context, &endpoint).await;
                let duration = sent.elapsed();
                let upstream = match result {
                    Ok(response) => response,
                    Err(error) => {
                        let outcome = match &error {
                            ProxyError::HeaderTimeout { .. } => AttemptOutcome::HeaderTimeout,
                            other => AttemptOutcome::ConnectError {
                                message: other.to_string(),
                            },
                        };
                        context.record_attempt(Attempt {
                            endpoint: endpoint.name.clone(),
                            group: endpoint.group.clone(),
                            started_at: sent_at,
                            duration,
                            outcome,
                        });
                        if !error.is_retryable() {
                            // A request that cannot be built for this endpoint: try the next one.
                            warn!(endpoint = %endpoint.name, "attempt impossible: {error}");
                            *last_error = Some(error);
                            break;
                        }
                        shared.health.record_failure(
                            &endpoint.name,
                            if matches!(error, ProxyError::HeaderTimeout { .. }) {
                                PassiveFailure::Timeout
                            } else {
                                PassiveFailure::Connect
                            },
                        );
                        shared.metrics.record_upstream_failure(&endpoint);
                        warn!(endpoint = %endpoint.name, attempt = attempt_number, "attempt failed: {error}");
                        let reason = if matches!(error, ProxyError::HeaderTimeout { .. }) {
                            FailureReason::Timeout
                        } else {
                            FailureReason::NetworkError
                        };
                        context.retrying(reason, &error.to_string());
                        *last_error = Some(error);
                        if attempt_number < max_attempts {
                            self.back_off(attempt_number).await;
                        }
                        continue;
                    }
                };
                let status = upstream.status();
                let quota =
                    crate::session::quota_observation(upstream.headers(), SystemTime::now());
                if !quota.is_empty() {
                    shared
                        .router()
                        .record_quota(&endpoint.name, &quota, Instant::now());
                }
                context.record_attempt(Attempt {
                    endpoint: endpoint.name.clone(),
                    group: endpoint.group.clone(),
                    started_at: sent_at,
                    duration,
                    outcome: AttemptOutcome::Status {
                        status: status.as_u16(),
                    },
                });
                shared.router().record_latency(&endpoint.name, duration);
                let class = classify_status(status, upstream.headers(), SystemTime::now());
                match class {
                    AttemptClass::Success | AttemptClass::Final => {
                        shared.health.record_success(&endpoint.name, duration);
                        if class == AttemptClass::Success && shared.suspension.held() > 0 {
                            // A sibling's success may be what a held request waits for.
                            shared.suspension.wake();
                        }
                        let expectation = if class == AttemptClass::Success {
                            Expectation::Success
                        } else {
                            Expectation::Failure(FailureReason::HttpError)
                        };
                        return GroupOutcome::Answered(self.relay(
                            upstream,
                            &endpoint,
                            context,
                            expectation,
                        ));
                    }
                    AttemptClass::NextEndpoint => {
                        warn!(endpoint = %endpoint.name, status = status.as_u16(), "endpoint refused its credentials: next endpoint");
                        shared.health.mark_auth_failed(&endpoint.name);
                        context.retrying(
                            FailureReason::AuthError,
                            &format!("{} answered HTTP {}", endpoint.name, status.as_u16()),
                        );
                        *last_answer = buffer_answer(upstream, endpoint.timeout).await;
                        break;
                    }
                    AttemptClass::RateLimited { retry_after } => {
                        shared.health.record_success(&endpoint.name, duration);
                        context.retrying(
                            FailureReason::RateLimited,
                            &format!("{} answered HTTP 429", endpoint.name),
                        );
                        *last_answer = buffer_answer(upstream, endpoint.timeout).await;
                        let max_wait = retry.max_delay.get();
                        match retry_after {
                            Some(wait) if wait <= max_wait && attempt_number < max_attempts => {
                                info!(endpoint = %endpoint.name, wait_ms = wait.as_millis(), "rate limited: waiting as asked");
                                tokio::time::sleep(wait).await;
                            }
                            Some(wait) => {
                                info!(endpoint = %endpoint.name, wait_ms = wait.as_millis(), "rate limited: endpoint skipped until its reset");
                                let events = shared
                                    .router()
                                    .block_until(&endpoint.name, Instant::now() + wait);
                                shared.publish_router(events);
                                break;
                            }
                            None if attempt_number < max_attempts => {
                                self.back_off(attempt_number).await
                            }
                            None => {}
                        }
                    }
                    AttemptClass::Retry => {
                        shared.health.record_failure(
                            &endpoint.name,
                            PassiveFailure::ServerError(status.as_u16()),
                        );
                        warn!(endpoint = %endpoint.name, status = status.as_u16(), attempt = attempt_number, "upstream error");
                        context.retrying(
                            FailureReason::ServerError,
                            &format!("{} answered HTTP {}", endpoint.name, status.as_u16()),
                        );
                        *last_answer = buffer_answer(upstream, endpoint.timeout).await;
                        if attempt_number < max_attempts {
                            self.back_off(attempt_number).await;
                        }
                    }
                }
            }
        }
        GroupOutcome::Exhausted
    }

    /// Sleeps the back-off before attempt `attempt + 1`; cancelled with the request.
    async fn back_off(&self, attempt: u32) {
        let current = self.shared.current();
        let retry = &current.config.retry;
        let delay = backoff(
            attempt,
            retry.base_delay.get(),
            retry.multiplier,
            retry.max_delay.get(),
            rand::random::<f64>(),
        );
        debug!(delay_ms = delay.as_millis(), "backing off");
        tokio::time::sleep(delay).await;
    }

    /// One attempt on one endpoint: `Ok` as soon as upstream response headers arrive.
    async fn attempt(
        &self,
        context: &RequestContext,
        endpoint: &Endpoint,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        self.send_upstream(
            &context.parts,
            &context.body,
            context.is_streaming,
            endpoint,
        )
        .await
    }

    /// Sends the request to one endpoint: `Ok` as soon as upstream response headers arrive.
    async fn send_upstream(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        is_streaming: bool,
        endpoint: &Endpoint,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        let shared = &self.shared;
        let current = shared.current();
        let uri = upstream_uri(endpoint, &parts.uri)?;
        let headers = rewrite_request_headers(&parts.headers, endpoint).map_err(|error| {
            ProxyError::BadUpstreamUrl {
                endpoint: endpoint.name.clone(),
                message: error.to_string(),
            }
        })?;
        let mut upstream_request = Request::new(Full::new(body.clone()));
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = headers;
        let header_timeout = if is_streaming {
            current.config.streaming.response_header_timeout.get()
        } else {
            current
                .config
                .streaming
                .response_header_timeout
                .get()
                .min(endpoint.timeout)
        };
        debug!(endpoint = %endpoint.name, group = %endpoint.group, "forwarding");
        let sent = Instant::now();
        match tokio::time::timeout(header_timeout, current.client.request(upstream_request)).await {
            Ok(Ok(response)) => {
                shared.metrics.record_header_latency(sent.elapsed());
                Ok(response)
            }
            Ok(Err(error)) => Err(ProxyError::Connect {
                endpoint: endpoint.name.clone(),
                source: Box::new(error),
            }),
            Err(_elapsed) => Err(ProxyError::HeaderTimeout {
                endpoint: endpoint.name.clone(),
                timeout: header_timeout,
            }),
        }
    }

    /// Hands the upstream answer to the client, frames untouched; the request's lifecycle moves
    /// into the body's observer, which reads usage from the frames and finishes the request when
    /// the body ends.
    fn relay(
        &self,
        upstream: Response<hyper::body::Incoming>,
        endpoint: &Endpoint,
        context: &mut RequestContext,
        expectation: Expectation,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let current = shared.current();
        let (mut parts, body) = upstream.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let status = parts.status;
        info!(endpoint = %endpoint.name, group = %endpoint.group, status = status.as_u16(), attempts = context.attempt_count, "upstream answered");
        shared.metrics.record_request(&endpoint.name, status);
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header_text(header::CONTENT_TYPE);
        let content_encoding = header_text(header::CONTENT_ENCODING);
        let is_event_stream = content_type
            .as_deref()
            .is_some_and(|content_type| content_type.starts_with("text/event-stream"));
        let options = RelayOptions {
            idle_limit: Some(current.config.streaming.max_idle_time.get()).filter(|d| !d.is_zero()),
            total_limit: (!context.is_streaming)
                .then(|| endpoint.timeout.saturating_sub(context.started.elapsed())),
            sse_error_event: status.is_success() && is_event_stream,
        };
        let mut tracker = context.tracker.take();
        if let Some(tracker) = tracker.as_mut() {
            let time_to_first_byte = context.started.elapsed();
            tracker
                .transition(|lifecycle| lifecycle.processing(status.as_u16(), time_to_first_byte));
        }
        let honesty = context
            .honesty
            .take()
            .filter(|_| expectation == Expectation::Success)
            .map(|mut probe| {
                probe.watch_answer(is_event_stream, content_encoding.as_deref());
                (probe, self.clone())
            });
        let turn = (expectation == Expectation::Success)
            .then(|| self.session_turn(endpoint, context, &mut tracker));
        let observer = RequestFinisher {
            tracker,
            turn,
            honesty,
            tap: BodyTap::new(content_type.as_deref(), content_encoding.as_deref()),
            expectation,
            status,
            endpoint: endpoint.name.clone(),
            body_bytes: 0,
            span: tracing::Span::current(),
            _in_flight: context.in_flight.take(),
        };
        let relay = RelayBody::new(body, options, Box::new(observer));
        Response::from_parts(parts, relay.boxed_unsync())
    }
}

/// What a relayed answer means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expectation {
    /// A success: the request completes when the body ends well.
    Success,
    /// A final upstream error relayed verbatim: the request fails with this reason.
    Failure(FailureReason),
}

impl Snapshot {
    fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
            .cloned()
    }
}

impl Shared {
    fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration snapshot in force now.
    fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The router's plan for a new round, with the current health.
    fn plan(&self) -> RoutePlan {
        let health: Arc<HealthSnapshot> = self.health.snapshot();
        let plan = self
            .router()
            .plan(&|name| health.is_healthy(name), Instant::now());
        self.publish_router(plan.events.clone());
        plan
    }

    /// Whether a group other than `group` could take traffic now (not paused, not cooling down).
    fn another_group_available(&self, group: &str) -> bool {
        let health = self.health.snapshot();
        self.router()
            .groups(&|name| health.is_healthy(name), Instant::now())
            .iter()
            .any(|view| {
                view.name != group && !view.paused && !view.in_cooldown && view.total_endpoints > 0
            })
    }

    fn publish_router(&self, events: Vec<RouterEvent>) {
        self.metrics.record_router_events(&events);
        for event in events {
            info!(?event, "routing changed");
            self.events.publish(ForwarderEvent::Router(event));
        }
    }
}

fn held_deadline(permit: &HoldPermit, timeout: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout.saturating_sub(permit.waited())
}

/// Reads an upstream answer whole (bounded), so it can be relayed later; `None` when the body
/// is too large or broken (the connection is dropped with it).
async fn buffer_answer(
    upstream: Response<hyper::body::Incoming>,
    timeout: Duration,
) -> Option<BufferedAnswer> {
    let (mut parts, body) = upstream.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let collected = tokio::time::timeout(
        timeout,
        Limited::new(body, MAX_BUFFERED_ERROR_BODY).collect(),
    )
    .await
    .ok()?
    .ok()?;
    Some(BufferedAnswer {
        parts,
        body: collected.to_bytes(),
    })
}

/// Watches a relayed body: feeds every frame to the usage tap and finishes the request's
/// lifecycle, exactly once, when the body ends, fails or the client leaves.
struct RequestFinisher {
    tracker: Option<Tracker>,
    /// The honesty probe of a successful answer, and the engine to report it to.
    honesty: Option<(HonestyProbe, Forwarder)>,
    /// Records a successful turn's tokens for session affinity.
    turn: Option<crate::session::TurnRecorder>,
    tap: BodyTap,
    expectation: Expectation,
    status: StatusCode,
    endpoint: String,
    body_bytes: u64,
    span: tracing::Span,
    _in_flight: Option<monitoring::InFlightGuard>,
}

impl RelayObserver for RequestFinisher {
    fn on_data(&mut self, data: &Bytes) {
        self.body_bytes += data.len() as u64;
        self.tap.feed(data);
        if let Some((probe, _)) = self.honesty.as_mut() {
            probe.on_data(data);
        }
    }

    fn on_end(self: Box<Self>, end: RelayEnd) {
        let RequestFinisher {
            tracker,
            turn,
            honesty,
            tap,
            expectation,
            status,
            endpoint,
            body_bytes,
            span,
            _in_flight,
        } = *self;
        let _entered = span.enter();
        let extraction = tap.finish();
        for diagnostic in &extraction.diagnostics {
            debug!(endpoint = %endpoint, "usage parsing: {diagnostic}");
        }
        if let (Some(turn), RelayEnd::Complete) = (turn, &end) {
            turn.finish(extraction.model.as_deref(), extraction.usage.as_ref());
        }
        let Some(mut tracker) = tracker else { return };
        tracker.observe(
            extraction.model.as_deref(),
            extraction.usage.clone(),
            extraction.partial,
        );
        let status_code = status.as_u16();
        match (expectation, end) {
            (_, RelayEnd::ClientGone) => {
                info!(endpoint = %endpoint, body_bytes, "client disconnected; upstream request cancelled");
                tracker.finish(|lifecycle, now| lifecycle.cancel("client disconnected", now));
            }
            (Expectation::Failure(reason), _) => {
                let detail = match &extraction.error {
                    Some(error) => format!(
                        "HTTP {status_code}: {}: {}",
                        error.error_type, error.message
                    ),
                    None => format!("HTTP {status_code}"),
                };
                tracker.finish(|lifecycle, now| {
                    lifecycle.fail(reason, &detail, Some(status_code), now)
                });
            }
            (Expectation::Success, RelayEnd::Complete) => match &extraction.error {
                // An SSE `error` event: the stream started well and then failed upstream.
                Some(error) => {
                    let reason = if error.error_type == "rate_limit_error" {
                        FailureReason::RateLimited
                    } else {
                        FailureReason::StreamError
                    };
                    let detail = format!("{}: {}", error.error_type, error.message);
                    warn!(endpoint = %endpoint, "stream ended with an error event: {detail}");
                    tracker.finish(|lifecycle, now| lifecycle.fail(reason, &detail, None, now));
                }
                None => {
                    if let Some((probe, forwarder)) = honesty {
                        forwarder.record_honesty(&endpoint, probe.finish(&extraction));
                    }
                    tracker.finish(|lifecycle, now| lifecycle.complete(now));
                }
            },
            (Expectation::Success, other) => {
                let (reason, detail) = match other {
                    RelayEnd::IdleTimeout(limit) => (
                        FailureReason::Timeout,
                        format!("upstream sent no data for {limit:?}"),
                    ),
                    RelayEnd::DeadlineExceeded(limit) => (
                        FailureReason::Timeout,
                        format!("response exceeded the {limit:?} total timeout"),
                    ),
                    RelayEnd::UpstreamError(error) => (
                        FailureReason::StreamError,
                        format!("upstream connection failed mid-body: {error}"),
                    ),
                    RelayEnd::Complete | RelayEnd::ClientGone => {
                        (FailureReason::UnknownError, String::new())
                    }
                };
                warn!(endpoint = %endpoint, body_bytes, "response cut: {detail}");
                tracker.finish(|lifecycle, now| lifecycle.fail(reason, &detail, None, now));
            }
        }
    }
}

/// Reads usage, model and error out of a buffered upstream answer.
fn extract_buffered(answer: &BufferedAnswer) -> ccf_tokens::Extraction {
    let header_text = |name: header::HeaderName| {
        answer
            .parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let mut tap = BodyTap::new(
        header_text(header::CONTENT_TYPE),
        header_text(header::CONTENT_ENCODING),
    );
    tap.feed(&answer.body);
    tap.finish()
}

/// Claude Code probes `HEAD /api/hello` (older versions `HEAD /`) without credentials before its
/// first request; such body-less reachability checks skip inbound auth.
fn is_reachability_check<B>(request: &Request<B>) -> bool {
    request.method() == http::Method::HEAD && matches!(request.uri().path(), "/" | "/api/hello")
}

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body<B>(
    body: B,
    content_length: Option<&HeaderValue>,
    limit: u64,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = content_length
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(error) => Err(ProxyError::BodyRead { source: error }),
    }
}

/// Reads `model` and `stream` from a JSON body; anything else yields an empty probe.
fn probe_body(headers: &http::HeaderMap, body: &Bytes) -> BodyProbe {
    let looks_like_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|content_type| content_type.contains("json"))
        && body.first().is_some_and(|byte| *byte == b'{');
    if !looks_like_json {
        return BodyProbe::default();
    }
    serde_json::from_slice(body).unwrap_or_default()
}

/// `endpoint.url` + request path + query; the endpoint URL may carry a path prefix.
fn upstream_uri(endpoint: &Endpoint, request_uri: &Uri) -> Result<Uri, ProxyError> {
    if endpoint.url.query().is_some() {
        return Err(ProxyError::BadUpstreamUrl {
            endpoint: endpoint.name.clone(),
            message: "the endpoint url must not carry a query string".into(),
        });
    }
    // Without user info: it must not reach the pool key, which hyper-util logs at TRACE.
    let base = endpoint.request_base();
    let path_and_query = request_uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    format!("{base}{path_and_query}")
        .parse()
        .map_err(|error: http::uri::InvalidUri| ProxyError::BadUpstreamUrl {
            endpoint: endpoint.name.clone(),
            message: error.to_string(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            name: "e".into(),
            url: url::Url::parse(url).unwrap(),
            priority: 0,
            group: "g".into(),
            group_priority: 1,
            token: None,
            api_key: None,
            timeout: Duration::from_secs(1),
            headers: vec![],
            supports_count_tokens: false,
        }
    }

    #[test]
    fn joins_base_path_prefix_request_path_and_query() {
        let check = |base: &str, request: &str, expected: &str| {
            let uri = upstream_uri(&endpoint(base), &request.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), expected, "{base} + {request}");
        };
        check(
            "https://api.anthropic.com",
            "/v1/messages",
            "https://api.anthropic.com/v1/messages",
        );
        check(
            "https://relay.example/api",
            "/v1/messages?beta=true",
            "https://relay.example/api/v1/messages?beta=true",
        );
        check(
            "https://relay.example/api/",
            "/v1/models",
            "https://relay.example/api/v1/models",
        );
        check("http://127.0.0.1:9000", "/", "http://127.0.0.1:9000/");
    }

    #[test]
    fn stream_is_read_from_the_json_body_not_from_substrings() {
        let headers = http::HeaderMap::new();
        let probe = probe_body(
            &headers,
            &Bytes::from_static(br#"{"model":"m","stream":true}"#),
        );
        assert_eq!(probe.stream, Some(true));
        assert_eq!(probe.model.as_deref(), Some("m"));
        let text_mentions_stream = probe_body(
            &headers,
            &Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"\"stream\":true"}]}"#,
            ),
        );
        assert_eq!(text_mentions_stream.stream, None);
        assert_eq!(
            probe_body(&headers, &Bytes::from_static(b"not json")).stream,
            None
        );
    }
}
