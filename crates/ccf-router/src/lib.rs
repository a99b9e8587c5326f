//! Routing for cc-forwarder: which upstream endpoints a request tries, in which order.
//!
//! This crate owns the routing state: the endpoint groups and which one is active, group
//! cooldowns (automatic failover), operator pauses, pins and forced activations, needs-attention
//! marks (manual mode), priority overrides (`-p`, TUI and admin edits), latency measurements for
//! the `fastest` strategy and rate-limit blocks. Given a health snapshot and the current time it
//! answers with an ordered list of candidates ([`Router::plan`]).
//!
//! It is pure: no IO, no async runtime, no spawning, no clock. Time is always passed in as
//! `now: Instant`, and endpoint health comes from the caller as a `healthy(name)` function, so
//! every rule is testable with an injected clock. Timed states (cooldowns, timed pauses,
//! rate-limit blocks) expire lazily: the next evaluation at or after their end treats them as
//! over and reports the change as an event. It never panics: unknown names give a
//! [`RouterError`] or are ignored by the recording methods.
//!
//! Every change is reported as [`RouterEvent`]s returned by the method that made it; the caller
//! publishes them (event bus, admin live stream, TUI). Read-only views ([`Router::groups`],
//! [`Router::endpoints`], [`Router::active_group`]) compute the same answer an evaluation would
//! at `now` without changing anything.
//!
//! # Rules
//!
//! - A group is *available* when it is neither paused nor in cooldown.
//! - Inside the active group, rate-limited endpoints are left out; healthy endpoints come first
//!   in strategy order (`priority`: effective priority, then configuration index; `fastest`:
//!   latency score, unmeasured endpoints last by priority; endpoints demoted for a low honesty
//!   score, see [`honesty`], after all others), and when none is healthy every unblocked
//!   endpoint is tried anyway, marked unhealthy.
//! - Auto mode: the active group is the operator-pinned group while it is available and has an
//!   unblocked endpoint, else the lowest-priority available group with a healthy unblocked
//!   endpoint, else the lowest-priority available group with an unblocked endpoint, else none.
//!   A group whose endpoints all failed in one request cools down and loses its pin.
//! - Manual mode: the first evaluation picks the lowest-priority group with a healthy endpoint
//!   (else the lowest-priority group); afterwards only operator actions move traffic. A failed
//!   group is marked as needing attention and stays active.
//!
//! Main types: [`Router`] (the state and its operations), [`RouterSettings`], [`RoutePlan`] and
//! [`PlannedEndpoint`] (the answer), [`GroupView`] and [`EndpointView`] (snapshots for UIs),
//! [`RouterEvent`] and [`RouterError`].

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use ccf_config::{Config, Endpoint, StrategyType};
use serde::Serialize;

mod affinity;
mod fast_test;
pub mod honesty;
mod quota;
#[cfg(test)]
mod reconfigure_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use affinity::{
    AffinityMove, AffinitySettings, AffinityTable, AffinityTotals, AffinityView, CacheTokens,
    EndpointCacheView, HeldTokens, SessionDecision, SessionKey, SessionRequest, SessionSource,
    SessionView, TurnTokens, DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TTL, LONG_AFFINITY_TTL,
};
pub use fast_test::rank_by_fast_test;
pub use quota::{
    DimensionView, DrainReason, EndpointQuotaView, QuotaBook, QuotaDimension, QuotaObservation,
    QuotaReading,
};

/// Weight of a new sample in the latency moving average.
const LATENCY_EWMA_ALPHA: f64 = 0.3;
/// Weight of real-traffic latency in the `fastest` score when a probe latency exists too.
const REAL_LATENCY_WEIGHT: f64 = 0.7;
/// Weight of probe latency in the `fastest` score when a real-traffic latency exists too.
const PROBE_LATENCY_WEIGHT: f64 = 0.3;

/// How the router behaves; taken from the `group.*` and `strategy.*` sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSettings {
    /// Auto mode (`true`): failed groups cool down and traffic moves to the next group. Manual
    /// mode (`false`): only an operator moves traffic between groups.
    pub auto_switch: bool,
    /// How long a failed group stays out of rotation in auto mode.
    pub cooldown: Duration,
    /// Endpoint order inside a group.
    pub strategy: StrategyType,
}

impl RouterSettings {
    /// The settings of this configuration (`group.auto_switch_between_groups`, `group.cooldown`,
    /// `strategy.type`).
    pub fn from_config(config: &Config) -> Self {
        RouterSettings {
            auto_switch: config.group.auto_switch_between_groups,
            cooldown: config.group.cooldown.get(),
            strategy: config.strategy.kind,
        }
    }
}

impl Default for RouterSettings {
    /// The configuration defaults: auto mode, 600 s cooldown, `priority` strategy.
    fn default() -> Self {
        RouterSettings {
            auto_switch: true,
            cooldown: Duration::from_secs(600),
            strategy: StrategyType::Priority,
        }
    }
}

/// The endpoints a request should try next, best first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutePlan {
    /// The active group, if any. In auto mode it is `None` exactly when `endpoints` is empty; in
    /// manual mode the active group is kept even while every one of its endpoints is rate
    /// limited, so `endpoints` may be empty (see [`Router::next_change_at`]).
    pub group: Option<String>,
    /// The candidates in the order to try them. Rate-limited endpoints are left out.
    pub endpoints: Vec<PlannedEndpoint>,
    /// What this evaluation changed (expired pauses and cooldowns, a new active group).
    pub events: Vec<RouterEvent>,
}

/// One candidate of a [`RoutePlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedEndpoint {
    /// Endpoint name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Its position in the configuration's `endpoints` list.
    pub index: usize,
    /// Whether the health snapshot called it healthy. `false` only when no unblocked endpoint of
    /// the group is healthy and the whole group is tried anyway (health can be stale).
    pub healthy: bool,
}

/// The state of one group as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Group name.
    pub name: String,
    /// Group priority; lower is preferred.
    pub priority: u32,
    /// Requests are routed to this group now.
    pub is_active: bool,
    /// Paused by an operator (a timed pause whose end has passed is over).
    pub paused: bool,
    /// End of a timed pause; `None` when not paused or paused indefinitely.
    #[serde(skip)]
    pub paused_until: Option<Instant>,
    /// Out of rotation after a failure (auto mode).
    pub in_cooldown: bool,
    /// End of the cooldown; `None` when not in cooldown.
    #[serde(skip)]
    pub cooldown_until: Option<Instant>,
    /// Time left in cooldown; zero when not in cooldown.
    pub cooldown_remaining: Duration,
    /// Every endpoint failed within one request in manual mode; an operator should look.
    pub needs_attention: bool,
    /// Activated by force with no healthy endpoint, and still the operator's choice.
    pub forced: bool,
    /// Endpoints in the group.
    pub total_endpoints: usize,
    /// Endpoints the health snapshot calls healthy (rate limits ignored).
    pub healthy_endpoints: usize,
    /// One-word summary.
    pub status: GroupStatus,
    /// `activate` would succeed without force.
    pub can_activate: bool,
    /// `activate` would need force.
    pub can_force_activate: bool,
    /// `pause` makes sense.
    pub can_pause: bool,
    /// `resume` would succeed.
    pub can_resume: bool,
}

/// One-word group status. Precedence: paused, cooldown, active, no healthy endpoints, available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    /// Requests go here.
    Active,
    /// Paused by an operator.
    Paused,
    /// Out of rotation after a failure.
    Cooldown,
    /// No endpoint of the group is healthy.
    NoHealthyEndpoints,
    /// Could serve requests but another group is active.
    Available,
}

/// The state of one endpoint as shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointView {
    /// Endpoint name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Its position in the configuration's `endpoints` list.
    pub index: usize,
    /// Effective priority (configuration value or operator override).
    pub priority: u32,
    /// Priority from the configuration.
    pub config_priority: u32,
    /// Moving average (alpha 0.3) of real-traffic latency to response headers.
    pub latency_ewma: Option<Duration>,
    /// Latest health-check or fast-test latency.
    pub probe_latency: Option<Duration>,
    /// Score used by the `fastest` strategy (lower is better).
    pub score: Option<Duration>,
    /// Rate limited until then; `None` when not blocked at `now`.
    #[serde(skip)]
    pub blocked_until: Option<Instant>,
    /// What the health snapshot says.
    pub healthy: bool,
    /// Demoted for a low honesty score: tried after the other endpoints of its group.
    pub demoted: bool,
}

/// A change in routing state, returned by the method that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RouterEvent {
    /// Requests now go to another group (or to none).
    ActiveGroupChanged {
        /// The previous active group.
        from: Option<String>,
        /// The new active group.
        to: Option<String>,
    },
    /// An operator activated a group.
    GroupActivated {
        /// The group.
        group: String,
        /// Activated with no healthy endpoint.
        forced: bool,
    },
    /// An operator paused a group.
    GroupPaused {
        /// The group.
        group: String,
        /// End of a timed pause; `None` means until resumed.
        #[serde(skip)]
        until: Option<Instant>,
    },
    /// A pause ended (operator resume, activation or timed pause expiry).
    GroupResumed {
        /// The group.
        group: String,
    },
    /// A group failed and is out of rotation until `until` (auto mode).
    GroupCooldown {
        /// The group.
        group: String,
        /// End of the cooldown.
        #[serde(skip)]
        until: Instant,
    },
    /// A cooldown expired.
    GroupCooldownEnded {
        /// The group.
        group: String,
    },
    /// Every endpoint of the active group failed in manual mode; an operator should switch.
    GroupNeedsAttention {
        /// The group.
        group: String,
    },
    /// An endpoint's effective priority changed.
    PriorityChanged {
        /// The endpoint.
        endpoint: String,
        /// Its new priority.
        priority: u32,
    },
    /// An endpoint is rate limited and skipped until `until`.
    EndpointBlocked {
        /// The endpoint.
        endpoint: String,
        /// End of the block.
        #[serde(skip)]
        until: Instant,
    },
    /// An endpoint was demoted for a low honesty score (`demoted: true`) or restored.
    EndpointDemoted {
        /// The endpoint.
        endpoint: String,
        /// Demoted now; `false` when restored.
        demoted: bool,
    },
}

/// Why an operator action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// No group has this name.
    #[error("unknown group `{group}`")]
    UnknownGroup {
        /// The name asked for.
        group: String,
    },
    /// No endpoint has this name.
    #[error("unknown endpoint `{endpoint}`")]
    UnknownEndpoint {
        /// The name asked for.
        endpoint: String,
    },
    /// The group is cooling down after a failure; even a forced activation waits.
    #[error("group `{group}` is in cooldown for another {}s", remaining_secs(*.remaining))]
    InCooldown {
        /// The group.
        group: String,
        /// Time left in cooldown.
        remaining: Duration,
    },
    /// The group has no healthy endpoint; activating it needs force.
    #[error("group `{group}` has no healthy endpoints: activate it with force to use it anyway")]
    NoHealthyEndpoints {
        /// The group.
        group: String,
    },
    /// Resume asked for a group that is not paused.
    #[error("group `{group}` is not paused")]
    NotPaused {
        /// The group.
        group: String,
    },
}

/// Whole seconds, rounded up so a remaining 0.2 s does not read as 0 s.
fn remaining_secs(remaining: Duration) -> u64 {
    let secs = remaining.as_secs();
    if remaining.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// `now + duration`, clamped to the furthest instant the platform can represent.
fn instant_after(now: Instant, duration: Duration) -> Instant {
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
enum Pause {
    /// Until resumed or activated.
    Indefinite,
    /// Until this instant (exclusive), or until resumed or activated.
    Until(Instant),
}

#[derive(Debug, Clone)]
struct GroupState {
    name: String,
    priority: u32,
    /// Positions in `Router::endpoints`, in configuration order.
    members: Vec<usize>,
    pause: Option<Pause>,
    cooldown_until: Option<Instant>,
    needs_attention: bool,
}

impl GroupState {
    fn is_paused(&self, now: Instant) -> bool {
        match self.pause {
            None => false,
            Some(Pause::Indefinite) => true,
            Some(Pause::Until(until)) => now < until,
        }
    }

    fn paused_until(&self, now: Instant) -> Option<Instant> {
        match self.pause {
            Some(Pause::Until(until)) if now < until => Some(until),
            _ => None,
        }
    }

    fn cooldown_until(&self, now: Instant) -> Option<Instant> {
        self.cooldown_until.filter(|until| now < *until)
    }

    fn in_cooldown(&self, now: Instant) -> bool {
        self.cooldown_until(now).is_some()
    }

    fn is_available(&self, now: Instant) -> bool {
        !self.is_paused(now) && !self.in_cooldown(now)
    }
}

#[derive(Debug, Clone)]
struct EndpointState {
    name: String,
    /// Position in `Router::groups`.
    group: usize,
    /// Position in the configuration's `endpoints` list.
    index: usize,
    config_priority: u32,
    priority_override: Option<u32>,
    /// Seconds; a float so the moving average keeps its fractions.
    latency_ewma: Option<f64>,
    probe_latency: Option<Duration>,
    blocked_until: Option<Instant>,
    /// Demoted for a low honesty score ([`honesty`]); the configured and overridden priorities
    /// are kept.
    demoted: bool,
}

impl EndpointState {
    fn priority(&self) -> u32 {
        self.priority_override.unwrap_or(self.config_priority)
    }

    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    /// The `fastest` score in seconds: real latency blended with probe latency when both exist.
    fn score(&self) -> Option<f64> {
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

/// The routing state: groups, endpoints and the operator's choices.
///
/// One owner changes it through `&mut self` methods that return the [`RouterEvent`]s they
/// caused; readers clone it or use the views. See the crate docs for the rules.
#[derive(Debug, Clone)]
pub struct Router {
    settings: RouterSettings,
    endpoints: Vec<EndpointState>,
    /// Sorted by group priority, then first appearance in the configuration.
    groups: Vec<GroupState>,
    /// Auto mode: the group an operator activated; used while it is available.
    pinned: Option<usize>,
    /// Manual mode: the operator's (or the startup) choice. It stays chosen while paused, so
    /// resuming it routes to it again.
    manual_active: Option<usize>,
    /// Manual mode: the startup choice has been made.
    manual_started: bool,
    /// The operator's current choice was a forced activation.
    forced: Option<usize>,
    /// The active group found by the previous evaluation.
    last_active: Option<usize>,
    /// Session bindings and cache statistics (`affinity.rs`).
    affinity: AffinityTable,
    /// Per-endpoint rate-limit readings and predictions (`quota.rs`).
    quota: QuotaBook,
}

impl Router {
    /// A router over these endpoints, all groups available, nothing measured.
    ///
    /// A group's priority is the `group_priority` of its first endpoint in the list. Endpoint
    /// names are expected to be unique (configuration validation guarantees it); a later
    /// endpoint with a name already seen is ignored.
    pub fn new(endpoints: &[Endpoint], settings: RouterSettings) -> Router {
        // Groups in order of first appearance, then stably sorted by priority.
        let mut group_order: Vec<(String, u32)> = Vec::new();
        for endpoint in endpoints {
            if !group_order.iter().any(|(name, _)| *name == endpoint.group) {
                group_order.push((endpoint.group.clone(), endpoint.group_priority));
            }
        }
        group_order.sort_by_key(|(_, priority)| *priority);
        let mut groups: Vec<GroupState> = group_order
            .into_iter()
            .map(|(name, priority)| GroupState {
                name,
                priority,
                members: Vec::new(),
                pause: None,
                cooldown_until: None,
                needs_attention: false,
            })
            .collect();

        let mut states: Vec<EndpointState> = Vec::with_capacity(endpoints.len());
        for (index, endpoint) in endpoints.iter().enumerate() {
            if states.iter().any(|state| state.name == endpoint.name) {
                continue;
            }
            let Some(group) = groups.iter().position(|g| g.name == endpoint.group) else {
                continue;
            };
            groups[group].members.push(states.len());
            states.push(EndpointState {
                name: endpoint.name.clone(),
                group,
                index,
                config_priority: endpoint.priority,
                priority_override: None,
                latency_ewma: None,
                probe_latency: None,
                blocked_until: None,
                demoted: false,
            });
        }

        Router {
            settings,
            endpoints: states,
            groups,
            pinned: None,
            manual_active: None,
            manual_started: false,
            forced: None,
            last_active: None,
            affinity: AffinityTable::default(),
            quota: QuotaBook::default(),
        }
    }

    /// A router over the configuration's endpoints with its settings.
    pub fn from_config(config: &Config) -> Router {
        let mut router = Router::new(&config.endpoints, RouterSettings::from_config(config));
        router.set_affinity_settings(AffinitySettings::from_config(config));
        router
    }

    /// Hot reload: routes over a new endpoint list with new settings, keeping the live state
    /// of whatever the new configuration still names.
    ///
    /// State is matched by name. A group that stays keeps its pause, cooldown and
    /// needs-attention mark and, in auto mode, the operator's pin; in manual mode the operator's
    /// (or the startup) choice stays active while the group exists, and a new startup choice is
    /// made when it was removed. Its priority comes from the new configuration. An endpoint
    /// that stays keeps its latency measurements, rate-limit block and every other mark; the
    /// endpoints for which `reset` answers `true` (their URL or credentials changed) start over
    /// unmeasured and unblocked. Priorities: an operator's priority edit (`set_priority`,
    /// `prefer_endpoint`) survives unless the new configuration changes that endpoint's
    /// priority, in which case the file wins. Removed groups and endpoints are forgotten.
    ///
    /// Returns the events of the change: `PriorityChanged` for every kept endpoint whose
    /// effective priority changed, and those of an evaluation at `now` (a new active group).
    pub fn reconfigure(
        &mut self,
        endpoints: &[Endpoint],
        settings: RouterSettings,
        reset: &dyn Fn(&str) -> bool,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<RouterEvent> {
        let mut next = Router::new(endpoints, settings);
        let mut events = Vec::new();
        for group in &mut next.groups {
            if let Some(old) = self.groups.iter().find(|old| old.name == group.name) {
                let mut kept = old.clone();
                kept.priority = group.priority;
                kept.members = std::mem::take(&mut group.members);
                *group = kept;
            }
        }
        for state in &mut next.endpoints {
            let Some(old) = self.endpoints.iter().find(|old| old.name == state.name) else {
                continue;
            };
            let old_priority = old.priority();
            let mut kept = if reset(&state.name) {
                EndpointState {
                    priority_override: old.priority_override,
                    ..state.clone()
                }
            } else {
                EndpointState {
                    group: state.group,
                    index: state.index,
                    config_priority: state.config_priority,
                    ..old.clone()
                }
            };
            if old.config_priority != state.config_priority {
                // An explicit change in the file wins over an earlier operator edit.
                kept.priority_override = None;
            }
            if kept.priority() != old_priority {
                events.push(RouterEvent::PriorityChanged {
                    endpoint: kept.name.clone(),
                    priority: kept.priority(),
                });
            }
            *state = kept;
        }
        let group_name = |router: &Router, position: Option<usize>| {
            position.and_then(|position| router.groups.get(position).map(|g| g.name.clone()))
        };
        let position_in = |router: &Router, name: Option<String>| {
            name.and_then(|name| router.groups.iter().position(|g| g.name == name))
        };
        let old_active = group_name(self, self.last_active);
        next.pinned = position_in(&next, group_name(self, self.pinned));
        next.forced = position_in(&next, group_name(self, self.forced));
        next.last_active = position_in(&next, group_name(self, self.last_active));
        if settings.auto_switch == self.settings.auto_switch {
            next.manual_active = position_in(&next, group_name(self, self.manual_active));
            next.manual_started = self.manual_started && next.manual_active.is_some();
        }
        // Only the topology and its positions are replaced; every other part of the state
        // (session affinity, quota readings) is keyed by name and stays as it is.
        self.settings = next.settings;
        self.endpoints = next.endpoints;
        self.groups = next.groups;
        self.pinned = next.pinned;
        self.manual_active = next.manual_active;
        self.manual_started = next.manual_started;
        self.forced = next.forced;
        self.last_active = next.last_active;
        self.begin_evaluation(healthy, now, &mut events);
        self.finish_evaluation(healthy, now, &mut events);
        if next.last_active.is_none() && old_active.is_some() {
            // The active group was removed: the change is reported from it, not from no group.
            match events.iter_mut().find_map(|event| match event {
                RouterEvent::ActiveGroupChanged { from, .. } if from.is_none() => Some(from),
                _ => None,
            }) {
                Some(from) => *from = old_active,
                None => events.push(RouterEvent::ActiveGroupChanged {
                    from: old_active,
                    to: None,
                }),
            }
        }
        events
    }

    /// [`Router::reconfigure`] with the configuration's endpoints and settings (affinity
    /// settings included).
    pub fn reconfigure_from_config(
        &mut self,
        config: &Config,
        reset: &dyn Fn(&str) -> bool,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<RouterEvent> {
        let events = self.reconfigure(
            &config.endpoints,
            RouterSettings::from_config(config),
            reset,
            healthy,
            now,
        );
        self.set_affinity_settings(AffinitySettings::from_config(config));
        events
    }

    /// The settings this router was built with.
    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    /// Auto mode (groups switch on failure) rather than manual mode.
    pub fn is_auto(&self) -> bool {
        self.settings.auto_switch
    }

    /// The endpoints to try next, best first, and the events the evaluation produced.
    ///
    /// Candidates come from the active group only: unblocked healthy endpoints in strategy
    /// order, or, when none of them is healthy, every unblocked endpoint of the group in
    /// strategy order with `healthy: false`.
    pub fn plan(&mut self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> RoutePlan {
        let mut events = Vec::new();
        self.begin_evaluation(healthy, now, &mut events);
        let active = self.finish_evaluation(healthy, now, &mut events);
        let endpoints = match active {
            Some(group) => self.group_candidates(group, healthy, now),
            None => Vec::new(),
        };
        RoutePlan {
            group: active.map(|group| self.groups[group].name.clone()),
            endpoints,
            events,
        }
    }

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
            let state = &mut self.groups[position];
            let until = state.cooldown_until.map_or(until, |old| old.max(until));
            state.cooldown_until = Some(until);
            events.push(RouterEvent::GroupCooldown {
                group: state.name.clone(),
                until,
            });
            if self.pinned == Some(position) {
                self.pinned = None;
            }
            if self.forced == Some(position) {
                self.forced = None;
            }
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

    /// A health probe found `endpoint` healthy again after it had been unhealthy: its group's
    /// cooldown ends early (the cooldown exists to spare a dead group; a passing probe shows it
    /// is back), so traffic and held requests can return at once. An unknown endpoint, or a group
    /// not in cooldown, changes nothing.
    pub fn endpoint_recovered(&mut self, endpoint: &str, now: Instant) -> Vec<RouterEvent> {
        let Some(position) = self.endpoint_position(endpoint) else {
            return Vec::new();
        };
        let group = &mut self.groups[self.endpoints[position].group];
        if group.cooldown_until.is_some_and(|until| now < until) {
            group.cooldown_until = None;
            return vec![RouterEvent::GroupCooldownEnded {
                group: group.name.clone(),
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

    /// Operator: route to `group`.
    ///
    /// Refused for an unknown group, a group in cooldown (even with `force`) and a group with
    /// no healthy endpoint unless `force`. Otherwise the group's pause and needs-attention mark
    /// are cleared and it becomes the active group (manual mode) or the pinned group (auto
    /// mode: used while it is available, until it fails or is paused).
    pub fn activate(
        &mut self,
        group: &str,
        force: bool,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Result<Vec<RouterEvent>, RouterError> {
        let position = self.require_group(group)?;
        let state = &self.groups[position];
        if let Some(until) = state.cooldown_until(now) {
            return Err(RouterError::InCooldown {
                group: state.name.clone(),
                remaining: until.saturating_duration_since(now),
            });
        }
        let has_healthy = self.healthy_count(position, healthy) > 0;
        if !has_healthy && !force {
            return Err(RouterError::NoHealthyEndpoints {
                group: state.name.clone(),
            });
        }

        let mut events = Vec::new();
        self.begin_evaluation(healthy, now, &mut events);
        let state = &mut self.groups[position];
        if state.pause.take().is_some() {
            events.push(RouterEvent::GroupResumed {
                group: state.name.clone(),
            });
        }
        state.needs_attention = false;
        let forced = !has_healthy;
        events.push(RouterEvent::GroupActivated {
            group: state.name.clone(),
            forced,
        });
        if self.settings.auto_switch {
            self.pinned = Some(position);
        } else {
            self.manual_active = Some(position);
        }
        self.forced = forced.then_some(position);
        self.finish_evaluation(healthy, now, &mut events);
        Ok(events)
    }

    /// Operator: take `group` out of rotation until `now + duration`, or until resumed when
    /// `duration` is `None` or zero.
    ///
    /// Pausing the active group moves traffic: in auto mode to the next available group (the
    /// pin is dropped); in manual mode to the lowest-priority available group with a healthy
    /// endpoint, or, when there is none, nowhere until the group is resumed.
    pub fn pause(
        &mut self,
        group: &str,
        duration: Option<Duration>,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Result<Vec<RouterEvent>, RouterError> {
        let position = self.require_group(group)?;
        let mut events = Vec::new();
        self.begin_evaluation(healthy, now, &mut events);

        let pause = match duration.filter(|duration| !duration.is_zero()) {
            // A pause longer than the clock can represent is indefinite.
            Some(duration) => now
                .checked_add(duration)
                .map_or(Pause::Indefinite, Pause::Until),
            None => Pause::Indefinite,
        };
        let state = &mut self.groups[position];
        state.pause = Some(pause);
        events.push(RouterEvent::GroupPaused {
            group: state.name.clone(),
            until: match pause {
                Pause::Until(until) => Some(until),
                Pause::Indefinite => None,
            },
        });

        if self.settings.auto_switch {
            if self.pinned == Some(position) {
                self.pinned = None;
                if self.forced == Some(position) {
                    self.forced = None;
                }
            }
        } else if self.manual_active == Some(position) {
            if let Some(next) = self.manual_fallback(healthy, now) {
                self.manual_active = Some(next);
                self.forced = None;
            }
        }
        self.finish_evaluation(healthy, now, &mut events);
        Ok(events)
    }

    /// Operator: end the pause of `group`. Refused for an unknown group or one that is not
    /// paused. In auto mode the group becomes active again if it is the preferred one; in
    /// manual mode it becomes active again only if it was the active group when paused.
    pub fn resume(
        &mut self,
        group: &str,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Result<Vec<RouterEvent>, RouterError> {
        let position = self.require_group(group)?;
        if !self.groups[position].is_paused(now) {
            return Err(RouterError::NotPaused {
                group: self.groups[position].name.clone(),
            });
        }
        let mut events = Vec::new();
        self.begin_evaluation(healthy, now, &mut events);
        let state = &mut self.groups[position];
        state.pause = None;
        events.push(RouterEvent::GroupResumed {
            group: state.name.clone(),
        });
        self.finish_evaluation(healthy, now, &mut events);
        Ok(events)
    }

    /// Operator: give `endpoint` this priority (overrides the configuration).
    pub fn set_priority(
        &mut self,
        endpoint: &str,
        priority: u32,
    ) -> Result<Vec<RouterEvent>, RouterError> {
        let position = self.require_endpoint(endpoint)?;
        let mut events = Vec::new();
        self.override_priority(position, priority, &mut events);
        Ok(events)
    }

    /// `-p <name>`: the endpoint gets priority 1 and every other endpoint with priority <= 1
    /// is moved back by 2, so the named one is preferred inside its group. Session-affinity
    /// bindings are released, so conversations already bound elsewhere move too.
    pub fn prefer_endpoint(&mut self, endpoint: &str) -> Result<Vec<RouterEvent>, RouterError> {
        let preferred = self.require_endpoint(endpoint)?;
        let mut events = Vec::new();
        for position in 0..self.endpoints.len() {
            let current = self.endpoints[position].priority();
            let priority = if position == preferred {
                1
            } else if current <= 1 {
                current.saturating_add(2)
            } else {
                current
            };
            self.override_priority(position, priority, &mut events);
        }
        // "Use this endpoint" is an explicit request to move traffic: sessions bound elsewhere
        // follow it instead of holding their prompt cache (a plain priority edit only steers
        // new sessions).
        self.affinity.release_all();
        Ok(events)
    }

    /// Every group, sorted by group priority then first appearance in the configuration.
    pub fn groups(&self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> Vec<GroupView> {
        let active = self.compute_active(healthy, now);
        self.groups
            .iter()
            .enumerate()
            .map(|(position, state)| {
                let is_active = active == Some(position);
                let paused = state.is_paused(now);
                let cooldown_until = state.cooldown_until(now);
                let in_cooldown = cooldown_until.is_some();
                let healthy_endpoints = self.healthy_count(position, healthy);
                let status = if paused {
                    GroupStatus::Paused
                } else if in_cooldown {
                    GroupStatus::Cooldown
                } else if is_active {
                    GroupStatus::Active
                } else if healthy_endpoints == 0 {
                    GroupStatus::NoHealthyEndpoints
                } else {
                    GroupStatus::Available
                };
                GroupView {
                    name: state.name.clone(),
                    priority: state.priority,
                    is_active,
                    paused,
                    paused_until: state.paused_until(now),
                    in_cooldown,
                    cooldown_until,
                    cooldown_remaining: cooldown_until
                        .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
                    needs_attention: state.needs_attention,
                    forced: self.forced == Some(position),
                    total_endpoints: state.members.len(),
                    healthy_endpoints,
                    status,
                    can_activate: healthy_endpoints > 0 && !is_active && !in_cooldown,
                    can_force_activate: healthy_endpoints == 0 && !is_active && !in_cooldown,
                    can_pause: !paused,
                    can_resume: paused,
                }
            })
            .collect()
    }

    /// Every endpoint, in configuration order.
    pub fn endpoints(&self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> Vec<EndpointView> {
        self.endpoints
            .iter()
            .map(|state| EndpointView {
                name: state.name.clone(),
                group: self.groups[state.group].name.clone(),
                index: state.index,
                priority: state.priority(),
                config_priority: state.config_priority,
                latency_ewma: state.latency_ewma.and_then(secs_to_duration),
                probe_latency: state.probe_latency,
                score: state.score().and_then(secs_to_duration),
                blocked_until: state.blocked_until.filter(|until| now < *until),
                healthy: healthy(&state.name),
                demoted: state.demoted,
            })
            .collect()
    }

    /// The group requests would be routed to at `now` (what [`Router::plan`] would answer,
    /// without changing anything).
    pub fn active_group(&self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> Option<String> {
        self.compute_active(healthy, now)
            .map(|group| self.groups[group].name.clone())
    }

    /// Earliest instant after `now` at which something becomes available again (a cooldown
    /// ends, a timed pause ends, a rate-limit block ends), so a suspended request knows when
    /// to look again. `None` when nothing is waiting on the clock.
    pub fn next_change_at(&self, now: Instant) -> Option<Instant> {
        let group_times = self.groups.iter().flat_map(|state| {
            [state.paused_until(now), state.cooldown_until(now)]
                .into_iter()
                .flatten()
        });
        let endpoint_times = self
            .endpoints
            .iter()
            .filter_map(|state| state.blocked_until.filter(|until| now < *until));
        group_times.chain(endpoint_times).min()
    }

    // ---- evaluation ----

    /// Expires timed states and, in manual mode, makes the startup choice.
    fn begin_evaluation(
        &mut self,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
        events: &mut Vec<RouterEvent>,
    ) {
        for state in &mut self.groups {
            if matches!(state.pause, Some(Pause::Until(until)) if now >= until) {
                state.pause = None;
                events.push(RouterEvent::GroupResumed {
                    group: state.name.clone(),
                });
            }
            if state.cooldown_until.is_some_and(|until| now >= until) {
                state.cooldown_until = None;
                events.push(RouterEvent::GroupCooldownEnded {
                    group: state.name.clone(),
                });
            }
        }
        for state in &mut self.endpoints {
            if state.blocked_until.is_some_and(|until| now >= until) {
                state.blocked_until = None;
            }
        }
        if !self.settings.auto_switch && !self.manual_started {
            self.manual_active = self.manual_startup_choice(healthy);
            self.manual_started = true;
        }
    }

    /// Finds the active group and reports it when it differs from the previous evaluation.
    fn finish_evaluation(
        &mut self,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
        events: &mut Vec<RouterEvent>,
    ) -> Option<usize> {
        let active = self.compute_active(healthy, now);
        if active != self.last_active {
            events.push(RouterEvent::ActiveGroupChanged {
                from: self
                    .last_active
                    .map(|group| self.groups[group].name.clone()),
                to: active.map(|group| self.groups[group].name.clone()),
            });
            self.last_active = active;
        }
        active
    }

    /// The active group at `now`, without changing anything.
    fn compute_active(&self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> Option<usize> {
        if self.settings.auto_switch {
            if let Some(pinned) = self.pinned {
                if self.groups[pinned].is_available(now) && self.has_unblocked(pinned, now) {
                    return Some(pinned);
                }
            }
            let available = || (0..self.groups.len()).filter(|g| self.groups[*g].is_available(now));
            available()
                .find(|group| {
                    self.groups[*group].members.iter().any(|member| {
                        let state = &self.endpoints[*member];
                        !state.is_blocked(now) && healthy(&state.name)
                    })
                })
                .or_else(|| available().find(|group| self.has_unblocked(*group, now)))
        } else {
            let choice = if self.manual_started {
                self.manual_active
            } else {
                self.manual_startup_choice(healthy)
            };
            choice.filter(|group| self.groups[*group].is_available(now))
        }
    }

    /// Manual mode at startup: the lowest-priority group with a healthy endpoint, else the
    /// lowest-priority group. Rate limits are ignored: they are short-lived and this choice
    /// sticks.
    fn manual_startup_choice(&self, healthy: &dyn Fn(&str) -> bool) -> Option<usize> {
        (0..self.groups.len())
            .find(|group| self.healthy_count(*group, healthy) > 0)
            .or(if self.groups.is_empty() {
                None
            } else {
                Some(0)
            })
    }

    /// Manual mode, pausing the active group: the lowest-priority available group with a
    /// healthy endpoint.
    fn manual_fallback(&self, healthy: &dyn Fn(&str) -> bool, now: Instant) -> Option<usize> {
        (0..self.groups.len()).find(|group| {
            self.groups[*group].is_available(now) && self.healthy_count(*group, healthy) > 0
        })
    }

    /// The group's unblocked endpoints in strategy order: the healthy ones, or all of them
    /// (marked unhealthy) when none is healthy.
    fn group_candidates(
        &self,
        group: usize,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<PlannedEndpoint> {
        let mut members: Vec<usize> = self.groups[group]
            .members
            .iter()
            .copied()
            .filter(|member| !self.endpoints[*member].is_blocked(now))
            .collect();
        members.sort_by(|a, b| self.strategy_order(*a, *b));
        let healthy_members: Vec<usize> = members
            .iter()
            .copied()
            .filter(|member| healthy(&self.endpoints[*member].name))
            .collect();
        let (chosen, are_healthy) = if healthy_members.is_empty() {
            (members, false)
        } else {
            (healthy_members, true)
        };
        chosen
            .into_iter()
            .map(|member| {
                let state = &self.endpoints[member];
                PlannedEndpoint {
                    name: state.name.clone(),
                    group: self.groups[state.group].name.clone(),
                    index: state.index,
                    healthy: are_healthy,
                }
            })
            .collect()
    }

    fn strategy_order(&self, a: usize, b: usize) -> Ordering {
        let (a, b) = (&self.endpoints[a], &self.endpoints[b]);
        let by_priority = a.priority().cmp(&b.priority()).then(a.index.cmp(&b.index));
        let by_honesty = a.demoted.cmp(&b.demoted);
        by_honesty.then(match self.settings.strategy {
            StrategyType::Priority => by_priority,
            StrategyType::Fastest => {
                let by_score = match (a.score(), b.score()) {
                    (Some(a), Some(b)) => a.total_cmp(&b),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                by_score.then(by_priority)
            }
        })
    }

    // ---- helpers ----

    fn override_priority(&mut self, position: usize, priority: u32, events: &mut Vec<RouterEvent>) {
        let state = &mut self.endpoints[position];
        let changed = state.priority() != priority;
        state.priority_override = Some(priority);
        if changed {
            events.push(RouterEvent::PriorityChanged {
                endpoint: state.name.clone(),
                priority,
            });
        }
    }

    fn healthy_count(&self, group: usize, healthy: &dyn Fn(&str) -> bool) -> usize {
        self.groups[group]
            .members
            .iter()
            .filter(|member| healthy(&self.endpoints[**member].name))
            .count()
    }

    fn has_unblocked(&self, group: usize, now: Instant) -> bool {
        self.groups[group]
            .members
            .iter()
            .any(|member| !self.endpoints[*member].is_blocked(now))
    }

    fn group_position(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|state| state.name == name)
    }

    fn endpoint_position(&self, name: &str) -> Option<usize> {
        self.endpoints.iter().position(|state| state.name == name)
    }

    fn require_group(&self, name: &str) -> Result<usize, RouterError> {
        self.group_position(name)
            .ok_or_else(|| RouterError::UnknownGroup {
                group: name.to_string(),
            })
    }

    fn require_endpoint(&self, name: &str) -> Result<usize, RouterError> {
        self.endpoint_position(name)
            .ok_or_else(|| RouterError::UnknownEndpoint {
                endpoint: name.to_string(),
            })
    }
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}
