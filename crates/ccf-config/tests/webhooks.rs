//! `webhooks[]`: validation names the entry and key, a valid list resolves to typed events, and
//! nothing shown to people carries the secret or a URL password.

use ccf_config::{Config, WebhookEvent};

const ENDPOINTS: &str = "endpoints:\n  - name: a\n    url: https://api.example.com\n";

fn load(webhooks: &str) -> Result<Config, ccf_config::ConfigError> {
    Config::from_yaml_str(&format!("{ENDPOINTS}webhooks:\n{webhooks}"))
}

#[test]
fn a_valid_webhook_list_resolves_to_typed_events_and_drops_an_empty_secret() {
    let config = load(
        "  - url: https://hooks.example.com/ccf\n    events: [endpoint_unhealthy, quota_low, endpoint_unhealthy]\n    secret: s3cr3t-value\n\
         \x20 - url: http://127.0.0.1:9000/hook\n    events: [config_reload_failed]\n    secret: \"\"\n",
    )
    .expect("valid");
    assert_eq!(config.webhooks.len(), 2);
    assert_eq!(
        config.webhooks[0].events,
        vec![WebhookEvent::EndpointUnhealthy, WebhookEvent::QuotaLow]
    );
    assert_eq!(
        config.webhooks[0].secret.as_ref().map(|s| s.expose()),
        Some("s3cr3t-value")
    );
    assert!(config.webhooks[1].secret.is_none());
    assert!(!format!("{:?}", config.webhooks[0]).contains("s3cr3t-value"));
}

#[test]
fn no_webhooks_key_means_no_webhooks() {
    let config = Config::from_yaml_str(ENDPOINTS).expect("valid");
    assert!(config.webhooks.is_empty());
}

#[test]
fn problems_name_the_entry_and_key() {
    let error = load(
        "  - url: https://hooks.example.com/ccf\n    events: [endpoint_unhealthy, group_switched, endpoint_down]\n\
         \x20 - url: ftp://hooks.example.com/\n    events: [quota_low]\n\
         \x20 - url: \"not a url\"\n    events: []\n",
    )
    .expect_err("invalid");
    let keys: Vec<(&str, &str)> = error
        .problems()
        .iter()
        .map(|problem| (problem.key.as_str(), problem.message.as_str()))
        .collect();
    let key_names: Vec<&str> = keys.iter().map(|(key, _)| *key).collect();
    assert_eq!(
        key_names,
        vec![
            "webhooks[0].events[2]",
            "webhooks[1].url",
            "webhooks[2].url",
            "webhooks[2].events"
        ],
        "{keys:?}"
    );
    assert!(keys[0].1.contains("unknown event `endpoint_down`"));
    assert!(keys[0].1.contains("`endpoint_recovered`"));
    assert!(keys[1].1.contains("`ftp`"));
}

#[test]
fn the_masked_url_hides_a_password_and_query_values() {
    let config = load(
        "  - url: https://user:hunter2-pass@hooks.example.com/ccf?token=abcdef123456\n    events: [group_cooldown]\n",
    )
    .expect("valid");
    let shown = config.webhooks[0].masked_url();
    assert!(!shown.contains("hunter2-pass"), "{shown}");
    assert!(!shown.contains("abcdef123456"), "{shown}");
    assert!(shown.starts_with("https://user:"), "{shown}");
    assert!(shown.contains("hooks.example.com/ccf?token="), "{shown}");
}
