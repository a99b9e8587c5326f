//! The keys of issue 20's points 5, 7 and 8: `retry.failover_on_status`,
//! `retry.failover_on_empty_answer`, `routing.repair_thinking_signatures` and
//! `endpoints[].proxy` (inherited within a group; `enabled: false` opts out of the global one).

use ccf_config::{Config, ConfigLoader};

fn load(yaml: &str) -> Config {
    Config::from_yaml_str(yaml).unwrap_or_else(|error| panic!("{error}\n{yaml}"))
}

fn error_lines(yaml: &str) -> String {
    match ConfigLoader::new().yaml_str(yaml).load() {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(error) => error.to_string(),
    }
}

const ONE_ENDPOINT: &str = "endpoints:\n  - name: a\n    url: https://a.example\n";

#[test]
fn the_new_keys_default_off_and_load_when_set() {
    let defaults = load(ONE_ENDPOINT);
    assert!(defaults.retry.failover_on_status.is_empty());
    assert!(!defaults.retry.failover_on_empty_answer);
    assert!(!defaults.routing.repair_thinking_signatures);
    assert!(defaults.endpoint_proxies.is_empty());

    let set = load(&format!(
        "retry:\n  failover_on_status: [404, 400, 503]\n  failover_on_empty_answer: true\n\
         routing:\n  repair_thinking_signatures: true\n{ONE_ENDPOINT}"
    ));
    assert_eq!(set.retry.failover_on_status, [404, 400, 503]);
    assert!(set.retry.failover_on_empty_answer);
    assert!(set.routing.repair_thinking_signatures);
}

#[test]
fn only_error_statuses_without_their_own_handling_are_accepted() {
    let message = error_lines(&format!(
        "retry:\n  failover_on_status: [404, 200, 401, 429, 600]\n{ONE_ENDPOINT}"
    ));
    for expected in [
        "<inline>: retry.failover_on_status[1]: must be an error status between 400 and 599, found 200",
        "<inline>: retry.failover_on_status[2]: 401 already moves to the next endpoint (the endpoint refused its credentials): remove it",
        "<inline>: retry.failover_on_status[3]: 429 has its own handling (wait as asked, or skip the endpoint until its reset): remove it",
        "<inline>: retry.failover_on_status[4]: must be an error status between 400 and 599, found 600",
    ] {
        assert!(
            message.lines().any(|line| line == expected),
            "expected the line\n  {expected}\nin\n{message}"
        );
    }
    assert!(!message.contains("[0]"), "{message}");
}

#[test]
fn an_endpoint_proxy_is_its_own_else_its_groups_else_the_global_one() {
    let config = load(
        "proxy:\n  enabled: true\n  url: http://global.example:3128\n\
         endpoints:\n\
         \x20 - name: a\n    url: https://a.example\n    group: relays\n\
         \x20 - name: b\n    url: https://b.example\n    proxy:\n      enabled: true\n      url: socks5://relay-proxy.example:1080\n\
         \x20 - name: c\n    url: https://c.example\n\
         \x20 - name: d\n    url: https://d.example\n    group: official\n    proxy:\n      enabled: false\n\
         \x20 - name: e\n    url: https://e.example\n    group: other\n",
    );
    let proxies = &config.endpoint_proxies;
    let url = |name: &str| proxies.get(name).and_then(|proxy| proxy.url.clone());
    // `a` comes before the group's first proxy but inherits it like a token.
    assert_eq!(
        url("a").as_deref(),
        Some("socks5://relay-proxy.example:1080")
    );
    assert_eq!(
        url("b").as_deref(),
        Some("socks5://relay-proxy.example:1080")
    );
    assert_eq!(
        url("c").as_deref(),
        Some("socks5://relay-proxy.example:1080")
    );
    assert_eq!(proxies.get("d").map(|proxy| proxy.enabled), Some(false));
    assert!(!proxies.contains_key("e"), "the global proxy applies");
}

#[test]
fn an_unusable_endpoint_proxy_is_reported_with_its_key_and_no_password() {
    let message = error_lines(
        "endpoints:\n  - name: a\n    url: https://a.example\n    proxy:\n      enabled: true\n\
         \x20 - name: b\n    url: https://b.example\n    group: g\n    proxy:\n      enabled: true\n      url: ftp://bob:s3cret-pass@p.example:2121\n",
    );
    for expected in [
        "<inline>: endpoints[0].proxy: endpoints[0].proxy.enabled is true but neither `url` nor both `host` and `port` are set",
        "<inline>: endpoints[1].proxy.url: unsupported scheme `ftp` in `ftp://bob:***@p.example:2121/`: expected `http`, `https` or `socks5`",
    ] {
        assert!(
            message.lines().any(|line| line == expected),
            "expected the line\n  {expected}\nin\n{message}"
        );
    }
    assert!(!message.contains("s3cret-pass"), "{message}");
}

#[test]
fn debug_output_masks_endpoint_proxy_passwords() {
    let config = load(
        "endpoints:\n  - name: a\n    url: https://a.example\n    proxy:\n      enabled: true\n      url: http://bob:hunter2-long-password@p.example:3128\n      password: field-password-value\n",
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("field-password-value"), "{debug}");
}
