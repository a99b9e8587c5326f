//! The JSON views of live state shared by the routes and the live stream: status, endpoints,
//! groups, connections, performance, the masked configuration and single requests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ccf_config::Config;
use ccf_lifecycle::{ErrorState, LifecycleEvent, RequestRecord};
use ccf_router::{GroupStatus, GroupView};
use ccf_store::{Cost, RequestRow, UsageRecord};
use ccf_types::mask_secret;
use serde_json::{json, Map, Value};

use crate::http_util::{go_duration, rfc3339, unix_now, unix_secs};
use crate::live::started_ms;
use crate::Shared;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

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
        for (name, value) in &endpoint.headers {
            if is_sensitive_name(name) {
                add(value);
            }
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
    let section = |value: Result<Value, serde_json::Error>| value.unwrap_or(Value::Null);
    let endpoints: Vec<Value> = config
        .endpoints
        .iter()
        .map(|endpoint| {
            let headers: Map<String, Value> = endpoint
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
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
            })
        })
        .collect();
    let mut view = json!({
        "config_file": shared.config_path.as_ref().or(config.source.as_ref()).map(|path| path.display().to_string()),
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
        "strategy": config.strategy.kind,
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
        "config_reload": shared.forwarder.reload_status(),
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
    Some(json!({
        "name": endpoint.name,
        "url": mask_url(endpoint.url.as_str()),
        "priority": view.map_or(endpoint.priority, |view| view.priority),
        "config_priority": endpoint.priority,
        "group": endpoint.group,
        "group_priority": endpoint.group_priority,
        "timeout": go_duration(endpoint.timeout),
        "healthy": state.healthy,
        "last_check": state.last_check.map(rfc3339).unwrap_or_default(),
        "response_time": state.last_latency.map(go_duration).unwrap_or_else(|| "0s".into()),
        "response_time_ms": state.last_latency.map(millis),
        "never_checked": state.never_checked,
        "error": state.last_error.clone().unwrap_or_default(),
        "consecutive_fails": state.consecutive_failures,
        "auth_failed": state.auth_failed,
        "latency_ewma_ms": view.and_then(|view| view.latency_ewma).map(millis),
        "rate_limited": view.is_some_and(|view| view.blocked_until.is_some()),
        "honesty_demoted": view.is_some_and(|view| view.demoted),
        "supports_count_tokens": endpoint.supports_count_tokens,
    }))
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

fn group_json(config: &Config, group: &GroupView) -> Value {
    let (status_text, color) = match group.status {
        GroupStatus::Active => ("活跃", "success"),
        GroupStatus::Paused => ("手动暂停", "warning"),
        GroupStatus::Cooldown => ("冷却中", "danger"),
        GroupStatus::NoHealthyEndpoints => ("无健康端点", "danger"),
        GroupStatus::Available => ("可用", "secondary"),
    };
    let endpoints: Vec<&str> = config
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.group == group.name)
        .map(|endpoint| endpoint.name.as_str())
        .collect();
    json!({
        "name": group.name,
        "priority": group.priority,
        "is_active": group.is_active,
        "status": group.status,
        "status_text": status_text,
        "status_color": color,
        "total_endpoints": group.total_endpoints,
        "healthy_endpoints": group.healthy_endpoints,
        "unhealthy_endpoints": group.total_endpoints.saturating_sub(group.healthy_endpoints),
        "endpoints": endpoints,
        "manually_paused": group.paused,
        "in_cooldown": group.in_cooldown,
        "cooldown_remaining": go_duration(Duration::from_secs(group.cooldown_remaining.as_secs())),
        "cooldown_remaining_seconds": group.cooldown_remaining.as_secs(),
        "needs_attention": group.needs_attention,
        "can_activate": group.can_activate,
        "can_force_activate": group.can_force_activate,
        "can_pause": group.can_pause,
        "can_resume": group.can_resume,
        "forced_activation": group.forced,
        "activation_type": if group.forced { "forced" } else { "normal" },
    })
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
    let suspended_connections: Vec<Value> = held
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
        .collect();
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

/// A usage-store row made from a live record (what the recorder writes for it).
pub fn usage_record(record: &RequestRecord, instance_id: Option<&str>) -> UsageRecord {
    let mut row = UsageRecord::new(record.id.to_string(), record.started_at);
    row.client_ip = record.client_ip.map(|ip| ip.to_string());
    row.user_agent = record.user_agent.clone();
    row.method = record.method.clone();
    row.path = record.path.clone();
    row.end_time = record.ended_at;
    row.duration_ms = record.duration.map(millis);
    row.endpoint_name = record.endpoint.clone();
    row.group_name = record.group.clone();
    row.model_name = record.model().map(str::to_string);
    row.is_streaming = record.is_streaming;
    // The Go original stored the error dimension in the status column while a request was live.
    row.status = match (record.status.is_final(), record.error_state) {
        (false, Some(ErrorState::Retry)) => "retry".to_string(),
        (false, Some(ErrorState::Suspended)) => "suspended".to_string(),
        _ => record.status.as_str().to_string(),
    };
    row.http_status_code = record.http_status;
    row.retry_count = record.retry_count;
    row.failure_reason = record
        .failure_reason
        .map(|reason| reason.as_str().to_string());
    row.last_failure_reason = record.last_failure_reason.clone();
    row.cancel_reason = record.cancel_reason.clone();
    row.usage = record.usage.clone().unwrap_or_default();
    row.time_to_first_byte_ms = record.time_to_first_byte.map(millis);
    row.attempts_json = (!record.attempts.is_empty())
        .then(|| serde_json::to_string(&record.attempts).ok())
        .flatten();
    row.model_mismatch = record.model_mismatch;
    row.partial = record.partial;
    row.instance_id = instance_id.map(str::to_string);
    row.api_key_name = record.api_key_name.clone();
    row.is_final = record.is_final();
    row
}

/// A live request in the same shape as a stored row, plus `source: "live"` and its live state.
pub(crate) fn live_request_json(shared: &Shared, event: &LifecycleEvent) -> Value {
    let record = event.record();
    let row = usage_record(record, shared.forwarder.config().instance_id.as_deref());
    let cost = if record.is_final() {
        record
            .usage
            .as_ref()
            .map(|usage| shared.derived().pricing.cost(record.model(), usage))
            .unwrap_or_default()
    } else {
        Cost::default()
    };
    let mut value = serde_json::to_value(RequestRow {
        id: 0,
        record: row,
        cost,
        created_at: None,
        updated_at: None,
    })
    .unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("id");
        map.insert("source".into(), Value::String("live".into()));
        map.insert(
            "error_state".into(),
            serde_json::to_value(record.error_state).unwrap_or(Value::Null),
        );
        map.insert(
            "change_type".into(),
            Value::String(event.change_type().as_str().into()),
        );
    }
    value
}

/// The live stream's `connection` event for one request change (the original's fields plus the
/// whole record).
pub(crate) fn request_event(shared: &Shared, event: &LifecycleEvent) -> Value {
    let record = event.record();
    json!({
        "request_id": record.id.to_string(),
        "change_type": event.change_type().as_str(),
        "client_ip": record.client_ip.map(|ip| ip.to_string()),
        "user_agent": record.user_agent,
        "method": record.method,
        "path": record.path,
        "is_streaming": record.is_streaming,
        "endpoint_name": record.endpoint,
        "group_name": record.group,
        "status": record.status,
        "error_state": record.error_state,
        "retry_count": record.retry_count,
        "http_status": record.http_status,
        "model_name": record.model(),
        "start_timestamp_ms": started_ms(event),
        "is_final": event.is_final(),
        "request": live_request_json(shared, event),
        "timestamp": unix_now(),
    })
}

/// `GET /api/v1/routing/honesty`: every endpoint's relay honesty scores, checks, last flag and
/// demotion, with the settings they are judged by.
pub(crate) fn honesty_view(shared: &Shared) -> Value {
    use ccf_router::honesty::{HonestySettings, HonestySignal, MIN_CHECKS_FOR_DEMOTION};
    let config = shared.forwarder.config();
    let settings = HonestySettings::from_config(&config);
    let endpoints: Vec<Value> = shared
        .forwarder
        .honesty()
        .into_iter()
        .map(|honesty| {
            let signals: Map<String, Value> = HonestySignal::ALL
                .iter()
                .map(|signal| {
                    let score = honesty.signal(*signal);
                    (
                        signal.as_str().to_string(),
                        json!({"score": score.score, "checks": score.checks, "flags": score.flags}),
                    )
                })
                .collect();
            json!({
                "endpoint": honesty.endpoint,
                "group": config.endpoint(&honesty.endpoint).map(|endpoint| endpoint.group.clone()),
                "score": honesty.score,
                "checks": honesty.checks,
                "flagged_requests": honesty.flagged_requests,
                "signals": signals,
                "last_flag": honesty.last_flag.map(|flag| json!({
                    "request_id": flag.request_id,
                    "signal": flag.signal.as_str(),
                    "asked": flag.asked,
                    "reported": flag.reported,
                    "at": rfc3339(flag.at),
                })),
                "below_threshold": honesty.below_threshold,
                "demoted": honesty.demoted,
            })
        })
        .collect();
    json!({
        "enabled": settings.enabled,
        "demote_dishonest": settings.demote,
        "threshold": settings.threshold,
        "restore_level": settings.restore_level(),
        "usage_tolerance": settings.usage_tolerance,
        "min_checks": MIN_CHECKS_FOR_DEMOTION,
        "endpoints": endpoints,
        "timestamp": rfc3339(SystemTime::now()),
    })
}

/// What affinity saved on held turns, in nano-USD: every held cache-read token would have been
/// a cache write on the endpoint routing without affinity picks (it holds no cache for the
/// conversation), so it saved `cache-write price (TTL asked for) - cache-read price` of the
/// model it was billed for.
fn affinity_saved_nano(pricing: &ccf_store::Pricing, held: &[ccf_router::HeldTokens]) -> i64 {
    held.iter()
        .map(|entry| {
            let price = pricing.price(Some(entry.model.as_str()).filter(|model| !model.is_empty()));
            let saved_5m = price.cache_creation.saturating_sub(price.cache_read).max(0);
            let saved_1h = price
                .cache_creation_1h
                .unwrap_or(price.cache_creation)
                .saturating_sub(price.cache_read)
                .max(0);
            let tokens = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
            tokens(entry.cache_read_5m)
                .saturating_mul(saved_5m)
                .saturating_add(tokens(entry.cache_read_1h).saturating_mul(saved_1h))
        })
        .fold(0i64, i64::saturating_add)
}

fn cache_tokens_json(tokens: &ccf_router::CacheTokens, ratio: Option<f64>) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("turns".into(), json!(tokens.turns));
    map.insert("input_tokens".into(), json!(tokens.input_tokens));
    map.insert(
        "cache_creation_tokens".into(),
        json!(tokens.cache_creation_tokens),
    );
    map.insert("cache_read_tokens".into(), json!(tokens.cache_read_tokens));
    map.insert("cache_read_ratio".into(), json!(ratio));
    map
}

fn held_json(pricing: &ccf_store::Pricing, held: &[ccf_router::HeldTokens]) -> Value {
    let tokens: u64 = held
        .iter()
        .map(|entry| entry.cache_read_5m.saturating_add(entry.cache_read_1h))
        .sum();
    json!({
        "held_cache_read_tokens": tokens,
        "saved_usd": Cost::usd(affinity_saved_nano(pricing, held)),
    })
}

/// `GET /api/v1/routing/affinity`: session affinity settings, counters, per-endpoint and
/// per-session cache-read ratios and the cost affinity saved.
pub(crate) fn affinity_view(shared: &Shared, limit: usize) -> Value {
    let view = shared.forwarder.affinity(limit);
    let derived = shared.derived();
    let pricing = &derived.pricing;
    let merge = |mut base: Map<String, Value>, extra: Value| {
        if let Value::Object(extra) = extra {
            base.extend(extra);
        }
        Value::Object(base)
    };
    let endpoints: Vec<Value> = view
        .endpoints
        .iter()
        .map(|endpoint| {
            let mut map = cache_tokens_json(&endpoint.tokens, endpoint.cache_read_ratio);
            map.insert("endpoint".into(), json!(endpoint.endpoint));
            map.insert("bound_sessions".into(), json!(endpoint.bound_sessions));
            map.insert("held_turns".into(), json!(endpoint.held_turns));
            merge(map, held_json(pricing, &endpoint.held))
        })
        .collect();
    let sessions: Vec<Value> = view
        .sessions
        .iter()
        .map(|session| {
            let mut map = cache_tokens_json(&session.tokens, session.cache_read_ratio);
            map.insert("session".into(), json!(session.session.to_string()));
            map.insert("source".into(), json!(session.source));
            map.insert("endpoint".into(), json!(session.endpoint));
            map.insert(
                "expires_in_seconds".into(),
                json!(session.expires_in.as_secs()),
            );
            map.insert("idle_seconds".into(), json!(session.idle.as_secs()));
            map.insert("long_ttl".into(), json!(session.long_ttl));
            map.insert("moves".into(), json!(session.moves));
            map.insert("moved_from".into(), json!(session.moved_from));
            map.insert("held_turns".into(), json!(session.held_turns));
            merge(map, held_json(pricing, &session.held))
        })
        .collect();
    let saved_nano = view
        .endpoints
        .iter()
        .map(|endpoint| affinity_saved_nano(pricing, &endpoint.held))
        .fold(0i64, i64::saturating_add);
    let mut all = ccf_router::CacheTokens::default();
    for endpoint in &view.endpoints {
        all.turns = all.turns.saturating_add(endpoint.tokens.turns);
        all.input_tokens = all
            .input_tokens
            .saturating_add(endpoint.tokens.input_tokens);
        all.cache_creation_tokens = all
            .cache_creation_tokens
            .saturating_add(endpoint.tokens.cache_creation_tokens);
        all.cache_read_tokens = all
            .cache_read_tokens
            .saturating_add(endpoint.tokens.cache_read_tokens);
    }
    let mut totals = cache_tokens_json(&all, all.cache_read_ratio());
    totals.insert("bound".into(), json!(view.totals.bound));
    totals.insert("moves".into(), json!(view.totals.moves));
    totals.insert("expired".into(), json!(view.totals.expired));
    totals.insert("evicted".into(), json!(view.totals.evicted));
    totals.insert("held_turns".into(), json!(view.totals.held_turns));
    totals.insert("saved_usd".into(), json!(Cost::usd(saved_nano)));
    json!({
        "enabled": view.enabled,
        "ttl_seconds": view.ttl.as_secs(),
        "long_ttl_seconds": view.long_ttl.as_secs(),
        "capacity": view.capacity,
        "active_sessions": view.active_sessions,
        "totals": totals,
        "endpoints": endpoints,
        "sessions": sessions,
        "saved_formula": "sum over held turns of cache_read_tokens x (cache write price for the TTL asked for - cache read price) of the model billed",
    })
}

/// `GET /api/v1/routing/quota`: per endpoint, the latest rate-limit readings, burn rates,
/// predicted exhaustion and whether new sessions are drained away from it.
pub(crate) fn quota_view(shared: &Shared) -> Value {
    let now = SystemTime::now();
    let at = |left: Option<Duration>| left.and_then(|left| now.checked_add(left)).map(rfc3339);
    let secs = |left: Option<Duration>| left.map(|left| left.as_secs_f64());
    let quotas = shared.forwarder.quota();
    let config = shared.forwarder.config();
    let mut names: Vec<String> = config.endpoints.iter().map(|e| e.name.clone()).collect();
    for quota in &quotas {
        if !names.contains(&quota.endpoint) {
            names.push(quota.endpoint.clone());
        }
    }
    let endpoints: Vec<Value> = names
        .iter()
        .map(
            |name| match quotas.iter().find(|quota| quota.endpoint == *name) {
                None => json!({
                    "endpoint": name,
                    "reported": false,
                    "draining": false,
                    "drain_reason": null,
                    "dimensions": [],
                }),
                Some(quota) => json!({
                    "endpoint": name,
                    "reported": true,
                    "draining": quota.draining.is_some(),
                    "drain_reason": quota.draining,
                    "retry_after_seconds": secs(quota.retry_after_in),
                    "predicted_exhaustion_in_seconds": secs(quota.predicted_exhaustion_in),
                    "predicted_exhaustion_at": at(quota.predicted_exhaustion_in),
                    "last_observed_seconds_ago": secs(quota.last_observed_ago),
                    "dimensions": quota.dimensions.iter().map(|dimension| json!({
                        "dimension": dimension.dimension,
                        "limit": dimension.limit,
                        "remaining": dimension.remaining,
                        "reset_in_seconds": secs(dimension.reset_in),
                        "reset_at": at(dimension.reset_in),
                        "reset_passed": dimension.reset_passed,
                        "burn_rate_per_sec": dimension.burn_rate_per_sec,
                        "predicted_exhaustion_in_seconds": secs(dimension.predicted_exhaustion_in),
                        "runs_out_before_reset": dimension.runs_out_before_reset,
                    })).collect::<Vec<_>>(),
                }),
            },
        )
        .collect();
    json!({ "endpoints": endpoints })
}
