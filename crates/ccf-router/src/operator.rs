//! Operator actions: activate (optionally forced), pause, resume, priority edits and `-p`
//! (prefer an endpoint), as asked for by the admin API, the TUI and the command line. Each
//! action checks what it may do and answers with a [`RouterError`] when refused, or with the
//! [`RouterEvent`]s it caused; group actions run an evaluation around the change so the events
//! include a new active group.

use std::time::{Duration, Instant};

use crate::state::Pause;
use crate::{Router, RouterEvent};

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

impl Router {
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
    ///
    /// A demotion (a larger number than its current priority) releases the session-affinity
    /// bindings to the endpoint: the operator said "move", so its conversations follow the new
    /// order on their next turn instead of keeping their prompt cache there
    /// ([`Router::sessions_bound_to`] tells the caller how many were bound). A promotion, or a
    /// demotion of another endpoint, releases nothing: sessions bound elsewhere keep their cache
    /// and only new sessions follow the new order.
    pub fn set_priority(
        &mut self,
        endpoint: &str,
        priority: u32,
    ) -> Result<Vec<RouterEvent>, RouterError> {
        let position = self.require_endpoint(endpoint)?;
        let demoted = priority > self.endpoints[position].priority();
        let mut events = Vec::new();
        self.override_priority(position, priority, &mut events);
        if demoted {
            self.affinity.release_endpoint(endpoint);
        }
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
}
