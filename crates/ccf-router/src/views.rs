//! Read-only views for operators (admin API, TUI, status line): every group with its status and
//! the actions that would succeed ([`GroupView`]), every endpoint with its priorities,
//! latencies and blocks ([`EndpointView`]), the active group and the next instant something
//! changes on the clock. A view computes the same answer an evaluation would at `now` without
//! changing anything.

use std::time::{Duration, Instant};

use crate::Router;

/// The state of one group as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub paused_until: Option<Instant>,
    /// Out of rotation after a failure (auto mode).
    pub in_cooldown: bool,
    /// End of the cooldown; `None` when not in cooldown.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    pub blocked_until: Option<Instant>,
    /// What the health snapshot says.
    pub healthy: bool,
    /// Demoted for a low honesty score: tried after the other endpoints of its group.
    pub demoted: bool,
}

impl Router {
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
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}
