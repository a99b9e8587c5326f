//! Hot reload: [`Router::reconfigure`] rebuilds the topology from a new configuration and
//! carries over, by name, the live state of every group and endpoint that stays (pauses,
//! cooldowns, pins, measurements, blocks, operator priority edits). Session affinity and quota
//! readings are keyed by name and are not touched.

use std::time::Instant;

use ccf_config::{Config, Endpoint};

use crate::state::EndpointState;
use crate::{AffinitySettings, Router, RouterEvent, RouterSettings};

impl Router {
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
    /// priority, in which case the file wins. An endpoint whose effective priority rises (a
    /// demotion) loses its session-affinity bindings, as with [`Router::set_priority`]. Removed
    /// groups and endpoints are forgotten.
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
            if kept.priority() > old_priority {
                // A demotion by the file is the operator saying "move", as through the API.
                self.affinity.release_endpoint(&kept.name);
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
        self.set_quota_drain_at(config.routing.quota_drain_at);
        events
    }
}
