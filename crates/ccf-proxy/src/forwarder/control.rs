//! Everything a [`Forwarder`] offers besides serving requests: operator actions (activate,
//! pause, resume, priorities, `-p`) and their report to an [`OperatorObserver`], actions made on
//! another instance ([`Forwarder::apply_remote`]), the read-only views the admin API, the
//! dashboard and the TUI show, and hot reload (the new [`ConfigGeneration`] and what it
//! reconfigures).
//!
//! It must not know the request path: nothing here touches a request; every change goes through
//! the router, the health monitor or the suspension, then wakes held requests.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ccf_config::Config;
use ccf_health::{HealthMonitor, HealthSettings};
use ccf_lifecycle::RequestId;
use ccf_router::{EndpointView, GroupView, Router, RouterError, RouterEvent};

use super::{ConfigGeneration, Forwarder, CONNECT_TIMEOUT};
use crate::client::build_upstream_client;
use crate::events::{EventBus, ForwarderEvent};
use crate::monitoring::Metrics;
use crate::probe::UpstreamProber;
use crate::reload::{ReloadError, ReloadReport, ReloadStatus, Reloader};

/// An operator action made on this forwarder (admin API, TUI), reported to its
/// [`OperatorObserver`] after it was applied. [`Forwarder::apply_remote`] applies one made
/// elsewhere (another instance sharing the database) without reporting it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// `group` was activated (`force`: as asked by the operator).
    Activate {
        /// The group.
        group: String,
        /// Activation with no healthy endpoint was allowed.
        force: bool,
    },
    /// `group` was paused until `until` (wall clock), or until resumed when `None`.
    Pause {
        /// The group.
        group: String,
        /// End of a timed pause.
        until: Option<SystemTime>,
    },
    /// `group`'s pause ended.
    Resume {
        /// The group.
        group: String,
    },
    /// `endpoint` got this priority (`set_endpoint_priority`, or each endpoint whose priority
    /// `prefer_endpoint` changed).
    Priority {
        /// The endpoint.
        endpoint: String,
        /// Its new priority.
        priority: u32,
    },
}

/// Learns of every operator action made through this forwarder's methods (not of those applied
/// with [`Forwarder::apply_remote`]). Called synchronously after the action was applied: do not
/// block.
pub trait OperatorObserver: Send + Sync {
    /// An action was applied.
    fn on_action(&self, action: &OperatorAction);
}

impl Forwarder {
    /// The configuration the engine runs with now (replaced by [`Forwarder::reload`]).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.shared.current().config)
    }

    /// Hot reload: applies a new validated configuration without dropping anything.
    ///
    /// Endpoints, priorities, groups, strategy, retry, health, streaming, suspension, inbound
    /// auth, token counting and the outbound proxy take effect for the next routing round;
    /// requests already relaying keep the upstream connection they have. Live state carries
    /// over by name (see [`Router::reconfigure`] and [`HealthMonitor::reconfigure`]): health,
    /// cooldowns, pauses, the active group and operator priority edits; held requests wake up
    /// and route again under the new configuration. Listen addresses, storage and the admin API
    /// are left as they are and listed in [`ReloadReport::restart_required`]. On error nothing
    /// changed.
    pub fn reload(&self, config: Arc<Config>) -> Result<ReloadReport, ReloadError> {
        let shared = &self.shared;
        let _one_at_a_time = shared
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = shared.current();
        let report = crate::reload::diff(&old.config, &config);
        let config = Arc::new(crate::reload::effective(&old.config, &config));
        let client = if crate::client::same_client_settings(&old.config, &config) {
            old.client.clone()
        } else {
            build_upstream_client(&config, CONNECT_TIMEOUT)?
        };
        let reset = |name: &str| match (old.config.endpoint(name), config.endpoint(name)) {
            (Some(before), Some(after)) => crate::reload::connection_changed(before, after),
            _ => false,
        };
        shared.health.reconfigure(
            &config.endpoints,
            HealthSettings::from_config(&config),
            Arc::new(UpstreamProber::new(client.clone())),
        );
        shared
            .current
            .store(Arc::new(ConfigGeneration::new(Arc::clone(&config), client)));
        let health = shared.health.snapshot();
        let events = {
            let now = Instant::now();
            let mut router = shared.router();
            let bound: Vec<(&str, usize)> = config
                .endpoints
                .iter()
                .map(|endpoint| {
                    let name = endpoint.name.as_str();
                    (name, router.sessions_bound_to(name, now))
                })
                .collect();
            let events = router.reconfigure_from_config(
                &config,
                &reset,
                &|name| health.is_healthy(name),
                now,
            );
            for (endpoint, before) in bound {
                log_released(endpoint, before, router.sessions_bound_to(endpoint, now));
            }
            events
        };
        shared.publish_router(events);
        shared.key_limits.reconfigure(&config);
        shared.suspension.reconfigure(
            config.request_suspend.enabled,
            config.request_suspend.timeout.get(),
            usize::try_from(config.request_suspend.max_suspended_requests).unwrap_or(usize::MAX),
        );
        Ok(report)
    }

    /// Installs what [`Forwarder::request_reload`] calls (the application's configuration
    /// reader). Only the first call takes effect; returns whether this one did.
    pub fn set_reloader(&self, reloader: Arc<dyn Reloader>) -> bool {
        self.shared.reloader.set(reloader).is_ok()
    }

    /// Whether a [`Reloader`] is installed (the application was started from a file).
    pub fn reload_enabled(&self) -> bool {
        self.shared.reloader.get().is_some()
    }

    /// Re-reads and applies the configuration through the installed [`Reloader`] (the admin
    /// API's `POST /api/v1/config/reload`); `None` when no reloader is installed.
    pub fn request_reload(&self, trigger: &str) -> Option<ReloadStatus> {
        let reloader = Arc::clone(self.shared.reloader.get()?);
        Some(reloader.reload(trigger))
    }

    /// Keeps `status` as the last reload result and publishes it on the event bus.
    pub fn record_reload(&self, status: ReloadStatus) {
        *self
            .shared
            .reload_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status.clone());
        self.shared
            .events
            .publish(ForwarderEvent::ConfigReloaded(status));
    }

    /// The last reload result, if any reload was attempted.
    pub fn reload_status(&self) -> Option<ReloadStatus> {
        self.shared
            .reload_status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The event bus (routing, health and suspension changes).
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// The Prometheus metrics (`/metrics`): the application sets the recorder backlog and
    /// installs the pricing through it.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Endpoint health.
    pub fn health(&self) -> &HealthMonitor {
        &self.shared.health
    }

    /// Requests held now and how long each has waited.
    pub fn held_requests(&self) -> Vec<(RequestId, Duration)> {
        self.shared.suspension.held_requests()
    }

    /// Every group's state.
    pub fn groups(&self) -> Vec<GroupView> {
        let health = self.shared.health.snapshot();
        self.shared
            .router()
            .groups(&|name| health.is_healthy(name), Instant::now())
    }

    /// Session affinity: settings, counters, per-endpoint cache numbers and up to `limit` live
    /// sessions (most recent first).
    pub fn affinity(&self, limit: usize) -> ccf_router::AffinityView {
        self.shared.router().affinity_view(Instant::now(), limit)
    }

    /// Every endpoint's last rate-limit readings, burn rate and predicted exhaustion.
    pub fn quota(&self) -> Vec<ccf_router::EndpointQuotaView> {
        self.shared.router().quota_view(Instant::now())
    }
    /// Every endpoint's routing state.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let health = self.shared.health.snapshot();
        self.shared
            .router()
            .endpoints(&|name| health.is_healthy(name), Instant::now())
    }

    /// Operator action: make `group` the active one (`force` allows a group without healthy
    /// endpoints).
    pub fn activate_group(&self, group: &str, force: bool) -> Result<(), RouterError> {
        self.activate_local(group, force)?;
        self.report(OperatorAction::Activate {
            group: group.to_string(),
            force,
        });
        Ok(())
    }

    fn activate_local(&self, group: &str, force: bool) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.activate(
                group,
                force,
                &|name| health.is_healthy(name),
                Instant::now(),
            )
        })
    }

    /// Operator action: take `group` out of rotation, for `duration` or until resumed.
    pub fn pause_group(&self, group: &str, duration: Option<Duration>) -> Result<(), RouterError> {
        self.pause_local(group, duration)?;
        let until = duration
            .filter(|duration| !duration.is_zero())
            .and_then(|duration| SystemTime::now().checked_add(duration));
        self.report(OperatorAction::Pause {
            group: group.to_string(),
            until,
        });
        Ok(())
    }

    fn pause_local(&self, group: &str, duration: Option<Duration>) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.pause(
                group,
                duration,
                &|name| health.is_healthy(name),
                Instant::now(),
            )
        })
    }

    /// Operator action: put a paused group back into rotation.
    pub fn resume_group(&self, group: &str) -> Result<(), RouterError> {
        self.resume_local(group)?;
        self.report(OperatorAction::Resume {
            group: group.to_string(),
        });
        Ok(())
    }

    fn resume_local(&self, group: &str) -> Result<(), RouterError> {
        let health = self.shared.health.snapshot();
        self.operator_action(|router| {
            router.resume(group, &|name| health.is_healthy(name), Instant::now())
        })
    }

    /// Operator action: change an endpoint's priority at once (health is kept). A demotion (a
    /// larger number) releases the session-affinity bindings to the endpoint, so its
    /// conversations move with the traffic; that is logged.
    pub fn set_endpoint_priority(&self, endpoint: &str, priority: u32) -> Result<(), RouterError> {
        self.operator_action(|router| set_priority_releasing(router, endpoint, priority))?;
        self.report(OperatorAction::Priority {
            endpoint: endpoint.to_string(),
            priority,
        });
        Ok(())
    }

    /// Operator action: the `-p` override at run time.
    pub fn prefer_endpoint(&self, endpoint: &str) -> Result<(), RouterError> {
        let events = self.shared.router().prefer_endpoint(endpoint)?;
        for event in &events {
            if let RouterEvent::PriorityChanged { endpoint, priority } = event {
                self.report(OperatorAction::Priority {
                    endpoint: endpoint.clone(),
                    priority: *priority,
                });
            }
        }
        self.shared.publish_router(events);
        self.shared.suspension.wake();
        Ok(())
    }

    /// Every endpoint's relay honesty scores, flags and demotion (see `docs/routing.md`).
    pub fn honesty(&self) -> Vec<ccf_router::honesty::EndpointHonesty> {
        self.shared.honesty.view(Instant::now())
    }

    /// Installs the observer of operator actions (the multi-instance sync). Only the first call
    /// takes effect; returns whether this one did.
    pub fn set_operator_observer(&self, observer: Arc<dyn OperatorObserver>) -> bool {
        self.shared.operator_observer.set(observer).is_ok()
    }

    /// Applies an operator action made on another instance, without reporting it to the
    /// [`OperatorObserver`] (so it is not published again). Idempotent where the router allows:
    /// resuming a group that is not paused and a pause whose end has passed are no-ops. An
    /// activation the local health refuses is returned as the router's error.
    pub fn apply_remote(&self, action: &OperatorAction) -> Result<(), RouterError> {
        match action {
            OperatorAction::Activate { group, force } => self.activate_local(group, *force),
            OperatorAction::Pause { group, until } => match until {
                None => self.pause_local(group, None),
                Some(until) => match until.duration_since(SystemTime::now()) {
                    Ok(left) if !left.is_zero() => self.pause_local(group, Some(left)),
                    // Already over: the group is not paused.
                    _ => self.resume_remote(group),
                },
            },
            OperatorAction::Resume { group } => self.resume_remote(group),
            OperatorAction::Priority { endpoint, priority } => {
                self.operator_action(|router| set_priority_releasing(router, endpoint, *priority))
            }
        }
    }

    fn resume_remote(&self, group: &str) -> Result<(), RouterError> {
        match self.resume_local(group) {
            Err(RouterError::NotPaused { .. }) => Ok(()),
            other => other,
        }
    }

    fn report(&self, action: OperatorAction) {
        if let Some(observer) = self.shared.operator_observer.get() {
            observer.on_action(&action);
        }
    }

    fn operator_action(
        &self,
        action: impl FnOnce(&mut Router) -> Result<Vec<RouterEvent>, RouterError>,
    ) -> Result<(), RouterError> {
        let events = action(&mut self.shared.router())?;
        self.shared.publish_router(events);
        self.shared.suspension.wake();
        Ok(())
    }
}

/// [`Router::set_priority`], logging the session-affinity bindings a demotion released.
fn set_priority_releasing(
    router: &mut Router,
    endpoint: &str,
    priority: u32,
) -> Result<Vec<RouterEvent>, RouterError> {
    let now = Instant::now();
    let before = router.sessions_bound_to(endpoint, now);
    let events = router.set_priority(endpoint, priority)?;
    log_released(endpoint, before, router.sessions_bound_to(endpoint, now));
    Ok(events)
}

/// Logs that a demotion of `endpoint` released its bindings (`before` bound, `after` left).
fn log_released(endpoint: &str, before: usize, after: usize) {
    let released = before.saturating_sub(after);
    if released > 0 {
        tracing::info!(
            endpoint,
            sessions = released,
            "endpoint demoted by the operator: its session-affinity bindings were released, \
             those conversations follow the new order"
        );
    }
}
