//! Every error names its source, the key path and what was expected; validation reports every
//! problem at once.

use std::io::Write;

use ccf_config::{ConfigError, ConfigLoader};

const ONE_ENDPOINT: &str = "endpoints:\n  - name: a\n    url: https://a.example\n";

fn load_error(yaml: &str) -> ConfigError {
    match ConfigLoader::new()
        .yaml_str(yaml)
        .env_vars([("SET", "value")])
        .load()
    {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(error) => error,
    }
}

/// `yaml` fails to load and one line of the message is exactly `expected` (with the
/// `<inline>: ` source prefix added).
fn check(yaml: &str, expected: &str) {
    let message = load_error(yaml).to_string();
    let expected = format!("<inline>: {expected}");
    assert!(
        message.lines().any(|line| line == expected),
        "expected the line\n  {expected}\nin\n{message}"
    );
}

/// Like [`check`] but `section` is followed by one valid endpoint.
fn check_section(section: &str, expected: &str) {
    check(&format!("{section}\n{ONE_ENDPOINT}"), expected);
}

#[test]
fn endpoint_list_problems() {
    check("server:\n  port: 1\n", "endpoints: at least one endpoint is required: expected a list of `- name: ... url: ...` entries");
    check("endpoints: []\n", "endpoints: at least one endpoint is required: expected a list of `- name: ... url: ...` entries");
    check(
        "endpoints:\n  - url: https://a.example\n",
        "endpoints[0].name: missing: every endpoint needs a unique name",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: https://b.example\n  - name: a\n    url: https://c.example\n",
        "endpoints[2].name: duplicate endpoint name `a` (already used by endpoints[0]): names must be unique",
    );
    check(
        "endpoints:\n  - name: a\n",
        "endpoints[0].url: missing: expected an absolute http or https url such as `https://api.anthropic.com`",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: api.example.com\n",
        "endpoints[1].url: invalid url `api.example.com`: relative URL without a base; expected an absolute http or https url such as `https://api.anthropic.com`",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: https://a.example\n  - name: c\n    url: ftp://files.example\n",
        "endpoints[2].url: unsupported scheme `ftp` in `ftp://files.example`: expected an absolute http or https url such as `https://api.anthropic.com`",
    );
    check(
        "endpoints:\n  - name: a\n    url: localhost:8080\n",
        "endpoints[0].url: unsupported scheme `localhost` in `localhost:8080`: expected an absolute http or https url such as `https://api.anthropic.com`",
    );
    check(
        "endpoints:\n  - name: a\n    url: http://\n",
        "endpoints[0].url: invalid url `http://`: empty host; expected an absolute http or https url such as `https://api.anthropic.com`",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example/v1?key=1\n",
        "endpoints[0].url: url `https://a.example/v1?key=1` must not contain a query or fragment: request paths are appended to it",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n    timeout: 0\n",
        "endpoints[0].timeout: must be greater than 0",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n    headers:\n      Bad Header: x\n",
        "endpoints[0].headers[\"Bad Header\"]: `Bad Header` is not a valid HTTP header name",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n    headers:\n      X-A: \"a\\r\\nInjected: 1\"\n",
        "endpoints[0].headers.X-A: header values must be printable ASCII without line breaks",
    );
    check(
        "endpoints:\n  -\n",
        "endpoints[0]: expected a mapping of keys to values, found null",
    );
    check(
        "endpoints:\n  - name: a\n    url: https://a.example\n    priority: -1\n",
        "endpoints[0].priority: expected u32, found signed int `-1`",
    );
}

#[test]
fn section_problems() {
    let cases: &[(&str, &str)] = &[
        ("strategy:\n  type: random", "strategy.type: unknown value `random`: expected one of `priority`, `fastest`"),
        ("retry:\n  max_attempts: 0", "retry.max_attempts: must be at least 1 (it counts the first attempt), found 0"),
        ("retry:\n  multiplier: 0.5", "retry.multiplier: must be at least 1.0, found 0.5"),
        ("retry:\n  budget_percent: 150", "retry.budget_percent: must be between 0 and 100, found 150"),
        ("health:\n  check_interval: 0", "health.check_interval: must be greater than 0"),
        ("health:\n  health_path: v1/models", "health.health_path: `v1/models` must start with `/`, e.g. `/v1/models`"),
        ("logging:\n  file_enabled: true\n  max_files: 0", "logging.max_files: must be at least 1 when logging.file_enabled is true, found 0"),
        ("logging:\n  max_files: 0", "endpoints: never"),
        ("token_counting:\n  estimation_ratio: 0", "token_counting.estimation_ratio: must be greater than 0 (characters per token), found 0"),
        ("auth:\n  enabled: true", "auth.token: required when auth.enabled is true: expected the token clients must send (or a list of named tokens under auth.tokens)"),
        ("auth:\n  enabled: true\n  token: \"\"", "auth.token: required when auth.enabled is true: expected the token clients must send (or a list of named tokens under auth.tokens)"),
        ("auth:\n  tokens:\n    - {name: \"\", token: a}", "auth.tokens[0].name: must not be empty: expected the name recorded on this key's requests, e.g. `alice`"),
        ("auth:\n  tokens:\n    - {name: alice, token: \"\"}", "auth.tokens[0].token: must not be empty: expected the token this client sends"),
        ("auth:\n  tokens:\n    - {name: alice, token: a}\n    - {name: alice, token: b}", "auth.tokens[1].name: `alice` is already used by auth.tokens[0]: names must be unique"),
        ("auth:\n  token: t\n  tokens:\n    - {name: default, token: b}", "auth.tokens[0].name: `default` is already used by auth.token (named `default`): names must be unique"),
        ("auth:\n  tokens:\n    - {name: alice, token: a}\n    - {name: bob, token: a}", "auth.tokens[1].token: the same token is already given by auth.tokens[0]: every key must be distinct"),
        ("auth:\n  tokens:\n    - {name: alice, token: a, limits: {requests_per_minute: 0}}", "auth.tokens[0].limits.requests_per_minute: must be at least 1 (leave the key out for no limit)"),
        ("auth:\n  tokens:\n    - {name: alice, token: a, limits: {concurrency: 0}}", "auth.tokens[0].limits.concurrency: must be at least 1 (leave the key out for no limit)"),
        ("auth:\n  tokens:\n    - {name: alice, token: a, limits: {daily_budget_usd: -5}}", "auth.tokens[0].limits.daily_budget_usd: must be a positive amount of USD (e.g. 5.00), found -5"),
        ("auth:\n  queue_timeout: 0s", "auth.queue_timeout: must be greater than 0"),
        ("server:\n  max_headers: 0", "server.max_headers: must be greater than 0"),
        ("server:\n  max_connections: 0", "server.max_connections: must be greater than 0"),
        ("server:\n  max_in_flight: 0", "server.max_in_flight: must be greater than 0"),
        ("server:\n  threads: 257", "server.threads: must be at most 256, found 257 (0 serves on one shared runtime; leave it out for one runtime per core)"),
        ("server:\n  max_header_bytes: 1KB", "server.max_header_bytes: must be at least 8KB, found 1KB"),
        ("timezone: Shanghai", "timezone: `Shanghai` is not an IANA time zone name: expected e.g. `Asia/Shanghai`, `Europe/Berlin`, `UTC` or `Local`"),
        ("global_timeout: 0", "global_timeout: must be greater than 0"),
        ("web:\n  allowed_hosts: [\"http://dash.example:80\"]", "web.allowed_hosts[0]: `http://dash.example:80` is not a host name: expected letters, digits, `-` and `.` without scheme, port or path (e.g. `dashboard.lan`)"),
        ("request_suspend:\n  enabled: true\n  timeout: 0", "request_suspend.timeout: must be greater than 0"),
        ("request_suspend:\n  enabled: true\n  max_suspended_requests: 0", "request_suspend.max_suspended_requests: must be between 1 and 10000, found 0"),
        ("request_suspend:\n  enabled: true\n  max_suspended_requests: 10001", "request_suspend.max_suspended_requests: must be between 1 and 10000, found 10001"),
        ("proxy:\n  enabled: true", "proxy: proxy.enabled is true but neither `url` nor both `host` and `port` are set"),
        ("proxy:\n  enabled: true\n  host: p.example", "proxy: proxy.enabled is true but neither `url` nor both `host` and `port` are set"),
        ("proxy:\n  enabled: true\n  type: socks4\n  url: socks4://p:1", "proxy.type: unknown value `socks4`: expected one of `http`, `https`, `socks5`"),
        ("proxy:\n  enabled: true\n  url: p.example:8080", "proxy.url: unsupported scheme `p.example` in `p.example:8080`: expected `http`, `https` or `socks5`"),
        ("usage_tracking:\n  buffer_size: 0", "usage_tracking.buffer_size: must be greater than 0"),
        ("usage_tracking:\n  model_pricing:\n    m:\n      input: 3\n      long_context:\n        threshold_input_tokens: 0\n        input: 6\n        output: 9", "usage_tracking.model_pricing.m.long_context.threshold_input_tokens: must be a number of input tokens > 0, found 0"),
        ("usage_tracking:\n  model_pricing:\n    m:\n      long_context:\n        input: 6\n        output: -1", "usage_tracking.model_pricing.m.long_context.output: must be a non-negative price in USD per million tokens, found -1"),
        ("usage_tracking:\n  model_pricing:\n    m:\n      long_context:\n        inptu: 6\n        output: 22.5", "usage_tracking.model_pricing.m.long_context: a long_context tier needs its own `input` and `output` prices (USD per million tokens)"),
        ("usage_tracking:\n  batch_size: 0", "usage_tracking.batch_size: must be greater than 0"),
        ("usage_tracking:\n  flush_interval: 0s", "usage_tracking.flush_interval: must be greater than 0"),
        ("usage_tracking:\n  max_retry: 0", "usage_tracking.max_retry: must be greater than 0"),
        ("usage_tracking:\n  buffer_size: 10\n  batch_size: 20", "usage_tracking.batch_size: must not exceed usage_tracking.buffer_size (10), found 20"),
        ("usage_tracking:\n  cleanup_interval: 0", "usage_tracking.cleanup_interval: must be greater than 0 when usage_tracking.retention_days is set (0 keeps rows forever)"),
        ("usage_tracking:\n  database:\n    type: mysql\n    database: usage", "usage_tracking.database.host: must not be empty: expected the MySQL server host"),
        ("usage_tracking:\n  database:\n    type: oracle", "usage_tracking.database.type: unknown value `oracle`: expected one of `sqlite`, `mysql`"),
        ("usage_tracking:\n  database:\n    timezone: CST", "usage_tracking.database.timezone: `CST` is not an IANA time zone name: expected e.g. `Asia/Shanghai`, `Europe/Berlin`, `UTC` or `Local`"),
        ("usage_tracking:\n  model_pricing:\n    claude-x:\n      input: -1", "usage_tracking.model_pricing.claude-x.input: must be a non-negative price in USD per million tokens, found -1"),
        ("server:\n  port: abc", "server.port: expected u16, found string \"abc\""),
        ("server:\n  port: 70000", "server.port: expected u16, found unsigned int `70000`"),
        ("retry:\n  base_delay: 5x", "retry.base_delay: unknown unit `x` in duration `5x`: expected a duration such as `30s`, `1m30s`, `500ms` or `1.5h`"),
        ("logging:\n  max_file_size: 10XB", "logging.max_file_size: unknown unit in size `10XB`: expected a size such as `100MB`, `512KB`, `1GB` or a number of bytes"),
        ("logging:\n  level: loud", "logging.level: unknown value `loud`: expected one of `debug`, `info`, `warn`, `warning`, `error`"),
        ("server:\n  port: eighty", "server.port: expected u16, found string \"eighty\""),
        ("server: 5", "server: expected a mapping of keys to values, found string \"5\""),
        ("cluster:\n  redis_url: http://bob:hunter2@cache:6379", "cluster.redis_url: unsupported scheme `http` in `http://bob:***@cache:6379/`: expected `redis://` or `rediss://` (TLS)"),
        ("cluster:\n  redis_url: redis://", "cluster.redis_url: `redis://` has no host"),
        ("cluster:\n  redis_prefix: \"my app\"", "cluster.redis_prefix: must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `my app`"),
        ("cluster:\n  redis_timeout: 0s", "cluster.redis_timeout: must be greater than 0"),
        ("routing:\n  session_affinity: maybe", "routing.session_affinity: expected `on` or `off`, found `maybe`"),
        ("routing:\n  honesty_threshold: 1.5", "routing.honesty_threshold: must be a score between 0 and 1 (exclusive), found 1.5"),
        ("routing:\n  usage_tolerance: 0.5", "routing.usage_tolerance: must be a ratio of at least 1.0 (e.g. 2.5), found 0.5"),
        ("routing:\n  relay_honesty: maybe", "routing.relay_honesty: expected `on` or `off`, found `maybe`"),
        ("routing:\n  quota_drain_at: 0", "routing.quota_drain_at: must be a fraction of the window above 0 and at most 1 (e.g. 0.9), found 0"),
        ("routing:\n  quota_drain_at: 1.2", "routing.quota_drain_at: must be a fraction of the window above 0 and at most 1 (e.g. 0.9), found 1.2"),
        ("server:\n  host: ${UNSET_VARIABLE}", "server.host: environment variable `UNSET_VARIABLE` is not set (use `${UNSET_VARIABLE:-default}` to give a default)"),
        ("server:\n  host: \"${SET\"", "server.host: unterminated `${` in value (write `$${` for a literal `${`)"),
    ];
    for (section, expected) in cases {
        if expected.starts_with("endpoints: never") {
            // Settings that only matter when their feature is on are not checked when it is off.
            ConfigLoader::new()
                .yaml_str(format!("{section}\n{ONE_ENDPOINT}"))
                .env_vars(Vec::<(String, String)>::new())
                .load()
                .unwrap_or_else(|error| panic!("{section}: {error}"));
            continue;
        }
        check_section(section, expected);
    }
}

#[test]
fn explicit_zeros_are_honoured_where_they_make_sense() {
    let config = ccf_config::Config::from_yaml_str(&format!(
        "usage_tracking:\n  retention_days: 0\n  cleanup_interval: 0\n\
         group:\n  cooldown: 0s\n\
         retry:\n  base_delay: 0\n\
         tui:\n  save_priority_edits: false\n\
         server:\n  port: 0\n\
         {ONE_ENDPOINT}"
    ))
    .unwrap();
    assert_eq!(config.usage_tracking.retention_days, 0);
    assert!(config.group.cooldown.get().is_zero());
    assert!(config.retry.base_delay.get().is_zero());
    assert_eq!(config.server.port, 0);
}

#[test]
fn validation_reports_every_problem_at_once() {
    let error = load_error(
        "retry:\n  max_attempts: 0\nauth:\n  enabled: true\n\
         endpoints:\n  - name: a\n    url: nope\n  - name: a\n    url: https://b.example\n",
    );
    let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "retry.max_attempts",
            "auth.token",
            "endpoints[0].url",
            "endpoints[1].name"
        ]
    );
    assert_eq!(error.to_string().lines().count(), 4);
    assert!(matches!(error, ConfigError::Invalid { ref file, .. } if file == "<inline>"));
}

#[test]
fn every_unset_variable_is_reported() {
    let error = load_error(
        "auth:\n  token: ${NOPE_ONE}\nendpoints:\n  - name: a\n    url: https://a.example\n    token: ${NOPE_TWO}\n",
    );
    let lines: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("<inline>: auth.token: environment variable `NOPE_ONE`"));
    assert!(lines[1].starts_with("<inline>: endpoints[0].token: environment variable `NOPE_TWO`"));
}

#[test]
fn errors_name_the_file() {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    write!(
        file,
        "server:\n  port: 8087\nendpoints:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: nope\n"
    )
    .unwrap();
    let name = file.path().display().to_string();
    let error = ConfigLoader::new()
        .file(file.path())
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{name}: endpoints[1].url: invalid url `nope`: relative URL without a base; expected an absolute http or https url such as `https://api.anthropic.com`")
    );

    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    write!(file, "server:\n  port: [1\n").unwrap();
    let error = ConfigLoader::new().file(file.path()).load().unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ConfigError::Parse { .. }));
    assert!(
        message.starts_with(&format!("{}: invalid yaml: ", file.path().display())),
        "{message}"
    );
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn a_missing_file_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("absent.yaml");
    let error = ConfigLoader::new().file(&path).load().unwrap_err();
    assert!(matches!(error, ConfigError::FileNotFound { .. }));
    assert_eq!(
        error.to_string(),
        format!("{}: configuration file not found", path.display())
    );
}

#[test]
fn environment_type_errors_name_the_variable() {
    let error = ConfigLoader::new()
        .yaml_str(ONE_ENDPOINT)
        .env_vars([("CCF_WEB__PORT", "eighty")])
        .load()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment: web.port: expected u16, found string \"eighty\" (from `CCF_WEB__PORT`)"
    );
}

#[test]
fn connection_settings_are_validated() {
    check_section(
        "upstream:\n  max_streams_per_connection: 0\n",
        "upstream.max_streams_per_connection: must be greater than 0",
    );
    check_section(
        "upstream:\n  keep_alive_timeout: 0s\n",
        "upstream.keep_alive_timeout: must be greater than 0",
    );
    check_section(
        "server:\n  body_read_timeout: 0s\n",
        "server.body_read_timeout: must be greater than 0",
    );
    check_section(
        "tls:\n  ca_file: /nonexistent/ca.pem\n",
        "tls.ca_file: cannot read `/nonexistent/ca.pem`: No such file or directory (os error 2)",
    );
    let mut not_pem = tempfile::NamedTempFile::new().expect("temp file");
    not_pem.write_all(b"not a certificate").expect("write");
    let path = not_pem.path().display().to_string();
    check(
        &format!("endpoints:\n  - name: a\n    url: https://a.example\n    ca_file: {path}\n"),
        &format!(
            "endpoints[0].ca_file: `{path}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        ),
    );
}

#[test]
fn connection_settings_are_optional_with_documented_defaults() {
    let config = ccf_config::Config::from_yaml_str(ONE_ENDPOINT).expect("loads");
    assert_eq!(config.upstream.max_streams_per_connection, 100);
    assert_eq!(config.upstream.keep_alive_interval.get().as_secs(), 30);
    assert_eq!(config.upstream.keep_alive_timeout.get().as_secs(), 20);
    assert_eq!(config.server.body_read_timeout.get().as_secs(), 60);
    assert!(config.tls.ca_file.is_none());
    assert!(config.endpoint_ca_files.is_empty());
}
