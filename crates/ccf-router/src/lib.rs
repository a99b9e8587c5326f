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
//!   endpoint, else the lowest-priority available group with an unblocked endpoint, else (the
//!   last resort) the lowest-priority group in cooldown, not paused, with an unblocked endpoint
//!   (healthy first), else none. A group whose endpoints all failed in one request cools down
//!   and loses its pin. A cooldown ends at its time or when real traffic on the group succeeds
//!   ([`Router::record_group_success`]), never on a health probe: a probe says "reachable", not
//!   "serving".
//! - Manual mode: the first evaluation picks the lowest-priority group with a healthy endpoint
//!   (else the lowest-priority group); afterwards only operator actions move traffic. A failed
//!   group is marked as needing attention and stays active.
//!
//! Main types: [`Router`] (the state and its operations), [`RouterSettings`], [`RoutePlan`] and
//! [`PlannedEndpoint`] (the answer), [`GroupView`] and [`EndpointView`] (snapshots for UIs),
//! [`RouterEvent`] and [`RouterError`].
//!
//! Where things live: `plan.rs` (evaluation and endpoint order), `outcomes.rs` (what traffic
//! and probes report: failures, latencies, rate-limit blocks, demotions), `operator.rs`
//! (activate, pause, resume, priority edits), `views.rs` (read-only snapshots for UIs),
//! `events.rs` (the change reports), `reconfigure.rs` (hot reload), `state.rs` (the private
//! per-group and per-endpoint state), `affinity.rs` (session affinity), `quota.rs`
//! (rate-limit predictions), `fast_test.rs` (the order a fast test's measurements give) and
//! [`honesty`] (relay honesty scoring).

use std::time::Duration;

use ccf_config::{Config, Endpoint, StrategyType};

mod affinity;
mod events;
mod fast_test;
pub mod honesty;
mod model_rules;
mod operator;
mod outcomes;
mod plan;
mod quota;
mod reconfigure;
#[cfg(test)]
mod reconfigure_tests;
mod state;
pub mod subscription;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod views;

pub use affinity::{
    AffinityMove, AffinitySettings, AffinityTable, AffinityTotals, AffinityView, CacheTokens,
    EndpointCacheView, HeldTokens, SessionDecision, SessionKey, SessionRequest, SessionSource,
    SessionView, TurnTokens, DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TTL, LONG_AFFINITY_TTL,
};
pub use events::RouterEvent;
pub use fast_test::rank_by_fast_test;
pub use model_rules::{model_route, ModelRoute};
pub use operator::RouterError;
pub use plan::{PlannedEndpoint, RoutePlan};
pub use quota::{
    DimensionView, DrainReason, EndpointQuotaView, QuotaBook, QuotaDimension, QuotaObservation,
    QuotaReading, QuotaRecorded,
};
pub use subscription::{
    QuotaAlert, SubscriptionReading, SubscriptionStatus, SubscriptionView, WindowReading,
    WindowView, DEFAULT_QUOTA_DRAIN_AT,
};
pub use views::{EndpointView, GroupStatus, GroupView};

use state::{EndpointState, GroupState};

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
        router.set_quota_drain_at(config.routing.quota_drain_at);
        router
    }

    /// The settings this router was built with.
    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    /// Auto mode (groups switch on failure) rather than manual mode.
    pub fn is_auto(&self) -> bool {
        self.settings.auto_switch
    }
}
