//! The retry policy, in one place: what follows from one attempt's result. An attempt ends as an
//! [`AttemptVerdict`] (its class: the status class of [`crate::classify`] for an answer, or the
//! kind of error when no answer came), and the verdict says, through [`AttemptVerdict::effects`],
//! everything that follows: the passive health signal, what the request's lifecycle notes, the
//! metric, the log line and the next step. The forward phase (`forwarder/attempts.rs`) only
//! applies these [`Effects`] in a fixed order; it never decides.
//!
//! | verdict | health signal | lifecycle | metric | next step (attempts left on the endpoint) | next step (its last attempt) |
//! |---|---|---|---|---|---|
//! | `Success` (2xx, 3xx) | - (the relay records it when the body ends: success when it ends well, failure when it is cut, stalls, carries an SSE `error` event or ends before `message_stop`) | completes when the body ends | - | relay; wake held requests | same |
//! | `Final` (any other status) | success | fails `http_error` when the body ends | - | relay verbatim | same |
//! | `ServerError` (500, 502, 503, 504, 520-525, 529) | failure `server_error(status)` | retrying `server_error` | - | back off, same endpoint | next endpoint |
//! | `RateLimited`, wait known and at most `retry.max_delay` | success | retrying `rate_limited` | - | wait as asked, same endpoint | skip the endpoint until its reset, next endpoint |
//! | `RateLimited`, wait known and longer | success | retrying `rate_limited` | - | skip the endpoint until its reset, next endpoint | same |
//! | `RateLimited`, no wait given | success | retrying `rate_limited` | - | back off, same endpoint | next endpoint |
//! | `QuotaRejected` (429, subscription account `rejected`) | success | retrying `rate_limited` | - | next endpoint (the router blocked this one until the account's reset when the answer's headers were recorded) | same |
//! | `CredentialsRefused` (401, 403) | auth failed (only a passing health probe clears it) | retrying `auth_error` | - | next endpoint | same |
//! | `ConnectFailed` (connect error, reset before the headers) | failure `connect` | retrying `network_error` | `ccf_upstream_failures_total` | back off, same endpoint | next endpoint |
//! | `HeaderTimeout` (no headers in time, no connection was open for the request) | failure `timeout` | retrying `timeout` | `ccf_upstream_failures_total` | back off, same endpoint | next endpoint |
//! | `TimedOutAfterSend` (no headers in time, the request was handed to the upstream: it may be generating it) | failure `timeout` | retrying `timeout` | `ccf_upstream_failures_total` | one last attempt, on another endpoint | same |
//! | `Unsendable` (the request cannot be built for this endpoint) | - | - | - | next endpoint | same |
//! | `FailoverStatus` (a status listed in `retry.failover_on_status`) | 4xx: success; 5xx: failure `server_error(status)` | retrying `http_error` (4xx) / `server_error` (5xx) | `ccf_failover_triggered_total{reason="status"}` | next endpoint | same |
//! | `EmptyAnswer` (`retry.failover_on_empty_answer`: a 200 with no content and 0 output tokens, [`empty_answer`]) | failure `broken_response` | retrying `stream_error` | `ccf_failover_triggered_total{reason="empty_answer"}` | next endpoint | same |
//! | `ThinkingRepaired` (`routing.repair_thinking_signatures`: a 400 naming an invalid thinking `signature`, body repaired, once per request: `thinking_repair.rs`) | success | retrying `http_error` | `ccf_thinking_signature_repairs_total` | the same endpoint again at once, not counted against `retry.max_attempts` | same |
//!
//! An answer that is not relayed is kept (bounded) as the request's last answer, an error as its
//! last error: when every candidate fails, the final failure relays the last answer verbatim.
//! docs/routing.md ("What happens after each attempt") is the user's version of this table.
//!
//! "One last attempt, on another endpoint" is kept on the request by [`RequestRetries`]: after
//! it, whatever it gets, the request ends (a timed-out upstream may still be generating, and
//! billing, the first copy). Every attempt of a request is a retry and needs a permit of the
//! forwarder's [`RetryBudget`] (Envoy's retry budget), except its first attempt and the first
//! attempt on each group it fails over to: without a permit the request stops trying its group
//! (it fails over, or a held request waits again).
//!
//! Pure but for the budget's counter: no IO, no clock, no configuration reading; the attempt's
//! budget and the retry budget's settings are passed in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_health::PassiveFailure;
use ccf_lifecycle::FailureReason;
use http::{HeaderMap, StatusCode};

use crate::classify::{classify_status, AttemptClass};
use crate::error::ProxyError;

/// The class of one attempt's result, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptVerdict {
    /// The upstream accepted the request (2xx, 3xx).
    Success,
    /// The upstream judged the request itself (4xx but 401, 403, 429; unusual 5xx).
    Final,
    /// A transient upstream error with this status.
    ServerError {
        /// The status, for the health signal.
        status: u16,
    },
    /// 429; `retry_after` is the wait the upstream asked for, when it said.
    RateLimited {
        /// From `retry-after` or the earliest `anthropic-ratelimit-*-reset`.
        retry_after: Option<Duration>,
    },
    /// 429 from a subscription account that said `rejected`: spent until its reset.
    QuotaRejected,
    /// 401 or 403: the endpoint refused our credentials.
    CredentialsRefused,
    /// No answer: the connection failed or broke before the response headers.
    ConnectFailed,
    /// No response headers in time, and no connection was ever open for the request: nothing
    /// reached the upstream.
    HeaderTimeout,
    /// No response headers in time after the request was handed to the upstream on an open
    /// connection: the upstream may be generating (and billing) it.
    TimedOutAfterSend,
    /// The request could not be built for this endpoint (its URL or a configured header).
    Unsendable,
    /// A status listed in `retry.failover_on_status`: the next endpoint, without retrying this
    /// one.
    FailoverStatus {
        /// The status the endpoint answered.
        status: u16,
    },
    /// `retry.failover_on_empty_answer`: a 200 with no content and zero output tokens.
    EmptyAnswer,
    /// `routing.repair_thinking_signatures`: the endpoint refused a thinking block's signature
    /// and the request's body was repaired: the same endpoint once more.
    ThinkingRepaired,
}

/// The failover triggers of `retry.*` that turn an answer into a failure of its endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailoverTriggers<'a> {
    /// `retry.failover_on_status`.
    pub(crate) statuses: &'a [u16],
    /// `retry.failover_on_empty_answer`.
    pub(crate) empty_answer: bool,
}

impl AttemptVerdict {
    /// This verdict, turned into [`AttemptVerdict::FailoverStatus`] when `status` is listed in
    /// `retry.failover_on_status` (only answers that would be relayed or retried are: 401, 403
    /// and 429 keep their own handling, and validation refuses them in the list).
    pub(crate) fn with_status_trigger(self, status: u16, triggers: FailoverTriggers<'_>) -> Self {
        let listed = triggers.statuses.contains(&status);
        match self {
            AttemptVerdict::Final | AttemptVerdict::ServerError { .. } if listed => {
                AttemptVerdict::FailoverStatus { status }
            }
            other => other,
        }
    }
}

/// What an attempt may still do on its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptBudget {
    /// This attempt's number on its endpoint, from 1.
    pub(crate) attempt: u32,
    /// `retry.max_attempts` (at least 1).
    pub(crate) max_attempts: u32,
    /// `retry.max_delay`: the longest rate-limit wait honoured in place.
    pub(crate) max_wait: Duration,
}

impl AttemptBudget {
    fn attempts_left(&self) -> bool {
        self.attempt < self.max_attempts
    }
}

/// The passive health observation an attempt makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthSignal {
    /// Nothing is observed.
    None,
    /// The endpoint answered (with the attempt's latency).
    Success,
    /// A failure towards the passive threshold.
    Failure(PassiveFailure),
    /// The endpoint refused its credentials: unhealthy until a health probe passes.
    AuthFailed,
}

/// What the request does after the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextStep {
    /// Relay this answer to the client. The request completes when the body ends well, or fails
    /// with `fails_with` (a final upstream error relayed verbatim).
    Relay {
        /// The lifecycle's failure reason for a relayed error answer.
        fails_with: Option<FailureReason>,
    },
    /// Sleep the back-off, then try the same endpoint again.
    BackOffAndRetry,
    /// Sleep the wait the upstream asked for, then try the same endpoint again.
    WaitAndRetry(Duration),
    /// Skip the endpoint for this long (its rate-limit reset) and move to the next one.
    SkipEndpoint(Duration),
    /// Move to the next endpoint at once.
    NextEndpoint,
    /// Make one last attempt, on another endpoint than this one, and then stop
    /// ([`RequestRetries`]).
    LastAttemptElsewhere,
    /// Send the (repaired) request to the same endpoint again at once; not counted against
    /// `retry.max_attempts`.
    RetryRepaired,
}

/// How loudly an attempt is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogLevel {
    /// Expected, handled as asked (rate limits).
    Info,
    /// A failure worth an operator's look.
    Warn,
}

/// Everything that follows from one attempt, applied by the forward phase in this order:
/// health, metric, log, lifecycle, waking held requests, then relaying or keeping the answer
/// (or error), then the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effects {
    /// The passive health observation.
    pub(crate) health: HealthSignal,
    /// Counted in `ccf_upstream_failures_total` (the attempt got no answer).
    pub(crate) counts_upstream_failure: bool,
    /// The log line, when the attempt is logged here (a relayed answer is logged by the relay).
    pub(crate) log: Option<(LogLevel, &'static str)>,
    /// The request goes on: the lifecycle notes it as retrying for this reason.
    pub(crate) retrying: Option<FailureReason>,
    /// A success may be what a held request waits for: wake them.
    pub(crate) wakes_held_requests: bool,
    /// What the request does next.
    pub(crate) next: NextStep,
}

impl AttemptVerdict {
    /// The verdict on an upstream answer (status and headers; `now` reads rate-limit resets).
    pub(crate) fn of_answer(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        match classify_status(status, headers, now) {
            AttemptClass::Success => AttemptVerdict::Success,
            AttemptClass::Final => AttemptVerdict::Final,
            AttemptClass::Retry => AttemptVerdict::ServerError {
                status: status.as_u16(),
            },
            AttemptClass::RateLimited { retry_after } => {
                AttemptVerdict::RateLimited { retry_after }
            }
            AttemptClass::NextEndpoint => AttemptVerdict::CredentialsRefused,
            AttemptClass::QuotaRejected => AttemptVerdict::QuotaRejected,
        }
    }

    /// The verdict on an attempt that got no answer.
    pub(crate) fn of_error(error: &ProxyError) -> Self {
        if !error.is_retryable() {
            AttemptVerdict::Unsendable
        } else if let ProxyError::HeaderTimeout { request_sent, .. } = error {
            if *request_sent {
                AttemptVerdict::TimedOutAfterSend
            } else {
                AttemptVerdict::HeaderTimeout
            }
        } else {
            AttemptVerdict::ConnectFailed
        }
    }

    /// Everything that follows from this verdict, given what the attempt may still do.
    pub(crate) fn effects(self, budget: AttemptBudget) -> Effects {
        let left = budget.attempts_left();
        // Back off and retry the same endpoint while attempts are left, else move on.
        let retry_or_move_on = if left {
            NextStep::BackOffAndRetry
        } else {
            NextStep::NextEndpoint
        };
        let quiet = Effects {
            health: HealthSignal::None,
            counts_upstream_failure: false,
            log: None,
            retrying: None,
            wakes_held_requests: false,
            next: NextStep::NextEndpoint,
        };
        match self {
            // The headers say nothing yet about the answer: its health signal (and `fastest`'s
            // latency sample) comes from how the body ends (`forwarder/finish.rs`).
            AttemptVerdict::Success => Effects {
                health: HealthSignal::None,
                wakes_held_requests: true,
                next: NextStep::Relay { fails_with: None },
                ..quiet
            },
            AttemptVerdict::Final => Effects {
                health: HealthSignal::Success,
                next: NextStep::Relay {
                    fails_with: Some(FailureReason::HttpError),
                },
                ..quiet
            },
            AttemptVerdict::ServerError { status } => Effects {
                health: HealthSignal::Failure(PassiveFailure::ServerError(status)),
                log: Some((LogLevel::Warn, "upstream error")),
                retrying: Some(FailureReason::ServerError),
                next: retry_or_move_on,
                ..quiet
            },
            AttemptVerdict::RateLimited { retry_after } => {
                let (log, next) = match retry_after {
                    Some(wait) if wait <= budget.max_wait && left => (
                        Some((LogLevel::Info, "rate limited: waiting as asked")),
                        NextStep::WaitAndRetry(wait),
                    ),
                    Some(wait) => (
                        Some((
                            LogLevel::Info,
                            "rate limited: endpoint skipped until its reset",
                        )),
                        NextStep::SkipEndpoint(wait),
                    ),
                    None => (None, retry_or_move_on),
                };
                Effects {
                    health: HealthSignal::Success,
                    log,
                    retrying: Some(FailureReason::RateLimited),
                    next,
                    ..quiet
                }
            }
            // No retry against a spent account: the router blocked it until its reset.
            AttemptVerdict::QuotaRejected => Effects {
                health: HealthSignal::Success,
                log: Some((
                    LogLevel::Info,
                    "subscription quota rejected: endpoint blocked until its reset",
                )),
                retrying: Some(FailureReason::RateLimited),
                ..quiet
            },
            AttemptVerdict::CredentialsRefused => Effects {
                health: HealthSignal::AuthFailed,
                log: Some((
                    LogLevel::Warn,
                    "endpoint refused its credentials: next endpoint",
                )),
                retrying: Some(FailureReason::AuthError),
                ..quiet
            },
            AttemptVerdict::ConnectFailed => Effects {
                health: HealthSignal::Failure(PassiveFailure::Connect),
                counts_upstream_failure: true,
                log: Some((LogLevel::Warn, "attempt failed")),
                retrying: Some(FailureReason::NetworkError),
                next: retry_or_move_on,
                ..quiet
            },
            AttemptVerdict::HeaderTimeout => Effects {
                health: HealthSignal::Failure(PassiveFailure::Timeout),
                counts_upstream_failure: true,
                log: Some((LogLevel::Warn, "attempt failed")),
                retrying: Some(FailureReason::Timeout),
                next: retry_or_move_on,
                ..quiet
            },
            AttemptVerdict::TimedOutAfterSend => Effects {
                health: HealthSignal::Failure(PassiveFailure::Timeout),
                counts_upstream_failure: true,
                log: Some((
                    LogLevel::Warn,
                    "timed out after the request was sent (the upstream may be generating it): one last attempt, on another endpoint",
                )),
                retrying: Some(FailureReason::Timeout),
                next: NextStep::LastAttemptElsewhere,
                ..quiet
            },
            AttemptVerdict::Unsendable => Effects {
                log: Some((LogLevel::Warn, "attempt impossible")),
                ..quiet
            },
            AttemptVerdict::FailoverStatus { status } => {
                let (health, retrying) = if status >= 500 {
                    (
                        HealthSignal::Failure(PassiveFailure::ServerError(status)),
                        FailureReason::ServerError,
                    )
                } else {
                    (HealthSignal::Success, FailureReason::HttpError)
                };
                Effects {
                    health,
                    log: Some((
                        LogLevel::Warn,
                        "status listed in retry.failover_on_status: next endpoint",
                    )),
                    retrying: Some(retrying),
                    ..quiet
                }
            }
            AttemptVerdict::EmptyAnswer => Effects {
                health: HealthSignal::Failure(PassiveFailure::BrokenResponse),
                log: Some((
                    LogLevel::Warn,
                    "empty answer (no content, 0 output tokens; retry.failover_on_empty_answer): next endpoint",
                )),
                retrying: Some(FailureReason::StreamError),
                ..quiet
            },
            AttemptVerdict::ThinkingRepaired => Effects {
                health: HealthSignal::Success,
                log: Some((
                    LogLevel::Info,
                    "invalid thinking signature: earlier thinking blocks dropped, same endpoint again (routing.repair_thinking_signatures)",
                )),
                retrying: Some(FailureReason::HttpError),
                next: NextStep::RetryRepaired,
                ..quiet
            },
        }
    }
}

/// What a request may still try, beyond each endpoint's attempts: once an attempt timed out
/// after the request was sent, one last attempt on another endpoint, then nothing.
#[derive(Debug, Default)]
pub(crate) struct RequestRetries {
    /// The endpoint that may be generating the request (its attempt timed out after sending).
    generating_on: Option<String>,
    /// The one last attempt after such a timeout has been made.
    last_attempt_made: bool,
    /// The groups the request has tried: a group's first attempt of the request is a failover,
    /// not a retry; trying a group again (a held request routing again) is.
    groups_tried: Vec<String>,
    /// The request's body was repaired once after an invalid thinking signature
    /// (`thinking_repair.rs`); it is never repaired twice.
    thinking_repaired: bool,
}

/// Whether a request may make an attempt on an endpoint ([`RequestRetries::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptGate {
    /// Go ahead.
    Go,
    /// Not this endpoint (it may be generating the request): try another one.
    OtherEndpoint,
    /// No further attempt at all: the request ends with its final failure.
    Stop,
}

impl RequestRetries {
    /// Whether an attempt on `endpoint` may start.
    pub(crate) fn gate(&self, endpoint: &str) -> AttemptGate {
        match &self.generating_on {
            None => AttemptGate::Go,
            Some(_) if self.last_attempt_made => AttemptGate::Stop,
            Some(generating) if generating == endpoint => AttemptGate::OtherEndpoint,
            Some(_) => AttemptGate::Go,
        }
    }

    /// An attempt allowed by [`RequestRetries::gate`] starts.
    pub(crate) fn attempt_started(&mut self) {
        if self.generating_on.is_some() {
            self.last_attempt_made = true;
        }
    }

    /// The attempt on `endpoint` timed out after the request was sent
    /// ([`NextStep::LastAttemptElsewhere`]). Only the first such endpoint is remembered: after
    /// the last attempt nothing more is tried anyway.
    pub(crate) fn timed_out_after_send(&mut self, endpoint: &str) {
        if self.generating_on.is_none() {
            self.generating_on = Some(endpoint.to_string());
        }
    }

    /// No attempt may follow: the last attempt after a timeout was made.
    pub(crate) fn is_over(&self) -> bool {
        self.last_attempt_made
    }

    /// Whether the request may still have its body repaired after an invalid thinking
    /// signature (once per request).
    pub(crate) fn may_repair_thinking(&self) -> bool {
        !self.thinking_repaired
    }

    /// The request's body was repaired after an invalid thinking signature.
    pub(crate) fn thinking_repaired(&mut self) {
        self.thinking_repaired = true;
    }

    /// The request starts trying `group`: `true` when it never tried it before (its first
    /// attempt there is a failover and needs no retry permit).
    pub(crate) fn enter_group(&mut self, group: &str) -> bool {
        if self.groups_tried.iter().any(|tried| tried == group) {
            return false;
        }
        self.groups_tried.push(group.to_string());
        true
    }
}

/// The retry budget's settings: `retry.budget_percent` and `retry.min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RetryBudgetSettings {
    /// Retries in flight at most this share (percent) of the requests in flight.
    pub(crate) budget_percent: f64,
    /// Retries always allowed in flight, whatever the share (the floor).
    pub(crate) min_retry_concurrency: u32,
}

impl RetryBudgetSettings {
    /// The settings of `retry.*`.
    pub(crate) fn from_config(retry: &ccf_config::RetryConfig) -> Self {
        RetryBudgetSettings {
            budget_percent: retry.budget_percent,
            min_retry_concurrency: retry.min_retry_concurrency,
        }
    }

    /// Retries allowed in flight with `active_requests` requests in flight:
    /// `max(min_retry_concurrency, floor(active_requests × budget_percent / 100))`.
    pub(crate) fn limit(&self, active_requests: usize) -> usize {
        let percent = if self.budget_percent.is_finite() {
            self.budget_percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        // Exact for any realistic count: both factors are far below 2^52.
        let share = (active_requests as f64 * percent / 100.0).floor() as usize;
        share.max(usize::try_from(self.min_retry_concurrency).unwrap_or(usize::MAX))
    }
}

/// Envoy's retry budget: retries in flight are at most `retry.budget_percent` of the requests in
/// flight, and never fewer than `retry.min_retry_concurrency`. A retry is every attempt of a
/// request but its first and the first on each group it fails over to: the same endpoint
/// again, the next endpoint of the group, and every attempt of a held request routing again.
/// Shared by every request of a forwarder.
#[derive(Debug, Default, Clone)]
pub(crate) struct RetryBudget {
    retries_in_flight: Arc<AtomicUsize>,
}

/// One retry in flight, counted against the [`RetryBudget`] until dropped.
#[derive(Debug)]
pub(crate) struct RetryPermit {
    retries_in_flight: Arc<AtomicUsize>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.retries_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RetryBudget {
    /// A permit for one retry, or `None` when `settings` allow no more retries in flight with
    /// `active_requests` requests in flight. Hold the permit while the retry is in flight.
    pub(crate) fn try_acquire(
        &self,
        settings: RetryBudgetSettings,
        active_requests: usize,
    ) -> Option<RetryPermit> {
        let limit = settings.limit(active_requests);
        self.retries_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_flight| {
                (in_flight < limit).then_some(in_flight + 1)
            })
            .ok()
            .map(|_| RetryPermit {
                retries_in_flight: Arc::clone(&self.retries_in_flight),
            })
    }

    /// Retries in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.retries_in_flight.load(Ordering::Acquire)
    }
}

pub(crate) mod empty_answer;

#[cfg(test)]
mod tests;
