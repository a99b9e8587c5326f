//! The router's private state per group and per endpoint, and the lookups every part of the
//! router shares: what a pause is, when a group is available, when an endpoint is blocked, the
//! `fastest` score, and name-to-position lookups. Nothing here is public: the operator-facing
//! shapes are in `views.rs`, the answer to a request in `plan.rs`.

use std::time::{Duration, Instant};

use crate::{Router, RouterError};

/// Weight of real-traffic latency in the `fastest` score when a probe latency exists too.
const REAL_LATENCY_WEIGHT: f64 = 0.7;
/// Weight of probe latency in the `fastest` score when a real-traffic latency exists too.
const PROBE_LATENCY_WEIGHT: f64 = 0.3;

/// `now + duration`, clamped to the furthest instant the platform can represent.
pub(crate) fn instant_after(now: Instant, duration: Duration) -> Instant {
    let mut duration = duration;
    loop {
        if let Some(instant) = now.checked_add(duration) {
            return instant;
        }
        // Halving reaches zero, and `now + 0` always succeeds, so this terminates.
        duration /= 2;
    }
}

/// An operator pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pause {
    /// Until resumed or activated.
    Indefinite,
    /// Until this instant (exclusive), or until resumed or activated.
    Until(Instant),
}

/// One group: its place in the priority order, its members and its timed and operator marks.
#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    pub(crate) name: String,
    pub(crate) priority: u32,
    /// Positions in `Router::endpoints`, in configuration order.
    pub(crate) members: Vec<usize>,
    pub(crate) pause: Option<Pause>,
    pub(crate) cooldown_until: Option<Instant>,
    pub(crate) needs_attention: bool,
}

impl GroupState {
    pub(crate) fn is_paused(&self, now: Instant) -> bool {
        match self.pause {
            None => false,
            Some(Pause::Indefinite) => true,
            Some(Pause::Until(until)) => now < until,
        }
    }

    pub(crate) fn paused_until(&self, now: Instant) -> Option<Instant> {
        match self.pause {
            Some(Pause::Until(until)) if now < until => Some(until),
            _ => None,
        }
    }

    pub(crate) fn cooldown_until(&self, now: Instant) -> Option<Instant> {
        self.cooldown_until.filter(|until| now < *until)
    }

    pub(crate) fn in_cooldown(&self, now: Instant) -> bool {
        self.cooldown_until(now).is_some()
    }

    pub(crate) fn is_available(&self, now: Instant) -> bool {
        !self.is_paused(now) && !self.in_cooldown(now)
    }
}

/// One endpoint: its place in the configuration, priorities, latency measurements, rate-limit
/// block and honesty demotion.
#[derive(Debug, Clone)]
pub(crate) struct EndpointState {
    pub(crate) name: String,
    /// Position in `Router::groups`.
    pub(crate) group: usize,
    /// Position in the configuration's `endpoints` list.
    pub(crate) index: usize,
    pub(crate) config_priority: u32,
    pub(crate) priority_override: Option<u32>,
    /// Seconds; a float so the moving average keeps its fractions.
    pub(crate) latency_ewma: Option<f64>,
    pub(crate) probe_latency: Option<Duration>,
    pub(crate) blocked_until: Option<Instant>,
    /// Demoted for a low honesty score ([`crate::honesty`]); the configured and overridden priorities
    /// are kept.
    pub(crate) demoted: bool,
}

impl EndpointState {
    pub(crate) fn priority(&self) -> u32 {
        self.priority_override.unwrap_or(self.config_priority)
    }

    pub(crate) fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    /// The `fastest` score in seconds: real latency blended with probe latency when both exist.
    pub(crate) fn score(&self) -> Option<f64> {
        let probe = self.probe_latency.map(|latency| latency.as_secs_f64());
        match (self.latency_ewma, probe) {
            (Some(real), Some(probe)) => {
                Some(REAL_LATENCY_WEIGHT * real + PROBE_LATENCY_WEIGHT * probe)
            }
            (Some(real), None) => Some(real),
            (None, Some(probe)) => Some(probe),
            (None, None) => None,
        }
    }
}

impl Router {
    pub(crate) fn healthy_count(&self, group: usize, healthy: &dyn Fn(&str) -> bool) -> usize {
        self.groups[group]
            .members
            .iter()
            .filter(|member| healthy(&self.endpoints[**member].name))
            .count()
    }

    pub(crate) fn has_unblocked(&self, group: usize, now: Instant) -> bool {
        self.groups[group]
            .members
            .iter()
            .any(|member| !self.endpoints[*member].is_blocked(now))
    }

    pub(crate) fn group_position(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|state| state.name == name)
    }

    pub(crate) fn endpoint_position(&self, name: &str) -> Option<usize> {
        self.endpoints.iter().position(|state| state.name == name)
    }

    pub(crate) fn require_group(&self, name: &str) -> Result<usize, RouterError> {
        self.group_position(name)
            .ok_or_else(|| RouterError::UnknownGroup {
                group: name.to_string(),
            })
    }

    pub(crate) fn require_endpoint(&self, name: &str) -> Result<usize, RouterError> {
        self.endpoint_position(name)
            .ok_or_else(|| RouterError::UnknownEndpoint {
                endpoint: name.to_string(),
            })
    }
}
