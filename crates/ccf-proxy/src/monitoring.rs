//! Monitoring on the proxy port: `/health`, `/health/detailed` and `/metrics`.
//!
//! Endpoint health comes from the health monitor (active probes plus what real requests
//! observed); the JSON shapes follow the Go original (reference section 9.6) so existing monitors
//! keep working, with correct UTC timestamps.
//!
//! With a link to the other instances installed (`cluster.redis_url`, [`crate::cluster`]),
//! `/health/detailed` adds a `cluster` object and `/metrics` the `ccf_cluster_*` series, both read
//! from [`ClusterLink::status`] when asked for; a lost link makes the status `degraded` (routing
//! decides from this instance's state meanwhile), never `unhealthy` (the instance still serves).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ccf_config::Endpoint;
use ccf_health::{EndpointHealth, HealthSnapshot};
use ccf_lifecycle::RequestRecord;
use ccf_router::RouterEvent;
use http::{header, HeaderValue, Method, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::body::{empty_body, full_body, ProxyBody};
use crate::cluster::{ClusterLink, ClusterStatus};
use crate::error::anthropic_error_response;
use crate::honesty::Honesty;
use crate::key_limits::KeyLimits;
use crate::suspend::Suspension;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    name: String,
    url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    endpoint: String,
    group: String,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    endpoint: String,
    group: String,
    model: String,
    status: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    endpoint: String,
    group: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    endpoint: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    endpoint: String,
    group: String,
    model: String,
}

/// `ccf_failover_triggered_total` and `ccf_thinking_signature_repairs_total`.
#[derive(Default)]
struct FailoverTriggerMetrics {
    triggered: Family<FailoverTriggerLabels, Counter>,
    repairs: Family<RepairLabels, Counter>,
}

impl FailoverTriggerMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ccf_failover_triggered",
            "Answers that moved a request to the next endpoint by a configured failover trigger, by endpoint and reason (status, empty_answer)",
            self.triggered.clone(),
        );
        registry.register(
            "ccf_thinking_signature_repairs",
            "Requests retried without earlier thinking blocks after the endpoint refused a thinking signature",
            self.repairs.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverTriggerLabels {
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeKindLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HonestyLabels {
    endpoint: String,
    signal: &'static str,
}

/// `ccf_quota_utilization`'s labels: a subscription account's usage window.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaWindowLabels {
    endpoint: String,
    window: String,
}

/// `ccf_quota_rejected_total`'s label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaEndpointLabels {
    endpoint: String,
}

/// What `/health/usage-tracker` reports about the usage recorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageHealth {
    /// The last write succeeded (or nothing has failed since the last success).
    pub healthy: bool,
    /// Records waiting to be written, in memory.
    pub backlog: usize,
    /// Records waiting in the recorder's journal file (the backlog past `buffer_size`).
    pub journal_records: u64,
    /// Size of the journal file in bytes.
    pub journal_bytes: u64,
    /// Why the last write failed, while the database is unavailable.
    pub last_error: Option<String>,
}

/// Reads the usage recorder's health; set by the application when usage tracking is on.
pub type UsageHealthReader = Arc<dyn Fn() -> UsageHealth + Send + Sync>;

/// Prices a request's usage in USD: `(model, usage) -> cost`. Installed by whoever knows the
/// pricing table (the application), so this crate needs no store. Not used for an outcome an
/// observer priced itself ([`RequestObserver::on_outcome`](crate::tracking::RequestObserver::on_outcome)).
pub type CostModel = Arc<dyn Fn(Option<&str>, &ccf_types::Usage) -> f64 + Send + Sync>;

/// Whether the pricing table prices a model by its own name or family (not by the default
/// price). Installed with the [`CostModel`]; its names are bounded by the configuration.
pub type ModelCatalog = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Distinct model names from upstream answers kept as `model` label values; a new one beyond
/// this is labelled `other` (a relay that echoes the request's model would otherwise let
/// clients mint series).
const MAX_ANSWERED_MODELS: usize = 64;

/// The `model` label's values. The request's `model` comes from the client: any string, so
/// using it as is lets a client create one series per request. A name is used when an upstream
/// answered with it (bounded by [`MAX_ANSWERED_MODELS`]) or the pricing table knows it;
/// anything else is `other`, and a request with no model is `unknown`.
#[derive(Default)]
struct ModelLabels {
    answered: Mutex<HashSet<String>>,
    catalog: RwLock<Option<ModelCatalog>>,
}

impl ModelLabels {
    /// The model label of a request that asked for `requested` and was answered by `answered`:
    /// borrowed from them (every finished request is labelled; only a new series' labels are
    /// copied, by the caller).
    fn label<'a>(&self, requested: Option<&'a str>, answered: Option<&'a str>) -> Cow<'a, str> {
        let mut seen = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(answered) = answered.filter(|model| !model.is_empty()) {
            if seen.contains(answered) {
                return Cow::Borrowed(answered);
            }
            if seen.len() < MAX_ANSWERED_MODELS {
                seen.insert(answered.to_string());
                return Cow::Borrowed(answered);
            }
        }
        let Some(model) = answered.or(requested).filter(|model| !model.is_empty()) else {
            return Cow::Borrowed("unknown");
        };
        let priced = || {
            self.catalog
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|knows| knows(model))
        };
        if seen.contains(model) || priced() {
            Cow::Borrowed(model)
        } else {
            Cow::Borrowed("other")
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_buckets() -> Histogram {
    // 5 ms .. ~10 min.
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// `2xx`, `4xx`, `5xx`, ... for an HTTP status; `none` when no status was sent.
fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

/// The Prometheus registry of the engine.
pub struct Metrics {
    registry: Registry,
    endpoints_total: Gauge,
    endpoints_healthy: Gauge,
    endpoint_healthy: Family<EndpointLabels, Gauge>,
    endpoint_response_time_ms: Family<EndpointLabels, Gauge>,
    endpoint_consecutive_fails: Family<EndpointLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    cancelled: Counter,
    outcomes: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    upstream_failures: Family<EndpointLabels, Counter>,
    in_flight: Gauge,
    header_latency: Histogram,
    finished: Family<FinishedLabels, Counter>,
    request_duration: HistogramFamily<DurationLabels>,
    time_to_first_byte: HistogramFamily<RouteLabels>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    retries: Family<RouteLabels, Counter>,
    failovers: Family<KindLabels, Counter>,
    group_switches: Family<SwitchLabels, Counter>,
    group_cooldowns: Family<GroupLabels, Counter>,
    group_active: Family<GroupLabels, Gauge>,
    suspensions: Family<OutcomeKindLabels, Counter>,
    suspended_now: Gauge,
    recorder_backlog: Gauge,
    recorder_journal_records: Gauge,
    recorder_journal_bytes: Gauge,
    endpoint_up: Family<RouteLabels, Gauge>,
    honesty_score: Family<HonestyLabels, Gauge<f64, AtomicU64>>,
    quota_utilization: Family<QuotaWindowLabels, Gauge<f64, AtomicU64>>,
    quota_rejected: Family<QuotaEndpointLabels, Counter>,
    /// The `(endpoint, window)` series of `ccf_quota_utilization` (window names come from
    /// upstream headers: at most [`ccf_router::subscription::MAX_WINDOWS`] per endpoint).
    quota_windows: Mutex<HashSet<(String, String)>>,
    /// Model mapping and model rule counters (issue 20, `model_map.rs`).
    pub(crate) model_routing: crate::model_map::ModelRoutingMetrics,
    webhooks: WebhookMetrics,
    cost_model: RwLock<Option<CostModel>>,
    model_labels: ModelLabels,
    usage_health: RwLock<Option<UsageHealthReader>>,
    suspension: OnceLock<Arc<Suspension>>,
    /// Relay honesty scores, exported at every scrape.
    honesty: OnceLock<Arc<Honesty>>,
    /// Per-key limits: rejections counted, spend read at every scrape.
    key_metrics: KeyLimitMetrics,
    /// Handles of the series finished requests touch, by label values (see [`FinishedSeries`]).
    finished_cache: HandleCache<Arc<FinishedSeries>>,
    /// Handles of `requests` series, by endpoint and status.
    request_cache: HandleCache<(String, u16, Counter)>,
    /// Failover triggers and thinking-signature repairs (issue 20, points 5 and 7).
    failover_triggers: FailoverTriggerMetrics,
    /// The link to the other instances, read at every scrape (`ccf_cluster_*`) and by
    /// `/health/detailed`; shared with the collector registered in the registry.
    cluster: Arc<ClusterCollector>,
}

/// Label combinations kept in each per-request handle cache; beyond it the slow path is used.
const SERIES_CACHE_LIMIT: usize = 256;

/// Handles of series that per-request code touches, found by their label values without
/// building a label struct (its `String`s) and hashing it as `Family::get_or_create` does. At most
/// [`SERIES_CACHE_LIMIT`] entries are kept; past that, new label values take the slow path every
/// time.
struct HandleCache<T>(RwLock<Vec<T>>);

impl<T> Default for HandleCache<T> {
    fn default() -> Self {
        HandleCache(RwLock::new(Vec::new()))
    }
}

impl<T> HandleCache<T> {
    /// Runs `then` on the entry `matches` finds, under the read lock; without one, on the entry
    /// `make` builds, which is then kept while there is room.
    fn with<R>(
        &self,
        matches: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
        then: impl FnOnce(&T) -> R,
    ) -> R {
        {
            let cache = self.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = cache.iter().find(|entry| matches(entry)) {
                return then(entry);
            }
        }
        let entry = make();
        let result = then(&entry);
        let mut cache = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < SERIES_CACHE_LIMIT {
            cache.push(entry);
        }
        result
    }
}

/// The metric handles one kind of finished request (endpoint, group, model, status, status
/// class) updates, resolved once: a finished request then neither builds nor hashes label
/// strings. Handles share their value with the family's series (they are the same metric); the
/// optional series are created on first use, as before, so no zero-valued series appear.
struct FinishedSeries {
    endpoint: String,
    group: String,
    model: String,
    status: &'static str,
    class: &'static str,
    outcome: Counter,
    finished: Counter,
    duration: OnceLock<Histogram>,
    time_to_first_byte: OnceLock<Histogram>,
    /// Input, output, cache creation, cache read.
    tokens: [OnceLock<Counter>; 4],
    cost: OnceLock<Counter<f64, AtomicU64>>,
}

impl FinishedSeries {
    fn matches(&self, endpoint: &str, group: &str, model: &str, status: &str, class: &str) -> bool {
        self.status == status
            && self.class == class
            && self.endpoint == endpoint
            && self.group == group
            && self.model == model
    }
}

/// The `kind` label of `tokens`, in [`FinishedSeries::tokens`] order.
const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_creation", "cache_read"];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            endpoints_total: Gauge::default(),
            endpoints_healthy: Gauge::default(),
            endpoint_healthy: Family::default(),
            endpoint_response_time_ms: Family::default(),
            endpoint_consecutive_fails: Family::default(),
            requests: Family::default(),
            cancelled: Counter::default(),
            outcomes: Family::default(),
            tokens: Family::default(),
            upstream_failures: Family::default(),
            in_flight: Gauge::default(),
            header_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            finished: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            time_to_first_byte: Family::new_with_constructor(request_buckets),
            cost: Family::default(),
            retries: Family::default(),
            failovers: Family::default(),
            group_switches: Family::default(),
            group_cooldowns: Family::default(),
            group_active: Family::default(),
            suspensions: Family::default(),
            suspended_now: Gauge::default(),
            recorder_backlog: Gauge::default(),
            recorder_journal_records: Gauge::default(),
            recorder_journal_bytes: Gauge::default(),
            endpoint_up: Family::default(),
            honesty_score: Family::default(),
            quota_utilization: Family::default(),
            quota_rejected: Family::default(),
            quota_windows: Mutex::default(),
            model_routing: crate::model_map::ModelRoutingMetrics::default(),
            webhooks: WebhookMetrics::default(),
            cost_model: RwLock::new(None),
            model_labels: ModelLabels::default(),
            usage_health: RwLock::new(None),
            suspension: OnceLock::new(),
            honesty: OnceLock::new(),
            key_metrics: KeyLimitMetrics::default(),
            finished_cache: HandleCache::default(),
            request_cache: HandleCache::default(),
            failover_triggers: FailoverTriggerMetrics::default(),
            cluster: Arc::default(),
            registry: Registry::default(),
        };
        metrics.failover_triggers.register(&mut registry);
        registry.register(
            "endpoint_forwarder_endpoints_total",
            "Configured upstream endpoints",
            metrics.endpoints_total.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoints_healthy",
            "Upstream endpoints currently healthy",
            metrics.endpoints_healthy.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_healthy",
            "1 when the endpoint is healthy",
            metrics.endpoint_healthy.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_response_time_ms",
            "Latency of the endpoint's last answer in milliseconds",
            metrics.endpoint_response_time_ms.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_consecutive_fails",
            "Consecutive failed attempts on the endpoint",
            metrics.endpoint_consecutive_fails.clone(),
        );
        registry.register(
            "ccf_requests",
            "Client requests answered, by endpoint and status",
            metrics.requests.clone(),
        );
        registry.register(
            "ccf_requests_cancelled",
            "Requests whose client went away before the answer was complete",
            metrics.cancelled.clone(),
        );
        registry.register(
            "ccf_request_outcomes",
            "Requests finished, by final status (completed, failed, cancelled)",
            metrics.outcomes.clone(),
        );
        registry.register(
            "ccf_tokens",
            "Tokens reported by upstreams, by model and kind",
            metrics.tokens.clone(),
        );
        registry.register(
            "ccf_upstream_failures",
            "Attempts that got no answer from the endpoint",
            metrics.upstream_failures.clone(),
        );
        registry.register(
            "ccf_requests_in_flight",
            "Client requests being served, until their answer's bookkeeping is done",
            metrics.in_flight.clone(),
        );
        registry.register(
            "ccf_upstream_header_latency_seconds",
            "Time from sending a request upstream to its response headers",
            metrics.header_latency.clone(),
        );
        registry.register(
            "ccf_requests_finished",
            "Requests finished, by endpoint, group, model, final status and HTTP status class",
            metrics.finished.clone(),
        );
        registry.register(
            "ccf_request_duration_seconds",
            "Time from a request's arrival to its end (the last byte relayed)",
            metrics.request_duration.clone(),
        );
        registry.register(
            "ccf_request_time_to_first_byte_seconds",
            "Time from a request's arrival until the upstream's answer began",
            metrics.time_to_first_byte.clone(),
        );
        registry.register(
            "ccf_cost_usd",
            "Cost of finished requests in USD (counted once a pricing table is installed)",
            metrics.cost.clone(),
        );
        registry.register(
            "ccf_retries",
            "Attempts beyond the first, by the endpoint and group that finished the request",
            metrics.retries.clone(),
        );
        registry.register(
            "ccf_failovers",
            "Moves of a request to another endpoint (kind=endpoint) or group (kind=group)",
            metrics.failovers.clone(),
        );
        registry.register(
            "ccf_group_switches",
            "Changes of the active group",
            metrics.group_switches.clone(),
        );
        registry.register(
            "ccf_group_cooldowns",
            "Groups put in cooldown after all their endpoints failed",
            metrics.group_cooldowns.clone(),
        );
        registry.register(
            "ccf_group_active",
            "1 for the group requests are routed to",
            metrics.group_active.clone(),
        );
        metrics.key_metrics.register(&mut registry);
        registry.register(
            "ccf_suspensions",
            "Held requests by what happened to them (held, resumed, timed_out)",
            metrics.suspensions.clone(),
        );
        registry.register(
            "ccf_requests_suspended",
            "Requests held now because no upstream can serve them",
            metrics.suspended_now.clone(),
        );
        registry.register(
            "ccf_recorder_backlog",
            "Usage records not yet written to the database",
            metrics.recorder_backlog.clone(),
        );
        registry.register(
            "ccf_recorder_journal_records",
            "Usage records waiting in the recorder's journal file (past usage_tracking.buffer_size)",
            metrics.recorder_journal_records.clone(),
        );
        registry.register(
            "ccf_recorder_journal_bytes",
            "Size of the usage recorder's journal file in bytes",
            metrics.recorder_journal_bytes.clone(),
        );
        registry.register(
            "ccf_endpoint_healthy",
            "1 when the endpoint is healthy, by endpoint and group",
            metrics.endpoint_up.clone(),
        );
        registry.register(
            "ccf_endpoint_honesty_score",
            "Relay honesty score (1 = trusted) by endpoint and signal (overall, model_substitution, usage_mismatch, burst_stream)",
            metrics.honesty_score.clone(),
        );
        registry.register(
            "ccf_quota_utilization",
            "Subscription account usage (0-1) by endpoint and window (anthropic-ratelimit-unified-<window>-utilization)",
            metrics.quota_utilization.clone(),
        );
        registry.register(
            "ccf_quota_rejected",
            "Upstream answers whose subscription account said rejected (anthropic-ratelimit-unified-status), by endpoint",
            metrics.quota_rejected.clone(),
        );
        metrics.model_routing.register(&mut registry);
        metrics.webhooks.register(&mut registry);
        registry.register_collector(Box::new(Arc::clone(&metrics.cluster)));
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Records a subscription account's answer: each window's utilization in
    /// `ccf_quota_utilization`, a `rejected` status in `ccf_quota_rejected_total`. An endpoint
    /// gets at most [`ccf_router::subscription::MAX_WINDOWS`] window series; later new names
    /// are not shown.
    pub fn record_subscription(&self, endpoint: &str, reading: &ccf_router::SubscriptionReading) {
        for window in &reading.windows {
            let series = (endpoint.to_string(), window.window.clone());
            {
                let mut seen = self
                    .quota_windows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !seen.contains(&series) {
                    let of_endpoint = seen.iter().filter(|(name, _)| name == endpoint).count();
                    if of_endpoint >= ccf_router::subscription::MAX_WINDOWS {
                        continue;
                    }
                    seen.insert(series);
                }
            }
            if let Some(utilization) = window.utilization {
                self.quota_utilization
                    .get_or_create(&QuotaWindowLabels {
                        endpoint: endpoint.to_string(),
                        window: window.window.clone(),
                    })
                    .set(utilization);
            }
        }
        if reading.status == Some(ccf_router::SubscriptionStatus::Rejected) {
            self.quota_rejected
                .get_or_create(&QuotaEndpointLabels {
                    endpoint: endpoint.to_string(),
                })
                .inc();
        }
    }

    /// A failover trigger moved a request off `endpoint` (`reason`: `status` for
    /// `retry.failover_on_status`, `empty_answer` for `retry.failover_on_empty_answer`).
    pub fn record_failover_trigger(&self, endpoint: &str, reason: &'static str) {
        self.failover_triggers
            .triggered
            .get_or_create(&FailoverTriggerLabels {
                endpoint: endpoint.to_string(),
                reason,
            })
            .inc();
    }

    /// A request's body was repaired after `endpoint` refused a thinking block's signature.
    pub fn record_thinking_signature_repair(&self, endpoint: &str) {
        self.failover_triggers
            .repairs
            .get_or_create(&RepairLabels {
                endpoint: endpoint.to_string(),
            })
            .inc();
    }

    /// Sets an endpoint's relay honesty score for `signal` (`overall` or a signal name). Called
    /// at each scrape ([`Honesty::export_scores`]), so the series is looked up by its labels
    /// every time rather than through a handle cache.
    pub fn set_honesty_score(&self, endpoint: &str, signal: &'static str, score: f64) {
        self.honesty_score
            .get_or_create(&HonestyLabels {
                endpoint: endpoint.to_string(),
                signal,
            })
            .set(score);
    }

    /// The webhook delivery metrics' handles (for the webhook dispatcher).
    pub fn webhook_metrics(&self) -> WebhookMetrics {
        self.webhooks.clone()
    }

    /// Installs the pricing used for `ccf_cost_usd` (replacing any earlier one).
    pub fn set_cost_model(&self, model: CostModel) {
        *self
            .cost_model
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(model);
    }

    /// Installs what tells which models the pricing table knows: those may be `model` label
    /// values (replacing any earlier catalog).
    pub fn set_model_catalog(&self, catalog: ModelCatalog) {
        *self
            .model_labels
            .catalog
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(catalog);
    }

    /// Installs the reader behind `/health/usage-tracker`.
    pub fn set_usage_health(&self, reader: UsageHealthReader) {
        *self
            .usage_health
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(reader);
    }

    /// The usage recorder's health, `None` when usage tracking is off.
    pub fn usage_health(&self) -> Option<UsageHealth> {
        let reader = self
            .usage_health
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        reader.map(|read| read())
    }

    /// Sets the usage recorder's backlog gauge.
    pub fn set_recorder_backlog(&self, backlog: usize) {
        self.recorder_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    /// Exports `honesty`'s scores at every scrape (`ccf_endpoint_honesty_score`).
    pub(crate) fn watch_honesty(&self, honesty: Arc<Honesty>) {
        let _ = self.honesty.set(honesty);
    }

    /// Reads the number of held requests from `suspension` at every scrape.
    pub(crate) fn watch_suspension(&self, suspension: Arc<Suspension>) {
        let _ = self.suspension.set(suspension);
    }

    /// A held request was `held`, `resumed` or `timed_out`.
    pub fn record_suspension(&self, outcome: &'static str) {
        self.suspensions
            .get_or_create(&OutcomeKindLabels { outcome })
            .inc();
    }

    /// Routing changes: group switches and cooldowns.
    pub fn record_router_events(&self, events: &[RouterEvent]) {
        for event in events {
            match event {
                RouterEvent::ActiveGroupChanged { from, to } => {
                    let name = |group: &Option<String>| group.clone().unwrap_or_default();
                    self.group_switches
                        .get_or_create(&SwitchLabels {
                            from: name(from),
                            to: name(to),
                        })
                        .inc();
                    if let Some(from) = from {
                        self.group_active
                            .get_or_create(&GroupLabels {
                                group: from.clone(),
                            })
                            .set(0);
                    }
                    if let Some(to) = to {
                        self.group_active
                            .get_or_create(&GroupLabels { group: to.clone() })
                            .set(1);
                    }
                }
                RouterEvent::GroupCooldown { group, .. } => {
                    self.group_cooldowns
                        .get_or_create(&GroupLabels {
                            group: group.clone(),
                        })
                        .inc();
                }
                _ => {}
            }
        }
    }

    /// A request finished: counts, durations, tokens, cost, retries and failovers. The cost is
    /// `priced_usd` when an observer priced the outcome ([`RequestObserver::on_outcome`]), else
    /// the installed [`CostModel`]'s price of its usage (none without a model).
    ///
    /// [`RequestObserver::on_outcome`]: crate::tracking::RequestObserver::on_outcome
    pub fn record_finished(&self, record: &RequestRecord, priced_usd: Option<f64>) {
        let endpoint = record.endpoint.as_deref().unwrap_or_default();
        let group = record.group.as_deref().unwrap_or_default();
        let model = self.model_labels.label(
            record.request_model.as_deref(),
            record.response_model.as_deref(),
        );
        let model: &str = &model;
        let status = record.status.as_str();
        let class = status_class(record.http_status);
        let series = self.finished_series(endpoint, group, model, status, class);
        series.outcome.inc();
        if status == "cancelled" {
            self.cancelled.inc();
        }
        let usage = record.usage.as_ref();
        if let Some(usage) = usage {
            let counts = [
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
            ];
            for ((slot, kind), count) in series.tokens.iter().zip(TOKEN_KINDS).zip(counts) {
                if count > 0 {
                    slot.get_or_init(|| {
                        self.tokens
                            .get_or_create(&TokenLabels {
                                endpoint: endpoint.to_string(),
                                group: group.to_string(),
                                model: model.to_string(),
                                kind,
                            })
                            .clone()
                    })
                    .inc_by(count);
                }
            }
        }
        series.finished.inc();
        if let Some(duration) = record.duration {
            series
                .duration
                .get_or_init(|| {
                    self.request_duration
                        .get_or_create(&DurationLabels {
                            endpoint: endpoint.to_string(),
                            group: group.to_string(),
                            status_class: class,
                        })
                        .clone()
                })
                .observe(duration.as_secs_f64());
        }
        if let Some(ttfb) = record.time_to_first_byte {
            series
                .time_to_first_byte
                .get_or_init(|| {
                    self.time_to_first_byte
                        .get_or_create(&RouteLabels {
                            endpoint: endpoint.to_string(),
                            group: group.to_string(),
                        })
                        .clone()
                })
                .observe(ttfb.as_secs_f64());
        }
        if record.retry_count > 0 {
            self.retries
                .get_or_create(&RouteLabels {
                    endpoint: endpoint.to_string(),
                    group: group.to_string(),
                })
                .inc_by(u64::from(record.retry_count));
        }
        for pair in record.attempts.windows(2) {
            let kind = if pair[0].group != pair[1].group {
                "group"
            } else if pair[0].endpoint != pair[1].endpoint {
                "endpoint"
            } else {
                continue;
            };
            self.failovers.get_or_create(&KindLabels { kind }).inc();
        }
        let cost = match priced_usd {
            Some(cost) => cost,
            None => {
                let Some(usage) = usage.filter(|usage| !usage.is_empty()) else {
                    return;
                };
                let cost_model = self
                    .cost_model
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match cost_model {
                    Some(cost_model) => cost_model(record.model(), usage),
                    None => return,
                }
            }
        };
        if !cost.is_finite() || cost <= 0.0 {
            return;
        }
        if let (Some(key_limits), Some(key)) = (self.key_metrics.limits.get(), &record.api_key_name)
        {
            key_limits.add_spend(key, cost, SystemTime::now());
        }
        series
            .cost
            .get_or_init(|| {
                self.cost
                    .get_or_create(&CostLabels {
                        endpoint: endpoint.to_string(),
                        group: group.to_string(),
                        model: model.to_string(),
                    })
                    .clone()
            })
            .inc_by(cost);
    }

    /// The cached handles for these label values (made, and cached while there is room, on
    /// first use).
    fn finished_series(
        &self,
        endpoint: &str,
        group: &str,
        model: &str,
        status: &'static str,
        class: &'static str,
    ) -> Arc<FinishedSeries> {
        self.finished_cache.with(
            |series| series.matches(endpoint, group, model, status, class),
            || self.new_finished_series(endpoint, group, model, status, class),
            Arc::clone,
        )
    }

    /// The handles of [`Self::finished_series`] for label values not cached.
    fn new_finished_series(
        &self,
        endpoint: &str,
        group: &str,
        model: &str,
        status: &'static str,
        class: &'static str,
    ) -> Arc<FinishedSeries> {
        Arc::new(FinishedSeries {
            endpoint: endpoint.to_string(),
            group: group.to_string(),
            model: model.to_string(),
            status,
            class,
            outcome: self
                .outcomes
                .get_or_create(&OutcomeLabels {
                    status: status.to_string(),
                })
                .clone(),
            finished: self
                .finished
                .get_or_create(&FinishedLabels {
                    endpoint: endpoint.to_string(),
                    group: group.to_string(),
                    model: model.to_string(),
                    status: status.to_string(),
                    status_class: class,
                })
                .clone(),
            duration: OnceLock::new(),
            time_to_first_byte: OnceLock::new(),
            tokens: Default::default(),
            cost: OnceLock::new(),
        })
    }

    /// A request was answered with `status` (`endpoint` empty when none was used).
    pub fn record_request(&self, endpoint: &str, status: StatusCode) {
        let code = status.as_u16();
        self.request_cache.with(
            |(name, cached, _)| *cached == code && name == endpoint,
            || {
                let counter = self
                    .requests
                    .get_or_create(&RequestLabels {
                        endpoint: endpoint.to_string(),
                        status: code.to_string(),
                    })
                    .clone();
                (endpoint.to_string(), code, counter)
            },
            |(_, _, counter)| {
                counter.inc();
            },
        );
    }

    /// An attempt on `endpoint` got no answer.
    pub fn record_upstream_failure(&self, endpoint: &Endpoint) {
        self.upstream_failures
            .get_or_create(&EndpointLabels {
                name: endpoint.name.clone(),
                url: ccf_config::mask_url_password(endpoint.url.as_str()),
            })
            .inc();
    }

    /// Upstream response headers arrived after `latency`.
    pub fn record_header_latency(&self, latency: Duration) {
        self.header_latency.observe(latency.as_secs_f64());
    }

    /// Client requests being served (`ccf_requests_in_flight`): from admission until the
    /// bookkeeping after the answer's end (usage, health, outcome) is done.
    pub fn requests_in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn in_flight_guard(&self) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard {
            gauge: self.in_flight.clone(),
        }
    }

    fn render(&self, endpoints: &[Arc<Endpoint>], health: &HealthSnapshot) -> String {
        if let Some(usage) = self.usage_health() {
            self.set_recorder_backlog(usage.backlog);
            self.recorder_journal_records
                .set(i64::try_from(usage.journal_records).unwrap_or(i64::MAX));
            self.recorder_journal_bytes
                .set(i64::try_from(usage.journal_bytes).unwrap_or(i64::MAX));
        }
        let mut healthy = 0;
        for endpoint in endpoints {
            let state = endpoint_health(health, &endpoint.name);
            let labels = EndpointLabels {
                name: endpoint.name.clone(),
                url: ccf_config::mask_url_password(endpoint.url.as_str()),
            };
            healthy += i64::from(state.healthy);
            self.endpoint_healthy
                .get_or_create(&labels)
                .set(i64::from(state.healthy));
            self.endpoint_response_time_ms.get_or_create(&labels).set(
                state.last_latency.map_or(0, |latency| {
                    i64::try_from(latency.as_millis()).unwrap_or(i64::MAX)
                }),
            );
            self.endpoint_consecutive_fails
                .get_or_create(&labels)
                .set(i64::from(state.consecutive_failures));
            self.endpoint_up
                .get_or_create(&RouteLabels {
                    endpoint: endpoint.name.clone(),
                    group: endpoint.group.clone(),
                })
                .set(i64::from(state.healthy));
        }
        if let Some(honesty) = self.honesty.get() {
            honesty.export_scores(self, Instant::now());
        }
        if let Some(suspension) = self.suspension.get() {
            self.suspended_now
                .set(i64::try_from(suspension.held()).unwrap_or(i64::MAX));
        }
        self.key_metrics.refresh();
        self.endpoints_total
            .set(i64::try_from(endpoints.len()).unwrap_or(i64::MAX));
        self.endpoints_healthy.set(healthy);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Labels of `ccf_key_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyRejectLabels {
    key: String,
    reason: &'static str,
}

/// Labels of `ccf_key_spend_usd`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeySpendLabels {
    key: String,
    period: &'static str,
}

/// The per-key limit metrics (`auth.tokens[].limits`): `ccf_key_rejected_total{key,reason}`
/// and `ccf_key_spend_usd{key,period}` (read from [`KeyLimits`] at every scrape, so a new day
/// shows 0 without a request).
#[derive(Default)]
struct KeyLimitMetrics {
    limits: OnceLock<Arc<KeyLimits>>,
    rejected: Family<KeyRejectLabels, Counter>,
    spend: Family<KeySpendLabels, Gauge<f64, AtomicU64>>,
}

impl KeyLimitMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ccf_key_rejected",
            "Requests refused by their API key's limits, by key name and reason (rate, concurrency, budget)",
            self.rejected.clone(),
        );
        registry.register(
            "ccf_key_spend_usd",
            "Spend of each API key in the current budget period (daily, monthly), USD",
            self.spend.clone(),
        );
    }

    fn refresh(&self) {
        let Some(limits) = self.limits.get() else {
            return;
        };
        for view in limits.views() {
            for (period, usd) in [
                ("daily", view.spent_today_usd),
                ("monthly", view.spent_this_month_usd),
            ] {
                self.spend
                    .get_or_create(&KeySpendLabels {
                        key: view.name.clone(),
                        period,
                    })
                    .set(usd);
            }
        }
    }
}

impl Metrics {
    /// Counts spend into, and reads the spend gauges from, `limits`. Set once, when the engine
    /// is built (before any request finishes).
    pub(crate) fn watch_key_limits(&self, limits: Arc<KeyLimits>) {
        let _ = self.key_metrics.limits.set(limits);
    }

    /// A request of API key `key` was refused by its limits (`rate`, `concurrency`, `budget`).
    pub fn record_key_rejected(&self, key: &str, reason: &'static str) {
        self.key_metrics
            .rejected
            .get_or_create(&KeyRejectLabels {
                key: key.to_string(),
                reason,
            })
            .inc();
    }
}

/// The `ccf_cluster_*` series (issue 21): the link's [`ClusterStatus`], read at every scrape.
/// Registered as a collector when the registry is built, it writes nothing until a link is
/// installed ([`Metrics::watch_cluster`]), so an instance without `cluster.redis_url` has no
/// `ccf_cluster_*` series at all (not a misleading `ccf_cluster_connected 0`).
#[derive(Default)]
struct ClusterCollector {
    link: OnceLock<Arc<dyn ClusterLink>>,
}

impl ClusterCollector {
    /// The link's status now; `None` without a link.
    fn status(&self) -> Option<ClusterStatus> {
        self.link.get().map(|link| link.status())
    }
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector")
            .field("installed", &self.link.get().is_some())
            .finish()
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(status) = self.status() else {
            return Ok(());
        };
        let connected = ConstGauge::new(i64::from(status.connected));
        connected.encode(encoder.encode_descriptor(
            "ccf_cluster_connected",
            "1 while the link to the shared state (cluster.redis_url) is up; 0 while this instance decides from its local state",
            None,
            connected.metric_type(),
        )?)?;
        let counters: [(&str, &str, u64); 5] = [
            (
                "ccf_cluster_fallbacks",
                "Requests that decided from local state because the shared state did not answer within cluster.redis_timeout",
                status.fallbacks,
            ),
            (
                "ccf_cluster_reconnects",
                "Times the link to the shared state was made again after a loss",
                status.reconnects,
            ),
            (
                "ccf_cluster_updates_published",
                "Routing and key updates sent to the other instances",
                status.published,
            ),
            (
                "ccf_cluster_updates_applied",
                "Updates from other instances applied here",
                status.applied,
            ),
            (
                "ccf_cluster_updates_dropped",
                "Updates not sent because the outgoing queue was full while the link was down",
                status.dropped,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Shows `link`'s status in `/metrics` and `/health/detailed` (set with the link, by
    /// [`crate::Forwarder::set_cluster_link`]; only the first link counts, as there).
    pub(crate) fn watch_cluster(&self, link: Arc<dyn ClusterLink>) {
        let _ = self.cluster.link.set(link);
    }

    /// The link to the other instances' status now; `None` without a link.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        self.cluster.status()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The monitoring routes, or `None` when `path` is not one of them.
pub fn respond(
    method: &Method,
    path: &str,
    endpoints: &[Arc<Endpoint>],
    health: &HealthSnapshot,
    metrics: &Metrics,
) -> Option<Response<ProxyBody>> {
    if !matches!(
        path,
        "/health" | "/health/detailed" | "/health/usage-tracker" | "/metrics"
    ) {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(anthropic_error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            &format!("{path} accepts GET only"),
        ));
    }
    let response = match path {
        "/metrics" => with_type(
            Response::new(full_body(metrics.render(endpoints, health))),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/health" => health_response(endpoints, health, metrics.cluster_status(), false),
        "/health/usage-tracker" => usage_tracker_response(metrics.usage_health()),
        _ => health_response(endpoints, health, metrics.cluster_status(), true),
    };
    Some(if method == Method::HEAD {
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, empty_body())
    } else {
        response
    })
}

#[derive(Serialize)]
struct HealthSummary<'a> {
    status: &'a str,
    healthy_endpoints: usize,
    total_endpoints: usize,
}

#[derive(Serialize)]
struct HealthDetailed<'a> {
    status: &'a str,
    timestamp: String,
    healthy_endpoints: usize,
    total_endpoints: usize,
    endpoints: Vec<EndpointHealthJson>,
    /// The link to the other instances; absent without `cluster.redis_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterHealthJson>,
}

/// `/health/detailed`'s `cluster` object: the link's [`ClusterStatus`].
#[derive(Serialize)]
struct ClusterHealthJson {
    backend: &'static str,
    /// Credentials masked (again: the link masks them already).
    address: String,
    connected: bool,
    /// Since when `connected` has its value (RFC 3339, UTC).
    since: Option<String>,
    last_error: Option<String>,
    fallbacks: u64,
    reconnects: u64,
    published: u64,
    applied: u64,
    dropped: u64,
}

impl From<ClusterStatus> for ClusterHealthJson {
    fn from(status: ClusterStatus) -> Self {
        ClusterHealthJson {
            backend: status.backend,
            address: ccf_config::mask_url_password(&status.address),
            connected: status.connected,
            since: status.since.map(rfc3339),
            last_error: status.last_error,
            fallbacks: status.fallbacks,
            reconnects: status.reconnects,
            published: status.published,
            applied: status.applied,
            dropped: status.dropped,
        }
    }
}

#[derive(Serialize)]
struct EndpointHealthJson {
    name: String,
    url: String,
    group: String,
    healthy: bool,
    never_checked: bool,
    response_time_ms: u128,
    last_check_time: Option<String>,
    consecutive_fails: u32,
    last_error: Option<String>,
    priority: u32,
}

/// `/health/usage-tracker`: 200 while the recorder writes, 503 with the backlog and the error
/// while the database is unavailable; `disabled` (200) when usage tracking is off.
fn usage_tracker_response(health: Option<UsageHealth>) -> Response<ProxyBody> {
    let (status, body) = match health {
        None => (StatusCode::OK, serde_json::json!({"status": "disabled"})),
        Some(health) => (
            if health.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "status": if health.healthy { "healthy" } else { "unhealthy" },
                "backlog": health.backlog,
                "journal_records": health.journal_records,
                "journal_bytes": health.journal_bytes,
                "last_error": health.last_error,
            }),
        ),
    };
    let mut response = with_type(
        Response::new(full_body(Bytes::from(body.to_string()))),
        "application/json",
    );
    *response.status_mut() = status;
    response
}

/// An endpoint's health; an endpoint the monitor does not know reads as never checked.
fn endpoint_health(health: &HealthSnapshot, name: &str) -> EndpointHealth {
    health
        .get(name)
        .cloned()
        .unwrap_or_else(EndpointHealth::unchecked)
}

/// `/health` and `/health/detailed`: `unhealthy` (503) without a healthy endpoint, `degraded`
/// with some unhealthy or the link to the other instances down (`cluster`), else `healthy`.
fn health_response(
    endpoints: &[Arc<Endpoint>],
    health: &HealthSnapshot,
    cluster: Option<ClusterStatus>,
    detailed: bool,
) -> Response<ProxyBody> {
    let snapshots: Vec<(&Arc<Endpoint>, EndpointHealth)> = endpoints
        .iter()
        .map(|endpoint| (endpoint, endpoint_health(health, &endpoint.name)))
        .collect();
    let healthy = snapshots.iter().filter(|(_, state)| state.healthy).count();
    let total = snapshots.len();
    let cluster_down = cluster.as_ref().is_some_and(|cluster| !cluster.connected);
    let status = if healthy == 0 {
        "unhealthy"
    } else if healthy < total || cluster_down {
        "degraded"
    } else {
        "healthy"
    };
    let body = if detailed {
        serde_json::to_vec(&HealthDetailed {
            status,
            timestamp: rfc3339(SystemTime::now()),
            healthy_endpoints: healthy,
            total_endpoints: total,
            endpoints: snapshots
                .iter()
                .map(|(endpoint, state)| EndpointHealthJson {
                    name: endpoint.name.clone(),
                    url: ccf_config::mask_url_password(endpoint.url.as_str()),
                    group: endpoint.group.clone(),
                    healthy: state.healthy,
                    never_checked: state.never_checked,
                    response_time_ms: state.last_latency.map_or(0, |d| d.as_millis()),
                    last_check_time: state.last_check.map(rfc3339),
                    consecutive_fails: state.consecutive_failures,
                    last_error: state.last_error.clone(),
                    priority: endpoint.priority,
                })
                .collect(),
            cluster: cluster.map(ClusterHealthJson::from),
        })
    } else {
        serde_json::to_vec(&HealthSummary {
            status,
            healthy_endpoints: healthy,
            total_endpoints: total,
        })
    };
    let mut response = with_type(
        Response::new(full_body(Bytes::from(body.unwrap_or_default()))),
        "application/json",
    );
    if healthy == 0 {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

fn with_type(mut response: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// --- webhooks (issue #20, point 6) ---

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookDeliveryLabels {
    webhook: String,
    event: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

/// `ccf_webhook_deliveries_total` and `ccf_webhook_queue_depth`: handles sharing their series
/// with the engine's registry. Cheap to clone. The `webhook` label is the receiver's position in
/// `webhooks[]`, never its URL (which may carry credentials).
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    deliveries: Family<WebhookDeliveryLabels, Counter>,
    queue_depth: Family<WebhookLabels, Gauge>,
}

impl WebhookMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ccf_webhook_deliveries",
            "Webhook delivery results by webhook (its index in webhooks[]), event and result \
             (delivered, retried, failed, dropped, lost)",
            self.deliveries.clone(),
        );
        registry.register(
            "ccf_webhook_queue_depth",
            "Webhook notifications waiting for delivery, by webhook",
            self.queue_depth.clone(),
        );
    }

    /// Counts one delivery `result` of `event` to `webhook`.
    pub fn count(&self, webhook: &str, event: &'static str, result: &'static str, by: u64) {
        self.deliveries
            .get_or_create(&WebhookDeliveryLabels {
                webhook: webhook.to_string(),
                event,
                result,
            })
            .inc_by(by);
    }

    /// Sets `webhook`'s queue depth.
    pub fn set_queue_depth(&self, webhook: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Drops `webhook`'s queue depth series (the receiver was removed by a reload).
    pub fn forget(&self, webhook: &str) {
        self.queue_depth.remove(&WebhookLabels {
            webhook: webhook.to_string(),
        });
    }
}

/// Formats a time as RFC 3339 in UTC with milliseconds (`2026-11-26T05:49:31.123Z`).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The honesty gauges are set when `/metrics` is read, from the board as it stands then:
    /// a checked endpoint's four series carry the board's scores, an endpoint never checked
    /// has none, and a later check shows at the next scrape.
    #[test]
    fn honesty_scores_are_exported_when_metrics_are_read() {
        use ccf_router::honesty::{HonestyCheck, SignalVerdict};
        let config = ccf_config::Config::from_yaml_str(
            "endpoints:\n  - name: relay\n    url: https://relay.invalid\n  - name: quiet\n    url: https://quiet.invalid\n",
        )
        .expect("valid test config");
        let honesty = Arc::new(Honesty::new(&config));
        let metrics = Metrics::new();
        metrics.watch_honesty(Arc::clone(&honesty));
        let check = |model_substituted: bool| HonestyCheck {
            request_id: "req-1".into(),
            at: SystemTime::now(),
            verdicts: vec![SignalVerdict::model(
                "claude-opus-4-1",
                if model_substituted {
                    "claude-3-haiku-20240307"
                } else {
                    "claude-opus-4-1"
                },
                !model_substituted,
            )],
        };
        let series = |text: &str, endpoint: &str, signal: &str| -> Option<f64> {
            let name = format!(
                "ccf_endpoint_honesty_score{{endpoint=\"{endpoint}\",signal=\"{signal}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(name.as_str()))
                .map(|value| value.parse().expect("a number"))
        };
        let scrape = || metrics.render(&[], &HealthSnapshot::default());

        assert_eq!(
            series(&scrape(), "relay", "overall"),
            None,
            "nothing checked yet"
        );
        honesty.record_check(&config, "relay", check(false));
        let text = scrape();
        for signal in [
            "overall",
            "model_substitution",
            "usage_mismatch",
            "burst_stream",
        ] {
            assert_eq!(
                series(&text, "relay", signal),
                Some(1.0),
                "{signal}: {text}"
            );
        }
        assert_eq!(series(&text, "quiet", "overall"), None, "{text}");

        honesty.record_check(&config, "relay", check(true));
        let text = scrape();
        let view = honesty.view(Instant::now());
        let overall = series(&text, "relay", "overall").expect("exported");
        assert!(overall < 1.0, "{text}");
        assert!(
            (overall - view[0].score).abs() < 1e-6,
            "{overall} against {}",
            view[0].score
        );
        assert_eq!(
            series(&text, "relay", "model_substitution"),
            Some(overall),
            "{text}"
        );
        assert_eq!(
            series(&text, "relay", "usage_mismatch"),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn model_labels_are_answered_or_priced_models_and_the_rest_is_other() {
        let labels = ModelLabels::default();
        let label = |requested: Option<&str>, answered: Option<&str>| {
            labels.label(requested, answered).into_owned()
        };
        // No pricing installed yet: only what upstreams answered with is a label.
        assert_eq!(label(Some("client-made-up-1"), None), "other");
        assert_eq!(label(None, None), "unknown");
        assert_eq!(
            label(
                Some("claude-sonnet-4-5"),
                Some("claude-sonnet-4-5-20250929")
            ),
            "claude-sonnet-4-5-20250929"
        );
        // Seen in an answer once: a later failed request asking for it keeps its name.
        assert_eq!(
            label(Some("claude-sonnet-4-5-20250929"), None),
            "claude-sonnet-4-5-20250929"
        );
        labels.set_catalog_for_test(|model| model.starts_with("claude-haiku-4-5"));
        assert_eq!(label(Some("claude-haiku-4-5"), None), "claude-haiku-4-5");
        assert_eq!(label(Some("client-made-up-2"), None), "other");
        // A relay echoing whatever the client asks cannot mint series beyond the bound.
        let mut distinct = HashSet::new();
        for n in 0..1000 {
            let echoed = format!("echo-{n}");
            distinct.insert(label(Some(&echoed), Some(&echoed)));
        }
        assert!(
            distinct.len() <= MAX_ANSWERED_MODELS + 1,
            "{}",
            distinct.len()
        );
        assert!(distinct.contains("other"));
    }

    impl ModelLabels {
        fn set_catalog_for_test(&self, knows: impl Fn(&str) -> bool + Send + Sync + 'static) {
            *self.catalog.write().unwrap() = Some(Arc::new(knows));
        }
    }

    #[test]
    fn quota_window_series_are_bounded_per_endpoint() {
        let metrics = Metrics::new();
        let reading = |names: std::ops::Range<usize>| ccf_router::SubscriptionReading {
            status: Some(ccf_router::SubscriptionStatus::Rejected),
            windows: names
                .map(|n| ccf_router::WindowReading {
                    window: format!("w{n}"),
                    utilization: Some(0.5),
                    reset_in: None,
                })
                .collect(),
            ..ccf_router::SubscriptionReading::default()
        };
        metrics.record_subscription("relay", &reading(0..6));
        metrics.record_subscription("relay", &reading(6..20));
        metrics.record_subscription("other", &reading(0..1));
        let mut text = String::new();
        encode(&mut text, &metrics.registry).expect("encodes");
        let series = |endpoint: &str| {
            text.lines()
                .filter(|line| {
                    line.starts_with(&format!("ccf_quota_utilization{{endpoint=\"{endpoint}\""))
                })
                .count()
        };
        assert_eq!(series("relay"), ccf_router::subscription::MAX_WINDOWS);
        assert_eq!(series("other"), 1);
        assert!(
            text.contains("ccf_quota_rejected_total{endpoint=\"relay\"} 2"),
            "{text}"
        );
    }

    /// A link whose status the test sets.
    struct FakeLink(Mutex<ClusterStatus>);

    impl ClusterLink for FakeLink {
        fn publish(&self, _update: crate::cluster::SharedUpdate) {}
        fn key_counters(&self) -> Option<Arc<dyn crate::cluster::SharedKeyCounters>> {
            None
        }
        fn status(&self) -> ClusterStatus {
            self.0.lock().unwrap().clone()
        }
        fn note_fallback(&self) {}
    }

    fn scrape(metrics: &Metrics) -> String {
        let mut text = String::new();
        encode(&mut text, &metrics.registry).expect("encodes");
        text
    }

    #[test]
    fn cluster_series_appear_with_a_link_and_are_read_at_every_scrape() {
        let metrics = Metrics::new();
        assert!(!scrape(&metrics).contains("ccf_cluster"));
        assert_eq!(metrics.cluster_status(), None);
        let link = Arc::new(FakeLink(Mutex::new(ClusterStatus {
            backend: "redis",
            address: "redis://127.0.0.1:6379".to_string(),
            connected: true,
            fallbacks: 3,
            reconnects: 1,
            published: 40,
            applied: 12,
            dropped: 0,
            ..ClusterStatus::default()
        })));
        metrics.watch_cluster(link.clone());
        let text = scrape(&metrics);
        for line in [
            "# TYPE ccf_cluster_connected gauge",
            "ccf_cluster_connected 1",
            "# TYPE ccf_cluster_fallbacks counter",
            "ccf_cluster_fallbacks_total 3",
            "ccf_cluster_reconnects_total 1",
            "ccf_cluster_updates_published_total 40",
            "ccf_cluster_updates_applied_total 12",
            "ccf_cluster_updates_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in {text}");
        }
        // The next scrape reads the link again: no value is cached.
        {
            let mut status = link.0.lock().unwrap();
            status.connected = false;
            status.fallbacks = 5;
            status.dropped = 2;
        }
        let text = scrape(&metrics);
        for line in [
            "ccf_cluster_connected 0",
            "ccf_cluster_fallbacks_total 5",
            "ccf_cluster_updates_dropped_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in {text}");
        }
        assert_eq!(text.matches("# TYPE ccf_cluster_connected").count(), 1);
    }

    #[test]
    fn cluster_health_json_masks_a_password_left_in_the_address() {
        let json = ClusterHealthJson::from(ClusterStatus {
            backend: "redis",
            address: "rediss://user:hunter2-password@redis.internal:6380/0".to_string(),
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_136_171_123)),
            ..ClusterStatus::default()
        });
        assert_eq!(json.address, "rediss://user:***@redis.internal:6380/0");
        assert_eq!(json.since.as_deref(), Some("2025-11-26T05:49:31.123Z"));
        // An address the link masked already stays as it is.
        let masked = ClusterHealthJson::from(ClusterStatus {
            address: json.address.clone(),
            ..ClusterStatus::default()
        });
        assert_eq!(masked.address, json.address);
    }

    #[test]
    fn formats_utc_timestamps() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_136_171_123);
        assert_eq!(rfc3339(time), "2025-11-26T05:49:31.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
