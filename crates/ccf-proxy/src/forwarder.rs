//! The forwarding engine: admit -> route -> forward -> relay -> finish.
//!
//! [`Forwarder`] is cheap to clone (one `Arc`) and is a hyper `Service`, so it can be served on
//! any listener or mounted inside another hyper application. Per request it:
//! 1. admits: monitoring routes, inbound auth, reads the body once (bounded) as `Bytes`, parses
//!    `model` and `stream` from the JSON, gives the request its [`RequestId`];
//! 2. routes: asks [`crate::route::candidates`] for the endpoints to try;
//! 3. forwards: rewrites headers, sends on the shared pooled client within the response-header
//!    timeout; an attempt that gets no answer moves on to the next endpoint (the body is replayed
//!    from the same `Bytes`, never copied);
//! 4. relays: passes the upstream status, headers and body frames through untouched;
//! 5. finishes: logs and counts the outcome when the body ends, fails or the client leaves.
//!
//! Cancellation: when the client disconnects, hyper drops the response future or body; the
//! upstream request or body is dropped with it, which closes the upstream connection at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_config::{Config, Endpoint};
use ccf_lifecycle::RequestId;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tracing::{debug, info, warn, Instrument};

use crate::auth::InboundAuth;
use crate::body::{BoxError, ProxyBody, RelayBody, RelayEnd, RelayObserver};
use crate::client::{build_upstream_client, ClientBuildError, UpstreamClient};
use crate::error::ProxyError;
use crate::headers::{remove_hop_by_hop, rewrite_request_headers, X_CCF_REQUEST_ID};
use crate::monitoring::{self, EndpointStates, Metrics};
use crate::route;

/// Time allowed to open a TCP (and TLS) connection to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a [`Forwarder`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream client (TLS, outbound proxy) could not be set up.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// The forwarding engine. Clone it freely; clones share everything.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    endpoints: Vec<Arc<Endpoint>>,
    client: UpstreamClient,
    auth: Option<InboundAuth>,
    states: Arc<EndpointStates>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("endpoints", &self.shared.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// What the engine needs to know about the request body.
#[derive(serde::Deserialize, Default)]
struct BodyProbe {
    model: Option<String>,
    stream: Option<bool>,
}

impl Forwarder {
    /// Builds the engine from a validated configuration.
    pub fn build(config: Arc<Config>) -> Result<Forwarder, BuildError> {
        let client = build_upstream_client(&config.proxy, CONNECT_TIMEOUT)?;
        let endpoints: Vec<Arc<Endpoint>> =
            config.endpoints.iter().cloned().map(Arc::new).collect();
        let auth = config
            .auth
            .enabled
            .then(|| config.auth.token.clone().map(InboundAuth::new))
            .flatten();
        let states = Arc::new(EndpointStates::new(&endpoints));
        Ok(Forwarder {
            shared: Arc::new(Shared {
                config,
                endpoints,
                client,
                auth,
                states,
                metrics: Arc::new(Metrics::new()),
            }),
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Serves one request. Never fails: every failure becomes an Anthropic-format response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let request_id = RequestId::generate();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            path = %request.uri().path(),
        );
        let mut response = self
            .handle_inner(request, request_id)
            .instrument(span)
            .await;
        if let Ok(value) = HeaderValue::try_from(request_id.to_string()) {
            response.headers_mut().insert(X_CCF_REQUEST_ID, value);
        }
        response
    }

    async fn handle_inner<B>(
        &self,
        request: Request<B>,
        request_id: RequestId,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        if let Some(response) = monitoring::respond(
            request.method(),
            request.uri().path(),
            &shared.endpoints,
            &shared.states,
            &shared.metrics,
        ) {
            return response;
        }
        let in_flight = shared.metrics.in_flight_guard();
        let started = Instant::now();
        if let Some(auth) = shared
            .auth
            .as_ref()
            .filter(|_| !is_reachability_check(&request))
        {
            if let Err(error) = auth.check(request.headers()) {
                info!(status = 401, "rejected: {error}");
                shared.metrics.record_request("", error.status());
                return error.to_response();
            }
        }
        let (parts, body) = request.into_parts();
        let body = match read_body(
            body,
            parts.headers.get(header::CONTENT_LENGTH),
            shared.config.server.max_request_body_size.bytes(),
        )
        .await
        {
            Ok(bytes) => bytes,
            Err(error) => {
                info!(status = error.status().as_u16(), "rejected: {error}");
                shared.metrics.record_request("", error.status());
                return error.to_response();
            }
        };
        let probe = probe_body(&parts.headers, &body);
        let is_streaming = probe.stream == Some(true)
            || parts
                .headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
        info!(
            model = probe.model.as_deref().unwrap_or("unknown"),
            streaming = is_streaming,
            body_bytes = body.len(),
            "request started"
        );

        let candidates = route::candidates(&shared.endpoints, &shared.states);
        let mut last_error = ProxyError::NoEndpoint;
        for endpoint in candidates {
            match self.attempt(&parts, &body, &endpoint, is_streaming).await {
                Ok(upstream) => {
                    return self.relay(upstream, endpoint, is_streaming, started, in_flight);
                }
                Err(error) => {
                    warn!(endpoint = %endpoint.name, "attempt failed: {error}");
                    if error.is_retryable() {
                        shared.states.record_failure(&endpoint.name);
                        shared.metrics.record_upstream_failure(&endpoint);
                        last_error = error;
                        continue;
                    }
                    last_error = error;
                    break;
                }
            }
        }
        let _ = request_id;
        warn!(
            status = last_error.status().as_u16(),
            "request failed: {last_error}"
        );
        shared.metrics.record_request("", last_error.status());
        last_error.to_response()
    }

    /// One attempt on one endpoint: `Ok` as soon as upstream response headers arrive.
    async fn attempt(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        endpoint: &Endpoint,
        is_streaming: bool,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        let shared = &self.shared;
        let uri = upstream_uri(endpoint, &parts.uri)?;
        let headers = rewrite_request_headers(&parts.headers, endpoint).map_err(|error| {
            ProxyError::BadUpstreamUrl {
                endpoint: endpoint.name.clone(),
                message: error.to_string(),
            }
        })?;
        let mut upstream_request = Request::new(Full::new(body.clone()));
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = headers;
        let header_timeout = if is_streaming {
            shared.config.streaming.response_header_timeout.get()
        } else {
            shared
                .config
                .streaming
                .response_header_timeout
                .get()
                .min(endpoint.timeout)
        };
        debug!(endpoint = %endpoint.name, group = %endpoint.group, "forwarding");
        let sent = Instant::now();
        match tokio::time::timeout(header_timeout, shared.client.request(upstream_request)).await {
            Ok(Ok(response)) => {
                let latency = sent.elapsed();
                shared.states.record_answer(&endpoint.name, latency);
                shared.metrics.record_header_latency(latency);
                Ok(response)
            }
            Ok(Err(error)) => Err(ProxyError::Connect {
                endpoint: endpoint.name.clone(),
                source: Box::new(error),
            }),
            Err(_elapsed) => Err(ProxyError::HeaderTimeout {
                endpoint: endpoint.name.clone(),
                timeout: header_timeout,
            }),
        }
    }

    /// Hands the upstream answer to the client, frames untouched.
    fn relay(
        &self,
        upstream: Response<hyper::body::Incoming>,
        endpoint: Arc<Endpoint>,
        is_streaming: bool,
        started: Instant,
        in_flight: monitoring::InFlightGuard,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let (mut parts, body) = upstream.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let status = parts.status;
        info!(endpoint = %endpoint.name, group = %endpoint.group, status = status.as_u16(), "upstream answered");
        shared.metrics.record_request(&endpoint.name, status);
        let total_limit =
            (!is_streaming).then(|| endpoint.timeout.saturating_sub(started.elapsed()));
        let observer = FinishLogger {
            endpoint: endpoint.name.clone(),
            status,
            started,
            body_bytes: 0,
            span: tracing::Span::current(),
            _in_flight: in_flight,
        };
        let relay = RelayBody::new(
            body,
            Some(shared.config.streaming.max_idle_time.get()).filter(|d| !d.is_zero()),
            total_limit,
            Box::new(observer),
        );
        Response::from_parts(parts, relay.boxed_unsync())
    }
}

/// Logs how a relayed response ended.
struct FinishLogger {
    endpoint: String,
    status: StatusCode,
    started: Instant,
    body_bytes: u64,
    span: tracing::Span,
    _in_flight: monitoring::InFlightGuard,
}

impl RelayObserver for FinishLogger {
    fn on_data(&mut self, data: &Bytes) {
        self.body_bytes += data.len() as u64;
    }

    fn on_end(self: Box<Self>, end: RelayEnd) {
        let _entered = self.span.enter();
        let duration_ms = self.started.elapsed().as_millis();
        match end {
            RelayEnd::Complete => info!(
                endpoint = %self.endpoint,
                status = self.status.as_u16(),
                duration_ms,
                body_bytes = self.body_bytes,
                "request completed"
            ),
            RelayEnd::ClientGone => info!(
                endpoint = %self.endpoint,
                duration_ms,
                body_bytes = self.body_bytes,
                "client disconnected; upstream request cancelled"
            ),
            other => warn!(
                endpoint = %self.endpoint,
                duration_ms,
                body_bytes = self.body_bytes,
                "response cut: {other:?}"
            ),
        }
    }
}

/// Claude Code probes `HEAD /api/hello` (older versions `HEAD /`) without credentials before its
/// first request; such body-less reachability checks skip inbound auth.
fn is_reachability_check<B>(request: &Request<B>) -> bool {
    request.method() == http::Method::HEAD && matches!(request.uri().path(), "/" | "/api/hello")
}

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body<B>(
    body: B,
    content_length: Option<&HeaderValue>,
    limit: u64,
) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = content_length
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(error) => Err(ProxyError::BodyRead { source: error }),
    }
}

/// Reads `model` and `stream` from a JSON body; anything else yields an empty probe.
fn probe_body(headers: &http::HeaderMap, body: &Bytes) -> BodyProbe {
    let looks_like_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|content_type| content_type.contains("json"))
        && body.first().is_some_and(|byte| *byte == b'{');
    if !looks_like_json {
        return BodyProbe::default();
    }
    serde_json::from_slice(body).unwrap_or_default()
}

/// `endpoint.url` + request path + query; the endpoint URL may carry a path prefix.
fn upstream_uri(endpoint: &Endpoint, request_uri: &Uri) -> Result<Uri, ProxyError> {
    let base = endpoint.url.as_str().trim_end_matches('/');
    let path_and_query = request_uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let joined = if endpoint.url.query().is_some() {
        // A base URL with its own query cannot be prefixed; join path only.
        return Err(ProxyError::BadUpstreamUrl {
            endpoint: endpoint.name.clone(),
            message: "the endpoint url must not carry a query string".into(),
        });
    } else {
        format!("{base}{path_and_query}")
    };
    joined
        .parse()
        .map_err(|error: http::uri::InvalidUri| ProxyError::BadUpstreamUrl {
            endpoint: endpoint.name.clone(),
            message: error.to_string(),
        })
}

impl<B> hyper::service::Service<Request<B>> for Forwarder
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let forwarder = self.clone();
        Box::pin(async move { Ok(forwarder.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            name: "e".into(),
            url: url::Url::parse(url).unwrap(),
            priority: 0,
            group: "g".into(),
            group_priority: 1,
            token: None,
            api_key: None,
            timeout: Duration::from_secs(1),
            headers: vec![],
            supports_count_tokens: false,
        }
    }

    #[test]
    fn joins_base_path_prefix_request_path_and_query() {
        let check = |base: &str, request: &str, expected: &str| {
            let uri = upstream_uri(&endpoint(base), &request.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), expected, "{base} + {request}");
        };
        check(
            "https://api.anthropic.com",
            "/v1/messages",
            "https://api.anthropic.com/v1/messages",
        );
        check(
            "https://relay.example/api",
            "/v1/messages?beta=true",
            "https://relay.example/api/v1/messages?beta=true",
        );
        check(
            "https://relay.example/api/",
            "/v1/models",
            "https://relay.example/api/v1/models",
        );
        check("http://127.0.0.1:9000", "/", "http://127.0.0.1:9000/");
    }

    #[test]
    fn stream_is_read_from_the_json_body_not_from_substrings() {
        let headers = http::HeaderMap::new();
        let probe = probe_body(
            &headers,
            &Bytes::from_static(br#"{"model":"m","stream":true}"#),
        );
        assert_eq!(probe.stream, Some(true));
        assert_eq!(probe.model.as_deref(), Some("m"));
        let text_mentions_stream = probe_body(
            &headers,
            &Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"\"stream\":true"}]}"#,
            ),
        );
        assert_eq!(text_mentions_stream.stream, None);
        assert_eq!(
            probe_body(&headers, &Bytes::from_static(b"not json")).stream,
            None
        );
    }
}
