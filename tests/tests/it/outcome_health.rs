//! Passive health and `fastest` from the whole outcome of a request (issue #17, points 7 and 8):
//! a stream that is cut, stalls, carries an SSE `error` event or ends without `message_stop` is a
//! failure of its endpoint (counted when the relay ends, not when the headers arrive); a stream
//! that ends cleanly without `message_stop`, or whose cut falls after a blank line flushed on
//! its own, ends with a well-formed `event: error`; and `fastest` learns only from successful
//! answers, so an endpoint that answers 500 in a millisecond is not ranked first.
//!
//! Where requests go is read from what each mock upstream received.

use crate::faults_common;
use crate::support;

use std::time::Duration;

use bytes::Bytes;
use ccf_testkit::{MockUpstream, Reply};
use faults_common::{assert_failed, message, request_id, text, Rig};
use support::{config, endpoint_yaml, eventually, messages_sent, Forwarder};

/// One attempt per endpoint (a cut after the headers is never retried anyway), a short idle
/// limit for the stall, and periodic probes out of the way (only the start-up probe runs).
const SETTINGS: &str =
    "retry:\n  max_attempts: 1\nstreaming:\n  max_idle_time: 300ms\nhealth:\n  check_interval: 1h\n";

/// The events of a well-formed stream, each with its blank line, as the real API sends them.
fn stream_events() -> Vec<Bytes> {
    [
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_outcome","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello"}}

"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}

"#,
        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}

"#,
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]
    .into_iter()
    .map(|event| Bytes::from_static(event.as_bytes()))
    .collect()
}

/// The events of a stream that stops short of `message_stop` and then ends cleanly.
fn stream_without_message_stop() -> Vec<Bytes> {
    let mut events = stream_events();
    events.pop();
    events
}

/// What follows the upstream's bytes in a relayed body, as text.
fn tail_after<'a>(body: &'a str, sent: &[Bytes]) -> &'a str {
    let sent_len: usize = sent.iter().map(Bytes::len).sum();
    assert!(
        body.len() >= sent_len,
        "the client got less than upstream sent: {body}"
    );
    &body[sent_len..]
}

/// Asserts that `tail` is exactly one well-formed Anthropic `event: error`.
fn assert_one_error_event(tail: &str) {
    assert!(
        tail.starts_with("event: error\ndata: {") && tail.ends_with("\n\n"),
        "expected one error event, got {tail:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(tail.trim_start_matches("event: error\ndata: ").trim())
            .expect("the error event carries JSON");
    assert_eq!(json["type"], "error", "{tail}");
    assert!(json["error"]["type"].is_string(), "{tail}");
}

/// Waits until `upstream` got the start-up health probe (so scripted probe replies set after it
/// only affect the recovery probes).
async fn wait_for_startup_probe(upstream: &MockUpstream) {
    let probes = upstream.wait_for_probes(1, support::WAIT).await;
    assert!(!probes.is_empty(), "the start-up probe never came");
}

/// A request of its own conversation (`n` makes it unique), so session affinity never decides
/// where it goes: only health and the strategy do.
fn conversation(stream: bool, n: usize) -> serde_json::Value {
    let mut body = message(stream);
    body["messages"][0]["content"] = format!("conversation {n}").into();
    body
}

/// The rig in front of `cutter` (priority 1) and `steady` (priority 2), both in one group,
/// after their start-up probes; from then on the cutter's probes fail, so only passive health
/// can have changed its state, and a recovery probe cannot undo what the test checks.
async fn cutter_and_steady(cutter: &MockUpstream, steady: &MockUpstream) -> Rig {
    let rig = Rig::start(
        SETTINGS,
        &[
            endpoint_yaml("cutter", &cutter.url(), "priority: 1"),
            endpoint_yaml("steady", &steady.url(), "priority: 2"),
        ],
    )
    .await;
    wait_for_startup_probe(cutter).await;
    wait_for_startup_probe(steady).await;
    cutter.set_probe_reply(Reply::error(503, "api_error", "probe refused"));
    rig
}

#[tokio::test]
async fn a_relay_that_cuts_stalls_and_errors_mid_stream_turns_unhealthy_and_loses_first_place() {
    let cutter = MockUpstream::start().await;
    let steady = MockUpstream::start().await;
    // Three streams that start well (200 and headers on time) and then go wrong: a cut, a stall
    // past the idle limit, an `overloaded_error` event.
    cutter.enqueue(Reply::sse().drop_after_events(2));
    cutter.enqueue(Reply::sse().stall_after_events(2));
    cutter.enqueue(Reply::sse().error_event_after(2, "overloaded_error", "Overloaded"));
    let rig = cutter_and_steady(&cutter, &steady).await;

    for (n, expected_reason) in ["mid-body", "no data for 300ms", "overloaded_error"]
        .into_iter()
        .enumerate()
    {
        let answer = rig.forwarder.messages(conversation(true, n), &[]).await;
        assert_eq!(answer.status, 200);
        let row = rig.row(&request_id(&answer)).await;
        assert_failed(&row, expected_reason);
        assert_eq!(row.record.endpoint_name.as_deref(), Some("cutter"));
    }
    assert_eq!(messages_sent(&cutter), 3);
    assert_eq!(messages_sent(&steady), 0);

    // Three failures in a row: the cutter is unhealthy, and the next requests go to `steady`.
    for n in 3..5 {
        let answer = rig.forwarder.messages(conversation(true, n), &[]).await;
        assert_eq!(answer.status, 200);
        assert!(text(&answer).contains("event: message_stop"));
    }
    assert_eq!(messages_sent(&cutter), 3, "the cutter lost its first place");
    assert_eq!(messages_sent(&steady), 2);
}

#[tokio::test]
async fn a_stream_that_ends_without_message_stop_ends_with_an_error_event_and_a_failed_row() {
    let cutter = MockUpstream::start().await;
    let steady = MockUpstream::start().await;
    let sent = stream_without_message_stop();
    cutter.set_default(Reply::raw_sse(sent.clone()));
    let rig = cutter_and_steady(&cutter, &steady).await;

    for n in 0..3 {
        let answer = rig.forwarder.messages(conversation(true, n), &[]).await;
        assert_eq!(answer.status, 200);
        // Everything upstream sent, then one error event, then a clean end (not an abort).
        let body = text(&answer);
        let expected: String = sent.iter().map(|b| String::from_utf8_lossy(b)).collect();
        assert!(body.starts_with(&expected), "{body}");
        assert_one_error_event(tail_after(&body, &sent));
        let row = rig.row(&request_id(&answer)).await;
        assert_failed(&row, "message_stop");
        assert_eq!(row.record.failure_reason.as_deref(), Some("stream_error"));
        assert_eq!(row.record.usage.output_tokens, 6, "{:?}", row.record);
    }
    // Each one counted as a failure of the endpoint: the next request goes elsewhere.
    let answer = rig.forwarder.messages(conversation(true, 3), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(messages_sent(&cutter), 3);
    assert_eq!(messages_sent(&steady), 1);
}

#[tokio::test]
async fn a_cut_after_a_blank_line_flushed_on_its_own_ends_with_an_error_event_not_an_abort() {
    let upstream = MockUpstream::start().await;
    let events = stream_events();
    // The relay flushes each event's blank line as its own frame (a pause between frames keeps
    // them apart on the wire), then the connection is cut between two events.
    let first = events[0].slice(..events[0].len() - 1);
    let sent = vec![first, Bytes::from_static(b"\n")];
    upstream.enqueue(
        Reply::raw_sse(vec![sent[0].clone(), sent[1].clone(), events[1].clone()])
            .chunk_delay(Duration::from_millis(50))
            .drop_after_events(2),
    );
    let rig = Rig::in_front_of(&upstream.url(), SETTINGS, "").await;
    let answer = rig.forwarder.messages(message(true), &[]).await;
    assert_eq!(answer.status, 200);
    let body = String::from_utf8(
        answer
            .body
            .as_ref()
            .expect("the body ends cleanly, it is not aborted")
            .to_vec(),
    )
    .expect("UTF-8");
    assert!(
        body.starts_with(&String::from_utf8_lossy(&events[0]).into_owned()),
        "{body}"
    );
    assert_one_error_event(tail_after(&body, &sent));
    assert_failed(&rig.row(&request_id(&answer)).await, "mid-body");
}

#[tokio::test]
async fn fastest_does_not_rank_an_endpoint_that_answers_500_at_once_first() {
    let failing = MockUpstream::start().await;
    let good = MockUpstream::start().await;
    failing.set_default(Reply::error(500, "api_error", "Internal server error"));
    good.set_default(Reply::auto().header_delay(Duration::from_millis(50)));
    // Probes never finish (within the test): only real traffic can give a latency, so the
    // ranking is decided by what the requests measured.
    failing.set_probe_reply(Reply::hang());
    good.set_probe_reply(Reply::hang());
    let forwarder = Forwarder::start(config(
        "strategy:\n  type: fastest\nretry:\n  max_attempts: 1\nhealth:\n  check_interval: 1h\n  timeout: 10m\n",
        &[
            endpoint_yaml("failing", &failing.url(), "priority: 1"),
            endpoint_yaml("good", &good.url(), "priority: 2"),
        ],
    ))
    .await;
    // Nothing measured yet: priority order, so `failing` is tried first and fails over.
    let answer = forwarder.messages(conversation(true, 0), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!((messages_sent(&failing), messages_sent(&good)), (1, 1));
    let engine = forwarder.engine.clone();
    eventually("the good endpoint has a measured latency", || {
        engine
            .endpoints()
            .iter()
            .any(|view| view.name == "good" && view.latency_ewma.is_some())
    })
    .await;

    // Its 500 taught `fastest` nothing: the endpoint that answered goes first from now on.
    for n in 1..3 {
        assert_eq!(
            forwarder.messages(conversation(true, n), &[]).await.status,
            200
        );
    }
    assert_eq!(
        messages_sent(&failing),
        1,
        "the failing endpoint was ranked first"
    );
    assert_eq!(messages_sent(&good), 3);
    let views = forwarder.engine.endpoints();
    let failing_view = views.iter().find(|view| view.name == "failing").unwrap();
    assert_eq!(
        failing_view.latency_ewma, None,
        "a 500 is not a latency sample"
    );
}
