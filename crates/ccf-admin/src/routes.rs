//! The routes of the admin API as a type: [`AdminRoute`] names every route with its path
//! parameters, [`AdminRoute::TABLE`] gives each one its method and path pattern (the one list
//! `openapi.json` is checked against), and [`AdminRoute::parse`] turns a method and a path into a
//! route, or into the 404 / 405 the client gets.
//!
//! What each route does is [`crate::dispatch::dispatch`]'s one exhaustive `match`: a variant
//! without a handler does not compile, and a variant without a table entry is never built (the
//! `dead_code` lint, an error under `clippy -D warnings`).

use http::Method;

/// The hand-written OpenAPI document.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Every route of the admin API. Path parameters are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminRoute {
    /// `GET /api/v1/status`.
    Status,
    /// `GET /api/v1/endpoints`.
    Endpoints,
    /// `GET /api/v1/endpoints/performance`.
    EndpointsPerformance,
    /// `POST /api/v1/endpoints/{name}/priority`.
    SetEndpointPriority { name: String },
    /// `POST /api/v1/endpoints/{name}/health-check`.
    CheckEndpointHealth { name: String },
    /// `GET /api/v1/groups`.
    Groups,
    /// `GET /api/v1/routing/honesty`.
    RoutingHonesty,
    /// `GET /api/v1/routing/affinity`.
    RoutingAffinity,
    /// `GET /api/v1/routing/quota`.
    RoutingQuota,
    /// `GET /api/v1/routing/model-rules` (issue 20).
    RoutingModelRules,
    /// `POST /api/v1/groups/{name}/activate`.
    ActivateGroup { name: String },
    /// `POST /api/v1/groups/{name}/pause`.
    PauseGroup { name: String },
    /// `POST /api/v1/groups/{name}/resume`.
    ResumeGroup { name: String },
    /// `GET /api/v1/keys`: inbound API keys' limits and usage.
    Keys,
    /// `GET /api/v1/connections`.
    Connections,
    /// `GET /api/v1/requests`.
    LiveRequests,
    /// `GET /api/v1/requests/{id}`.
    RequestDetail { id: String },
    /// `GET /api/v1/usage/requests`.
    UsageRequests,
    /// `GET /api/v1/usage/stats`.
    UsageStats,
    /// `GET /api/v1/usage/export`.
    UsageExport,
    /// `POST /api/v1/usage/export/ticket`: a single-use download ticket for one export query.
    UsageExportTicket,
    /// `GET /api/v1/usage/summary`.
    UsageSummary,
    /// `GET /api/v1/usage/models`.
    UsageModels,
    /// `GET /api/v1/chart/request-trends`.
    ChartRequestTrends,
    /// `GET /api/v1/chart/response-times`.
    ChartResponseTimes,
    /// `GET /api/v1/chart/endpoint-health`.
    ChartEndpointHealth,
    /// `GET /api/v1/chart/connection-activity`.
    ChartConnectionActivity,
    /// `GET /api/v1/chart/endpoint-costs`.
    ChartEndpointCosts,
    /// `GET /api/v1/chart/suspended-trends`.
    ChartSuspendedTrends,
    /// `GET /api/v1/suspended/requests` (the Go route): the requests held now, with history.
    SuspendedRequests,
    /// `GET /api/v1/tokens/usage`.
    TokensUsage,
    /// `GET /api/v1/metrics/history`.
    MetricsHistory,
    /// `GET /api/v1/config`.
    Config,
    /// `GET /api/v1/config/status`.
    ConfigStatus,
    /// `POST /api/v1/config/reload`.
    ReloadConfig,
    /// `GET /api/v1/webhooks`.
    Webhooks,
    /// `GET /api/v1/stream`.
    Stream,
    /// `GET /api/v1/openapi.json`.
    OpenApi,
}

/// One row of [`AdminRoute::TABLE`].
pub(crate) struct RouteSpec {
    /// `GET` or `POST` (a `GET` route answers `HEAD` too).
    pub(crate) method: &'static str,
    /// The path; a `{name}` or `{id}` segment matches one non-empty segment.
    pub(crate) pattern: &'static str,
    /// The route, from the pattern's one `{…}` segment, decoded (empty when it has none).
    build: fn(String) -> AdminRoute,
}

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No route has this path (404 `not_found`).
    NotFound,
    /// Routes have this path, with other methods (405 `method_not_allowed` with `Allow`).
    MethodNotAllowed {
        /// The methods they accept, in table order.
        allow: Vec<&'static str>,
    },
}

const fn get(pattern: &'static str, build: fn(String) -> AdminRoute) -> RouteSpec {
    RouteSpec {
        method: "GET",
        pattern,
        build,
    }
}

const fn post(pattern: &'static str, build: fn(String) -> AdminRoute) -> RouteSpec {
    RouteSpec {
        method: "POST",
        pattern,
        build,
    }
}

impl AdminRoute {
    /// Every route: its method, its path pattern and how it is built from the path. The order
    /// is the order of `Allow` values and of the OpenAPI check.
    pub(crate) const TABLE: &'static [RouteSpec] = &[
        get("/api/v1/status", |_| AdminRoute::Status),
        get("/api/v1/endpoints", |_| AdminRoute::Endpoints),
        get("/api/v1/endpoints/performance", |_| {
            AdminRoute::EndpointsPerformance
        }),
        post("/api/v1/endpoints/{name}/priority", |name| {
            AdminRoute::SetEndpointPriority { name }
        }),
        post("/api/v1/endpoints/{name}/health-check", |name| {
            AdminRoute::CheckEndpointHealth { name }
        }),
        get("/api/v1/groups", |_| AdminRoute::Groups),
        get("/api/v1/routing/honesty", |_| AdminRoute::RoutingHonesty),
        get("/api/v1/routing/affinity", |_| AdminRoute::RoutingAffinity),
        get("/api/v1/routing/quota", |_| AdminRoute::RoutingQuota),
        get("/api/v1/routing/model-rules", |_| {
            AdminRoute::RoutingModelRules
        }),
        post("/api/v1/groups/{name}/activate", |name| {
            AdminRoute::ActivateGroup { name }
        }),
        post("/api/v1/groups/{name}/pause", |name| {
            AdminRoute::PauseGroup { name }
        }),
        post("/api/v1/groups/{name}/resume", |name| {
            AdminRoute::ResumeGroup { name }
        }),
        get("/api/v1/keys", |_| AdminRoute::Keys),
        get("/api/v1/connections", |_| AdminRoute::Connections),
        get("/api/v1/requests", |_| AdminRoute::LiveRequests),
        get("/api/v1/requests/{id}", |id| AdminRoute::RequestDetail {
            id,
        }),
        get("/api/v1/usage/requests", |_| AdminRoute::UsageRequests),
        get("/api/v1/usage/stats", |_| AdminRoute::UsageStats),
        get("/api/v1/usage/export", |_| AdminRoute::UsageExport),
        post("/api/v1/usage/export/ticket", |_| {
            AdminRoute::UsageExportTicket
        }),
        get("/api/v1/usage/summary", |_| AdminRoute::UsageSummary),
        get("/api/v1/usage/models", |_| AdminRoute::UsageModels),
        get("/api/v1/chart/request-trends", |_| {
            AdminRoute::ChartRequestTrends
        }),
        get("/api/v1/chart/response-times", |_| {
            AdminRoute::ChartResponseTimes
        }),
        get("/api/v1/chart/endpoint-health", |_| {
            AdminRoute::ChartEndpointHealth
        }),
        get("/api/v1/chart/connection-activity", |_| {
            AdminRoute::ChartConnectionActivity
        }),
        get("/api/v1/chart/endpoint-costs", |_| {
            AdminRoute::ChartEndpointCosts
        }),
        get("/api/v1/chart/suspended-trends", |_| {
            AdminRoute::ChartSuspendedTrends
        }),
        get("/api/v1/suspended/requests", |_| {
            AdminRoute::SuspendedRequests
        }),
        get("/api/v1/tokens/usage", |_| AdminRoute::TokensUsage),
        get("/api/v1/metrics/history", |_| AdminRoute::MetricsHistory),
        get("/api/v1/config", |_| AdminRoute::Config),
        get("/api/v1/config/status", |_| AdminRoute::ConfigStatus),
        post("/api/v1/config/reload", |_| AdminRoute::ReloadConfig),
        get("/api/v1/webhooks", |_| AdminRoute::Webhooks),
        get("/api/v1/stream", |_| AdminRoute::Stream),
        get("/api/v1/openapi.json", |_| AdminRoute::OpenApi),
    ];

    /// The route `method` and `path` ask for. A trailing `/` is ignored; `HEAD` reads a `GET`
    /// route.
    pub(crate) fn parse(method: &Method, path: &str) -> Result<AdminRoute, RouteError> {
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let mut allow = Vec::new();
        let mut found = None;
        for spec in Self::TABLE {
            let Some(parameter) = match_pattern(spec.pattern, path) else {
                continue;
            };
            allow.push(spec.method);
            let accepted =
                method.as_str() == spec.method || (method == Method::HEAD && spec.method == "GET");
            if accepted && found.is_none() {
                found = Some((spec.build)(parameter));
            }
        }
        match found {
            Some(route) => Ok(route),
            None if allow.is_empty() => Err(RouteError::NotFound),
            None => Err(RouteError::MethodNotAllowed { allow }),
        }
    }

    /// Whether the route also takes its token as `?access_token=` (a browser's `EventSource`
    /// and download links cannot set headers).
    pub(crate) fn accepts_query_token(&self) -> bool {
        matches!(self, AdminRoute::Stream | AdminRoute::UsageExport)
    }
}

/// The pattern's one `{…}` segment of `path`, decoded (`""` for a pattern without one); `None`
/// when `path` does not match.
fn match_pattern(pattern: &str, path: &str) -> Option<String> {
    let pattern_segments = pattern.split('/');
    let path_segments = path.split('/');
    if pattern_segments.clone().count() != path_segments.clone().count() {
        return None;
    }
    let mut parameter = String::new();
    for (expected, actual) in pattern_segments.zip(path_segments) {
        if expected.starts_with('{') && expected.ends_with('}') {
            if actual.is_empty() {
                return None;
            }
            parameter = percent_decode(actual);
        } else if expected != actual {
            return None;
        }
    }
    Some(parameter)
}

/// A path segment with `%XX` escapes decoded (`+` stays a plus).
fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| segment.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_route_is_described_in_the_openapi_document() {
        let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let paths = document["paths"].as_object().expect("paths");
        for spec in AdminRoute::TABLE {
            let operation = &paths
                .get(spec.pattern)
                .unwrap_or_else(|| panic!("{} missing from openapi.json", spec.pattern))
                [spec.method.to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {} missing from openapi.json",
                spec.method,
                spec.pattern
            );
        }
        let described: usize = paths
            .values()
            .map(|item| item.as_object().map_or(0, |ops| ops.len()))
            .sum();
        assert_eq!(
            described,
            AdminRoute::TABLE.len(),
            "openapi.json describes routes that do not exist"
        );
    }

    /// The operator's reference, `docs/api.md`.
    const API_DOCS: &str = include_str!("../../../docs/api.md");

    /// Every `METHOD /api/...` a document names: in `docs/api.md` the code spans (a query string,
    /// an optional `[?force=true]` and prose after the path are not part of the route); in
    /// `openapi.json` the operations of every path.
    fn documented_routes(markdown: &str) -> std::collections::BTreeSet<(String, String)> {
        const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
        markdown
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|span| {
                let (method, rest) = span.split_once(' ')?;
                // `/metrics` and the dashboard are on other ports or outside the API.
                if !METHODS.contains(&method) || !rest.starts_with("/api/") {
                    return None;
                }
                let path = rest.split(['?', '[', ' ']).next().unwrap_or(rest);
                Some((method.to_string(), path.to_string()))
            })
            .collect()
    }

    #[test]
    fn docs_api_md_and_openapi_json_describe_the_same_routes() {
        let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let described: std::collections::BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flat_map(|operations| operations.keys())
                    .map(move |method| (method.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let documented = documented_routes(API_DOCS);
        let undocumented: Vec<_> = described.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "in openapi.json but not in docs/api.md: {undocumented:?}"
        );
        let unknown: Vec<_> = documented.difference(&described).collect();
        assert!(
            unknown.is_empty(),
            "in docs/api.md but not in openapi.json: {unknown:?}"
        );
    }

    #[test]
    fn documented_routes_reads_code_spans_only() {
        let routes = documented_routes(
            "| `GET /api/v1/a?x=1` | `POST /api/v1/b/{name}/go[?force=true]` | GET /api/v1/c | `GET /metrics` |",
        );
        let expected: Vec<(String, String)> = vec![
            ("GET".into(), "/api/v1/a".into()),
            ("POST".into(), "/api/v1/b/{name}/go".into()),
        ];
        assert_eq!(routes.into_iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn every_route_parses_back_from_its_pattern_and_only_one_route_has_a_path() {
        for spec in AdminRoute::TABLE {
            let path = spec
                .pattern
                .replace("{name}", "some%20name")
                .replace("{id}", "req-1");
            let method = Method::from_bytes(spec.method.as_bytes()).expect("method");
            let parameter = if spec.pattern.contains("{name}") {
                "some name"
            } else if spec.pattern.contains("{id}") {
                "req-1"
            } else {
                ""
            };
            assert_eq!(
                AdminRoute::parse(&method, &path),
                Ok((spec.build)(parameter.to_string())),
                "{} {}",
                spec.method,
                spec.pattern
            );
            let twins = AdminRoute::TABLE
                .iter()
                .filter(|other| other.pattern == spec.pattern && other.method == spec.method)
                .count();
            assert_eq!(twins, 1, "{} {} twice", spec.method, spec.pattern);
        }
    }

    #[test]
    fn paths_parse_to_routes_404_or_405() {
        let check = |method: Method, path: &str, expected: Result<AdminRoute, RouteError>| {
            assert_eq!(
                AdminRoute::parse(&method, path),
                expected,
                "{method} {path}"
            );
        };
        check(
            Method::POST,
            "/api/v1/groups/my%20group/pause",
            Ok(AdminRoute::PauseGroup {
                name: "my group".into(),
            }),
        );
        check(
            Method::POST,
            "/api/v1/endpoints/a+b/priority",
            Ok(AdminRoute::SetEndpointPriority { name: "a+b".into() }),
        );
        check(Method::GET, "/api/v1/status/", Ok(AdminRoute::Status));
        check(Method::HEAD, "/api/v1/groups", Ok(AdminRoute::Groups));
        check(
            Method::GET,
            "/api/v1/requests/req-00ff",
            Ok(AdminRoute::RequestDetail {
                id: "req-00ff".into(),
            }),
        );
        check(
            Method::GET,
            "/api/v1/groups//pause",
            Err(RouteError::NotFound),
        );
        check(Method::GET, "/api/v1/groups/x", Err(RouteError::NotFound));
        check(Method::GET, "/api/v1", Err(RouteError::NotFound));
        check(
            Method::GET,
            "/api/v1/groups/main/pause",
            Err(RouteError::MethodNotAllowed {
                allow: vec!["POST"],
            }),
        );
        check(
            Method::DELETE,
            "/api/v1/groups",
            Err(RouteError::MethodNotAllowed { allow: vec!["GET"] }),
        );
        check(
            Method::HEAD,
            "/api/v1/config/reload",
            Err(RouteError::MethodNotAllowed {
                allow: vec!["POST"],
            }),
        );
    }

    #[test]
    fn only_the_stream_and_the_export_take_a_query_token() {
        let takers: Vec<&str> = AdminRoute::TABLE
            .iter()
            .filter(|spec| (spec.build)(String::new()).accepts_query_token())
            .map(|spec| spec.pattern)
            .collect();
        assert_eq!(takers, ["/api/v1/usage/export", "/api/v1/stream"]);
    }
}
