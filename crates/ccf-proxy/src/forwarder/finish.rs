//! Phases 5 and 6, relay and finish: the chosen upstream answer goes to the client with its
//! frames untouched (`body::RelayBody`: idle and total timeouts, SSE error event on a cut or an
//! early end), and [`RequestFinisher`] watches the body: it feeds every frame to the usage tap
//! and the honesty watch, and when the body ends, fails or the client leaves it finishes the
//! request's lifecycle exactly once, records the session's turn, folds the honesty check into
//! routing, and records the answer's passive health once, from the whole outcome: a success
//! (with the answer's latency, which a stream also gives `fastest`) when the body ended well, a
//! failure when it was cut, stalled, carried an SSE `error` event or ended before
//! `message_stop`.
//!
//! It must not know how the answer was chosen (routing, retries): it gets one upstream answer and
//! what it means for the request ([`Expectation`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_config::Endpoint;
use ccf_health::PassiveFailure;
use ccf_lifecycle::FailureReason;
use ccf_tokens::{BodyTap, Extraction, StreamPosition};
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use tracing::{debug, info, warn};

use super::{Forwarder, RequestContext};
use crate::body::{ProxyBody, RelayBody, RelayEnd, RelayObserver, RelayOptions};
use crate::cluster::SharedUpdate;
use crate::headers::remove_hop_by_hop;
use crate::honesty::HonestyWatch;
use crate::monitoring;
use crate::server::after_write::after_write;
use crate::tracking::Tracker;

/// What a relayed answer means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expectation {
    /// A success: the request completes when the body ends well.
    Success,
    /// A final upstream error relayed verbatim: the request fails with this reason.
    Failure(FailureReason),
}

impl Forwarder {
    /// Hands the upstream answer to the client, frames untouched; the request's lifecycle moves
    /// into the body's observer, which reads usage from the frames and finishes the request when
    /// the body ends.
    pub(super) fn relay(
        &self,
        upstream: Response<crate::client::UpstreamBody>,
        endpoint: &Arc<Endpoint>,
        context: &mut RequestContext,
        expectation: Expectation,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let current = shared.current();
        let (mut parts, body) = upstream.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let status = parts.status;
        info!(endpoint = %endpoint.name, group = %endpoint.group, status = status.as_u16(), attempts = context.attempt_count, "upstream answered");
        shared.metrics.record_request(&endpoint.name, status);
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header_text(header::CONTENT_TYPE);
        let content_encoding = header_text(header::CONTENT_ENCODING);
        let is_event_stream = content_type
            .as_deref()
            .is_some_and(|content_type| content_type.starts_with("text/event-stream"));
        let options = RelayOptions {
            idle_limit: Some(current.config.streaming.max_idle_time.get()).filter(|d| !d.is_zero()),
            total_limit: (!context.is_streaming).then(|| {
                endpoint
                    .timeout
                    .saturating_sub(context.attempt_sent.elapsed())
            }),
            sse_error_event: status.is_success() && is_event_stream,
            encoded: content_encoding
                .as_deref()
                .is_some_and(|coding| !coding.trim().eq_ignore_ascii_case("identity")),
        };
        let mut tracker = context.tracker.take();
        if let Some(tracker) = tracker.as_mut() {
            let time_to_first_byte = context.started.elapsed();
            tracker
                .transition(|lifecycle| lifecycle.processing(status.as_u16(), time_to_first_byte));
        }
        let honesty = context
            .honesty
            .take()
            .filter(|_| expectation == Expectation::Success)
            .map(|mut watch| {
                watch.watch_answer(is_event_stream, content_encoding.as_deref());
                (watch, self.clone())
            });
        let turn = (expectation == Expectation::Success)
            .then(|| self.session_turn(endpoint, context, &mut tracker));
        let observer = RequestFinisher {
            tracker,
            turn,
            honesty,
            tap: BodyTap::new(content_type.as_deref(), content_encoding.as_deref()),
            expectation,
            status,
            endpoint: Arc::clone(endpoint),
            forwarder: self.clone(),
            latency: context.last_attempt_latency,
            is_streaming: context.is_streaming,
            body_bytes: 0,
            span: tracing::Span::current(),
            in_flight: context.in_flight.take(),
            key_permit: context.key_permit.take(),
        };
        let relay = RelayBody::new(body, options, Box::new(observer));
        Response::from_parts(parts, relay.boxed_unsync())
    }

    /// A success from `endpoint` is relayed: binds the request's session there (noting a move
    /// on the request) and returns what records the turn's tokens when the body ends.
    fn session_turn(
        &self,
        endpoint: &Arc<Endpoint>,
        context: &RequestContext,
        tracker: &mut Option<Tracker>,
    ) -> crate::session::TurnRecorder {
        let session = context.session;
        if let Some(session) = &session {
            let moved =
                self.shared
                    .router()
                    .session_served(session, &endpoint.name, Instant::now());
            self.shared.share(|| SharedUpdate::SessionBound {
                session: session.key.0,
                source: session.source,
                long_ttl: session.long_ttl,
                endpoint: endpoint.name.clone(),
            });
            if let Some(moved) = moved {
                info!(session = %moved.session, from = %moved.from, to = %moved.to, "session affinity moved");
                if let Some(tracker) = tracker.as_mut() {
                    tracker.update(|lifecycle| lifecycle.affinity_moved(&moved.from));
                }
            }
        }
        let held = context.decision.held
            && context.decision.preferred.as_deref() == Some(endpoint.name.as_str());
        let forwarder = self.clone();
        let endpoint = Arc::clone(endpoint);
        crate::session::TurnRecorder::new(move |model, tokens| {
            forwarder.shared.router().record_turn(
                session.as_ref(),
                &endpoint.name,
                model,
                tokens,
                held,
            );
        })
    }

    /// Folds a successful answer's honesty check into the scores and applies the demotions it
    /// causes to routing.
    fn record_honesty(&self, endpoint: &str, check: ccf_router::honesty::HonestyCheck) {
        let shared = &self.shared;
        let current = shared.current();
        if !shared
            .honesty
            .record_check(&current.config, endpoint, check)
        {
            return;
        }
        // Every endpoint's state, not only what this check changed: a configuration reload may
        // have rebuilt an endpoint's routing state since it was demoted. Only real changes make
        // events.
        let demotions = shared.honesty.demotions();
        let mut events = Vec::new();
        {
            let mut router = shared.router();
            for (name, demoted) in demotions {
                events.extend(router.set_demoted(&name, demoted));
            }
        }
        shared.publish_router(events);
    }
}

/// Watches a relayed body: feeds every frame to the usage tap and finishes the request's
/// lifecycle, exactly once, when the body ends, fails or the client leaves.
struct RequestFinisher {
    tracker: Option<Tracker>,
    /// The honesty watch of a successful answer, and the engine to report it to.
    honesty: Option<(HonestyWatch, Forwarder)>,
    /// Records a successful turn's tokens for session affinity.
    turn: Option<crate::session::TurnRecorder>,
    tap: BodyTap,
    expectation: Expectation,
    status: StatusCode,
    /// The endpoint that answered (shared with the configuration: no copy of its name).
    endpoint: Arc<Endpoint>,
    /// The engine, to record the answer's passive health and latency when the body ends.
    forwarder: Forwarder,
    /// How long the answer's headers took.
    latency: Duration,
    /// The client asked for a stream: only then is `latency` a `fastest` sample.
    is_streaming: bool,
    body_bytes: u64,
    span: tracing::Span,
    /// Counts the request in `ccf_requests_in_flight` until its bookkeeping is done.
    in_flight: Option<monitoring::InFlightGuard>,
    /// Released with the answer (per-key concurrency, `key_limits.rs`).
    key_permit: Option<crate::key_limits::KeyPermit>,
}

/// What a relayed successful answer's end says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It ended well: the endpoint served.
    Served,
    /// It broke off after its headers: a failure of the endpoint.
    Failed(PassiveFailure),
    /// Nothing to learn (the client left, or the upstream said the account is rate limited,
    /// which the 429 row of the retry policy does not count as a failure either).
    Nothing,
}

impl Verdict {
    fn of(end: &RelayEnd, extraction: &Extraction) -> Verdict {
        match end {
            RelayEnd::ClientGone => Verdict::Nothing,
            RelayEnd::Complete => match &extraction.error {
                Some(error) if error.error_type == "rate_limit_error" => Verdict::Nothing,
                Some(_) => Verdict::Failed(PassiveFailure::BrokenResponse),
                None => Verdict::Served,
            },
            RelayEnd::IdleTimeout(_) | RelayEnd::DeadlineExceeded(_) => {
                Verdict::Failed(PassiveFailure::Timeout)
            }
            RelayEnd::UpstreamError(_) | RelayEnd::EndedEarly => {
                Verdict::Failed(PassiveFailure::BrokenResponse)
            }
        }
    }
}

impl Forwarder {
    /// Records a relayed successful answer's passive health, once, from how its body ended;
    /// a served stream's time to headers is also a `fastest` sample. A non-streaming answer's
    /// headers come only when the whole answer is generated, so that time measures the
    /// answer's length more than the endpoint: it is not a sample (docs/routing.md).
    fn record_outcome(&self, endpoint: &str, verdict: Verdict, latency: Duration, stream: bool) {
        let shared = &self.shared;
        match verdict {
            Verdict::Served => {
                shared.health.record_success(endpoint, latency);
                if stream {
                    shared.router().record_latency(endpoint, latency);
                }
            }
            Verdict::Failed(failure) => shared.health.record_failure(endpoint, failure),
            Verdict::Nothing => {}
        }
    }
}

impl RequestFinisher {
    /// The answer's bookkeeping: usage and model read, passive health, the session's turn, the
    /// honesty check, the request's outcome.
    fn finish(self: Box<Self>, end: RelayEnd) {
        let RequestFinisher {
            tracker,
            turn,
            honesty,
            tap,
            expectation,
            status,
            endpoint: answered_by,
            forwarder,
            latency,
            is_streaming,
            body_bytes,
            span,
            // Held until everything below is done.
            in_flight: _in_flight,
            key_permit: _,
        } = *self;
        let _entered = span.enter();
        let endpoint = answered_by.name.as_str();
        let extraction = tap.finish();
        for diagnostic in &extraction.diagnostics {
            debug!(endpoint = %endpoint, "usage parsing: {diagnostic}");
        }
        if expectation == Expectation::Success {
            // A final upstream error (4xx) was judged by its headers; a success only now.
            let verdict = Verdict::of(&end, &extraction);
            forwarder.record_outcome(endpoint, verdict, latency, is_streaming);
        }
        if let (Some(turn), RelayEnd::Complete) = (turn, &end) {
            turn.finish(extraction.model.as_deref(), extraction.usage.as_ref());
        }
        let Some(mut tracker) = tracker else { return };
        tracker.observe(
            extraction.model.as_deref(),
            extraction.usage.clone(),
            extraction.partial,
        );
        let status_code = status.as_u16();
        match (expectation, end) {
            (_, RelayEnd::ClientGone) => {
                info!(endpoint = %endpoint, body_bytes, "client disconnected; upstream request cancelled");
                tracker.finish(|lifecycle, now| lifecycle.cancel("client disconnected", now));
            }
            (Expectation::Failure(reason), _) => {
                let detail = match &extraction.error {
                    Some(error) => format!(
                        "HTTP {status_code}: {}: {}",
                        error.error_type, error.message
                    ),
                    None => format!("HTTP {status_code}"),
                };
                tracker.finish(|lifecycle, now| {
                    lifecycle.fail(reason, &detail, Some(status_code), now)
                });
            }
            (Expectation::Success, RelayEnd::Complete) => match &extraction.error {
                // An SSE `error` event: the stream started well and then failed upstream.
                Some(error) => {
                    let reason = if error.error_type == "rate_limit_error" {
                        FailureReason::RateLimited
                    } else {
                        FailureReason::StreamError
                    };
                    let detail = format!("{}: {}", error.error_type, error.message);
                    warn!(endpoint = %endpoint, "stream ended with an error event: {detail}");
                    tracker.finish(|lifecycle, now| lifecycle.fail(reason, &detail, None, now));
                }
                None => {
                    if let Some((watch, forwarder)) = honesty {
                        forwarder.record_honesty(endpoint, watch.finish(&extraction));
                    }
                    tracker.finish(|lifecycle, now| lifecycle.complete(now));
                }
            },
            (Expectation::Success, other) => {
                let (reason, detail) = match other {
                    RelayEnd::IdleTimeout(limit) => (
                        FailureReason::Timeout,
                        format!("upstream sent no data for {limit:?}"),
                    ),
                    RelayEnd::DeadlineExceeded(limit) => (
                        FailureReason::Timeout,
                        format!("response exceeded the {limit:?} total timeout"),
                    ),
                    RelayEnd::UpstreamError(error) => (
                        FailureReason::StreamError,
                        format!("upstream connection failed mid-body: {error}"),
                    ),
                    RelayEnd::EndedEarly => (
                        FailureReason::StreamError,
                        "upstream ended the stream before message_stop".to_string(),
                    ),
                    RelayEnd::Complete | RelayEnd::ClientGone => {
                        (FailureReason::UnknownError, String::new())
                    }
                };
                warn!(endpoint = %endpoint, body_bytes, "response cut: {detail}");
                tracker.finish(|lifecycle, now| lifecycle.fail(reason, &detail, None, now));
            }
        }
    }
}

impl RelayObserver for RequestFinisher {
    fn stream_position(&self) -> Option<StreamPosition> {
        self.tap.stream_position()
    }

    fn on_backpressure(&mut self) {
        if let Some((watch, _)) = self.honesty.as_mut() {
            watch.relay_backpressured();
        }
    }

    fn on_data(&mut self, data: &Bytes) {
        self.body_bytes += data.len() as u64;
        let deltas_before = self.tap.content_deltas();
        self.tap.feed(data);
        if let Some((watch, _)) = self.honesty.as_mut() {
            // The tap decodes the stream's events anyway: its count spares the watch a scan of
            // every frame for the delta marker, about 150 instructions each (issue 19).
            match self.tap.content_deltas() {
                Some(after) => {
                    let deltas = after.saturating_sub(deltas_before.unwrap_or(0));
                    watch.on_deltas(u32::try_from(deltas).unwrap_or(u32::MAX));
                }
                None => watch.on_data(data),
            }
        }
    }

    /// Releases the per-key place at once and leaves the bookkeeping ([`Self::finish`]) to run
    /// after the connection has written what it holds ([`after_write`]). The request counts as
    /// in flight until its bookkeeping is done.
    ///
    /// The relay calls this before it hands hyper the answer's last frame (a body of known
    /// length is not polled past its last byte), and hyper writes only when the body has given
    /// what it has, so work done here delays the end of the answer by about 25,000
    /// instructions (the usage parse of the whole body, the honesty estimate, the outcome).
    /// A client gone is finished here: the body is being dropped.
    fn on_end(mut self: Box<Self>, end: RelayEnd) {
        self.key_permit = None;
        if matches!(end, RelayEnd::ClientGone) {
            return self.finish(end);
        }
        after_write(move || self.finish(end));
    }
}
