//! The monitor: shared health state, its publishers, and the tasks that probe.
//!
//! Task ownership: [`HealthMonitor::spawn`] starts one supervisor task and returns the
//! [`HealthTask`] that owns it. The supervisor owns every other task (one probe task per endpoint
//! per round, at most one recovery loop per endpoint) in `JoinSet`s, so aborting or stopping the
//! supervisor aborts them all. Without a spawned task the monitor still records passive
//! observations, answers `check_now` and runs the fast test; only periodic and recovery probing
//! are missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ccf_config::Endpoint;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, Id, JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::probe::{ProbeOutcome, Prober};
use crate::settings::HealthSettings;
use crate::state::{EndpointHealth, HealthEvent, HealthSnapshot, PassiveFailure, Transition};

/// Capacity of the event channel; a receiver that falls further behind gets `Lagged` and skips.
const EVENT_CAPACITY: usize = 256;

/// Endpoint health: active probes, passive observations, snapshots and events.
///
/// Cheap to clone (an `Arc` inside); every clone sees the same state. See the crate docs for the
/// rules.
#[derive(Clone)]
pub struct HealthMonitor {
    pub(crate) shared: Arc<Shared>,
}

/// What the monitor probes and how: replaced whole by [`HealthMonitor::reconfigure`].
pub(crate) struct Topology {
    /// Endpoints in configuration order, names unique.
    pub(crate) endpoints: Vec<Endpoint>,
    index: HashMap<String, usize>,
    pub(crate) settings: HealthSettings,
    prober: Arc<dyn Prober>,
}

impl Topology {
    fn new(endpoints: &[Endpoint], settings: HealthSettings, prober: Arc<dyn Prober>) -> Self {
        let mut index = HashMap::new();
        let mut unique = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            if !index.contains_key(&endpoint.name) {
                index.insert(endpoint.name.clone(), unique.len());
                unique.push(endpoint.clone());
            }
        }
        Topology {
            endpoints: unique,
            index,
            settings,
            prober,
        }
    }

    /// The endpoint with this name.
    pub(crate) fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.index
            .get(name)
            .and_then(|&index| self.endpoints.get(index))
    }

    /// Runs the injected prober, bounded by `timeout` on this side too.
    pub(crate) async fn run_probe(
        &self,
        endpoint: &Endpoint,
        path: &str,
        timeout: Duration,
    ) -> ProbeOutcome {
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(timeout, self.prober.probe(endpoint, path, timeout)).await {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome::Failed {
                    error: format!("no answer within {} ms", timeout.as_millis()),
                    latency: started.elapsed(),
                },
            };
        tracing::debug!(
            endpoint = %endpoint.name,
            path,
            status = outcome.status(),
            latency_ms = u64::try_from(outcome.latency().as_millis()).unwrap_or(u64::MAX),
            "probe finished"
        );
        outcome
    }
}

/// Whether two configurations of one endpoint are probed the same way (same target, same
/// credentials and headers): then its health carries over a reconfiguration.
fn same_probe_target(old: &Endpoint, new: &Endpoint) -> bool {
    old.url == new.url
        && old.token == new.token
        && old.api_key == new.api_key
        && old.headers == new.headers
}

pub(crate) struct Shared {
    /// Replaced whole by `reconfigure`; readers clone the `Arc` and let go of the lock at once.
    topology: RwLock<Arc<Topology>>,
    state: Mutex<State>,
    snapshot_tx: watch::Sender<Arc<HealthSnapshot>>,
    events_tx: broadcast::Sender<HealthEvent>,
    /// Fast-test results by endpoint name.
    pub(crate) fast_cache: Mutex<HashMap<String, FastEntry>>,
    /// Bumped by every `reconfigure`: a running supervisor restarts its probing on it.
    reconfigured: watch::Sender<u64>,
}

struct State {
    /// One entry per endpoint of the current topology (kept in step by `reconfigure`).
    health: BTreeMap<String, EndpointHealth>,
    /// Where "this endpoint just turned unhealthy" goes, when a task is running.
    recovery_tx: Option<mpsc::UnboundedSender<String>>,
    /// The running supervisor, so that a second `spawn` replaces it instead of doubling probes.
    supervisor: Option<AbortHandle>,
}

/// One cached fast-test result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastEntry {
    pub(crate) tested_at: Instant,
    /// `None`: the probe failed (no answer, or a status other than 2xx/4xx).
    pub(crate) latency: Option<Duration>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every update is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HealthMonitor {
    /// A monitor for these endpoints, all healthy and never checked. Pure: nothing is probed until
    /// [`spawn`](Self::spawn) or [`check_now`](Self::check_now). A repeated name keeps its first
    /// endpoint.
    pub fn new(endpoints: &[Endpoint], settings: HealthSettings, prober: Arc<dyn Prober>) -> Self {
        let topology = Topology::new(endpoints, settings, prober);
        let health: BTreeMap<String, EndpointHealth> = topology
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.name.clone(), EndpointHealth::unchecked()))
            .collect();
        let (snapshot_tx, _) = watch::channel(Arc::new(HealthSnapshot {
            endpoints: health.clone(),
        }));
        let (events_tx, _) = broadcast::channel(EVENT_CAPACITY);
        HealthMonitor {
            shared: Arc::new(Shared {
                topology: RwLock::new(Arc::new(topology)),
                state: Mutex::new(State {
                    health,
                    recovery_tx: None,
                    supervisor: None,
                }),
                snapshot_tx,
                events_tx,
                fast_cache: Mutex::new(HashMap::new()),
                reconfigured: watch::Sender::new(0),
            }),
        }
    }

    /// Starts probing: every endpoint (of every group) at once and then every `check_interval`,
    /// in parallel, plus fast-recovery probes of unhealthy endpoints.
    ///
    /// The returned [`HealthTask`] owns all of it: dropping it aborts the tasks,
    /// [`HealthTask::stop`] stops them and waits. Spawning again replaces (aborts) the previous
    /// task, so one monitor never probes twice per round. Must be called inside a Tokio runtime.
    pub fn spawn(&self) -> HealthTask {
        let (recovery_tx, recovery_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        // Install the channel before the supervisor starts: a transition between the two is then
        // either seen by the supervisor's initial scan or queued in the channel, never lost.
        lock(&self.shared.state).recovery_tx = Some(recovery_tx);
        let reconfigured = self.shared.reconfigured.subscribe();
        let handle = tokio::spawn(supervise(
            self.shared.clone(),
            recovery_rx,
            stop_rx,
            reconfigured,
        ));
        let previous = lock(&self.shared.state)
            .supervisor
            .replace(handle.abort_handle());
        if let Some(previous) = previous {
            previous.abort();
        }
        HealthTask {
            handle: Some(handle),
            stop: Some(stop_tx),
        }
    }

    /// Applies a new configuration (hot reload) without losing what is known.
    ///
    /// An endpoint whose name stays and whose probe target (URL, credentials, headers) is
    /// unchanged keeps its health, failure count and `auth_failed` mark; a changed one starts
    /// over healthy and never checked, like a new one; a removed one is forgotten. The fast-test
    /// cache is cleared. A running supervisor (see [`spawn`](Self::spawn)) restarts its probing
    /// with the new settings: it stops every probe and recovery loop of the old topology, probes
    /// every endpoint at once and resumes recovery of the ones still unhealthy. Probes of the old
    /// topology that finish afterwards are discarded.
    pub fn reconfigure(
        &self,
        endpoints: &[Endpoint],
        settings: HealthSettings,
        prober: Arc<dyn Prober>,
    ) {
        let topology = Arc::new(Topology::new(endpoints, settings, prober));
        {
            let mut state = lock(&self.shared.state);
            let old = self.shared.topology();
            let mut health = BTreeMap::new();
            for endpoint in &topology.endpoints {
                let kept = old
                    .endpoint(&endpoint.name)
                    .filter(|previous| same_probe_target(previous, endpoint))
                    .and_then(|_| state.health.get(&endpoint.name).cloned());
                health.insert(endpoint.name.clone(), kept.unwrap_or_default());
            }
            if health != state.health {
                state.health = health;
                self.shared
                    .snapshot_tx
                    .send_replace(Arc::new(HealthSnapshot {
                        endpoints: state.health.clone(),
                    }));
            }
            // Swapped under the state lock: an observation is applied either before (and kept
            // or dropped above) or after, against the new topology.
            *self
                .shared
                .topology
                .write()
                .unwrap_or_else(PoisonError::into_inner) = topology;
        }
        lock(&self.shared.fast_cache).clear();
        self.shared
            .reconfigured
            .send_modify(|generation| *generation += 1);
    }

    /// Whether the endpoint may be routed to. Never-checked endpoints are healthy (optimistic
    /// start); unknown names are not.
    pub fn is_healthy(&self, endpoint: &str) -> bool {
        self.shared.snapshot_tx.borrow().is_healthy(endpoint)
    }

    /// The current health of every endpoint.
    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.shared.snapshot_tx.borrow().clone()
    }

    /// A receiver of snapshots; it changes on every state change (every probe, and every passive
    /// observation that changed something).
    ///
    /// As with any `watch` channel, do not hold a `borrow()` of it while calling into the monitor
    /// on the same thread: publishing waits for readers to let go.
    pub fn subscribe(&self) -> watch::Receiver<Arc<HealthSnapshot>> {
        self.shared.snapshot_tx.subscribe()
    }

    /// A receiver of events: healthy/unhealthy transitions and the latency of every answered probe.
    pub fn events(&self) -> broadcast::Receiver<HealthEvent> {
        self.shared.events_tx.subscribe()
    }

    /// Passive: a real request on `endpoint` got a non-5xx answer after `latency`. Resets the
    /// failure count and makes the endpoint healthy again unless its credentials were rejected.
    /// `latency` only goes into the `EndpointHealthy` event; it is not a probe latency.
    pub fn record_success(&self, endpoint: &str, latency: Duration) {
        self.shared
            .observe(endpoint, None, Some(latency), |health| {
                health.apply_passive_success()
            });
    }

    /// Passive: a real request on `endpoint` failed. `passive_failure_threshold` consecutive
    /// failures mark it unhealthy (and start its recovery probes).
    pub fn record_failure(&self, endpoint: &str, failure: PassiveFailure) {
        let threshold = self
            .shared
            .topology()
            .settings
            .effective_failure_threshold();
        self.shared.observe(endpoint, None, None, |health| {
            health.apply_passive_failure(failure, threshold)
        });
    }

    /// The upstream answered 401/403: the endpoint is unhealthy at once, and only a passing probe
    /// (not [`record_success`](Self::record_success)) makes it healthy again.
    pub fn mark_auth_failed(&self, endpoint: &str) {
        self.shared
            .observe(endpoint, None, None, EndpointHealth::apply_auth_failure);
    }

    /// Probes one endpoint now (the admin "health-check" button), applies the result like any
    /// probe and returns the endpoint's new health; `None` for an unknown name. Runs in the
    /// caller's future: dropping it before the probe finishes applies nothing.
    pub async fn check_now(&self, endpoint: &str) -> Option<EndpointHealth> {
        let topology = self.shared.topology();
        let endpoint = topology.endpoint(endpoint)?.clone();
        Some(self.shared.probe_and_apply(&topology, &endpoint).await)
    }
}

impl fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topology = self.shared.topology();
        f.debug_struct("HealthMonitor")
            .field("endpoints", &topology.endpoints.len())
            .field("settings", &topology.settings)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The topology in force now.
    pub(crate) fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn is_healthy_named(&self, name: &str) -> bool {
        self.snapshot_tx.borrow().is_healthy(name)
    }

    fn unhealthy_names(&self) -> Vec<String> {
        let topology = self.topology();
        let snapshot = self.snapshot_tx.borrow();
        topology
            .endpoints
            .iter()
            .filter(|endpoint| !snapshot.is_healthy(&endpoint.name))
            .map(|endpoint| endpoint.name.clone())
            .collect()
    }

    /// One health probe on the health path of `topology`, applied to the state unless the
    /// endpoint was reconfigured (or removed) while it ran.
    async fn probe_and_apply(&self, topology: &Topology, endpoint: &Endpoint) -> EndpointHealth {
        let outcome = topology
            .run_probe(
                endpoint,
                &topology.settings.health_path,
                topology.settings.timeout,
            )
            .await;
        let current = self.topology();
        if current
            .endpoint(&endpoint.name)
            .is_none_or(|now| !same_probe_target(now, endpoint))
        {
            tracing::debug!(endpoint = %endpoint.name, "probe of a reconfigured endpoint discarded");
            return self
                .snapshot_tx
                .borrow()
                .get(&endpoint.name)
                .cloned()
                .unwrap_or_default();
        }
        let answered_latency = outcome.status().map(|_| outcome.latency());
        let now = SystemTime::now();
        self.observe(
            &endpoint.name,
            answered_latency,
            Some(outcome.latency()),
            |health| health.apply_probe(&outcome, now),
        )
    }

    /// Applies one observation under the state lock, then publishes: a new snapshot if anything
    /// changed, the probe latency event, the transition event, and a recovery request when the
    /// endpoint just turned unhealthy. Publishing under the lock keeps snapshots and events in the
    /// order the observations were applied. Unknown names are ignored.
    fn observe(
        &self,
        name: &str,
        probe_latency: Option<Duration>,
        event_latency: Option<Duration>,
        apply: impl FnOnce(&mut EndpointHealth) -> Option<Transition>,
    ) -> EndpointHealth {
        let mut state = lock(&self.state);
        let Some(entry) = state.health.get_mut(name) else {
            tracing::debug!(
                endpoint = name,
                "health observation for an unknown endpoint"
            );
            return EndpointHealth::unchecked();
        };
        let name = name.to_string();
        let before = entry.clone();
        let transition = apply(entry);
        let after = entry.clone();
        if after != before {
            self.snapshot_tx.send_replace(Arc::new(HealthSnapshot {
                endpoints: state.health.clone(),
            }));
        }
        // Send errors only mean nobody listens right now.
        if let Some(latency) = probe_latency {
            let _ = self.events_tx.send(HealthEvent::ProbeLatency {
                endpoint: name.clone(),
                latency,
            });
        }
        match transition {
            Some(Transition::BecameHealthy) => {
                tracing::info!(endpoint = %name, "endpoint is healthy again");
                let _ = self.events_tx.send(HealthEvent::EndpointHealthy {
                    endpoint: name.clone(),
                    latency: event_latency,
                });
            }
            Some(Transition::BecameUnhealthy) => {
                let reason = after.last_error.clone().unwrap_or_default();
                tracing::warn!(
                    endpoint = %name,
                    reason = %reason,
                    consecutive_failures = after.consecutive_failures,
                    "endpoint is unhealthy"
                );
                let _ = self.events_tx.send(HealthEvent::EndpointUnhealthy {
                    endpoint: name.clone(),
                    reason,
                    consecutive_failures: after.consecutive_failures,
                });
                if let Some(recovery_tx) = &state.recovery_tx {
                    let _ = recovery_tx.send(name);
                }
            }
            None => {}
        }
        after
    }
}

/// Owns the running health probes (see [`HealthMonitor::spawn`]).
///
/// Dropping it aborts every probe task at once; [`stop`](Self::stop) stops them and waits until
/// none runs any more.
#[must_use = "dropping the HealthTask stops the health probes"]
pub struct HealthTask {
    handle: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl HealthTask {
    /// Stops probing and waits until the supervisor and every probe task have ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            // An error means the task was already aborted (replaced by a newer spawn) or panicked;
            // either way it is not running any more.
            let _ = handle.await;
        }
    }
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

impl fmt::Debug for HealthTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthTask")
            .field(
                "running",
                &self.handle.as_ref().is_some_and(|h| !h.is_finished()),
            )
            .finish()
    }
}

/// Tasks keyed by endpoint name, at most one per endpoint.
#[derive(Default)]
struct PerEndpoint {
    tasks: JoinSet<()>,
    by_id: HashMap<Id, String>,
    running: HashSet<String>,
}

impl PerEndpoint {
    /// Starts `task` for `name` unless one is already running for it.
    fn start_unless_running(
        &mut self,
        name: &str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        if self.running.insert(name.to_string()) {
            let handle = self.tasks.spawn(task);
            self.by_id.insert(handle.id(), name.to_string());
        }
    }

    /// Waits for the next task to end and returns its endpoint; `None` when none runs.
    async fn join_next(&mut self) -> Option<String> {
        let id = match self.tasks.join_next_with_id().await? {
            Ok((id, ())) => id,
            Err(error) => {
                if error.is_panic() {
                    tracing::error!("a health probe task panicked");
                }
                error.id()
            }
        };
        let name = self.by_id.remove(&id)?;
        self.running.remove(&name);
        Some(name)
    }
}

/// How one topology's probing ended.
enum Ended {
    Stopped,
    Reconfigured,
}

/// The supervisor: periodic rounds, recovery loops, and the shutdown that ends them all. A
/// reconfiguration ends every task of the old topology and starts over with the new one.
async fn supervise(
    shared: Arc<Shared>,
    mut recovery_rx: mpsc::UnboundedReceiver<String>,
    mut stop_rx: oneshot::Receiver<()>,
    mut reconfigured: watch::Receiver<u64>,
) {
    loop {
        let topology = shared.topology();
        let mut ticker = tokio::time::interval(topology.settings.effective_check_interval());
        // A round that could not start on time is not made up with a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rounds = PerEndpoint::default();
        let mut recoveries = PerEndpoint::default();

        // Endpoints already unhealthy (passive observations before the spawn, or kept across a
        // reconfiguration) recover like the others.
        for name in shared.unhealthy_names() {
            recoveries.start_unless_running(&name, recover(shared.clone(), name.clone()));
        }

        let ended = loop {
            tokio::select! {
                biased;
                _ = &mut stop_rx => break Ended::Stopped,
                changed = reconfigured.changed() => {
                    // The sender lives in `shared`, which this task holds: it cannot be gone.
                    if changed.is_ok() {
                        break Ended::Reconfigured;
                    }
                }
                _ = ticker.tick() => {
                    // Every endpoint of every group: inactive groups need fresh health too, for
                    // failover and manual activation. An endpoint whose previous probe is still
                    // running is skipped rather than probed twice.
                    for endpoint in &topology.endpoints {
                        let shared = shared.clone();
                        let topology = topology.clone();
                        let probed = endpoint.clone();
                        rounds.start_unless_running(&endpoint.name, async move {
                            shared.probe_and_apply(&topology, &probed).await;
                        });
                    }
                }
                Some(name) = recovery_rx.recv() => {
                    if topology.endpoint(&name).is_some() {
                        recoveries.start_unless_running(&name, recover(shared.clone(), name.clone()));
                    }
                }
                Some(_) = rounds.join_next() => {}
                Some(name) = recoveries.join_next() => {
                    // A loop ends when it saw the endpoint healthy. If it turned unhealthy again
                    // before the loop was reaped, that transition's request was dropped as a
                    // duplicate: start a fresh loop.
                    if topology.endpoint(&name).is_some() && !shared.is_healthy_named(&name) {
                        recoveries.start_unless_running(&name, recover(shared.clone(), name.clone()));
                    }
                }
            }
        };
        rounds.tasks.shutdown().await;
        recoveries.tasks.shutdown().await;
        match ended {
            Ended::Stopped => return,
            Ended::Reconfigured => {
                tracing::debug!("health probing restarts with the new configuration");
            }
        }
    }
}

/// Fast recovery of one unhealthy endpoint: probes after `recovery_initial_backoff`, then after
/// twice that, and so on up to `check_interval`, until the endpoint is healthy (by a passing probe
/// or, unless its credentials were rejected, by a passing real request) or is no longer
/// configured.
async fn recover(shared: Arc<Shared>, name: String) {
    let topology = shared.topology();
    let cap = topology.settings.effective_check_interval();
    let mut delay = topology.settings.effective_initial_backoff();
    loop {
        tokio::time::sleep(delay).await;
        if shared.is_healthy_named(&name) {
            return;
        }
        let topology = shared.topology();
        let Some(endpoint) = topology.endpoint(&name).cloned() else {
            return;
        };
        if shared.probe_and_apply(&topology, &endpoint).await.healthy {
            return;
        }
        delay = delay.saturating_mul(2).min(cap);
    }
}
