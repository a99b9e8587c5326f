//! Live state fed by the forwarder's event bus: counters since start, per-endpoint performance,
//! the requests in flight, recently finished requests, a ring of per-minute samples for the
//! charts, and the per-client queues of the live stream.
//!
//! Ownership: one aggregator task ([`spawn_aggregator`]) is the only bus subscriber of the admin
//! API. It never waits for a client: it updates [`LiveState`] and marks or pushes changes into
//! every client's bounded [`ClientQueue`] (requests through a [`Coalescer`], everything else as
//! "dirty" flags rendered from the current state when the client's writer gets to it). A slow
//! client therefore costs memory bounded by the number of requests with undelivered changes
//! (capped; past the cap its queue is replaced by a resync), never time on the request path.
//! When the aggregator itself lags behind the bus, every client is told to resync (it receives
//! fresh snapshots), so nothing is lost silently.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use ccf_health::HealthEvent;
use ccf_lifecycle::{ChangeType, Coalescer, LifecycleEvent, RequestId, Status};
use ccf_proxy::ForwarderEvent;
use ccf_router::RouterEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::dto::events::LogLine;
use crate::http_util::{unix_now, unix_secs};
use crate::Shared;

/// Per-minute samples kept (24 hours).
pub(crate) const MAX_MINUTES: usize = 24 * 60;
/// Finished requests kept in memory for `/api/v1/requests/{id}` (when the store is off or behind).
const RECENT_FINISHED: usize = 1000;
/// Requests with undelivered changes one stream client may have before it is resynced instead.
pub(crate) const MAX_CLIENT_REQUESTS: usize = 10_000;
/// Log lines one stream client may have waiting; older ones are dropped and counted.
const MAX_CLIENT_LOGS: usize = 200;
/// Router events kept for one client's next `group` event.
const MAX_CLIENT_ROUTER_EVENTS: usize = 64;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kinds of live stream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum EventKind {
    Status,
    Endpoint,
    Group,
    Connection,
    Log,
    Chart,
    Suspended,
    Config,
}

impl EventKind {
    pub(crate) const ALL: [EventKind; 8] = [
        EventKind::Status,
        EventKind::Endpoint,
        EventKind::Group,
        EventKind::Connection,
        EventKind::Log,
        EventKind::Chart,
        EventKind::Suspended,
        EventKind::Config,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Endpoint => "endpoint",
            EventKind::Group => "group",
            EventKind::Connection => "connection",
            EventKind::Log => "log",
            EventKind::Chart => "chart",
            EventKind::Suspended => "suspended",
            EventKind::Config => "config",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Which event kinds a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventMask(u16);

impl EventMask {
    /// Everything except `config` (the original's default).
    pub(crate) fn default_kinds() -> Self {
        let mut mask = EventMask(0);
        for kind in EventKind::ALL {
            if kind != EventKind::Config {
                mask.insert(kind);
            }
        }
        mask
    }

    pub(crate) fn empty() -> Self {
        EventMask(0)
    }

    pub(crate) fn insert(&mut self, kind: EventKind) {
        self.0 |= kind.bit();
    }

    pub(crate) fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// One minute of traffic (sent as [`crate::dto::events::MinuteDto`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct MinuteSample {
    /// Unix time of the minute's start, in seconds.
    pub(crate) timestamp: u64,
    pub(crate) started: u64,
    pub(crate) finished: u64,
    pub(crate) success: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) duration_sum_ms: u64,
    pub(crate) duration_count: u64,
    pub(crate) min_ms: Option<u64>,
    pub(crate) max_ms: Option<u64>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_creation_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) suspended: u64,
    pub(crate) peak_in_flight: u64,
}

impl MinuteSample {
    pub(crate) fn avg_ms(&self) -> f64 {
        if self.duration_count == 0 {
            0.0
        } else {
            self.duration_sum_ms as f64 / self.duration_count as f64
        }
    }
}

/// Numbers about one endpoint since start.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointPerf {
    pub(crate) total: u64,
    pub(crate) success: u64,
    pub(crate) failed: u64,
    pub(crate) duration_sum_ms: u64,
    pub(crate) duration_count: u64,
    pub(crate) min_ms: Option<u64>,
    pub(crate) max_ms: Option<u64>,
    pub(crate) retries: u64,
    pub(crate) last_used: Option<SystemTime>,
    pub(crate) tokens: u64,
}

/// Suspension numbers since start.
#[derive(Debug, Clone, Default)]
pub(crate) struct SuspendStats {
    pub(crate) total: u64,
    pub(crate) resumed: u64,
    pub(crate) timed_out: u64,
    pub(crate) wait_sum_ms: u64,
    pub(crate) wait_count: u64,
    pub(crate) wait_min_ms: Option<u64>,
    pub(crate) wait_max_ms: Option<u64>,
}

/// Request counters since start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    pub(crate) started: u64,
    pub(crate) success: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) duration_sum_ms: u64,
    pub(crate) duration_count: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_creation_tokens: u64,
    pub(crate) cache_read_tokens: u64,
}

impl Totals {
    pub(crate) fn avg_ms(&self) -> f64 {
        if self.duration_count == 0 {
            0.0
        } else {
            self.duration_sum_ms as f64 / self.duration_count as f64
        }
    }

    pub(crate) fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens
    }
}

/// Everything the admin API knows from the event bus.
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    pub(crate) in_flight: HashMap<RequestId, LifecycleEvent>,
    pub(crate) recent: VecDeque<LifecycleEvent>,
    pub(crate) totals: Totals,
    pub(crate) endpoints: BTreeMap<String, EndpointPerf>,
    pub(crate) suspended: SuspendStats,
    pub(crate) minutes: VecDeque<MinuteSample>,
    /// Events the aggregator missed because it lagged behind the bus.
    pub(crate) lagged_events: u64,
    /// Bumped on every change, so the 1 s tick knows whether to send stats.
    generation: u64,
}

fn min_opt(current: Option<u64>, value: u64) -> Option<u64> {
    Some(current.map_or(value, |current| current.min(value)))
}

fn max_opt(current: Option<u64>, value: u64) -> Option<u64> {
    Some(current.map_or(value, |current| current.max(value)))
}

impl LiveState {
    /// The sample of the minute containing `now` (creating it, and dropping the oldest).
    fn minute(&mut self, now: SystemTime) -> &mut MinuteSample {
        let minute = unix_secs(now) / 60 * 60;
        let behind = self
            .minutes
            .back()
            .is_none_or(|last| last.timestamp < minute);
        if behind {
            self.minutes.push_back(MinuteSample {
                timestamp: minute,
                ..MinuteSample::default()
            });
            while self.minutes.len() > MAX_MINUTES {
                self.minutes.pop_front();
            }
        }
        // Invariant: not empty after the push above; a clock that went backwards lands in the
        // latest sample.
        if self.minutes.is_empty() {
            self.minutes.push_back(MinuteSample::default());
        }
        let last = self.minutes.len() - 1;
        &mut self.minutes[last]
    }

    fn apply_request(&mut self, event: &LifecycleEvent) {
        let now = SystemTime::now();
        let record = event.record();
        if event.change_type() == ChangeType::Started {
            self.totals.started += 1;
            self.minute(now).started += 1;
        }
        if !event.is_final() {
            self.in_flight.insert(event.request_id(), event.clone());
            let in_flight = self.in_flight.len() as u64;
            let sample = self.minute(now);
            sample.peak_in_flight = sample.peak_in_flight.max(in_flight);
            return;
        }
        self.in_flight.remove(&event.request_id());
        self.recent.push_back(event.clone());
        while self.recent.len() > RECENT_FINISHED {
            self.recent.pop_front();
        }
        let duration_ms = record
            .duration
            .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        let usage = record.usage.clone().unwrap_or_default();
        let totals = &mut self.totals;
        match record.status {
            Status::Completed => totals.success += 1,
            Status::Cancelled => totals.cancelled += 1,
            _ => totals.failed += 1,
        }
        if let Some(ms) = duration_ms {
            totals.duration_sum_ms += ms;
            totals.duration_count += 1;
        }
        totals.input_tokens += usage.input_tokens;
        totals.output_tokens += usage.output_tokens;
        totals.cache_creation_tokens += usage.cache_creation_input_tokens;
        totals.cache_read_tokens += usage.cache_read_input_tokens;
        let sample = self.minute(now);
        sample.finished += 1;
        match record.status {
            Status::Completed => sample.success += 1,
            Status::Cancelled => sample.cancelled += 1,
            _ => sample.failed += 1,
        }
        if let Some(ms) = duration_ms {
            sample.duration_sum_ms += ms;
            sample.duration_count += 1;
            sample.min_ms = min_opt(sample.min_ms, ms);
            sample.max_ms = max_opt(sample.max_ms, ms);
        }
        sample.input_tokens += usage.input_tokens;
        sample.output_tokens += usage.output_tokens;
        sample.cache_creation_tokens += usage.cache_creation_input_tokens;
        sample.cache_read_tokens += usage.cache_read_input_tokens;
        if let Some(endpoint) = &record.endpoint {
            let perf = self.endpoints.entry(endpoint.clone()).or_default();
            perf.total += 1;
            if record.status == Status::Completed {
                perf.success += 1;
            } else if record.status != Status::Cancelled {
                perf.failed += 1;
            }
            if let Some(ms) = duration_ms {
                perf.duration_sum_ms += ms;
                perf.duration_count += 1;
                perf.min_ms = min_opt(perf.min_ms, ms);
                perf.max_ms = max_opt(perf.max_ms, ms);
            }
            perf.retries += u64::from(record.retry_count);
            perf.last_used = Some(record.ended_at.unwrap_or(now));
            perf.tokens += usage.total_tokens();
        }
    }

    fn waited(&mut self, waited: Duration) {
        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        let stats = &mut self.suspended;
        stats.wait_sum_ms += ms;
        stats.wait_count += 1;
        stats.wait_min_ms = min_opt(stats.wait_min_ms, ms);
        stats.wait_max_ms = max_opt(stats.wait_max_ms, ms);
    }

    fn apply(&mut self, event: &ForwarderEvent) {
        self.generation += 1;
        match event {
            ForwarderEvent::Request(event) => self.apply_request(event),
            ForwarderEvent::RequestSuspended { .. } => {
                self.suspended.total += 1;
                self.minute(SystemTime::now()).suspended += 1;
            }
            ForwarderEvent::RequestResumed { waited, .. } => {
                self.suspended.resumed += 1;
                self.waited(*waited);
            }
            ForwarderEvent::RequestSuspensionTimedOut { waited, .. } => {
                self.suspended.timed_out += 1;
                self.waited(*waited);
            }
            ForwarderEvent::Router(_)
            | ForwarderEvent::Health(_)
            | ForwarderEvent::ConfigReloaded(_)
            | ForwarderEvent::KeyBudgetExceeded { .. }
            | ForwarderEvent::QuotaLow { .. } => {}
        }
    }

    /// The last `minutes` per-minute samples ending now, one per minute, zero-filled.
    pub(crate) fn samples(&self, minutes: usize) -> Vec<MinuteSample> {
        let now_minute = unix_now() / 60 * 60;
        let by_minute: HashMap<u64, &MinuteSample> =
            self.minutes.iter().map(|s| (s.timestamp, s)).collect();
        (0..minutes as u64)
            .rev()
            .map(|back| {
                let timestamp = now_minute.saturating_sub(back * 60);
                by_minute
                    .get(&timestamp)
                    .map(|sample| (*sample).clone())
                    .unwrap_or(MinuteSample {
                        timestamp,
                        ..MinuteSample::default()
                    })
            })
            .collect()
    }

    /// A request by id: in flight, or recently finished.
    pub(crate) fn find(&self, id: &str) -> Option<LifecycleEvent> {
        let parsed: Option<RequestId> = id.parse().ok();
        if let Some(parsed) = parsed {
            if let Some(event) = self.in_flight.get(&parsed) {
                return Some(event.clone());
            }
        }
        self.recent
            .iter()
            .rev()
            .find(|event| event.request_id().to_string() == id)
            .cloned()
    }
}

/// What one stream client has not received yet.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) requests: Coalescer,
    pub(crate) endpoints: BTreeSet<String>,
    pub(crate) group: bool,
    pub(crate) router_events: Vec<RouterEvent>,
    pub(crate) stats: bool,
    pub(crate) status: bool,
    pub(crate) chart: bool,
    pub(crate) suspended: bool,
    pub(crate) logs: VecDeque<LogLine>,
    pub(crate) logs_dropped: u64,
    /// Send fresh snapshots (why: `lagged` or `overflow`).
    pub(crate) resync: Option<&'static str>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.endpoints.is_empty()
            && !self.group
            && !self.stats
            && !self.status
            && !self.chart
            && !self.suspended
            && self.logs.is_empty()
            && self.logs_dropped == 0
            && self.resync.is_none()
    }
}

/// One live stream client's queue; the aggregator fills it, the client's writer drains it.
#[derive(Debug)]
pub(crate) struct ClientQueue {
    pub(crate) mask: EventMask,
    pending: Mutex<Pending>,
    pub(crate) notify: Notify,
}

impl ClientQueue {
    pub(crate) fn new(mask: EventMask) -> Self {
        ClientQueue {
            mask,
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
        }
    }

    /// Takes everything waiting.
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *lock(&self.pending))
    }

    fn update(&self, change: impl FnOnce(&mut Pending, EventMask)) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.is_empty();
        change(&mut pending, self.mask);
        if pending.requests.len() > MAX_CLIENT_REQUESTS {
            pending.requests = Coalescer::new();
            pending.resync = Some("overflow");
        }
        while pending.logs.len() > MAX_CLIENT_LOGS {
            pending.logs.pop_front();
            pending.logs_dropped += 1;
        }
        let notify = was_empty && !pending.is_empty();
        drop(pending);
        if notify {
            self.notify.notify_one();
        }
    }
}

/// The live state and the stream clients.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) started: SystemTime,
    state: Mutex<LiveState>,
    clients: Mutex<Vec<Weak<ClientQueue>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            started: SystemTime::now(),
            state: Mutex::new(LiveState::default()),
            clients: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LiveState> {
        lock(&self.state)
    }

    /// Registers a stream client; it is forgotten when the returned `Arc` is dropped.
    pub(crate) fn register(&self, mask: EventMask) -> Arc<ClientQueue> {
        let client = Arc::new(ClientQueue::new(mask));
        let mut clients = lock(&self.clients);
        clients.retain(|client| client.strong_count() > 0);
        clients.push(Arc::downgrade(&client));
        client
    }

    pub(crate) fn client_count(&self) -> usize {
        lock(&self.clients)
            .iter()
            .filter(|client| client.strong_count() > 0)
            .count()
    }

    fn each_client(&self, change: impl Fn(&mut Pending, EventMask)) {
        let clients: Vec<Arc<ClientQueue>> = lock(&self.clients)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for client in clients {
            client.update(&change);
        }
    }

    /// Applies one bus event to the live state and every client's queue.
    pub(crate) fn apply(&self, event: &ForwarderEvent) {
        self.state().apply(event);
        let log = log_line(event);
        self.each_client(|pending, mask| {
            if let Some(line) = &log {
                if mask.contains(EventKind::Log) {
                    pending.logs.push_back(line.clone());
                }
            }
            match event {
                ForwarderEvent::Request(request) => {
                    if mask.contains(EventKind::Connection) {
                        pending.requests.push(request.clone());
                    }
                }
                ForwarderEvent::Router(router) => {
                    if mask.contains(EventKind::Group) {
                        pending.group = true;
                        if pending.router_events.len() < MAX_CLIENT_ROUTER_EVENTS {
                            pending.router_events.push(router.clone());
                        }
                    }
                    if mask.contains(EventKind::Endpoint) {
                        if let RouterEvent::PriorityChanged { endpoint, .. }
                        | RouterEvent::EndpointBlocked { endpoint, .. }
                        | RouterEvent::EndpointDemoted { endpoint, .. } = router
                        {
                            pending.endpoints.insert(endpoint.clone());
                        }
                    }
                    if mask.contains(EventKind::Status) {
                        pending.status = true;
                    }
                }
                ForwarderEvent::Health(health) => {
                    if mask.contains(EventKind::Endpoint) {
                        pending.endpoints.insert(health.endpoint().to_string());
                    }
                    if mask.contains(EventKind::Group) {
                        pending.group = true;
                    }
                }
                ForwarderEvent::RequestSuspended { .. }
                | ForwarderEvent::RequestResumed { .. }
                | ForwarderEvent::RequestSuspensionTimedOut { .. } => {
                    if mask.contains(EventKind::Suspended) {
                        pending.suspended = true;
                    }
                }
                ForwarderEvent::KeyBudgetExceeded { .. } | ForwarderEvent::QuotaLow { .. } => {
                    if mask.contains(EventKind::Status) {
                        pending.status = true;
                    }
                }
                ForwarderEvent::ConfigReloaded(_) => {
                    // The status message carries `config_reload`; groups and endpoints may
                    // have changed too.
                    if mask.contains(EventKind::Status) {
                        pending.status = true;
                    }
                    if mask.contains(EventKind::Group) {
                        pending.group = true;
                    }
                }
            }
        });
    }

    /// The aggregator missed events: every client gets fresh snapshots.
    pub(crate) fn lagged(&self, missed: u64) {
        self.state().lagged_events += missed;
        self.each_client(|pending, _| pending.resync = Some("lagged"));
    }

    /// Once a second: stats (when anything changed), status every 10 s, charts every minute.
    fn tick(&self, count: u64, last_generation: &mut u64) {
        let generation = self.state().generation;
        let changed = generation != *last_generation;
        *last_generation = generation;
        let minute_boundary = unix_now() % 60 == 0;
        self.each_client(|pending, mask| {
            if changed && mask.contains(EventKind::Connection) {
                pending.stats = true;
            }
            if count % 10 == 0 && mask.contains(EventKind::Status) {
                pending.status = true;
            }
            if (minute_boundary || (changed && count % 20 == 0)) && mask.contains(EventKind::Chart)
            {
                pending.chart = true;
            }
        });
    }
}

fn log_line(event: &ForwarderEvent) -> Option<LogLine> {
    let timestamp = unix_now();
    let (level, message, request_id) = match event {
        ForwarderEvent::Request(request) => {
            let record = request.record();
            match record.status {
                Status::Failed => (
                    "warn",
                    format!(
                        "request failed: {}",
                        record
                            .last_failure_reason
                            .as_deref()
                            .or(record.failure_reason.map(|reason| reason.as_str()))
                            .unwrap_or("unknown reason")
                    ),
                    Some(request.request_id().to_string()),
                ),
                _ => return None,
            }
        }
        ForwarderEvent::Router(router) => {
            let message = match router {
                RouterEvent::ActiveGroupChanged { from, to } => format!(
                    "active group changed: {} -> {}",
                    from.as_deref().unwrap_or("none"),
                    to.as_deref().unwrap_or("none")
                ),
                RouterEvent::GroupActivated { group, forced } => {
                    format!(
                        "group {group} activated{}",
                        if *forced { " (forced)" } else { "" }
                    )
                }
                RouterEvent::GroupPaused { group, .. } => format!("group {group} paused"),
                RouterEvent::GroupResumed { group } => format!("group {group} resumed"),
                RouterEvent::GroupCooldown { group, .. } => {
                    format!("group {group} failed: in cooldown")
                }
                RouterEvent::GroupCooldownEnded { group } => {
                    format!("group {group} cooldown ended")
                }
                RouterEvent::GroupNeedsAttention { group } => {
                    format!("every endpoint of group {group} failed: needs attention")
                }
                RouterEvent::PriorityChanged { endpoint, priority } => {
                    format!("endpoint {endpoint} priority set to {priority}")
                }
                RouterEvent::EndpointBlocked { endpoint, .. } => {
                    format!("endpoint {endpoint} rate limited")
                }
                RouterEvent::EndpointDemoted { endpoint, demoted } => {
                    if *demoted {
                        format!("endpoint {endpoint} demoted: low relay honesty score")
                    } else {
                        format!("endpoint {endpoint} restored: relay honesty score recovered")
                    }
                }
            };
            ("info", message, None)
        }
        ForwarderEvent::Health(HealthEvent::EndpointHealthy { endpoint, .. }) => {
            ("info", format!("endpoint {endpoint} is healthy"), None)
        }
        ForwarderEvent::Health(HealthEvent::EndpointUnhealthy {
            endpoint, reason, ..
        }) => (
            "warn",
            format!("endpoint {endpoint} is unhealthy: {reason}"),
            None,
        ),
        ForwarderEvent::Health(HealthEvent::ProbeLatency { .. }) => return None,
        ForwarderEvent::RequestSuspended { request_id, held } => (
            "warn",
            format!("no upstream available: request held ({held} held)"),
            Some(request_id.to_string()),
        ),
        ForwarderEvent::RequestResumed { request_id, waited } => (
            "info",
            format!("held request resumed after {} ms", waited.as_millis()),
            Some(request_id.to_string()),
        ),
        ForwarderEvent::RequestSuspensionTimedOut { request_id, waited } => (
            "warn",
            format!("held request timed out after {} ms", waited.as_millis()),
            Some(request_id.to_string()),
        ),
        ForwarderEvent::ConfigReloaded(status) => match &status.error {
            None => (
                "info",
                format!(
                    "configuration reloaded ({}): {} change(s) applied{}",
                    status.trigger,
                    status.applied.len(),
                    if status.restart_required.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; restart needed for: {}",
                            status.restart_required.join(", ")
                        )
                    }
                ),
                None,
            ),
            Some(error) => (
                "error",
                format!(
                    "configuration reload rejected ({}), old configuration kept: {error}",
                    status.trigger
                ),
                None,
            ),
        },
        ForwarderEvent::KeyBudgetExceeded {
            key_name,
            period,
            budget_usd,
            spent_usd,
            ..
        } => (
            "warn",
            format!(
                "API key {key_name}: {} budget of ${budget_usd:.2} reached (${spent_usd:.2} spent)",
                period.as_str()
            ),
            None,
        ),
        ForwarderEvent::QuotaLow {
            endpoint,
            window,
            utilization,
            rejected,
            ..
        } => {
            (
                "warn",
                if *rejected {
                    format!("endpoint {endpoint}: subscription quota ({window}) rejected until its reset")
                } else {
                    format!(
                        "endpoint {endpoint}: subscription quota ({window}) at {:.0}%",
                        utilization * 100.0
                    )
                },
                None,
            )
        }
    };
    Some(LogLine {
        level,
        message,
        timestamp,
        request_id,
    })
}

/// Starts the aggregator: the admin API's one subscriber of the forwarder's bus. The returned
/// task runs until the bus closes or it is aborted (the owner aborts it on shutdown).
pub(crate) fn spawn_aggregator(shared: &Arc<Shared>) -> JoinHandle<()> {
    let mut receiver = shared.forwarder.events().subscribe();
    // Requests come through the lossless path: a final outcome is never missed, even when this
    // task falls behind; their copies on the broadcast bus are skipped below.
    let mut requests = shared.forwarder.events().subscribe_requests();
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut count: u64 = 0;
        let mut last_generation = 0;
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(shared) = weak.upgrade() else { break };
                    shared.hub.apply(&ForwarderEvent::Request(request));
                }
                event = receiver.recv() => {
                    let Some(shared) = weak.upgrade() else { break };
                    match event {
                        Ok(ForwarderEvent::Request(_)) => {}
                        Ok(event) => shared.hub.apply(&event),
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "admin live state lagged behind the event bus: clients resync");
                            shared.hub.lagged(missed);
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
                _ = ticker.tick() => {
                    let Some(shared) = weak.upgrade() else { break };
                    count += 1;
                    shared.hub.tick(count, &mut last_generation);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_lifecycle::{Lifecycle, RequestStart};

    fn start(n: u64) -> (Lifecycle, LifecycleEvent) {
        let id: RequestId = format!("req-{n:016x}").parse().expect("id");
        Lifecycle::start(
            RequestStart {
                id,
                client_ip: None,
                user_agent: None,
                method: "POST".into(),
                path: "/v1/messages".into(),
                is_streaming: false,
                request_model: Some("claude-sonnet-4-5".into()),
                api_key_name: None,
            },
            SystemTime::now(),
        )
    }

    #[test]
    fn a_slow_client_gets_one_event_per_request_and_every_final() {
        let hub = Hub::new();
        let client = hub.register(EventMask::default_kinds());
        for n in 1..=50 {
            let (lifecycle, started) = start(n);
            hub.apply(&ForwarderEvent::Request(started));
            hub.apply(&ForwarderEvent::Request(lifecycle.snapshot()));
            let outcome = lifecycle.complete(SystemTime::now());
            hub.apply(&ForwarderEvent::Request(outcome.event()));
        }
        let mut pending = client.take();
        let events = pending.requests.drain();
        assert_eq!(events.len(), 50);
        assert!(events.iter().all(LifecycleEvent::is_final));
        let state = hub.state();
        assert_eq!(state.totals.started, 50);
        assert!(state.in_flight.is_empty());
        assert_eq!(state.recent.len(), 50);
    }

    #[test]
    fn an_overflowing_client_is_resynced_instead_of_growing() {
        let hub = Hub::new();
        let client = hub.register(EventMask::default_kinds());
        for n in 1..=(MAX_CLIENT_REQUESTS as u64 + 1) {
            let (_lifecycle, started) = start(n);
            hub.apply(&ForwarderEvent::Request(started));
        }
        let pending = client.take();
        assert_eq!(pending.resync, Some("overflow"));
        assert!(pending.requests.len() <= MAX_CLIENT_REQUESTS);
    }

    #[test]
    fn lagging_resyncs_every_client() {
        let hub = Hub::new();
        let client = hub.register(EventMask::default_kinds());
        hub.lagged(7);
        assert_eq!(client.take().resync, Some("lagged"));
        assert_eq!(hub.state().lagged_events, 7);
    }

    #[test]
    fn samples_cover_the_window_with_zero_filled_minutes() {
        let hub = Hub::new();
        let (lifecycle, started) = start(1);
        hub.apply(&ForwarderEvent::Request(started));
        hub.apply(&ForwarderEvent::Request(
            lifecycle.complete(SystemTime::now()).event(),
        ));
        let samples = hub.state().samples(3);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples.iter().map(|s| s.finished).sum::<u64>(), 1);
        assert!(samples
            .windows(2)
            .all(|w| w[1].timestamp == w[0].timestamp + 60));
    }
}
