//! The one dispatcher: a request whose `Host` names this server (see
//! [`crate::auth::check_host`]) becomes an [`AdminRoute`] (or a 404 / 405), passes
//! authentication and, for `POST`, the `Origin` check, and goes to its handler through one
//! exhaustive `match`; answers and errors become responses with the security headers. Paths
//! outside `/api/` are the dashboard's files.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body::Body as HttpBody;
use serde_json::{json, Value};

use crate::auth::{check_host, check_origin};
use crate::dto::events::ReloadStatusDto;
use crate::dto::keys::KeysDto;
use crate::dto::to_json;
use crate::error::ApiError;
use crate::http_util::{bytes_response, query_map, read_json_body, AdminResponse};
use crate::routes::{AdminRoute, RouteError, OPENAPI};
use crate::{actions, assets, charts, stream, tickets, usage, views, Shared};

/// What a handler answers.
pub(crate) enum Answer {
    /// JSON, swept for credentials before it is sent.
    Json(StatusCode, Value),
    /// A finished response (streams, exports).
    Response(AdminResponse),
}

/// A handler's result: an answer, or the error the client gets.
pub(crate) type Handled = Result<Answer, ApiError>;

/// A `200` JSON answer.
pub(crate) fn ok(value: Value) -> Handled {
    Ok(Answer::Json(StatusCode::OK, value))
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
    // Before anything else, the dashboard's files included: a DNS-rebound page must get nothing.
    let host_check = check_host(
        request.headers(),
        request
            .uri()
            .authority()
            .map(|authority| authority.as_str()),
        &shared.forwarder.config().web.allowed_hosts,
    );
    let mut response = if let Err(error) = host_check {
        error.into_response()
    } else if api {
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

/// Parses, authenticates and dispatches an `/api/` request.
async fn route<B>(shared: &Arc<Shared>, request: Request<B>, path: &str) -> Handled
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = AdminRoute::parse(request.method(), path).map_err(|error| match error {
        RouteError::NotFound => ApiError::not_found(format!("no admin route {path}")),
        RouteError::MethodNotAllowed { allow } => ApiError::method_not_allowed(&allow),
    })?;
    let query = query_map(request.uri().query());
    // A download link of the dashboard carries a ticket instead of credentials: the ticket is
    // checked (and used up) instead of the token, with or without one configured.
    let ticket = query
        .get("ticket")
        .filter(|_| route == AdminRoute::UsageExport);
    if let Some(ticket) = ticket {
        shared
            .tickets
            .redeem(ticket, &query, std::time::Instant::now())?;
    } else {
        let query_token = query
            .get("access_token")
            .filter(|_| route.accepts_query_token())
            .map(String::as_str);
        shared.auth.check(request.headers(), query_token)?;
    }
    if request.method() == Method::POST {
        check_origin(
            request.headers(),
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str()),
        )?;
    }
    dispatch(shared, route, request, &query).await
}

/// Runs the handler of `route`. One arm per route, no catch-all: a new [`AdminRoute`] variant
/// does not compile until it has a handler here.
async fn dispatch<B>(
    shared: &Arc<Shared>,
    route: AdminRoute,
    request: Request<B>,
    query: &HashMap<String, String>,
) -> Handled
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match route {
        AdminRoute::Status => ok(views::status_view(shared)),
        AdminRoute::Endpoints => ok(views::endpoints_view(shared)),
        AdminRoute::EndpointsPerformance => ok(views::performance_view(shared)),
        AdminRoute::SetEndpointPriority { name } => {
            let body = read_json_body(request.into_body()).await?;
            actions::set_priority(shared, &name, body)
        }
        AdminRoute::CheckEndpointHealth { name } => actions::health_check(shared, &name).await,
        AdminRoute::Groups => ok(views::groups_view(shared)),
        AdminRoute::RoutingHonesty => ok(views::honesty_view(shared)),
        AdminRoute::RoutingAffinity => {
            let limit = query
                .get("limit")
                .and_then(|limit| limit.parse::<usize>().ok())
                .unwrap_or(100)
                .min(1000);
            ok(views::affinity_view(shared, limit))
        }
        AdminRoute::RoutingQuota => ok(views::quota_view(shared)),
        AdminRoute::Keys => ok(to_json(&KeysDto::new(&shared.forwarder.key_limit_views()))),
        AdminRoute::RoutingModelRules => ok(crate::dto::to_json(
            &crate::dto::models::ModelRoutingDto::new(&shared.forwarder.config()),
        )),
        AdminRoute::ActivateGroup { name } => {
            let force = matches!(
                query.get("force").map(String::as_str),
                Some("true" | "1" | "yes")
            );
            actions::activate_group(shared, &name, force)
        }
        AdminRoute::PauseGroup { name } => {
            let body = read_json_body(request.into_body()).await?;
            actions::pause_group(shared, &name, body)
        }
        AdminRoute::ResumeGroup { name } => actions::resume_group(shared, &name),
        AdminRoute::Connections => ok(views::connections_view(shared)),
        AdminRoute::LiveRequests => usage::live_requests(shared),
        AdminRoute::RequestDetail { id } => usage::request_detail(shared, &id).await,
        AdminRoute::UsageRequests => usage::list(shared, query).await,
        AdminRoute::UsageStats => usage::stats(shared, query).await,
        AdminRoute::UsageExport => usage::export(shared, query).await,
        AdminRoute::UsageExportTicket => tickets::issue_ticket(&shared.tickets, query),
        AdminRoute::UsageSummary => usage::summary(shared, query).await,
        AdminRoute::UsageModels => usage::models(shared).await,
        AdminRoute::ChartRequestTrends => charts::request_trends(shared, query),
        AdminRoute::ChartResponseTimes => charts::response_times(shared, query),
        AdminRoute::ChartEndpointHealth => charts::endpoint_health(shared),
        AdminRoute::ChartConnectionActivity => charts::connection_activity(shared, query),
        AdminRoute::ChartEndpointCosts => charts::endpoint_costs(shared, query).await,
        AdminRoute::ChartSuspendedTrends => charts::suspended_trends(shared, query),
        AdminRoute::SuspendedRequests => views::suspended_requests(shared, query),
        AdminRoute::TokensUsage => charts::tokens_usage(shared, query),
        AdminRoute::MetricsHistory => charts::metrics_history(shared, query),
        AdminRoute::Config => ok(views::config_view(shared)),
        AdminRoute::ConfigStatus => ok(json!({
            "reload_enabled": shared.forwarder.reload_enabled(),
            "last_reload": shared.forwarder.reload_status().as_ref().map(ReloadStatusDto::from),
        })),
        AdminRoute::ReloadConfig => actions::reload_config(shared).await,
        AdminRoute::Webhooks => ok(views::webhooks_view(shared)),
        AdminRoute::Stream => stream::open(shared, query),
        AdminRoute::OpenApi => Ok(Answer::Response(bytes_response(
            StatusCode::OK,
            OPENAPI,
            "application/json",
        ))),
    }
}
