//! Configurable failover triggers (issue 20, points 5, 7 and 8): `retry.failover_on_status`,
//! `retry.failover_on_empty_answer`, `routing.repair_thinking_signatures` and
//! `endpoints[].proxy`. The mock upstreams answer as the protocol reference describes relays:
//! a 404 `not_found_error` for a model they lack, a 200 with no content and zero output tokens,
//! and a 400 `invalid_request_error` naming an invalid `signature` in a `thinking` block.

use crate::outbound_proxy::http_connect_proxy;
use crate::support;

use bytes::Bytes;
use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::{admin_get, config, endpoint_yaml, messages_sent, Forwarder};

/// Two endpoints of one group, `relay` tried first, then `official`.
async fn relay_then_official(settings: &str) -> (MockUpstream, MockUpstream, Forwarder) {
    let relay = MockUpstream::start().await;
    let official = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        settings,
        &[
            endpoint_yaml("relay", &relay.url(), "priority: 1"),
            endpoint_yaml("official", &official.url(), "priority: 2"),
        ],
    ))
    .await;
    (relay, official, forwarder)
}

fn request(stream: bool) -> Value {
    json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]
    })
}

/// The forwarder's `/metrics` text.
async fn metrics(forwarder: &Forwarder) -> String {
    let answer = forwarder.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(answer.status, 200);
    String::from_utf8_lossy(&answer.bytes()).into_owned()
}

fn model_missing() -> Reply {
    Reply::error(404, "not_found_error", "model: claude-haiku-4-5")
}

#[tokio::test]
async fn a_listed_status_moves_to_the_next_endpoint_without_retrying_the_first() {
    let (relay, official, forwarder) = relay_then_official(
        "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  failover_on_status: [404, 400]\n",
    )
    .await;
    relay.set_default(model_missing());
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.bytes());
    assert_eq!(answer.json()["type"], "message");
    assert_eq!(messages_sent(&relay), 1, "the relay is not retried");
    assert_eq!(messages_sent(&official), 1);
    let text = metrics(&forwarder).await;
    assert!(
        text.contains(r#"ccf_failover_triggered_total{endpoint="relay",reason="status"} 1"#),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn without_the_setting_a_404_is_relayed_as_is() {
    let (relay, official, forwarder) =
        relay_then_official("retry:\n  max_attempts: 3\n  base_delay: 10ms\n").await;
    relay.set_default(model_missing());
    let answer = forwarder.messages(request(false), &[]).await;
    answer.assert_anthropic_error(404, "not_found_error");
    assert_eq!(messages_sent(&relay), 1);
    assert_eq!(messages_sent(&official), 0);
    forwarder.stop().await;
}

#[tokio::test]
async fn when_every_endpoint_answers_a_listed_status_the_last_answer_is_relayed() {
    let (relay, official, forwarder) =
        relay_then_official("retry:\n  base_delay: 10ms\n  failover_on_status: [404]\n").await;
    relay.set_default(model_missing());
    official.set_default(Reply::error(
        404,
        "not_found_error",
        "official lacks it too",
    ));
    let answer = forwarder.messages(request(false), &[]).await;
    answer.assert_anthropic_error(404, "not_found_error");
    assert_eq!(
        answer.json()["error"]["message"],
        "official lacks it too",
        "the last upstream answer, verbatim"
    );
    assert_eq!(messages_sent(&relay), 1);
    assert_eq!(messages_sent(&official), 1);
    forwarder.stop().await;
}

fn empty_json_message() -> Reply {
    Reply::status(
        200,
        json!({
            "id": "msg_empty", "type": "message", "role": "assistant",
            "model": "claude-haiku-4-5", "content": [], "stop_reason": "end_turn",
            "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 0}
        }),
    )
}

const EMPTY_STREAM: [&str; 3] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_empty\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":0}}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":0}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

const EMPTY_ANSWER_ON: &str = "retry:\n  base_delay: 10ms\n  failover_on_empty_answer: true\n";

#[tokio::test]
async fn an_empty_json_answer_moves_to_the_next_endpoint() {
    let (relay, official, forwarder) = relay_then_official(EMPTY_ANSWER_ON).await;
    relay.set_default(empty_json_message());
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_ne!(body["id"], "msg_empty");
    assert!(!body["content"].as_array().expect("content").is_empty());
    assert_eq!(messages_sent(&relay), 1);
    assert_eq!(messages_sent(&official), 1);
    let text = metrics(&forwarder).await;
    assert!(
        text.contains(r#"ccf_failover_triggered_total{endpoint="relay",reason="empty_answer"} 1"#),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn an_empty_event_stream_moves_to_the_next_endpoint() {
    let (relay, official, forwarder) = relay_then_official(EMPTY_ANSWER_ON).await;
    relay.set_default(Reply::raw_sse(EMPTY_STREAM));
    let answer = forwarder.messages(request(true), &[]).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(
        !text.contains("msg_empty"),
        "nothing of the empty stream is relayed: {text}"
    );
    assert!(text.contains("content_block_delta"), "{text}");
    assert!(text.contains("message_stop"), "{text}");
    assert_eq!(messages_sent(&relay), 1);
    assert_eq!(messages_sent(&official), 1);
    forwarder.stop().await;
}

#[tokio::test]
async fn empty_answers_are_relayed_as_they_are_by_default() {
    let (relay, official, forwarder) = relay_then_official("retry:\n  base_delay: 10ms\n").await;
    relay.enqueue(empty_json_message());
    relay.enqueue(Reply::raw_sse(EMPTY_STREAM));
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["id"], "msg_empty");
    let streamed = forwarder.messages(request(true), &[]).await;
    assert_eq!(streamed.bytes(), Bytes::from(EMPTY_STREAM.concat()));
    assert_eq!(messages_sent(&official), 0);
    forwarder.stop().await;
}

#[tokio::test]
async fn with_the_trigger_on_answers_with_content_arrive_byte_for_byte() {
    let (relay, official, forwarder) = relay_then_official(EMPTY_ANSWER_ON).await;
    let chunks = [
        EMPTY_STREAM[0],
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1}}\n\n",
        EMPTY_STREAM[2],
    ];
    relay.enqueue(Reply::raw_sse(chunks));
    let streamed = forwarder.messages(request(true), &[]).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.bytes(), Bytes::from(chunks.concat()));
    let message = json!({
        "id": "msg_full", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}
    });
    relay.enqueue(Reply::status(200, message.clone()));
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.json(), message);
    assert_eq!(messages_sent(&official), 0);
    forwarder.stop().await;
}

/// A conversation continued after a tool call, whose first assistant turn carries a thinking
/// block signed by another provider.
fn thinking_conversation() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "Weather in Paris, then Rome?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Paris first.", "signature": "sig-other-provider"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Now Rome.", "signature": "sig-current"},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"}]}
        ]
    })
}

fn invalid_signature() -> Reply {
    Reply::error(
        400,
        "invalid_request_error",
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    )
}

async fn one_endpoint(
    upstream: &MockUpstream,
    settings: &str,
) -> (Forwarder, std::sync::Arc<support::Outcomes>) {
    let outcomes = std::sync::Arc::new(support::Outcomes::default());
    let forwarder = Forwarder::start_observed(
        config(settings, &[endpoint_yaml("mock", &upstream.url(), "")]),
        Some(outcomes.clone()),
    )
    .await;
    (forwarder, outcomes)
}

fn block_types(message: &Value) -> Vec<String> {
    message["content"]
        .as_array()
        .expect("content blocks")
        .iter()
        .map(|block| block["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn an_invalid_thinking_signature_is_repaired_and_retried_once_on_the_same_endpoint() {
    let upstream = MockUpstream::start().await;
    let (forwarder, outcomes) = one_endpoint(
        &upstream,
        "retry:\n  max_attempts: 1\nrouting:\n  repair_thinking_signatures: true\n",
    )
    .await;
    upstream.enqueue(invalid_signature());
    let answer = forwarder.messages(thinking_conversation(), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.bytes());
    let sent = upstream.requests();
    let sent: Vec<Value> = sent
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .map(|request| request.json().expect("JSON body"))
        .collect();
    assert_eq!(sent.len(), 2, "the original, then the repaired request");
    assert_eq!(sent[0], thinking_conversation());
    let repaired = &sent[1];
    assert_eq!(block_types(&repaired["messages"][1]), ["tool_use"]);
    assert_eq!(
        block_types(&repaired["messages"][3]),
        ["thinking", "tool_use"],
        "the turn being continued keeps its thinking"
    );
    let mut expected = thinking_conversation();
    expected["messages"][1]["content"]
        .as_array_mut()
        .expect("blocks")
        .remove(0);
    assert_eq!(repaired, &expected, "nothing else changed");
    let record = outcomes.wait_for(1).await.remove(0);
    let note = record.last_failure_reason.unwrap_or_default();
    assert!(note.contains("invalid thinking signature"), "{note}");
    let text = metrics(&forwarder).await;
    assert!(
        text.contains(r#"ccf_thinking_signature_repairs_total{endpoint="mock"} 1"#),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn the_repair_is_tried_once_and_then_the_400_is_relayed() {
    let upstream = MockUpstream::start().await;
    let (forwarder, _outcomes) =
        one_endpoint(&upstream, "routing:\n  repair_thinking_signatures: true\n").await;
    upstream.set_default(invalid_signature());
    let answer = forwarder.messages(thinking_conversation(), &[]).await;
    answer.assert_anthropic_error(400, "invalid_request_error");
    assert_eq!(messages_sent(&upstream), 2);
    forwarder.stop().await;
}

#[tokio::test]
async fn without_the_repair_the_signature_400_is_relayed() {
    let upstream = MockUpstream::start().await;
    let (forwarder, _outcomes) = one_endpoint(&upstream, "").await;
    upstream.enqueue(invalid_signature());
    let answer = forwarder.messages(thinking_conversation(), &[]).await;
    answer.assert_anthropic_error(400, "invalid_request_error");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("signature"));
    assert_eq!(messages_sent(&upstream), 1);
    forwarder.stop().await;
}

#[tokio::test]
async fn each_endpoint_goes_through_its_own_proxy_and_can_opt_out_of_the_global_one() {
    let relay = MockUpstream::start().await;
    let relay_b = MockUpstream::start().await;
    let direct = MockUpstream::start().await;
    let global = MockUpstream::start().await;
    let (relay_proxy, relay_log) = http_connect_proxy().await;
    let (global_proxy, global_log) = http_connect_proxy().await;
    for upstream in [&relay, &relay_b, &direct] {
        upstream.set_default(model_missing());
    }
    const PASSWORD: &str = "relay-proxy-pass-8c1f";
    let settings = format!(
        "retry:\n  base_delay: 10ms\n  failover_on_status: [404]\n\
         proxy:\n  enabled: true\n  url: http://{global_proxy}\n\
         web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
    );
    let forwarder = Forwarder::start(config(
        &settings,
        &[
            endpoint_yaml(
                "relay",
                &relay.url(),
                &format!(
                    "group: relays\ngroup-priority: 1\nproxy:\n  enabled: true\n  url: http://user:{PASSWORD}@{relay_proxy}"
                ),
            ),
            // Inherits the group's proxy.
            endpoint_yaml("relay-b", &relay_b.url(), "priority: 1"),
            endpoint_yaml(
                "direct",
                &direct.url(),
                "group: official\ngroup-priority: 2\nproxy:\n  enabled: false",
            ),
            // No proxy of its own in its group: the global one.
            endpoint_yaml("global", &global.url(), "group: fallback\ngroup-priority: 3"),
        ],
    ))
    .await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.bytes());
    for upstream in [&relay, &relay_b, &direct, &global] {
        assert_eq!(messages_sent(upstream), 1);
    }
    let targets = |log: &crate::outbound_proxy::ProxyLog| {
        let mut targets = log.targets.lock().expect("log lock").clone();
        targets.sort();
        targets.dedup();
        targets
    };
    let address = |upstream: &MockUpstream| upstream.addr().to_string();
    let mut relays = vec![address(&relay), address(&relay_b)];
    relays.sort();
    assert_eq!(
        targets(&relay_log),
        relays,
        "the relays' proxy carries only them"
    );
    assert_eq!(
        targets(&global_log),
        [address(&global)],
        "the global proxy carries neither the relays nor the opted-out endpoint"
    );
    // The password is masked in the admin configuration view.
    let view = admin_get(&forwarder, "/api/v1/config").await;
    let text = view.to_string();
    assert!(!text.contains(PASSWORD), "{text}");
    assert_eq!(view["endpoints"][0]["proxy"]["enabled"], true);
    assert_eq!(view["endpoints"][1]["proxy"]["enabled"], true, "inherited");
    assert_eq!(view["endpoints"][2]["proxy"]["enabled"], false);
    assert_eq!(view["endpoints"][3]["proxy"], Value::Null);
    forwarder.stop().await;
}

#[tokio::test]
async fn when_every_endpoint_answers_empty_the_last_empty_answer_is_relayed() {
    let (relay, official, forwarder) = relay_then_official(EMPTY_ANSWER_ON).await;
    relay.set_default(empty_json_message());
    official.set_default(empty_json_message());
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["id"],
        "msg_empty",
        "the last upstream answer, verbatim"
    );
    assert_eq!(messages_sent(&relay), 1);
    assert_eq!(messages_sent(&official), 1);
    forwarder.stop().await;
}

#[tokio::test]
async fn with_the_repair_on_other_400s_are_relayed_untouched() {
    let upstream = MockUpstream::start().await;
    let (forwarder, _outcomes) =
        one_endpoint(&upstream, "routing:\n  repair_thinking_signatures: true\n").await;
    upstream.enqueue(Reply::error(
        400,
        "invalid_request_error",
        "messages: roles must alternate between \"user\" and \"assistant\"",
    ));
    let answer = forwarder.messages(thinking_conversation(), &[]).await;
    answer.assert_anthropic_error(400, "invalid_request_error");
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1, "no repair for another 400");
    assert_eq!(answer.bytes(), sent[0].sent_body, "byte for byte");
    forwarder.stop().await;
}

#[tokio::test]
async fn hot_reload_turns_a_trigger_on_for_the_next_request() {
    let relay = MockUpstream::start().await;
    let official = MockUpstream::start().await;
    let endpoints = [
        endpoint_yaml("relay", &relay.url(), "priority: 1"),
        endpoint_yaml("official", &official.url(), "priority: 2"),
    ];
    let forwarder = Forwarder::start(config("retry:\n  base_delay: 10ms\n", &endpoints)).await;
    relay.set_default(model_missing());
    let before = forwarder.messages(request(false), &[]).await;
    before.assert_anthropic_error(404, "not_found_error");
    let report = forwarder
        .engine
        .reload(std::sync::Arc::new(config(
            "retry:\n  base_delay: 10ms\n  failover_on_status: [404]\n",
            &endpoints,
        )))
        .expect("reload applies");
    assert!(
        report.applied.iter().any(|change| change.contains("retry")),
        "{:?}",
        report.applied
    );
    let after = forwarder.messages(request(false), &[]).await;
    assert_eq!(after.status, 200);
    assert_eq!(messages_sent(&official), 1);
    forwarder.stop().await;
}
