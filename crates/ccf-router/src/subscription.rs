//! Subscription quotas: what a Claude Pro/Max account (an OAuth token) says about its usage
//! windows in the `anthropic-ratelimit-unified-*` headers, kept per endpoint by the
//! [`crate::QuotaBook`].
//!
//! An answer carries the account's overall `-status` (`allowed`, `allowed_warning`,
//! `rejected`), its `-reset` (when a rejected account is served again), the
//! `-representative-claim` (the window that decides: `five_hour`, `seven_day`, ...) and, per
//! window, `-<window>-utilization` (fraction used, 0-1) and `-<window>-reset`. The proxy parses
//! them into a [`SubscriptionReading`]; this module keeps the latest of each and answers three
//! questions with the clock passed in:
//!
//! - *rejected*: the account said `rejected` and its reset has not come. The router blocks the
//!   endpoint until then (its ordinary rate-limit block), so no request reaches it meanwhile;
//! - *used up to the drain threshold*: the representative window's utilization is at or above
//!   `routing.quota_drain_at`. New sessions avoid the endpoint, bound sessions stay;
//! - *a crossing*: the endpoint went from below the threshold to at/above it, or to rejected.
//!   [`crate::QuotaBook::record`] reports it once as a [`QuotaAlert`], not for every answer.
//!
//! A reading counts until its reset; one without a reset counts for
//! [`SUBSCRIPTION_READING_TTL`] after the answer that carried it. The representative window is
//! the one the claim names (`five_hour` is the `5h` window, `seven_day` the `7d` window,
//! `seven_day_opus` the `7d_opus` window); without a claim, or when the claim's window was not
//! reported, the most used current window decides.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::state::instant_after;

/// Default of `routing.quota_drain_at`: new sessions avoid an account whose representative
/// window is 90 % used.
pub const DEFAULT_QUOTA_DRAIN_AT: f64 = 0.9;

/// How long a subscription reading without a reset time counts.
pub const SUBSCRIPTION_READING_TTL: Duration = Duration::from_secs(600);

/// How long an endpoint is blocked when its account says `rejected` without saying when it
/// resets.
pub const REJECTED_WITHOUT_RESET_BLOCK: Duration = Duration::from_secs(300);

/// Most windows kept per endpoint (the headers come from the upstream: a relay inventing window
/// names must not grow the book, nor the metric's series, without bound).
pub const MAX_WINDOWS: usize = 8;

/// `anthropic-ratelimit-unified-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// `allowed`.
    Allowed,
    /// `allowed_warning`: close to a limit.
    AllowedWarning,
    /// `rejected`: spent until the reset.
    Rejected,
}

impl SubscriptionStatus {
    /// The header's value for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Allowed => "allowed",
            SubscriptionStatus::AllowedWarning => "allowed_warning",
            SubscriptionStatus::Rejected => "rejected",
        }
    }

    /// Parses a header value (ASCII case-insensitive); `None` for anything else.
    pub fn parse(value: &str) -> Option<SubscriptionStatus> {
        [
            SubscriptionStatus::Allowed,
            SubscriptionStatus::AllowedWarning,
            SubscriptionStatus::Rejected,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(value.trim()))
    }
}

/// What one answer said about one usage window (`anthropic-ratelimit-unified-<window>-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReading {
    /// The window as the header names it (`5h`, `7d`, ...).
    pub window: String,
    /// `-utilization`: fraction used, clamped to 0-1.
    pub utilization: Option<f64>,
    /// `-reset`, as a time from the moment the answer was seen.
    pub reset_in: Option<Duration>,
}

/// What one answer said about its subscription account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionReading {
    /// `-status`.
    pub status: Option<SubscriptionStatus>,
    /// `-reset`, as a time from the moment the answer was seen.
    pub reset_in: Option<Duration>,
    /// `-representative-claim` (`five_hour`, `seven_day`, ...).
    pub representative_claim: Option<String>,
    /// One entry per window reported (at most [`MAX_WINDOWS`]).
    pub windows: Vec<WindowReading>,
}

impl SubscriptionReading {
    /// Nothing was said.
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.reset_in.is_none()
            && self.representative_claim.is_none()
            && self.windows.is_empty()
    }
}

/// The window label a representative claim names: `five_hour` -> `5h`, `seven_day` -> `7d`,
/// `seven_day_opus` -> `7d_opus`; any other claim is its own label.
pub fn window_of_claim(claim: &str) -> String {
    for (long, short) in [("five_hour", "5h"), ("seven_day", "7d")] {
        if let Some(rest) = claim.strip_prefix(long) {
            return format!("{short}{rest}");
        }
    }
    claim.to_string()
}

/// An endpoint crossed the drain threshold or was rejected (reported once per crossing).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaAlert {
    /// The endpoint.
    pub endpoint: String,
    /// The representative window as the upstream named it (its claim, else the window label).
    pub window: String,
    /// Fraction of the window used (1 when rejected without a utilization).
    pub utilization: f64,
    /// The account said `rejected`: the endpoint is blocked until `resets_in`.
    pub rejected: bool,
    /// Time left before the window (or, when rejected, the account) resets.
    pub resets_in: Option<Duration>,
}

/// One window of one endpoint as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    /// The window label (`5h`, `7d`, ...).
    pub window: String,
    /// Latest utilization, 0-1.
    pub utilization: Option<f64>,
    /// Time left before its reset; `None` when unknown or passed.
    pub reset_in: Option<Duration>,
    /// The reading still counts (its reset has not passed).
    pub current: bool,
    /// This is the representative window.
    pub representative: bool,
}

/// One endpoint's subscription account as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionView {
    /// Latest `-status`; `None` when it is no longer current.
    pub status: Option<SubscriptionStatus>,
    /// Latest `-representative-claim`.
    pub representative_claim: Option<String>,
    /// The window that decides (see the module docs).
    pub representative_window: Option<String>,
    /// Utilization of the representative window, when current.
    pub utilization: Option<f64>,
    /// Time left before the account's `-reset`; `None` when unknown or passed.
    pub reset_in: Option<Duration>,
    /// Rejected and its reset has not come.
    pub rejected: bool,
    /// Utilization at or above the drain threshold: new sessions avoid the endpoint.
    pub draining: bool,
    /// The drain threshold in force (`routing.quota_drain_at`).
    pub drain_at: f64,
    /// Every window reported.
    pub windows: Vec<WindowView>,
}

/// How far over its limits an endpoint is; an alert goes out when this rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) enum AlertLevel {
    /// Below the drain threshold.
    #[default]
    Clear,
    /// At or above the drain threshold.
    Draining,
    /// Rejected.
    Rejected,
}

#[derive(Debug, Clone)]
struct WindowState {
    utilization: Option<f64>,
    reset_at: Option<Instant>,
    observed_at: Instant,
}

impl WindowState {
    fn is_current(&self, now: Instant) -> bool {
        reading_counts(self.reset_at, self.observed_at, now)
    }
}

/// A reading counts until its reset, or for [`SUBSCRIPTION_READING_TTL`] without one.
fn reading_counts(reset_at: Option<Instant>, observed_at: Instant, now: Instant) -> bool {
    match reset_at {
        Some(reset_at) => now < reset_at,
        None => now.saturating_duration_since(observed_at) < SUBSCRIPTION_READING_TTL,
    }
}

/// One endpoint's subscription account: the latest of everything it said.
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionState {
    status: Option<SubscriptionStatus>,
    reset_at: Option<Instant>,
    status_observed_at: Instant,
    representative_claim: Option<String>,
    windows: BTreeMap<String, WindowState>,
    /// The level last alerted, cleared when the endpoint is back below the threshold.
    alerted: AlertLevel,
}

impl SubscriptionState {
    pub(crate) fn new(now: Instant) -> SubscriptionState {
        SubscriptionState {
            status: None,
            reset_at: None,
            status_observed_at: now,
            representative_claim: None,
            windows: BTreeMap::new(),
            alerted: AlertLevel::Clear,
        }
    }

    /// Records a reading; returns the alert when the endpoint crossed into a higher level.
    pub(crate) fn record(
        &mut self,
        endpoint: &str,
        reading: &SubscriptionReading,
        drain_at: f64,
        now: Instant,
    ) -> Option<QuotaAlert> {
        if self.level(drain_at, now) == AlertLevel::Clear {
            // Back below the threshold (or its readings expired) since the last alert.
            self.alerted = AlertLevel::Clear;
        }
        if reading.status.is_some() || reading.reset_in.is_some() {
            self.status = reading.status;
            self.reset_at = reading.reset_in.map(|left| instant_after(now, left));
            self.status_observed_at = now;
        }
        if let Some(claim) = &reading.representative_claim {
            self.representative_claim = Some(claim.clone());
        }
        for window in &reading.windows {
            if !self.windows.contains_key(&window.window) && self.windows.len() >= MAX_WINDOWS {
                continue;
            }
            let state = self
                .windows
                .entry(window.window.clone())
                .or_insert(WindowState {
                    utilization: None,
                    reset_at: None,
                    observed_at: now,
                });
            if window.utilization.is_some() {
                state.utilization = window.utilization;
            }
            if let Some(reset_in) = window.reset_in {
                state.reset_at = Some(instant_after(now, reset_in));
            }
            state.observed_at = now;
        }
        let level = self.level(drain_at, now);
        if level <= self.alerted {
            if level == AlertLevel::Clear {
                self.alerted = AlertLevel::Clear;
            }
            return None;
        }
        self.alerted = level;
        let representative = self.representative(now);
        let window = self
            .representative_claim
            .clone()
            .or_else(|| representative.map(|(name, _)| name.to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        let rejected = level == AlertLevel::Rejected;
        let utilization = representative
            .and_then(|(_, state)| state.utilization)
            .unwrap_or(if rejected { 1.0 } else { 0.0 });
        let resets_at = if rejected {
            self.reset_at
        } else {
            representative
                .and_then(|(_, state)| state.reset_at)
                .or(self.reset_at)
        };
        Some(QuotaAlert {
            endpoint: endpoint.to_string(),
            window,
            utilization,
            rejected,
            resets_in: resets_at.map(|at| at.saturating_duration_since(now)),
        })
    }

    fn status_is_current(&self, now: Instant) -> bool {
        reading_counts(self.reset_at, self.status_observed_at, now)
    }

    /// Rejected and its reset has not come.
    pub(crate) fn rejected(&self, now: Instant) -> bool {
        self.status == Some(SubscriptionStatus::Rejected) && self.status_is_current(now)
    }

    /// When a rejected account is served again (its `-reset`, else
    /// [`REJECTED_WITHOUT_RESET_BLOCK`] after the answer); `None` when not rejected.
    pub(crate) fn rejected_until(&self, now: Instant) -> Option<Instant> {
        self.rejected(now).then(|| {
            self.reset_at.unwrap_or_else(|| {
                instant_after(self.status_observed_at, REJECTED_WITHOUT_RESET_BLOCK)
            })
        })
    }

    /// The representative window among the current ones (see the module docs).
    fn representative(&self, now: Instant) -> Option<(&str, &WindowState)> {
        let current = || {
            self.windows
                .iter()
                .filter(|(_, state)| state.is_current(now))
        };
        let claimed = self.representative_claim.as_deref().and_then(|claim| {
            let label = window_of_claim(claim);
            current().find(|(name, _)| **name == label || name.as_str() == claim)
        });
        claimed
            .or_else(|| {
                current()
                    .filter(|(_, state)| state.utilization.is_some())
                    .max_by(|(_, a), (_, b)| {
                        a.utilization
                            .unwrap_or(0.0)
                            .total_cmp(&b.utilization.unwrap_or(0.0))
                    })
            })
            .map(|(name, state)| (name.as_str(), state))
    }

    /// The representative window's utilization reached `drain_at`.
    pub(crate) fn draining(&self, drain_at: f64, now: Instant) -> bool {
        self.representative(now)
            .and_then(|(_, state)| state.utilization)
            .is_some_and(|utilization| utilization >= drain_at)
    }

    pub(crate) fn level(&self, drain_at: f64, now: Instant) -> AlertLevel {
        if self.rejected(now) {
            AlertLevel::Rejected
        } else if self.draining(drain_at, now) {
            AlertLevel::Draining
        } else {
            AlertLevel::Clear
        }
    }

    pub(crate) fn view(&self, drain_at: f64, now: Instant) -> SubscriptionView {
        let representative = self.representative(now).map(|(name, _)| name.to_string());
        let left = |at: Option<Instant>| {
            at.filter(|at| now < *at)
                .map(|at| at.saturating_duration_since(now))
        };
        SubscriptionView {
            status: self.status.filter(|_| self.status_is_current(now)),
            representative_claim: self.representative_claim.clone(),
            utilization: self
                .representative(now)
                .and_then(|(_, state)| state.utilization),
            reset_in: left(self.reset_at),
            rejected: self.rejected(now),
            draining: self.draining(drain_at, now),
            drain_at,
            windows: self
                .windows
                .iter()
                .map(|(name, state)| WindowView {
                    window: name.clone(),
                    utilization: state.utilization,
                    reset_in: left(state.reset_at),
                    current: state.is_current(now),
                    representative: representative.as_deref() == Some(name.as_str()),
                })
                .collect(),
            representative_window: representative,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn window(name: &str, utilization: f64, reset_secs: u64) -> WindowReading {
        WindowReading {
            window: name.to_string(),
            utilization: Some(utilization),
            reset_in: Some(SEC * u32::try_from(reset_secs).unwrap_or(u32::MAX)),
        }
    }

    fn reading(
        status: SubscriptionStatus,
        claim: &str,
        windows: Vec<WindowReading>,
    ) -> SubscriptionReading {
        SubscriptionReading {
            status: Some(status),
            reset_in: Some(3600 * SEC),
            representative_claim: Some(claim.to_string()),
            windows,
        }
    }

    #[test]
    fn claims_name_their_windows() {
        assert_eq!(window_of_claim("five_hour"), "5h");
        assert_eq!(window_of_claim("seven_day"), "7d");
        assert_eq!(window_of_claim("seven_day_opus"), "7d_opus");
        assert_eq!(window_of_claim("monthly"), "monthly");
        assert_eq!(
            SubscriptionStatus::parse(" Allowed_Warning"),
            Some(SubscriptionStatus::AllowedWarning)
        );
        assert_eq!(SubscriptionStatus::parse("nope"), None);
    }

    #[test]
    fn the_representative_window_decides_the_drain() {
        let now = Instant::now();
        let mut state = SubscriptionState::new(now);
        // 7d is 95 % used but the claim says the 5h window decides.
        state.record(
            "e",
            &reading(
                SubscriptionStatus::Allowed,
                "five_hour",
                vec![window("5h", 0.4, 100), window("7d", 0.95, 1000)],
            ),
            0.9,
            now,
        );
        assert!(!state.draining(0.9, now));
        state.record(
            "e",
            &reading(SubscriptionStatus::AllowedWarning, "seven_day", Vec::new()),
            0.9,
            now,
        );
        assert!(state.draining(0.9, now));
        assert!(!state.rejected(now));
        // The 7d window reset: its reading no longer counts.
        assert!(!state.draining(0.9, now + 1000 * SEC));
        // Without a claim the most used current window decides.
        let mut unclaimed = SubscriptionState::new(now);
        unclaimed.record(
            "e",
            &SubscriptionReading {
                windows: vec![window("5h", 0.92, 100), window("7d", 0.5, 1000)],
                ..SubscriptionReading::default()
            },
            0.9,
            now,
        );
        assert!(unclaimed.draining(0.9, now));
        assert!(!unclaimed.draining(0.95, now));
        assert!(!unclaimed.draining(0.9, now + 100 * SEC), "5h reset");
    }

    #[test]
    fn rejected_lasts_until_the_reset() {
        let now = Instant::now();
        let mut state = SubscriptionState::new(now);
        state.record(
            "e",
            &SubscriptionReading {
                status: Some(SubscriptionStatus::Rejected),
                reset_in: Some(30 * SEC),
                ..SubscriptionReading::default()
            },
            0.9,
            now,
        );
        assert!(state.rejected(now + 29 * SEC));
        assert_eq!(state.rejected_until(now), Some(now + 30 * SEC));
        assert!(!state.rejected(now + 30 * SEC));
        assert_eq!(state.rejected_until(now + 30 * SEC), None);
        // Rejected without a reset: blocked for the fallback time.
        let mut no_reset = SubscriptionState::new(now);
        no_reset.record(
            "e",
            &SubscriptionReading {
                status: Some(SubscriptionStatus::Rejected),
                ..SubscriptionReading::default()
            },
            0.9,
            now,
        );
        assert_eq!(
            no_reset.rejected_until(now),
            Some(now + REJECTED_WITHOUT_RESET_BLOCK)
        );
    }

    #[test]
    fn an_alert_goes_out_once_per_crossing() {
        let now = Instant::now();
        let mut state = SubscriptionState::new(now);
        let at = |utilization: f64| {
            reading(
                SubscriptionStatus::Allowed,
                "five_hour",
                vec![window("5h", utilization, 100)],
            )
        };
        assert_eq!(state.record("e", &at(0.5), 0.9, now), None);
        let alert = state.record("e", &at(0.91), 0.9, now).expect("crossed");
        assert_eq!(alert.window, "five_hour");
        assert_eq!(alert.utilization, 0.91);
        assert!(!alert.rejected);
        assert_eq!(alert.resets_in, Some(100 * SEC));
        assert_eq!(state.record("e", &at(0.93), 0.9, now), None, "still over");
        let rejected = state
            .record(
                "e",
                &reading(
                    SubscriptionStatus::Rejected,
                    "five_hour",
                    vec![window("5h", 1.0, 100)],
                ),
                0.9,
                now,
            )
            .expect("rejected is a new crossing");
        assert!(rejected.rejected);
        assert_eq!(rejected.resets_in, Some(3600 * SEC));
        // Back below, then over again: a new crossing.
        assert_eq!(state.record("e", &at(0.2), 0.9, now), None);
        assert!(state.record("e", &at(0.95), 0.9, now).is_some());
        // After the window's reset the next high reading is a new crossing too.
        let later = now + 100 * SEC;
        assert!(state.record("e", &at(0.95), 0.9, later).is_some());
    }

    #[test]
    fn windows_are_bounded() {
        let now = Instant::now();
        let mut state = SubscriptionState::new(now);
        let windows = (0..20).map(|n| window(&format!("w{n}"), 0.1, 10)).collect();
        state.record(
            "e",
            &SubscriptionReading {
                windows,
                ..SubscriptionReading::default()
            },
            0.9,
            now,
        );
        assert_eq!(state.view(0.9, now).windows.len(), MAX_WINDOWS);
    }
}
