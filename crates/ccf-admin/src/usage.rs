//! The routes backed by the usage database (and the request detail, which also looks at live
//! state). Without a store they answer 503 `usage_tracking_disabled`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ccf_store::{
    Bucket, ExportCursor, ExportFormat, RequestFilter, RequestQuery, SummaryQuery, UsageStore,
};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::dispatch::{ok, Answer, Handled};
use crate::dto::usage::{BucketDto, ModelPriceDto, RequestRowDto, StoredRequestDto, SummaryRowDto};
use crate::error::ApiError;
use crate::http_util::{channel_body, rfc3339};
use crate::{views, Shared};

/// Default and largest page of `/usage/requests`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

fn store(shared: &Shared) -> Result<&Arc<dyn UsageStore>, ApiError> {
    shared
        .store
        .as_ref()
        .ok_or_else(ApiError::tracking_disabled)
}

fn non_empty<'a>(query: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    query
        .get(key)
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
}

fn parse_date(
    shared: &Shared,
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<SystemTime>, ApiError> {
    let Some(text) = non_empty(query, key) else {
        return Ok(None);
    };
    // `2025/01/02` and `01/02/2025` layouts of the original. A date or time without a zone is
    // one of the configured `timezone` (the Go original read it in Asia/Shanghai).
    let normalised = normalise_date(text);
    ccf_store::time::parse_in_day_zone(&normalised, shared.day_zone)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_date",
                format!("`{key}` is not a date: `{text}` (use RFC 3339 or YYYY-MM-DD[ HH:MM:SS])"),
            )
        })
}

fn normalise_date(text: &str) -> String {
    let (date, rest) = match text.split_once(' ') {
        Some((date, rest)) => (date, Some(rest)),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('/').collect();
    let date = match parts.as_slice() {
        [year, month, day] if year.len() == 4 => format!("{year}-{month:0>2}-{day:0>2}"),
        [month, day, year] if year.len() == 4 => format!("{year}-{month:0>2}-{day:0>2}"),
        _ => return text.to_string(),
    };
    match rest {
        Some(rest) => format!("{date} {rest}"),
        None => date,
    }
}

fn filter(shared: &Shared, query: &HashMap<String, String>) -> Result<RequestFilter, ApiError> {
    Ok(RequestFilter {
        start: parse_date(shared, query, "start_date")?,
        end: parse_date(shared, query, "end_date")?,
        status: non_empty(query, "status").map(str::to_string),
        model: non_empty(query, "model").map(str::to_string),
        endpoint: non_empty(query, "endpoint").map(str::to_string),
        group: non_empty(query, "group").map(str::to_string),
        request_id: non_empty(query, "request_id").map(str::to_string),
        instance: non_empty(query, "instance").map(str::to_string),
        api_key: non_empty(query, "api_key").map(str::to_string),
    })
}

fn number<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match non_empty(query, key) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("`{key}` must be a non-negative integer, not `{text}`"),
            )
        }),
    }
}

/// `GET /api/v1/usage/requests`.
pub(crate) async fn list(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let store = store(shared)?;
    let limit = number::<u32>(query, "limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let offset = number::<u64>(query, "offset")?.unwrap_or(0);
    let page = store
        .list_requests(&RequestQuery {
            filter: filter(shared, query)?,
            limit,
            offset,
        })
        .await
        .map_err(|error| ApiError::store(&error))?;
    let rows: Vec<RequestRowDto> = page.items.iter().map(RequestRowDto::from).collect();
    ok(json!({
        "success": true,
        "data": rows,
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
    }))
}

/// `GET /api/v1/usage/stats`.
pub(crate) async fn stats(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let store = store(shared)?;
    let mut filter = filter(shared, query)?;
    let period = if filter.start.is_some() || filter.end.is_some() {
        if filter.start.is_none() || filter.end.is_none() {
            return Err(ApiError::bad_request(
                "invalid_date",
                "give both start_date and end_date, or a period",
            ));
        }
        "custom".to_string()
    } else {
        let period = non_empty(query, "period").unwrap_or("7d");
        let span = match period {
            "1h" => Duration::from_secs(3600),
            "1d" => Duration::from_secs(86_400),
            "7d" => Duration::from_secs(7 * 86_400),
            "30d" => Duration::from_secs(30 * 86_400),
            "90d" => Duration::from_secs(90 * 86_400),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_period",
                    format!("period must be 1h, 1d, 7d, 30d or 90d, not `{other}`"),
                ))
            }
        };
        filter.start = SystemTime::now().checked_sub(span);
        period.to_string()
    };
    let stats = store
        .stats(&filter)
        .await
        .map_err(|error| ApiError::store(&error))?;
    let config = shared.forwarder.config();
    let totals = &stats.totals;
    let top_models: Vec<Value> = stats
        .by_model
        .iter()
        .take(10)
        .map(|bucket| {
            let count = bucket.aggregate.request_count.max(1);
            json!({
                "model_name": bucket.key,
                "request_count": bucket.aggregate.request_count,
                "total_cost_usd": bucket.aggregate.total_cost_usd,
                "avg_cost_usd": bucket.aggregate.total_cost_usd / count as f64,
                "total_tokens": bucket.aggregate.total_tokens(),
            })
        })
        .collect();
    let top_endpoints: Vec<Value> = stats
        .by_endpoint
        .iter()
        .take(10)
        .map(|bucket| {
            json!({
                "endpoint_name": bucket.key,
                "group_name": config.endpoint(&bucket.key).map(|e| e.group.clone()).unwrap_or_default(),
                "request_count": bucket.aggregate.request_count,
                "success_rate": bucket.aggregate.success_rate,
                "avg_duration_ms": bucket.aggregate.avg_duration_ms.unwrap_or(0.0),
                "total_cost_usd": bucket.aggregate.total_cost_usd,
            })
        })
        .collect();
    let daily: Vec<Value> = stats
        .by_day
        .iter()
        .map(|bucket| {
            json!({
                "date": bucket.key,
                "request_count": bucket.aggregate.request_count,
                "success_rate": bucket.aggregate.success_rate,
                "total_cost_usd": bucket.aggregate.total_cost_usd,
                "total_tokens": bucket.aggregate.total_tokens(),
            })
        })
        .collect();
    ok(json!({
        "success": true,
        "data": {
            "period": period,
            "start_time": filter.start.map(rfc3339),
            "end_time": filter.end.map(rfc3339),
            "total_requests": totals.request_count,
            "success_rate": totals.success_rate,
            "avg_duration_ms": totals.avg_duration_ms.unwrap_or(0.0),
            "p95_duration_ms": stats.p95_duration_ms,
            "total_cost_usd": totals.total_cost_usd,
            "total_tokens": totals.total_tokens(),
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cache_creation_tokens": totals.cache_creation_tokens,
            "cache_read_tokens": totals.cache_read_tokens,
            "failed_requests": totals.failed_count,
            "cancelled_requests": totals.cancelled_count,
            "top_models": top_models,
            "top_endpoints": top_endpoints,
            "daily_stats": daily,
            "by_group": buckets(&stats.by_group),
            // Per inbound auth key (`auth.tokens[].name`); `""` gathers requests made without one.
            "by_api_key": buckets(&stats.by_api_key),
            "hourly_stats": buckets(&stats.by_hour),
        }
    }))
}

/// Stats buckets on the wire.
fn buckets(buckets: &[Bucket]) -> Vec<BucketDto<'_>> {
    buckets.iter().map(BucketDto::from).collect()
}

/// `GET /api/v1/usage/export?format=csv|json`: streamed from the store in chunks.
pub(crate) async fn export(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let store = store(shared)?;
    let format_text = non_empty(query, "format").unwrap_or("csv");
    let format = ExportFormat::parse(format_text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_format",
            format!("format must be csv or json, not `{format_text}`"),
        )
    })?;
    let mut filter = filter(shared, query)?;
    let now = SystemTime::now();
    if filter.start.is_none() {
        filter.start = now.checked_sub(Duration::from_secs(30 * 86_400));
    }
    if filter.end.is_none() {
        filter.end = Some(now);
    }
    let mut cursor = ExportCursor::new(Arc::clone(store), filter, format);
    // The header and the first rows are read before answering, so a failing database gets a
    // proper error status instead of a truncated file.
    let mut first = Vec::new();
    for _ in 0..2 {
        match cursor.next_chunk().await {
            Ok(Some(chunk)) => first.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err(ApiError::store(&error)),
        }
    }
    // Rows carry upstream text verbatim (`last_failure_reason`), so each chunk (whole rows) is
    // swept for configured credentials like every other answer.
    let derived = shared.derived();
    let sweep = move |chunk: Vec<u8>| match String::from_utf8(chunk) {
        Ok(text) => Bytes::from(derived.sweep(text)),
        Err(error) => {
            Bytes::from(derived.sweep(String::from_utf8_lossy(error.as_bytes()).into_owned()))
        }
    };
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // The task owns the cursor; it ends when the export is complete, fails, or the client goes
    // away (the send fails).
    tokio::spawn(async move {
        if sender.send(Ok(sweep(first))).await.is_err() {
            return;
        }
        loop {
            match cursor.next_chunk().await {
                Ok(Some(chunk)) => {
                    if sender.send(Ok(sweep(chunk))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "usage export failed mid-stream");
                    let _ = sender
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                    return;
                }
            }
        }
    });
    let filename = format!(
        "usage_export_{}.{}",
        views::local_time(&shared.forwarder.config(), now, "%Y-%m-%d_%H-%M-%S"),
        format.extension()
    );
    let mut response = Response::new(channel_body(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(Answer::Response(response))
}

/// `GET /api/v1/usage/summary`: the daily summary rows.
pub(crate) async fn summary(shared: &Shared, query: &HashMap<String, String>) -> Handled {
    let store = store(shared)?;
    for key in ["start_date", "end_date"] {
        if let Some(text) = non_empty(query, key) {
            if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() {
                return Err(ApiError::bad_request(
                    "invalid_date",
                    format!("`{key}` must be YYYY-MM-DD, not `{text}`"),
                ));
            }
        }
    }
    let rows = store
        .summary(&SummaryQuery {
            start_date: non_empty(query, "start_date").map(str::to_string),
            end_date: non_empty(query, "end_date").map(str::to_string),
            model: non_empty(query, "model").map(str::to_string),
            endpoint: non_empty(query, "endpoint").map(str::to_string),
            group: query.get("group").cloned(),
        })
        .await
        .map_err(|error| ApiError::store(&error))?;
    let data: Vec<SummaryRowDto> = rows.iter().map(SummaryRowDto::from).collect();
    ok(json!({"success": true, "data": data, "total": rows.len()}))
}

fn display_name(model: &str) -> String {
    let known = [
        ("claude-opus-4-1", "Claude Opus 4.1"),
        ("claude-opus-4", "Claude Opus 4"),
        ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
        ("claude-sonnet-4", "Claude Sonnet 4"),
        ("claude-haiku-4-5", "Claude Haiku 4.5"),
        ("claude-3-7-sonnet", "Claude 3.7 Sonnet"),
        ("claude-3-5-sonnet", "Claude 3.5 Sonnet"),
        ("claude-3-5-haiku", "Claude 3.5 Haiku"),
        ("claude-3-opus", "Claude 3 Opus"),
        ("claude-3-haiku", "Claude 3 Haiku"),
    ];
    known
        .iter()
        .find(|(prefix, _)| model.starts_with(prefix))
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| model.to_string())
}

/// `GET /api/v1/usage/models`: models with configured prices, plus models seen in the last 30
/// days when the store is on, read from `usage_summary` (a few rows per day, not a stats query
/// over the requests): `request_count_30d` counts the finished requests of today and the 29 days
/// before it.
pub(crate) async fn models(shared: &Shared) -> Handled {
    let config = shared.forwarder.config();
    let mut models: BTreeMap<String, Value> = BTreeMap::new();
    for (model, price) in &config.usage_tracking.model_pricing {
        models.insert(
            model.clone(),
            json!({"model_name": model, "display_name": display_name(model), "priced": true, "pricing": ModelPriceDto::from(price)}),
        );
    }
    if let Some(store) = &shared.store {
        let today = shared.day_zone.today();
        let first = today
            .checked_sub_days(chrono::Days::new(29))
            .unwrap_or(today);
        let rows = store
            .summary(&SummaryQuery {
                start_date: Some(first.format("%Y-%m-%d").to_string()),
                ..SummaryQuery::default()
            })
            .await
            .map_err(|error| ApiError::store(&error))?;
        let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
        for row in rows
            .iter()
            .filter(|row| row.model_name != ccf_store::UNKNOWN && !row.model_name.is_empty())
        {
            *seen.entry(row.model_name.as_str()).or_default() += row.request_count;
        }
        for (model, count) in seen.into_iter().filter(|(_, count)| *count > 0) {
            let entry = models.entry(model.to_string()).or_insert_with(|| {
                json!({"model_name": model, "display_name": display_name(model), "priced": false})
            });
            if let Value::Object(map) = entry {
                map.insert("request_count_30d".into(), json!(count));
            }
        }
    }
    let data: Vec<Value> = models.into_values().collect();
    ok(json!({"success": true, "data": data}))
}

/// `GET /api/v1/requests`: the requests in flight now.
pub(crate) fn live_requests(shared: &Shared) -> Handled {
    let events: Vec<_> = {
        let state = shared.hub.state();
        let mut events: Vec<_> = state.in_flight.values().cloned().collect();
        events.sort_by_key(|event| event.record().started_at);
        events
    };
    let data: Vec<Value> = events
        .iter()
        .map(|event| views::live_request_json(shared, event))
        .collect();
    ok(json!({"success": true, "data": data, "total": data.len()}))
}

/// `GET /api/v1/requests/{id}`: live state first (fresher), then the store, then the recently
/// finished requests kept in memory.
pub(crate) async fn request_detail(shared: &Shared, id: &str) -> Handled {
    let live = shared.hub.state().find(id);
    if let Some(event) = &live {
        if !event.is_final() {
            return ok(json!({"success": true, "data": views::live_request_json(shared, event)}));
        }
    }
    if let Some(store) = &shared.store {
        match store.get_request(id).await {
            Ok(Some(row)) => {
                return ok(json!({"success": true, "data": StoredRequestDto::from(&row)}));
            }
            Ok(None) => {}
            Err(error) if live.is_none() => return Err(ApiError::store(&error)),
            Err(_) => {}
        }
    }
    match live {
        Some(event) => {
            ok(json!({"success": true, "data": views::live_request_json(shared, &event)}))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "request_not_found",
            format!("no request `{id}` in flight, recently finished or stored"),
        )),
    }
}
