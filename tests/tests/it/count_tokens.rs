//! `POST /v1/messages/count_tokens`: forwarded to endpoints that support it, else estimated.

use crate::support;

use std::sync::Arc;

use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use support::{config, endpoint_yaml, Answer, Forwarder, Outcomes};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","system":"You are terse.","messages":[{"role":"user","content":"How many tokens is this sentence, roughly?"}]}"#;

async fn count(forwarder: &Forwarder, body: &str) -> Answer {
    forwarder
        .send(
            Method::POST,
            "/v1/messages/count_tokens?beta=true",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            body.to_string(),
        )
        .await
}

fn count_requests(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages/count_tokens")
        .count()
}

#[tokio::test]
async fn a_supporting_endpoint_answers_verbatim() {
    let upstream = MockUpstream::start().await;
    let outcomes = Arc::new(Outcomes::default());
    let forwarder = Forwarder::start_observed(
        config(
            "token_counting:\n  enabled: true",
            &[endpoint_yaml(
                "a",
                &upstream.url(),
                "supports_count_tokens: true\ntoken: t",
            )],
        ),
        Some(Arc::clone(&outcomes) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    let answer = count(&forwarder, BODY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-token-estimation"), None);
    let recorded = upstream.wait_for_finished(0, support::WAIT).await.unwrap();
    assert_eq!(answer.bytes(), recorded.sent_body);
    assert_eq!(recorded.query.as_deref(), Some("beta=true"));
    assert_eq!(recorded.header("authorization"), Some("Bearer t"));
    // A Messages request after it proves the observer sees tracked requests; stopping the app
    // ends every request, so the outcomes are complete: only the Messages request's is there.
    let sentinel = forwarder
        .messages(
            serde_json::json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "tracked"}],
            }),
            &[],
        )
        .await;
    assert_eq!(sentinel.status, 200);
    forwarder.stop_settled().await;
    let tracked: Vec<String> = outcomes
        .all()
        .iter()
        .map(|record| record.id.to_string())
        .collect();
    assert_eq!(
        tracked,
        [sentinel.header("x-ccf-request-id").expect("request id")],
        "count_tokens is not billed, so not tracked"
    );
}

#[tokio::test]
async fn without_a_supporting_endpoint_the_forwarder_estimates() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "token_counting:\n  enabled: true",
        &[endpoint_yaml(
            "a",
            &upstream.url(),
            "supports_count_tokens: false",
        )],
    ))
    .await;
    let answer = count(&forwarder, BODY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-token-estimation"), Some("true"));
    let tokens = answer.json()["input_tokens"].as_u64().unwrap();
    assert!((5..200).contains(&tokens), "{tokens}");
    assert_eq!(count_requests(&upstream), 0);
}

#[tokio::test]
async fn a_refusing_endpoint_falls_back_to_the_estimate() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::error(500, "api_error", "count_tokens is down"));
    let forwarder = Forwarder::start(config(
        "token_counting:\n  enabled: true",
        &[endpoint_yaml(
            "a",
            &upstream.url(),
            "supports_count_tokens: true",
        )],
    ))
    .await;
    let answer = count(&forwarder, BODY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-token-estimation"), Some("true"));
    assert_eq!(count_requests(&upstream), 1);
}

#[tokio::test]
async fn invalid_json_gets_400_in_anthropic_format() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "token_counting:\n  enabled: true",
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    count(&forwarder, "{not json")
        .await
        .assert_anthropic_error(400, "invalid_request_error");
}

#[tokio::test]
async fn when_disabled_the_path_is_forwarded_like_any_other() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "token_counting:\n  enabled: false",
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = count(&forwarder, BODY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-token-estimation"), None);
    assert_eq!(count_requests(&upstream), 1);
}
