//! Hot routing state shared with other instances (issue #21, `cluster.redis_url`,
//! docs/multi-instance.md).
//!
//! The engine decides alone, from its own state, on every request; what it learns that the
//! other instances behind the same load balancer should know too is handed to a
//! [`ClusterLink`] as a [`SharedUpdate`] (an endpoint blocked by a 429, a group cooling down, a
//! session bound to an endpoint, an answer's rate-limit headers, a key's spend), and what the
//! other instances learned comes back through [`crate::Forwarder::apply_shared`], which changes
//! the same state without handing it to the link again (no echo). The link (the `ccf-cluster`
//! crate, on Redis) is installed by the application with [`crate::Forwarder::set_cluster_link`];
//! without one nothing changes.
//!
//! Two rules keep the request path free of the shared store: [`ClusterLink::publish`] only
//! enqueues (it never waits), and the one place a request waits for the link, a key's shared
//! rate and concurrency counters ([`SharedKeyCounters`]), is bounded by `cluster.redis_timeout`:
//! past it, or when the link says it is unavailable, the engine decides from its local state.
//!
//! Times cross instances as wall-clock instants ([`SystemTime`]); the engine's own state keeps
//! monotonic [`Instant`]s, converted at this edge ([`instant_of`], [`wall_of`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ccf_router::SessionSource;
use futures_util::future::BoxFuture;

/// A change in routing or key state that every instance should apply.
#[derive(Debug, Clone, PartialEq)]
pub enum SharedUpdate {
    /// Every endpoint of `group` failed: it cools down until `until`.
    GroupCooldown {
        /// The group.
        group: String,
        /// End of the cooldown.
        until: SystemTime,
    },
    /// Real traffic on `group` succeeded: a cooldown it is in ends.
    GroupCooldownEnded {
        /// The group.
        group: String,
    },
    /// `endpoint` answered 429 (or its account is rejected) and is skipped until `until`.
    EndpointBlocked {
        /// The endpoint.
        endpoint: String,
        /// End of the block.
        until: SystemTime,
    },
    /// A turn of session `session` was served by `endpoint`: the session is bound there (for
    /// the affinity TTL, `routing.affinity_ttl` or the 1-hour one when `long_ttl`).
    SessionBound {
        /// The session key (a stable 64-bit hash, the same on every instance).
        session: u64,
        /// Where the session's identity came from.
        source: SessionSource,
        /// The request asked for the 1-hour prompt cache.
        long_ttl: bool,
        /// The endpoint the session is bound to.
        endpoint: String,
    },
    /// An answer of `endpoint` carried rate-limit headers (`anthropic-ratelimit-*`,
    /// `retry-after`): the quota reading every instance derives from them, subscription
    /// windows and a `rejected` status included. Shared as the headers themselves, so every
    /// instance reads them with the same code it reads its own answers with.
    QuotaHeaders {
        /// The endpoint.
        endpoint: String,
        /// The headers, name and value (names lower case).
        headers: Vec<(String, String)>,
        /// When the answer was received.
        seen_at: SystemTime,
    },
    /// Key `key` spent `usd` on an outcome finished at `at` (0 for a pure total); its spend in
    /// the day starting at `day_start` is at least `day_usd` and in the month starting at
    /// `month_start` at least `month_usd`. Applied as a maximum: totals only grow within a
    /// period, so applying one twice or out of order changes nothing.
    Spend {
        /// The key's name.
        key: String,
        /// The amount of this outcome, USD (0 when only the totals are shared).
        usd: f64,
        /// When the outcome finished.
        at: SystemTime,
        /// Start of the budget day the totals count.
        day_start: SystemTime,
        /// Spend in that day, USD.
        day_usd: f64,
        /// Start of the budget month the totals count.
        month_start: SystemTime,
        /// Spend in that month, USD.
        month_usd: f64,
    },
}

/// The shared store was not reached in time (or is known to be down): decide locally.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct SharedUnavailable(pub String);

/// What the shared rate window said about one more request of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAdmission {
    /// Counted: fewer than the limit were admitted by every instance in the last minute.
    Admitted,
    /// The limit is used up; the oldest admission leaves the window in `retry_after`.
    Full {
        /// Until a slot frees.
        retry_after: Duration,
    },
}

/// A concurrency slot of a key held in the shared store; dropping it releases the slot (the
/// release itself is sent in the background). A slot whose instance died expires by its lease.
pub struct SharedSlot {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl SharedSlot {
    /// A slot that runs `release` when dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> SharedSlot {
        SharedSlot {
            release: Some(Box::new(release)),
        }
    }
}

impl std::fmt::Debug for SharedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlot").finish_non_exhaustive()
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Per-key counters every instance shares, atomic in the shared store, so N instances enforce
/// one limit. Each call is bounded by the engine (`cluster.redis_timeout`); an error or a
/// timeout means "decide locally".
pub trait SharedKeyCounters: Send + Sync {
    /// Counts one admission of `key` in the shared rolling minute if fewer than `limit` were
    /// admitted there; else says when a slot frees.
    fn admit_rate<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<RateAdmission, SharedUnavailable>>;

    /// Takes one of `limit` shared concurrency slots of `key`: `None` when all are held.
    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Option<SharedSlot>, SharedUnavailable>>;
}

/// How the link to the shared store is doing, for `/health/detailed`, the metrics, the admin
/// API and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// What the state is shared through (`redis`).
    pub backend: &'static str,
    /// The shared store's address, credentials masked.
    pub address: String,
    /// Connected now (else the instance runs on its local state).
    pub connected: bool,
    /// Since when `connected` has its current value.
    pub since: Option<SystemTime>,
    /// The last error, credentials masked.
    pub last_error: Option<String>,
    /// Times a request decided locally because the shared store did not answer in time.
    pub fallbacks: u64,
    /// Times the connection was made again after a loss.
    pub reconnects: u64,
    /// Updates sent to the other instances.
    pub published: u64,
    /// Updates from other instances applied here.
    pub applied: u64,
    /// Updates dropped because the outgoing queue was full while disconnected.
    pub dropped: u64,
}

/// The engine's link to the other instances (installed by the application).
pub trait ClusterLink: Send + Sync {
    /// Hands a local change to the other instances. Called on the request path: it must only
    /// enqueue, never wait or fail.
    fn publish(&self, update: SharedUpdate);

    /// The shared per-key counters, while they can be used (`None`: local limits only).
    fn key_counters(&self) -> Option<Arc<dyn SharedKeyCounters>>;

    /// How the link is doing now.
    fn status(&self) -> ClusterStatus;

    /// Whether the link is connected now (a cheaper [`ClusterLink::status`]`.connected`).
    fn is_connected(&self) -> bool {
        self.status().connected
    }

    /// Counts one request that decided locally because the link did not answer in time.
    fn note_fallback(&self);
}

/// The monotonic instant of wall-clock instant `wall` (now when it has passed).
pub fn instant_of(wall: SystemTime) -> Instant {
    let now = Instant::now();
    match wall.duration_since(SystemTime::now()) {
        Ok(ahead) => now.checked_add(ahead).unwrap_or(now),
        Err(_) => now,
    }
}

/// The wall-clock instant of monotonic instant `instant`.
pub fn wall_of(instant: Instant) -> SystemTime {
    let now = Instant::now();
    let wall = SystemTime::now();
    if instant >= now {
        wall.checked_add(instant - now).unwrap_or(wall)
    } else {
        wall.checked_sub(now - instant).unwrap_or(wall)
    }
}

/// The rate-limit headers of an answer worth sharing (`anthropic-ratelimit-*`, `retry-after`),
/// name and value; empty when it has none.
pub fn quota_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("anthropic-ratelimit-") || name == "retry-after"
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_and_instant_round_trip_within_a_millisecond() {
        let ahead = SystemTime::now() + Duration::from_secs(30);
        let instant = instant_of(ahead);
        let back = wall_of(instant);
        let error = back
            .duration_since(ahead)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        assert!(error < Duration::from_millis(50), "{error:?}");
        // A passed wall instant is now.
        let past = instant_of(SystemTime::now() - Duration::from_secs(5));
        assert!(past <= Instant::now());
        assert!(Instant::now().duration_since(past) < Duration::from_secs(1));
    }

    #[test]
    fn only_rate_limit_headers_are_shared() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "anthropic-ratelimit-unified-status",
            "rejected".parse().unwrap(),
        );
        headers.insert("retry-after", "30".parse().unwrap());
        headers.insert("x-api-key", "secret".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let mut shared = quota_headers(&headers);
        shared.sort();
        assert_eq!(
            shared,
            vec![
                (
                    "anthropic-ratelimit-unified-status".to_string(),
                    "rejected".to_string()
                ),
                ("retry-after".to_string(), "30".to_string()),
            ]
        );
    }
}
