//! Quota and rate-limit awareness: what each endpoint's upstream says is left, and when it will
//! run out.
//!
//! Every upstream answer may carry `anthropic-ratelimit-<dimension>-limit|remaining|reset`
//! (dimensions: requests, input tokens, output tokens, tokens) and `retry-after`. The proxy
//! turns them into a [`QuotaObservation`]; the [`QuotaBook`] keeps, per endpoint and dimension,
//! the latest limit, remaining and reset, plus recent `remaining` samples to estimate the burn
//! rate. From them it predicts when the endpoint runs out ([`QuotaBook::predicted_exhaustion`])
//! and whether new sessions should avoid it ([`QuotaBook::draining`]): when a dimension is at 0
//! before its reset, when it is predicted to reach 0 before its reset, or while a `retry-after`
//! runs. Everything ends by itself at the reset: a reading whose reset has passed no longer
//! counts, so the endpoint takes new sessions again.
//!
//! Subscription accounts (`anthropic-ratelimit-unified-*`, see [`crate::subscription`]) are
//! kept beside the dimensions: an account that said `rejected` counts as exhausted until its
//! reset (the router also blocks the endpoint until then, [`Router::record_quota`]), and one
//! whose representative window is used at or above the drain threshold
//! ([`QuotaBook::set_drain_at`], `routing.quota_drain_at`) drains. [`QuotaBook::record`]
//! reports the crossing of either as a [`QuotaAlert`], once.
//!
//! Burn rate: the net fall of `remaining` between the oldest and the newest sample of the
//! current window (samples of the last [`RATE_WINDOW`], at most [`MAX_SAMPLES`]; a rise of
//! `remaining` means the limit was replenished and starts a new window), divided by the time
//! between them, never less than [`MIN_RATE_SPAN`] so a burst of parallel requests does not
//! read as an endless stream. Predicted exhaustion: `newest sample time + remaining / rate`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::state::instant_after;
use crate::subscription::{
    QuotaAlert, SubscriptionReading, SubscriptionState, SubscriptionView, DEFAULT_QUOTA_DRAIN_AT,
};
use crate::{Router, RouterEvent};

/// Samples older than this (relative to the newest) do not count in the burn rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept per endpoint and dimension.
pub const MAX_SAMPLES: usize = 32;
/// The shortest time span a burn rate is computed over.
pub const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

/// One rate-limited quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaDimension {
    /// `anthropic-ratelimit-requests-*`.
    Requests,
    /// `anthropic-ratelimit-input-tokens-*`.
    InputTokens,
    /// `anthropic-ratelimit-output-tokens-*`.
    OutputTokens,
    /// `anthropic-ratelimit-tokens-*` (input and output together).
    Tokens,
}

impl QuotaDimension {
    /// Every dimension.
    pub const ALL: [QuotaDimension; 4] = [
        QuotaDimension::Requests,
        QuotaDimension::InputTokens,
        QuotaDimension::OutputTokens,
        QuotaDimension::Tokens,
    ];

    /// The header name part: `anthropic-ratelimit-<this>-remaining`.
    pub fn header_part(self) -> &'static str {
        match self {
            QuotaDimension::Requests => "requests",
            QuotaDimension::InputTokens => "input-tokens",
            QuotaDimension::OutputTokens => "output-tokens",
            QuotaDimension::Tokens => "tokens",
        }
    }
}

/// What one answer said about one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReading {
    /// The dimension.
    pub dimension: QuotaDimension,
    /// `-limit`.
    pub limit: Option<u64>,
    /// `-remaining`.
    pub remaining: Option<u64>,
    /// `-reset`, as a time from the moment the answer was seen.
    pub reset_in: Option<Duration>,
}

/// What one upstream answer said about its limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaObservation {
    /// One reading per dimension present.
    pub readings: Vec<QuotaReading>,
    /// `retry-after`, when present.
    pub retry_after: Option<Duration>,
    /// The subscription account's `anthropic-ratelimit-unified-*` headers, when present.
    pub subscription: Option<SubscriptionReading>,
}

impl QuotaObservation {
    /// Nothing was said.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.retry_after.is_none()
            && self
                .subscription
                .as_ref()
                .is_none_or(SubscriptionReading::is_empty)
    }
}

/// Why new sessions avoid an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// A `retry-after` is running.
    RetryAfter,
    /// The subscription account said `rejected` and its reset has not come.
    SubscriptionRejected,
    /// The subscription account's representative window is used at or above the drain
    /// threshold.
    SubscriptionUsed,
    /// A dimension is at 0 and its reset has not come.
    Exhausted {
        /// The dimension.
        dimension: QuotaDimension,
    },
    /// A dimension is predicted to reach 0 before its reset.
    Predicted {
        /// The dimension.
        dimension: QuotaDimension,
    },
}

#[derive(Debug, Clone)]
struct DimensionState {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    observed_at: Instant,
    /// `(time, remaining)`, oldest first, all in the current window.
    samples: VecDeque<(Instant, u64)>,
}

impl DimensionState {
    fn record(&mut self, reading: &QuotaReading, now: Instant) {
        if reading.limit.is_some() {
            self.limit = reading.limit;
        }
        if let Some(reset_in) = reading.reset_in {
            self.reset_at = Some(instant_after(now, reset_in));
        }
        if let Some(remaining) = reading.remaining {
            let replenished = self
                .samples
                .back()
                .is_some_and(|(_, previous)| remaining > *previous);
            if replenished {
                self.samples.clear();
            }
            self.samples.push_back((now, remaining));
            while self.samples.len() > MAX_SAMPLES
                || self
                    .samples
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_WINDOW)
            {
                self.samples.pop_front();
            }
            self.remaining = Some(remaining);
        }
        self.observed_at = now;
    }

    /// The reading still counts: its reset has not passed (a reading without a reset counts
    /// for [`RATE_WINDOW`]).
    fn is_current(&self, now: Instant) -> bool {
        match self.reset_at {
            Some(reset_at) => now < reset_at,
            None => now.saturating_duration_since(self.observed_at) < RATE_WINDOW,
        }
    }

    /// Units per second, from the current window's samples.
    fn burn_rate(&self) -> Option<f64> {
        let (first_at, first) = *self.samples.front()?;
        let (last_at, last) = *self.samples.back()?;
        if self.samples.len() < 2 || last >= first {
            return None;
        }
        let span = last_at
            .saturating_duration_since(first_at)
            .max(MIN_RATE_SPAN);
        Some((first - last) as f64 / span.as_secs_f64())
    }

    fn predicted_exhaustion(&self) -> Option<Instant> {
        let remaining = self.remaining?;
        let (last_at, _) = *self.samples.back()?;
        if remaining == 0 {
            return Some(last_at);
        }
        let rate = self.burn_rate()?;
        let seconds = remaining as f64 / rate;
        Duration::try_from_secs_f64(seconds)
            .ok()
            .map(|left| instant_after(last_at, left))
    }

    fn exhausted(&self, now: Instant) -> bool {
        self.remaining == Some(0) && self.reset_at.is_some_and(|reset_at| now < reset_at)
    }

    /// Predicted to reach 0 before the reset.
    fn runs_out_before_reset(&self, now: Instant) -> bool {
        match (self.predicted_exhaustion(), self.reset_at) {
            (Some(exhaustion), Some(reset_at)) => now < reset_at && exhaustion < reset_at,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct EndpointQuota {
    dimensions: BTreeMap<QuotaDimension, DimensionState>,
    retry_after_until: Option<Instant>,
    last_observed: Option<Instant>,
    subscription: Option<SubscriptionState>,
}

/// One dimension of one endpoint as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionView {
    /// The dimension.
    pub dimension: QuotaDimension,
    /// Latest `-limit`.
    pub limit: Option<u64>,
    /// Latest `-remaining`.
    pub remaining: Option<u64>,
    /// Time left before the reset; `None` when unknown or passed.
    pub reset_in: Option<Duration>,
    /// The reset has passed: the numbers are stale and do not count.
    pub reset_passed: bool,
    /// Estimated use per second.
    pub burn_rate_per_sec: Option<f64>,
    /// Time left before it is predicted to reach 0 (zero when it is at 0).
    pub predicted_exhaustion_in: Option<Duration>,
    /// Predicted to reach 0 before the reset.
    pub runs_out_before_reset: bool,
}

/// One endpoint's quota as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointQuotaView {
    /// Endpoint name.
    pub endpoint: String,
    /// Every dimension it reported.
    pub dimensions: Vec<DimensionView>,
    /// Time left on a `retry-after`.
    pub retry_after_in: Option<Duration>,
    /// The earliest predicted exhaustion over the current dimensions.
    pub predicted_exhaustion_in: Option<Duration>,
    /// Why new sessions avoid it now; `None` when they do not.
    pub draining: Option<DrainReason>,
    /// Time since its last answer with rate-limit information.
    pub last_observed_ago: Option<Duration>,
    /// Its subscription account, when it reported `anthropic-ratelimit-unified-*` headers.
    pub subscription: Option<SubscriptionView>,
    /// Time left on the router's rate-limit block of the endpoint (filled by
    /// [`Router::quota_view`]; `None` from [`QuotaBook::view`]).
    pub blocked_for: Option<Duration>,
}

/// Per-endpoint limits, burn rates and predictions. See the module docs.
#[derive(Debug, Clone)]
pub struct QuotaBook {
    endpoints: BTreeMap<String, EndpointQuota>,
    /// `routing.quota_drain_at`.
    drain_at: f64,
}

impl Default for QuotaBook {
    fn default() -> Self {
        QuotaBook {
            endpoints: BTreeMap::new(),
            drain_at: DEFAULT_QUOTA_DRAIN_AT,
        }
    }
}

impl QuotaBook {
    /// An empty book.
    pub fn new() -> QuotaBook {
        QuotaBook::default()
    }

    /// Sets the subscription drain threshold (`routing.quota_drain_at`, validated in (0, 1]).
    pub fn set_drain_at(&mut self, drain_at: f64) {
        self.drain_at = drain_at;
    }

    /// The subscription drain threshold in force.
    pub fn drain_at(&self) -> f64 {
        self.drain_at
    }

    /// Records what an answer from `endpoint` said at `now`. An empty observation changes
    /// nothing. Returns the alert when the endpoint's subscription account crossed the drain
    /// threshold or was rejected (once per crossing).
    pub fn record(
        &mut self,
        endpoint: &str,
        observation: &QuotaObservation,
        now: Instant,
    ) -> Option<QuotaAlert> {
        if observation.is_empty() {
            return None;
        }
        let drain_at = self.drain_at;
        let quota = self.endpoints.entry(endpoint.to_string()).or_default();
        for reading in &observation.readings {
            quota
                .dimensions
                .entry(reading.dimension)
                .or_insert_with(|| DimensionState {
                    limit: None,
                    remaining: None,
                    reset_at: None,
                    observed_at: now,
                    samples: VecDeque::new(),
                })
                .record(reading, now);
        }
        if let Some(wait) = observation.retry_after {
            quota.retry_after_until = Some(instant_after(now, wait));
        }
        quota.last_observed = Some(now);
        let reading = observation
            .subscription
            .as_ref()
            .filter(|reading| !reading.is_empty())?;
        quota
            .subscription
            .get_or_insert_with(|| SubscriptionState::new(now))
            .record(endpoint, reading, drain_at, now)
    }

    /// When `endpoint`'s subscription account is served again if it said `rejected` (its
    /// reset); `None` when it is not rejected at `now`.
    pub fn rejected_until(&self, endpoint: &str, now: Instant) -> Option<Instant> {
        self.endpoints
            .get(endpoint)?
            .subscription
            .as_ref()?
            .rejected_until(now)
    }

    /// The earliest time a current dimension of `endpoint` is predicted to reach 0; `None`
    /// without a burn or without readings.
    pub fn predicted_exhaustion(&self, endpoint: &str, now: Instant) -> Option<Instant> {
        self.endpoints
            .get(endpoint)?
            .dimensions
            .values()
            .filter(|state| state.is_current(now))
            .filter_map(DimensionState::predicted_exhaustion)
            .min()
    }

    /// A current dimension of `endpoint` is at 0 before its reset, or its subscription account
    /// is rejected until its reset.
    pub fn exhausted(&self, endpoint: &str, now: Instant) -> bool {
        self.endpoints.get(endpoint).is_some_and(|quota| {
            quota.dimensions.values().any(|state| state.exhausted(now))
                || quota
                    .subscription
                    .as_ref()
                    .is_some_and(|subscription| subscription.rejected(now))
        })
    }

    /// Why new sessions should avoid `endpoint` at `now`, if they should.
    pub fn draining(&self, endpoint: &str, now: Instant) -> Option<DrainReason> {
        let quota = self.endpoints.get(endpoint)?;
        if let Some(subscription) = &quota.subscription {
            if subscription.rejected(now) {
                return Some(DrainReason::SubscriptionRejected);
            }
        }
        if quota.retry_after_until.is_some_and(|until| now < until) {
            return Some(DrainReason::RetryAfter);
        }
        if let Some((dimension, _)) = quota
            .dimensions
            .iter()
            .find(|(_, state)| state.exhausted(now))
        {
            return Some(DrainReason::Exhausted {
                dimension: *dimension,
            });
        }
        if quota
            .subscription
            .as_ref()
            .is_some_and(|subscription| subscription.draining(self.drain_at, now))
        {
            return Some(DrainReason::SubscriptionUsed);
        }
        quota
            .dimensions
            .iter()
            .find(|(_, state)| state.runs_out_before_reset(now))
            .map(|(dimension, _)| DrainReason::Predicted {
                dimension: *dimension,
            })
    }

    /// Every endpoint that reported limits, by name.
    pub fn view(&self, now: Instant) -> Vec<EndpointQuotaView> {
        self.endpoints
            .iter()
            .map(|(name, quota)| EndpointQuotaView {
                endpoint: name.clone(),
                dimensions: quota
                    .dimensions
                    .iter()
                    .map(|(dimension, state)| {
                        let current = state.is_current(now);
                        DimensionView {
                            dimension: *dimension,
                            limit: state.limit,
                            remaining: state.remaining,
                            reset_in: state
                                .reset_at
                                .filter(|reset_at| now < *reset_at)
                                .map(|reset_at| reset_at - now),
                            reset_passed: !current,
                            burn_rate_per_sec: state.burn_rate().filter(|_| current),
                            predicted_exhaustion_in: state
                                .predicted_exhaustion()
                                .filter(|_| current)
                                .map(|at| at.saturating_duration_since(now)),
                            runs_out_before_reset: state.runs_out_before_reset(now),
                        }
                    })
                    .collect(),
                retry_after_in: quota
                    .retry_after_until
                    .filter(|until| now < *until)
                    .map(|until| until - now),
                predicted_exhaustion_in: self
                    .predicted_exhaustion(name, now)
                    .map(|at| at.saturating_duration_since(now)),
                draining: self.draining(name, now),
                last_observed_ago: quota
                    .last_observed
                    .map(|at| now.saturating_duration_since(at)),
                subscription: quota
                    .subscription
                    .as_ref()
                    .map(|subscription| subscription.view(self.drain_at, now)),
                blocked_for: None,
            })
            .collect()
    }
}

/// What recording one answer's rate-limit headers changed ([`Router::record_quota`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaRecorded {
    /// The subscription account crossed the drain threshold or was rejected (once per
    /// crossing).
    pub alert: Option<QuotaAlert>,
    /// The endpoint was blocked until its account's reset (a `rejected` status).
    pub events: Vec<RouterEvent>,
}

impl Router {
    /// Records the rate-limit headers of an answer from `endpoint` (see [`QuotaBook::record`]).
    /// An account that said `rejected` blocks the endpoint until its reset (the ordinary
    /// rate-limit block: plans leave it out meanwhile); a longer block already in place stays.
    pub fn record_quota(
        &mut self,
        endpoint: &str,
        observation: &QuotaObservation,
        now: Instant,
    ) -> QuotaRecorded {
        let alert = self.quota.record(endpoint, observation, now);
        let mut events = Vec::new();
        if let Some(until) = self.quota.rejected_until(endpoint, now) {
            let blocked_longer = self
                .endpoint_position(endpoint)
                .and_then(|position| self.endpoints[position].blocked_until)
                .is_some_and(|current| current >= until);
            if !blocked_longer {
                events = self.block_until(endpoint, until);
            }
        }
        QuotaRecorded { alert, events }
    }

    /// Sets the subscription drain threshold (`routing.quota_drain_at`).
    pub fn set_quota_drain_at(&mut self, drain_at: f64) {
        self.quota.set_drain_at(drain_at);
    }

    /// The quota of every endpoint that reported one, at `now`, with the time left on each
    /// endpoint's rate-limit block.
    pub fn quota_view(&self, now: Instant) -> Vec<EndpointQuotaView> {
        let mut views = self.quota.view(now);
        for view in &mut views {
            view.blocked_for = self
                .endpoint_position(&view.endpoint)
                .and_then(|position| self.endpoints[position].blocked_until)
                .filter(|until| now < *until)
                .map(|until| until - now);
        }
        views
    }

    /// The quota book (predictions for one endpoint).
    pub fn quota(&self) -> &QuotaBook {
        &self.quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn requests(remaining: u64, reset_in: Duration) -> QuotaObservation {
        QuotaObservation {
            readings: vec![QuotaReading {
                dimension: QuotaDimension::Requests,
                limit: Some(100),
                remaining: Some(remaining),
                reset_in: Some(reset_in),
            }],
            retry_after: None,
            subscription: None,
        }
    }

    /// One scenario: `(seconds after start, remaining, reset in seconds)` readings, then the
    /// drain verdict expected at `check_at` seconds.
    fn check(
        name: &str,
        readings: &[(u64, u64, u64)],
        check_at: u64,
        expected: Option<DrainReason>,
    ) {
        let start = Instant::now();
        let mut book = QuotaBook::new();
        for (at, remaining, reset) in readings {
            book.record(
                "e",
                &requests(*remaining, SEC * u32::try_from(*reset).expect("small")),
                start + SEC * u32::try_from(*at).expect("small"),
            );
        }
        let now = start + SEC * u32::try_from(check_at).expect("small");
        assert_eq!(book.draining("e", now), expected, "{name}");
    }

    const PREDICTED: Option<DrainReason> = Some(DrainReason::Predicted {
        dimension: QuotaDimension::Requests,
    });
    const EXHAUSTED: Option<DrainReason> = Some(DrainReason::Exhausted {
        dimension: QuotaDimension::Requests,
    });

    #[test]
    fn drains_endpoints_predicted_to_run_out_before_their_reset() {
        check("one reading: no rate yet", &[(0, 10, 60)], 1, None);
        check(
            "fast burn, far reset: drain",
            &[(0, 30, 60), (1, 20, 59), (2, 10, 58)],
            2,
            PREDICTED,
        );
        check(
            "slow burn: runs out after the reset",
            &[(0, 90, 60), (10, 89, 50), (20, 88, 40)],
            20,
            None,
        );
        check(
            "a burst over a few ms counts as one second",
            &[(0, 95, 5), (0, 94, 5), (0, 93, 5)],
            0,
            None,
        );
        check(
            "at zero before the reset: exhausted",
            &[(0, 0, 30)],
            1,
            EXHAUSTED,
        );
        check(
            "back after the reset",
            &[(0, 30, 60), (1, 20, 59), (2, 10, 58)],
            60,
            None,
        );
        check("exhausted ends at the reset", &[(0, 0, 30)], 30, None);
        check(
            "replenished: the burn window starts again",
            &[(0, 30, 60), (1, 20, 59), (2, 100, 60)],
            2,
            None,
        );
        check(
            "rising then falling slowly: only the new window counts",
            &[(0, 50, 60), (1, 10, 59), (2, 100, 60), (30, 99, 32)],
            30,
            None,
        );
    }

    #[test]
    fn retry_after_drains_until_it_passes() {
        let start = Instant::now();
        let mut book = QuotaBook::new();
        book.record(
            "e",
            &QuotaObservation {
                readings: Vec::new(),
                retry_after: Some(10 * SEC),
                subscription: None,
            },
            start,
        );
        assert_eq!(
            book.draining("e", start + 9 * SEC),
            Some(DrainReason::RetryAfter)
        );
        assert_eq!(book.draining("e", start + 10 * SEC), None);
        assert_eq!(book.draining("unknown", start), None);
    }

    #[test]
    fn predicted_exhaustion_is_remaining_over_the_burn_rate() {
        let start = Instant::now();
        let mut book = QuotaBook::new();
        book.record("e", &requests(50, 100 * SEC), start);
        book.record("e", &requests(40, 95 * SEC), start + 5 * SEC);
        // 10 requests in 5 s = 2/s; 40 left: 20 s after the last sample.
        assert_eq!(
            book.predicted_exhaustion("e", start + 5 * SEC),
            Some(start + 25 * SEC)
        );
        let view = book.view(start + 5 * SEC);
        let dimension = &view[0].dimensions[0];
        assert_eq!(dimension.remaining, Some(40));
        assert_eq!(dimension.limit, Some(100));
        assert_eq!(dimension.burn_rate_per_sec, Some(2.0));
        assert_eq!(dimension.predicted_exhaustion_in, Some(20 * SEC));
        assert_eq!(dimension.reset_in, Some(95 * SEC));
        assert!(dimension.runs_out_before_reset);
        assert_eq!(view[0].draining, PREDICTED);
        // After the reset the reading is stale and predicts nothing.
        let after = book.view(start + 101 * SEC);
        assert!(after[0].dimensions[0].reset_passed);
        assert_eq!(after[0].predicted_exhaustion_in, None);
        assert_eq!(after[0].draining, None);
    }

    fn subscription(
        status: crate::SubscriptionStatus,
        five_hour: f64,
        reset_secs: u64,
    ) -> QuotaObservation {
        QuotaObservation {
            subscription: Some(SubscriptionReading {
                status: Some(status),
                reset_in: Some(Duration::from_secs(reset_secs)),
                representative_claim: Some("five_hour".to_string()),
                windows: vec![crate::WindowReading {
                    window: "5h".to_string(),
                    utilization: Some(five_hour),
                    reset_in: Some(Duration::from_secs(reset_secs)),
                }],
            }),
            ..QuotaObservation::default()
        }
    }

    #[test]
    fn a_rejected_account_blocks_its_endpoint_until_the_reset_and_a_used_one_drains() {
        use crate::test_support::{endpoint, AUTO};
        use crate::SubscriptionStatus::{Allowed, Rejected};
        let start = Instant::now();
        let mut router = Router::new(
            &[endpoint(("a", "main", 1, 1)), endpoint(("b", "main", 1, 2))],
            AUTO,
        );
        let order = |router: &mut Router, now: Instant| -> Vec<String> {
            let (plan, _) = router.plan_session(None, &|_| true, now);
            plan.endpoints.into_iter().map(|e| e.name).collect()
        };
        let recorded = router.record_quota("a", &subscription(Allowed, 0.95, 100), start);
        let alert = recorded.alert.expect("crossed the default 0.9");
        assert_eq!(alert.window, "five_hour");
        assert!(recorded.events.is_empty(), "draining does not block");
        assert_eq!(
            router.quota().draining("a", start),
            Some(DrainReason::SubscriptionUsed)
        );
        assert!(!router.quota().exhausted("a", start));
        assert_eq!(order(&mut router, start), ["b", "a"], "drained last");
        // A higher threshold: no longer draining.
        router.set_quota_drain_at(0.96);
        assert_eq!(router.quota().draining("a", start), None);
        assert_eq!(order(&mut router, start), ["a", "b"]);

        let recorded = router.record_quota("a", &subscription(Rejected, 1.0, 30), start);
        assert!(recorded.alert.expect("rejected").rejected);
        assert_eq!(
            recorded.events,
            vec![RouterEvent::EndpointBlocked {
                endpoint: "a".to_string(),
                until: start + 30 * SEC,
            }]
        );
        assert_eq!(order(&mut router, start + 29 * SEC), ["b"], "blocked");
        let view = router.quota_view(start + 10 * SEC);
        assert_eq!(view[0].blocked_for, Some(20 * SEC));
        let shown = view[0].subscription.as_ref().expect("subscription shown");
        assert!(shown.rejected);
        assert_eq!(shown.representative_window.as_deref(), Some("5h"));
        assert_eq!(shown.utilization, Some(1.0));
        assert_eq!(shown.windows[0].reset_in, Some(20 * SEC));
        // The same answer again: no second alert, no second block event.
        let again = router.record_quota("a", &subscription(Rejected, 1.0, 20), start + 10 * SEC);
        assert_eq!(again, QuotaRecorded::default());
        // At the reset the endpoint serves again.
        assert_eq!(order(&mut router, start + 30 * SEC), ["a", "b"]);
        assert_eq!(router.quota_view(start + 30 * SEC)[0].blocked_for, None);
    }

    #[test]
    fn samples_are_bounded() {
        let start = Instant::now();
        let mut book = QuotaBook::new();
        for step in 0..1000u32 {
            book.record(
                "e",
                &requests(u64::from(5000 - step), 3600 * SEC),
                start + Duration::from_millis(u64::from(step)),
            );
        }
        let state = &book.endpoints["e"].dimensions[&QuotaDimension::Requests];
        assert_eq!(state.samples.len(), MAX_SAMPLES);
    }
}
