//! The route table and the one dispatcher: method and path matching (405 with `Allow` for a
//! known path with the wrong method), authentication, the `Origin` check of POST routes, and
//! the turning of answers and errors into responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body::Body as HttpBody;
use serde_json::{json, Value};

use crate::auth::check_origin;
use crate::error::ApiError;
use crate::http_util::{bytes_response, query_map, read_json_body, rfc3339, AdminResponse};
use crate::{assets, charts, stream, usage, views, Shared};

/// Every route of the admin API: method and path pattern (`{name}` matches one segment).
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/endpoints"),
    ("GET", "/api/v1/endpoints/performance"),
    ("POST", "/api/v1/endpoints/{name}/priority"),
    ("POST", "/api/v1/endpoints/{name}/health-check"),
    ("GET", "/api/v1/groups"),
    ("GET", "/api/v1/routing/honesty"),
    ("GET", "/api/v1/routing/affinity"),
    ("GET", "/api/v1/routing/quota"),
    ("POST", "/api/v1/groups/{name}/activate"),
    ("POST", "/api/v1/groups/{name}/pause"),
    ("POST", "/api/v1/groups/{name}/resume"),
    ("GET", "/api/v1/connections"),
    ("GET", "/api/v1/requests"),
    ("GET", "/api/v1/requests/{id}"),
    ("GET", "/api/v1/usage/requests"),
    ("GET", "/api/v1/usage/stats"),
    ("GET", "/api/v1/usage/export"),
    ("GET", "/api/v1/usage/summary"),
    ("GET", "/api/v1/usage/models"),
    ("GET", "/api/v1/chart/request-trends"),
    ("GET", "/api/v1/chart/response-times"),
    ("GET", "/api/v1/chart/endpoint-health"),
    ("GET", "/api/v1/chart/connection-activity"),
    ("GET", "/api/v1/chart/endpoint-costs"),
    ("GET", "/api/v1/chart/suspended-trends"),
    ("GET", "/api/v1/tokens/usage"),
    ("GET", "/api/v1/metrics/history"),
    ("GET", "/api/v1/config"),
    ("GET", "/api/v1/config/status"),
    ("POST", "/api/v1/config/reload"),
    ("GET", "/api/v1/stream"),
    ("GET", "/api/v1/openapi.json"),
];

/// The hand-written OpenAPI document.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// What a handler answers.
pub(crate) enum Answer {
    /// JSON, swept for credentials before it is sent.
    Json(StatusCode, Value),
    /// A finished response (streams, exports).
    Response(AdminResponse),
}

pub(crate) type Handled = Result<Answer, ApiError>;

pub(crate) fn ok(value: Value) -> Handled {
    Ok(Answer::Json(StatusCode::OK, value))
}

fn match_pattern(pattern: &str, path: &str) -> Option<HashMap<&'static str, String>> {
    let pattern_segments: Vec<&str> = pattern.split('/').collect();
    let path_segments: Vec<&str> = path.split('/').collect();
    if pattern_segments.len() != path_segments.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (expected, actual) in pattern_segments.iter().zip(&path_segments) {
        if expected.starts_with('{') && expected.ends_with('}') {
            if actual.is_empty() {
                return None;
            }
            let decoded = percent_decode(actual);
            let key: &'static str = if *expected == "{id}" { "id" } else { "name" };
            params.insert(key, decoded);
        } else if expected != actual {
            return None;
        }
    }
    Some(params)
}

fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| segment.to_string())
}

fn security_headers(response: &mut AdminResponse, api: bool) {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Answers one request.
pub(crate) async fn handle<B>(shared: Arc<Shared>, request: Request<B>) -> AdminResponse
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = request.uri().path().to_string();
    let api = path.starts_with("/api/");
    let mut response = if api {
        match route(&shared, request, &path).await {
            Ok(Answer::Json(status, value)) => {
                let text = serde_json::to_string(&value).unwrap_or_else(|_| "{}".into());
                bytes_response(status, shared.sweep(text), "application/json")
            }
            Ok(Answer::Response(response)) => response,
            Err(error) => error.into_response(),
        }
    } else {
        asset_response(request.method(), &path)
    };
    security_headers(&mut response, api);
    response
}

fn asset_response(method: &Method, path: &str) -> AdminResponse {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::method_not_allowed(&["GET"]).into_response();
    }
    match assets::asset(path) {
        Some((bytes, content_type)) => {
            let mut response = bytes_response(StatusCode::OK, bytes, content_type);
            if method == Method::HEAD {
                *response.body_mut() = crate::http_util::full(bytes::Bytes::new());
            }
            response
        }
        None => ApiError::not_found(format!("no page at {path}")).into_response(),
    }
}

async fn route<B>(shared: &Arc<Shared>, request: Request<B>, path: &str) -> Handled
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let method = request.method().clone();
    let mut allowed: Vec<&str> = Vec::new();
    let mut found = None;
    for (route_method, pattern) in ROUTES {
        if let Some(params) = match_pattern(pattern, trimmed) {
            allowed.push(route_method);
            let matches = method.as_str() == *route_method
                || (method == Method::HEAD && *route_method == "GET");
            if matches && found.is_none() {
                found = Some((*pattern, params));
            }
        }
    }
    let Some((pattern, params)) = found else {
        if allowed.is_empty() {
            return Err(ApiError::not_found(format!("no admin route {path}")));
        }
        return Err(ApiError::method_not_allowed(&allowed));
    };
    let query = query_map(request.uri().query());
    let query_token_allowed = matches!(pattern, "/api/v1/stream" | "/api/v1/usage/export");
    let query_token = query
        .get("access_token")
        .filter(|_| query_token_allowed)
        .map(String::as_str);
    shared.auth.check(request.headers(), query_token)?;
    if method == Method::POST {
        check_origin(
            request.headers(),
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str()),
        )?;
    }
    let name = params.get("name").cloned().unwrap_or_default();
    match pattern {
        "/api/v1/status" => ok(views::status_view(shared)),
        "/api/v1/endpoints" => ok(views::endpoints_view(shared)),
        "/api/v1/endpoints/performance" => ok(views::performance_view(shared)),
        "/api/v1/endpoints/{name}/priority" => {
            let body = read_json_body(request.into_body()).await?;
            set_priority(shared, &name, body)
        }
        "/api/v1/endpoints/{name}/health-check" => health_check(shared, &name).await,
        "/api/v1/groups" => ok(views::groups_view(shared)),
        "/api/v1/routing/honesty" => ok(views::honesty_view(shared)),
        "/api/v1/routing/affinity" => {
            let limit = query
                .get("limit")
                .and_then(|limit| limit.parse::<usize>().ok())
                .unwrap_or(100)
                .min(1000);
            ok(views::affinity_view(shared, limit))
        }
        "/api/v1/routing/quota" => ok(views::quota_view(shared)),
        "/api/v1/groups/{name}/activate" => {
            let force = matches!(
                query.get("force").map(String::as_str),
                Some("true" | "1" | "yes")
            );
            shared
                .forwarder
                .activate_group(&name, force)
                .map_err(|error| ApiError::router(&error))?;
            ok(json!({
                "success": true,
                "message": format!("group {name} activated{}", if force { " (forced)" } else { "" }),
                "group": name,
                "force_activated": force,
                "timestamp": rfc3339(SystemTime::now()),
            }))
        }
        "/api/v1/groups/{name}/pause" => {
            let body = read_json_body(request.into_body()).await?;
            pause_group(shared, &name, body)
        }
        "/api/v1/groups/{name}/resume" => {
            shared
                .forwarder
                .resume_group(&name)
                .map_err(|error| ApiError::router(&error))?;
            ok(json!({
                "success": true,
                "message": format!("group {name} resumed"),
                "group": name,
                "timestamp": rfc3339(SystemTime::now()),
            }))
        }
        "/api/v1/connections" => ok(views::connections_view(shared)),
        "/api/v1/requests" => usage::live_requests(shared),
        "/api/v1/requests/{id}" => {
            let id = params.get("id").cloned().unwrap_or_default();
            usage::request_detail(shared, &id).await
        }
        "/api/v1/usage/requests" => usage::list(shared, &query).await,
        "/api/v1/usage/stats" => usage::stats(shared, &query).await,
        "/api/v1/usage/export" => usage::export(shared, &query).await,
        "/api/v1/usage/summary" => usage::summary(shared, &query).await,
        "/api/v1/usage/models" => usage::models(shared).await,
        "/api/v1/chart/request-trends" => charts::request_trends(shared, &query),
        "/api/v1/chart/response-times" => charts::response_times(shared, &query),
        "/api/v1/chart/endpoint-health" => charts::endpoint_health(shared),
        "/api/v1/chart/connection-activity" => charts::connection_activity(shared, &query),
        "/api/v1/chart/endpoint-costs" => charts::endpoint_costs(shared, &query).await,
        "/api/v1/chart/suspended-trends" => charts::suspended_trends(shared, &query),
        "/api/v1/tokens/usage" => charts::tokens_usage(shared, &query),
        "/api/v1/metrics/history" => charts::metrics_history(shared, &query),
        "/api/v1/config" => ok(views::config_view(shared)),
        "/api/v1/config/status" => ok(json!({
            "reload_enabled": shared.forwarder.reload_enabled(),
            "last_reload": shared.forwarder.reload_status(),
        })),
        "/api/v1/config/reload" => reload_config(shared).await,
        "/api/v1/stream" => stream::open(shared, &query),
        "/api/v1/openapi.json" => Ok(Answer::Response(bytes_response(
            StatusCode::OK,
            OPENAPI,
            "application/json",
        ))),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("route {other} has no handler"),
        )),
    }
}

/// `POST /api/v1/config/reload`: re-reads the configuration file (with the same environment and
/// command-line layers) and applies it; a rejected file answers 422 and changes nothing.
async fn reload_config(shared: &Shared) -> Handled {
    let forwarder = shared.forwarder.clone();
    // Reading and validating the file is blocking IO.
    let status = tokio::task::spawn_blocking(move || forwarder.request_reload("api"))
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("reload task failed: {error}"),
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_unavailable",
                "hot reload is off: the forwarder was not started from a configuration file",
            )
        })?;
    match &status.error {
        None => ok(json!({
            "success": true,
            "message": "configuration reloaded",
            "reload": status,
        })),
        Some(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "config_rejected",
            format!("the new configuration was rejected, the old one stays: {error}"),
        )),
    }
}

fn set_priority(shared: &Shared, name: &str, body: Option<Value>) -> Handled {
    let priority = body
        .as_ref()
        .and_then(|body| body.get("priority"))
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_priority",
                "the body must be {\"priority\": n} with an integer n >= 1",
            )
        })?;
    let priority = u32::try_from(priority)
        .ok()
        .filter(|priority| *priority >= 1)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_priority", "priority must be an integer >= 1")
        })?;
    shared
        .forwarder
        .set_endpoint_priority(name, priority)
        .map_err(|error| ApiError::router(&error))?;
    ok(json!({
        "success": true,
        "message": format!("endpoint {name} priority set to {priority} (in memory, not saved to the file)"),
        "endpoint": name,
        "priority": priority,
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

async fn health_check(shared: &Shared, name: &str) -> Handled {
    let Some(health) = shared.forwarder.health().check_now(name).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            format!("unknown endpoint `{name}`"),
        ));
    };
    ok(json!({
        "success": true,
        "message": format!("endpoint {name} is {}", if health.healthy { "healthy" } else { "unhealthy" }),
        "endpoint": name,
        "healthy": health.healthy,
        "response_time": health.last_latency.map(crate::http_util::go_duration).unwrap_or_else(|| "0s".into()),
        "response_time_ms": health.last_latency.map(|latency| latency.as_millis() as u64),
        "last_check": health.last_check.map(rfc3339).unwrap_or_default(),
        "never_checked": health.never_checked,
        "error": health.last_error.unwrap_or_default(),
        "consecutive_fails": health.consecutive_failures,
    }))
}

fn pause_group(shared: &Shared, name: &str, body: Option<Value>) -> Handled {
    let duration = match body.as_ref().and_then(|body| body.get("duration")) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => None,
        Some(Value::String(text)) => Some(parse_duration(text)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_duration",
                "duration must be a string such as \"30m\" or \"1h30m\"",
            ))
        }
    };
    shared
        .forwarder
        .pause_group(name, duration)
        .map_err(|error| ApiError::router(&error))?;
    let message = match duration {
        Some(duration) => format!(
            "group {name} paused for {}",
            crate::http_util::go_duration(duration)
        ),
        None => format!("group {name} paused until resumed"),
    };
    ok(json!({
        "success": true,
        "message": message,
        "group": name,
        "duration": duration.map(crate::http_util::go_duration),
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

fn parse_duration(text: &str) -> Result<Duration, ApiError> {
    let duration = ccf_config::GoDuration::parse(text.trim())
        .map_err(|error| {
            ApiError::bad_request(
                "invalid_duration",
                format!("invalid duration `{text}`: {error}"),
            )
        })?
        .get();
    if duration.is_zero() {
        return Err(ApiError::bad_request(
            "invalid_duration",
            "duration must be greater than zero (omit it to pause until resumed)",
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_in_the_openapi_document() {
        let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let paths = document["paths"].as_object().expect("paths");
        for (method, pattern) in ROUTES {
            let operation = &paths
                .get(*pattern)
                .unwrap_or_else(|| panic!("{pattern} missing from openapi.json"))
                [method.to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {pattern} missing from openapi.json"
            );
        }
        let described: usize = paths
            .values()
            .map(|item| item.as_object().map_or(0, |ops| ops.len()))
            .sum();
        assert_eq!(
            described,
            ROUTES.len(),
            "openapi.json describes routes that do not exist"
        );
    }

    #[test]
    fn patterns_match_segments_and_decode_names() {
        let params = match_pattern(
            "/api/v1/groups/{name}/pause",
            "/api/v1/groups/my%20group/pause",
        )
        .expect("matches");
        assert_eq!(params.get("name").map(String::as_str), Some("my group"));
        assert!(match_pattern("/api/v1/groups/{name}/pause", "/api/v1/groups//pause").is_none());
        assert!(match_pattern("/api/v1/groups", "/api/v1/groups/x").is_none());
    }
}
