//! Health settings, derived from the validated configuration.

use std::time::Duration;

use ccf_config::{Config, StrategyType};

/// Default number of consecutive passive failures that mark an endpoint unhealthy.
pub const DEFAULT_PASSIVE_FAILURE_THRESHOLD: u32 = 3;

/// Default first delay of the fast-recovery probes.
pub const DEFAULT_RECOVERY_INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// The shortest period or back-off the monitor uses; zero durations are raised to this so that a
/// misconfigured embedder cannot make a probe loop spin.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(1);

/// How the monitor probes and judges endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Period of the regular probe round over every endpoint (`health.check_interval`). Also the
    /// cap of the fast-recovery back-off.
    pub check_interval: Duration,
    /// Timeout of one health probe (`health.timeout`).
    pub timeout: Duration,
    /// Path probed with `GET` (`health.health_path`).
    pub health_path: String,
    /// The fast test, when the `fastest` strategy enables it; `None` disables it.
    pub fast_test: Option<FastTestSettings>,
    /// Consecutive passive failures (connect error, timeout, 5xx) that mark an endpoint unhealthy.
    /// `0` is treated as `1`.
    pub passive_failure_threshold: u32,
    /// First delay of the fast-recovery probes of an unhealthy endpoint; doubled after every failed
    /// probe, up to `check_interval`.
    pub recovery_initial_backoff: Duration,
}

/// The fast test run before routing with the `fastest` strategy (`strategy.fast_test_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastTestSettings {
    /// How long a probe result stays fresh (`strategy.fast_test_cache_ttl`).
    pub cache_ttl: Duration,
    /// Timeout of one probe (`strategy.fast_test_timeout`).
    pub timeout: Duration,
    /// Path probed with `GET` (`strategy.fast_test_path`, defaulting to `health.health_path`).
    pub path: String,
}

impl HealthSettings {
    /// Settings from a validated configuration.
    ///
    /// The fast test is enabled only with `strategy.type: fastest` and
    /// `strategy.fast_test_enabled: true`, as in the original: the `priority` strategy never
    /// consults probe latencies.
    pub fn from_config(config: &Config) -> Self {
        let health = &config.health;
        let strategy = &config.strategy;
        let fast_test = (strategy.fast_test_enabled
            && matches!(strategy.kind, StrategyType::Fastest))
        .then(|| FastTestSettings {
            cache_ttl: strategy.fast_test_cache_ttl.get(),
            timeout: strategy.fast_test_timeout.get(),
            path: strategy
                .fast_test_path
                .clone()
                .filter(|path| !path.trim().is_empty())
                .unwrap_or_else(|| health.health_path.clone()),
        });
        HealthSettings {
            check_interval: health.check_interval.get(),
            timeout: health.timeout.get(),
            health_path: health.health_path.clone(),
            fast_test,
            passive_failure_threshold: DEFAULT_PASSIVE_FAILURE_THRESHOLD,
            recovery_initial_backoff: DEFAULT_RECOVERY_INITIAL_BACKOFF,
        }
    }

    pub(crate) fn effective_check_interval(&self) -> Duration {
        self.check_interval.max(MIN_PERIOD)
    }

    pub(crate) fn effective_initial_backoff(&self) -> Duration {
        self.recovery_initial_backoff
            .max(MIN_PERIOD)
            .min(self.effective_check_interval())
    }

    pub(crate) fn effective_failure_threshold(&self) -> u32 {
        self.passive_failure_threshold.max(1)
    }
}

impl Default for HealthSettings {
    /// The configuration defaults: 30 s interval, 5 s timeout, `/v1/models`, no fast test.
    fn default() -> Self {
        let health = ccf_config::HealthConfig::default();
        HealthSettings {
            check_interval: health.check_interval.get(),
            timeout: health.timeout.get(),
            health_path: health.health_path,
            fast_test: None,
            passive_failure_threshold: DEFAULT_PASSIVE_FAILURE_THRESHOLD,
            recovery_initial_backoff: DEFAULT_RECOVERY_INITIAL_BACKOFF,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> HealthSettings {
        let config = Config::from_yaml_str(yaml).expect("valid config");
        HealthSettings::from_config(&config)
    }

    const ENDPOINTS: &str = "endpoints:\n  - name: a\n    url: https://a.example\n    token: t\n";

    #[test]
    fn defaults_follow_the_config_defaults() {
        let from_config = settings(ENDPOINTS);
        assert_eq!(from_config, HealthSettings::default());
        assert_eq!(from_config.check_interval, Duration::from_secs(30));
        assert_eq!(from_config.timeout, Duration::from_secs(5));
        assert_eq!(from_config.health_path, "/v1/models");
        assert_eq!(from_config.passive_failure_threshold, 3);
        assert_eq!(
            from_config.recovery_initial_backoff,
            Duration::from_millis(500)
        );
        assert_eq!(from_config.fast_test, None);
    }

    #[test]
    fn fast_test_needs_the_fastest_strategy() {
        let priority = settings(&format!(
            "strategy:\n  type: priority\n  fast_test_enabled: true\n{ENDPOINTS}"
        ));
        assert_eq!(priority.fast_test, None);

        let fastest = settings(&format!(
            "health:\n  health_path: /health\n  check_interval: 10s\nstrategy:\n  type: fastest\n  fast_test_enabled: true\n  fast_test_cache_ttl: 7s\n  fast_test_timeout: 2s\n{ENDPOINTS}"
        ));
        assert_eq!(fastest.check_interval, Duration::from_secs(10));
        assert_eq!(
            fastest.fast_test,
            Some(FastTestSettings {
                cache_ttl: Duration::from_secs(7),
                timeout: Duration::from_secs(2),
                path: "/health".into(),
            })
        );
    }

    #[test]
    fn degenerate_values_are_clamped() {
        let settings = HealthSettings {
            check_interval: Duration::ZERO,
            recovery_initial_backoff: Duration::from_secs(60),
            passive_failure_threshold: 0,
            ..HealthSettings::default()
        };
        assert_eq!(settings.effective_check_interval(), MIN_PERIOD);
        assert_eq!(settings.effective_initial_backoff(), MIN_PERIOD);
        assert_eq!(settings.effective_failure_threshold(), 1);
    }
}
