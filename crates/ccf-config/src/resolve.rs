//! `RawConfig -> Config`: endpoint inheritance and validation.
//!
//! Every problem is collected (with its key path) rather than stopping at the first, so a user
//! fixes a broken file in one go.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use ccf_types::Secret;

use crate::path::KeyPath;
use crate::schema::{ModelPricing, RawConfig, RawEndpoint};
use crate::storage::StorageTarget;
use crate::units::GoDuration;
use crate::{Config, Endpoint, Webhook, WebhookEvent};

/// Problems found, each with the key path it concerns.
pub(crate) type Problems = Vec<(KeyPath, String)>;

/// Default of `global_timeout`.
pub(crate) const DEFAULT_GLOBAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Group of the first endpoint when it names none.
pub(crate) const DEFAULT_GROUP: &str = "Default";
/// Group priority of the first endpoint when it sets none.
pub(crate) const DEFAULT_GROUP_PRIORITY: u32 = 1;
/// Upper bound of `request_suspend.max_suspended_requests`.
pub(crate) const MAX_SUSPENDED_REQUESTS: u32 = 10_000;

/// Applies inheritance and validates; returns every problem found.
pub(crate) fn resolve(raw: RawConfig, source: Option<PathBuf>) -> Result<Config, Problems> {
    let mut problems = Problems::new();
    validate_sections(&raw, &mut problems);

    let global_timeout = raw
        .global_timeout
        .map(GoDuration::get)
        .unwrap_or(DEFAULT_GLOBAL_TIMEOUT);
    let endpoints = resolve_endpoints(&raw.endpoints, global_timeout, &mut problems);
    validate_model_rules(&raw.routing.model_rules, &endpoints, &mut problems);
    let webhooks = resolve_webhooks(&raw.webhooks, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }

    let RawConfig {
        timezone,
        instance_id,
        server,
        mut strategy,
        retry,
        health,
        logging,
        streaming,
        group,
        request_suspend,
        global_timeout: _,
        auth,
        tui,
        web,
        token_counting,
        proxy,
        tls,
        upstream,
        usage_tracking,
        routing,
        endpoints: raw_endpoints,
        webhooks: _,
        cluster,
    } = raw;
    let endpoint_proxies = endpoint_proxies(&raw_endpoints, &endpoints);
    let endpoint_ca_files = raw_endpoints
        .into_iter()
        .filter_map(|endpoint| Some((endpoint.name, endpoint.ca_file?)))
        .collect();

    if strategy
        .fast_test_path
        .as_deref()
        .is_none_or(|path| path.trim().is_empty())
    {
        strategy.fast_test_path = Some(health.health_path.clone());
    }

    Ok(Config {
        source,
        timezone: timezone.filter(|zone| !zone.trim().is_empty() && zone != "Local"),
        instance_id: instance_id.filter(|id| !id.trim().is_empty()),
        server,
        strategy,
        retry,
        health,
        logging,
        streaming,
        group,
        request_suspend,
        global_timeout,
        auth,
        tui,
        web,
        token_counting,
        proxy,
        tls,
        upstream,
        endpoint_ca_files,
        endpoint_proxies,
        usage_tracking,
        routing,
        endpoints,
        webhooks,
        cluster,
    })
}

struct Check<'a> {
    problems: &'a mut Problems,
}

impl Check<'_> {
    fn fail(&mut self, key: &[&str], message: impl Into<String>) {
        self.problems.push((KeyPath::keys(key), message.into()));
    }

    fn positive_duration(&mut self, key: &[&str], value: GoDuration) {
        if value.get().is_zero() {
            self.fail(key, "must be greater than 0");
        }
    }

    /// A PEM file holding at least one certificate.
    fn ca_file(&mut self, key: KeyPath, path: &std::path::Path) {
        let problem = match std::fs::read_to_string(path) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => return,
            Ok(_) => format!(
                "`{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                path.display()
            ),
            Err(error) => format!("cannot read `{}`: {error}", path.display()),
        };
        self.problems.push((key, problem));
    }

    fn positive_count(&mut self, key: &[&str], value: u32) {
        if value == 0 {
            self.fail(key, "must be greater than 0");
        }
    }

    fn non_empty(&mut self, key: &[&str], value: &str, what: &str) {
        if value.trim().is_empty() {
            self.fail(key, format!("must not be empty: expected {what}"));
        }
    }

    fn absolute_path(&mut self, key: &[&str], value: &str) {
        if !value.starts_with('/') {
            self.fail(
                key,
                format!("`{value}` must start with `/`, e.g. `/v1/models`"),
            );
        }
    }

    fn timezone(&mut self, key: &[&str], value: Option<&str>) {
        if let Some(zone) = value {
            if !zone.trim().is_empty() && !looks_like_iana_zone(zone) {
                self.fail(
                    key,
                    format!(
                        "`{zone}` is not an IANA time zone name: expected e.g. `Asia/Shanghai`, \
                         `Europe/Berlin`, `UTC` or `Local`"
                    ),
                );
            }
        }
    }

    fn pricing(&mut self, key: &[&str], pricing: &ModelPricing) {
        if let Some(long) = &pricing.long_context {
            let mut long_key = key.to_vec();
            long_key.push("long_context");
            if long.threshold_input_tokens == 0 {
                let mut path = long_key.clone();
                path.push("threshold_input_tokens");
                self.fail(&path, "must be a number of input tokens > 0, found 0");
            }
            self.prices(
                &long_key,
                [
                    ("input", Some(long.input)),
                    ("output", Some(long.output)),
                    ("cache_creation", Some(long.cache_creation)),
                    ("cache_read", Some(long.cache_read)),
                    ("cache_creation_1h", long.cache_creation_1h),
                ],
            );
        }
        self.prices(
            key,
            [
                ("input", Some(pricing.input)),
                ("output", Some(pricing.output)),
                ("cache_creation", Some(pricing.cache_creation)),
                ("cache_read", Some(pricing.cache_read)),
                ("cache_creation_1h", pricing.cache_creation_1h),
            ],
        );
    }

    fn prices(&mut self, key: &[&str], fields: [(&str, Option<f64>); 5]) {
        for (field, value) in fields {
            if let Some(value) = value {
                if !value.is_finite() || value < 0.0 {
                    let mut path = key.to_vec();
                    path.push(field);
                    self.fail(
                        &path,
                        format!(
                            "must be a non-negative price in USD per million tokens, found {value}"
                        ),
                    );
                }
            }
        }
    }
}

fn validate_sections(raw: &RawConfig, problems: &mut Problems) {
    let mut check = Check { problems };

    check.timezone(&["timezone"], raw.timezone.as_deref());
    check.non_empty(
        &["server", "host"],
        &raw.server.host,
        "a host name or IP address",
    );

    if raw.strategy.fast_test_enabled {
        check.positive_duration(
            &["strategy", "fast_test_timeout"],
            raw.strategy.fast_test_timeout,
        );
    }
    if let Some(path) = raw.strategy.fast_test_path.as_deref() {
        if !path.trim().is_empty() {
            check.absolute_path(&["strategy", "fast_test_path"], path);
        }
    }

    if raw.retry.max_attempts < 1 {
        check.fail(
            &["retry", "max_attempts"],
            "must be at least 1 (it counts the first attempt), found 0",
        );
    }
    if !raw.retry.multiplier.is_finite() || raw.retry.multiplier < 1.0 {
        check.fail(
            &["retry", "multiplier"],
            format!("must be at least 1.0, found {}", raw.retry.multiplier),
        );
    }
    if !raw.retry.budget_percent.is_finite() || !(0.0..=100.0).contains(&raw.retry.budget_percent) {
        check.fail(
            &["retry", "budget_percent"],
            format!(
                "must be between 0 and 100, found {}",
                raw.retry.budget_percent
            ),
        );
    }

    check.positive_duration(&["health", "check_interval"], raw.health.check_interval);
    check.positive_duration(&["health", "timeout"], raw.health.timeout);
    check.absolute_path(&["health", "health_path"], &raw.health.health_path);

    if raw.logging.file_enabled {
        check.non_empty(
            &["logging", "file_path"],
            &raw.logging.file_path,
            "a file path",
        );
        if raw.logging.max_files < 1 {
            check.fail(
                &["logging", "max_files"],
                "must be at least 1 when logging.file_enabled is true, found 0",
            );
        }
        if raw.logging.max_file_size.bytes() == 0 {
            check.fail(
                &["logging", "max_file_size"],
                "must be greater than 0 when logging.file_enabled is true",
            );
        }
    }

    if raw.request_suspend.enabled {
        check.positive_duration(&["request_suspend", "timeout"], raw.request_suspend.timeout);
        let max = raw.request_suspend.max_suspended_requests;
        if max == 0 || max > MAX_SUSPENDED_REQUESTS {
            check.fail(
                &["request_suspend", "max_suspended_requests"],
                format!("must be between 1 and {MAX_SUSPENDED_REQUESTS}, found {max}"),
            );
        }
    }

    if let Some(timeout) = raw.global_timeout {
        check.positive_duration(&["global_timeout"], timeout);
    }

    validate_auth(raw, &mut check);
    for (index, name) in raw.web.allowed_hosts.iter().enumerate() {
        if !is_plain_host_name(name) {
            check.problems.push((
                KeyPath::keys(&["web", "allowed_hosts"]).index(index),
                format!(
                    "`{name}` is not a host name: expected letters, digits, `-` and `.` \
                     without scheme, port or path (e.g. `dashboard.lan`)"
                ),
            ));
        }
    }
    check.positive_count(&["server", "max_headers"], raw.server.max_headers);
    check.positive_count(&["server", "max_connections"], raw.server.max_connections);
    check.positive_count(&["server", "max_in_flight"], raw.server.max_in_flight);
    if let Some(threads) = raw.server.threads {
        if threads > crate::schema::MAX_SERVER_THREADS {
            check.fail(
                &["server", "threads"],
                format!(
                    "must be at most {}, found {threads} (0 serves on one shared runtime; leave \
                     it out for one runtime per core)",
                    crate::schema::MAX_SERVER_THREADS
                ),
            );
        }
    }
    // hyper's smallest read buffer is 8 KiB; a smaller limit would refuse every request.
    if raw.server.max_header_bytes.bytes() < 8192 {
        check.fail(
            &["server", "max_header_bytes"],
            format!(
                "must be at least 8KB, found {}",
                raw.server.max_header_bytes
            ),
        );
    }

    if raw.tui.enabled {
        check.positive_duration(&["tui", "update_interval"], raw.tui.update_interval);
    }

    let ratio = raw.token_counting.estimation_ratio;
    if !ratio.is_finite() || ratio <= 0.0 {
        check.fail(
            &["token_counting", "estimation_ratio"],
            format!("must be greater than 0 (characters per token), found {ratio}"),
        );
    }

    validate_proxy(&raw.proxy, &KeyPath::keys(&["proxy"]), &mut check);
    validate_failover_triggers(raw, &mut check);
    validate_connections(raw, &mut check);
    validate_usage_tracking(raw, &mut check);
    validate_honesty(raw, &mut check);
    validate_quota_drain_at(raw, &mut check);
    validate_cluster(raw, &mut check);
    check.positive_duration(&["routing", "affinity_ttl"], raw.routing.affinity_ttl);
    if raw.routing.affinity_max_sessions == 0 {
        check.fail(&["routing", "affinity_max_sessions"], "must be at least 1");
    }
}

/// Whether `name` is a bare DNS name, as `web.allowed_hosts` needs it: labels of ASCII letters,
/// digits and `-`, separated by single dots, no port, scheme or path.
fn is_plain_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `tls.ca_file`, `endpoints[].ca_file`, `upstream.*` and `server.body_read_timeout`.
fn validate_connections(raw: &RawConfig, check: &mut Check<'_>) {
    if let Some(path) = &raw.tls.ca_file {
        check.ca_file(KeyPath::keys(&["tls", "ca_file"]), path);
    }
    for (index, endpoint) in raw.endpoints.iter().enumerate() {
        if let Some(path) = &endpoint.ca_file {
            let key = KeyPath::keys(&["endpoints"]).index(index).key("ca_file");
            check.ca_file(key, path);
        }
    }
    check.positive_count(
        &["upstream", "max_streams_per_connection"],
        raw.upstream.max_streams_per_connection,
    );
    if !raw.upstream.keep_alive_interval.get().is_zero() {
        check.positive_duration(
            &["upstream", "keep_alive_timeout"],
            raw.upstream.keep_alive_timeout,
        );
    }
    check.positive_duration(
        &["server", "body_read_timeout"],
        raw.server.body_read_timeout,
    );
}

/// `routing.honesty_threshold` and `routing.usage_tolerance`.
fn validate_honesty(raw: &RawConfig, check: &mut Check<'_>) {
    let threshold = raw.routing.honesty_threshold;
    if !threshold.is_finite() || threshold <= 0.0 || threshold >= 1.0 {
        check.fail(
            &["routing", "honesty_threshold"],
            format!("must be a score between 0 and 1 (exclusive), found {threshold}"),
        );
    }
    let tolerance = raw.routing.usage_tolerance;
    if !tolerance.is_finite() || tolerance < 1.0 {
        check.fail(
            &["routing", "usage_tolerance"],
            format!("must be a ratio of at least 1.0 (e.g. 2.5), found {tolerance}"),
        );
    }
}

/// `routing.quota_drain_at`: a fraction of a subscription window, in (0, 1].
/// `cluster.*`: a `redis://` / `rediss://` URL with a host, a prefix that is one word, a
/// positive timeout.
fn validate_cluster(raw: &RawConfig, check: &mut Check<'_>) {
    let cluster = &raw.cluster;
    if let Some(url) = cluster.redis_url.as_ref() {
        let text = url.expose().trim();
        let problem = match url::Url::parse(text) {
            Ok(parsed) if !matches!(parsed.scheme(), "redis" | "rediss") => Some(format!(
                "unsupported scheme `{}` in `{}`: expected `redis://` or `rediss://` (TLS)",
                parsed.scheme(),
                crate::mask_url_password(text)
            )),
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                Some(format!("`{}` has no host", crate::mask_url_password(text)))
            }
            Ok(_) => None,
            Err(error) => Some(format!(
                "invalid url `{}`: {error}; expected e.g. `redis://127.0.0.1:6379/0`",
                crate::mask_url_password(text)
            )),
        };
        if let Some(problem) = problem {
            check.fail(&["cluster", "redis_url"], problem);
        }
    }
    let prefix = cluster.redis_prefix.as_str();
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        check.fail(
            &["cluster", "redis_prefix"],
            format!("must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`, found `{prefix}`"),
        );
    }
    check.positive_duration(&["cluster", "redis_timeout"], cluster.redis_timeout);
}

fn validate_quota_drain_at(raw: &RawConfig, check: &mut Check<'_>) {
    let drain_at = raw.routing.quota_drain_at;
    if !drain_at.is_finite() || drain_at <= 0.0 || drain_at > 1.0 {
        check.fail(
            &["routing", "quota_drain_at"],
            format!("must be a fraction of the window above 0 and at most 1 (e.g. 0.9), found {drain_at}"),
        );
    }
}

/// `auth.*`: with auth on, at least one token; every named token has a unique name and a
/// distinct, non-empty value (two names for one value would make the recorded name ambiguous).
fn validate_auth(raw: &RawConfig, check: &mut Check<'_>) {
    let auth = &raw.auth;
    let has_legacy = auth.token.as_ref().is_some_and(|token| !token.is_empty());
    if auth.enabled && !has_legacy && auth.tokens.is_empty() {
        check.fail(
            &["auth", "token"],
            "required when auth.enabled is true: expected the token clients must send \
             (or a list of named tokens under auth.tokens)",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut values: HashMap<&str, usize> = HashMap::new();
    if has_legacy {
        names.insert(crate::schema::DEFAULT_AUTH_TOKEN_NAME, usize::MAX);
        if let Some(token) = &auth.token {
            values.insert(token.expose(), usize::MAX);
        }
    }
    let base = KeyPath::keys(&["auth", "tokens"]);
    for (index, entry) in auth.tokens.iter().enumerate() {
        let entry_path = base.index(index);
        let name = entry.name.trim();
        if name.is_empty() {
            check
                .problems
                .push((entry_path.key("name"), "must not be empty: expected the name recorded on this key's requests, e.g. `alice`".into()));
        } else if let Some(previous) = names.insert(name, index) {
            let first = if previous == usize::MAX {
                "auth.token (named `default`)".to_string()
            } else {
                format!("auth.tokens[{previous}]")
            };
            check.problems.push((
                entry_path.key("name"),
                format!("`{name}` is already used by {first}: names must be unique"),
            ));
        }
        if entry.token.is_empty() {
            check.problems.push((
                entry_path.key("token"),
                "must not be empty: expected the token this client sends".into(),
            ));
        } else if let Some(previous) = values.insert(entry.token.expose(), index) {
            let first = if previous == usize::MAX {
                "auth.token".to_string()
            } else {
                format!("auth.tokens[{previous}]")
            };
            check.problems.push((
                entry_path.key("token"),
                format!("the same token is already given by {first}: every key must be distinct"),
            ));
        }
        validate_key_limits(&entry.limits, &entry_path.key("limits"), check);
    }
    check.positive_duration(&["auth", "queue_timeout"], auth.queue_timeout);
}

/// `auth.tokens[].limits`: counts of at least 1, budgets positive finite USD amounts.
fn validate_key_limits(
    limits: &crate::schema::KeyLimitsConfig,
    path: &KeyPath,
    check: &mut Check<'_>,
) {
    for (key, value) in [
        ("requests_per_minute", limits.requests_per_minute),
        ("concurrency", limits.concurrency),
    ] {
        if value == Some(0) {
            check.problems.push((
                path.key(key),
                "must be at least 1 (leave the key out for no limit)".into(),
            ));
        }
    }
    for (key, value) in [
        ("daily_budget_usd", limits.daily_budget_usd),
        ("monthly_budget_usd", limits.monthly_budget_usd),
    ] {
        if let Some(budget) = value.filter(|budget| !budget.is_finite() || *budget <= 0.0) {
            check.problems.push((
                path.key(key),
                format!("must be a positive amount of USD (e.g. 5.00), found {budget}"),
            ));
        }
    }
}

/// An outbound proxy (`proxy` or `endpoints[i].proxy`, at `key`): when enabled, a usable `url`
/// or `host` and `port`.
fn validate_proxy(
    proxy: &crate::schema::OutboundProxyConfig,
    key: &KeyPath,
    check: &mut Check<'_>,
) {
    if !proxy.enabled {
        return;
    }
    let url = proxy
        .url
        .as_deref()
        .map(str::trim)
        .filter(|url| !url.is_empty());
    if let Some(url) = url {
        let problem = match url::Url::parse(url) {
            Ok(parsed) => {
                if !matches!(parsed.scheme(), "http" | "https" | "socks5" | "socks5h") {
                    Some(format!(
                        "unsupported scheme `{}` in `{}`: expected `http`, `https` or `socks5`",
                        parsed.scheme(),
                        crate::mask_url_password(url)
                    ))
                } else if parsed.host_str().is_none_or(str::is_empty) {
                    Some(format!("`{}` has no host", crate::mask_url_password(url)))
                } else {
                    None
                }
            }
            Err(error) => Some(format!(
                "invalid url `{}`: {error}; expected e.g. `socks5://127.0.0.1:1080`",
                crate::mask_url_password(url)
            )),
        };
        if let Some(problem) = problem {
            check.problems.push((key.key("url"), problem));
        }
        return;
    }
    let host = proxy
        .host
        .as_deref()
        .map(str::trim)
        .filter(|host| !host.is_empty());
    if host.is_none() || proxy.port.is_none() {
        check.problems.push((
            key.clone(),
            format!("{key}.enabled is true but neither `url` nor both `host` and `port` are set"),
        ));
    }
}

/// `retry.failover_on_status` (400 to 599 but 401, 403 and 429) and `endpoints[].proxy`.
fn validate_failover_triggers(raw: &RawConfig, check: &mut Check<'_>) {
    for (index, status) in raw.retry.failover_on_status.iter().enumerate() {
        let problem = match status {
            401 | 403 => Some(format!(
                "{status} already moves to the next endpoint (the endpoint refused its credentials): remove it"
            )),
            429 => Some(
                "429 has its own handling (wait as asked, or skip the endpoint until its reset): remove it"
                    .to_string(),
            ),
            400..=599 => None,
            _ => Some(format!(
                "must be an error status between 400 and 599, found {status}"
            )),
        };
        if let Some(problem) = problem {
            check.problems.push((
                KeyPath::keys(&["retry", "failover_on_status"]).index(index),
                problem,
            ));
        }
    }
    for (index, endpoint) in raw.endpoints.iter().enumerate() {
        if let Some(proxy) = &endpoint.proxy {
            let key = KeyPath::keys(&["endpoints"]).index(index).key("proxy");
            validate_proxy(proxy, &key, check);
        }
    }
}

/// `endpoints[].proxy` resolved: an endpoint's own, else the first one set in its group (file
/// order); endpoints with neither use the global `proxy` and are not listed.
fn endpoint_proxies(
    raw: &[RawEndpoint],
    endpoints: &[Endpoint],
) -> BTreeMap<String, crate::schema::OutboundProxyConfig> {
    let mut group_proxies: HashMap<&str, &crate::schema::OutboundProxyConfig> = HashMap::new();
    for (raw_endpoint, endpoint) in raw.iter().zip(endpoints) {
        if let Some(proxy) = &raw_endpoint.proxy {
            group_proxies
                .entry(endpoint.group.as_str())
                .or_insert(proxy);
        }
    }
    raw.iter()
        .zip(endpoints)
        .filter_map(|(raw_endpoint, endpoint)| {
            let proxy = raw_endpoint
                .proxy
                .as_ref()
                .or_else(|| group_proxies.get(endpoint.group.as_str()).copied())?;
            Some((endpoint.name.clone(), proxy.clone()))
        })
        .collect()
}

fn validate_usage_tracking(raw: &RawConfig, check: &mut Check<'_>) {
    let usage = &raw.usage_tracking;
    for (model, pricing) in &usage.model_pricing {
        check.pricing(&["usage_tracking", "model_pricing", model], pricing);
    }
    check.pricing(
        &["usage_tracking", "default_pricing"],
        &usage.default_pricing,
    );
    if let Some(database) = &usage.database {
        check.timezone(
            &["usage_tracking", "database", "timezone"],
            database.timezone.as_deref(),
        );
    }
    if !usage.enabled {
        return;
    }
    check.positive_count(&["usage_tracking", "buffer_size"], usage.buffer_size);
    check.positive_count(&["usage_tracking", "batch_size"], usage.batch_size);
    check.positive_duration(&["usage_tracking", "flush_interval"], usage.flush_interval);
    check.positive_duration(
        &["usage_tracking", "shutdown_flush_timeout"],
        usage.shutdown_flush_timeout,
    );
    check.positive_count(&["usage_tracking", "max_retry"], usage.max_retry);
    if usage.batch_size > usage.buffer_size {
        check.fail(
            &["usage_tracking", "batch_size"],
            format!(
                "must not exceed usage_tracking.buffer_size ({}), found {}",
                usage.buffer_size, usage.batch_size
            ),
        );
    }
    if usage.retention_days > 0 && usage.cleanup_interval.get().is_zero() {
        check.fail(
            &["usage_tracking", "cleanup_interval"],
            "must be greater than 0 when usage_tracking.retention_days is set (0 keeps rows forever)",
        );
    }
    match usage.storage() {
        StorageTarget::Sqlite { path } => {
            if path.as_os_str().is_empty() {
                let key: &[&str] = if usage.database.is_some() {
                    &["usage_tracking", "database", "path"]
                } else {
                    &["usage_tracking", "database_path"]
                };
                check.fail(key, "must not be empty: expected the SQLite file path");
            }
        }
        StorageTarget::Mysql(mysql) => {
            check.non_empty(
                &["usage_tracking", "database", "host"],
                &mysql.host,
                "the MySQL server host",
            );
            check.non_empty(
                &["usage_tracking", "database", "database"],
                &mysql.database,
                "the MySQL database name",
            );
        }
    }
}

/// Whether `zone` looks like an IANA time zone name (`Area/Location`, `UTC`, `Local`). This is a
/// shape check only; the zone database is consulted where times are formatted.
fn looks_like_iana_zone(zone: &str) -> bool {
    if matches!(zone, "UTC" | "Local" | "GMT" | "Etc/UTC") {
        return true;
    }
    zone.contains('/')
        && !zone.starts_with('/')
        && !zone.ends_with('/')
        && !zone.contains("//")
        && !zone.contains("..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

fn resolve_endpoints(
    raw: &[RawEndpoint],
    global_timeout: Duration,
    problems: &mut Problems,
) -> Vec<Endpoint> {
    let list = KeyPath::keys(&["endpoints"]);
    let Some(first) = raw.first() else {
        problems.push((
            list,
            "at least one endpoint is required: expected a list of `- name: ... url: ...` entries"
                .into(),
        ));
        return Vec::new();
    };
    let first_headers = first.headers.clone().unwrap_or_default();

    // Group and group priority: inherited from the previous endpoint.
    let mut groups: Vec<(String, u32)> = Vec::with_capacity(raw.len());
    let mut group = DEFAULT_GROUP.to_string();
    let mut group_priority = DEFAULT_GROUP_PRIORITY;
    for endpoint in raw {
        if let Some(name) = endpoint.group.as_deref().map(str::trim) {
            if !name.is_empty() {
                group = name.to_string();
            }
        }
        if let Some(priority) = endpoint.group_priority {
            group_priority = priority;
        }
        groups.push((group.clone(), group_priority));
    }

    // Credentials: the first endpoint of the same group (file order) that sets one.
    let mut group_tokens: HashMap<&str, &Secret> = HashMap::new();
    let mut group_api_keys: HashMap<&str, &Secret> = HashMap::new();
    for (endpoint, (group, _)) in raw.iter().zip(&groups) {
        if let Some(token) = endpoint.token.as_ref().filter(|token| !token.is_empty()) {
            group_tokens.entry(group.as_str()).or_insert(token);
        }
        if let Some(key) = endpoint.api_key.as_ref().filter(|key| !key.is_empty()) {
            group_api_keys.entry(group.as_str()).or_insert(key);
        }
    }

    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut endpoints = Vec::with_capacity(raw.len());
    for (index, (endpoint, (group, group_priority))) in raw.iter().zip(&groups).enumerate() {
        let path = list.index(index);

        let name_ok = if endpoint.name.trim().is_empty() {
            problems.push((
                path.key("name"),
                "missing: every endpoint needs a unique name".into(),
            ));
            false
        } else if let Some(previous) = seen_names.get(endpoint.name.as_str()) {
            problems.push((
                path.key("name"),
                format!(
                    "duplicate endpoint name `{}` (already used by endpoints[{previous}]): names must be unique",
                    endpoint.name
                ),
            ));
            false
        } else {
            seen_names.insert(endpoint.name.as_str(), index);
            true
        };

        let url = parse_endpoint_url(&endpoint.url, &path.key("url"), problems);

        if let Some(timeout) = endpoint.timeout {
            if timeout.get().is_zero() {
                problems.push((path.key("timeout"), "must be greater than 0".into()));
            }
        }
        let timeout = endpoint
            .timeout
            .or(first.timeout)
            .map(GoDuration::get)
            .unwrap_or(global_timeout);

        if let Some(own) = &endpoint.headers {
            validate_headers(own, &path.key("headers"), problems);
        }
        let headers = merge_headers(&first_headers, endpoint.headers.as_ref());

        let token = match &endpoint.token {
            Some(token) => Some(token.clone()).filter(|token| !token.is_empty()),
            None => group_tokens
                .get(group.as_str())
                .map(|token| (*token).clone()),
        };
        let api_key = match &endpoint.api_key {
            Some(key) => Some(key.clone()).filter(|key| !key.is_empty()),
            None => group_api_keys.get(group.as_str()).map(|key| (*key).clone()),
        };

        let model_map = resolve_model_map(endpoint.model_map.as_ref(), &path, problems);

        if let (true, Some(url)) = (name_ok, url) {
            endpoints.push(Endpoint {
                name: endpoint.name.clone(),
                url,
                priority: endpoint.priority.unwrap_or(0),
                group: group.clone(),
                group_priority: *group_priority,
                token,
                api_key,
                timeout,
                headers,
                supports_count_tokens: endpoint.supports_count_tokens,
                model_map,
            });
        }
    }
    endpoints
}

/// `endpoints[i].model_map` (issue 20), validated: keys and values non-empty model names or
/// globs that can match a model name. Never inherited: a map speaks one upstream's names.
fn resolve_model_map(
    raw: Option<&BTreeMap<String, String>>,
    path: &KeyPath,
    problems: &mut Problems,
) -> crate::ModelMap {
    let Some(raw) = raw else {
        return crate::ModelMap::default();
    };
    let map_path = path.key("model_map");
    for (pattern, target) in raw {
        let entry = map_path.key(pattern);
        if let Some(problem) = crate::model_glob::pattern_problem(pattern) {
            problems.push((
                entry.clone(),
                format!("the request model pattern {problem}"),
            ));
        }
        if crate::model_glob::pattern_problem(target).is_some() || crate::is_glob(target) {
            problems.push((
                entry,
                format!(
                    "the upstream model `{target}` must be a model name: not empty, no `*`, no surrounding white space or control characters"
                ),
            ));
        }
    }
    crate::ModelMap::new(raw.iter().map(|(k, v)| (k.clone(), v.clone())))
}

/// `routing.model_rules` (issue 20): each `match` a usable pattern, each `group` an existing
/// endpoint group, and no rule hidden behind an earlier one that catches every model it would.
fn validate_model_rules(
    rules: &[crate::ModelRuleConfig],
    endpoints: &[Endpoint],
    problems: &mut Problems,
) {
    let list = KeyPath::keys(&["routing", "model_rules"]);
    for (index, rule) in rules.iter().enumerate() {
        let path = list.index(index);
        if let Some(problem) = crate::model_glob::pattern_problem(&rule.pattern) {
            problems.push((path.key("match"), problem.to_string()));
        } else if let Some(earlier) = rules[..index]
            .iter()
            .position(|earlier| covers(&earlier.pattern, &rule.pattern))
        {
            problems.push((
                path.key("match"),
                format!(
                    "`{}` can never match: routing.model_rules[{earlier}] (`{}`) catches every such model first (the first matching rule wins)",
                    rule.pattern, rules[earlier].pattern
                ),
            ));
        }
        if !endpoints
            .iter()
            .any(|endpoint| endpoint.group == rule.group)
        {
            let groups: std::collections::BTreeSet<&str> =
                endpoints.iter().map(|e| e.group.as_str()).collect();
            let groups: Vec<&str> = groups.into_iter().collect();
            problems.push((
                path.key("group"),
                format!(
                    "unknown group `{}`: no endpoint has it (groups: {})",
                    rule.group,
                    groups.join(", ")
                ),
            ));
        }
    }
}

/// Whether every model `later` matches is matched by `earlier` (checked for the cases that
/// can be decided simply: `earlier` is `*`, the same pattern, or `later` is an exact name).
fn covers(earlier: &str, later: &str) -> bool {
    earlier.chars().all(|c| c == '*')
        || earlier == later
        || (!crate::is_glob(later) && crate::glob_matches(earlier, later))
}

fn parse_endpoint_url(text: &str, path: &KeyPath, problems: &mut Problems) -> Option<url::Url> {
    let trimmed = text.trim();
    let expected = "expected an absolute http or https url such as `https://api.anthropic.com`";
    if trimmed.is_empty() {
        problems.push((path.clone(), format!("missing: {expected}")));
        return None;
    }
    let parsed = match url::Url::parse(trimmed) {
        Ok(parsed) => parsed,
        Err(error) => {
            problems.push((
                path.clone(),
                format!("invalid url `{trimmed}`: {error}; {expected}"),
            ));
            return None;
        }
    };
    let problem = if !matches!(parsed.scheme(), "http" | "https") {
        Some(format!(
            "unsupported scheme `{}` in `{trimmed}`: {expected}",
            parsed.scheme()
        ))
    } else if parsed.host_str().is_none_or(str::is_empty) {
        Some(format!("url `{trimmed}` has no host: {expected}"))
    } else if parsed.query().is_some() || parsed.fragment().is_some() {
        Some(format!(
            "url `{trimmed}` must not contain a query or fragment: request paths are appended to it"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            problems.push((path.clone(), message));
            None
        }
        None => Some(parsed),
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn validate_headers(headers: &BTreeMap<String, String>, path: &KeyPath, problems: &mut Problems) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (name, value) in headers {
        let key = path.key(name);
        if !is_header_name(name) {
            problems.push((
                key.clone(),
                format!("`{name}` is not a valid HTTP header name"),
            ));
        }
        if !is_header_value(value) {
            problems.push((
                key.clone(),
                "header values must be printable ASCII without line breaks".into(),
            ));
        }
        if let Some(previous) = seen.insert(name.to_ascii_lowercase(), name) {
            problems.push((
                key,
                format!("header `{name}` is also given as `{previous}` (header names are case-insensitive)"),
            ));
        }
    }
}

/// The first endpoint's headers, then `own` on top (own win); names compare case-insensitively.
/// The result is ordered by lowercased name.
fn merge_headers(
    first: &BTreeMap<String, String>,
    own: Option<&BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut merged: BTreeMap<String, (String, String)> = BTreeMap::new();
    for layer in std::iter::once(first).chain(own) {
        for (name, value) in layer {
            merged.insert(name.to_ascii_lowercase(), (name.clone(), value.clone()));
        }
    }
    merged.into_values().collect()
}

/// `webhooks[]`: an `http`/`https` URL with a host, at least one event, every event name known
/// (a problem names the entry, e.g. `webhooks[0].events[2]`); repeated events are kept once and
/// an empty secret means unsigned.
fn resolve_webhooks(raw: &[crate::schema::RawWebhook], problems: &mut Problems) -> Vec<Webhook> {
    let base = KeyPath::keys(&["webhooks"]);
    let mut webhooks = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let entry_path = base.index(index);
        let url = match url::Url::parse(entry.url.trim()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                problems.push((
                    entry_path.key("url"),
                    format!(
                        "unsupported scheme `{}`: expected an `http` or `https` URL",
                        url.scheme()
                    ),
                ));
                None
            }
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                problems.push((entry_path.key("url"), "the URL has no host".into()));
                None
            }
            Ok(url) => Some(url),
            Err(error) => {
                // The value is not echoed: a receiver URL may carry a token.
                problems.push((
                    entry_path.key("url"),
                    format!(
                        "not a valid URL ({error}): expected e.g. `https://hooks.example.com/ccf`"
                    ),
                ));
                None
            }
        };
        if entry.events.is_empty() {
            problems.push((
                entry_path.key("events"),
                format!(
                    "must list at least one event: expected some of {}",
                    known_webhook_events()
                ),
            ));
        }
        let mut events = Vec::new();
        for (event_index, name) in entry.events.iter().enumerate() {
            match WebhookEvent::from_name(name.trim()) {
                Some(event) if events.contains(&event) => {}
                Some(event) => events.push(event),
                None => problems.push((
                    entry_path.key("events").index(event_index),
                    format!(
                        "unknown event `{name}`: expected one of {}",
                        known_webhook_events()
                    ),
                )),
            }
        }
        if let Some(url) = url {
            webhooks.push(Webhook {
                url,
                events,
                secret: entry.secret.clone().filter(|secret| !secret.is_empty()),
            });
        }
    }
    webhooks
}

fn known_webhook_events() -> String {
    WebhookEvent::ALL
        .iter()
        .map(|event| format!("`{}`", event.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_headers_case_insensitively_with_own_winning() {
        let first = BTreeMap::from([
            ("User-Agent".to_string(), "ccf/1".to_string()),
            ("X-Custom".to_string(), "a".to_string()),
        ]);
        let own = BTreeMap::from([
            ("x-custom".to_string(), "b".to_string()),
            ("Authorization".to_string(), "Bearer z".to_string()),
        ]);
        assert_eq!(
            merge_headers(&first, Some(&own)),
            vec![
                ("Authorization".to_string(), "Bearer z".to_string()),
                ("User-Agent".to_string(), "ccf/1".to_string()),
                ("x-custom".to_string(), "b".to_string()),
            ]
        );
        assert_eq!(merge_headers(&first, None).len(), 2);
    }

    #[test]
    fn recognises_iana_zone_shapes() {
        let check = |zone: &str, ok: bool| assert_eq!(looks_like_iana_zone(zone), ok, "{zone}");
        check("Asia/Shanghai", true);
        check("America/Argentina/Buenos_Aires", true);
        check("Etc/GMT+8", true);
        check("UTC", true);
        check("Local", true);
        check("Shanghai", false);
        check("CST", false);
        check("+08:00", false);
        check("Asia//Shanghai", false);
        check("/etc/localtime", false);
    }

    #[test]
    fn header_names_and_values() {
        assert!(is_header_name("X-API-Version"));
        assert!(!is_header_name("Bad Header"));
        assert!(!is_header_name(""));
        assert!(is_header_value("Bearer abc\tdef"));
        assert!(!is_header_value("a\r\nInjected: yes"));
    }
}
