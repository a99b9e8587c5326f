//! Precedence (defaults < YAML < environment < command line), `${VAR}` expansion, unknown-key
//! warnings and `-p`.

use std::io::Write;

use ccf_config::{CliOverrides, Config, ConfigError, ConfigLoader, LoadedConfig};

const ONE_ENDPOINT: &str = "endpoints:\n  - name: a\n    url: https://a.example\n";

fn load_with(yaml: &str, env: &[(&str, &str)], overrides: CliOverrides) -> LoadedConfig {
    ConfigLoader::new()
        .yaml_str(yaml)
        .env_vars(env.iter().copied())
        .overrides(overrides)
        .load()
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let config = load_with(ONE_ENDPOINT, &[], CliOverrides::default()).config;
    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("localhost", 8080)
    );
    assert_eq!((config.web.enabled, config.web.port), (false, 8088));
    assert!(!config.tui.enabled);
    assert_eq!(config.global_timeout.as_secs(), 300);
    assert_eq!(config.endpoints[0].timeout.as_secs(), 300);
    assert_eq!(config.endpoints[0].group, "Default");
    assert_eq!(config.endpoints[0].group_priority, 1);
    assert_eq!(config.endpoints[0].priority, 0);
    assert_eq!(config.usage_tracking.retention_days, 90);
    assert_eq!(
        config.strategy.fast_test_path.as_deref(),
        Some("/v1/models")
    );
    assert!(config.group.auto_switch_between_groups);
    assert_eq!(config.timezone, None);
    assert_eq!(config.source, None);
}

#[test]
fn environment_overrides_the_file_and_the_command_line_overrides_both() {
    let yaml = format!("server:\n  host: 0.0.0.0\n  port: 8087\nweb:\n  port: 8088\ntui:\n  enabled: true\n{ONE_ENDPOINT}");
    let env = [
        ("CCF_SERVER__PORT", "9000"),
        ("CCF_WEB__ENABLED", "true"),
        ("ccf_web__port", "9100"),
    ];

    let config = load_with(&yaml, &env, CliOverrides::default()).config;
    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("0.0.0.0", 9000)
    );
    assert!(config.web.enabled);
    assert_eq!(config.web.port, 9100);
    assert!(config.tui.enabled);

    let overrides = CliOverrides {
        server_host: Some("127.0.0.1".into()),
        server_port: Some(7000),
        web_enabled: Some(false),
        web_port: Some(7100),
        tui_enabled: Some(false),
    };
    let config = load_with(&yaml, &env, overrides).config;
    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("127.0.0.1", 7000)
    );
    assert!(!config.web.enabled);
    assert_eq!(config.web.port, 7100);
    assert!(!config.tui.enabled);
}

#[test]
fn unset_command_line_values_leave_the_file_alone() {
    let yaml =
        format!("server:\n  port: 8087\nweb:\n  enabled: true\n  port: 8188\n{ONE_ENDPOINT}");
    let overrides = CliOverrides {
        tui_enabled: Some(true),
        ..CliOverrides::default()
    };
    let config = load_with(&yaml, &[], overrides).config;
    assert_eq!(config.server.port, 8087);
    assert!(config.web.enabled);
    assert_eq!(config.web.port, 8188);
    assert!(config.tui.enabled);
}

#[test]
fn environment_overrides_can_be_turned_off_or_re_prefixed() {
    let env = [("CCF_SERVER__PORT", "9000"), ("FWD_SERVER__PORT", "9001")];
    let off = ConfigLoader::new()
        .yaml_str(ONE_ENDPOINT)
        .env_vars(env)
        .without_env_overrides()
        .load()
        .unwrap();
    assert_eq!(off.config.server.port, 8080);
    let other = ConfigLoader::new()
        .yaml_str(ONE_ENDPOINT)
        .env_vars(env)
        .env_prefix("FWD_")
        .load()
        .unwrap();
    assert_eq!(other.config.server.port, 9001);
}

#[test]
fn environment_values_are_typed_by_the_schema() {
    let env = [
        ("CCF_AUTH__ENABLED", "yes"),
        ("CCF_AUTH__TOKEN", "12345"),
        ("CCF_RETRY__MULTIPLIER", "1.5"),
        ("CCF_HEALTH__CHECK_INTERVAL", "1m30s"),
        ("CCF_USAGE_TRACKING__RETENTION_DAYS", "0"),
    ];
    let config = load_with(ONE_ENDPOINT, &env, CliOverrides::default()).config;
    assert!(config.auth.enabled);
    assert_eq!(
        config.auth.token.as_ref().map(|t| t.expose()),
        Some("12345")
    );
    assert_eq!(config.retry.multiplier, 1.5);
    assert_eq!(config.health.check_interval.get().as_secs(), 90);
    assert_eq!(config.usage_tracking.retention_days, 0);
}

#[test]
fn string_values_expand_environment_variables() {
    let yaml = "server:\n  host: ${HOST:-127.0.0.1}\n  port: ${PORT}\n\
                auth:\n  enabled: true\n  token: \"${CLIENT_TOKEN}\"\n\
                # ${NOT_EXPANDED_IN_COMMENTS}\n\
                endpoints:\n  - name: ${NAME}\n    url: https://${UPSTREAM_HOST}/api\n    token: Bearer-${EMPTY}\n    headers:\n      X-Literal: \"$${KEEP}\"\n";
    let env = [
        ("PORT", "9009"),
        ("CLIENT_TOKEN", "client-secret"),
        ("NAME", "relay"),
        ("UPSTREAM_HOST", "relay.example"),
        ("EMPTY", ""),
    ];
    let config = load_with(yaml, &env, CliOverrides::default()).config;
    assert_eq!(config.server.host, "127.0.0.1");
    assert_eq!(config.server.port, 9009);
    assert_eq!(
        config.auth.token.as_ref().map(|t| t.expose()),
        Some("client-secret")
    );
    let endpoint = config.endpoint("relay").unwrap();
    assert_eq!(endpoint.url.as_str(), "https://relay.example/api");
    assert_eq!(endpoint.token.as_ref().map(|t| t.expose()), Some("Bearer-"));
    assert_eq!(
        endpoint.headers,
        vec![("X-Literal".to_string(), "${KEEP}".to_string())]
    );
}

#[test]
fn unknown_keys_are_warnings_with_their_full_path_and_source() {
    let yaml = "servr:\n  port: 1\nlogging:\n  levle: debug\n\
                usage_tracking:\n  model_pricing:\n    m:\n      inptu: 1\n\
                endpoints:\n  - name: a\n    url: https://a.example\n    tokn: x\n";
    let loaded = load_with(yaml, &[("CCF_WEBB__PORT", "1")], CliOverrides::default());
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "<inline>: unknown key `endpoints[0].tokn` (ignored)",
            "<inline>: unknown key `logging.levle` (ignored)",
            "<inline>: unknown key `servr.port` (ignored)",
            "<inline>: unknown key `usage_tracking.model_pricing.m.inptu` (ignored)",
            "environment: unknown key `webb.port` (ignored)",
        ]
    );
    assert_eq!(loaded.warnings[2].key, "servr.port");
    assert_eq!(loaded.warnings[2].file, "<inline>");
}

#[test]
fn warnings_from_a_file_name_the_file() {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    write!(file, "servr:\n  port: 1\n{ONE_ENDPOINT}").unwrap();
    let loaded = ConfigLoader::new()
        .file(file.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap();
    assert_eq!(
        loaded.warnings[0].to_string(),
        format!(
            "{}: unknown key `servr.port` (ignored)",
            file.path().display()
        )
    );
    assert_eq!(loaded.config.source.as_deref(), Some(file.path()));
}

#[test]
fn auto_switch_defaults_to_true_even_when_a_comment_mentions_the_key() {
    let check = |yaml: &str, expected: bool| {
        let config = Config::from_yaml_str(&format!("{yaml}\n{ONE_ENDPOINT}")).unwrap();
        assert_eq!(config.group.auto_switch_between_groups, expected, "{yaml}");
    };
    // The Go original switched to manual mode when the text appeared anywhere, comments included.
    check(
        "group:\n  cooldown: 60s\n  # auto_switch_between_groups: false",
        true,
    );
    check("group:\n  auto_switch_between_groups: false", false);
    check("group:\n  auto_switch_between_groups: true", true);
    check("", true);
}

#[test]
fn empty_timezone_and_local_mean_the_machine_zone() {
    let check = |yaml: &str, expected: Option<&str>| {
        let config = Config::from_yaml_str(&format!("{yaml}\n{ONE_ENDPOINT}")).unwrap();
        assert_eq!(config.timezone.as_deref(), expected, "{yaml}");
    };
    check("timezone: \"\"", None);
    check("timezone: Local", None);
    check("timezone: UTC", Some("UTC"));
    check("timezone: Europe/Berlin", Some("Europe/Berlin"));
}

#[test]
fn prefer_endpoint_moves_the_named_endpoint_first() {
    let mut config = Config::from_yaml_str(
        "endpoints:\n\
         \x20 - name: a\n    url: https://a.example\n    priority: 1\n\
         \x20 - name: b\n    url: https://b.example\n    priority: 2\n\
         \x20 - name: c\n    url: https://c.example\n\
         \x20 - name: d\n    url: https://d.example\n    priority: 5\n",
    )
    .unwrap();
    config.prefer_endpoint("b").unwrap();
    let priorities: Vec<(&str, u32)> = config
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.priority))
        .collect();
    assert_eq!(priorities, [("a", 3), ("b", 1), ("c", 2), ("d", 5)]);

    let error = config.prefer_endpoint("zzz").unwrap_err();
    assert!(matches!(
        &error,
        ConfigError::UnknownPrimaryEndpoint { name, known } if name == "zzz" && known.len() == 4
    ));
    assert_eq!(
        error.to_string(),
        "unknown endpoint `zzz` given as primary endpoint; known endpoints: `a`, `b`, `c`, `d`"
    );
}

#[test]
fn yaml_merge_keys_and_anchors_work() {
    let yaml = "defaults: &relay\n  timeout: 60s\n  token: shared\n\
                endpoints:\n  - name: a\n    url: https://a.example\n    <<: *relay\n";
    let loaded = load_with(yaml, &[], CliOverrides::default());
    let endpoint = &loaded.config.endpoints[0];
    assert_eq!(endpoint.timeout.as_secs(), 60);
    assert_eq!(endpoint.token.as_ref().map(|t| t.expose()), Some("shared"));
    // The anchor's home is not a known key, so it is reported (and otherwise harmless).
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
}

#[test]
fn a_long_context_tier_is_optional_and_its_absent_prices_follow_its_input() {
    let config = Config::from_yaml_str(&format!(
        "usage_tracking:\n  model_pricing:\n    plain:\n      input: 3.0\n    \
         tiered:\n      input: 3.0\n      output: 15.0\n      long_context:\n        \
         input: 6.0\n        output: 22.5\n    \
         explicit:\n      input: 3.0\n      long_context:\n        threshold_input_tokens: 1000\n        \
         input: 6.0\n        output: 9.0\n        cache_creation: 7.0\n        cache_read: 0.5\n        cache_creation_1h: 11.0\n\
         {ONE_ENDPOINT}"
    ))
    .unwrap();
    let pricing = &config.usage_tracking.model_pricing;
    // A Go entry (no long_context) loads unchanged.
    assert_eq!(pricing["plain"].long_context, None);
    let tiered = pricing["tiered"].long_context.unwrap();
    assert_eq!(
        (
            tiered.threshold_input_tokens,
            tiered.input,
            tiered.output,
            tiered.cache_creation,
            tiered.cache_read,
            tiered.cache_creation_1h
        ),
        (200_000, 6.0, 22.5, 7.5, 0.6000000000000001, None)
    );
    let explicit = pricing["explicit"].long_context.unwrap();
    assert_eq!(
        (
            explicit.threshold_input_tokens,
            explicit.cache_creation,
            explicit.cache_read,
            explicit.cache_creation_1h
        ),
        (1000, 7.0, 0.5, Some(11.0))
    );
}

#[test]
fn absent_cache_prices_follow_the_input_price() {
    let config = Config::from_yaml_str(&format!(
        "usage_tracking:\n  model_pricing:\n    m:\n      input: 2.0\n      output: 10.0\n    \
         z:\n      input: 1.0\n      cache_read: 0\n  default_pricing:\n    input: 4.0\n    output: 20.0\n\
         {ONE_ENDPOINT}"
    ))
    .unwrap();
    let pricing = &config.usage_tracking.model_pricing;
    let m = pricing["m"];
    assert_eq!(
        (m.input, m.output, m.cache_creation, m.cache_read),
        (2.0, 10.0, 2.5, 0.2)
    );
    assert_eq!(m.cache_creation_1h, None);
    let z = pricing["z"];
    assert_eq!((z.output, z.cache_read), (0.0, 0.0));
    let default = config.usage_tracking.default_pricing;
    assert_eq!((default.cache_creation, default.cache_read), (5.0, 0.4));

    let absent = Config::from_yaml_str(ONE_ENDPOINT)
        .unwrap()
        .usage_tracking
        .default_pricing;
    assert_eq!(
        (
            absent.input,
            absent.output,
            absent.cache_creation,
            absent.cache_read
        ),
        (3.0, 15.0, 3.75, 0.30)
    );
}

#[test]
fn unquoted_scalars_in_text_keys_keep_what_the_user_wrote() {
    // The Go original's YAML library read these into string fields; existing files rely on it.
    let config = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: 7\n    url: https://a.example\n    group: 2\n    token: 123456\n    headers:\n      X-Version: 1.0\n      X-Flag: true\nretry:\n  multiplier: 1.5\nusage_tracking:\n  model_pricing:\n    m:\n      input: 0.08\n      output: 4\n",
    )
    .expect("loads");
    let endpoint = &config.endpoints[0];
    assert_eq!(endpoint.name, "7");
    assert_eq!(endpoint.group, "2");
    assert_eq!(endpoint.token.as_ref().map(|t| t.expose()), Some("123456"));
    assert!(endpoint
        .headers
        .contains(&("X-Version".to_string(), "1.0".to_string())));
    assert!(endpoint
        .headers
        .contains(&("X-Flag".to_string(), "true".to_string())));
    assert_eq!(config.retry.multiplier, 1.5);
    let pricing = &config.usage_tracking.model_pricing["m"];
    assert_eq!(pricing.input, 0.08, "no f32 rounding on the way");
    assert_eq!(pricing.output, 4.0);
}

#[test]
fn server_threads_absent_means_one_runtime_per_core_and_zero_means_the_shared_runtime() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let absent = load_with(ONE_ENDPOINT, &[], CliOverrides::default()).config;
    assert_eq!(absent.server.threads, None);
    assert_eq!(absent.server.per_core_runtimes(), Some(cores));
    let zero = load_with(
        &format!("server:\n  threads: 0\n{ONE_ENDPOINT}"),
        &[],
        CliOverrides::default(),
    )
    .config;
    assert_eq!(zero.server.per_core_runtimes(), None);
    let from_env = load_with(
        ONE_ENDPOINT,
        &[("CCF_SERVER__THREADS", "3")],
        CliOverrides::default(),
    )
    .config;
    assert_eq!(from_env.server.threads, Some(3));
    assert_eq!(from_env.server.per_core_runtimes(), Some(3));
}
