//! The forwarding core end to end: the real app on loopback in front of the mock upstream.

use crate::support;

use std::time::Duration;

use ccf_testkit::{MockUpstream, Reply, ReplyOutcome};
use hyper::Method;
use serde_json::json;
use support::{closed_port_url, config, endpoint_yaml, Forwarder, WAIT};

fn message_request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

#[tokio::test]
async fn json_round_trip_passes_status_headers_and_body_through() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(&upstream, "", "token: tok").await;
    let answer = forwarder.messages(message_request(false), &[]).await;
    assert_eq!(answer.status, 200);
    let recorded = upstream
        .wait_for_finished(0, WAIT)
        .await
        .expect("upstream saw the request");
    assert_eq!(
        answer.bytes(),
        recorded.sent_body,
        "client gets upstream's bytes"
    );
    assert_eq!(answer.json()["type"], "message");
    assert_eq!(
        answer.header("request-id"),
        recorded.request_id.as_str().into()
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(recorded.body, message_request(false).to_string().as_bytes());
}

#[tokio::test]
async fn sse_bytes_reach_the_client_exactly_as_upstream_sent_them() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(
        Reply::sse()
            .deltas(20)
            .chunk_delay(Duration::from_millis(2)),
    );
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let answer = forwarder
        .messages(message_request(true), &[("accept", "text/event-stream")])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let recorded = upstream
        .wait_for_finished(0, WAIT)
        .await
        .expect("request recorded");
    assert_eq!(recorded.outcome, ReplyOutcome::Completed);
    assert!(recorded.sent_body.len() > 500, "a real stream was sent");
    assert_eq!(answer.bytes(), recorded.sent_body);
}

#[tokio::test]
async fn sse_frames_are_delivered_as_they_arrive_not_at_the_end() {
    let upstream = MockUpstream::start().await;
    // The stream stalls after its first text delta (message_start, content_block_start, ping,
    // delta): a buffering forwarder would deliver nothing.
    upstream.enqueue(Reply::sse().stall_after_events(4));
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let request = hyper::Request::post(format!("{}/v1/messages", forwarder.base))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            message_request(true).to_string(),
        )))
        .unwrap();
    let response = forwarder.client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("content_block_delta") {
        let frame = tokio::time::timeout(WAIT, http_body_util::BodyExt::frame(&mut body))
            .await
            .expect("events arrive while upstream is still streaming")
            .expect("stream open")
            .expect("frame ok");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert!(String::from_utf8_lossy(&received).starts_with("event: message_start"));
}

#[tokio::test]
async fn upstream_sees_endpoint_credentials_never_the_clients() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(
        &upstream,
        "",
        "token: endpoint-token\napi-key: endpoint-key\nheaders:\n  X-Custom: custom-value",
    )
    .await;
    let answer = forwarder
        .messages(
            message_request(false),
            &[
                ("authorization", "Bearer client-token"),
                ("x-api-key", "client-key"),
                (
                    "anthropic-beta",
                    "prompt-caching-2024-07-31,fine-grained-tool-streaming",
                ),
                ("user-agent", "claude-cli/2.0 (external, cli)"),
                ("x-unknown-header", "kept"),
                ("proxy-authorization", "Basic c2VjcmV0"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    let seen = &upstream.wait_for_requests(1, WAIT).await[0];
    assert_eq!(seen.header("authorization"), Some("Bearer endpoint-token"));
    assert_eq!(seen.header("x-api-key"), Some("endpoint-key"));
    assert_eq!(seen.header("x-custom"), Some("custom-value"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31,fine-grained-tool-streaming")
    );
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("user-agent"),
        Some("claude-cli/2.0 (external, cli)")
    );
    assert_eq!(seen.header("x-unknown-header"), Some("kept"));
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr().to_string().as_str())
    );
    let all_values: Vec<String> = seen
        .headers
        .values()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    assert!(
        !all_values.iter().any(|value| value.contains("client-")),
        "{all_values:?}"
    );
}

#[tokio::test]
async fn endpoint_path_prefix_and_query_are_joined() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "",
        &[endpoint_yaml(
            "relay",
            &format!("{}/api/", upstream.url()),
            "",
        )],
    ))
    .await;
    let answer = forwarder
        .send(
            Method::POST,
            "/v1/messages/count_tokens?limit=5&beta=true",
            &[("content-type", "application/json")],
            r#"{"model":"m","messages":[]}"#,
        )
        .await;
    let seen = upstream.wait_for_finished(0, WAIT).await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/v1/messages/count_tokens");
    assert_eq!(seen.query.as_deref(), Some("limit=5&beta=true"));
    assert_eq!(answer.status.as_u16(), seen.status.unwrap_or_default());
    assert_eq!(answer.bytes(), seen.sent_body);
}

#[tokio::test]
async fn upstream_errors_reach_the_client_verbatim() {
    // One endpoint, two attempts each; the relayed answer is the upstream's own, after the
    // retries ran out (529), after moving on (a 429 asking for more than max_delay) or at once
    // (400, the request itself is wrong).
    for (reply, status, error_type, expected_requests) in [
        (Reply::overloaded(), 529, "overloaded_error", 2),
        (Reply::rate_limited(17), 429, "rate_limit_error", 1),
        (
            Reply::error(400, "invalid_request_error", "prompt is too long"),
            400,
            "invalid_request_error",
            1,
        ),
    ] {
        let upstream = MockUpstream::start().await;
        upstream.set_default(reply);
        let forwarder = Forwarder::in_front_of(
            &upstream,
            "retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 1s",
            "",
        )
        .await;
        let answer = forwarder.messages(message_request(false), &[]).await;
        assert_eq!(answer.status.as_u16(), status);
        let recorded = upstream
            .wait_for_finished(expected_requests - 1, WAIT)
            .await
            .unwrap();
        assert_eq!(
            answer.bytes(),
            recorded.sent_body,
            "{status}: body verbatim"
        );
        assert_eq!(
            answer.header("request-id"),
            Some(recorded.request_id.as_str())
        );
        assert_eq!(answer.json()["error"]["type"], error_type);
        if status == 429 {
            assert_eq!(answer.header("retry-after"), Some("17"));
        }
        assert_eq!(upstream.requests().len(), expected_requests, "{status}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_in_anthropic_format_and_never_reach_upstream() {
    let upstream = MockUpstream::start().await;
    let forwarder =
        Forwarder::in_front_of(&upstream, "server:\n  max_request_body_size: 1KB", "").await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let answer = forwarder.messages(big, &[]).await;
    answer.assert_anthropic_error(413, "request_too_large");
    assert!(answer.header("x-ccf-request-id").is_some());
    // A body just under the limit passes.
    let small = forwarder
        .messages(json!({"model": "m", "messages": []}), &[])
        .await;
    assert_eq!(small.status, 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn oversized_chunked_bodies_without_length_are_refused_too() {
    let upstream = MockUpstream::start().await;
    let forwarder =
        Forwarder::in_front_of(&upstream, "server:\n  max_request_body_size: 1KB", "").await;
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0..8)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b'a';
                512
            ])))
        })
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let request = hyper::Request::post(format!("{}/v1/messages", forwarder.base))
        .body(body)
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(upstream.requests().len(), 0);
}

#[tokio::test]
async fn inbound_auth_accepts_bearer_and_x_api_key_and_rejects_the_rest() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(
        &upstream,
        "auth:\n  enabled: true\n  token: inbound-secret",
        "token: upstream-token",
    )
    .await;
    let bearer = forwarder
        .messages(
            message_request(false),
            &[("authorization", "Bearer inbound-secret")],
        )
        .await;
    assert_eq!(bearer.status, 200);
    let api_key = forwarder
        .messages(message_request(false), &[("x-api-key", "inbound-secret")])
        .await;
    assert_eq!(api_key.status, 200);
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("x-api-key", "wrong")],
        vec![("authorization", "Basic aW5ib3VuZC1zZWNyZXQ=")],
    ] {
        let answer = forwarder.messages(message_request(false), &headers).await;
        answer.assert_anthropic_error(401, "authentication_error");
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "rejected requests never reach upstream"
    );
    let seen = upstream.requests();
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer upstream-token")));
    // Claude Code's reachability probe carries no credential and is not refused.
    let probe = forwarder.send(Method::HEAD, "/api/hello", &[], "").await;
    assert_ne!(probe.status, 401);
    // `/health` stays open; `/metrics` needs the token too (see docs/operations.md).
    let health = forwarder.send(Method::GET, "/health", &[], "").await;
    assert_eq!(health.status, 200);
    let metrics = forwarder.send(Method::GET, "/metrics", &[], "").await;
    metrics.assert_anthropic_error(401, "authentication_error");
    let metrics = forwarder
        .send(
            Method::GET,
            "/metrics",
            &[("x-api-key", "inbound-secret")],
            "",
        )
        .await;
    assert_eq!(metrics.status, 200);
}

#[tokio::test]
async fn a_client_that_disconnects_while_upstream_hangs_cancels_the_upstream_request() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let mut raw = forwarder
        .raw_request(&message_request(false).to_string())
        .await;
    upstream.wait_for_requests(1, WAIT).await;
    assert_eq!(upstream.outcomes()[0], ReplyOutcome::Pending);
    tokio::io::AsyncWriteExt::shutdown(&mut raw).await.ok();
    drop(raw);
    let outcome = upstream.wait_for_outcome(0, WAIT).await;
    assert_eq!(outcome, Some(ReplyOutcome::ClientGone));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_stream() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(
        Reply::sse()
            .deltas(1000)
            .chunk_delay(Duration::from_millis(20)),
    );
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let mut raw = forwarder
        .raw_request(&message_request(true).to_string())
        .await;
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut raw, &mut buffer))
        .await
        .expect("first bytes arrive")
        .expect("read");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    drop(raw);
    let outcome = upstream.wait_for_outcome(0, WAIT).await;
    assert_eq!(outcome, Some(ReplyOutcome::ClientGone));
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(
        Reply::sse()
            .deltas(30)
            .chunk_delay(Duration::from_millis(20)),
    );
    let mut forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let request = hyper::Request::post(format!("{}/v1/messages", forwarder.base))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            message_request(true).to_string(),
        )))
        .unwrap();
    let response = forwarder.client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // The stream is under way: ask the app to stop.
    forwarder.begin_stop();
    let body = tokio::time::timeout(WAIT, http_body_util::BodyExt::collect(response.into_body()))
        .await
        .expect("stream finishes")
        .expect("stream completes without error")
        .to_bytes();
    let recorded = upstream.wait_for_finished(0, WAIT).await.unwrap();
    assert_eq!(recorded.outcome, ReplyOutcome::Completed);
    assert_eq!(body, recorded.sent_body);
    assert!(
        forwarder.wait_stopped(WAIT).await,
        "app stops after draining"
    );
    // And it no longer accepts connections.
    let addr = forwarder.base.trim_start_matches("http://").to_string();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped_for_the_next_one() {
    let upstream = MockUpstream::start().await;
    let dead = closed_port_url().await;
    let forwarder = Forwarder::start(config(
        "",
        &[
            endpoint_yaml("dead", &dead, "priority: 1"),
            endpoint_yaml("alive", &upstream.url(), "priority: 2"),
        ],
    ))
    .await;
    let answer = forwarder.messages(message_request(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn when_no_upstream_answers_the_client_gets_an_anthropic_502() {
    let dead = closed_port_url().await;
    let forwarder = Forwarder::start(config("", &[endpoint_yaml("dead", &dead, "")])).await;
    let answer = forwarder.messages(message_request(false), &[]).await;
    answer.assert_anthropic_error(502, "api_error");
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("dead"));
}

#[tokio::test]
async fn upstream_that_never_sends_headers_times_out_with_504() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::hang());
    let forwarder = Forwarder::in_front_of(
        &upstream,
        "streaming:\n  response_header_timeout: 300ms\nretry:\n  max_attempts: 1",
        "",
    )
    .await;
    let answer = forwarder.messages(message_request(true), &[]).await;
    answer.assert_anthropic_error(504, "api_error");
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
}

#[tokio::test]
async fn a_stalled_stream_is_cut_after_max_idle_time() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().stall_after_events(2));
    let forwarder =
        Forwarder::in_front_of(&upstream, "streaming:\n  max_idle_time: 300ms", "").await;
    let answer = forwarder.messages(message_request(true), &[]).await;
    assert_eq!(answer.status, 200);
    // The cut falls between events: the stream ends with a well-formed error event.
    let text = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(
        text.ends_with("\n\n")
            && text.contains(
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\""
            ),
        "{text}"
    );
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let first = forwarder.messages(message_request(false), &[]).await;
    let second = forwarder.messages(message_request(false), &[]).await;
    let ids: Vec<String> = [first, second]
        .iter()
        .map(|answer| {
            answer
                .header("x-ccf-request-id")
                .expect("header")
                .to_string()
        })
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 20, "{id}");
        assert!(id.starts_with("req-"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn health_and_metrics_describe_the_endpoints() {
    let upstream = MockUpstream::start().await;
    let dead = closed_port_url().await;
    let forwarder = Forwarder::start(config(
        "",
        &[
            endpoint_yaml("dead", &dead, "priority: 1"),
            endpoint_yaml("alive", &upstream.url(), "priority: 2"),
        ],
    ))
    .await;
    assert_eq!(
        forwarder.messages(message_request(false), &[]).await.status,
        200
    );
    // The startup probe and the request both find the dead endpoint: health degrades.
    let deadline = tokio::time::Instant::now() + WAIT;
    let health = loop {
        let health = forwarder.send(Method::GET, "/health", &[], "").await;
        if health.json()["status"] == "degraded" {
            break health;
        }
        assert!(tokio::time::Instant::now() < deadline, "never degraded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["healthy_endpoints"], 1);
    assert_eq!(health.json()["total_endpoints"], 2);
    let detailed = forwarder
        .send(Method::GET, "/health/detailed", &[], "")
        .await;
    let endpoints = detailed.json()["endpoints"].as_array().unwrap().clone();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0]["name"], "dead");
    assert_eq!(endpoints[0]["healthy"], false);
    assert!(endpoints[0]["consecutive_fails"].as_u64().unwrap() >= 1);
    assert!(endpoints[0]["last_error"].as_str().is_some());
    assert_eq!(endpoints[1]["name"], "alive");
    assert_eq!(endpoints[1]["healthy"], true);
    assert!(detailed.json()["timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let metrics = forwarder.send(Method::GET, "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
    assert!(
        text.contains("endpoint_forwarder_endpoints_total 2"),
        "{text}"
    );
    assert!(
        text.contains("endpoint_forwarder_endpoints_healthy 1"),
        "{text}"
    );
    assert!(
        text.contains("ccf_requests_total{endpoint=\"alive\",status=\"200\"} 1"),
        "{text}"
    );
    let post = forwarder.send(Method::POST, "/health", &[], "").await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn health_is_503_when_no_endpoint_is_healthy() {
    let dead = closed_port_url().await;
    let forwarder = Forwarder::start(config("", &[endpoint_yaml("dead", &dead, "")])).await;
    forwarder.messages(message_request(false), &[]).await;
    let health = forwarder.send(Method::GET, "/health", &[], "").await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "unhealthy");
}

#[tokio::test]
async fn compressed_upstream_bodies_pass_through_untouched() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::json().gzip());
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let answer = forwarder
        .messages(message_request(false), &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
    let recorded = upstream.wait_for_finished(0, WAIT).await.unwrap();
    assert_eq!(answer.bytes(), recorded.sent_body);
    assert_eq!(recorded.header("accept-encoding"), Some("gzip"));
}
