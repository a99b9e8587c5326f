//! The realistic upstream seen from ordinary clients: what it answers, when, and over which
//! protocol. Every test starts its own upstream on `127.0.0.1:0`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_testkit::{
    RateLimitFamily, RealisticConfig, RealisticUpstream, Storm, StormAnswer, StreamFault,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Catches hangs only.
const WAIT: Duration = Duration::from_secs(30);

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("whole body")).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

async fn send(upstream: &RealisticUpstream, method: Method, path: &str, body: &str) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", upstream.url()))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .map(|collected| collected.to_bytes())
        .map_err(|error| format!("{error:?}"));
    Answer {
        status,
        headers,
        body,
    }
}

fn message_body(stream: bool) -> String {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "tag-42 hello"}],
    })
    .to_string()
}

async fn message(upstream: &RealisticUpstream, stream: bool) -> Answer {
    send(
        upstream,
        Method::POST,
        "/v1/messages",
        &message_body(stream),
    )
    .await
}

async fn start(config: RealisticConfig) -> RealisticUpstream {
    RealisticUpstream::start_with(config).await.unwrap()
}

#[tokio::test]
async fn a_non_streaming_answer_arrives_only_when_generation_ends() {
    let upstream = start(RealisticConfig {
        per_token: Duration::from_millis(20),
        output_tokens: 10,
        ..RealisticConfig::default()
    })
    .await;
    let sent = Instant::now();
    let answer = message(&upstream, false).await;
    let waited = sent.elapsed();
    assert_eq!(answer.status, 200);
    // A lower bound only: the headers cannot come before 10 tokens × 20 ms were generated.
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    let json: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
    assert_eq!(json["type"], "message");
    assert_eq!(json["model"], "claude-sonnet-4-5");
    assert_eq!(json["usage"]["output_tokens"], 10);
    assert_eq!(json["stop_reason"], "end_turn");
    assert!(answer.header("request-id").is_some());
}

#[tokio::test]
async fn a_stream_sends_every_event_in_order_with_paced_deltas() {
    let upstream = start(RealisticConfig {
        output_tokens: 12,
        tokens_per_delta: 4,
        ..RealisticConfig::default()
    })
    .await;
    let answer = message(&upstream, true).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let names: Vec<String> = answer
        .text()
        .lines()
        .filter_map(|line| line.strip_prefix("event: ").map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let records = upstream.message_requests();
    assert_eq!(records.len(), 1);
    assert!(records[0].stream);
    assert_eq!(records[0].tag, "tag-42 hello");
}

#[tokio::test]
async fn a_storm_answers_529_while_probes_pass_and_then_recovers() {
    let upstream = start(RealisticConfig::default()).await;
    upstream.storm(Storm::overloaded_next(3));
    for _ in 0..3 {
        let answer = message(&upstream, true).await;
        assert_eq!(answer.status, 529);
        assert_eq!(answer.header("x-should-retry"), Some("true"));
        let json: serde_json::Value = serde_json::from_str(&answer.text()).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "overloaded_error");
        let probe = send(&upstream, Method::GET, "/v1/models", "").await;
        assert_eq!(probe.status, 200, "health endpoints lie during overload");
    }
    assert_eq!(message(&upstream, false).await.status, 200);

    let records = upstream.records();
    let summary: Vec<(bool, bool, u16)> = records
        .iter()
        .map(|record| (record.probe, record.storm, record.status))
        .collect();
    assert_eq!(
        summary,
        [
            (false, true, 529),
            (true, false, 200),
            (false, true, 529),
            (true, false, 200),
            (false, true, 529),
            (true, false, 200),
            (false, false, 200),
        ]
    );
    assert_eq!(records[0].header("x-api-key"), Some("sk-test"));
}

#[tokio::test]
async fn a_timed_storm_ends_by_itself() {
    let upstream = start(RealisticConfig::default()).await;
    upstream.storm(
        Storm::overloaded_for(Duration::from_millis(300))
            .answering(StormAnswer::overloaded().with_retry_after(2)),
    );
    let first = message(&upstream, false).await;
    assert_eq!(first.status, 529);
    assert_eq!(first.header("retry-after"), Some("2"));
    // Poll (bounded) until the storm is over: it ends on its own clock, nobody calms it.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = message(&upstream, false).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 529);
        assert!(Instant::now() < deadline, "the storm never ended");
    }
}

#[tokio::test]
async fn streams_can_be_cut_or_end_without_message_stop() {
    let upstream = start(RealisticConfig::default()).await;
    upstream.enqueue_stream_fault(StreamFault::CutAfterEvents(3));
    upstream.enqueue_stream_fault(StreamFault::NoMessageStop);

    let cut = message(&upstream, true).await;
    assert_eq!(cut.status, 200);
    assert!(cut.body.is_err(), "the cut stream must not end cleanly");

    let unfinished = message(&upstream, true).await;
    let text = unfinished.text();
    assert!(text.contains("event: message_delta"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");

    let whole = message(&upstream, true).await;
    assert!(whole.text().contains("event: message_stop"));
    let faults: Vec<_> = upstream
        .message_requests()
        .iter()
        .map(|record| record.fault)
        .collect();
    assert_eq!(
        faults,
        [
            Some(StreamFault::CutAfterEvents(3)),
            Some(StreamFault::NoMessageStop),
            None
        ]
    );
}

#[tokio::test]
async fn message_answers_carry_rate_limit_headers_of_the_configured_family() {
    let upstream = start(RealisticConfig::default()).await;
    let answer = message(&upstream, false).await;
    assert_eq!(
        answer.header("anthropic-ratelimit-requests-limit"),
        Some("4000")
    );
    let reset = answer.header("anthropic-ratelimit-tokens-reset").unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T',
        "{reset}"
    );
    assert!(answer
        .header("anthropic-ratelimit-unified-status")
        .is_none());

    let subscription = start(RealisticConfig {
        rate_limits: RateLimitFamily::Unified,
        ..RealisticConfig::default()
    })
    .await;
    let allowed = message(&subscription, false).await;
    assert_eq!(
        allowed.header("anthropic-ratelimit-unified-status"),
        Some("allowed")
    );
    assert_eq!(
        allowed.header("anthropic-ratelimit-unified-representative-claim"),
        Some("five_hour")
    );
    assert!(allowed
        .header("anthropic-ratelimit-unified-5h-utilization")
        .is_some());
    assert!(allowed
        .header("anthropic-ratelimit-requests-limit")
        .is_none());

    subscription.storm(Storm::overloaded_next(1).answering(StormAnswer::rate_limited(30)));
    let rejected = message(&subscription, false).await;
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("retry-after"), Some("30"));
    assert_eq!(
        rejected.header("anthropic-ratelimit-unified-status"),
        Some("rejected")
    );
}

#[tokio::test]
async fn a_relay_answers_head_root_with_404_and_checks_the_key() {
    let relay = start(RealisticConfig {
        head_root_not_found: true,
        required_key: Some("sk-right".into()),
        ..RealisticConfig::default()
    })
    .await;
    let head = send(&relay, Method::HEAD, "/", "").await;
    assert_eq!(head.status, 404);
    // `send` carries `x-api-key: sk-test`, which this relay refuses.
    let refused = message(&relay, false).await;
    assert_eq!(refused.status, 401);
    assert!(refused.text().contains("authentication_error"));

    let api = start(RealisticConfig::default()).await;
    assert_eq!(send(&api, Method::HEAD, "/", "").await.status, 200);
}

fn client_tls(upstream: &RealisticUpstream, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(upstream.ca_certificate().expect("tls").clone())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Reads one HTTP/2 frame: (type, flags, payload).
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> (u8, u8, Vec<u8>) {
    let mut header = [0u8; 9];
    reader.read_exact(&mut header).await.unwrap();
    let length =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await.unwrap();
    (header[3], header[4], payload)
}

#[tokio::test]
async fn an_h2_client_over_tls_sees_the_small_stream_limit_in_settings() {
    let upstream = start(RealisticConfig {
        tls: true,
        max_concurrent_streams: 3,
        ..RealisticConfig::default()
    })
    .await;
    let tcp = TcpStream::connect(upstream.addr()).await.unwrap();
    let mut tls = client_tls(&upstream, &[b"h2", b"http/1.1"])
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame on stream 0.
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (kind, flags, payload) = tokio::time::timeout(WAIT, read_frame(&mut tls))
        .await
        .unwrap();
    assert_eq!(
        (kind, flags & 1),
        (4, 0),
        "the server's first frame is SETTINGS"
    );
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|setting| {
            (
                u16::from_be_bytes([setting[0], setting[1]]),
                u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]),
            )
        })
        .collect();
    // 0x3 = SETTINGS_MAX_CONCURRENT_STREAMS.
    assert!(settings.contains(&(3, 3)), "{settings:?}");
}

#[tokio::test]
async fn an_h2_client_over_tls_gets_answers_on_one_connection() {
    let upstream = start(RealisticConfig {
        tls: true,
        max_concurrent_streams: 2,
        ..RealisticConfig::default()
    })
    .await;
    let tcp = TcpStream::connect(upstream.addr()).await.unwrap();
    let tls = client_tls(&upstream, &[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // One request first: until the server's SETTINGS arrive the client assumes no stream
    // limit, and the server refuses streams past it (REFUSED_STREAM), as real h2 servers do.
    let first = Request::post(format!("{}/v1/messages", upstream.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(message_body(false))))
        .unwrap();
    let first = tokio::time::timeout(WAIT, sender.send_request(first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), 200);
    // Past the limit of 2, the client queues the other streams on the same connection.
    let mut answers = Vec::new();
    for _ in 0..4 {
        let request = Request::post(format!("{}/v1/messages", upstream.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(message_body(true))))
            .unwrap();
        sender.ready().await.unwrap();
        answers.push(sender.send_request(request));
    }
    for answer in answers {
        let response = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("message_stop"));
    }
    let records = upstream.message_requests();
    assert_eq!(records.len(), 5);
    assert!(records
        .iter()
        .all(|record| record.version == http::Version::HTTP_2 && record.connection == 1));
    assert_eq!(upstream.connection_count(), 1);
}
