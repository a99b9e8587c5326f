//! State machine tests: every transition from every live state, the finishing rules, events,
//! the coalescer and the serialized record.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use ccf_types::Usage;

use crate::*;

const REQUEST_MODEL: &str = "claude-sonnet-4-5";

fn at(millis: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis)
}

fn request_start(request_model: Option<&str>) -> RequestStart {
    RequestStart {
        id: RequestId::from_u64(0xab),
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        user_agent: Some("claude-cli/2.0.0".to_string()),
        method: "POST".to_string(),
        path: "/v1/messages".to_string(),
        is_streaming: true,
        request_model: request_model.map(str::to_string),
        api_key_name: None,
    }
}

fn started() -> Lifecycle {
    Lifecycle::start(request_start(Some(REQUEST_MODEL)), at(0)).0
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

fn attempt(endpoint: &str, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        endpoint: endpoint.to_string(),
        group: "main".to_string(),
        started_at: at(10),
        duration: Duration::from_millis(40),
        outcome,
    }
}

/// The live states a lifecycle can be in, each reached through valid calls only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Pending,
    PendingSuspended,
    Forwarding,
    ForwardingRetry,
    ForwardingSuspended,
    Processing,
}

const LIVE: [Live; 6] = [
    Live::Pending,
    Live::PendingSuspended,
    Live::Forwarding,
    Live::ForwardingRetry,
    Live::ForwardingSuspended,
    Live::Processing,
];

/// One valid call on the way to a live state.
type Step = fn(&mut Lifecycle) -> Result<LifecycleEvent, TransitionError>;

fn reach(state: Live) -> Lifecycle {
    let mut lifecycle = started();
    let steps: &[Step] = match state {
        Live::Pending => &[],
        Live::PendingSuspended => &[|l| l.suspended()],
        Live::Forwarding => &[|l| l.forwarding("primary", "main")],
        Live::ForwardingRetry => &[
            |l| l.forwarding("primary", "main"),
            |l| l.retrying(FailureReason::ServerError, "HTTP 503"),
        ],
        Live::ForwardingSuspended => &[|l| l.forwarding("primary", "main"), |l| l.suspended()],
        Live::Processing => &[
            |l| l.forwarding("primary", "main"),
            |l| l.processing(200, Duration::from_millis(300)),
        ],
    };
    for step in steps {
        step(&mut lifecycle).unwrap();
    }
    lifecycle
}

fn apply(
    lifecycle: &mut Lifecycle,
    transition: Transition,
) -> Result<LifecycleEvent, TransitionError> {
    match transition {
        Transition::Forward => lifecycle.forwarding("backup", "spare"),
        Transition::Retry => lifecycle.retrying(FailureReason::RateLimited, "HTTP 429"),
        Transition::Suspend => lifecycle.suspended(),
        Transition::Resume => lifecycle.resumed(),
        Transition::Process => lifecycle.processing(200, Duration::from_millis(500)),
    }
}

/// `Ok((status, error_state, change_type))` after the transition, or the rejection.
type Expected = Result<(Status, Option<ErrorState>, ChangeType), TransitionError>;

fn check(state: Live, transition: Transition, expected: Expected) {
    let mut lifecycle = reach(state);
    let before = lifecycle.record().clone();
    let result = apply(&mut lifecycle, transition);
    let context = format!("{transition:?} from {state:?}");
    match (result, expected) {
        (Ok(event), Ok((status, error_state, change_type))) => {
            let record = lifecycle.record();
            assert_eq!(record.status, status, "{context}");
            assert_eq!(record.error_state, error_state, "{context}");
            assert_eq!(event.change_type(), change_type, "{context}");
            assert_eq!(event.record(), record, "{context}: the event is a snapshot");
            assert!(!record.is_final() && !event.is_final(), "{context}");
        }
        (Err(error), Err(expected_error)) => {
            assert_eq!(error, expected_error, "{context}");
            assert_eq!(
                lifecycle.record(),
                &before,
                "{context}: a rejection changes nothing"
            );
        }
        (got, want) => panic!("{context}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn every_transition_from_every_live_state() {
    use ChangeType as C;
    use ErrorState::{Retry, Suspended};
    use Live as L;
    use Status::{Forwarding, Pending, Processing};
    use Transition as T;
    let status = |transition, status| Err(TransitionError::Status { transition, status });
    let suspended = |transition| Err(TransitionError::Suspended { transition });
    let not_suspended = Err(TransitionError::NotSuspended);

    let table: Vec<(Live, Transition, Expected)> = vec![
        // forwarding: from pending and forwarding, whatever the error state (it clears it).
        (
            L::Pending,
            T::Forward,
            Ok((Forwarding, None, C::StatusChanged)),
        ),
        (
            L::PendingSuspended,
            T::Forward,
            Ok((Forwarding, None, C::StatusChanged)),
        ),
        (
            L::Forwarding,
            T::Forward,
            Ok((Forwarding, None, C::StatusChanged)),
        ),
        (
            L::ForwardingRetry,
            T::Forward,
            Ok((Forwarding, None, C::StatusChanged)),
        ),
        (
            L::ForwardingSuspended,
            T::Forward,
            Ok((Forwarding, None, C::StatusChanged)),
        ),
        (L::Processing, T::Forward, status(T::Forward, Processing)),
        // retrying: status unchanged, error state retry; not while suspended or processing.
        (
            L::Pending,
            T::Retry,
            Ok((Pending, Some(Retry), C::RetryAttempt)),
        ),
        (L::PendingSuspended, T::Retry, suspended(T::Retry)),
        (
            L::Forwarding,
            T::Retry,
            Ok((Forwarding, Some(Retry), C::RetryAttempt)),
        ),
        (
            L::ForwardingRetry,
            T::Retry,
            Ok((Forwarding, Some(Retry), C::RetryAttempt)),
        ),
        (L::ForwardingSuspended, T::Retry, suspended(T::Retry)),
        (L::Processing, T::Retry, status(T::Retry, Processing)),
        // suspended: like retrying; suspending twice is rejected.
        (
            L::Pending,
            T::Suspend,
            Ok((Pending, Some(Suspended), C::SuspendedChange)),
        ),
        (L::PendingSuspended, T::Suspend, suspended(T::Suspend)),
        (
            L::Forwarding,
            T::Suspend,
            Ok((Forwarding, Some(Suspended), C::SuspendedChange)),
        ),
        (
            L::ForwardingRetry,
            T::Suspend,
            Ok((Forwarding, Some(Suspended), C::SuspendedChange)),
        ),
        (L::ForwardingSuspended, T::Suspend, suspended(T::Suspend)),
        (L::Processing, T::Suspend, status(T::Suspend, Processing)),
        // resumed: only when suspended.
        (L::Pending, T::Resume, not_suspended),
        (
            L::PendingSuspended,
            T::Resume,
            Ok((Pending, None, C::SuspendedChange)),
        ),
        (L::Forwarding, T::Resume, not_suspended),
        (L::ForwardingRetry, T::Resume, not_suspended),
        (
            L::ForwardingSuspended,
            T::Resume,
            Ok((Forwarding, None, C::SuspendedChange)),
        ),
        (L::Processing, T::Resume, not_suspended),
        // processing: only from forwarding, not suspended; never twice.
        (L::Pending, T::Process, status(T::Process, Pending)),
        (L::PendingSuspended, T::Process, status(T::Process, Pending)),
        (
            L::Forwarding,
            T::Process,
            Ok((Processing, None, C::StatusChanged)),
        ),
        (
            L::ForwardingRetry,
            T::Process,
            Ok((Processing, None, C::StatusChanged)),
        ),
        (L::ForwardingSuspended, T::Process, suspended(T::Process)),
        (L::Processing, T::Process, status(T::Process, Processing)),
    ];
    assert_eq!(table.len(), LIVE.len() * 5, "every pair is in the table");
    for (state, transition, expected) in table {
        check(state, transition, expected);
    }
}

#[test]
fn rejections_read_well() {
    let cases = [
        (
            TransitionError::Status {
                transition: Transition::Process,
                status: Status::Processing,
            },
            "cannot start processing a request that is processing",
        ),
        (
            TransitionError::Suspended {
                transition: Transition::Retry,
            },
            "cannot retry a suspended request",
        ),
        (
            TransitionError::NotSuspended,
            "cannot resume a request that is not suspended",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}

#[derive(Debug, Clone, Copy)]
enum Finish {
    Complete,
    Fail,
    FailWithStatus,
    FailClientCancelled,
    Cancel,
}

/// `(status, http_status, failure_reason, cancel_reason)` expected after finishing.
type Finished = (
    Status,
    Option<u16>,
    Option<FailureReason>,
    Option<&'static str>,
);

fn finish(lifecycle: Lifecycle, how: Finish) -> Outcome {
    let now = at(2_500);
    match how {
        Finish::Complete => lifecycle.complete(now),
        Finish::Fail => lifecycle.fail(FailureReason::StreamError, "stream cut", None, now),
        Finish::FailWithStatus => lifecycle.fail(
            FailureReason::EndpointExhausted,
            "all endpoints failed",
            Some(502),
            now,
        ),
        Finish::FailClientCancelled => lifecycle.fail(
            FailureReason::ClientCancelled,
            "client gone",
            Some(500),
            now,
        ),
        Finish::Cancel => lifecycle.cancel("client disconnected", now),
    }
}

#[test]
fn every_way_to_finish_from_every_live_state() {
    use FailureReason as R;
    use Status::{Cancelled, Completed, Failed};
    let unknown = Some(R::UnknownError);
    for state in LIVE {
        let processing = state == Live::Processing;
        // Failures keep the status already recorded unless given one.
        let kept = if processing { Some(200) } else { None };
        let cases: [(Finish, Finished); 5] = [
            (
                Finish::Complete,
                if processing {
                    (Completed, Some(200), None, None)
                } else {
                    (Failed, None, unknown, None)
                },
            ),
            (Finish::Fail, (Failed, kept, Some(R::StreamError), None)),
            (
                Finish::FailWithStatus,
                (Failed, Some(502), Some(R::EndpointExhausted), None),
            ),
            (
                Finish::FailClientCancelled,
                (Cancelled, Some(499), None, Some("client gone")),
            ),
            (
                Finish::Cancel,
                (Cancelled, Some(499), None, Some("client disconnected")),
            ),
        ];
        for (how, (status, http_status, failure_reason, cancel_reason)) in cases {
            let context = format!("{how:?} from {state:?}");
            let mut lifecycle = reach(state);
            lifecycle.set_usage(usage(100, 7), true);
            let outcome = finish(lifecycle, how);
            let record = outcome.record();
            assert!(record.is_final(), "{context}");
            assert_eq!(record.status, status, "{context}");
            assert_eq!(record.http_status, http_status, "{context}");
            assert_eq!(record.error_state, None, "{context}");
            assert_eq!(record.cancel_reason.as_deref(), cancel_reason, "{context}");
            if state == Live::ForwardingRetry && failure_reason.is_none() {
                // A cancel keeps why the request was retrying.
                assert_eq!(record.failure_reason, Some(R::ServerError), "{context}");
            } else {
                assert_eq!(record.failure_reason, failure_reason, "{context}");
            }
            assert_eq!(
                record.usage,
                Some(usage(100, 7)),
                "{context}: usage is kept"
            );
            assert!(record.partial, "{context}");
            assert_eq!(record.ended_at, Some(at(2_500)), "{context}");
            assert_eq!(
                record.duration,
                Some(Duration::from_millis(2_500)),
                "{context}"
            );
            let event = outcome.event();
            assert!(event.is_final(), "{context}");
            assert_eq!(event.record(), record, "{context}");
        }
    }
}

#[test]
fn a_successful_stream_completes_with_the_upstream_status_and_its_usage() {
    let mut lifecycle = started();
    lifecycle.forwarding("primary", "main").unwrap();
    lifecycle.attempt_finished(attempt("primary", AttemptOutcome::Status { status: 201 }));
    lifecycle
        .processing(201, Duration::from_millis(300))
        .unwrap();
    lifecycle.set_usage(usage(12, 1), true);
    lifecycle.set_usage(usage(12, 34), false);
    let record = lifecycle.complete(at(1_500)).into_record();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.http_status, Some(201));
    assert_eq!(record.usage, Some(usage(12, 34)));
    assert!(!record.partial);
    assert_eq!(record.retry_count, 0);
    assert_eq!(record.time_to_first_byte, Some(Duration::from_millis(300)));
    assert_eq!(record.duration, Some(Duration::from_millis(1_500)));
    assert_eq!(record.failure_reason, None);
}

#[test]
fn a_stream_that_fails_after_it_started_keeps_200_and_records_the_reason() {
    let mut lifecycle = reach(Live::Processing);
    lifecycle.set_usage(usage(50, 0), true);
    let record = lifecycle
        .fail(
            FailureReason::StreamError,
            "overloaded_error: Overloaded",
            None,
            at(900),
        )
        .into_record();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.http_status, Some(200));
    assert_eq!(record.failure_reason, Some(FailureReason::StreamError));
    assert_eq!(
        record.last_failure_reason.as_deref(),
        Some("overloaded_error: Overloaded")
    );
    assert_eq!(
        record.usage,
        Some(usage(50, 0)),
        "consumed tokens are billed"
    );
    assert!(record.partial);
}

#[test]
fn a_cancel_mid_stream_is_499_with_the_tokens_consumed() {
    let mut lifecycle = reach(Live::Processing);
    lifecycle.set_usage(usage(80, 0), true);
    let record = lifecycle.cancel("", at(700)).into_record();
    assert_eq!(record.status, Status::Cancelled);
    assert_eq!(record.http_status, Some(499));
    assert_eq!(record.cancel_reason.as_deref(), Some("client_cancelled"));
    assert_eq!(record.usage, Some(usage(80, 0)));
}

#[test]
fn retry_count_counts_attempts_beyond_the_first() {
    let mut lifecycle = started();
    assert_eq!(lifecycle.record().retry_count, 0);
    lifecycle.forwarding("primary", "main").unwrap();
    let outcomes = [
        AttemptOutcome::Status { status: 429 },
        AttemptOutcome::HeaderTimeout,
        AttemptOutcome::ConnectError {
            message: "connection refused".to_string(),
        },
        AttemptOutcome::Status { status: 200 },
    ];
    for (index, outcome) in outcomes.into_iter().enumerate() {
        lifecycle.attempt_finished(attempt("primary", outcome));
        assert_eq!(lifecycle.record().retry_count, index as u32);
        assert_eq!(lifecycle.record().attempts.len(), index + 1);
    }
}

#[test]
fn retries_and_failover_update_the_error_dimension_and_the_final_endpoint() {
    let mut lifecycle = started();
    lifecycle.forwarding("primary", "main").unwrap();
    lifecycle.attempt_finished(attempt("primary", AttemptOutcome::Status { status: 503 }));
    let event = lifecycle
        .retrying(FailureReason::ServerError, "HTTP 503")
        .unwrap();
    assert_eq!(event.change_type().as_str(), "retry_attempt");
    assert_eq!(lifecycle.record().error_state, Some(ErrorState::Retry));
    assert_eq!(
        lifecycle.record().last_failure_reason.as_deref(),
        Some("HTTP 503")
    );
    lifecycle.retrying(FailureReason::Timeout, "").unwrap();
    assert_eq!(
        lifecycle.record().failure_reason,
        Some(FailureReason::Timeout)
    );
    assert_eq!(
        lifecycle.record().last_failure_reason,
        None,
        "the detail always belongs to the reason"
    );
    lifecycle.forwarding("backup", "spare").unwrap();
    assert_eq!(lifecycle.record().error_state, None);
    lifecycle.attempt_finished(attempt("backup", AttemptOutcome::Status { status: 200 }));
    lifecycle
        .processing(200, Duration::from_millis(900))
        .unwrap();
    let record = lifecycle.complete(at(3_000)).into_record();
    assert_eq!(record.endpoint.as_deref(), Some("backup"));
    assert_eq!(record.group.as_deref(), Some("spare"));
    assert_eq!(record.retry_count, 1);
    assert_eq!(
        record.failure_reason,
        Some(FailureReason::Timeout),
        "a success keeps the last failure it got past"
    );
}

#[test]
fn the_response_model_wins_and_a_substitution_is_flagged() {
    let cases: [(Option<&str>, &str, bool, Option<&str>); 5] = [
        (
            Some(REQUEST_MODEL),
            "claude-sonnet-4-5-20250929",
            false,
            Some("claude-sonnet-4-5-20250929"),
        ),
        (
            Some(REQUEST_MODEL),
            "claude-3-haiku-20240307",
            true,
            Some("claude-3-haiku-20240307"),
        ),
        (
            None,
            "claude-3-haiku-20240307",
            false,
            Some("claude-3-haiku-20240307"),
        ),
        (Some(REQUEST_MODEL), "", false, Some(REQUEST_MODEL)),
        (Some(""), "", false, None),
    ];
    for (request_model, response_model, mismatch, model) in cases {
        let context = format!("{request_model:?} answered by {response_model:?}");
        let (mut lifecycle, _) = Lifecycle::start(request_start(request_model), at(0));
        assert_eq!(
            lifecycle.observe_response_model(response_model),
            mismatch,
            "{context}"
        );
        assert_eq!(lifecycle.record().model_mismatch, mismatch, "{context}");
        assert_eq!(lifecycle.record().model(), model, "{context}");
    }
}

#[test]
fn a_later_matching_model_clears_the_mismatch() {
    let mut lifecycle = started();
    assert!(lifecycle.observe_response_model("claude-3-haiku-20240307"));
    assert!(!lifecycle.observe_response_model("claude-sonnet-4-5-20250929"));
    assert!(!lifecycle.record().model_mismatch);
}

#[test]
fn completing_before_processing_fails_instead_so_there_is_still_one_outcome() {
    let record = reach(Live::Forwarding).complete(at(50)).into_record();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::UnknownError));
    assert_eq!(
        record.last_failure_reason.as_deref(),
        Some("completed before the upstream accepted the request")
    );
    assert_eq!(record.http_status, None);
}

#[test]
fn a_clock_that_went_backwards_gives_a_zero_duration() {
    let (lifecycle, _) = Lifecycle::start(request_start(None), at(5_000));
    let record = lifecycle.cancel("gone", at(1_000)).into_record();
    assert_eq!(record.duration, Some(Duration::ZERO));
    assert_eq!(record.ended_at, Some(at(1_000)));
}

#[test]
fn only_an_outcome_holds_a_final_record() {
    // Walk a request through every live step: neither the lifecycle nor its events are ever
    // final; the outcome and its event always are.
    let (mut lifecycle, started_event) = Lifecycle::start(request_start(None), at(0));
    let mut events = vec![started_event];
    events.push(lifecycle.suspended().unwrap());
    events.push(lifecycle.resumed().unwrap());
    events.push(lifecycle.forwarding("primary", "main").unwrap());
    events.push(
        lifecycle
            .retrying(FailureReason::NetworkError, "reset")
            .unwrap(),
    );
    events.push(lifecycle.forwarding("backup", "spare").unwrap());
    events.push(lifecycle.processing(200, Duration::from_millis(5)).unwrap());
    lifecycle.set_usage(usage(1, 1), false);
    events.push(lifecycle.snapshot());
    for event in &events {
        assert!(!event.is_final() && !event.record().is_final());
        assert_eq!(event.record().ended_at, None);
    }
    assert!(!lifecycle.record().is_final());
    let outcome = lifecycle.complete(at(10));
    assert!(outcome.record().is_final());
    assert_eq!(outcome.event().change_type(), ChangeType::Completed);
    let changes: Vec<&str> = events.iter().map(|e| e.change_type().as_str()).collect();
    assert_eq!(
        changes,
        [
            "request_started",
            "suspended_change",
            "suspended_change",
            "status_changed",
            "retry_attempt",
            "status_changed",
            "status_changed",
            "status_changed",
        ]
    );
}

#[test]
fn start_records_what_is_known_and_is_pending() {
    let (lifecycle, event) = Lifecycle::start(request_start(Some(REQUEST_MODEL)), at(0));
    let record = lifecycle.record();
    assert_eq!(event.change_type(), ChangeType::Started);
    assert_eq!(event.request_id(), RequestId::from_u64(0xab));
    assert_eq!(record.status, Status::Pending);
    assert_eq!(record.started_at, at(0));
    assert_eq!(record.model(), Some(REQUEST_MODEL));
    assert_eq!(
        (
            record.endpoint.as_deref(),
            record.http_status,
            record.usage.as_ref()
        ),
        (None, None, None)
    );
}

fn finished_record() -> Outcome {
    let mut lifecycle = started();
    lifecycle.forwarding("primary", "main").unwrap();
    lifecycle.attempt_finished(attempt("primary", AttemptOutcome::Status { status: 529 }));
    lifecycle
        .retrying(FailureReason::ServerError, "HTTP 529")
        .unwrap();
    lifecycle.forwarding("backup", "spare").unwrap();
    lifecycle.attempt_finished(attempt("backup", AttemptOutcome::Status { status: 200 }));
    lifecycle
        .processing(200, Duration::from_millis(320))
        .unwrap();
    lifecycle.observe_response_model("claude-3-haiku-20240307");
    lifecycle.set_usage(
        Usage {
            input_tokens: 12,
            output_tokens: 34,
            cache_read_input_tokens: 5,
            ..Usage::default()
        },
        false,
    );
    lifecycle.complete(at(1_500))
}

#[test]
fn a_record_serializes_with_reference_words_and_milliseconds() {
    let json = serde_json::to_string_pretty(&finished_record().event()).unwrap();
    let expected = r#"{
  "change_type": "request_completed",
  "request": {
    "id": "req-00000000000000ab",
    "client_ip": "10.0.0.7",
    "user_agent": "claude-cli/2.0.0",
    "method": "POST",
    "path": "/v1/messages",
    "is_streaming": true,
    "status": "completed",
    "error_state": null,
    "endpoint": "backup",
    "group": "spare",
    "request_model": "claude-sonnet-4-5",
    "response_model": "claude-3-haiku-20240307",
    "model_mismatch": true,
    "attempts": [
      {
        "endpoint": "primary",
        "group": "main",
        "started_at": 1700000000010,
        "duration": 40,
        "outcome": {
          "kind": "status",
          "status": 529
        }
      },
      {
        "endpoint": "backup",
        "group": "main",
        "started_at": 1700000000010,
        "duration": 40,
        "outcome": {
          "kind": "status",
          "status": 200
        }
      }
    ],
    "retry_count": 1,
    "http_status": 200,
    "started_at": 1700000000000,
    "ended_at": 1700000001500,
    "duration": 1500,
    "time_to_first_byte": 320,
    "usage": {
      "input_tokens": 12,
      "output_tokens": 34,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 5,
      "cache_creation_5m_input_tokens": 0,
      "cache_creation_1h_input_tokens": 0,
      "web_search_requests": 0,
      "service_tier": null
    },
    "partial": false,
    "failure_reason": "server_error",
    "last_failure_reason": "HTTP 529",
    "cancel_reason": null
  }
}"#;
    assert_eq!(json, expected);
}

#[test]
fn the_summary_is_one_line_with_the_stable_field_names() {
    let summary = finished_record().record().summary();
    assert_eq!(
        summary,
        "req-00000000000000ab completed http_status=200 endpoint=backup group=spare \
         model=claude-3-haiku-20240307 request_model=claude-sonnet-4-5 input_tokens=12 \
         output_tokens=34 cache_creation_input_tokens=0 cache_read_input_tokens=5 \
         retry_count=1 duration_ms=1500 failure_reason=server_error detail=\"HTTP 529\""
    );
    let pending = started().record().summary();
    assert_eq!(
        pending,
        "req-00000000000000ab pending http_status=- endpoint=- group=- \
         model=claude-sonnet-4-5 tokens=- retry_count=0 duration_ms=-"
    );
    let cancelled = reach(Live::Forwarding)
        .cancel("client said \"bye\"\nnow", at(10))
        .into_record()
        .summary();
    assert!(!cancelled.contains('\n'), "{cancelled}");
    assert!(
        cancelled.ends_with(r#"cancel_reason="client said \"bye\"\nnow""#),
        "{cancelled}"
    );
}

mod coalescer {
    use super::*;

    /// Events of two requests: `a` started, forwarded, processed, completed; `b` started.
    fn events() -> (Vec<LifecycleEvent>, LifecycleEvent, LifecycleEvent) {
        let (mut a, a_started) = Lifecycle::start(request_start(None), at(0));
        let a_forwarding = a.forwarding("primary", "main").unwrap();
        let a_processing = a.processing(200, Duration::from_millis(1)).unwrap();
        let a_done = a.complete(at(5)).event();
        let mut b_start = request_start(None);
        b_start.id = RequestId::from_u64(0xcd);
        let (_b, b_started) = Lifecycle::start(b_start, at(1));
        (
            vec![a_started, a_forwarding, a_processing],
            a_done,
            b_started,
        )
    }

    fn kinds(events: &[LifecycleEvent]) -> Vec<(u64, &'static str, Status)> {
        events
            .iter()
            .map(|e| {
                (
                    e.request_id().as_u64(),
                    e.change_type().as_str(),
                    e.record().status,
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_snapshot_per_request_in_arrival_order() {
        let (a_events, _, b_started) = events();
        let mut coalescer = Coalescer::new();
        coalescer.push(a_events[0].clone());
        coalescer.push(b_started);
        coalescer.push(a_events[1].clone());
        coalescer.push(a_events[2].clone());
        assert_eq!(coalescer.len(), 2);
        assert_eq!(
            kinds(&coalescer.drain()),
            [
                (0xab, "request_started", Status::Processing),
                (0xcd, "request_started", Status::Pending),
            ]
        );
        assert!(coalescer.is_empty());
        assert!(coalescer.pop().is_none());
    }

    #[test]
    fn never_drops_or_overwrites_a_final_event() {
        let (a_events, a_done, _) = events();
        let mut coalescer = Coalescer::new();
        coalescer.push(a_events[1].clone());
        coalescer.push(a_done.clone());
        coalescer.push(a_events[2].clone()); // stale, arrives late
        coalescer.push(a_events[0].clone());
        assert_eq!(
            kinds(&coalescer.drain()),
            [(0xab, "request_completed", Status::Completed)]
        );
        // Delivered then pushed again: it is a new entry.
        coalescer.push(a_events[2].clone());
        assert_eq!(
            coalescer.pop().map(|e| e.change_type()),
            Some(ChangeType::StatusChanged)
        );
    }

    #[test]
    fn a_final_event_replaces_a_waiting_start() {
        let (a_events, a_done, _) = events();
        let mut coalescer = Coalescer::new();
        coalescer.push(a_events[0].clone());
        coalescer.push(a_done);
        assert_eq!(
            kinds(&coalescer.drain()),
            [(0xab, "request_completed", Status::Completed)]
        );
    }
}

#[test]
fn events_are_snapshots_that_share_the_record_until_it_changes() {
    let mut lifecycle = started();
    let forwarding = lifecycle.forwarding("primary", "main").unwrap();
    // Nothing changed since: the event shares the lifecycle's record, no copy was made.
    assert!(std::ptr::eq(forwarding.record(), lifecycle.record()));
    lifecycle.set_usage(usage(10, 2), false);
    // A held event keeps what it announced; the lifecycle changed a copy.
    assert!(!std::ptr::eq(forwarding.record(), lifecycle.record()));
    assert_eq!(forwarding.record().usage, None);
    assert_eq!(forwarding.record().status, Status::Forwarding);
    assert_eq!(lifecycle.record().usage, Some(usage(10, 2)));
    let processing = lifecycle.processing(200, Duration::from_millis(5)).unwrap();
    assert_eq!(processing.record().status, Status::Processing);
    assert_eq!(forwarding.record().status, Status::Forwarding);
    drop(processing);
    let outcome = lifecycle.complete(at(50));
    assert_eq!(outcome.record().status, Status::Completed);
    assert_eq!(outcome.record().usage, Some(usage(10, 2)));
    assert_eq!(forwarding.record().ended_at, None);
}

#[test]
fn a_mapped_request_compares_the_answer_with_the_model_sent() {
    let mut lifecycle = started();
    lifecycle.model_sent(Some("glm-4.5"));
    assert_eq!(
        lifecycle.record().model(),
        Some("glm-4.5"),
        "billed as sent until the upstream reports"
    );
    assert!(
        !lifecycle.observe_response_model("glm-4.5"),
        "the mapped name is no mismatch"
    );
    assert_eq!(
        lifecycle.record().request_model.as_deref(),
        Some(REQUEST_MODEL)
    );
    assert_eq!(lifecycle.record().model(), Some("glm-4.5"));
    assert!(
        lifecycle.observe_response_model(REQUEST_MODEL),
        "another model than the one sent"
    );
    // A failover to an endpoint without a map sends the request's model again.
    lifecycle.model_sent(None);
    assert!(!lifecycle.observe_response_model(REQUEST_MODEL));
    assert_eq!(lifecycle.record().sent_model, None);
}
