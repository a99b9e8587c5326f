//! Timeouts and retries as users expect them (issue #17, points 1 and 5): a non-streaming
//! request is bounded by its endpoint's `timeout`, not by `response_header_timeout`; a timeout
//! after the whole request was sent (the upstream may be generating) gets at most one further
//! attempt, on another endpoint; the retry budget caps retries under a storm; and the final
//! error tells the SDK not to retry again (`x-should-retry: false`) once the forwarder retried.

use crate::faults_common::message;
use crate::support;

use std::time::Duration;

use ccf_testkit::{MockUpstream, Reply};
use support::{config, endpoint_yaml, messages_sent, Answer, Forwarder, WAIT};

/// No health probes during a test (they would take scripted replies).
const NO_PROBES: &str = "health:\n  check_interval: 1h\n";

/// Two endpoints of one group: `first` (priority 1), then `second` (priority 2).
async fn two_endpoints(
    first: &MockUpstream,
    second: &MockUpstream,
    settings: &str,
    extra: &str,
) -> Forwarder {
    Forwarder::start(config(
        &format!("{NO_PROBES}{settings}"),
        &[
            endpoint_yaml("first", &first.url(), &format!("priority: 1\n{extra}")),
            endpoint_yaml("second", &second.url(), &format!("priority: 2\n{extra}")),
        ],
    ))
    .await
}

fn attempts(answer: &Answer) -> Option<&str> {
    answer.header("x-ccf-attempts")
}

#[tokio::test]
async fn a_non_streaming_answer_slower_than_the_header_timeout_succeeds_with_one_request() {
    let upstream = MockUpstream::start().await;
    // Generation takes 3 s: the headers of a non-streaming answer come only when it ends.
    upstream.enqueue(Reply::json().header_delay(Duration::from_secs(3)));
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &format!("{NO_PROBES}streaming:\n  response_header_timeout: 1s\n"),
        "timeout: 10s\n",
    )
    .await;
    let answer = forwarder.messages(message(false), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["type"], "message");
    assert_eq!(
        messages_sent(&upstream),
        1,
        "generated (and billed) exactly once"
    );
    assert_eq!(attempts(&answer), Some("1"));
    assert_eq!(answer.header("x-should-retry"), None);
}

#[tokio::test]
async fn the_body_deadline_counts_from_the_attempt_not_from_the_arrival() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    // The first endpoint takes 2 s to say it is overloaded; the second answers after 0.5 s
    // with a body that takes about 0.8 s (9 events, 100 ms apart). The endpoint timeout (3 s)
    // bounds each attempt from its send, so the second answer arrives whole although the
    // request is past 3 s old by then.
    first.set_default(Reply::overloaded().header_delay(Duration::from_secs(2)));
    second.enqueue(
        Reply::sse()
            .header_delay(Duration::from_millis(500))
            .chunk_delay(Duration::from_millis(100)),
    );
    let forwarder = two_endpoints(
        &first,
        &second,
        "retry:\n  max_attempts: 1\n",
        "timeout: 3s\n",
    )
    .await;
    let answer = forwarder.messages(message(false), &[]).await;
    assert_eq!(answer.status, 200);
    let body = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(
        body.contains("event: message_stop"),
        "the body arrived whole: {body}"
    );
    assert_eq!((messages_sent(&first), messages_sent(&second)), (1, 1));
}

#[tokio::test]
async fn a_timeout_after_the_request_was_sent_gets_one_more_attempt_on_the_other_endpoint() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    // Both accept the whole request and never answer: as far as the forwarder knows, both may
    // be generating (and billing) it.
    first.set_default(Reply::hang());
    second.set_default(Reply::hang());
    let forwarder = two_endpoints(
        &first,
        &second,
        "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 20ms\nstreaming:\n  response_header_timeout: 300ms\n",
        "",
    )
    .await;
    let answer = forwarder.messages(message(true), &[]).await;
    answer.assert_anthropic_error(504, "api_error");
    assert_eq!(
        (messages_sent(&first), messages_sent(&second)),
        (1, 1),
        "one attempt, then exactly one more on the other endpoint"
    );
    assert_eq!(attempts(&answer), Some("2"));
    assert_eq!(answer.header("x-should-retry"), Some("false"));
}

#[tokio::test]
async fn after_a_timeout_the_other_endpoints_error_is_final_and_says_do_not_retry() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.set_default(Reply::hang());
    second.set_default(Reply::overloaded());
    let forwarder = two_endpoints(
        &first,
        &second,
        "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 20ms\nstreaming:\n  response_header_timeout: 300ms\n",
        "",
    )
    .await;
    let answer = forwarder.messages(message(true), &[]).await;
    answer.assert_anthropic_error(529, "overloaded_error");
    assert_eq!((messages_sent(&first), messages_sent(&second)), (1, 1));
    assert_eq!(answer.header("x-should-retry"), Some("false"));
}

#[tokio::test]
async fn the_final_error_says_x_should_retry_false_only_when_the_forwarder_retried() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::overloaded());
    let retried = Forwarder::in_front_of(
        &upstream,
        &format!("{NO_PROBES}retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 20ms\n"),
        "",
    )
    .await;
    let answer = retried.messages(message(false), &[]).await;
    answer.assert_anthropic_error(529, "overloaded_error");
    assert_eq!(attempts(&answer), Some("2"));
    assert_eq!(answer.header("x-should-retry"), Some("false"));

    let once = Forwarder::in_front_of(
        &upstream,
        &format!("{NO_PROBES}retry:\n  max_attempts: 1\n"),
        "",
    )
    .await;
    let answer = once.messages(message(false), &[]).await;
    answer.assert_anthropic_error(529, "overloaded_error");
    assert_eq!(attempts(&answer), Some("1"));
    assert_eq!(
        answer.header("x-should-retry"),
        None,
        "nothing was retried: the SDK may retry"
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries_under_a_storm() {
    const CLIENTS: usize = 10;
    // budget_percent 20 of at most 10 active requests is 2, and the floor is 2: at most 2
    // retries may be in flight at once, whatever the arrival order.
    const ALLOWED_RETRIES: usize = 2;
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    // The first endpoint is rate limited without saying for how long (no health change, no
    // skip), so every request's first attempt goes there and its retry to the second, which
    // keeps every retry in flight.
    first.set_default(Reply::error(429, "rate_limit_error", "slow down"));
    second.set_default(Reply::hang());
    let forwarder = two_endpoints(
        &first,
        &second,
        "retry:\n  max_attempts: 1\n  budget_percent: 20\n  min_retry_concurrency: 2\n",
        "",
    )
    .await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = forwarder.client.clone();
        let uri = format!("{}/v1/messages", forwarder.base);
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let request = hyper::Request::post(uri)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    message(false).to_string(),
                )))
                .expect("request");
            let response = client.request(request).await.expect("answer");
            let _ = done.send((
                response.status().as_u16(),
                response.headers().get("x-ccf-attempts").cloned(),
                response.headers().get("x-should-retry").cloned(),
            ));
        }));
    }
    // Every request beyond the budget fails at once with the first endpoint's 429.
    for answered in 0..CLIENTS - ALLOWED_RETRIES {
        let (status, attempts, should_retry) = tokio::time::timeout(WAIT, answers.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {answered} requests answered; upstream saw {} + {}",
                    messages_sent(&first),
                    messages_sent(&second)
                )
            })
            .expect("answer");
        assert_eq!(status, 429);
        assert_eq!(attempts.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(should_retry, None, "nothing was retried");
    }
    second.wait_for_requests(ALLOWED_RETRIES, WAIT).await;
    assert_eq!(messages_sent(&first), CLIENTS);
    assert_eq!(
        messages_sent(&second),
        ALLOWED_RETRIES,
        "retries beyond the budget were never sent"
    );
    for client in clients {
        client.abort();
    }
}

#[tokio::test]
async fn an_error_body_that_never_ends_keeps_the_earlier_real_error() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.set_default(Reply::overloaded());
    // Headers of a 500, then a body that never comes.
    second.set_default(Reply::error(500, "api_error", "boom").stall_after_events(0));
    let forwarder = two_endpoints(
        &first,
        &second,
        "retry:\n  max_attempts: 1\n",
        "timeout: 2s\n",
    )
    .await;
    let answer = forwarder.messages(message(false), &[]).await;
    // The real 529 from the first endpoint, not a made-up 503.
    answer.assert_anthropic_error(529, "overloaded_error");
    assert_eq!((messages_sent(&first), messages_sent(&second)), (1, 1));
    assert_eq!(answer.header("x-should-retry"), Some("false"));
}

#[tokio::test]
async fn a_count_tokens_answer_that_never_ends_is_bounded_by_the_endpoint_timeout() {
    let upstream = MockUpstream::start().await;
    // Headers of a 200, then a body that never comes.
    upstream.set_default(Reply::json().stall_after_events(0));
    let forwarder = Forwarder::start(config(
        &format!("{NO_PROBES}token_counting:\n  enabled: true\n"),
        &[endpoint_yaml(
            "a",
            &upstream.url(),
            "supports_count_tokens: true\ntimeout: 500ms\n",
        )],
    ))
    .await;
    let answer = forwarder
        .send(
            hyper::Method::POST,
            "/v1/messages/count_tokens",
            &[("content-type", "application/json")],
            r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"count me"}]}"#,
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("x-token-estimation"),
        Some("true"),
        "the local estimate answers once the upstream ran out of time"
    );
    assert!(answer.json()["input_tokens"].as_u64().is_some());
    upstream.wait_for_requests(1, WAIT).await;
}
