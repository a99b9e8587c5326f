//! The configuration a Go cc-forwarder user already has loads unchanged, with the Go inheritance
//! rules (except the fixed cross-group api-key inheritance).

use std::path::PathBuf;
use std::time::Duration;

use ccf_config::{ConfigLoader, Endpoint, LoadedConfig, StorageTarget, StrategyType};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_go_sample() -> LoadedConfig {
    ConfigLoader::new()
        .file(fixture("go-config-sample.yaml"))
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_or_else(|error| panic!("the Go sample must load: {error}"))
}

fn headers(endpoint: &Endpoint) -> Vec<(&str, &str)> {
    endpoint
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

fn secret(value: &Option<ccf_config::Secret>) -> Option<&str> {
    value.as_ref().map(|secret| secret.expose())
}

#[test]
fn go_sample_loads_without_warnings() {
    let loaded = load_go_sample();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.source.as_deref(),
        Some(fixture("go-config-sample.yaml").as_path())
    );
}

#[test]
fn go_sample_sections_keep_their_values() {
    let config = load_go_sample().config;
    assert_eq!(config.timezone.as_deref(), Some("Asia/Shanghai"));
    assert_eq!(config.server.host, "0.0.0.0");
    assert_eq!(config.server.port, 8087);
    assert_eq!(config.strategy.kind, StrategyType::Fastest);
    assert!(config.strategy.fast_test_enabled);
    assert_eq!(
        config.strategy.fast_test_cache_ttl.get(),
        Duration::from_secs(30)
    );
    assert_eq!(
        config.strategy.fast_test_path.as_deref(),
        Some("/v1/models")
    );
    assert_eq!(config.retry.max_attempts, 3);
    assert_eq!(config.retry.multiplier, 2.0);
    // The retry budget keys are new: a Go file without them gets the defaults.
    assert_eq!(config.retry.budget_percent, 20.0);
    assert_eq!(config.retry.min_retry_concurrency, 3);
    assert_eq!(config.logging.max_file_size.bytes(), 100 * 1024 * 1024);
    assert!(config.logging.compress_rotated);
    assert_eq!(
        config.streaming.response_header_timeout.get(),
        Duration::from_secs(60)
    );
    assert_eq!(config.group.cooldown.get(), Duration::from_secs(600));
    assert!(config.group.auto_switch_between_groups);
    assert_eq!(config.global_timeout, Duration::from_secs(300));
    assert!(!config.auth.enabled);
    assert_eq!(config.tui.update_interval.get(), Duration::from_secs(1));
    assert!(config.web.enabled);
    assert_eq!(config.web.port, 8088);
    assert!(config.token_counting.enabled);
    assert!(!config.proxy.enabled);
    assert_eq!(config.proxy.host.as_deref(), Some("proxy.example.com"));

    let usage = &config.usage_tracking;
    assert!(!usage.enabled);
    // The Go original turned an explicit 0 into 90; here 0 means "keep forever".
    assert_eq!(usage.retention_days, 0);
    assert_eq!(usage.buffer_size, 300);
    assert_eq!(usage.batch_size, 15);
    assert_eq!(usage.flush_interval.get(), Duration::from_secs(8));
    assert_eq!(
        usage.storage(),
        StorageTarget::Sqlite {
            path: "data/usage.db".into()
        }
    );
    assert_eq!(usage.model_pricing.len(), 3);
    assert_eq!(usage.model_pricing["claude-opus-4"].output, 75.0);
    assert_eq!(
        usage.model_pricing["claude-3-5-haiku-20241022"].cache_read,
        0.08
    );
}

#[test]
fn go_sample_endpoints_inherit_like_the_original() {
    let config = load_go_sample().config;
    let names: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["primary", "primary_backup", "backup1", "backup2", "local"]
    );
    let primary_headers = vec![
        ("User-Agent", "Claude-Request-Forwarder/1.0"),
        ("X-Custom-Header", "custom-value"),
    ];

    let primary = config.endpoint("primary").unwrap();
    assert_eq!(primary.url.as_str(), "https://api.anthropic.com/");
    assert_eq!(
        (
            primary.group.as_str(),
            primary.group_priority,
            primary.priority
        ),
        ("main", 1, 1)
    );
    assert_eq!(secret(&primary.token), Some("sk-primary-placeholder"));
    assert_eq!(secret(&primary.api_key), Some("key-primary-placeholder"));
    assert_eq!(primary.timeout, Duration::from_secs(300));
    assert!(primary.supports_count_tokens);
    assert_eq!(headers(primary), primary_headers);

    let primary_backup = config.endpoint("primary_backup").unwrap();
    assert_eq!(
        (
            primary_backup.group.as_str(),
            primary_backup.group_priority,
            primary_backup.priority
        ),
        ("main", 1, 2)
    );
    assert_eq!(primary_backup.timeout, Duration::from_secs(300));
    assert_eq!(headers(primary_backup), primary_headers);
    assert_eq!(
        secret(&primary_backup.token),
        Some("sk-primary-placeholder")
    );
    assert_eq!(
        secret(&primary_backup.api_key),
        Some("key-primary-placeholder")
    );
    assert!(!primary_backup.supports_count_tokens);

    let backup1 = config.endpoint("backup1").unwrap();
    assert_eq!(backup1.url.as_str(), "https://relay-two.example.com/api");
    assert_eq!(
        (backup1.group.as_str(), backup1.group_priority),
        ("backup", 2)
    );
    assert_eq!(secret(&backup1.token), Some("sk-backup-placeholder"));
    // The Go original copied the first endpoint's api-key across groups; here it does not leak.
    assert_eq!(secret(&backup1.api_key), None);
    assert_eq!(
        headers(backup1),
        vec![
            ("Authorization", "Bearer custom-token"),
            ("User-Agent", "Claude-Request-Forwarder/1.0"),
            ("X-API-Version", "2024-01"),
            ("X-Custom-Header", "custom-value"),
        ]
    );

    let backup2 = config.endpoint("backup2").unwrap();
    assert_eq!(
        (
            backup2.group.as_str(),
            backup2.group_priority,
            backup2.priority
        ),
        ("backup", 2, 2)
    );
    assert_eq!(secret(&backup2.token), Some("sk-backup-placeholder"));
    assert_eq!(secret(&backup2.api_key), None);
    assert_eq!(backup2.timeout, Duration::from_secs(300));
    // No own headers: a copy of the first endpoint's (backup1's own headers are not inherited).
    assert_eq!(headers(backup2), primary_headers);

    let local = config.endpoint("local").unwrap();
    assert_eq!(
        (local.group.as_str(), local.group_priority, local.priority),
        ("local", 3, 1)
    );
    assert_eq!(secret(&local.token), None);
    assert_eq!(secret(&local.api_key), None);
    assert_eq!(local.timeout, Duration::from_secs(300));
    assert_eq!(local.url.as_str(), "http://localhost:11434/");
}
