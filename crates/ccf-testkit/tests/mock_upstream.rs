//! Round trips against `MockUpstream` with a plain hyper client and raw sockets on loopback.

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use ccf_testkit::{MockConfig, MockUpstream, MockUsage, Reply, ReplyOutcome};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

fn request(method: Method, url: String, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

async fn send(client: &TestClient, method: Method, url: String, body: &str) -> Answer {
    let response = client
        .request(request(method, url, body))
        .await
        .expect("response head");
    let (parts, incoming) = response.into_parts();
    let body = incoming.collect().await.expect("whole body").to_bytes();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

async fn post_messages(upstream: &MockUpstream, body: &str) -> Answer {
    send(
        &client(),
        Method::POST,
        format!("{}/v1/messages", upstream.url()),
        body,
    )
    .await
}

/// Splits an SSE body in `(event, data json)` pairs, checking the framing.
fn events(body: &[u8]) -> Vec<(String, serde_json::Value)> {
    let text = std::str::from_utf8(body).expect("utf-8 stream");
    assert!(text.ends_with("\n\n"), "stream ends with a blank line");
    text.split_terminator("\n\n")
        .map(|block| {
            let (name, data) = block
                .strip_prefix("event: ")
                .and_then(|rest| rest.split_once("\ndata: "))
                .expect("event block");
            (
                name.to_owned(),
                serde_json::from_str(data).expect("event data json"),
            )
        })
        .collect()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut plain)
        .expect("valid gzip");
    plain
}

/// Writes a raw HTTP/1.1 request for a streamed message.
async fn raw_stream_request(upstream: &MockUpstream) -> TcpStream {
    let body = r#"{"model":"claude-haiku-4-5","max_tokens":10,"stream":true,"messages":[]}"#;
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body.as_bytes()).await.expect("write body");
    stream
}

/// Reads from `stream` until `needle` was seen.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let read = stream.read(&mut buffer).await.expect("read");
            assert!(read > 0, "connection closed before {needle:?}");
            seen.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("needle in time");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn auto_answers_json_when_stream_is_absent() {
    let upstream = MockUpstream::start().await;
    let answer = post_messages(
        &upstream,
        r#"{"model":"claude-haiku-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("request-id"), Some("req_mock_1"));
    let length = answer.body.len().to_string();
    assert_eq!(answer.header("content-length"), Some(length.as_str()));
    let message = answer.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-haiku-4-5");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["cache_read_input_tokens"], 7);

    let finished = upstream
        .wait_for_finished(0, WAIT)
        .await
        .expect("reply finished");
    assert_eq!(finished.outcome, ReplyOutcome::Completed);
    assert_eq!(finished.status, Some(200));
    assert_eq!(finished.sent_body, answer.body);
}

#[tokio::test]
async fn auto_streams_sse_when_stream_is_true() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::auto().deltas(5).usage(MockUsage {
        input: 100,
        output: 42,
        cache_creation: 3,
        cache_read: 4,
    }));
    let answer = post_messages(
        &upstream,
        r#"{"max_tokens":10,"stream":true,"messages":[]}"#,
    )
    .await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    assert_eq!(answer.header("content-length"), None);
    let events = events(&answer.body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(start["model"], ccf_testkit::DEFAULT_MODEL);
    assert_eq!(start["usage"]["input_tokens"], 100);
    assert_eq!(start["usage"]["cache_creation_input_tokens"], 3);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 4);
    assert_eq!(events[9].1["usage"]["output_tokens"], 42);

    let finished = upstream.wait_for_finished(0, WAIT).await.expect("finished");
    assert_eq!(finished.outcome, ReplyOutcome::Completed);
    assert_eq!(finished.sent_body, answer.body);
}

#[tokio::test]
async fn records_method_path_query_headers_and_body() {
    let upstream = MockUpstream::start().await;
    let body = r#"{"model":"m","max_tokens":1,"messages":[]}"#;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/messages?beta=true", upstream.url()))
        .header("x-api-key", "sk-test")
        .header("anthropic-beta", "a,b,c")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = client().request(request).await.expect("response");
    response.into_body().collect().await.expect("body");

    let requests = upstream.wait_for_requests(1, WAIT).await;
    assert_eq!(requests.len(), 1);
    let recorded = &requests[0];
    assert_eq!(recorded.index, 0);
    assert_eq!(recorded.request_id, "req_mock_1");
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.query.as_deref(), Some("beta=true"));
    assert_eq!(recorded.header("x-api-key"), Some("sk-test"));
    assert_eq!(recorded.header("anthropic-beta"), Some("a,b,c"));
    assert_eq!(recorded.body, body);
    assert_eq!(recorded.json().expect("json")["model"], "m");
    assert_eq!(recorded.version, Version::HTTP_11);
}

#[tokio::test]
async fn queued_replies_are_used_in_order_then_the_default() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::overloaded());
    upstream.enqueue(Reply::json().model("claude-queued"));
    upstream.set_default(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    assert_eq!(upstream.queued_replies(), 2);

    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = post_messages(&upstream, "{}").await;
        seen.push(answer.status.as_u16());
        if answer.status == StatusCode::OK {
            assert_eq!(answer.json()["model"], "claude-queued");
        }
    }
    assert_eq!(seen, [529, 200, 401, 401]);
    assert_eq!(upstream.queued_replies(), 0);
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test]
async fn status_replies_carry_their_body_and_headers() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::rate_limited(7));
    upstream.enqueue(Reply::status(
        418,
        serde_json::json!({"type": "error", "error": {"type": "teapot", "message": "short and stout"}}),
    ));
    upstream.enqueue(Reply::json().header("anthropic-ratelimit-requests-remaining", "99"));

    let limited = post_messages(&upstream, "{}").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("7"));
    assert_eq!(limited.header("content-type"), Some("application/json"));
    let error = limited.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["request_id"], "req_mock_1");

    let teapot = post_messages(&upstream, "{}").await;
    assert_eq!(teapot.status.as_u16(), 418);
    assert_eq!(teapot.json()["error"]["message"], "short and stout");

    let with_header = post_messages(&upstream, "{}").await;
    assert_eq!(
        with_header.header("anthropic-ratelimit-requests-remaining"),
        Some("99")
    );
}

#[tokio::test]
async fn count_tokens_models_root_and_unknown_paths() {
    let upstream = MockUpstream::start().await;
    let client = client();
    let base = upstream.url();

    let forty_bytes = r#"{"model":"m","messages":[],"x":"012345"}"#;
    assert_eq!(forty_bytes.len(), 40);
    let count = send(
        &client,
        Method::POST,
        format!("{base}/v1/messages/count_tokens"),
        forty_bytes,
    )
    .await;
    assert_eq!(count.status, StatusCode::OK);
    assert_eq!(count.json(), serde_json::json!({"input_tokens": 10}));

    let models = send(&client, Method::GET, format!("{base}/v1/models"), "").await;
    assert_eq!(models.status, StatusCode::OK);
    let list = models.json();
    assert!(list["data"].as_array().is_some_and(|data| !data.is_empty()));
    assert_eq!(list["has_more"], false);

    let head = send(&client, Method::HEAD, format!("{base}/"), "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let root = send(&client, Method::GET, format!("{base}/"), "").await;
    assert_eq!(root.status, StatusCode::OK);
    assert!(root.body.is_empty());

    let missing = send(&client, Method::GET, format!("{base}/v1/nope"), "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let error = missing.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");

    let bad = send(&client, Method::POST, format!("{base}/v1/messages"), "{").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");

    // The models list is a health probe: recorded apart, never taking a scripted reply.
    let probes = upstream.probes();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].path, "/v1/models");
    let outcomes = upstream.outcomes();
    assert_eq!(outcomes.len(), 5);
    for index in 0..outcomes.len() {
        assert_eq!(
            upstream.wait_for_outcome(index, WAIT).await,
            Some(ReplyOutcome::Completed)
        );
    }
}

#[tokio::test]
async fn hang_records_client_gone_when_the_client_disconnects() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::hang());
    let stream = raw_stream_request(&upstream).await;

    let requests = upstream.wait_for_requests(1, WAIT).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(upstream.outcomes(), [ReplyOutcome::Pending]);
    drop(stream);

    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    let record = upstream.request(0).expect("record");
    assert_eq!(record.status, None);
    assert!(record.sent_body.is_empty());
}

#[tokio::test]
async fn header_delay_then_client_gone_is_recorded() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::sse().header_delay(Duration::from_secs(60)));
    let stream = raw_stream_request(&upstream).await;
    upstream.wait_for_requests(1, WAIT).await;
    drop(stream);
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
}

#[tokio::test]
async fn client_leaving_mid_stream_is_recorded_as_client_gone() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(
        Reply::auto()
            .deltas(200)
            .chunk_delay(Duration::from_millis(20)),
    );
    let mut stream = raw_stream_request(&upstream).await;
    let seen = read_until(&mut stream, "content_block_delta").await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(seen.contains("transfer-encoding: chunked"));
    drop(stream);

    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    let record = upstream.request(0).expect("record");
    assert_eq!(record.status, Some(200));
    assert!(record.sent_body.starts_with(b"event: message_start\n"));
    assert!(!record
        .sent_body
        .ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test]
async fn stall_after_events_sends_nothing_more_until_the_client_leaves() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::sse().stall_after_events(2));
    let response = client()
        .request(request(
            Method::POST,
            format!("{}/v1/messages", upstream.url()),
            "{}",
        ))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("event: content_block_start") {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("frame in time")
            .expect("a frame")
            .expect("frame ok");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    // Asserting an absence needs some wait; the stream must stay silent and open meanwhile.
    let next = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
    assert!(next.is_err(), "a stalled stream sent more");
    assert_eq!(upstream.outcomes(), [ReplyOutcome::Pending]);
    drop(body);

    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    assert_eq!(upstream.request(0).expect("record").sent_body, received);
}

#[tokio::test]
async fn drop_after_events_gives_the_client_an_incomplete_body() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::sse().drop_after_events(2));
    let response = client()
        .request(request(
            Method::POST,
            format!("{}/v1/messages", upstream.url()),
            "{}",
        ))
        .await
        .expect("response head");
    assert_eq!(response.status(), StatusCode::OK);
    let result = response.into_body().collect().await;
    assert!(result.is_err(), "the body must end with an error");

    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::Aborted)
    );
    let sent = upstream.request(0).expect("record").sent_body;
    assert_eq!(events(&sent).len(), 2);
}

#[tokio::test]
async fn drop_after_zero_events_on_json_closes_before_the_body() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::json().drop_after_events(0));
    let response = client()
        .request(request(
            Method::POST,
            format!("{}/v1/messages", upstream.url()),
            "{}",
        ))
        .await
        .expect("the head is sent before the connection is cut");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::Aborted)
    );
}

#[tokio::test]
async fn gzip_bodies_decode_to_the_plain_reply() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::json().gzip());
    upstream.enqueue(Reply::sse().deltas(4).gzip());

    let json = post_messages(&upstream, r#"{"model":"claude-gz"}"#).await;
    assert_eq!(json.header("content-encoding"), Some("gzip"));
    assert_eq!(json.header("content-type"), Some("application/json"));
    let message: serde_json::Value = serde_json::from_slice(&gunzip(&json.body)).expect("json");
    assert_eq!(message["model"], "claude-gz");

    let sse = post_messages(&upstream, "{}").await;
    assert_eq!(sse.header("content-encoding"), Some("gzip"));
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let events = events(&gunzip(&sse.body));
    assert_eq!(events.len(), 10);
    assert_eq!(events[9].0, "message_stop");

    let finished = upstream.wait_for_finished(1, WAIT).await.expect("finished");
    assert_eq!(
        finished.sent_body, sse.body,
        "sent_body is the compressed bytes"
    );
}

#[tokio::test]
async fn raw_sse_sends_exactly_the_given_chunks() {
    let upstream = MockUpstream::start().await;
    let chunks = [
        "event: message_start\ndata: {\"type\":",
        "\"broken\n\n",
        "garbage",
    ];
    upstream.enqueue(Reply::raw_sse(chunks));
    let answer = post_messages(&upstream, "{}").await;
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.body, chunks.concat());
}

#[tokio::test]
async fn error_event_ends_the_stream_with_an_anthropic_error() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::sse().error_event_after(1, "overloaded_error", "Overloaded"));
    let answer = post_messages(&upstream, "{}").await;
    let events = events(&answer.body);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "error");
    assert_eq!(events[1].1["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let upstream = MockUpstream::start().await;
    let client = client();
    for _ in 0..3 {
        let answer = send(
            &client,
            Method::POST,
            format!("{}/v1/messages", upstream.url()),
            "{}",
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let connections: Vec<u64> = upstream
        .requests()
        .iter()
        .map(|request| request.connection)
        .collect();
    assert_eq!(connections, [1, 1, 1]);
    assert_eq!(upstream.connection_count(), 1);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let upstream = MockUpstream::start().await;
    let client: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let answer = send(
        &client,
        Method::POST,
        format!("{}/v1/messages", upstream.url()),
        r#"{"stream":true}"#,
    )
    .await;
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(events(&answer.body).len(), 9);
    let finished = upstream.wait_for_finished(0, WAIT).await.expect("finished");
    assert_eq!(finished.version, Version::HTTP_2);
    assert_eq!(finished.sent_body, answer.body);
}

#[tokio::test]
async fn wait_for_requests_returns_what_it_has_at_the_deadline() {
    let upstream = MockUpstream::start().await;
    post_messages(&upstream, "{}").await;
    let requests = upstream
        .wait_for_requests(2, Duration::from_millis(50))
        .await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        upstream
            .wait_for_outcome(5, Duration::from_millis(10))
            .await,
        None
    );
}

#[tokio::test]
async fn shutdown_aborts_in_flight_replies_and_closes_the_port() {
    let upstream = MockUpstream::start().await;
    let observer = upstream.clone();
    upstream.set_default(Reply::hang());
    let _stream = raw_stream_request(&upstream).await;
    upstream.wait_for_requests(1, WAIT).await;
    let addr = upstream.addr();

    upstream.shutdown().await;
    assert_eq!(observer.outcomes(), [ReplyOutcome::Aborted]);
    assert!(TcpStream::connect(addr).await.is_err(), "port still open");
}

#[tokio::test]
async fn unrecorded_mode_answers_but_keeps_nothing() {
    let upstream = MockUpstream::start_with(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .expect("start");
    let answer = post_messages(&upstream, r#"{"stream":true}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("request-id"), Some("req_mock_1"));
    assert!(upstream.requests().is_empty());
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_http2_request_to_a_hang_is_recorded_as_client_gone() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::hang());
    let client: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let pending = tokio::spawn({
        let url = format!("{}/v1/messages", upstream.url());
        let client = client.clone();
        async move { client.request(request(Method::POST, url, "{}")).await }
    });
    assert_eq!(upstream.wait_for_requests(1, WAIT).await.len(), 1);
    pending.abort();
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
}

#[tokio::test]
async fn health_probes_never_take_scripted_replies() {
    let upstream = MockUpstream::start().await;
    let client = client();
    let base = upstream.url();
    upstream.enqueue(Reply::overloaded());
    upstream.set_default(Reply::overloaded());
    let probe = send(&client, Method::GET, format!("{base}/v1/models"), "").await;
    assert_eq!(probe.status, StatusCode::OK);
    upstream.set_probe_reply(Reply::error(503, "api_error", "probe says no"));
    let probe = send(&client, Method::GET, format!("{base}/api/v1/models"), "").await;
    assert_eq!(probe.status.as_u16(), 503);
    assert_eq!(
        upstream.queued_replies(),
        1,
        "the scripted reply is still waiting"
    );
    assert_eq!(upstream.wait_for_probes(2, WAIT).await.len(), 2);
    assert!(upstream.requests().is_empty());
}
