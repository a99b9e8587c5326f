//! Planning: which endpoints a request tries, in which order ([`Router::plan`]). An evaluation
//! first expires timed states (pauses, cooldowns, rate-limit blocks) and makes the manual-mode
//! startup choice, then finds the active group by the rules in the crate docs, then orders that
//! group's unblocked endpoints by strategy (`priority` or `fastest`, demoted endpoints last).
//! Operator actions and reloads run the same evaluation so the events they report agree with
//! what the next plan does.

use std::cmp::Ordering;
use std::time::Instant;

use ccf_config::StrategyType;

use crate::state::Pause;
use crate::{Router, RouterEvent};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Router {
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

    /// Expires timed states and, in manual mode, makes the startup choice.
    pub(crate) fn begin_evaluation(
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
    pub(crate) fn finish_evaluation(
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
    pub(crate) fn compute_active(
        &self,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Option<usize> {
        if self.settings.auto_switch {
            if let Some(pinned) = self.pinned {
                if self.groups[pinned].is_available(now) && self.has_unblocked(pinned, now) {
                    return Some(pinned);
                }
            }
            let available = || (0..self.groups.len()).filter(|g| self.groups[*g].is_available(now));
            // The last resort: a group cooling down (never a paused one) when no available group
            // has an unblocked endpoint. Turning every request away for the rest of a cooldown
            // would be worse than trying the group again, and only real traffic can tell whether
            // it serves again (a passing probe cannot); a success ends its cooldown
            // (`record_group_success`).
            let cooling = || {
                (0..self.groups.len()).filter(|g| {
                    let state = &self.groups[*g];
                    !state.is_paused(now) && state.in_cooldown(now)
                })
            };
            let with_healthy_unblocked = |group: &usize| {
                self.groups[*group].members.iter().any(|member| {
                    let state = &self.endpoints[*member];
                    !state.is_blocked(now) && healthy(&state.name)
                })
            };
            available()
                .find(with_healthy_unblocked)
                .or_else(|| available().find(|group| self.has_unblocked(*group, now)))
                .or_else(|| cooling().find(with_healthy_unblocked))
                .or_else(|| cooling().find(|group| self.has_unblocked(*group, now)))
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
    pub(crate) fn manual_fallback(
        &self,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> Option<usize> {
        (0..self.groups.len()).find(|group| {
            self.groups[*group].is_available(now) && self.healthy_count(*group, healthy) > 0
        })
    }

    /// The group's unblocked endpoints in strategy order: the healthy ones, or all of them
    /// (marked unhealthy) when none is healthy.
    pub(crate) fn group_candidates(
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
}
