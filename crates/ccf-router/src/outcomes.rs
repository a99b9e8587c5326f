//! What traffic and probes report back to the router: a group whose endpoints all failed in one
//! request (cooldown or needs-attention), a group whose real traffic succeeded (its cooldown
//! ends; a health probe never ends one), real and probe latencies for the `fastest` strategy, rate-limit blocks, and honesty demotions.
//! These are the inputs the proxy and the health prober feed in after the fact; the next
//! [`Router::plan`] acts on them.

use std::time::{Duration, Instant};

use crate::state::instant_after;
use crate::{Router, RouterEvent};

/// Weight of a new sample in the latency moving average.
const LATENCY_EWMA_ALPHA: f64 = 0.3;

impl Router {
    /// Every endpoint of `group` failed within one request.
    ///
    /// Auto mode: the group cools down until `now + cooldown` and loses its operator pin; the
    /// next [`Router::plan`] moves to the next group. Manual mode: the group is marked as
    /// needing attention and stays active. An unknown group is ignored.
    pub fn record_group_failure(&mut self, group: &str, now: Instant) -> Vec<RouterEvent> {
        let Some(position) = self.group_position(group) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if self.settings.auto_switch {
            let until = instant_after(now, self.settings.cooldown);
            events.extend(self.cool_down_at(position, until));
        } else {
            let state = &mut self.groups[position];
            if !state.needs_attention {
                state.needs_attention = true;
                events.push(RouterEvent::GroupNeedsAttention {
                    group: state.name.clone(),
                });
            }
        }
        events
    }

    /// `group` cools down until `until` as another instance decided (a failure it saw; see
    /// `ccf_proxy::cluster`): the same change as [`Router::record_group_failure`] in auto mode,
    /// with the other instance's end time. A longer cooldown already in place stays; in manual
    /// mode, or for an unknown group or a time already passed, nothing changes.
    pub fn cool_down_until(
        &mut self,
        group: &str,
        until: Instant,
        now: Instant,
    ) -> Vec<RouterEvent> {
        match self.group_position(group) {
            Some(position) if self.settings.auto_switch && until > now => {
                self.cool_down_at(position, until)
            }
            _ => Vec::new(),
        }
    }

    /// The group at `position` cools down until `until` (or its later current end) and loses
    /// its operator pin.
    fn cool_down_at(&mut self, position: usize, until: Instant) -> Vec<RouterEvent> {
        let state = &mut self.groups[position];
        let until = state.cooldown_until.map_or(until, |old| old.max(until));
        state.cooldown_until = Some(until);
        let event = RouterEvent::GroupCooldown {
            group: state.name.clone(),
            until,
        };
        if self.pinned == Some(position) {
            self.pinned = None;
        }
        if self.forced == Some(position) {
            self.forced = None;
        }
        vec![event]
    }

    /// Real traffic on `group` succeeded: a cooldown it is in ends now, reported as
    /// [`RouterEvent::GroupCooldownEnded`]. A cooling group only gets traffic as the last resort
    /// (see [`Router::plan`]), so this is how it comes back before its time: its upstream serves
    /// again. A passing health probe never ends a cooldown: `GET /v1/models` keeps answering 200
    /// while `POST /v1/messages` is overloaded, so a probe says "reachable", not "serving", and
    /// ending the cooldown on it sends traffic straight back into the overload. An unknown group,
    /// or one not in cooldown, changes nothing.
    pub fn record_group_success(&mut self, group: &str, now: Instant) -> Vec<RouterEvent> {
        let Some(position) = self.group_position(group) else {
            return Vec::new();
        };
        let state = &mut self.groups[position];
        if state.cooldown_until.is_some_and(|until| now < until) {
            state.cooldown_until = None;
            return vec![RouterEvent::GroupCooldownEnded {
                group: state.name.clone(),
            }];
        }
        Vec::new()
    }

    /// Records the latency of a real request (time to response headers) in the endpoint's
    /// moving average (alpha 0.3). An unknown endpoint is ignored.
    pub fn record_latency(&mut self, endpoint: &str, latency: Duration) {
        if let Some(position) = self.endpoint_position(endpoint) {
            let state = &mut self.endpoints[position];
            let sample = latency.as_secs_f64();
            state.latency_ewma = Some(match state.latency_ewma {
                None => sample,
                Some(average) => LATENCY_EWMA_ALPHA * sample + (1.0 - LATENCY_EWMA_ALPHA) * average,
            });
        }
    }

    /// Records the latency of a health check or fast test; the latest value replaces the
    /// previous one. An unknown endpoint is ignored.
    pub fn record_probe_latency(&mut self, endpoint: &str, latency: Duration) {
        if let Some(position) = self.endpoint_position(endpoint) {
            self.endpoints[position].probe_latency = Some(latency);
        }
    }

    /// The endpoint is rate limited: plans leave it out while `now < until`. The latest call
    /// wins, so `block_until(name, now)` lifts a block. An unknown endpoint is ignored.
    pub fn block_until(&mut self, endpoint: &str, until: Instant) -> Vec<RouterEvent> {
        let Some(position) = self.endpoint_position(endpoint) else {
            return Vec::new();
        };
        let state = &mut self.endpoints[position];
        state.blocked_until = Some(until);
        vec![RouterEvent::EndpointBlocked {
            endpoint: state.name.clone(),
            until,
        }]
    }

    /// The endpoint is rate limited until at least `until`, as another instance learned (see
    /// `ccf_proxy::cluster`): unlike [`Router::block_until`] a later block in place stays, so
    /// updates applied late or twice never shorten one. Reports a change only.
    pub fn block_at_least(&mut self, endpoint: &str, until: Instant) -> Vec<RouterEvent> {
        let Some(position) = self.endpoint_position(endpoint) else {
            return Vec::new();
        };
        if self.endpoints[position]
            .blocked_until
            .is_some_and(|current| current >= until)
        {
            return Vec::new();
        }
        self.block_until(endpoint, until)
    }

    /// Demotes `endpoint` (tried after every endpoint of its group that is not demoted,
    /// whatever the strategy) or restores it; its priority is untouched. Reports a change only.
    /// An unknown endpoint is ignored.
    pub fn set_demoted(&mut self, endpoint: &str, demoted: bool) -> Vec<RouterEvent> {
        let Some(position) = self.endpoint_position(endpoint) else {
            return Vec::new();
        };
        let state = &mut self.endpoints[position];
        if state.demoted == demoted {
            return Vec::new();
        }
        state.demoted = demoted;
        vec![RouterEvent::EndpointDemoted {
            endpoint: state.name.clone(),
            demoted,
        }]
    }
}
