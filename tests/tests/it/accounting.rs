//! Token accounting end to end: every request through the real app ends as exactly one outcome
//! carrying the model and the exact usage the upstream reported.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use ccf_lifecycle::{FailureReason, RequestRecord, Status};
use ccf_testkit::{MockUpstream, MockUsage, Reply};
use serde_json::json;
use support::{config, endpoint_yaml, Forwarder, Outcomes, WAIT};

const FAST_RETRY: &str = "retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 50ms\n";

fn request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "count me"}],
    })
}

async fn observed(
    upstreams: &[(&str, &MockUpstream)],
    settings: &str,
) -> (Forwarder, Arc<Outcomes>) {
    let outcomes = Arc::new(Outcomes::default());
    let endpoints: Vec<String> = upstreams
        .iter()
        .enumerate()
        .map(|(index, (name, upstream))| {
            endpoint_yaml(name, &upstream.url(), &format!("priority: {}", index + 1))
        })
        .collect();
    let forwarder = Forwarder::start_observed(
        config(&format!("{FAST_RETRY}{settings}"), &endpoints),
        Some(Arc::clone(&outcomes) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    (forwarder, outcomes)
}

/// Stops the app once the test's one request is done and returns its outcome, checking it is
/// the only one. Stopping drains every connection, so every request has ended and reported by
/// then: a second outcome could not arrive later.
async fn the_outcome(forwarder: Forwarder, outcomes: &Outcomes) -> RequestRecord {
    forwarder.stop_settled().await;
    let all = outcomes.all();
    assert_eq!(all.len(), 1, "exactly one outcome: {all:#?}");
    all.into_iter().next().expect("one outcome")
}

fn usage(record: &RequestRecord) -> (u64, u64, u64, u64) {
    let usage = record.usage.clone().unwrap_or_default();
    (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    )
}

#[tokio::test]
async fn a_json_answer_completes_with_its_model_and_exact_usage() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::json().usage(MockUsage {
        input: 1200,
        output: 345,
        cache_creation: 50,
        cache_read: 7000,
    }));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let answer = forwarder
        .messages(request(false), &[("user-agent", "claude-cli/2.0")])
        .await;
    assert_eq!(answer.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.http_status, Some(200));
    assert_eq!(record.model(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(usage(&record), (1200, 345, 50, 7000));
    assert!(!record.partial);
    assert_eq!(record.endpoint.as_deref(), Some("a"));
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.user_agent.as_deref(), Some("claude-cli/2.0"));
    assert_eq!(
        record.client_ip.map(|ip| ip.to_string()).as_deref(),
        Some("127.0.0.1"),
        "client ip without port"
    );
    assert_eq!(
        answer.header("x-ccf-request-id"),
        Some(record.id.to_string().as_str())
    );
    assert!(record.duration.is_some() && record.time_to_first_byte.is_some());
    // Started and status changes were published before the outcome.
    let events = outcomes.events_for(record.id);
    assert!(events.iter().any(|event| event.status == Status::Pending));
    assert!(events
        .iter()
        .any(|event| event.status == Status::Processing));
}

#[tokio::test]
async fn a_stream_takes_output_from_message_delta_and_cache_counts_from_message_start() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().usage(MockUsage {
        input: 10,
        output: 99,
        cache_creation: 20,
        cache_read: 30,
    }));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(true), &[]).await.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(usage(&record), (10, 99, 20, 30));
    assert!(record.is_streaming);
}

#[tokio::test]
async fn gzip_streams_are_parsed_while_the_client_gets_the_compressed_bytes() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().gzip());
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let answer = forwarder
        .messages(request(true), &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(usage(&record), (12, 6, 5, 7));
}

#[tokio::test]
async fn a_stream_cut_after_message_start_fails_keeping_the_initial_usage() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().drop_after_events(4));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let answer = forwarder.messages(request(true), &[]).await;
    assert_eq!(answer.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::StreamError));
    assert_eq!(record.http_status, Some(200), "the stream had started");
    assert!(record.partial);
    let (input, output, cache_creation, cache_read) = usage(&record);
    assert_eq!((input, cache_creation, cache_read), (12, 5, 7));
    assert_eq!(output, 1, "message_start's provisional output count");
}

#[tokio::test]
async fn an_sse_error_event_fails_the_request_with_its_type() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().error_event_after(4, "overloaded_error", "Overloaded"));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(true), &[]).await.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::StreamError));
    assert!(record
        .last_failure_reason
        .as_deref()
        .is_some_and(|detail| detail.contains("overloaded_error")));
    assert_eq!(usage(&record).0, 12);
}

#[tokio::test]
async fn a_final_event_without_its_blank_line_still_counts() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::raw_sse([
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1,\"cache_read_input_tokens\":3}}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":17}}",
    ]));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(true), &[]).await.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(usage(&record), (40, 17, 0, 3));
    assert_eq!(record.model(), Some("claude-haiku-4-5"));
    assert!(record.model_mismatch, "sonnet was asked, haiku answered");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_cancelled_with_499_and_the_tokens_seen() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(
        Reply::sse()
            .deltas(500)
            .chunk_delay(Duration::from_millis(20)),
    );
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let mut stream = forwarder.raw_request(&request(true).to_string()).await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("content_block_delta") {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(read > 0);
        seen.extend_from_slice(&buffer[..read]);
    }
    drop(stream);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Cancelled);
    assert_eq!(record.http_status, Some(499));
    assert_eq!(
        usage(&record).0,
        12,
        "input tokens from message_start are billed"
    );
}

#[tokio::test]
async fn a_retried_then_successful_request_has_one_outcome_with_its_attempts() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::overloaded());
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(record.retry_count, 1);
    assert_eq!(
        usage(&record),
        (12, 6, 5, 7),
        "billed once, not per attempt"
    );
}

#[tokio::test]
async fn failover_records_the_trail_and_the_endpoint_that_served() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Reply::overloaded());
    let (forwarder, outcomes) = observed(&[("a", &a), ("b", &b)], "").await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.endpoint.as_deref(), Some("b"));
    let trail: Vec<&str> = record
        .attempts
        .iter()
        .map(|a| a.endpoint.as_str())
        .collect();
    assert_eq!(trail, ["a", "a", "b"]);
}

#[tokio::test]
async fn an_exhausted_request_bills_the_usage_its_error_answer_carried() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::status(
        529,
        json!({
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "usage": {"input_tokens": 77, "output_tokens": 0},
        }),
    ));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 529);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(
        record.failure_reason,
        Some(FailureReason::EndpointExhausted)
    );
    assert_eq!(record.http_status, Some(529));
    assert_eq!(usage(&record).0, 77);
}

#[tokio::test]
async fn a_client_error_relayed_verbatim_is_a_failed_outcome() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::error(
        400,
        "invalid_request_error",
        "prompt is too long",
    ));
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 400);
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(record.status, Status::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::HttpError));
    assert_eq!(record.http_status, Some(400));
    assert!(record
        .last_failure_reason
        .as_deref()
        .is_some_and(|detail| detail.contains("prompt is too long")));
}

#[tokio::test]
async fn many_concurrent_requests_each_end_exactly_once() {
    let upstream = MockUpstream::start().await;
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let answers = futures_util::future::join_all(
        (0..40).map(|index| forwarder.messages(request(index % 2 == 0), &[])),
    )
    .await;
    let mut answered: Vec<String> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, 200);
            answer
                .header("x-ccf-request-id")
                .expect("request id")
                .to_string()
        })
        .collect();
    forwarder.stop_settled().await;
    let all = outcomes.all();
    assert_eq!(all.len(), 40, "one outcome per request: {all:#?}");
    let mut ids: Vec<String> = all.iter().map(|record| record.id.to_string()).collect();
    ids.sort();
    answered.sort();
    assert_eq!(ids, answered, "each request's own outcome, no duplicates");
    assert!(all.iter().all(|record| usage(record) == (12, 6, 5, 7)));
    assert_eq!(all.iter().filter(|record| record.is_streaming).count(), 20);
}

/// Holds each request's outcome until the test lets it go: the thread finishing the request
/// waits meanwhile, as it would for any slow bookkeeping.
struct HeldOutcomes {
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    seen: std::sync::atomic::AtomicUsize,
}

impl ccf_proxy::RequestObserver for HeldOutcomes {
    fn on_outcome(&self, _outcome: &ccf_lifecycle::Outcome) -> Option<f64> {
        let release = self.release.lock().expect("release lock");
        let _ = release.recv_timeout(WAIT);
        self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        None
    }
}

#[tokio::test]
async fn an_answer_reaches_the_client_before_its_bookkeeping_runs() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::json());
    upstream.enqueue(Reply::sse());
    let (release, released) = std::sync::mpsc::channel();
    let held = Arc::new(HeldOutcomes {
        release: std::sync::Mutex::new(released),
        seen: std::sync::atomic::AtomicUsize::new(0),
    });
    let forwarder = Forwarder::start_observed(
        config("", &[endpoint_yaml("mock", &upstream.url(), "")]),
        Some(Arc::clone(&held) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    for (stream, number) in [(false, 1), (true, 2)] {
        // Finished before the last frame was handed on, the answer would wait for the release:
        // the whole of it arrives while the outcome is held.
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            forwarder.messages(request(stream), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("answer {number} waited for its bookkeeping"));
        assert_eq!(answer.status, 200);
        assert_eq!(
            held.seen.load(std::sync::atomic::Ordering::SeqCst),
            number - 1
        );
        release.send(()).expect("the observer waits");
        support::eventually("the held outcome", || {
            held.seen.load(std::sync::atomic::Ordering::SeqCst) == number
        })
        .await;
    }
}

/// An embedder serving the engine itself (its `Service` implementation) names the client with
/// a `ClientAddr` extension; the forwarder's own server hands the peer over directly. Both
/// reach the record.
#[tokio::test]
async fn an_embedders_client_address_extension_reaches_the_record() {
    use http_body_util::{BodyExt as _, Full};
    use hyper::service::Service as _;
    let upstream = MockUpstream::start().await;
    let (forwarder, outcomes) = observed(&[("a", &upstream)], "").await;
    let mut request = http::Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(request(false).to_string())))
        .expect("request");
    let client: std::net::SocketAddr = "192.0.2.7:5555".parse().expect("address");
    request
        .extensions_mut()
        .insert(ccf_proxy::ClientAddr(client));
    let response = forwarder.engine.call(request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("body");
    let record = the_outcome(forwarder, &outcomes).await;
    assert_eq!(
        record.client_ip.map(|ip| ip.to_string()).as_deref(),
        Some("192.0.2.7")
    );
}
