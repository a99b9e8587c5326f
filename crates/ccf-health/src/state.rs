//! Per-endpoint health state and the pure rules that change it.
//!
//! Every observation (probe, passive success, passive failure, authentication failure) is applied
//! by one function here that returns the healthy/unhealthy transition it caused, if any. The
//! monitor only adds locking, publishing and the tasks around them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::probe::ProbeOutcome;

/// What is known about one endpoint's health.
///
/// Serialised for the admin API with durations in milliseconds and `last_check` as Unix
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointHealth {
    /// Whether requests should be routed to the endpoint.
    pub healthy: bool,
    /// No probe has finished yet. Such an endpoint counts as healthy (optimistic start) unless a
    /// passive observation has already marked it unhealthy.
    pub never_checked: bool,
    /// Wall-clock time of the last finished probe.
    #[serde(
        rename = "last_check_unix_ms",
        serialize_with = "serde_ms::system_time"
    )]
    pub last_check: Option<SystemTime>,
    /// Latency of the last probe that got an answer (any status); the `fastest` strategy sorts on
    /// it. Passive request latencies are not recorded here: they include generation time.
    #[serde(rename = "last_latency_ms", serialize_with = "serde_ms::duration")]
    pub last_latency: Option<Duration>,
    /// Failed probes and passive failures since the last success.
    pub consecutive_failures: u32,
    /// Why the endpoint last failed; cleared when it turns healthy.
    pub last_error: Option<String>,
    /// The upstream rejected the credentials (401/403). Only a passing probe clears this.
    pub auth_failed: bool,
}

impl EndpointHealth {
    /// The state of an endpoint nobody has looked at yet: healthy, never checked.
    pub fn unchecked() -> Self {
        EndpointHealth {
            healthy: true,
            never_checked: true,
            last_check: None,
            last_latency: None,
            consecutive_failures: 0,
            last_error: None,
            auth_failed: false,
        }
    }

    /// Applies a finished probe. A probe is authoritative: 2xx marks the endpoint healthy and
    /// clears the failure count and `auth_failed`; anything else marks it unhealthy at once.
    pub(crate) fn apply_probe(
        &mut self,
        outcome: &ProbeOutcome,
        now: SystemTime,
    ) -> Option<Transition> {
        let was_healthy = self.healthy;
        self.never_checked = false;
        self.last_check = Some(now);
        if outcome.status().is_some() {
            self.last_latency = Some(outcome.latency());
        }
        match outcome.failure_reason() {
            None => {
                self.healthy = true;
                self.auth_failed = false;
                self.consecutive_failures = 0;
                self.last_error = None;
            }
            Some(reason) => {
                self.healthy = false;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(reason);
            }
        }
        Transition::between(was_healthy, self.healthy)
    }

    /// A real request got a non-5xx answer: the failure count resets and the endpoint is healthy
    /// again, unless the upstream rejected its credentials.
    pub(crate) fn apply_passive_success(&mut self) -> Option<Transition> {
        let was_healthy = self.healthy;
        self.consecutive_failures = 0;
        if !self.auth_failed {
            self.healthy = true;
            self.last_error = None;
        }
        Transition::between(was_healthy, self.healthy)
    }

    /// A real request failed; `threshold` consecutive failures mark the endpoint unhealthy.
    pub(crate) fn apply_passive_failure(
        &mut self,
        failure: PassiveFailure,
        threshold: u32,
    ) -> Option<Transition> {
        let was_healthy = self.healthy;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(failure.to_string());
        if self.consecutive_failures >= threshold {
            self.healthy = false;
        }
        Transition::between(was_healthy, self.healthy)
    }

    /// The upstream answered 401/403: unhealthy at once, until a probe passes.
    pub(crate) fn apply_auth_failure(&mut self) -> Option<Transition> {
        let was_healthy = self.healthy;
        self.auth_failed = true;
        self.healthy = false;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some("upstream rejected the credentials (401/403)".into());
        Transition::between(was_healthy, self.healthy)
    }
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth::unchecked()
    }
}

/// A change of the `healthy` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

impl Transition {
    fn between(was_healthy: bool, is_healthy: bool) -> Option<Transition> {
        match (was_healthy, is_healthy) {
            (false, true) => Some(Transition::BecameHealthy),
            (true, false) => Some(Transition::BecameUnhealthy),
            _ => None,
        }
    }
}

/// Why a real request failed on an endpoint (passive observation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassiveFailure {
    /// The connection could not be opened (DNS, TCP, TLS).
    Connect,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream answered with this 5xx status.
    ServerError(u16),
    /// A successful answer broke off after its headers: cut, an SSE `error` event, or a stream
    /// that ended before `message_stop`.
    BrokenResponse,
}

impl fmt::Display for PassiveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassiveFailure::Connect => f.write_str("request could not connect"),
            PassiveFailure::Timeout => f.write_str("request timed out"),
            PassiveFailure::ServerError(status) => {
                write!(f, "request answered status {status}")
            }
            PassiveFailure::BrokenResponse => f.write_str("response broke off after its headers"),
        }
    }
}

/// The health of every endpoint at one moment; cheap to share (`Arc`), never mutated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthSnapshot {
    /// Health by endpoint name.
    pub endpoints: BTreeMap<String, EndpointHealth>,
}

impl HealthSnapshot {
    /// Whether the endpoint may be routed to. Never-checked endpoints are healthy; unknown names
    /// are not.
    pub fn is_healthy(&self, name: &str) -> bool {
        self.endpoints
            .get(name)
            .is_some_and(|health| health.healthy)
    }

    /// How many endpoints are healthy.
    pub fn healthy_count(&self) -> usize {
        self.endpoints
            .values()
            .filter(|health| health.healthy)
            .count()
    }

    /// The health of one endpoint.
    pub fn get(&self, name: &str) -> Option<&EndpointHealth> {
        self.endpoints.get(name)
    }
}

/// Something observers (router, metrics, admin live stream, TUI) may react to.
///
/// Serialised with a `type` tag (`endpoint_healthy`, ...) and latencies in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthEvent {
    /// The endpoint turned healthy (it was unhealthy).
    EndpointHealthy {
        /// Endpoint name.
        endpoint: String,
        /// Latency of the probe or request that showed it healthy.
        #[serde(rename = "latency_ms", serialize_with = "serde_ms::duration")]
        latency: Option<Duration>,
    },
    /// The endpoint turned unhealthy (it was healthy or never checked).
    EndpointUnhealthy {
        /// Endpoint name.
        endpoint: String,
        /// Why, for people.
        reason: String,
        /// Consecutive failures so far.
        consecutive_failures: u32,
    },
    /// A probe got an answer (any status) after this latency.
    ProbeLatency {
        /// Endpoint name.
        endpoint: String,
        /// Time until the response head arrived.
        #[serde(rename = "latency_ms", serialize_with = "serde_ms::required_duration")]
        latency: Duration,
    },
}

impl HealthEvent {
    /// The endpoint the event is about.
    pub fn endpoint(&self) -> &str {
        match self {
            HealthEvent::EndpointHealthy { endpoint, .. }
            | HealthEvent::EndpointUnhealthy { endpoint, .. }
            | HealthEvent::ProbeLatency { endpoint, .. } => endpoint,
        }
    }
}

/// Durations and times as JSON-friendly milliseconds.
mod serde_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::Serializer;

    fn millis(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn duration<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&millis(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn required_duration<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(millis(*value))
    }

    pub(super) fn system_time<S: Serializer>(
        value: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value.and_then(|time| time.duration_since(UNIX_EPOCH).ok()) {
            Some(since_epoch) => serializer.serialize_some(&millis(since_epoch)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ProbeOutcome {
        ProbeOutcome::Status {
            status,
            latency: Duration::from_millis(20),
        }
    }

    #[test]
    fn probe_is_healthy_only_on_2xx() {
        fn check(outcome: ProbeOutcome, healthy: bool) {
            let mut health = EndpointHealth::unchecked();
            health.apply_probe(&outcome, SystemTime::now());
            assert_eq!(health.healthy, healthy, "{outcome:?}");
            assert!(!health.never_checked);
            assert_eq!(health.consecutive_failures, u32::from(!healthy));
        }
        check(status(200), true);
        check(status(204), true);
        check(status(299), true);
        check(status(101), false);
        check(status(301), false);
        check(status(400), false);
        check(status(401), false);
        check(status(403), false);
        check(status(404), false);
        check(status(429), false);
        check(status(500), false);
        check(status(503), false);
        check(
            ProbeOutcome::Failed {
                error: "connection refused".into(),
                latency: Duration::from_millis(1),
            },
            false,
        );
    }

    #[test]
    fn transitions_are_reported_only_when_the_flag_flips() {
        let mut health = EndpointHealth::unchecked();
        let now = SystemTime::now();
        assert_eq!(health.apply_probe(&status(200), now), None);
        assert_eq!(
            health.apply_probe(&status(503), now),
            Some(Transition::BecameUnhealthy)
        );
        assert_eq!(health.apply_probe(&status(503), now), None);
        assert_eq!(health.consecutive_failures, 2);
        assert_eq!(
            health.last_error.as_deref(),
            Some("health probe answered status 503")
        );
        assert_eq!(
            health.apply_probe(&status(200), now),
            Some(Transition::BecameHealthy)
        );
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(health.last_error, None);
    }

    #[test]
    fn failed_probe_keeps_the_last_answered_latency() {
        let mut health = EndpointHealth::unchecked();
        let now = SystemTime::now();
        health.apply_probe(&status(200), now);
        health.apply_probe(
            &ProbeOutcome::Failed {
                error: "timed out".into(),
                latency: Duration::from_secs(5),
            },
            now,
        );
        assert_eq!(health.last_latency, Some(Duration::from_millis(20)));
        assert_eq!(health.last_error.as_deref(), Some("timed out"));
    }

    #[test]
    fn passive_failures_need_the_threshold() {
        let mut health = EndpointHealth::unchecked();
        assert_eq!(
            health.apply_passive_failure(PassiveFailure::Connect, 3),
            None
        );
        assert_eq!(
            health.apply_passive_failure(PassiveFailure::Timeout, 3),
            None
        );
        assert!(health.healthy);
        assert_eq!(
            health.apply_passive_failure(PassiveFailure::ServerError(502), 3),
            Some(Transition::BecameUnhealthy)
        );
        assert_eq!(
            health.last_error.as_deref(),
            Some("request answered status 502")
        );
        assert_eq!(
            health.apply_passive_success(),
            Some(Transition::BecameHealthy)
        );
        assert_eq!(health.consecutive_failures, 0);
    }

    #[test]
    fn auth_failure_survives_passive_success_but_not_a_passing_probe() {
        let mut health = EndpointHealth::unchecked();
        assert_eq!(
            health.apply_auth_failure(),
            Some(Transition::BecameUnhealthy)
        );
        assert_eq!(health.apply_passive_success(), None);
        assert!(!health.healthy);
        assert!(health.auth_failed);
        assert_eq!(
            health.apply_probe(&status(200), SystemTime::now()),
            Some(Transition::BecameHealthy)
        );
        assert!(!health.auth_failed);
    }

    #[test]
    fn snapshot_lookups() {
        let mut snapshot = HealthSnapshot::default();
        snapshot
            .endpoints
            .insert("fresh".into(), EndpointHealth::unchecked());
        let mut down = EndpointHealth::unchecked();
        down.apply_auth_failure();
        snapshot.endpoints.insert("down".into(), down);
        assert!(snapshot.is_healthy("fresh"));
        assert!(!snapshot.is_healthy("down"));
        assert!(!snapshot.is_healthy("unknown"));
        assert_eq!(snapshot.healthy_count(), 1);
    }
}
