//! The chart routes: Chart.js-shaped answers (`{labels, datasets:[{label, data, ...}]}`) from the
//! per-minute samples of live state, the health snapshot, and the store (endpoint costs).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_store::RequestFilter;
use serde_json::{json, Value};

use crate::dispatch::{ok, Handled};
use crate::error::ApiError;
use crate::http_util::rfc3339;
use crate::live::{MinuteSample, MAX_MINUTES};
use crate::{views, Shared};

fn minutes(query: &HashMap<String, String>, default: usize) -> Result<usize, ApiError> {
    match query
        .get("minutes")
        .map(|text| text.trim())
        .filter(|t| !t.is_empty())
    {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|minutes| (1..=MAX_MINUTES).contains(minutes))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("minutes must be an integer from 1 to {MAX_MINUTES}, not `{text}`"),
                )
            }),
    }
}

pub(crate) fn samples(
    shared: &Shared,
    query: &HashMap<String, String>,
    default: usize,
) -> Result<Vec<MinuteSample>, ApiError> {
    let minutes = minutes(query, default)?;
    Ok(shared.hub.state().samples(minutes))
}

fn labels(shared: &Shared, samples: &[MinuteSample]) -> Vec<String> {
    let config = shared.forwarder.config();
    samples
        .iter()
        .map(|sample| {
            views::local_time(
                &config,
                UNIX_EPOCH + Duration::from_secs(sample.timestamp),
                "%H:%M",
            )
        })
        .collect()
}

fn dataset(label: &str, data: Vec<Value>, color: &str) -> Value {
    json!({
        "label": label,
        "data": data,
        "borderColor": color,
        "backgroundColor": format!("{color}33"),
        "fill": false,
        "tension": 0.3,
    })
}

fn series(samples: &[MinuteSample], value: impl Fn(&MinuteSample) -> Value) -> Vec<Value> {
    samples.iter().map(value).collect()
}

/// `GET /api/v1/chart/request-trends?minutes=30`.
pub(crate) fn request_trends(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 30)?;
    ok(json!({
        "labels": labels(shared, &samples),
        "datasets": [
            dataset("total", series(&samples, |s| json!(s.finished)), "#3b82f6"),
            dataset("success", series(&samples, |s| json!(s.success)), "#22c55e"),
            dataset("failed", series(&samples, |s| json!(s.failed)), "#ef4444"),
        ],
    }))
}

/// `GET /api/v1/chart/response-times?minutes=30` (milliseconds).
pub(crate) fn response_times(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 30)?;
    ok(json!({
        "labels": labels(shared, &samples),
        "datasets": [
            dataset("avg", series(&samples, |s| json!(s.avg_ms().round())), "#3b82f6"),
            dataset("min", series(&samples, |s| json!(s.min_ms.unwrap_or(0))), "#22c55e"),
            dataset("max", series(&samples, |s| json!(s.max_ms.unwrap_or(0))), "#f59e0b"),
        ],
    }))
}

/// `GET /api/v1/chart/endpoint-health`.
pub(crate) fn endpoint_health(shared: &Shared) -> Handled {
    let health = shared.forwarder.health().snapshot();
    let config = shared.forwarder.config();
    let healthy = config
        .endpoints
        .iter()
        .filter(|endpoint| health.is_healthy(&endpoint.name))
        .count();
    let unhealthy = config.endpoints.len() - healthy;
    ok(json!({
        "labels": ["healthy", "unhealthy"],
        "datasets": [{
            "label": "endpoints",
            "data": [healthy, unhealthy],
            "backgroundColor": ["#22c55e", "#ef4444"],
            "borderColor": ["#16a34a", "#dc2626"],
        }],
    }))
}

/// `GET /api/v1/chart/connection-activity?minutes=60`: requests started and peak in flight per
/// minute.
pub(crate) fn connection_activity(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 60)?;
    ok(json!({
        "labels": labels(shared, &samples),
        "datasets": [
            dataset("connections", series(&samples, |s| json!(s.started)), "#8b5cf6"),
            dataset("peak in flight", series(&samples, |s| json!(s.peak_in_flight)), "#06b6d4"),
        ],
    }))
}

/// `GET /api/v1/chart/suspended-trends?minutes=30`.
pub(crate) fn suspended_trends(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 30)?;
    let held = shared.forwarder.held_requests();
    ok(json!({
        "labels": labels(shared, &samples),
        "datasets": [dataset("suspended", series(&samples, |s| json!(s.suspended)), "#f59e0b")],
        "current": held.len(),
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `GET /api/v1/tokens/usage?minutes=60`.
pub(crate) fn tokens_usage(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 60)?;
    let totals = shared.hub.state().totals.clone();
    let in_out = totals.input_tokens + totals.output_tokens;
    let percentage = |part: u64| {
        if in_out == 0 {
            0.0
        } else {
            part as f64 * 100.0 / in_out as f64
        }
    };
    let history: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({
                "timestamp": rfc3339(UNIX_EPOCH + Duration::from_secs(s.timestamp)),
                "input_tokens": s.input_tokens,
                "output_tokens": s.output_tokens,
                "cache_creation_tokens": s.cache_creation_tokens,
                "cache_read_tokens": s.cache_read_tokens,
                "total_tokens": s.input_tokens + s.output_tokens,
            })
        })
        .collect();
    ok(json!({
        "current": {
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cache_creation_tokens": totals.cache_creation_tokens,
            "cache_read_tokens": totals.cache_read_tokens,
            "total_tokens": in_out,
        },
        "history": history,
        "distribution": {
            "input_percentage": percentage(totals.input_tokens),
            "output_percentage": percentage(totals.output_tokens),
        },
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `GET /api/v1/metrics/history?minutes=60`.
pub(crate) fn metrics_history(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let samples = samples(shared, query, 60)?;
    let at = |s: &MinuteSample| rfc3339(UNIX_EPOCH + Duration::from_secs(s.timestamp));
    let requests: Vec<Value> = samples
        .iter()
        .map(|s| json!({"timestamp": at(s), "total": s.finished, "started": s.started, "success": s.success, "failed": s.failed, "cancelled": s.cancelled}))
        .collect();
    let response_times: Vec<Value> = samples
        .iter()
        .map(|s| json!({"timestamp": at(s), "avg": s.avg_ms(), "min": s.min_ms.unwrap_or(0), "max": s.max_ms.unwrap_or(0)}))
        .collect();
    let tokens: Vec<Value> = samples
        .iter()
        .map(|s| json!({"timestamp": at(s), "input": s.input_tokens, "output": s.output_tokens, "cache_creation": s.cache_creation_tokens, "cache_read": s.cache_read_tokens}))
        .collect();
    ok(json!({
        "requests": requests,
        "response_times": response_times,
        "tokens": tokens,
        "summary": {
            "data_points": samples.len(),
            "time_range": format!("{}m", samples.len()),
            "interval": "1m",
            "last_updated": rfc3339(SystemTime::now()),
        },
    }))
}

/// `GET /api/v1/chart/endpoint-costs?date=YYYY-MM-DD` (from the store; the day, today by
/// default, is a day of the configured `timezone`).
pub(crate) async fn endpoint_costs(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let store = shared
        .store
        .as_ref()
        .ok_or_else(ApiError::tracking_disabled)?;
    let date = match query
        .get("date")
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
    {
        Some(text) => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            ApiError::bad_request(
                "invalid_date",
                format!("date must be YYYY-MM-DD, not `{text}`"),
            )
        })?,
        None => shared.day_zone.today(),
    };
    let (start, end) = shared.day_zone.day_span(date);
    let stats = store
        .stats(&RequestFilter {
            start: Some(start),
            end: Some(end),
            ..RequestFilter::default()
        })
        .await
        .map_err(|error| ApiError::store(&error))?;
    let config = shared.forwarder.config();
    let buckets: Vec<_> = stats
        .by_endpoint
        .iter()
        .filter(|bucket| !bucket.key.is_empty())
        .collect();
    let labels: Vec<String> = buckets
        .iter()
        .map(|bucket| {
            let group = config
                .endpoint(&bucket.key)
                .map(|endpoint| endpoint.group.clone())
                .unwrap_or_else(|| "-".into());
            format!("{} ({group})", bucket.key)
        })
        .collect();
    ok(json!({
        "date": date.format("%Y-%m-%d").to_string(),
        "labels": labels,
        "datasets": [
            {
                "label": "Token使用量",
                "type": "bar",
                "yAxisID": "tokens",
                "data": buckets.iter().map(|b| b.aggregate.total_tokens()).collect::<Vec<_>>(),
                "backgroundColor": "#3b82f666",
                "borderColor": "#3b82f6",
            },
            {
                "label": "成本 (USD)",
                "type": "line",
                "yAxisID": "cost",
                "data": buckets.iter().map(|b| b.aggregate.total_cost_usd).collect::<Vec<_>>(),
                "backgroundColor": "#f59e0b33",
                "borderColor": "#f59e0b",
                "fill": false,
            },
        ],
    }))
}
