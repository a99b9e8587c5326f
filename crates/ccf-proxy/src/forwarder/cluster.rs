//! The engine's side of shared state (`crate::cluster`): installing the link, handing local
//! changes to it ([`Shared::share`]) and applying the other instances' changes
//! ([`Forwarder::apply_shared`]) to the same router, quota model and key limits, without
//! handing them back (no echo) and without the alerts the instance that saw them already
//! published (a `QuotaLow` or a key's budget crossing is published once, where it happened).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ccf_router::{SessionKey, SessionRequest};
use tracing::warn;

use super::{Forwarder, Shared};
use crate::cluster::{instant_of, ClusterLink, ClusterStatus, SharedUpdate};
use crate::events::ForwarderEvent;

/// Where a change was seen: on this instance (shared and alerted) or on another (applied only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An answer this instance received.
    Local,
    /// Another instance's update.
    Remote,
}

impl Forwarder {
    /// Installs the link to the other instances (`cluster.redis_url`; the `ccf-cluster` crate).
    /// Only the first call takes effect; returns whether this one did.
    pub fn set_cluster_link(&self, link: Arc<dyn ClusterLink>) -> bool {
        let installed = self.shared.cluster_link.set(Arc::clone(&link)).is_ok();
        if installed {
            self.shared.key_limits.set_cluster_link(link);
        }
        installed
    }

    /// How the link to the other instances is doing; `None` without one.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        self.shared.cluster_link.get().map(|link| link.status())
    }

    /// Applies a change another instance made (see [`crate::cluster`]). Unknown groups,
    /// endpoints and keys (a configuration that differs between instances) are ignored; times
    /// already passed change nothing.
    pub fn apply_shared(&self, update: &SharedUpdate) {
        let shared = &self.shared;
        let now = Instant::now();
        match update {
            SharedUpdate::GroupCooldown { group, until } => {
                let events = shared
                    .router()
                    .cool_down_until(group, instant_of(*until), now);
                if !events.is_empty() {
                    shared.publish_router(events);
                    shared.suspension.wake();
                }
            }
            SharedUpdate::GroupCooldownEnded { group } => {
                let events = shared.router().record_group_success(group, now);
                if !events.is_empty() {
                    shared.publish_router(events);
                    shared.suspension.wake();
                }
            }
            SharedUpdate::EndpointBlocked { endpoint, until } => {
                let events = shared.router().block_at_least(endpoint, instant_of(*until));
                shared.publish_router(events);
            }
            SharedUpdate::SessionBound {
                session,
                source,
                long_ttl,
                endpoint,
            } => {
                if shared.current().endpoint(endpoint).is_some() {
                    let request = SessionRequest {
                        key: SessionKey(*session),
                        source: *source,
                        long_ttl: *long_ttl,
                    };
                    let _moved = shared.router().session_served(&request, endpoint, now);
                }
            }
            SharedUpdate::QuotaHeaders {
                endpoint,
                headers,
                seen_at,
            } => {
                let mut map = http::HeaderMap::new();
                for (name, value) in headers {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::try_from(name.as_str()),
                        http::HeaderValue::try_from(value.as_str()),
                    ) {
                        map.append(name, value);
                    }
                }
                shared.record_quota(endpoint, &map, *seen_at, Origin::Remote);
            }
            SharedUpdate::Spend {
                key,
                day_start,
                day_usd,
                month_start,
                month_usd,
                ..
            } => {
                shared.key_limits.observe_shared_spend(
                    key,
                    *day_start,
                    *day_usd,
                    *month_start,
                    *month_usd,
                );
            }
        }
    }
}

impl Shared {
    /// Hands a local change to the other instances, when a link is installed (`update` is only
    /// built then).
    pub(super) fn share(&self, update: impl FnOnce() -> SharedUpdate) {
        if let Some(link) = self.cluster_link.get() {
            link.publish(update());
        }
    }

    /// Feeds an answer's rate-limit headers (received at `seen_at`) to the router's quota
    /// model. A subscription account's readings also go to the metrics; a `rejected` account
    /// blocks the endpoint until its reset (in the router, whose events are published). Seen
    /// here ([`Origin::Local`]): the headers are shared with the other instances, and crossing
    /// the drain threshold or being rejected is published once as [`ForwarderEvent::QuotaLow`];
    /// seen by another instance, that instance published it.
    pub(super) fn record_quota(
        &self,
        endpoint: &str,
        headers: &http::HeaderMap,
        seen_at: SystemTime,
        origin: Origin,
    ) {
        let quota = crate::ratelimit::quota_observation(headers, seen_at);
        if quota.is_empty() {
            return;
        }
        if origin == Origin::Local {
            self.share(|| SharedUpdate::QuotaHeaders {
                endpoint: endpoint.to_string(),
                headers: crate::cluster::quota_headers(headers),
                seen_at,
            });
        }
        if let Some(reading) = &quota.subscription {
            self.metrics.record_subscription(endpoint, reading);
        }
        let recorded = self.router().record_quota(endpoint, &quota, Instant::now());
        self.publish_router(recorded.events);
        if let Some(alert) = recorded.alert.filter(|_| origin == Origin::Local) {
            warn!(endpoint = %alert.endpoint, window = %alert.window, utilization = alert.utilization, rejected = alert.rejected, "subscription quota low");
            self.events.publish(ForwarderEvent::QuotaLow {
                endpoint: alert.endpoint,
                window: alert.window,
                utilization: alert.utilization,
                rejected: alert.rejected,
                resets_at: alert.resets_in.and_then(|left| seen_at.checked_add(left)),
            });
        }
    }
}
