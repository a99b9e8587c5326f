//! The JSON views of live state shared by the routes and the live stream: status, endpoints,
//! groups, connections, performance, the masked configuration, single requests and the smart
//! routing tables. What comes from another crate's types goes on the wire through its DTO in
//! [`crate::dto`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_config::{Config, StrategyType};
use ccf_lifecycle::{ErrorState, LifecycleEvent, RequestId};
use ccf_router::honesty::HonestySettings;
use ccf_router::GroupView;
use ccf_store::{Cost, RequestRow, UsageRecord};
use ccf_types::mask_secret;
use serde_json::{json, Map, Value};

use crate::charts;
use crate::dispatch::{ok, Handled};
use crate::dto::cluster::ClusterDto;
use crate::dto::events::{ReloadStatusDto, RequestEventDto};
use crate::dto::groups::{millis, EndpointDto, GroupDto};
use crate::dto::routing::{AffinityDto, EndpointHonestyDto, HonestyDto, QuotaDto};
use crate::dto::to_json;
use crate::dto::usage::LiveRequestDto;
use crate::http_util::{go_duration, rfc3339, unix_secs};
use crate::live::LiveState;
use crate::Shared;

/// A time in the configured display zone (`timezone`, else the machine's), with `format`.
pub(crate) fn local_time(config: &Config, time: SystemTime, format: &str) -> String {
    let utc = chrono::DateTime::<chrono::Utc>::from(time);
    if let Some(zone) = config
        .timezone
        .as_deref()
        .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
    {
        return utc.with_timezone(&zone).format(format).to_string();
    }
    utc.with_timezone(&chrono::Local).format(format).to_string()
}

/// A URL with any password in it masked.
pub(crate) fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let masked = parsed.password().map(mask_secret).unwrap_or_default();
            if parsed.set_password(Some(&masked)).is_ok() {
                parsed.to_string()
            } else {
                "***".to_string()
            }
        }
        _ => url.to_string(),
    }
}

/// Key or header names whose values are credentials.
pub(crate) fn is_sensitive_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    [
        "token",
        "authorization",
        "password",
        "secret",
        "api_key",
        "apikey",
        "cookie",
        "dsn",
    ]
    .iter()
    .any(|word| name.contains(word))
        || name.ends_with("_key")
}

/// Whether a custom header's value is swept from answers as a credential: its name looks secret
/// (including names such as `X-Relay-Pass` that [`is_sensitive_name`] does not know), or the
/// value itself looks like a key (a long unbroken mix of letters and digits).
fn sweepable_header(name: &str, value: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    is_sensitive_name(name)
        || ["pass", "auth", "credential", "session", "signature"]
            .iter()
            .any(|word| lower.contains(word))
        || (value.len() >= 16
            && !value.contains(char::is_whitespace)
            && value.chars().any(|c| c.is_ascii_alphabetic())
            && value.chars().any(|c| c.is_ascii_digit()))
}

/// Every credential in the configuration (for the final sweep of API answers).
pub(crate) fn collect_secrets(config: &Config) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut add = |value: &str| {
        if !value.is_empty() {
            secrets.push(value.to_string());
        }
    };
    if let Some(token) = &config.auth.token {
        add(token.expose());
    }
    for named in &config.auth.tokens {
        add(named.token.expose());
    }
    if let Some(token) = &config.web.auth_token {
        add(token.expose());
    }
    if let Some(password) = &config.proxy.password {
        add(password.expose());
    }
    if let Some(url) = config.proxy.url.as_deref() {
        if let Ok(parsed) = url::Url::parse(url) {
            if let Some(password) = parsed.password() {
                add(password);
            }
        }
    }
    if let Some(password) = config
        .usage_tracking
        .database
        .as_ref()
        .and_then(|database| database.password.as_ref())
    {
        add(password.expose());
    }
    // `endpoints[].proxy` passwords, in the field or inside the URL.
    for proxy in config.endpoint_proxies.values() {
        if let Some(password) = &proxy.password {
            add(password.expose());
        }
        if let Some(password) = proxy
            .url
            .as_deref()
            .and_then(|url| url::Url::parse(url).ok())
            .and_then(|parsed| parsed.password().map(str::to_string))
        {
            add(&password);
        }
    }
    for endpoint in &config.endpoints {
        if let Some(token) = &endpoint.token {
            add(token.expose());
        }
        if let Some(key) = &endpoint.api_key {
            add(key.expose());
        }
        if let Some(password) = endpoint.url.password() {
            add(password);
        }
        // Every custom header value is masked in the views, but only credential-like ones are
        // swept from other text: an ordinary value (`2023-06-01`, `on`) swept everywhere would
        // cut dates and words out of answers.
        for (name, value) in &endpoint.headers {
            if sweepable_header(name, value) {
                add(value);
            }
        }
    }
    // The shared Redis's password (`cluster.redis_url`, issue 21).
    if let Some(password) = config
        .cluster
        .redis_url
        .as_ref()
        .and_then(|url| url::Url::parse(url.expose()).ok())
        .and_then(|parsed| parsed.password().map(str::to_string))
    {
        add(&password);
    }
    // Webhook signing keys and receiver URL passwords (issue #20, point 6).
    for webhook in &config.webhooks {
        if let Some(secret) = &webhook.secret {
            add(secret.expose());
        }
        if let Some(password) = webhook.url.password() {
            add(password);
        }
    }
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets.dedup();
    secrets
}

/// Masks every credential-named string in a JSON tree, in place.
fn mask_tree(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if is_sensitive_name(key) => *text = mask_secret(text),
                    Value::String(text) if key == "url" => *text = mask_url(text),
                    _ => mask_tree(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_tree),
        _ => {}
    }
}

/// `GET /api/v1/config`: the effective configuration, credentials masked, durations as Go
/// strings, endpoints included.
pub(crate) fn config_view(shared: &Shared) -> Value {
    let config = shared.forwarder.config();
    effective_config(&config, shared.config_path.as_deref())
}

/// The effective configuration as `GET /api/v1/config` and `cc-forwarder check-config --print`
/// show it: every credential-named value masked, then every configured secret swept from the
/// remaining strings (a token pasted into another value is masked too).
pub fn effective_config(config: &Config, config_path: Option<&std::path::Path>) -> Value {
    let mut view = effective_config_unswept(config, config_path);
    let secrets = collect_secrets(config);
    sweep_strings(&mut view, &secrets);
    view
}

/// Replaces every occurrence of a secret in the tree's strings with its masked form.
fn sweep_strings(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(text) => {
            for secret in secrets {
                // The sweep rule of `ccf_types`: a short secret is masked only as a whole value
                // (inside other text it is too likely to be an ordinary word).
                if secret.chars().count() >= ccf_types::SWEEP_SUBSTRING_MIN_CHARS {
                    if text.contains(secret.as_str()) {
                        *text = text.replace(secret.as_str(), &mask_secret(secret));
                    }
                } else if text == secret {
                    *text = mask_secret(secret);
                }
            }
        }
        Value::Object(map) => map
            .values_mut()
            .for_each(|child| sweep_strings(child, secrets)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|child| sweep_strings(child, secrets)),
        _ => {}
    }
}

/// [`effective_config`] before the sweep.
fn effective_config_unswept(config: &Config, config_path: Option<&std::path::Path>) -> Value {
    let section = |value: Result<Value, serde_json::Error>| value.unwrap_or(Value::Null);
    let endpoints: Vec<Value> = config
        .endpoints
        .iter()
        .map(|endpoint| {
            let headers: Map<String, Value> = endpoint
                .headers
                .iter()
                // Every value masked, whatever the header's name: custom headers carry relay
                // passwords under names no list can foresee (`X-Relay-Pass`). Credential-named
                // ones are left to `mask_tree` below, which masks them once.
                .map(|(name, value)| {
                    let shown = if is_sensitive_name(name) {
                        value.clone()
                    } else {
                        mask_secret(value)
                    };
                    (name.clone(), Value::String(shown))
                })
                .collect();
            json!({
                "name": endpoint.name,
                "url": endpoint.url.as_str(),
                "priority": endpoint.priority,
                "group": endpoint.group,
                "group_priority": endpoint.group_priority,
                // Masked by `mask_tree` below, like every credential-named value.
                "token": endpoint.token.as_ref().map(|token| token.expose()),
                "api_key": endpoint.api_key.as_ref().map(|key| key.expose()),
                "timeout": go_duration(endpoint.timeout),
                "headers": headers,
                "supports_count_tokens": endpoint.supports_count_tokens,
                // Its own outbound proxy (set or inherited); password and URL masked below.
                "proxy": config
                    .endpoint_proxies
                    .get(&endpoint.name)
                    .and_then(|proxy| serde_json::to_value(proxy).ok()),
            })
        })
        .collect();
    let mut view = json!({
        "config_file": config_path.or(config.source.as_deref()).map(|path| path.display().to_string()),
        "timezone": config.timezone,
        "instance_id": config.instance_id,
        "server": section(serde_json::to_value(&config.server)),
        "strategy": section(serde_json::to_value(&config.strategy)),
        "retry": section(serde_json::to_value(&config.retry)),
        "health": section(serde_json::to_value(&config.health)),
        "logging": section(serde_json::to_value(&config.logging)),
        "streaming": section(serde_json::to_value(&config.streaming)),
        "group": section(serde_json::to_value(&config.group)),
        "request_suspend": section(serde_json::to_value(&config.request_suspend)),
        "global_timeout": go_duration(config.global_timeout),
        "auth": section(serde_json::to_value(&config.auth)),
        "tui": section(serde_json::to_value(&config.tui)),
        "web": section(serde_json::to_value(&config.web)),
        "token_counting": section(serde_json::to_value(&config.token_counting)),
        "proxy": section(serde_json::to_value(&config.proxy)),
        "usage_tracking": section(serde_json::to_value(&config.usage_tracking)),
        "routing": section(serde_json::to_value(&config.routing)),
        // Built here rather than serialised: `redis_url` is a `Secret` (serialised in clear for
        // figment) whose key `mask_tree` would not recognise.
        "cluster": {
            "redis_url": config.cluster.redis_url.as_ref().map(|url| ccf_config::mask_url_password(url.expose())),
            "redis_prefix": config.cluster.redis_prefix,
            "redis_timeout": go_duration(config.cluster.redis_timeout.get()),
        },
        "endpoints": endpoints,
    });
    mask_tree(&mut view);
    view
}

/// The group requests go to now.
pub(crate) fn active_group(groups: &[GroupView]) -> Option<String> {
    groups
        .iter()
        .find(|group| group.is_active)
        .map(|group| group.name.clone())
}

/// The ordering strategy's name, as the configuration file spells it.
fn strategy_word(strategy: StrategyType) -> &'static str {
    match strategy {
        StrategyType::Priority => "priority",
        StrategyType::Fastest => "fastest",
    }
}

/// `GET /api/v1/status`.
pub(crate) fn status_view(shared: &Shared) -> Value {
    let config = shared.forwarder.config();
    let now = SystemTime::now();
    let uptime = now.duration_since(shared.hub.started).unwrap_or_default();
    let groups = shared.forwarder.groups();
    let health = shared.forwarder.health().snapshot();
    let in_flight = shared.hub.state().in_flight.len();
    let usage = match (&shared.store, &shared.recorder) {
        (Some(store), recorder) => json!({
            "enabled": true,
            "backend": store.backend(),
            "backlog": recorder.as_ref().map(|r| r.backlog()),
            "written": recorder.as_ref().map(|r| r.written()),
            "dropped": recorder.as_ref().map(|r| r.dropped()),
            "last_error": recorder.as_ref().and_then(|r| r.last_error()).map(|e| e.message),
        }),
        (None, _) => json!({"enabled": false}),
    };
    json!({
        "status": "running",
        "uptime": humantime::format_duration(Duration::from_secs(uptime.as_secs())).to_string(),
        "uptime_seconds": uptime.as_secs(),
        "start_time": local_time(&config, shared.hub.started, "%Y-%m-%d %H:%M:%S"),
        "start_timestamp": unix_secs(shared.hub.started),
        "config_file": shared.config_path.as_ref().or(config.source.as_ref()).map(|path| path.display().to_string()),
        "version": {
            "version": env!("CARGO_PKG_VERSION"),
            "commit": option_env!("CCF_GIT_COMMIT").unwrap_or("unknown"),
            "date": option_env!("CCF_BUILD_DATE").unwrap_or("unknown"),
        },
        "server": {
            "host": config.server.host,
            "proxy_port": config.server.port,
            "web_host": config.web.host,
            "web_port": config.web.port,
        },
        "strategy": strategy_word(config.strategy.kind),
        "auth_enabled": config.auth.enabled,
        "admin_auth_enabled": shared.auth.enabled(),
        "proxy_enabled": config.proxy.enabled,
        "active_group": active_group(&groups),
        "auto_switch_enabled": config.group.auto_switch_between_groups,
        "endpoints": {
            "total": config.endpoints.len(),
            "healthy": config.endpoints.iter().filter(|e| health.is_healthy(&e.name)).count(),
        },
        "in_flight": in_flight,
        "suspended_requests": shared.forwarder.held_requests().len(),
        "usage_tracking": usage,
        "config_reload": shared.forwarder.reload_status().as_ref().map(ReloadStatusDto::from),
        "cluster": shared.forwarder.cluster_status().as_ref().map(ClusterDto::from),
        "stream_clients": shared.hub.client_count(),
        "dashboard_built": crate::assets::dashboard_built(),
        "timestamp": rfc3339(now),
    })
}

/// One endpoint, in the original's shape plus routing details.
fn endpoint_json(shared: &Shared, name: &str) -> Option<Value> {
    let config = shared.forwarder.config();
    let endpoint = config.endpoint(name)?;
    let views = shared.forwarder.endpoints();
    let view = views.iter().find(|view| view.name == name);
    let health = shared.forwarder.health().snapshot();
    let state = health
        .get(name)
        .cloned()
        .unwrap_or_else(ccf_health::EndpointHealth::unchecked);
    Some(to_json(&EndpointDto::new(endpoint, view, &state)))
}

/// `GET /api/v1/endpoints`.
pub(crate) fn endpoints_view(shared: &Shared) -> Value {
    let endpoints: Vec<Value> = shared
        .forwarder
        .config()
        .endpoints
        .iter()
        .filter_map(|endpoint| endpoint_json(shared, &endpoint.name))
        .collect();
    json!({"total": endpoints.len(), "endpoints": endpoints, "timestamp": rfc3339(SystemTime::now())})
}

/// The live stream's `endpoint` event for one endpoint.
pub(crate) fn endpoint_event(shared: &Shared, name: &str) -> Option<Value> {
    let mut value = endpoint_json(shared, name)?;
    if let Value::Object(map) = &mut value {
        map.insert("endpoint".into(), Value::String(name.to_string()));
        map.insert("change_type".into(), Value::String("health_changed".into()));
    }
    Some(value)
}

/// One group with the names of its configured endpoints.
fn group_json(config: &Config, group: &GroupView) -> Value {
    let endpoints: Vec<&str> = config
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.group == group.name)
        .map(|endpoint| endpoint.name.as_str())
        .collect();
    to_json(&GroupDto::new(group, endpoints))
}

/// `GET /api/v1/groups`.
pub(crate) fn groups_view(shared: &Shared) -> Value {
    let config = shared.forwarder.config();
    let groups = shared.forwarder.groups();
    let state = shared.hub.state();
    let mut suspended_by_group: BTreeMap<String, u64> = BTreeMap::new();
    for event in state.in_flight.values() {
        if event.record().error_state == Some(ErrorState::Suspended) {
            *suspended_by_group
                .entry(event.record().group.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    drop(state);
    json!({
        "groups": groups.iter().map(|group| group_json(&config, group)).collect::<Vec<_>>(),
        "active_group": active_group(&groups),
        "total_groups": groups.len(),
        "auto_switch_enabled": config.group.auto_switch_between_groups,
        "group_suspended_counts": suspended_by_group,
        "total_suspended_requests": shared.forwarder.held_requests().len(),
        "max_suspended_requests": config.request_suspend.max_suspended_requests,
        "timestamp": rfc3339(SystemTime::now()),
    })
}

/// The requests held now, in Go's `suspended_connections` shape (the request's details come from
/// the live state; a request it no longer knows keeps its id and wait).
fn suspended_connections(held: &[(RequestId, Duration)], state: &LiveState) -> Vec<Value> {
    held
        .iter()
        .map(|(id, waited)| {
            let record = state.in_flight.get(id).map(LifecycleEvent::record);
            json!({
                "id": id.to_string(),
                "client_ip": record.and_then(|r| r.client_ip).map(|ip| ip.to_string()).unwrap_or_default(),
                "method": record.map(|r| r.method.clone()).unwrap_or_default(),
                "path": record.map(|r| r.path.clone()).unwrap_or_default(),
                "endpoint": record.and_then(|r| r.endpoint.clone()).unwrap_or_default(),
                "suspended_time": go_duration(*waited),
                "suspended_ms": millis(*waited),
                "suspended_at": rfc3339(SystemTime::now() - *waited),
                "retry_count": record.map_or(0, |r| r.retry_count),
                "user_agent": record.and_then(|r| r.user_agent.clone()).unwrap_or_default(),
            })
        })
        .collect()
}

/// `GET /api/v1/suspended/requests?minutes=60` (the Go route): `{current, history,
/// suspended_connections, timestamp}`: how many requests are held now, the per-minute count of held
/// requests, and each held request.
pub(crate) fn suspended_requests(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = charts::samples(shared, query, 60)?;
    let history: Vec<Value> = samples
        .iter()
        .map(|sample| {
            json!({
                "timestamp": rfc3339(UNIX_EPOCH + Duration::from_secs(sample.timestamp)),
                "suspended_requests": sample.suspended,
            })
        })
        .collect();
    let held = shared.forwarder.held_requests();
    let state = shared.hub.state();
    ok(json!({
        "current": held.len(),
        "history": history,
        "suspended_connections": suspended_connections(&held, &state),
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `GET /api/v1/connections` (and the stream's connection stats).
pub(crate) fn connections_view(shared: &Shared) -> Value {
    let held = shared.forwarder.held_requests();
    let state = shared.hub.state();
    let totals = &state.totals;
    let suspended = &state.suspended;
    let finished_suspensions = suspended.resumed + suspended.timed_out;
    let per_endpoint: BTreeMap<&str, u64> = state
        .endpoints
        .iter()
        .map(|(name, perf)| (name.as_str(), perf.total))
        .collect();
    let errors_per_endpoint: BTreeMap<&str, u64> = state
        .endpoints
        .iter()
        .map(|(name, perf)| (name.as_str(), perf.failed))
        .collect();
    let suspended_connections = suspended_connections(&held, &state);
    let avg_wait = suspended
        .wait_sum_ms
        .checked_div(suspended.wait_count)
        .unwrap_or(0);
    json!({
        "total_requests": totals.started,
        "active_connections": state.in_flight.len(),
        "successful_requests": totals.success,
        "failed_requests": totals.failed,
        "cancelled_requests": totals.cancelled,
        "average_response_time": go_duration(Duration::from_millis(totals.avg_ms() as u64)),
        "average_response_time_ms": totals.avg_ms(),
        "total_tokens": totals.total_tokens(),
        "requests_per_endpoint": per_endpoint,
        "errors_per_endpoint": errors_per_endpoint,
        "suspended": {
            "suspended_requests": held.len(),
            "total_suspended_requests": suspended.total,
            "successful_suspended_requests": suspended.resumed,
            "timeout_suspended_requests": suspended.timed_out,
            "success_rate": if finished_suspensions == 0 { 0.0 } else { suspended.resumed as f64 * 100.0 / finished_suspensions as f64 },
            "total_suspended_time": go_duration(Duration::from_millis(suspended.wait_sum_ms)),
            "average_suspended_time": go_duration(Duration::from_millis(avg_wait)),
            "min_suspended_time": go_duration(Duration::from_millis(suspended.wait_min_ms.unwrap_or(0))),
            "max_suspended_time": go_duration(Duration::from_millis(suspended.wait_max_ms.unwrap_or(0))),
        },
        "suspended_connections": suspended_connections,
        "lagged_events": state.lagged_events,
        "timestamp": rfc3339(SystemTime::now()),
    })
}

/// `GET /api/v1/endpoints/performance`.
pub(crate) fn performance_view(shared: &Shared) -> Value {
    let config = shared.forwarder.config();
    let health = shared.forwarder.health().snapshot();
    let views = shared.forwarder.endpoints();
    let state = shared.hub.state();
    let endpoints: Vec<Value> = config
        .endpoints
        .iter()
        .map(|endpoint| {
            let perf = state.endpoints.get(&endpoint.name).cloned().unwrap_or_default();
            let finished = perf.success + perf.failed;
            json!({
                "name": endpoint.name,
                "url": mask_url(endpoint.url.as_str()),
                "group": endpoint.group,
                "healthy": health.is_healthy(&endpoint.name),
                "total_requests": perf.total,
                "successful_requests": perf.success,
                "failed_requests": perf.failed,
                "success_rate": if finished == 0 { 0.0 } else { perf.success as f64 * 100.0 / finished as f64 },
                "avg_response_time": if perf.duration_count == 0 { 0.0 } else { perf.duration_sum_ms as f64 / perf.duration_count as f64 },
                "min_response_time": perf.min_ms.unwrap_or(0),
                "max_response_time": perf.max_ms.unwrap_or(0),
                "priority": views.iter().find(|v| v.name == endpoint.name).map_or(endpoint.priority, |v| v.priority),
                "retry_count": perf.retries,
                "last_used": perf.last_used.map(rfc3339).unwrap_or_default(),
                "token_usage": perf.tokens,
            })
        })
        .collect();
    json!({"endpoints": endpoints, "total": config.endpoints.len(), "timestamp": rfc3339(SystemTime::now())})
}

/// A live request in the same shape as a stored row, plus `source: "live"` and its live state.
pub(crate) fn live_request_json(shared: &Shared, event: &LifecycleEvent) -> Value {
    let record = event.record();
    let row = UsageRecord::from_request(record, shared.forwarder.config().instance_id.as_deref());
    let cost = if record.is_final() {
        record
            .usage
            .as_ref()
            .map(|usage| shared.derived().pricing.cost(record.model(), usage))
            .unwrap_or_default()
    } else {
        Cost::default()
    };
    let row = RequestRow {
        id: 0,
        record: row,
        cost,
        created_at: None,
        updated_at: None,
    };
    to_json(&LiveRequestDto::new(
        &row,
        record.error_state.map(|state| state.as_str()),
        event.change_type().as_str(),
    ))
}

/// The live stream's `connection` event for one request change (the original's fields plus the
/// whole record).
pub(crate) fn request_event(shared: &Shared, event: &LifecycleEvent) -> Value {
    to_json(&RequestEventDto::new(
        event,
        live_request_json(shared, event),
    ))
}

/// `GET /api/v1/routing/honesty`: every endpoint's relay honesty scores, checks, last flag and
/// demotion, with the settings they are judged by.
pub(crate) fn honesty_view(shared: &Shared) -> Value {
    let config = shared.forwarder.config();
    let honesty = shared.forwarder.honesty();
    let endpoints = honesty
        .iter()
        .map(|honesty| {
            let group = config
                .endpoint(&honesty.endpoint)
                .map(|endpoint| endpoint.group.as_str());
            EndpointHonestyDto::new(honesty, group)
        })
        .collect();
    to_json(&HonestyDto::new(
        &HonestySettings::from_config(&config),
        endpoints,
    ))
}

/// `GET /api/v1/routing/affinity`: session affinity settings, counters, per-endpoint and
/// per-session cache-read ratios and the cost affinity saved.
pub(crate) fn affinity_view(shared: &Shared, limit: usize) -> Value {
    let view = shared.forwarder.affinity(limit);
    to_json(&AffinityDto::new(&view, &shared.derived().pricing))
}

/// `GET /api/v1/routing/quota`: per endpoint (configured ones first), the latest rate-limit
/// readings, burn rates, predicted exhaustion and whether new sessions are drained away from it.
pub(crate) fn quota_view(shared: &Shared) -> Value {
    let quotas = shared.forwarder.quota();
    let config = shared.forwarder.config();
    let mut names: Vec<String> = config.endpoints.iter().map(|e| e.name.clone()).collect();
    for quota in &quotas {
        if !names.contains(&quota.endpoint) {
            names.push(quota.endpoint.clone());
        }
    }
    to_json(&QuotaDto::new(&names, &quotas, SystemTime::now()))
}

/// `GET /api/v1/webhooks`: every receiver's delivery counters (an empty list when the dispatcher
/// does not run, e.g. an embedded admin API).
pub(crate) fn webhooks_view(shared: &Shared) -> Value {
    let stats = shared
        .webhooks
        .as_ref()
        .map(ccf_webhooks::Webhooks::stats)
        .unwrap_or_default();
    let view = to_json(&crate::dto::webhooks::WebhooksDto::from(stats.as_slice()));
    // The URLs are masked already; a delivery error could still quote a credential.
    match serde_json::to_string(&view) {
        Ok(text) => serde_json::from_str(&shared.sweep(text)).unwrap_or(view),
        Err(_) => view,
    }
}
