//! Phase 4, forward: one group's plan, each endpoint up to `retry.max_attempts` times. An
//! attempt rewrites the headers for its endpoint and sends the request's `Bytes` on the shared
//! client within its deadline (non-streaming: the endpoint's `timeout`, headers and body;
//! streaming: `streaming.response_header_timeout` for the headers, counted from this attempt's
//! send); its result becomes an attempt verdict, and the loop applies the verdict's effects
//! ([`crate::retry`]) in a fixed order: the signals (health, metric, log, lifecycle, wake-ups),
//! then the answer is relayed or kept as the last one, then the next step (back off, wait, skip
//! the endpoint, next endpoint, one last attempt elsewhere). Every attempt but a request's first
//! is a retry and takes a permit of the retry budget first.
//!
//! It must not decide what a result means (that is [`crate::retry`]) nor how an answer reaches
//! the client (`finish.rs`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ccf_config::Endpoint;
use ccf_lifecycle::{Attempt, AttemptOutcome};
use ccf_router::RoutePlan;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tracing::{debug, info, warn};
use url::Position;

use super::cluster::Origin;
use super::finish::Expectation;
use super::{Forwarder, RequestContext};
use crate::body::ProxyBody;
use crate::classify::backoff;
use crate::cluster::SharedUpdate;
use crate::error::{anthropic_error_json, ProxyError};
use crate::headers::{remove_hop_by_hop, rewrite_request_headers};
use crate::retry::empty_answer::{self, AnswerContent};
use crate::retry::{
    AttemptBudget, AttemptGate, AttemptVerdict, Effects, FailoverTriggers, HealthSignal, LogLevel,
    NextStep, RetryBudgetSettings, RetryPermit,
};

/// Largest upstream error body kept to be relayed verbatim after other attempts failed (an
/// Anthropic error is a few hundred bytes; a relay's HTML error page a few kilobytes).
const MAX_BUFFERED_ERROR_BODY: usize = 256 * 1024;

/// Longest wait for an error answer's body once its headers arrived: it is short and sent at
/// once, and waiting `endpoint.timeout` for it only delayed the next attempt.
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(5);

/// An upstream answer kept whole so it can be relayed later, verbatim.
pub(super) struct BufferedAnswer {
    pub(super) parts: http::response::Parts,
    pub(super) body: Bytes,
}

/// What one attempt got: the upstream answer's head (its body still unread), or why none came.
type AttemptResult = Result<Response<crate::client::UpstreamBody>, ProxyError>;

/// How trying one group ended.
pub(super) enum GroupOutcome {
    /// A response for the client (success, or a final upstream answer).
    Answered(Response<ProxyBody>),
    /// Every endpoint failed.
    Exhausted,
    /// The retry budget allowed no further attempt now in a group the request had tried before
    /// (a held request routing again): the round ends without failing the group over. (In a
    /// group tried for the first time, a refused retry ends it as [`GroupOutcome::Exhausted`]:
    /// the request fails over without retrying.)
    RetryDenied,
    /// No further attempt at all (the last attempt after a timeout that may have left an
    /// upstream generating the request was made): the request ends with its final failure.
    GiveUp,
}

impl Forwarder {
    /// Tries every endpoint of the plan, `retry.max_attempts` times each, following each
    /// attempt's effects ([`crate::retry`]) in a fixed order: signals (health, metric, log,
    /// lifecycle, wake-ups), then the answer is relayed or kept, then the next step.
    pub(super) async fn try_group(
        &self,
        context: &mut RequestContext,
        plan: &RoutePlan,
        last_answer: &mut Option<BufferedAnswer>,
        last_error: &mut Option<ProxyError>,
    ) -> GroupOutcome {
        let shared = &self.shared;
        let current = shared.current();
        let retry = &current.config.retry;
        let max_attempts = retry.max_attempts.max(1);
        // The first attempt on a group the request never tried is a failover, not a retry.
        let fresh_group = plan
            .group
            .as_deref()
            .is_some_and(|group| context.retries.enter_group(group));
        let mut failover_attempt = fresh_group;
        for planned in &plan.endpoints {
            let Some(endpoint) = current.endpoint(&planned.name) else {
                continue;
            };
            if let Some(tracker) = context.tracker() {
                tracker
                    .transition(|lifecycle| lifecycle.forwarding(&endpoint.name, &endpoint.group));
            }
            let mut attempt = 1;
            loop {
                match context.retries.gate(&endpoint.name) {
                    AttemptGate::Go => {}
                    AttemptGate::OtherEndpoint => break,
                    AttemptGate::Stop => return GroupOutcome::GiveUp,
                }
                // Held for the attempt; dropped when its verdict is known.
                let needs_permit = !std::mem::take(&mut failover_attempt);
                let Ok(_retry_permit) = self.retry_permit(context, &endpoint, needs_permit) else {
                    // No retry now. A request on its first round fails over without retrying
                    // (the group failed it); a held one routing again waits again instead of
                    // failing a group it did not even try.
                    return if fresh_group {
                        GroupOutcome::Exhausted
                    } else {
                        GroupOutcome::RetryDenied
                    };
                };
                context.retries.attempt_started();
                let sent_at = SystemTime::now();
                let sent = Instant::now();
                context.attempt_sent = sent;
                let result = self.attempt(context, &endpoint).await;
                let duration = sent.elapsed();
                let verdict = self.judge(context, &endpoint, &result, sent_at, duration);
                let mut result = result;
                let (verdict, note) = self
                    .apply_failover_triggers(context, &endpoint, verdict, &mut result)
                    .await;
                let effects = verdict.effects(AttemptBudget {
                    attempt,
                    max_attempts,
                    max_wait: retry.max_delay.get(),
                });
                self.signal(
                    context, &endpoint, attempt, &result, &effects, duration, note,
                );
                match result {
                    Ok(upstream) => {
                        if let NextStep::Relay { fails_with } = effects.next {
                            let expectation =
                                fails_with.map_or(Expectation::Success, Expectation::Failure);
                            return GroupOutcome::Answered(self.relay(
                                upstream,
                                &endpoint,
                                context,
                                expectation,
                            ));
                        }
                        keep_answer(last_answer, upstream, endpoint.timeout).await;
                    }
                    Err(error) => *last_error = Some(error),
                }
                if context.retries.is_over() {
                    info!(endpoint = %endpoint.name, attempts = context.attempt_count, "the last attempt after a timeout failed: no further attempt");
                    return GroupOutcome::GiveUp;
                }
                match effects.next {
                    NextStep::BackOffAndRetry => {
                        self.back_off(attempt).await;
                        attempt += 1;
                    }
                    NextStep::WaitAndRetry(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    // Not counted against `retry.max_attempts`; happens once per request.
                    NextStep::RetryRepaired => {}
                    NextStep::SkipEndpoint(wait) => {
                        let events = shared
                            .router()
                            .block_until(&endpoint.name, Instant::now() + wait);
                        shared.publish_router(events);
                        shared.share(|| SharedUpdate::EndpointBlocked {
                            endpoint: endpoint.name.clone(),
                            until: SystemTime::now() + wait,
                        });
                        break;
                    }
                    NextStep::LastAttemptElsewhere => {
                        context.retries.timed_out_after_send(&endpoint.name);
                        break;
                    }
                    NextStep::Relay { .. } | NextStep::NextEndpoint => break,
                }
            }
        }
        GroupOutcome::Exhausted
    }

    /// The retry budget's permit for the next attempt: none needed for a request's first
    /// attempt, nor when `needs_permit` is false (a failover's first attempt) (`Ok(None)`);
    /// `Err(())` when the budget allows no further retry now (logged).
    fn retry_permit(
        &self,
        context: &RequestContext,
        endpoint: &Endpoint,
        needs_permit: bool,
    ) -> Result<Option<RetryPermit>, ()> {
        if context.attempt_count == 0 || !needs_permit {
            return Ok(None);
        }
        let shared = &self.shared;
        let settings = RetryBudgetSettings::from_config(&shared.current().config.retry);
        let active_requests = shared.in_flight_limit.taken();
        match shared.retry_budget.try_acquire(settings, active_requests) {
            Some(permit) => Ok(Some(permit)),
            None => {
                let detail = format!(
                    "retry budget spent: {} retries in flight for {active_requests} requests (retry.budget_percent {}, retry.min_retry_concurrency {})",
                    shared.retry_budget.in_flight(),
                    settings.budget_percent,
                    settings.min_retry_concurrency
                );
                warn!(endpoint = %endpoint.name, attempts = context.attempt_count, "no retry: {detail}");
                Err(())
            }
        }
    }

    /// Notes an attempt on the request's trail and returns its verdict. Every upstream answer,
    /// whatever its class, also feeds the router's quota model (its rate-limit headers).
    fn judge(
        &self,
        context: &mut RequestContext,
        endpoint: &Endpoint,
        result: &AttemptResult,
        sent_at: SystemTime,
        duration: Duration,
    ) -> AttemptVerdict {
        let upstream = match result {
            Ok(upstream) => upstream,
            Err(error) => {
                context.record_attempt(failed_attempt(endpoint, sent_at, duration, error));
                return AttemptVerdict::of_error(error);
            }
        };
        self.shared.record_quota(
            &endpoint.name,
            upstream.headers(),
            SystemTime::now(),
            Origin::Local,
        );
        context.record_attempt(Attempt {
            endpoint: endpoint.name.clone(),
            group: endpoint.group.clone(),
            started_at: sent_at,
            duration,
            outcome: AttemptOutcome::Status {
                status: upstream.status().as_u16(),
            },
        });
        // No latency sample here: `fastest` learns from successful answers only, when their
        // body has ended well (`finish.rs`).
        AttemptVerdict::of_answer(upstream.status(), upstream.headers(), SystemTime::now())
    }

    /// Applies the failover triggers to an answer's verdict (`retry.rs`: `FailoverStatus`,
    /// `EmptyAnswer`, `ThinkingRepaired`), counting each; returns the verdict and a note for the
    /// request's trail. Reading an answer ahead puts what was read back, so an answer still
    /// relayed reaches the client untouched.
    async fn apply_failover_triggers(
        &self,
        context: &mut RequestContext,
        endpoint: &Endpoint,
        verdict: AttemptVerdict,
        result: &mut AttemptResult,
    ) -> (AttemptVerdict, Option<String>) {
        let Ok(upstream) = result else {
            return (verdict, None);
        };
        let shared = &self.shared;
        let current = shared.current();
        let config = &current.config;
        let status = upstream.status().as_u16();
        if verdict == AttemptVerdict::Final
            && status == 400
            && config.routing.repair_thinking_signatures
            && context.retries.may_repair_thinking()
        {
            // The request is looked at first: without earlier thinking blocks there is nothing
            // to repair, and the error body need not be read.
            let repaired = match crate::thinking_repair::drop_earlier_thinking(&context.body) {
                Some(repaired) => {
                    let read = upstream
                        .body_mut()
                        .read_ahead(
                            ERROR_BODY_DEADLINE.min(endpoint.timeout),
                            MAX_BUFFERED_ERROR_BODY,
                            |_| false,
                        )
                        .await;
                    (read.complete
                        && crate::thinking_repair::is_invalid_thinking_signature(&read.data))
                    .then_some(repaired)
                }
                None => None,
            };
            if let Some(repaired) = repaired {
                context.retries.thinking_repaired();
                // The client's `content-length` described the original body.
                context.parts.headers.insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from(repaired.body.len()),
                );
                context.body = repaired.body;
                shared
                    .metrics
                    .record_thinking_signature_repair(&endpoint.name);
                let note = format!(
                    "invalid thinking signature: {} thinking block(s) of earlier assistant turns dropped, retried once on {} (routing.repair_thinking_signatures)",
                    repaired.dropped_blocks, endpoint.name
                );
                return (AttemptVerdict::ThinkingRepaired, Some(note));
            }
        }
        let triggers = FailoverTriggers {
            statuses: &config.retry.failover_on_status,
            empty_answer: config.retry.failover_on_empty_answer,
        };
        let verdict = verdict.with_status_trigger(status, triggers);
        if let AttemptVerdict::FailoverStatus { status } = verdict {
            shared
                .metrics
                .record_failover_trigger(&endpoint.name, "status");
            let note = format!("HTTP {status} is listed in retry.failover_on_status");
            return (verdict, Some(note));
        }
        if verdict == AttemptVerdict::Success && triggers.empty_answer {
            // A stream's content follows its first events at once; a whole answer is bounded
            // by the endpoint's timeout, counted from this attempt's send.
            let deadline = if context.is_streaming {
                config.streaming.response_header_timeout.get()
            } else {
                endpoint
                    .timeout
                    .saturating_sub(context.attempt_sent.elapsed())
            };
            if empty_answer::inspect(upstream, deadline).await == AnswerContent::Empty {
                shared
                    .metrics
                    .record_failover_trigger(&endpoint.name, "empty_answer");
                let note =
                    "empty answer: no content and 0 output tokens (retry.failover_on_empty_answer)"
                        .to_string();
                return (AttemptVerdict::EmptyAnswer, Some(note));
            }
        }
        (verdict, None)
    }

    /// Applies the effects that are signals: the passive health observation, the metric, the
    /// log line, the lifecycle's retry reason (with `note`, when a failover trigger says why)
    /// and waking held requests.
    #[allow(clippy::too_many_arguments)]
    fn signal(
        &self,
        context: &mut RequestContext,
        endpoint: &Endpoint,
        attempt: u32,
        result: &AttemptResult,
        effects: &Effects,
        latency: Duration,
        note: Option<String>,
    ) {
        let shared = &self.shared;
        match effects.health {
            HealthSignal::None => {}
            HealthSignal::Success => shared.health.record_success(&endpoint.name, latency),
            HealthSignal::Failure(failure) => shared.health.record_failure(&endpoint.name, failure),
            HealthSignal::AuthFailed => shared.health.mark_auth_failed(&endpoint.name),
        }
        if effects.counts_upstream_failure {
            shared.metrics.record_upstream_failure(endpoint);
        }
        log_attempt(endpoint, attempt, result, effects);
        if let Some(reason) = effects.retrying {
            let detail = match result {
                Ok(upstream) => format!(
                    "{} answered HTTP {}",
                    endpoint.name,
                    upstream.status().as_u16()
                ),
                Err(error) => error.to_string(),
            };
            let detail = match note {
                Some(note) => format!("{detail}: {note}"),
                None => detail,
            };
            context.retrying(reason, &detail);
        }
        if effects.wakes_held_requests {
            // A sibling's success may be what a held request waits for.
            shared.suspension.wake();
        }
    }

    /// Sleeps the back-off before attempt `attempt + 1`; cancelled with the request.
    async fn back_off(&self, attempt: u32) {
        let current = self.shared.current();
        let retry = &current.config.retry;
        let delay = backoff(
            attempt,
            retry.base_delay.get(),
            retry.multiplier,
            retry.max_delay.get(),
            rand::random::<f64>(),
        );
        debug!(delay_ms = delay.as_millis(), "backing off");
        tokio::time::sleep(delay).await;
    }

    /// One attempt on one endpoint: `Ok` as soon as upstream response headers arrive. The
    /// body is the endpoint's (its `model_map` applied, [`Forwarder::body_for`]).
    async fn attempt(&self, context: &mut RequestContext, endpoint: &Endpoint) -> AttemptResult {
        let body = self.body_for(context, endpoint);
        self.send_upstream(&context.parts, &body, context.is_streaming, endpoint)
            .await
    }

    /// Issue 20: the request body as `endpoint` gets it, rewritten by its `model_map`; the
    /// lifecycle and the honesty watch learn the model sent, the metric counts the rewrite.
    fn body_for(&self, context: &mut RequestContext, endpoint: &Endpoint) -> Bytes {
        let (mapped, changed) = context.models.prepare(endpoint, &context.body);
        if let (Some(pattern), Some(to)) = (&mapped.pattern, &mapped.mapped_to) {
            debug!(endpoint = %endpoint.name, from = context.models.requested().unwrap_or("-"), to = %to, "model mapped");
            self.shared
                .metrics
                .model_routing
                .record_mapped(&endpoint.name, pattern, to);
        }
        if changed {
            let sent = mapped.mapped_to.as_deref();
            if let Some(tracker) = context.tracker() {
                tracker.update(|lifecycle| lifecycle.model_sent(sent));
            }
            if let Some(watch) = context.honesty.as_mut() {
                watch.model_sent(sent);
            }
        }
        mapped.body
    }

    /// Sends the request to one endpoint: `Ok` as soon as upstream response headers arrive.
    pub(super) async fn send_upstream(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        is_streaming: bool,
        endpoint: &Endpoint,
    ) -> Result<Response<crate::client::UpstreamBody>, ProxyError> {
        let shared = &self.shared;
        let current = shared.current();
        let uri = upstream_uri(endpoint, &parts.uri)?;
        let headers = rewrite_request_headers(&parts.headers, endpoint).map_err(|error| {
            ProxyError::BadUpstreamUrl {
                endpoint: endpoint.name.clone(),
                message: error.to_string(),
            }
        })?;
        let mut headers = headers;
        // The body may have been rewritten (model_map): its length is the one sent.
        if headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut upstream_request = Request::new(Full::new(body.clone()));
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = headers;
        // Non-streaming answers arrive whole, when generation ends: only the endpoint's
        // `timeout` bounds them (headers here, the body in the relay). A stream's first byte is
        // bounded by `response_header_timeout`, the gaps after it by the idle timeout.
        let header_timeout = if is_streaming {
            current.config.streaming.response_header_timeout.get()
        } else {
            endpoint.timeout
        };
        // Tells, when no headers came in time, whether a connection carried the request.
        let connection = crate::client::ConnectionWatch::default();
        debug!(endpoint = %endpoint.name, group = %endpoint.group, "forwarding");
        let sent = Instant::now();
        // Boxed: the client's future is large (a connection's exchange driven in this task), and
        // held by value it was copied into the timeout and again into this future's state, and
        // made every future that holds this one larger to move (callgrind: about 1,000 to 2,500
        // instructions per request, more than the allocation costs).
        let exchange = Box::pin(current.client.request_watched(
            &endpoint.name,
            upstream_request,
            &connection,
        ));
        match tokio::time::timeout(header_timeout, exchange).await {
            Ok(Ok(response)) => {
                shared.metrics.record_header_latency(sent.elapsed());
                Ok(response)
            }
            Ok(Err(error)) => Err(ProxyError::Connect {
                endpoint: endpoint.name.clone(),
                source: Box::new(error),
            }),
            Err(_elapsed) => Err(ProxyError::HeaderTimeout {
                endpoint: endpoint.name.clone(),
                timeout: header_timeout,
                request_sent: connection.connection_taken(),
            }),
        }
    }
}

/// The trail entry of an attempt that got no answer.
fn failed_attempt(
    endpoint: &Endpoint,
    started_at: SystemTime,
    duration: Duration,
    error: &ProxyError,
) -> Attempt {
    let outcome = match error {
        ProxyError::HeaderTimeout { .. } => AttemptOutcome::HeaderTimeout,
        other => AttemptOutcome::ConnectError {
            message: other.to_string(),
        },
    };
    Attempt {
        endpoint: endpoint.name.clone(),
        group: endpoint.group.clone(),
        started_at,
        duration,
        outcome,
    }
}

/// Logs an attempt as its effects say: the policy's message, with the status or the error and
/// the wait the next step takes.
fn log_attempt(endpoint: &Endpoint, attempt: u32, result: &AttemptResult, effects: &Effects) {
    let Some((level, message)) = effects.log else {
        return;
    };
    let (status, error) = match result {
        Ok(upstream) => (Some(upstream.status().as_u16()), String::new()),
        Err(error) => (None, format!(": {error}")),
    };
    let wait_ms = match effects.next {
        NextStep::WaitAndRetry(wait) | NextStep::SkipEndpoint(wait) => Some(wait.as_millis()),
        _ => None,
    };
    match level {
        LogLevel::Info => {
            info!(endpoint = %endpoint.name, status, attempt, wait_ms, "{message}{error}");
        }
        LogLevel::Warn => {
            warn!(endpoint = %endpoint.name, status, attempt, wait_ms, "{message}{error}");
        }
    }
}

/// Keeps an upstream error answer (not relayed) as the request's last answer. Its body is read
/// whole within [`ERROR_BODY_DEADLINE`] (and the endpoint's `timeout`) and
/// [`MAX_BUFFERED_ERROR_BODY`]; when that fails, an earlier answer is kept instead, else the
/// answer's status and headers with an Anthropic error body saying what happened (never a
/// made-up 503 in place of a real upstream error).
async fn keep_answer(
    last_answer: &mut Option<BufferedAnswer>,
    upstream: Response<crate::client::UpstreamBody>,
    endpoint_timeout: Duration,
) {
    let (mut parts, body) = upstream.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let deadline = ERROR_BODY_DEADLINE.min(endpoint_timeout);
    let collected = tokio::time::timeout(
        deadline,
        Limited::new(body, MAX_BUFFERED_ERROR_BODY).collect(),
    )
    .await;
    match collected {
        Ok(Ok(collected)) => {
            *last_answer = Some(BufferedAnswer {
                parts,
                body: collected.to_bytes(),
            });
        }
        Ok(Err(_)) | Err(_) if last_answer.is_some() => {
            debug!(
                status = parts.status.as_u16(),
                "error body unreadable: the earlier answer is kept"
            );
        }
        Ok(Err(_)) | Err(_) => {
            let status = parts.status;
            let message = format!(
                "the upstream answered HTTP {} and its body could not be read (over {} bytes, broken, or not within {deadline:?})",
                status.as_u16(),
                MAX_BUFFERED_ERROR_BODY
            );
            let error_type = match status.as_u16() {
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::CONTENT_TYPE,
            ] {
                parts.headers.remove(name);
            }
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *last_answer = Some(BufferedAnswer {
                parts,
                body: anthropic_error_json(error_type, &message),
            });
        }
    }
}

/// `endpoint.url` + request path + query; the endpoint URL may carry a path prefix.
///
/// Put together from parts (issue 19): the scheme and authority come from the endpoint's parsed
/// URL, and without a path prefix the request's own path and query are shared as they are.
/// Joining the texts and parsing the whole URI again cost about 750 instructions a request.
fn upstream_uri(endpoint: &Endpoint, request_uri: &Uri) -> Result<Uri, ProxyError> {
    let bad = |message: String| ProxyError::BadUpstreamUrl {
        endpoint: endpoint.name.clone(),
        message,
    };
    let url = &endpoint.url;
    if url.query().is_some() {
        return Err(bad("the endpoint url must not carry a query string".into()));
    }
    let scheme = match url.scheme() {
        "https" => Scheme::HTTPS,
        "http" => Scheme::HTTP,
        other => Scheme::try_from(other).map_err(|error| bad(error.to_string()))?,
    };
    // Host and port only, without user info: it must not reach the pool key, which hyper-util
    // logs at TRACE.
    let authority = Authority::try_from(&url[Position::BeforeHost..Position::AfterPort])
        .map_err(|error| bad(error.to_string()))?;
    let prefix = url.path().trim_end_matches('/');
    let request_path = request_uri.path_and_query();
    let path_and_query = match request_path {
        Some(path) if prefix.is_empty() => path.clone(),
        None if prefix.is_empty() => PathAndQuery::from_static("/"),
        _ => {
            let request_path = request_path.map_or("/", PathAndQuery::as_str);
            let mut joined = String::with_capacity(prefix.len() + request_path.len());
            joined.push_str(prefix);
            joined.push_str(request_path);
            PathAndQuery::try_from(joined).map_err(|error| bad(error.to_string()))?
        }
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|error| bad(error.to_string()))
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
            model_map: ccf_config::ModelMap::default(),
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
        // User info never reaches the URI; ports and IPv6 hosts are kept as written.
        check(
            "https://user:secret@relay.example:8443/api",
            "/v1/messages",
            "https://relay.example:8443/api/v1/messages",
        );
        check(
            "http://[::1]:9000",
            "/v1/messages?beta=true",
            "http://[::1]:9000/v1/messages?beta=true",
        );
        check(
            "https://relay.example/api",
            "/",
            "https://relay.example/api/",
        );
        // An absolute-form request target: only its path and query count.
        check(
            "https://relay.example",
            "http://localhost:8080/v1/messages?x=1",
            "https://relay.example/v1/messages?x=1",
        );
    }

    #[test]
    fn an_endpoint_url_with_a_query_is_refused() {
        let error = upstream_uri(
            &endpoint("https://relay.example/api?key=1"),
            &"/v1/messages".parse().unwrap(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("query string"), "{error}");
    }
}
