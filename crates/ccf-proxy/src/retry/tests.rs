//! Unit tests of `retry.rs`, kept in their own file so the module reads as its logic.

use super::*;

const MAX_WAIT: Duration = Duration::from_secs(10);

/// One row of the table in the module docs: health | lifecycle | metric | log | next.
fn row(effects: Effects) -> String {
    let health = match effects.health {
        HealthSignal::None => "-".to_string(),
        HealthSignal::Success => "success".to_string(),
        HealthSignal::Failure(PassiveFailure::Connect) => "failure connect".to_string(),
        HealthSignal::Failure(PassiveFailure::Timeout) => "failure timeout".to_string(),
        HealthSignal::Failure(PassiveFailure::ServerError(status)) => {
            format!("failure server_error({status})")
        }
        HealthSignal::Failure(PassiveFailure::BrokenResponse) => {
            "failure broken_response".to_string()
        }
        HealthSignal::AuthFailed => "auth failed".to_string(),
    };
    let lifecycle = match (effects.retrying, effects.next) {
        (Some(reason), _) => format!("retrying {}", reason.as_str()),
        (None, NextStep::Relay { fails_with: None }) => "completes".to_string(),
        (
            None,
            NextStep::Relay {
                fails_with: Some(reason),
            },
        ) => format!("fails {}", reason.as_str()),
        (None, _) => "-".to_string(),
    };
    let metric = if effects.counts_upstream_failure {
        "ccf_upstream_failures_total"
    } else {
        "-"
    };
    let log = match effects.log {
        None => "-".to_string(),
        Some((LogLevel::Info, message)) => format!("info: {message}"),
        Some((LogLevel::Warn, message)) => format!("warn: {message}"),
    };
    let next = match effects.next {
        NextStep::Relay { .. } => "relay".to_string(),
        NextStep::BackOffAndRetry => "back off, same endpoint".to_string(),
        NextStep::WaitAndRetry(wait) => format!("wait {}s, same endpoint", wait.as_secs()),
        NextStep::SkipEndpoint(wait) => format!("skip endpoint {}s, next", wait.as_secs()),
        NextStep::NextEndpoint => "next endpoint".to_string(),
        NextStep::LastAttemptElsewhere => "one last attempt, another endpoint".to_string(),
        NextStep::RetryRepaired => "same endpoint at once".to_string(),
    };
    let wake = if effects.wakes_held_requests {
        "; wake held"
    } else {
        ""
    };
    format!("{health} | {lifecycle} | {metric} | {log} | {next}{wake}")
}

/// `verdict`'s effects with attempts left on the endpoint (attempt 1 of 3) and on its last
/// attempt (3 of 3).
fn check(verdict: AttemptVerdict, with_attempts_left: &str, on_last_attempt: &str) {
    for (attempt, expected) in [(1, with_attempts_left), (3, on_last_attempt)] {
        let budget = AttemptBudget {
            attempt,
            max_attempts: 3,
            max_wait: MAX_WAIT,
        };
        assert_eq!(
            row(verdict.effects(budget)),
            expected,
            "{verdict:?}, attempt {attempt} of 3"
        );
    }
}

#[test]
fn every_verdict_has_the_effects_of_its_table_row() {
    use AttemptVerdict::*;
    check(
        Success,
        "- | completes | - | - | relay; wake held",
        "- | completes | - | - | relay; wake held",
    );
    check(
        Final,
        "success | fails http_error | - | - | relay",
        "success | fails http_error | - | - | relay",
    );
    check(
        ServerError { status: 503 },
        "failure server_error(503) | retrying server_error | - | warn: upstream error | back off, same endpoint",
        "failure server_error(503) | retrying server_error | - | warn: upstream error | next endpoint",
    );
    check(
        RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        },
        "success | retrying rate_limited | - | info: rate limited: waiting as asked | wait 7s, same endpoint",
        "success | retrying rate_limited | - | info: rate limited: endpoint skipped until its reset | skip endpoint 7s, next",
    );
    check(
        RateLimited {
            retry_after: Some(MAX_WAIT),
        },
        "success | retrying rate_limited | - | info: rate limited: waiting as asked | wait 10s, same endpoint",
        "success | retrying rate_limited | - | info: rate limited: endpoint skipped until its reset | skip endpoint 10s, next",
    );
    check(
        RateLimited {
            retry_after: Some(MAX_WAIT + Duration::from_secs(1)),
        },
        "success | retrying rate_limited | - | info: rate limited: endpoint skipped until its reset | skip endpoint 11s, next",
        "success | retrying rate_limited | - | info: rate limited: endpoint skipped until its reset | skip endpoint 11s, next",
    );
    check(
        RateLimited { retry_after: None },
        "success | retrying rate_limited | - | - | back off, same endpoint",
        "success | retrying rate_limited | - | - | next endpoint",
    );
    check(
        QuotaRejected,
        "success | retrying rate_limited | - | info: subscription quota rejected: endpoint blocked until its reset | next endpoint",
        "success | retrying rate_limited | - | info: subscription quota rejected: endpoint blocked until its reset | next endpoint",
    );
    check(
        CredentialsRefused,
        "auth failed | retrying auth_error | - | warn: endpoint refused its credentials: next endpoint | next endpoint",
        "auth failed | retrying auth_error | - | warn: endpoint refused its credentials: next endpoint | next endpoint",
    );
    check(
        ConnectFailed,
        "failure connect | retrying network_error | ccf_upstream_failures_total | warn: attempt failed | back off, same endpoint",
        "failure connect | retrying network_error | ccf_upstream_failures_total | warn: attempt failed | next endpoint",
    );
    check(
        HeaderTimeout,
        "failure timeout | retrying timeout | ccf_upstream_failures_total | warn: attempt failed | back off, same endpoint",
        "failure timeout | retrying timeout | ccf_upstream_failures_total | warn: attempt failed | next endpoint",
    );
    check(
        TimedOutAfterSend,
        "failure timeout | retrying timeout | ccf_upstream_failures_total | warn: timed out after the request was sent (the upstream may be generating it): one last attempt, on another endpoint | one last attempt, another endpoint",
        "failure timeout | retrying timeout | ccf_upstream_failures_total | warn: timed out after the request was sent (the upstream may be generating it): one last attempt, on another endpoint | one last attempt, another endpoint",
    );
    check(
        Unsendable,
        "- | - | - | warn: attempt impossible | next endpoint",
        "- | - | - | warn: attempt impossible | next endpoint",
    );
}

#[test]
fn a_single_attempt_never_waits_or_backs_off() {
    let budget = AttemptBudget {
        attempt: 1,
        max_attempts: 1,
        max_wait: MAX_WAIT,
    };
    assert_eq!(
        AttemptVerdict::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
        .effects(budget)
        .next,
        NextStep::SkipEndpoint(Duration::from_secs(1))
    );
    for verdict in [
        AttemptVerdict::ServerError { status: 500 },
        AttemptVerdict::RateLimited { retry_after: None },
        AttemptVerdict::ConnectFailed,
        AttemptVerdict::HeaderTimeout,
    ] {
        assert_eq!(
            verdict.effects(budget).next,
            NextStep::NextEndpoint,
            "{verdict:?}"
        );
    }
}

#[test]
fn answers_and_errors_get_their_verdicts() {
    let now = SystemTime::UNIX_EPOCH;
    let check = |status: u16, expected: AttemptVerdict| {
        let status = StatusCode::from_u16(status).expect("valid status");
        assert_eq!(
            AttemptVerdict::of_answer(status, &HeaderMap::new(), now),
            expected,
            "{status}"
        );
    };
    check(200, AttemptVerdict::Success);
    check(304, AttemptVerdict::Success);
    check(400, AttemptVerdict::Final);
    check(501, AttemptVerdict::Final);
    check(529, AttemptVerdict::ServerError { status: 529 });
    check(429, AttemptVerdict::RateLimited { retry_after: None });
    check(401, AttemptVerdict::CredentialsRefused);
    check(403, AttemptVerdict::CredentialsRefused);

    let timeout = |request_sent| ProxyError::HeaderTimeout {
        endpoint: "e".into(),
        timeout: Duration::from_secs(1),
        request_sent,
    };
    assert_eq!(
        AttemptVerdict::of_error(&timeout(false)),
        AttemptVerdict::HeaderTimeout
    );
    assert_eq!(
        AttemptVerdict::of_error(&timeout(true)),
        AttemptVerdict::TimedOutAfterSend
    );
    let bad_url = ProxyError::BadUpstreamUrl {
        endpoint: "e".into(),
        message: "query".into(),
    };
    assert_eq!(
        AttemptVerdict::of_error(&bad_url),
        AttemptVerdict::Unsendable
    );
}

#[test]
fn only_relayed_verdicts_relay_and_only_answers_are_relayed() {
    for verdict in [
        AttemptVerdict::ConnectFailed,
        AttemptVerdict::HeaderTimeout,
        AttemptVerdict::TimedOutAfterSend,
        AttemptVerdict::Unsendable,
    ] {
        for attempt in 1..=3 {
            let effects = verdict.effects(AttemptBudget {
                attempt,
                max_attempts: 3,
                max_wait: MAX_WAIT,
            });
            assert!(
                !matches!(effects.next, NextStep::Relay { .. }),
                "{verdict:?} has no answer to relay"
            );
        }
    }
}

#[test]
fn after_a_timeout_after_sending_one_last_attempt_goes_elsewhere_then_nothing() {
    let mut retries = RequestRetries::default();
    assert_eq!(retries.gate("a"), AttemptGate::Go);
    retries.attempt_started();
    assert!(!retries.is_over(), "an ordinary attempt ends nothing");
    retries.timed_out_after_send("a");
    assert_eq!(retries.gate("a"), AttemptGate::OtherEndpoint);
    assert_eq!(retries.gate("b"), AttemptGate::Go);
    retries.attempt_started();
    assert!(retries.is_over());
    assert_eq!(retries.gate("b"), AttemptGate::Stop);
    assert_eq!(retries.gate("c"), AttemptGate::Stop);
    // A second timeout does not move the blame or reopen anything.
    retries.timed_out_after_send("b");
    assert_eq!(retries.gate("a"), AttemptGate::Stop);
}

#[test]
fn only_a_groups_first_visit_is_a_failover() {
    let mut retries = RequestRetries::default();
    assert!(retries.enter_group("main"));
    assert!(retries.enter_group("backup"), "failing over to a new group");
    assert!(!retries.enter_group("main"), "routing again after a hold");
    assert!(!retries.enter_group("backup"));
}

#[test]
fn the_retry_budget_allows_a_share_of_active_requests_with_a_floor() {
    let settings = RetryBudgetSettings {
        budget_percent: 20.0,
        min_retry_concurrency: 3,
    };
    assert_eq!(settings.limit(0), 3);
    assert_eq!(settings.limit(10), 3, "20% of 10 is below the floor");
    assert_eq!(settings.limit(19), 3);
    assert_eq!(settings.limit(20), 4);
    assert_eq!(settings.limit(24), 4, "rounded down");
    assert_eq!(settings.limit(100), 20);
    let no_floor = RetryBudgetSettings {
        budget_percent: 50.0,
        min_retry_concurrency: 0,
    };
    assert_eq!(no_floor.limit(1), 0);
    assert_eq!(no_floor.limit(9), 4);

    let budget = RetryBudget::default();
    let permits: Vec<RetryPermit> = (0..4)
        .map(|_| budget.try_acquire(settings, 20).expect("within the budget"))
        .collect();
    assert_eq!(budget.in_flight(), 4);
    assert!(budget.try_acquire(settings, 20).is_none(), "budget spent");
    assert!(
        budget.try_acquire(settings, 25).is_some(),
        "more requests in flight, more retries"
    );
    drop(permits);
    assert_eq!(budget.in_flight(), 0, "permits released when dropped");
    assert!(budget.try_acquire(settings, 1).is_some());
}

#[test]
fn failover_triggers_have_the_effects_of_their_table_rows() {
    use AttemptVerdict::*;
    check(
        FailoverStatus { status: 404 },
        "success | retrying http_error | - | warn: status listed in retry.failover_on_status: next endpoint | next endpoint",
        "success | retrying http_error | - | warn: status listed in retry.failover_on_status: next endpoint | next endpoint",
    );
    check(
        FailoverStatus { status: 503 },
        "failure server_error(503) | retrying server_error | - | warn: status listed in retry.failover_on_status: next endpoint | next endpoint",
        "failure server_error(503) | retrying server_error | - | warn: status listed in retry.failover_on_status: next endpoint | next endpoint",
    );
    check(
        EmptyAnswer,
        "failure broken_response | retrying stream_error | - | warn: empty answer (no content, 0 output tokens; retry.failover_on_empty_answer): next endpoint | next endpoint",
        "failure broken_response | retrying stream_error | - | warn: empty answer (no content, 0 output tokens; retry.failover_on_empty_answer): next endpoint | next endpoint",
    );
    check(
        ThinkingRepaired,
        "success | retrying http_error | - | info: invalid thinking signature: earlier thinking blocks dropped, same endpoint again (routing.repair_thinking_signatures) | same endpoint at once",
        "success | retrying http_error | - | info: invalid thinking signature: earlier thinking blocks dropped, same endpoint again (routing.repair_thinking_signatures) | same endpoint at once",
    );
}

#[test]
fn only_listed_statuses_of_relayed_or_retried_answers_become_failovers() {
    let triggers = FailoverTriggers {
        statuses: &[404, 400, 503],
        empty_answer: false,
    };
    assert_eq!(
        AttemptVerdict::Final.with_status_trigger(404, triggers),
        AttemptVerdict::FailoverStatus { status: 404 }
    );
    assert_eq!(
        AttemptVerdict::ServerError { status: 503 }.with_status_trigger(503, triggers),
        AttemptVerdict::FailoverStatus { status: 503 }
    );
    assert_eq!(
        AttemptVerdict::Final.with_status_trigger(422, triggers),
        AttemptVerdict::Final
    );
    assert_eq!(
        AttemptVerdict::Success.with_status_trigger(200, triggers),
        AttemptVerdict::Success
    );
    let none = FailoverTriggers {
        statuses: &[],
        empty_answer: false,
    };
    assert_eq!(
        AttemptVerdict::Final.with_status_trigger(404, none),
        AttemptVerdict::Final
    );
}
