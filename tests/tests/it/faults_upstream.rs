//! Fault injection, upstream side: an upstream that refuses, hangs, stalls, cuts, lies about its
//! length, sends garbage or storms with errors, then recovers. Every scenario checks what the
//! client got, what upstream saw, what the database holds, and that the forwarder still serves
//! a normal request afterwards.

use crate::faults_common;
use crate::support;

use std::time::Duration;

use bytes::Bytes;
use ccf_store::status;
use ccf_testkit::{MockUpstream, RawEnd, RawReply, RawUpstream, Reply, ReplyOutcome};
use faults_common::{
    assert_completed_with_mock_usage, assert_failed, message, request_id, summary, text, Rig,
};
use support::{endpoint_yaml, messages_sent, WAIT};

/// One attempt per endpoint and short timeouts, so each fault shows in well under a second.
const ONE_ATTEMPT: &str = "retry:\n  max_attempts: 1\n";

/// The events of the mock's default stream (3 deltas), as the mock sends them.
async fn reference_events() -> Vec<Bytes> {
    let upstream = MockUpstream::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = hyper::Request::post(format!("{}/v1/messages", upstream.url()))
        .body(http_body_util::Full::new(Bytes::from(
            message(true).to_string(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("mock answers");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("mock body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("mock stream is UTF-8");
    text.split_inclusive("\n\n")
        .map(|event| Bytes::from(event.to_string()))
        .collect()
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_fails_cleanly_then_recovers() {
    let upstream = MockUpstream::start().await;
    let address = upstream.addr();
    let rig = Rig::in_front_of(
        &upstream.url(),
        &format!("{ONE_ATTEMPT}health:\n  check_interval: 1h\n"),
        "",
    )
    .await;
    upstream.shutdown().await;

    // Client: an Anthropic 502 naming the endpoint.
    let answer = rig.forwarder.messages(message(false), &[]).await;
    answer.assert_anthropic_error(502, "api_error");
    // Database: one failed row, for the connection failure.
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "could not be reached");
    assert_eq!(row.record.endpoint_name.as_deref(), Some("mock"));

    // The upstream comes back on the same address: traffic flows again, and upstream saw only
    // the requests after its return.
    let restored = MockUpstream::start_on(address).await.expect("rebind");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = rig.forwarder.messages(message(false), &[]).await;
        if answer.status == 200 {
            assert_completed_with_mock_usage(&rig.row(&request_id(&answer)).await);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(messages_sent(&restored), 1);
    rig.serves_normally().await;
    assert_eq!(messages_sent(&restored), 2);
}

#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_times_out_with_504() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    // A non-streaming request waits for its endpoint's `timeout` (issue #17: not for
    // `streaming.response_header_timeout`, which bounds streams only).
    let rig = Rig::in_front_of(&upstream.url(), ONE_ATTEMPT, "timeout: 300ms\n").await;
    let answer = rig.forwarder.messages(message(false), &[]).await;
    answer.assert_anthropic_error(504, "api_error");
    // Upstream got the whole request and saw the forwarder hang up.
    let seen = upstream.wait_for_requests(1, WAIT).await;
    assert_eq!(seen[0].json(), Some(message(false)));
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "no response headers within 300ms");
    rig.serves_normally().await;
    assert_eq!(messages_sent(&upstream), 2);
}

#[tokio::test]
async fn a_stream_that_stalls_after_its_headers_ends_with_an_error_event_and_keeps_its_usage() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().stall_after_events(2));
    let rig = Rig::in_front_of(&upstream.url(), "streaming:\n  max_idle_time: 300ms\n", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    let body = text(&answer);
    assert!(body.starts_with("event: message_start"), "{body}");
    assert!(
        body.ends_with("\n\n")
            && body.contains(
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\""
            ),
        "{body}"
    );
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone),
        "the forwarder hung up on the stalled upstream"
    );
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "no data for 300ms");
    assert_eq!(row.record.http_status_code, Some(200));
    assert_eq!(
        row.record.usage.input_tokens, 12,
        "message_start's usage is kept: {:?}",
        row.record
    );
    rig.serves_normally().await;
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_a_failed_row() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().drop_after_events(4));
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    let recorded = upstream.wait_for_finished(0, WAIT).await.expect("finished");
    assert_eq!(recorded.outcome, ReplyOutcome::Aborted);
    let body = answer.bytes();
    // Exactly what upstream sent, then one well-formed error event.
    assert!(body.starts_with(&recorded.sent_body));
    let tail = String::from_utf8_lossy(&body[recorded.sent_body.len()..]).into_owned();
    assert!(
        tail.starts_with("event: error\ndata: {") && tail.ends_with("\n\n"),
        "{tail}"
    );
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "mid-body");
    assert_eq!(row.record.usage.input_tokens, 12, "{:?}", row.record);
    assert!(row.record.partial || row.record.usage.output_tokens <= 1);
    rig.serves_normally().await;
}

#[tokio::test]
async fn a_connection_reset_mid_stream_ends_with_an_error_event_and_a_failed_row() {
    let events = reference_events().await;
    let mut head_and_two = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for event in &events[..2] {
        head_and_two.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
        head_and_two.extend_from_slice(event);
        head_and_two.extend_from_slice(b"\r\n");
    }
    let upstream = RawUpstream::start(RawReply::new(head_and_two).then(RawEnd::Reset))
        .await
        .expect("raw upstream");
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    let body = text(&answer);
    let sent: String = events[..2]
        .iter()
        .map(|event| String::from_utf8_lossy(event).into_owned())
        .collect();
    assert!(body.starts_with(&sent), "{body}");
    assert!(
        body[sent.len()..].starts_with("event: error\ndata: {"),
        "{body}"
    );
    assert_eq!(upstream.requests().len(), 1);
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "mid-body");
    assert_eq!(row.record.usage.input_tokens, 12);
    // Upstream back to normal: a well-formed JSON answer.
    upstream.set_default(json_reply(&mock_json()).then(RawEnd::KeepAlive));
    rig.serves_normally().await;
    assert_eq!(upstream.requests().len(), 2);
}

/// The mock's JSON message body.
fn mock_json() -> String {
    r#"{"id":"msg_raw","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":6}}"#.to_string()
}

/// A JSON answer with a correct length.
fn json_reply(body: &str) -> RawReply {
    RawReply::response(
        200,
        &[
            "content-type: application/json",
            &format!("content-length: {}", body.len()),
        ],
        body,
    )
}

#[tokio::test]
async fn a_content_length_longer_than_the_body_cuts_the_answer_and_fails_the_row() {
    let body = mock_json();
    let upstream = RawUpstream::start(RawReply::response(
        200,
        &[
            "content-type: application/json",
            &format!("content-length: {}", body.len() + 100),
        ],
        &body,
    ))
    .await
    .expect("raw upstream");
    let rig = Rig::in_front_of(&upstream.url(), ONE_ATTEMPT, "").await;
    let answer = rig.forwarder.messages(message(false), &[]).await;
    // The head was relayed; the body cannot be completed, so the client sees it cut, never a
    // silently short body presented as whole.
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_err(), "the client must see the body cut");
    assert_eq!(upstream.requests().len(), 1);
    let row = rig.row(&request_id(&answer)).await;
    assert_failed(&row, "mid-body");
    upstream.set_default(json_reply(&body).then(RawEnd::KeepAlive));
    rig.serves_normally().await;
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_never_poisons_the_next_request() {
    let body = mock_json();
    let upstream = RawUpstream::start(json_reply(&body).then(RawEnd::KeepAlive))
        .await
        .expect("raw upstream");
    // Claims 20 bytes, sends the whole message and keeps the connection: the 20 bytes are the
    // answer, the rest is garbage left on the connection.
    upstream.enqueue(
        RawReply::response(
            200,
            &["content-type: application/json", "content-length: 20"],
            &body,
        )
        .then(RawEnd::KeepAlive),
    );
    let rig = Rig::in_front_of(&upstream.url(), ONE_ATTEMPT, "").await;
    let answer = rig.forwarder.messages(message(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.bytes(),
        body.as_bytes()[..20],
        "exactly the announced length"
    );
    let row = rig.row(&request_id(&answer)).await;
    // HTTP-wise the answer was complete: the forwarder cannot know upstream lied.
    assert_eq!(row.record.status, status::COMPLETED, "{:?}", row.record);
    // The leftover bytes must not be read as the next answer.
    let next = rig.serves_normally().await;
    assert_eq!(next.record.http_status_code, Some(200));
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn malformed_sse_reaches_the_client_verbatim_and_the_valid_usage_is_counted() {
    let events = reference_events().await;
    let mut chunks: Vec<Bytes> = vec![
        Bytes::from_static(b": a comment line\n\n"),
        Bytes::from_static(b"data: {not json at all\n\n"),
        Bytes::from_static(b"event: content_block_delta\n\n"),
        Bytes::from_static(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":\n\n",
        ),
        Bytes::from_static(b"garbage line without a field\r\nanother one\r\n\r\n"),
    ];
    chunks.splice(0..0, events[..1].iter().cloned());
    chunks.extend(events[1..].iter().cloned());
    let sent: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.to_vec()).collect();
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::raw_sse(chunks));
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.bytes(), sent, "relayed byte for byte");
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::Completed)
    );
    let row = rig.row(&request_id(&answer)).await;
    assert_completed_with_mock_usage(&row);
    rig.serves_normally().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_stream_is_relayed_untouched_and_counted() {
    let events = reference_events().await;
    let mut chunks: Vec<Bytes> = events.clone();
    // A text delta whose payload carries bytes that are not UTF-8.
    let mut broken =
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"".to_vec();
    broken.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0x80]);
    broken.extend_from_slice(b"\"}}\n\n");
    chunks.insert(4, Bytes::from(broken));
    let sent: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.to_vec()).collect();
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::raw_sse(chunks));
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.bytes(), sent, "relayed byte for byte");
    let row = rig.row(&request_id(&answer)).await;
    assert_completed_with_mock_usage(&row);
    rig.serves_normally().await;
}

#[tokio::test]
async fn a_gigantic_single_event_passes_through_and_the_usage_is_still_counted() {
    let events = reference_events().await;
    let size = 8 * 1024 * 1024;
    let mut giant = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"".to_vec();
    giant.resize(giant.len() + size, b'x');
    giant.extend_from_slice(b"\"}}\n\n");
    let mut chunks = events.clone();
    chunks.insert(3, Bytes::from(giant));
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::raw_sse(chunks));
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    let body = answer.bytes();
    assert_eq!(body.len(), total);
    let recorded = upstream.wait_for_finished(0, WAIT).await.expect("finished");
    assert_eq!(recorded.outcome, ReplyOutcome::Completed);
    assert_eq!(body, recorded.sent_body);
    let row = rig.row(&request_id(&answer)).await;
    assert_completed_with_mock_usage(&row);
    rig.serves_normally().await;
}

#[tokio::test]
async fn error_storms_on_every_endpoint_fail_every_request_cleanly_then_traffic_recovers() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    first.set_default(Reply::overloaded());
    second.set_default(Reply::error(500, "api_error", "Internal server error"));
    let rig = Rig::start(
        // The retry budget is opened wide: this test counts each request's own attempts (the
        // budget's cap under a storm is `timeouts::the_retry_budget_caps_retries_under_a_storm`).
        // Served on the test's runtime (`server.threads: 0`): the exact counts need every
        // request routed before the first failures put `first` in cooldown, an order per-core
        // threads do not give (requests routed later skip the cooling endpoint).
        "server:\n  threads: 0\nretry:\n  max_attempts: 2\n  base_delay: 5ms\n  max_delay: 20ms\n  budget_percent: 100\n  min_retry_concurrency: 100\ngroup:\n  cooldown: 200ms\nhealth:\n  check_interval: 100ms\n",
        &[
            endpoint_yaml("first", &first.url(), "priority: 1"),
            endpoint_yaml("second", &second.url(), "priority: 2"),
        ],
    )
    .await;
    let requests = 20;
    let answers = futures_util::future::join_all(
        (0..requests).map(|index| rig.forwarder.messages(message(index % 2 == 0), &[])),
    )
    .await;
    for answer in &answers {
        // The last endpoint's error, relayed in the Anthropic format.
        answer.assert_anthropic_error(500, "api_error");
    }
    // Each request tried each endpoint exactly `max_attempts` times: no request was lost,
    // none was retried beyond its budget.
    assert_eq!(messages_sent(&first), requests * 2);
    assert_eq!(messages_sent(&second), requests * 2);
    let rows = rig.final_rows(requests).await;
    assert!(
        rows.iter()
            .all(|row| status::is_failure(&row.record.status)),
        "{:#?}",
        summary(&rows)
    );
    // Both recover: traffic flows again within the deadline.
    first.set_default(Reply::auto());
    second.set_default(Reply::auto());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = rig.forwarder.messages(message(false), &[]).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.serves_normally().await;
}
