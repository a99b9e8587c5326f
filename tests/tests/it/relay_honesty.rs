//! Relay honesty end to end: an honest and a dishonest mock upstream behind the real app. Each
//! signal (model substitution, inflated usage, a "stream" replayed in one burst) is flagged on
//! the endpoint that shows it and not on the honest one, visible through
//! `GET /api/v1/routing/honesty` and `/metrics`; with `routing.demote_dishonest: true` a
//! dishonest endpoint's traffic moves to the honest endpoint of its group, and without it does
//! not.
//!
//! The burst detector times content deltas on real sockets, so its end-to-end test only uses
//! streams whose verdict does not depend on how busy the machine is: the dishonest stream is one
//! write (the deltas of one body frame are a burst whatever the timing), the honest one is paced
//! 40 ms per delta (flagging it would take nine in ten deltas to arrive within 1 ms of the one
//! before). The thresholds themselves are tested with synthetic timings in the router's and the
//! proxy's unit tests (`ccf_router::honesty`, `ccf_proxy::honesty`).

use crate::support;

use std::time::Duration;

use ccf_testkit::{MockUpstream, MockUsage, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::{admin_get, config, endpoint_yaml, messages_sent, Forwarder};

/// The admin API on a free loopback port; session affinity off so that every request follows
/// the routing order (the tests send unrelated one-turn conversations anyway).
const SETTINGS: &str = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n\
                        routing:\n  session_affinity: off\n";

/// The model every request asks for.
const MODEL: &str = "claude-opus-4-1";

/// A small one-turn conversation (its local estimate is a few dozen tokens), distinct per `n`.
fn request(n: usize, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": format!("question number {n}: what is 2 + 2?")}],
    })
}

/// `honest` and `relay` in one group; `relay` is preferred (priority 1) unless `relay_second`.
struct Pair {
    honest: MockUpstream,
    relay: MockUpstream,
}

impl Pair {
    async fn start() -> Pair {
        Pair {
            honest: MockUpstream::start().await,
            relay: MockUpstream::start().await,
        }
    }

    async fn forwarder(&self, routing: &str) -> Forwarder {
        let settings = format!("{SETTINGS}{routing}");
        Forwarder::start(config(
            &settings,
            &[
                endpoint_yaml("relay", &self.relay.url(), "group: main\npriority: 1"),
                endpoint_yaml("honest", &self.honest.url(), "group: main\npriority: 2"),
            ],
        ))
        .await
    }
}

/// One endpoint's entry of `GET /api/v1/routing/honesty`.
async fn honesty_of(forwarder: &Forwarder, endpoint: &str) -> Value {
    let view = admin_get(forwarder, "/api/v1/routing/honesty").await;
    view["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .find(|entry| entry["endpoint"] == endpoint)
        .cloned()
        .unwrap_or_else(|| panic!("{endpoint} missing from {view}"))
}

/// Sends `count` requests, each answered by whichever endpoint routing prefers; returns the
/// request id of the last one.
async fn send(forwarder: &Forwarder, first: usize, count: usize, stream: bool) -> String {
    let mut last_id = String::new();
    for n in first..first + count {
        let answer = forwarder.messages(request(n, stream), &[]).await;
        assert_eq!(answer.status, 200, "request {n}");
        answer.bytes();
        last_id = answer
            .header("x-ccf-request-id")
            .expect("request id header")
            .to_string();
    }
    last_id
}

/// Prefers `endpoint` inside the group (operator priority override).
fn prefer(forwarder: &Forwarder, endpoint: &str) {
    forwarder
        .engine
        .prefer_endpoint(endpoint)
        .expect("known endpoint");
}

/// `relay` answers with `dishonest`, `honest` with the default reply; three requests go to each.
/// `signal` is flagged on every relay answer and on no honest one, and the relay's last flag
/// names its last request and says `reported` (what the relay did; for a burst, its start).
async fn check_signal(signal: &str, dishonest: Reply, stream: bool, reported: &str) {
    let pair = Pair::start().await;
    pair.relay.set_default(dishonest);
    if stream {
        // Paced like generated text: 12 deltas, 40 ms apart. A scheduling stall can merge a
        // few of them into one read, never nine in ten.
        pair.honest.set_default(
            Reply::sse()
                .deltas(12)
                .chunk_delay(Duration::from_millis(40)),
        );
    }
    let forwarder = pair.forwarder("").await;

    let relay_last = send(&forwarder, 0, 3, stream).await;
    prefer(&forwarder, "honest");
    send(&forwarder, 3, 3, stream).await;
    assert_eq!(messages_sent(&pair.relay), 3);
    assert_eq!(messages_sent(&pair.honest), 3);
    forwarder.settled().await;

    let relay = honesty_of(&forwarder, "relay").await;
    assert_eq!(relay["checks"], 3, "{relay}");
    assert_eq!(relay["signals"][signal]["checks"], 3, "{relay}");
    assert_eq!(relay["signals"][signal]["flags"], 3, "{relay}");
    assert_eq!(relay["flagged_requests"], 3, "{relay}");
    assert!(
        relay["score"].as_f64().expect("score") < 0.6,
        "three flags in a row: {relay}"
    );
    assert_eq!(relay["last_flag"]["signal"], signal, "{relay}");
    assert_eq!(
        relay["last_flag"]["request_id"],
        relay_last.as_str(),
        "{relay}"
    );
    let flagged_as = relay["last_flag"]["reported"].as_str().unwrap_or_default();
    assert!(flagged_as.starts_with(reported), "{relay}");
    assert!(
        !relay.to_string().contains("question number"),
        "no prompt text in the view: {relay}"
    );
    assert_eq!(relay["demoted"], false, "demotion is off by default");

    let honest = honesty_of(&forwarder, "honest").await;
    assert_eq!(honest["checks"], 3, "{honest}");
    assert_eq!(honest["signals"][signal]["checks"], 3, "{honest}");
    for name in ["model_substitution", "usage_mismatch", "burst_stream"] {
        assert_eq!(honest["signals"][name]["flags"], 0, "{name}: {honest}");
    }
    assert_eq!(honest["score"], 1.0, "{honest}");
    assert_eq!(honest["last_flag"], Value::Null, "{honest}");

    let metrics = forwarder
        .send(Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await;
    let text = String::from_utf8_lossy(&metrics.bytes()).to_string();
    assert!(
        text.contains(&format!(
            "ccf_endpoint_honesty_score{{endpoint=\"relay\",signal=\"{signal}\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains("ccf_endpoint_honesty_score{endpoint=\"honest\",signal=\"overall\"} 1.0"),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn a_substituted_model_is_flagged_on_the_endpoint_that_substitutes_it() {
    check_signal(
        "model_substitution",
        Reply::auto().model("claude-3-haiku-20240307"),
        false,
        "claude-3-haiku-20240307",
    )
    .await;
}

#[tokio::test]
async fn inflated_usage_is_flagged_on_the_endpoint_that_reports_it() {
    let inflated = MockUsage {
        input: 40_000,
        output: 20,
        cache_creation: 0,
        cache_read: 0,
    };
    check_signal(
        "usage_mismatch",
        Reply::auto().usage(inflated),
        false,
        "40000 input tokens",
    )
    .await;
}

/// A complete 40-delta stream written at once, as a relay that buffered the whole answer and
/// replays it would send it.
fn replayed_stream() -> Reply {
    let mut body = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_burst\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{MODEL}\",\"content\":[],\"stop_reason\":null,\"usage\":{{\"input_tokens\":20,\"output_tokens\":1}}}}}}\n\n\
         event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
    );
    for n in 0..40 {
        body.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word{n} \"}}}}\n\n"
        ));
    }
    body.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    Reply::raw_sse([body])
}

#[tokio::test]
async fn a_stream_replayed_in_one_burst_is_flagged_and_a_paced_one_is_not() {
    // All 40 deltas are counted; how many of the 39 gaps were tight depends on how the one write
    // was read (at least 36, or it would not be flagged).
    check_signal(
        "burst_stream",
        replayed_stream(),
        true,
        "40 content deltas in ",
    )
    .await;
}

#[tokio::test]
async fn honesty_checking_can_be_turned_off() {
    let pair = Pair::start().await;
    pair.relay
        .set_default(Reply::auto().model("claude-3-haiku-20240307"));
    let forwarder = pair.forwarder("  relay_honesty: off\n").await;
    send(&forwarder, 0, 2, false).await;
    assert_eq!(messages_sent(&pair.relay), 2);
    let view = admin_get(&forwarder, "/api/v1/routing/honesty").await;
    assert_eq!(view["enabled"], false, "{view}");
    // Once the app has stopped both answers have ended: a check would have been recorded.
    let engine = forwarder.engine.clone();
    forwarder.stop_settled().await;
    let checks: Vec<(String, u64)> = engine
        .honesty()
        .into_iter()
        .map(|endpoint| (endpoint.endpoint, endpoint.checks))
        .collect();
    assert_eq!(
        checks,
        [("relay".to_string(), 0), ("honest".to_string(), 0)],
        "nothing is checked"
    );
}

/// The relay (priority 1) substitutes the model on every answer; eight requests are sent.
async fn run_demotion_scenario(routing: &str) -> (Pair, Forwarder) {
    let pair = Pair::start().await;
    pair.relay
        .set_default(Reply::auto().model("claude-3-haiku-20240307"));
    let forwarder = pair.forwarder(routing).await;
    send(&forwarder, 0, 8, false).await;
    (pair, forwarder)
}

#[tokio::test]
async fn a_dishonest_endpoint_is_demoted_behind_the_honest_one_when_asked() {
    let (pair, forwarder) = run_demotion_scenario("  demote_dishonest: true\n").await;
    // Five checks are needed before a score can demote; the sixth request goes elsewhere.
    assert_eq!(messages_sent(&pair.relay), 5);
    assert_eq!(messages_sent(&pair.honest), 3);

    let relay = honesty_of(&forwarder, "relay").await;
    assert_eq!(relay["demoted"], true, "{relay}");
    assert_eq!(relay["below_threshold"], true, "{relay}");
    // The operator's priority is kept: only the order inside the group changed.
    let endpoints = admin_get(&forwarder, "/api/v1/endpoints").await;
    let relay_endpoint = endpoints["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|entry| entry["name"] == "relay")
        .cloned()
        .expect("relay listed");
    assert_eq!(relay_endpoint["priority"], 1, "{relay_endpoint}");
    assert_eq!(relay_endpoint["honesty_demoted"], true, "{relay_endpoint}");
    let view = admin_get(&forwarder, "/api/v1/routing/honesty").await;
    assert_eq!(view["demote_dishonest"], true, "{view}");
    forwarder.stop().await;
}

#[tokio::test]
async fn a_dishonest_endpoint_keeps_its_traffic_without_demote_dishonest() {
    let (pair, forwarder) = run_demotion_scenario("").await;
    assert_eq!(messages_sent(&pair.relay), 8);
    assert_eq!(messages_sent(&pair.honest), 0);
    let relay = honesty_of(&forwarder, "relay").await;
    assert_eq!(relay["demoted"], false, "{relay}");
    assert_eq!(relay["below_threshold"], true, "{relay}");
    forwarder.stop().await;
}
