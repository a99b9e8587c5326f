//! Connections (issue #17, points 2, 6 and part of 10): reachability checks answered by the
//! forwarder itself, an HTTP/2 upstream with a small stream limit, relays with a private CA
//! (`tls.ca_file`, `endpoints[].ca_file`), URL user info sent as Basic auth, and the request-body
//! read timeout (`server.body_read_timeout`).

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use ccf_testkit::{MockUpstream, RealisticConfig, RealisticUpstream};
use http_body_util::Full;
use hyper::{Method, Request};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config, endpoint_yaml, requests_in_flight, Forwarder, WAIT};

const AUTH: &str = "auth:\n  enabled: true\n  token: client-token-0001\n";
const ONE_ATTEMPT: &str = "retry:\n  max_attempts: 1\nhealth:\n  check_interval: 1h\n";

fn message(stream: bool, max_tokens: u32) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]
    })
}

/// The test CA of a TLS upstream in a PEM file, for a `ca_file` key.
fn ca_file(upstream: &RealisticUpstream) -> tempfile::NamedTempFile {
    let pem = upstream
        .ca_certificate_pem()
        .expect("the upstream serves TLS");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(pem.as_bytes()).expect("write the CA");
    file
}

async fn tls_upstream(config: RealisticConfig) -> RealisticUpstream {
    RealisticUpstream::start_with(RealisticConfig {
        tls: true,
        ..config
    })
    .await
    .expect("the TLS upstream starts")
}

#[tokio::test]
async fn reachability_checks_are_answered_locally_and_never_reach_an_upstream() {
    let upstream = MockUpstream::start().await;
    for (settings, credentials) in [
        (AUTH, vec![("authorization", "Bearer client-token-0001")]),
        ("", vec![]),
    ] {
        let forwarder = Forwarder::in_front_of(
            &upstream,
            &format!("{settings}{ONE_ATTEMPT}"),
            "token: upstream-secret",
        )
        .await;
        for path in ["/", "/api/hello"] {
            let answer = forwarder.send(Method::HEAD, path, &[], Bytes::new()).await;
            assert_eq!(answer.status, 200, "HEAD {path} with {settings:?}");
            assert!(answer.bytes().is_empty(), "HEAD {path} has no body");
        }
        // A real request afterwards: once the upstream has it, anything sent before it would
        // have arrived too.
        let answer = forwarder.messages(message(false, 16), &credentials).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        forwarder.stop().await;
    }
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|request| format!("{} {}", request.method, request.path))
        .collect();
    assert_eq!(
        seen,
        ["POST /v1/messages", "POST /v1/messages"],
        "the upstream saw only the two real requests"
    );
}

#[tokio::test]
async fn an_h2_upstream_at_its_stream_limit_gets_another_connection_instead_of_a_queue() {
    const CONCURRENT: usize = 5;
    // Two streams per connection; every stream generates for minutes (until its client leaves).
    let upstream = tls_upstream(RealisticConfig {
        max_concurrent_streams: 2,
        per_token: Duration::from_millis(500),
        output_tokens: 100_000,
        tokens_per_delta: 1,
        ..RealisticConfig::default()
    })
    .await;
    let ca = ca_file(&upstream);
    // The header timeout is far beyond the test's own wait: a request queued behind the two
    // open streams would get its headers only when it fires.
    let forwarder = Forwarder::start(config(
        &format!(
            "{ONE_ATTEMPT}streaming:\n  response_header_timeout: 10m\nupstream:\n  max_streams_per_connection: 2\n"
        ),
        &[endpoint_yaml(
            "h2",
            &upstream.url(),
            &format!("ca_file: {}\ntimeout: 10m", ca.path().display()),
        )],
    ))
    .await;
    // Two streams first, so the connection knows the upstream's limit; then three more.
    let mut open = Vec::new();
    for batch in [2, CONCURRENT - 2] {
        let mut streams = Vec::new();
        for _ in 0..batch {
            let request = Request::post(format!("{}/v1/messages", forwarder.base))
                .header("content-type", "application/json")
                .header("anthropic-version", "2023-06-01")
                .body(Full::new(Bytes::from(message(true, 100_000).to_string())))
                .expect("request");
            streams.push(tokio::spawn(forwarder.client.request(request)));
        }
        for stream in streams {
            let response = tokio::time::timeout(WAIT, stream)
                .await
                .expect("every stream starts without waiting for a free stream slot")
                .expect("task")
                .expect("forwarder answers");
            assert_eq!(response.status(), 200, "{response:?}");
            open.push(response);
        }
    }
    let records = upstream.message_requests();
    assert_eq!(records.len(), CONCURRENT);
    assert!(
        records
            .iter()
            .all(|record| record.version == http::Version::HTTP_2),
        "the upstream was reached over HTTP/2: {:?}",
        records.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    let connections: std::collections::BTreeSet<u64> =
        records.iter().map(|record| record.connection).collect();
    assert!(
        connections.len() >= CONCURRENT.div_ceil(2),
        "{CONCURRENT} streams at 2 per connection need at least 3 connections, used {connections:?}"
    );
    drop(open);
    forwarder.stop().await;
}

#[tokio::test]
async fn a_relay_with_a_private_ca_is_trusted_through_ca_file_and_only_then() {
    let upstream = tls_upstream(RealisticConfig::default()).await;
    let ca = ca_file(&upstream);
    let ca_path = ca.path().display().to_string();

    let untrusted = Forwarder::start(config(
        ONE_ATTEMPT,
        &[endpoint_yaml("relay", &upstream.url(), "")],
    ))
    .await;
    let answer = untrusted.messages(message(false, 16), &[]).await;
    assert!(
        answer.status.is_server_error(),
        "without the CA the certificate is refused: {}",
        answer.status
    );
    assert!(upstream.message_requests().is_empty());
    // A hot reload that adds the CA rebuilds the upstream client.
    let report = untrusted
        .engine
        .reload(std::sync::Arc::new(config(
            &format!("{ONE_ATTEMPT}tls:\n  ca_file: {ca_path}\n"),
            &[endpoint_yaml("relay", &upstream.url(), "")],
        )))
        .expect("the reload is applied");
    assert!(
        report
            .applied
            .iter()
            .any(|section| section == "tls changed"),
        "{report:?}"
    );
    let answer = untrusted.messages(message(false, 16), &[]).await;
    assert_eq!(answer.status, 200, "after the reload: {:?}", answer.body);
    untrusted.stop().await;

    for (settings, endpoint_extra) in [
        (String::new(), format!("ca_file: {ca_path}")),
        (format!("tls:\n  ca_file: {ca_path}\n"), String::new()),
    ] {
        let trusted = Forwarder::start(config(
            &format!("{ONE_ATTEMPT}{settings}"),
            &[endpoint_yaml("relay", &upstream.url(), &endpoint_extra)],
        ))
        .await;
        let answer = trusted.messages(message(false, 16), &[]).await;
        assert_eq!(
            answer.status, 200,
            "trusted via {settings:?}{endpoint_extra:?}: {:?}",
            answer.body
        );
        trusted.stop().await;
    }
    assert_eq!(upstream.message_requests().len(), 3);
}

#[test]
fn an_unreadable_ca_file_is_refused_naming_the_key_and_the_file() {
    let yaml = "tls:\n  ca_file: /nonexistent/relay-ca.pem\nendpoints:\n  - name: a\n    url: https://relay.example\n    ca_file: /nonexistent/own-ca.pem\n";
    let error = ccf_config::Config::from_yaml_str(yaml)
        .expect_err("missing CA files are refused")
        .to_string();
    assert!(error.contains("tls.ca_file"), "{error}");
    assert!(error.contains("/nonexistent/relay-ca.pem"), "{error}");
    assert!(error.contains("endpoints[0].ca_file"), "{error}");
    assert!(error.contains("/nonexistent/own-ca.pem"), "{error}");
}

#[tokio::test]
async fn url_user_info_arrives_as_basic_auth_unless_a_token_is_configured() {
    let upstream = MockUpstream::start().await;
    let url = upstream
        .url()
        .replacen("http://", "http://relay-user:pa%20ss@", 1);
    for (extra, expected) in [
        ("", "Basic cmVsYXktdXNlcjpwYSBzcw=="),
        ("token: relay-token", "Bearer relay-token"),
    ] {
        let forwarder =
            Forwarder::start(config(ONE_ATTEMPT, &[endpoint_yaml("relay", &url, extra)])).await;
        let answer = forwarder.messages(message(false, 16), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        forwarder.stop().await;
        let last = upstream.requests().pop().expect("the upstream got it");
        assert_eq!(last.header("authorization"), Some(expected), "{extra:?}");
    }
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_and_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &format!("server:\n  body_read_timeout: 300ms\n  max_in_flight: 1\n{ONE_ATTEMPT}"),
        "",
    )
    .await;
    let addr = forwarder.base.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    // The client now goes silent with its connection open.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 1024];
        loop {
            let read = stalled.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    assert!(read.is_ok(), "the stalled request is answered in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"type\":\"error\""), "{text}");

    let deadline = tokio::time::Instant::now() + WAIT;
    while requests_in_flight(&forwarder.engine).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "in-flight gauge never returned to 0"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The only in-flight slot (`max_in_flight: 1`) is free again.
    let answer = forwarder.messages(message(false, 16), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(upstream.requests().len() == 1);
    drop(stalled);
    forwarder.stop().await;
}
