//! cc-forwarder endpoint health.
//!
//! This crate owns the health of every upstream endpoint: periodic active probes of every
//! endpoint (whatever its group), passive observations reported by the forwarding engine
//! (connect errors, timeouts, 5xx, rejected credentials), fast recovery probing of unhealthy
//! endpoints, and the fast test used by the `fastest` strategy. It publishes the result as
//! immutable [`HealthSnapshot`]s on a `watch` channel and as [`HealthEvent`]s on a broadcast
//! channel; the router and the admin surfaces read those and never call back in.
//!
//! It must not know HTTP, groups or routing: the probe request itself is injected through the
//! [`Prober`] trait (the engine implements it with its pooled client and the endpoint's
//! credentials), and which endpoints are candidates is the router's business.
//!
//! Rules, in short:
//! - a probe is healthy iff it got a 2xx answer; a failing probe marks the endpoint unhealthy at
//!   once, a passing one marks it healthy and clears the failure count and `auth_failed`;
//! - passive failures mark an endpoint unhealthy after
//!   [`HealthSettings::passive_failure_threshold`] in a row; a passive success resets the count
//!   and makes it healthy again unless the upstream rejected its credentials
//!   ([`HealthMonitor::mark_auth_failed`]), which only a passing probe clears;
//! - endpoints start healthy and never checked (optimistic start);
//! - an endpoint that turns unhealthy, by any path, is re-probed after 500 ms, 1 s, 2 s, ... up
//!   to `check_interval`, until a probe passes, so a recovered upstream is back within about a
//!   second. A passing probe means "reachable", not "serving" (`/v1/models` answers 200 through
//!   an overload): the router does not end a group's cooldown on it, only on real traffic
//!   succeeding or at the cooldown's end.
//!
//! Main types: [`HealthMonitor`] (the shared state and every operation), [`HealthTask`] (the
//! running probes), [`HealthSettings`], [`Prober`] / [`ProbeOutcome`], [`HealthSnapshot`] /
//! [`EndpointHealth`], [`HealthEvent`], [`PassiveFailure`].
//!
//! Tasks: [`HealthMonitor::spawn`] starts one supervisor task and returns the [`HealthTask`] that
//! owns it; the supervisor owns every probe and recovery task in `JoinSet`s. Dropping the
//! `HealthTask` aborts all of them; [`HealthTask::stop`] ends them and waits. Nothing else spawns
//! long-lived tasks: [`HealthMonitor::check_now`] and [`HealthMonitor::fast_test`] run in the
//! caller's future. Without a spawned task the monitor still works passively (tests, embedders).

mod fast_test;
mod monitor;
mod probe;
mod settings;
mod state;

pub use monitor::{HealthMonitor, HealthTask};
pub use probe::{ProbeOutcome, Prober};
pub use settings::{
    FastTestSettings, HealthSettings, DEFAULT_PASSIVE_FAILURE_THRESHOLD,
    DEFAULT_RECOVERY_INITIAL_BACKOFF,
};
pub use state::{EndpointHealth, HealthEvent, HealthSnapshot, PassiveFailure};
