//! Hot reload of the engine's configuration: what a new configuration changes, which changes
//! only a restart applies, and the result of the last attempt.
//!
//! [`crate::Forwarder::reload`] applies a validated configuration; reading and validating the
//! file is the application's business (it knows the file, the `CCF_` environment and the
//! command-line layers). The application installs a [`Reloader`] so that the admin API can ask
//! for a reload, and reports every attempt with [`crate::Forwarder::record_reload`], which keeps
//! the last [`ReloadStatus`] and publishes it on the event bus.

use std::time::SystemTime;

use ccf_config::{Config, Endpoint};
use serde::Serialize;

use crate::client::ClientBuildError;

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Changes in force now, one short sentence each (`endpoint `b` added`, `retry changed`).
    pub applied: Vec<String>,
    /// Changes that were ignored because only a restart applies them (listen addresses,
    /// storage), one short sentence each.
    pub restart_required: Vec<String>,
}

impl ReloadReport {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.restart_required.is_empty()
    }
}

/// Why a new configuration could not be applied (the old one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The upstream client for the new `proxy.*` settings could not be built.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// The outcome of the last reload attempt, as the admin API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// When the attempt finished.
    #[serde(serialize_with = "unix_seconds")]
    pub at: SystemTime,
    /// What asked for it: `file`, `sighup` or `api`.
    pub trigger: String,
    /// The new configuration is in force.
    pub ok: bool,
    /// Why it was rejected (the old configuration stays), naming file and key.
    pub error: Option<String>,
    /// Changes in force now.
    pub applied: Vec<String>,
    /// Changes that wait for a restart.
    pub restart_required: Vec<String>,
}

impl ReloadStatus {
    /// A successful attempt.
    pub fn applied(trigger: &str, report: ReloadReport) -> ReloadStatus {
        ReloadStatus {
            at: SystemTime::now(),
            trigger: trigger.to_string(),
            ok: true,
            error: None,
            applied: report.applied,
            restart_required: report.restart_required,
        }
    }

    /// A rejected attempt.
    pub fn rejected(trigger: &str, error: String) -> ReloadStatus {
        ReloadStatus {
            at: SystemTime::now(),
            trigger: trigger.to_string(),
            ok: false,
            error: Some(error),
            applied: Vec::new(),
            restart_required: Vec::new(),
        }
    }
}

fn unix_seconds<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    serializer.serialize_u64(seconds)
}

/// Re-reads the configuration from its sources and applies it (installed by the application).
pub trait Reloader: Send + Sync {
    /// Reloads now; `trigger` says who asked (`api`, `sighup`, `file`). Blocking file IO is
    /// allowed: the configuration is small.
    fn reload(&self, trigger: &str) -> ReloadStatus;
}

/// Whether an endpoint's connection details changed (its routing and health state then start
/// over).
pub(crate) fn connection_changed(old: &Endpoint, new: &Endpoint) -> bool {
    old.url != new.url
        || old.token != new.token
        || old.api_key != new.api_key
        || old.headers != new.headers
}

/// Compares two sections through their serialized form (the sections do not implement
/// `PartialEq`; secrets serialize in clear, so a changed token is seen).
fn differs<T: Serialize>(old: &T, new: &T) -> bool {
    serde_json::to_value(old).ok() != serde_json::to_value(new).ok()
}

/// What going from `old` to `new` changes.
pub(crate) fn diff(old: &Config, new: &Config) -> ReloadReport {
    let mut report = ReloadReport::default();
    for endpoint in &new.endpoints {
        match old.endpoint(&endpoint.name) {
            None => report
                .applied
                .push(format!("endpoint `{}` added", endpoint.name)),
            Some(previous) if previous != endpoint => {
                let mut what = Vec::new();
                if previous.url != endpoint.url {
                    what.push("url");
                }
                if previous.token != endpoint.token || previous.api_key != endpoint.api_key {
                    what.push("credentials");
                }
                if previous.priority != endpoint.priority {
                    what.push("priority");
                }
                if previous.group != endpoint.group
                    || previous.group_priority != endpoint.group_priority
                {
                    what.push("group");
                }
                if previous.timeout != endpoint.timeout {
                    what.push("timeout");
                }
                if previous.headers != endpoint.headers {
                    what.push("headers");
                }
                if previous.supports_count_tokens != endpoint.supports_count_tokens {
                    what.push("supports_count_tokens");
                }
                if previous.model_map != endpoint.model_map {
                    what.push("model_map");
                }
                report.applied.push(format!(
                    "endpoint `{}` changed ({})",
                    endpoint.name,
                    what.join(", ")
                ));
            }
            Some(_) => {}
        }
    }
    for endpoint in &old.endpoints {
        if new.endpoint(&endpoint.name).is_none() {
            report
                .applied
                .push(format!("endpoint `{}` removed", endpoint.name));
        }
    }
    let order = |config: &Config| -> Vec<String> {
        config.endpoints.iter().map(|e| e.name.clone()).collect()
    };
    if report.applied.is_empty() && order(old) != order(new) {
        report.applied.push("endpoint order changed".to_string());
    }
    let mut section = |name: &str, changed: bool| {
        if changed {
            report.applied.push(format!("{name} changed"));
        }
    };
    section("strategy", differs(&old.strategy, &new.strategy));
    section("retry", differs(&old.retry, &new.retry));
    section("health", differs(&old.health, &new.health));
    section("streaming", differs(&old.streaming, &new.streaming));
    section("group", differs(&old.group, &new.group));
    section(
        "request_suspend",
        differs(&old.request_suspend, &new.request_suspend),
    );
    section("auth", differs(&old.auth, &new.auth));
    section(
        "token_counting",
        differs(&old.token_counting, &new.token_counting),
    );
    section("proxy", differs(&old.proxy, &new.proxy));
    section("tls", old.tls != new.tls);
    section("upstream", old.upstream != new.upstream);
    section(
        "endpoints[].ca_file",
        old.endpoint_ca_files != new.endpoint_ca_files,
    );
    section(
        "endpoints[].proxy",
        differs(&old.endpoint_proxies, &new.endpoint_proxies),
    );
    section("routing", differs(&old.routing, &new.routing));
    section("webhooks", old.webhooks != new.webhooks);
    section("logging.level", old.logging.level != new.logging.level);
    section(
        "usage_tracking pricing",
        differs(
            &old.usage_tracking.model_pricing,
            &new.usage_tracking.model_pricing,
        ) || differs(
            &old.usage_tracking.default_pricing,
            &new.usage_tracking.default_pricing,
        ),
    );
    section(
        "server.max_request_body_size",
        old.server.max_request_body_size != new.server.max_request_body_size,
    );
    section(
        "server.max_in_flight",
        old.server.max_in_flight != new.server.max_in_flight,
    );
    section(
        "server.body_read_timeout",
        old.server.body_read_timeout != new.server.body_read_timeout,
    );
    section("timezone", old.timezone != new.timezone);

    let mut restart = |what: &str, changed: bool| {
        if changed {
            report.restart_required.push(what.to_string());
        }
    };
    restart(
        "server.host/server.port (proxy listen address)",
        old.server.host != new.server.host || old.server.port != new.server.port,
    );
    restart(
        "server connection limits and timeouts",
        old.server.header_read_timeout != new.server.header_read_timeout
            || old.server.shutdown_timeout != new.server.shutdown_timeout
            || old.server.max_header_bytes != new.server.max_header_bytes
            || old.server.max_headers != new.server.max_headers
            || old.server.max_connections != new.server.max_connections
            || old.server.allow_insecure != new.server.allow_insecure,
    );
    restart(
        "server.threads (per-core runtimes)",
        old.server.threads != new.server.threads,
    );
    restart(
        "web (admin API address and token)",
        differs(&old.web, &new.web),
    );
    restart(
        "usage_tracking storage (enabled, database)",
        old.usage_tracking.enabled != new.usage_tracking.enabled
            || old.usage_tracking.database_path != new.usage_tracking.database_path
            || differs(&old.usage_tracking.database, &new.usage_tracking.database)
            || old.usage_tracking.buffer_size != new.usage_tracking.buffer_size
            || old.usage_tracking.journal_dir != new.usage_tracking.journal_dir
            || old.usage_tracking.shutdown_flush_timeout
                != new.usage_tracking.shutdown_flush_timeout
            || old.usage_tracking.batch_size != new.usage_tracking.batch_size
            || old.usage_tracking.flush_interval != new.usage_tracking.flush_interval
            || old.usage_tracking.retention_days != new.usage_tracking.retention_days
            || old.usage_tracking.cleanup_interval != new.usage_tracking.cleanup_interval,
    );
    restart(
        "logging output (format, file)",
        old.logging.format != new.logging.format
            || old.logging.file_enabled != new.logging.file_enabled
            || old.logging.file_path != new.logging.file_path
            || old.logging.max_file_size != new.logging.max_file_size
            || old.logging.max_files != new.logging.max_files
            || old.logging.compress_rotated != new.logging.compress_rotated,
    );
    restart("tui", differs(&old.tui, &new.tui));
    // The zone applies at once to how times are shown; the usage days the stores count in
    // (usage_summary rows, "today") are fixed when the store opens, which rebuilds the summary.
    restart(
        "timezone (usage days: summary rows and today)",
        old.timezone != new.timezone,
    );
    restart("instance_id", old.instance_id != new.instance_id);
    // The link to the other instances is opened once, at start; `cluster.redis_timeout` is read
    // per request and applies at once.
    restart(
        "cluster (redis_url, redis_prefix)",
        old.cluster.redis_url != new.cluster.redis_url
            || old.cluster.redis_prefix != new.cluster.redis_prefix,
    );
    report
}

/// The configuration the engine runs with after a reload to `new`: `new`, except for the
/// settings only a restart applies, which keep their running values (so the status and the
/// dashboard show what is in force, and the difference stays reported as restart-needed).
pub(crate) fn effective(old: &Config, new: &Config) -> Config {
    let mut effective = new.clone();
    let (max_request_body_size, max_in_flight) =
        (new.server.max_request_body_size, new.server.max_in_flight);
    effective.server = old.server.clone();
    // Read per request: these two apply at once.
    effective.server.max_request_body_size = max_request_body_size;
    effective.server.max_in_flight = max_in_flight;
    effective.server.body_read_timeout = new.server.body_read_timeout;
    effective.web = old.web.clone();
    let (model_pricing, default_pricing) = (
        new.usage_tracking.model_pricing.clone(),
        new.usage_tracking.default_pricing,
    );
    effective.usage_tracking = old.usage_tracking.clone();
    effective.usage_tracking.model_pricing = model_pricing;
    effective.usage_tracking.default_pricing = default_pricing;
    let level = new.logging.level;
    effective.logging = old.logging.clone();
    effective.logging.level = level;
    effective.tui = old.tui.clone();
    effective.instance_id = old.instance_id.clone();
    effective.cluster.redis_url = old.cluster.redis_url.clone();
    effective.cluster.redis_prefix = old.cluster.redis_prefix.clone();
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml).expect("valid test configuration")
    }

    const BASE: &str = "endpoints:\n  - name: a\n    url: https://a.invalid\n  - name: b\n    url: https://b.invalid\n";

    #[test]
    fn the_redis_link_waits_for_a_restart_and_its_timeout_applies_at_once() {
        let old = config(&format!(
            "cluster:\n  redis_url: redis://127.0.0.1:6379\n{BASE}"
        ));
        let new = config(&format!(
            "cluster:\n  redis_url: redis://10.0.0.9:6379\n  redis_prefix: other\n  redis_timeout: 80ms\n{BASE}"
        ));
        let report = diff(&old, &new);
        assert_eq!(
            report.restart_required,
            vec!["cluster (redis_url, redis_prefix)".to_string()]
        );
        let running = effective(&old, &new);
        assert_eq!(running.cluster.redis_url, old.cluster.redis_url);
        assert_eq!(running.cluster.redis_prefix, "ccf");
        assert_eq!(
            running.cluster.redis_timeout.get(),
            std::time::Duration::from_millis(80)
        );
    }

    #[test]
    fn same_configuration_changes_nothing() {
        assert!(diff(&config(BASE), &config(BASE)).is_empty());
    }

    #[test]
    fn endpoint_changes_and_sections_are_named() {
        let new = config(
            "retry:\n  max_attempts: 7\nendpoints:\n  - name: a\n    url: https://a2.invalid\n    priority: 4\n  - name: c\n    url: https://c.invalid\n",
        );
        let report = diff(&config(BASE), &new);
        assert_eq!(
            report.applied,
            [
                "endpoint `a` changed (url, priority)",
                "endpoint `c` added",
                "endpoint `b` removed",
                "retry changed"
            ]
        );
        assert!(report.restart_required.is_empty());
    }

    #[test]
    fn listen_address_change_needs_a_restart() {
        let new = config(&format!("server:\n  port: 9999\n{BASE}"));
        let report = diff(&config(BASE), &new);
        assert!(report.applied.is_empty());
        assert_eq!(
            report.restart_required,
            ["server.host/server.port (proxy listen address)"]
        );
    }

    #[test]
    fn a_timezone_change_is_shown_at_once_and_counts_usage_days_after_a_restart() {
        let new = config(&format!("timezone: Asia/Tokyo\n{BASE}"));
        let report = diff(&config(BASE), &new);
        assert_eq!(report.applied, ["timezone changed"]);
        assert_eq!(
            report.restart_required,
            ["timezone (usage days: summary rows and today)"]
        );
    }
}
