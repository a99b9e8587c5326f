//! Phases 0 to 2, admission: an in-flight slot (`server.max_in_flight`, else 529), reachability
//! checks (`HEAD /`, `HEAD /api/hello`) answered here, inbound auth (every path but `/health`,
//! recording the key's name), the monitoring routes, the body read once (bounded in size and,
//! by `server.body_read_timeout`, in time) as `Bytes`, parsed once into a tree borrowing from it
//! ([`Json`]) from which everything is read ([`RequestFields`]: `model`, `stream`, the session's
//! parts; the relay-honesty check's input estimate), and the request's [`RequestId`]-keyed
//! lifecycle. What comes out is a [`RequestContext`] to route, a token count
//! to answer, or an answer already made.
//!
//! It must not know routing, upstreams or retries: nothing here talks to an endpoint.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ccf_lifecycle::{Lifecycle, RequestId, RequestStart};
use ccf_tokens::tree::Json;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tracing::info;

use super::{count_tokens, Forwarder, RequestContext};
use crate::body::{BoxError, ProxyBody};
use crate::error::{anthropic_error_response, ProxyError};
use crate::honesty::Honesty;
use crate::limits::InFlightSlot;
use crate::monitoring;
use crate::tracking::Tracker;

/// How admission ended.
pub(super) enum Admission {
    /// Answered without forwarding: refused (auth, body), or a monitoring route.
    Answered(Response<ProxyBody>),
    /// `POST /v1/messages/count_tokens` with token counting on (`count_tokens.rs`).
    CountTokens {
        parts: http::request::Parts,
        body: Bytes,
    },
    /// A request to route and forward.
    Forward(Box<RequestContext>),
}

/// What the engine needs to know about the request body, read from its one parse.
#[derive(Default)]
struct RequestFields {
    model: Option<String>,
    stream: Option<bool>,
    /// Smart routing's parts (session.rs).
    session: crate::session::BodySession,
}

impl RequestFields {
    /// The fields of a parsed body; a field of an unexpected type reads as absent, and the
    /// others are still read (before issue 19 a typed parse dropped them all).
    fn read(request: &Json<'_>) -> RequestFields {
        RequestFields {
            model: request
                .get("model")
                .and_then(Json::as_str)
                .map(str::to_string),
            stream: request.get("stream").and_then(Json::as_bool),
            session: crate::session::BodySession::read(request),
        }
    }
}

impl Forwarder {
    /// Phase 0: an in-flight slot against `server.max_in_flight`; over it, the refusal (logged
    /// and counted here) to answer. Monitoring routes take none, so they stay answerable when
    /// the forwarder is saturated.
    pub(super) fn in_flight_slot(
        &self,
        path: &str,
        span: &tracing::Span,
    ) -> Result<Option<InFlightSlot>, ProxyError> {
        if crate::limits::is_monitoring_path(path) {
            return Ok(None);
        }
        let limit = usize::try_from(self.shared.current().config.server.max_in_flight)
            .unwrap_or(usize::MAX);
        match self.shared.in_flight_limit.try_acquire(limit) {
            Some(slot) => Ok(Some(slot)),
            None => {
                let error = ProxyError::Overloaded { limit };
                span.in_scope(|| info!(status = 529, "rejected: {error}"));
                self.shared.metrics.record_request("", error.status());
                Err(error)
            }
        }
    }

    /// Phases 1 and 2: inbound auth, monitoring routes, the body, the request fields and the
    /// request's lifecycle.
    pub(super) async fn admit<B>(
        &self,
        request: Request<B>,
        request_id: RequestId,
        client_ip: Option<IpAddr>,
    ) -> Admission
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        let current = shared.current();
        if is_reachability_check(&request) {
            return Admission::Answered(reachability_answer());
        }
        // Inbound auth covers every path but `/health` (`/health/detailed`, `/metrics` and
        // friends included); the name of the matching key is recorded on the request.
        let api_key_name = match current
            .auth
            .as_ref()
            .filter(|_| !crate::auth::is_open_path(request.uri().path()))
        {
            Some(auth) => match auth.check(request.headers()) {
                Ok(name) => Some(name.to_string()),
                Err(error) => {
                    info!(status = 401, "rejected: {error}");
                    shared.metrics.record_request("", error.status());
                    return Admission::Answered(error.to_response());
                }
            },
            None => None,
        };
        if let Some(response) = monitoring::respond(
            request.method(),
            request.uri().path(),
            &current.endpoints,
            &shared.health.snapshot(),
            &shared.metrics,
        ) {
            return Admission::Answered(response);
        }
        let started = Instant::now();
        let started_at = SystemTime::now();
        let (parts, body) = request.into_parts();
        let limit = current.config.server.max_request_body_size.bytes();
        let read_timeout = current.config.server.body_read_timeout.get();
        let reading = read_body(body, parts.headers.get(header::CONTENT_LENGTH), limit);
        let body = match tokio::time::timeout(read_timeout, reading).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                info!(status = error.status().as_u16(), "rejected: {error}");
                shared.metrics.record_request("", error.status());
                return Admission::Answered(error.to_response());
            }
            Err(_elapsed) => {
                // A client that stalls mid-body must not keep its in-flight slot: the slot is
                // released when this answer is returned.
                let status = http::StatusCode::REQUEST_TIMEOUT;
                let message = format!(
                    "the request body was not received within {read_timeout:?} (server.body_read_timeout)"
                );
                info!(status = status.as_u16(), "rejected: {message}");
                shared.metrics.record_request("", status);
                let mut response =
                    anthropic_error_response(status, "invalid_request_error", &message);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Admission::Answered(response);
            }
        };
        if count_tokens::answers(&current.config, &parts) {
            return Admission::CountTokens { parts, body };
        }
        // Per-key limits (keys.rs): budget, rate, then a place in the key's concurrency queue.
        let key_permit = match self.key_permit(api_key_name.as_deref()).await {
            Ok(permit) => permit,
            Err(refused) => return Admission::Answered(refused),
        };
        // The body's one parse: its fields, its session and, for a watched request, the
        // honesty check's input estimate are all read from this tree, which is dropped here.
        let parsed = parse_json_body(&parts.headers, &body);
        let fields = parsed.as_ref().map(RequestFields::read).unwrap_or_default();
        let honesty = Honesty::watch(
            &current.config,
            request_id,
            &parts,
            parsed.as_ref(),
            fields.model.as_deref(),
        );
        drop(parsed);
        let session = crate::session::identify(
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            &fields.session,
        );
        let is_streaming = fields.stream == Some(true)
            || parts
                .headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
        info!(
            model = fields.model.as_deref().unwrap_or("unknown"),
            streaming = is_streaming,
            body_bytes = body.len(),
            "request started"
        );
        let (lifecycle, started_event) = Lifecycle::start(
            RequestStart {
                id: request_id,
                client_ip,
                user_agent: parts
                    .headers
                    .get(header::USER_AGENT)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string),
                method: parts.method.as_str().to_owned(),
                path: parts.uri.path().to_string(),
                is_streaming,
                request_model: fields.model.clone(),
                api_key_name,
            },
            started_at,
        );
        let mut context = Box::new(RequestContext {
            request_id,
            honesty,
            parts,
            body,
            is_streaming,
            started,
            tracker: Some(Tracker::start(
                Arc::clone(&shared.hub),
                lifecycle,
                started_event,
            )),
            in_flight: Some(shared.metrics.in_flight_guard()),
            key_permit,
            attempt_count: 0,
            attempt_sent: started,
            retries: crate::retry::RequestRetries::default(),
            last_attempt_latency: std::time::Duration::ZERO,
            session,
            decision: ccf_router::SessionDecision::default(),
            models: crate::model_map::RequestModelMapping::default(),
            model_route: self.model_route(fields.model.as_deref()),
        });
        if let (Some(session), Some(tracker)) = (session, context.tracker()) {
            tracker.update(|lifecycle| lifecycle.set_session(session.key.text()));
        }
        Admission::Forward(context)
    }
}

/// Claude Code checks reachability with `HEAD /api/hello` (older versions `HEAD /`) without
/// credentials before its first request. Such checks are answered here, with or without inbound
/// auth: they ask whether the forwarder is reachable, which needs no upstream, and forwarding
/// them spent upstream quota with the endpoint's credentials for anyone reaching the port (and
/// relays that answer `HEAD /` with 404 or 5xx made a working forwarder look broken).
fn is_reachability_check<B>(request: &Request<B>) -> bool {
    request.method() == http::Method::HEAD && matches!(request.uri().path(), "/" | "/api/hello")
}

/// `200 OK` with no body: all a reachability check reads.
fn reachability_answer() -> Response<ProxyBody> {
    let mut response = Response::new(crate::body::full_body(Bytes::new()));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
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

/// Parses a JSON object body; anything else (another content type, a body that does not start
/// with `{`, invalid JSON) yields none, and the request is forwarded as it is.
fn parse_json_body<'a>(headers: &http::HeaderMap, body: &'a Bytes) -> Option<Json<'a>> {
    let looks_like_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|content_type| content_type.contains("json"))
        && body.first().is_some_and(|byte| *byte == b'{');
    looks_like_json.then(|| Json::parse(body).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `body` as admission reads them.
    fn fields_of(body: &'static [u8]) -> RequestFields {
        let body = Bytes::from_static(body);
        parse_json_body(&http::HeaderMap::new(), &body)
            .as_ref()
            .map(RequestFields::read)
            .unwrap_or_default()
    }

    #[test]
    fn stream_is_read_from_the_json_body_not_from_substrings() {
        let fields = fields_of(br#"{"model":"m","stream":true}"#);
        assert_eq!(fields.stream, Some(true));
        assert_eq!(fields.model.as_deref(), Some("m"));
        let text_mentions_stream =
            fields_of(br#"{"model":"m","messages":[{"role":"user","content":"\"stream\":true"}]}"#);
        assert_eq!(text_mentions_stream.stream, None);
        assert_eq!(fields_of(b"not json").stream, None);
        assert_eq!(
            fields_of(b"{\"model\":\"m\",").model,
            None,
            "invalid JSON: no fields"
        );
    }

    #[test]
    fn a_field_of_an_odd_type_leaves_the_others_readable() {
        let fields = fields_of(
            br#"{"model":"m","stream":"yes","metadata":{"user_id":"u-1"},"model":"claude-x"}"#,
        );
        assert_eq!(fields.stream, None);
        assert_eq!(
            fields.model.as_deref(),
            Some("claude-x"),
            "the last of a repeated key"
        );
        assert_eq!(fields.session.user_id.as_deref(), Some("u-1"));
        let fields = fields_of(br#"{"model":5,"stream":true}"#);
        assert_eq!((fields.model, fields.stream), (None, Some(true)));
    }
}
