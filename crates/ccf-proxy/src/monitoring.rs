//! Monitoring on the proxy port: `/health`, `/health/detailed` and `/metrics`.
//!
//! Endpoint health comes from the health monitor (active probes plus what real requests
//! observed); the JSON shapes follow the Go original (reference section 9.6) so existing monitors
//! keep working, with correct UTC timestamps.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ccf_config::Endpoint;
use ccf_health::{EndpointHealth, HealthSnapshot};
use http::{header, HeaderValue, Method, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::body::{empty_body, full_body, ProxyBody};
use crate::error::anthropic_error_response;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    name: String,
    url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

/// The Prometheus registry of the engine.
pub struct Metrics {
    registry: Registry,
    endpoints_total: Gauge,
    endpoints_healthy: Gauge,
    endpoint_healthy: Family<EndpointLabels, Gauge>,
    endpoint_response_time_ms: Family<EndpointLabels, Gauge>,
    endpoint_consecutive_fails: Family<EndpointLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    cancelled: Counter,
    outcomes: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    upstream_failures: Family<EndpointLabels, Counter>,
    in_flight: Gauge,
    header_latency: Histogram,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            endpoints_total: Gauge::default(),
            endpoints_healthy: Gauge::default(),
            endpoint_healthy: Family::default(),
            endpoint_response_time_ms: Family::default(),
            endpoint_consecutive_fails: Family::default(),
            requests: Family::default(),
            cancelled: Counter::default(),
            outcomes: Family::default(),
            tokens: Family::default(),
            upstream_failures: Family::default(),
            in_flight: Gauge::default(),
            header_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            registry: Registry::default(),
        };
        registry.register(
            "endpoint_forwarder_endpoints_total",
            "Configured upstream endpoints",
            metrics.endpoints_total.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoints_healthy",
            "Upstream endpoints currently healthy",
            metrics.endpoints_healthy.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_healthy",
            "1 when the endpoint is healthy",
            metrics.endpoint_healthy.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_response_time_ms",
            "Latency of the endpoint's last answer in milliseconds",
            metrics.endpoint_response_time_ms.clone(),
        );
        registry.register(
            "endpoint_forwarder_endpoint_consecutive_fails",
            "Consecutive failed attempts on the endpoint",
            metrics.endpoint_consecutive_fails.clone(),
        );
        registry.register(
            "ccf_requests",
            "Client requests answered, by endpoint and status",
            metrics.requests.clone(),
        );
        registry.register(
            "ccf_requests_cancelled",
            "Requests whose client went away before the answer was complete",
            metrics.cancelled.clone(),
        );
        registry.register(
            "ccf_request_outcomes",
            "Requests finished, by final status (completed, failed, cancelled)",
            metrics.outcomes.clone(),
        );
        registry.register(
            "ccf_tokens",
            "Tokens reported by upstreams, by model and kind",
            metrics.tokens.clone(),
        );
        registry.register(
            "ccf_upstream_failures",
            "Attempts that got no answer from the endpoint",
            metrics.upstream_failures.clone(),
        );
        registry.register(
            "ccf_requests_in_flight",
            "Client requests being served",
            metrics.in_flight.clone(),
        );
        registry.register(
            "ccf_upstream_header_latency_seconds",
            "Time from sending a request upstream to its response headers",
            metrics.header_latency.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A request was answered with `status` (`endpoint` empty when none was used).
    pub fn record_request(&self, endpoint: &str, status: StatusCode) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status: status.as_u16().to_string(),
            })
            .inc();
    }

    /// A request finished with `status` (`completed`, `failed`, `cancelled`) and this usage.
    pub fn record_outcome(&self, status: &str, model: &str, usage: &ccf_types::Usage) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                status: status.to_string(),
            })
            .inc();
        if status == "cancelled" {
            self.cancelled.inc();
        }
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
            ("cache_read", usage.cache_read_input_tokens),
        ] {
            if count > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.to_string(),
                        kind,
                    })
                    .inc_by(count);
            }
        }
    }

    /// An attempt on `endpoint` got no answer.
    pub fn record_upstream_failure(&self, endpoint: &Endpoint) {
        self.upstream_failures
            .get_or_create(&EndpointLabels {
                name: endpoint.name.clone(),
                url: endpoint.url.to_string(),
            })
            .inc();
    }

    /// Upstream response headers arrived after `latency`.
    pub fn record_header_latency(&self, latency: Duration) {
        self.header_latency.observe(latency.as_secs_f64());
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn in_flight_guard(&self) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard {
            gauge: self.in_flight.clone(),
        }
    }

    fn render(&self, endpoints: &[Arc<Endpoint>], health: &HealthSnapshot) -> String {
        let mut healthy = 0;
        for endpoint in endpoints {
            let state = endpoint_health(health, &endpoint.name);
            let labels = EndpointLabels {
                name: endpoint.name.clone(),
                url: endpoint.url.to_string(),
            };
            healthy += i64::from(state.healthy);
            self.endpoint_healthy
                .get_or_create(&labels)
                .set(i64::from(state.healthy));
            self.endpoint_response_time_ms.get_or_create(&labels).set(
                state.last_latency.map_or(0, |latency| {
                    i64::try_from(latency.as_millis()).unwrap_or(i64::MAX)
                }),
            );
            self.endpoint_consecutive_fails
                .get_or_create(&labels)
                .set(i64::from(state.consecutive_failures));
        }
        self.endpoints_total
            .set(i64::try_from(endpoints.len()).unwrap_or(i64::MAX));
        self.endpoints_healthy.set(healthy);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The monitoring routes, or `None` when `path` is not one of them.
pub fn respond(
    method: &Method,
    path: &str,
    endpoints: &[Arc<Endpoint>],
    health: &HealthSnapshot,
    metrics: &Metrics,
) -> Option<Response<ProxyBody>> {
    if !matches!(path, "/health" | "/health/detailed" | "/metrics") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(anthropic_error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            &format!("{path} accepts GET only"),
        ));
    }
    let response = match path {
        "/metrics" => with_type(
            Response::new(full_body(metrics.render(endpoints, health))),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/health" => health_response(endpoints, health, false),
        _ => health_response(endpoints, health, true),
    };
    Some(if method == Method::HEAD {
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, empty_body())
    } else {
        response
    })
}

#[derive(Serialize)]
struct HealthSummary<'a> {
    status: &'a str,
    healthy_endpoints: usize,
    total_endpoints: usize,
}

#[derive(Serialize)]
struct HealthDetailed<'a> {
    status: &'a str,
    timestamp: String,
    healthy_endpoints: usize,
    total_endpoints: usize,
    endpoints: Vec<EndpointHealthJson>,
}

#[derive(Serialize)]
struct EndpointHealthJson {
    name: String,
    url: String,
    group: String,
    healthy: bool,
    never_checked: bool,
    response_time_ms: u128,
    last_check_time: Option<String>,
    consecutive_fails: u32,
    last_error: Option<String>,
    priority: u32,
}

/// An endpoint's health; an endpoint the monitor does not know reads as never checked.
fn endpoint_health(health: &HealthSnapshot, name: &str) -> EndpointHealth {
    health
        .get(name)
        .cloned()
        .unwrap_or_else(EndpointHealth::unchecked)
}

fn health_response(
    endpoints: &[Arc<Endpoint>],
    health: &HealthSnapshot,
    detailed: bool,
) -> Response<ProxyBody> {
    let snapshots: Vec<(&Arc<Endpoint>, EndpointHealth)> = endpoints
        .iter()
        .map(|endpoint| (endpoint, endpoint_health(health, &endpoint.name)))
        .collect();
    let healthy = snapshots.iter().filter(|(_, state)| state.healthy).count();
    let total = snapshots.len();
    let status = if healthy == 0 {
        "unhealthy"
    } else if healthy < total {
        "degraded"
    } else {
        "healthy"
    };
    let body = if detailed {
        serde_json::to_vec(&HealthDetailed {
            status,
            timestamp: rfc3339(SystemTime::now()),
            healthy_endpoints: healthy,
            total_endpoints: total,
            endpoints: snapshots
                .iter()
                .map(|(endpoint, state)| EndpointHealthJson {
                    name: endpoint.name.clone(),
                    url: endpoint.url.to_string(),
                    group: endpoint.group.clone(),
                    healthy: state.healthy,
                    never_checked: state.never_checked,
                    response_time_ms: state.last_latency.map_or(0, |d| d.as_millis()),
                    last_check_time: state.last_check.map(rfc3339),
                    consecutive_fails: state.consecutive_failures,
                    last_error: state.last_error.clone(),
                    priority: endpoint.priority,
                })
                .collect(),
        })
    } else {
        serde_json::to_vec(&HealthSummary {
            status,
            healthy_endpoints: healthy,
            total_endpoints: total,
        })
    };
    let mut response = with_type(
        Response::new(full_body(Bytes::from(body.unwrap_or_default()))),
        "application/json",
    );
    if healthy == 0 {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

fn with_type(mut response: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Formats a time as RFC 3339 in UTC with milliseconds (`2026-11-26T05:49:31.123Z`).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_136_171_123);
        assert_eq!(rfc3339(time), "2025-11-26T05:49:31.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
