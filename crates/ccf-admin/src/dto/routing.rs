//! Smart routing on the wire: `GET /api/v1/routing/honesty` from ccf-router's
//! [`EndpointHonesty`] and [`HonestySettings`], `GET /api/v1/routing/affinity` from its
//! [`AffinityView`] (priced with the store's [`Pricing`]), and `GET /api/v1/routing/quota` from
//! its [`EndpointQuotaView`]s (with a subscription account's windows, [`SubscriptionView`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ccf_router::honesty::{
    EndpointHonesty, FlagExample, HonestySettings, HonestySignal, SignalScore,
    MIN_CHECKS_FOR_DEMOTION,
};
use ccf_router::{
    AffinityView, CacheTokens, DimensionView, DrainReason, EndpointCacheView, EndpointQuotaView,
    HeldTokens, QuotaDimension, SessionSource, SessionView, SubscriptionView, WindowView,
};
use ccf_store::{Cost, Pricing};
use serde::Serialize;

use crate::http_util::rfc3339;

/// The answer of `GET /api/v1/routing/honesty`.
#[derive(Debug, Serialize)]
pub(crate) struct HonestyDto<'a> {
    enabled: bool,
    demote_dishonest: bool,
    threshold: f64,
    restore_level: f64,
    usage_tolerance: f64,
    min_checks: u64,
    endpoints: Vec<EndpointHonestyDto<'a>>,
    timestamp: String,
}

impl<'a> HonestyDto<'a> {
    /// The `settings` honesty is judged by, and every endpoint's scores.
    pub(crate) fn new(settings: &HonestySettings, endpoints: Vec<EndpointHonestyDto<'a>>) -> Self {
        HonestyDto {
            enabled: settings.enabled,
            demote_dishonest: settings.demote,
            threshold: settings.threshold,
            restore_level: settings.restore_level(),
            usage_tolerance: settings.usage_tolerance,
            min_checks: MIN_CHECKS_FOR_DEMOTION,
            endpoints,
            timestamp: rfc3339(SystemTime::now()),
        }
    }
}

/// One endpoint's relay-honesty scores.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointHonestyDto<'a> {
    endpoint: &'a str,
    /// `None` for an endpoint no longer in the configuration.
    group: Option<&'a str>,
    score: f64,
    checks: u64,
    flagged_requests: u64,
    /// By signal name (`model_substitution`, `usage_mismatch`, `burst_stream`).
    signals: BTreeMap<&'static str, SignalScoreDto>,
    last_flag: Option<FlagDto<'a>>,
    below_threshold: bool,
    demoted: bool,
}

impl<'a> EndpointHonestyDto<'a> {
    /// `honesty` of an endpoint in `group`.
    pub(crate) fn new(honesty: &'a EndpointHonesty, group: Option<&'a str>) -> Self {
        EndpointHonestyDto {
            endpoint: &honesty.endpoint,
            group,
            score: honesty.score,
            checks: honesty.checks,
            flagged_requests: honesty.flagged_requests,
            // `as_str` is the router's stable signal name, shared with the metrics labels.
            signals: HonestySignal::ALL
                .iter()
                .map(|signal| (signal.as_str(), honesty.signal(*signal).into()))
                .collect(),
            last_flag: honesty.last_flag.as_ref().map(FlagDto::from),
            below_threshold: honesty.below_threshold,
            demoted: honesty.demoted,
        }
    }
}

/// One signal's score.
#[derive(Debug, Serialize)]
struct SignalScoreDto {
    score: f64,
    checks: u64,
    flags: u64,
}

impl From<&SignalScore> for SignalScoreDto {
    fn from(score: &SignalScore) -> Self {
        SignalScoreDto {
            score: score.score,
            checks: score.checks,
            flags: score.flags,
        }
    }
}

/// The latest flagged check, as an example.
#[derive(Debug, Serialize)]
struct FlagDto<'a> {
    request_id: &'a str,
    signal: &'static str,
    asked: &'a str,
    reported: &'a str,
    at: String,
}

impl<'a> From<&'a FlagExample> for FlagDto<'a> {
    fn from(flag: &'a FlagExample) -> Self {
        FlagDto {
            request_id: &flag.request_id,
            signal: flag.signal.as_str(),
            asked: &flag.asked,
            reported: &flag.reported,
            at: rfc3339(flag.at),
        }
    }
}

/// How `GET /api/v1/routing/affinity` prices what affinity saved.
const SAVED_FORMULA: &str = "sum over held turns of cache_read_tokens x (cache write price for the TTL asked for - cache read price) of the model billed";

/// The answer of `GET /api/v1/routing/affinity`.
#[derive(Debug, Serialize)]
pub(crate) struct AffinityDto {
    enabled: bool,
    ttl_seconds: u64,
    long_ttl_seconds: u64,
    capacity: usize,
    active_sessions: usize,
    totals: AffinityTotalsDto,
    endpoints: Vec<EndpointCacheDto>,
    sessions: Vec<SessionDto>,
    saved_formula: &'static str,
}

impl AffinityDto {
    /// `view`, its savings priced with `pricing`.
    pub(crate) fn new(view: &AffinityView, pricing: &Pricing) -> Self {
        let saved_nano = view
            .endpoints
            .iter()
            .map(|endpoint| affinity_saved_nano(pricing, &endpoint.held))
            .fold(0i64, i64::saturating_add);
        let mut all = CacheTokens::default();
        for endpoint in &view.endpoints {
            all.turns = all.turns.saturating_add(endpoint.tokens.turns);
            all.input_tokens = all
                .input_tokens
                .saturating_add(endpoint.tokens.input_tokens);
            all.cache_creation_tokens = all
                .cache_creation_tokens
                .saturating_add(endpoint.tokens.cache_creation_tokens);
            all.cache_read_tokens = all
                .cache_read_tokens
                .saturating_add(endpoint.tokens.cache_read_tokens);
        }
        AffinityDto {
            enabled: view.enabled,
            ttl_seconds: view.ttl.as_secs(),
            long_ttl_seconds: view.long_ttl.as_secs(),
            capacity: view.capacity,
            active_sessions: view.active_sessions,
            totals: AffinityTotalsDto {
                tokens: CacheTokensDto::new(&all, all.cache_read_ratio()),
                bound: view.totals.bound,
                moves: view.totals.moves,
                expired: view.totals.expired,
                evicted: view.totals.evicted,
                held_turns: view.totals.held_turns,
                saved_usd: Cost::usd(saved_nano),
            },
            endpoints: view
                .endpoints
                .iter()
                .map(|endpoint| EndpointCacheDto::new(endpoint, pricing))
                .collect(),
            sessions: view
                .sessions
                .iter()
                .map(|session| SessionDto::new(session, pricing))
                .collect(),
            saved_formula: SAVED_FORMULA,
        }
    }
}

/// Token counts of finished turns and their cache-read ratio (flattened into its owner).
#[derive(Debug, Serialize)]
struct CacheTokensDto {
    turns: u64,
    input_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    cache_read_ratio: Option<f64>,
}

impl CacheTokensDto {
    fn new(tokens: &CacheTokens, ratio: Option<f64>) -> Self {
        CacheTokensDto {
            turns: tokens.turns,
            input_tokens: tokens.input_tokens,
            cache_creation_tokens: tokens.cache_creation_tokens,
            cache_read_tokens: tokens.cache_read_tokens,
            cache_read_ratio: ratio,
        }
    }
}

/// Held cache reads and what they saved (flattened into its owner).
#[derive(Debug, Serialize)]
struct HeldDto {
    held_cache_read_tokens: u64,
    saved_usd: f64,
}

impl HeldDto {
    fn new(pricing: &Pricing, held: &[HeldTokens]) -> Self {
        HeldDto {
            held_cache_read_tokens: held
                .iter()
                .map(|entry| entry.cache_read_5m.saturating_add(entry.cache_read_1h))
                .sum(),
            saved_usd: Cost::usd(affinity_saved_nano(pricing, held)),
        }
    }
}

/// The whole table's counters.
#[derive(Debug, Serialize)]
struct AffinityTotalsDto {
    #[serde(flatten)]
    tokens: CacheTokensDto,
    bound: u64,
    moves: u64,
    expired: u64,
    evicted: u64,
    held_turns: u64,
    saved_usd: f64,
}

/// One endpoint's cache numbers.
#[derive(Debug, Serialize)]
struct EndpointCacheDto {
    #[serde(flatten)]
    tokens: CacheTokensDto,
    endpoint: String,
    bound_sessions: usize,
    held_turns: u64,
    #[serde(flatten)]
    held: HeldDto,
}

impl EndpointCacheDto {
    fn new(endpoint: &EndpointCacheView, pricing: &Pricing) -> Self {
        EndpointCacheDto {
            tokens: CacheTokensDto::new(&endpoint.tokens, endpoint.cache_read_ratio),
            endpoint: endpoint.endpoint.clone(),
            bound_sessions: endpoint.bound_sessions,
            held_turns: endpoint.held_turns,
            held: HeldDto::new(pricing, &endpoint.held),
        }
    }
}

/// Where a session's identity came from, on the wire.
fn session_source_word(source: SessionSource) -> &'static str {
    match source {
        SessionSource::Header => "header",
        SessionSource::UserId => "user_id",
        SessionSource::Prompt => "prompt",
    }
}

/// One bound session.
#[derive(Debug, Serialize)]
struct SessionDto {
    #[serde(flatten)]
    tokens: CacheTokensDto,
    /// The session key, 16 hex digits.
    session: String,
    source: &'static str,
    endpoint: String,
    expires_in_seconds: u64,
    idle_seconds: u64,
    long_ttl: bool,
    moves: u32,
    moved_from: Option<String>,
    held_turns: u64,
    #[serde(flatten)]
    held: HeldDto,
}

impl SessionDto {
    fn new(session: &SessionView, pricing: &Pricing) -> Self {
        SessionDto {
            tokens: CacheTokensDto::new(&session.tokens, session.cache_read_ratio),
            session: session.session.to_string(),
            source: session_source_word(session.source),
            endpoint: session.endpoint.clone(),
            expires_in_seconds: session.expires_in.as_secs(),
            idle_seconds: session.idle.as_secs(),
            long_ttl: session.long_ttl,
            moves: session.moves,
            moved_from: session.moved_from.clone(),
            held_turns: session.held_turns,
            held: HeldDto::new(pricing, &session.held),
        }
    }
}

/// What affinity saved on held turns, in nano-USD: every held cache-read token would have been
/// a cache write on the endpoint routing without affinity picks (it holds no cache for the
/// conversation), so it saved `cache-write price (TTL asked for) - cache-read price` of the
/// model it was billed for.
fn affinity_saved_nano(pricing: &Pricing, held: &[HeldTokens]) -> i64 {
    held.iter()
        .map(|entry| {
            let price = pricing.price(Some(entry.model.as_str()).filter(|model| !model.is_empty()));
            let saved_5m = price.cache_creation.saturating_sub(price.cache_read).max(0);
            let saved_1h = price
                .cache_creation_1h
                .saturating_sub(price.cache_read)
                .max(0);
            let tokens = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
            tokens(entry.cache_read_5m)
                .saturating_mul(saved_5m)
                .saturating_add(tokens(entry.cache_read_1h).saturating_mul(saved_1h))
        })
        .fold(0i64, i64::saturating_add)
}

/// A rate-limited quantity's name on the wire (the header's, with `_`).
fn dimension_word(dimension: QuotaDimension) -> &'static str {
    match dimension {
        QuotaDimension::Requests => "requests",
        QuotaDimension::InputTokens => "input_tokens",
        QuotaDimension::OutputTokens => "output_tokens",
        QuotaDimension::Tokens => "tokens",
    }
}

/// The answer of `GET /api/v1/routing/quota`.
#[derive(Debug, Serialize)]
pub(crate) struct QuotaDto<'a> {
    endpoints: Vec<EndpointQuotaDto<'a>>,
}

impl<'a> QuotaDto<'a> {
    /// One entry per name in `names` (configured endpoints first), from `quotas` (the endpoints
    /// that reported limits), with times relative to `now`.
    pub(crate) fn new(
        names: &'a [String],
        quotas: &'a [EndpointQuotaView],
        now: SystemTime,
    ) -> Self {
        QuotaDto {
            endpoints: names
                .iter()
                .map(|name| EndpointQuotaDto {
                    endpoint: name,
                    readings: QuotaReadingsDto::new(
                        quotas.iter().find(|quota| quota.endpoint == *name),
                        now,
                    ),
                })
                .collect(),
        }
    }
}

/// One endpoint's quota.
#[derive(Debug, Serialize)]
struct EndpointQuotaDto<'a> {
    endpoint: &'a str,
    #[serde(flatten)]
    readings: QuotaReadingsDto,
}

/// What an endpoint's latest rate-limit headers said, or that it said nothing: an endpoint that
/// never reported limits has six keys besides its name, not the readings' eleven.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum QuotaReadingsDto {
    Unreported {
        reported: bool,
        draining: bool,
        drain_reason: Option<DrainReasonDto>,
        dimensions: Vec<DimensionDto>,
        blocked_until: Option<String>,
        subscription: Option<SubscriptionDto>,
    },
    Reported(ReportedQuotaDto),
}

impl QuotaReadingsDto {
    fn new(quota: Option<&EndpointQuotaView>, now: SystemTime) -> Self {
        match quota {
            None => QuotaReadingsDto::Unreported {
                reported: false,
                draining: false,
                drain_reason: None,
                dimensions: Vec::new(),
                blocked_until: None,
                subscription: None,
            },
            Some(quota) => QuotaReadingsDto::Reported(ReportedQuotaDto::new(quota, now)),
        }
    }
}

/// An endpoint's latest readings, burn rates and predictions.
#[derive(Debug, Serialize)]
struct ReportedQuotaDto {
    reported: bool,
    draining: bool,
    drain_reason: Option<DrainReasonDto>,
    retry_after_seconds: Option<f64>,
    predicted_exhaustion_in_seconds: Option<f64>,
    predicted_exhaustion_at: Option<String>,
    last_observed_seconds_ago: Option<f64>,
    dimensions: Vec<DimensionDto>,
    /// The end of the router's rate-limit block (a 429's reset, a rejected account's reset).
    blocked_until: Option<String>,
    /// The subscription account (`anthropic-ratelimit-unified-*`), when it reported one.
    subscription: Option<SubscriptionDto>,
}

impl ReportedQuotaDto {
    fn new(quota: &EndpointQuotaView, now: SystemTime) -> Self {
        ReportedQuotaDto {
            reported: true,
            draining: quota.draining.is_some(),
            drain_reason: quota.draining.map(DrainReasonDto::from),
            retry_after_seconds: seconds(quota.retry_after_in),
            predicted_exhaustion_in_seconds: seconds(quota.predicted_exhaustion_in),
            predicted_exhaustion_at: at(now, quota.predicted_exhaustion_in),
            last_observed_seconds_ago: seconds(quota.last_observed_ago),
            dimensions: quota
                .dimensions
                .iter()
                .map(|dimension| DimensionDto::new(dimension, now))
                .collect(),
            blocked_until: at(now, quota.blocked_for),
            subscription: quota
                .subscription
                .as_ref()
                .map(|subscription| SubscriptionDto::new(subscription, now)),
        }
    }
}

/// A subscription account: its status, the window that decides, every window's use and reset.
#[derive(Debug, Serialize)]
struct SubscriptionDto {
    status: Option<&'static str>,
    representative_claim: Option<String>,
    representative_window: Option<String>,
    utilization: Option<f64>,
    reset_at: Option<String>,
    rejected: bool,
    draining: bool,
    drain_at: f64,
    windows: Vec<WindowDto>,
}

impl SubscriptionDto {
    fn new(subscription: &SubscriptionView, now: SystemTime) -> Self {
        SubscriptionDto {
            status: subscription.status.map(|status| status.as_str()),
            representative_claim: subscription.representative_claim.clone(),
            representative_window: subscription.representative_window.clone(),
            utilization: subscription.utilization,
            reset_at: at(now, subscription.reset_in),
            rejected: subscription.rejected,
            draining: subscription.draining,
            drain_at: subscription.drain_at,
            windows: subscription
                .windows
                .iter()
                .map(|window| WindowDto::new(window, now))
                .collect(),
        }
    }
}

/// One usage window of a subscription account.
#[derive(Debug, Serialize)]
struct WindowDto {
    window: String,
    utilization: Option<f64>,
    reset_at: Option<String>,
    current: bool,
    representative: bool,
}

impl WindowDto {
    fn new(window: &WindowView, now: SystemTime) -> Self {
        WindowDto {
            window: window.window.clone(),
            utilization: window.utilization,
            reset_at: at(now, window.reset_in),
            current: window.current,
            representative: window.representative,
        }
    }
}

/// Why new sessions avoid an endpoint: `{"reason": ...}` plus the dimension when one is at
/// fault.
#[derive(Debug, Serialize)]
struct DrainReasonDto {
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimension: Option<&'static str>,
}

impl From<DrainReason> for DrainReasonDto {
    fn from(reason: DrainReason) -> Self {
        let (reason, dimension) = match reason {
            DrainReason::RetryAfter => ("retry_after", None),
            DrainReason::SubscriptionRejected => ("subscription_rejected", None),
            DrainReason::SubscriptionUsed => ("subscription_used", None),
            DrainReason::Exhausted { dimension } => ("exhausted", Some(dimension)),
            DrainReason::Predicted { dimension } => ("predicted", Some(dimension)),
        };
        DrainReasonDto {
            reason,
            dimension: dimension.map(dimension_word),
        }
    }
}

/// One dimension of one endpoint.
#[derive(Debug, Serialize)]
struct DimensionDto {
    dimension: &'static str,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_in_seconds: Option<f64>,
    reset_at: Option<String>,
    reset_passed: bool,
    burn_rate_per_sec: Option<f64>,
    predicted_exhaustion_in_seconds: Option<f64>,
    runs_out_before_reset: bool,
}

impl DimensionDto {
    fn new(dimension: &DimensionView, now: SystemTime) -> Self {
        DimensionDto {
            dimension: dimension_word(dimension.dimension),
            limit: dimension.limit,
            remaining: dimension.remaining,
            reset_in_seconds: seconds(dimension.reset_in),
            reset_at: at(now, dimension.reset_in),
            reset_passed: dimension.reset_passed,
            burn_rate_per_sec: dimension.burn_rate_per_sec,
            predicted_exhaustion_in_seconds: seconds(dimension.predicted_exhaustion_in),
            runs_out_before_reset: dimension.runs_out_before_reset,
        }
    }
}

fn seconds(left: Option<Duration>) -> Option<f64> {
    left.map(|left| left.as_secs_f64())
}

fn at(now: SystemTime, left: Option<Duration>) -> Option<String> {
    left.and_then(|left| now.checked_add(left)).map(rfc3339)
}
