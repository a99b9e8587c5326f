//! Security end to end: inbound auth on every path with named keys recorded per request, the
//! refusal to start an open door, and the listener limits (header size and count, header read
//! time, connections, requests in flight), all on loopback against the mock upstream.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use ccf_app::{App, AppError};
use ccf_config::Config;
use ccf_store::{RequestFilter, RequestQuery};
use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use serde_json::json;
use support::{config, endpoint_yaml, eventually, Forwarder, Outcomes, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH: &str = "auth:\n  enabled: true\n  token: legacy-token-0001\n  tokens:\n    - name: alice\n      token: alice-token-0001\n    - name: bob\n      token: bob-token-0001\n";

fn message() -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

/// Requests the upstream received, health probes excluded.
fn upstream_requests(upstream: &MockUpstream) -> usize {
    upstream.requests().len()
}

#[tokio::test]
async fn every_proxied_and_monitoring_path_needs_a_token_except_health() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &format!("{AUTH}token_counting:\n  enabled: true\n"),
        "",
    )
    .await;
    let json_body = message().to_string();
    let cases: &[(Method, &str)] = &[
        (Method::POST, "/v1/messages"),
        (Method::POST, "/v1/messages/count_tokens"),
        (Method::GET, "/v1/models"),
        (Method::POST, "/v1/complete"),
        (Method::GET, "/some/unknown/path"),
        (Method::GET, "/health/detailed"),
        (Method::GET, "/health/usage-tracker"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in cases {
        for headers in [
            vec![],
            vec![("x-api-key", "wrong-token")],
            vec![("authorization", "Bearer alice-token-0002")],
            vec![("authorization", "Basic YWxpY2U6eA==")],
        ] {
            let answer = forwarder
                .send(
                    method.clone(),
                    path,
                    &[&[("content-type", "application/json")], headers.as_slice()].concat(),
                    json_body.clone(),
                )
                .await;
            answer.assert_anthropic_error(401, "authentication_error");
        }
    }
    assert_eq!(
        upstream_requests(&upstream),
        0,
        "nothing unauthenticated reached the upstream"
    );

    // `/health` and Claude Code's credential-less reachability probe stay open.
    let health = forwarder.send(Method::GET, "/health", &[], "").await;
    assert_eq!(health.status, 200);
    let hello = forwarder.send(Method::HEAD, "/api/hello", &[], "").await;
    assert_ne!(hello.status, 401);

    // Any configured key opens every path.
    for headers in [
        [("x-api-key", "alice-token-0001")],
        [("authorization", "Bearer bob-token-0001")],
        [("x-api-key", "legacy-token-0001")],
    ] {
        assert_eq!(forwarder.messages(message(), &headers).await.status, 200);
        for path in ["/metrics", "/health/detailed"] {
            let answer = forwarder.send(Method::GET, path, &headers, "").await;
            assert_eq!(answer.status, 200, "{path}");
        }
        let counted = forwarder
            .send(
                Method::POST,
                "/v1/messages/count_tokens",
                &[headers[0], ("content-type", "application/json")],
                json_body.clone(),
            )
            .await;
        assert_eq!(counted.status, 200);
    }
    forwarder.stop().await;
}

#[tokio::test]
async fn the_matching_key_name_is_recorded_stored_and_queryable() {
    let upstream = MockUpstream::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join("usage.db");
    let yaml = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\nweb:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n\
         usage_tracking:\n  enabled: true\n  flush_interval: 50ms\n  database_path: {}\n{AUTH}endpoints:\n{}",
        path.display(),
        endpoint_yaml("mock", &upstream.url(), "")
    );
    let config = Config::from_yaml_str(&yaml).expect("valid config");
    let outcomes = Arc::new(Outcomes::default());
    let forwarder = Forwarder::start_observed(config, Some(outcomes.clone())).await;
    let mut ids = Vec::new();
    for headers in [
        [("x-api-key", "alice-token-0001")],
        [("authorization", "Bearer alice-token-0001")],
        [("authorization", "Bearer bob-token-0001")],
        [("x-api-key", "legacy-token-0001")],
    ] {
        let answer = forwarder.messages(message(), &headers).await;
        assert_eq!(answer.status, 200);
        ids.push(answer.header("x-ccf-request-id").expect("id").to_string());
    }
    let records = outcomes.wait_for(4).await;
    let mut names: Vec<Option<String>> = records
        .iter()
        .map(|record| record.api_key_name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            Some("alice".to_string()),
            Some("alice".to_string()),
            Some("bob".to_string()),
            Some("default".to_string())
        ]
    );

    let tracking = forwarder.usage.clone().expect("usage tracking on");
    tracking.recorder.flush().await;
    let store = Arc::clone(&tracking.store);
    let row = store
        .get_request(&ids[2])
        .await
        .expect("query")
        .expect("bob's row");
    assert_eq!(row.record.api_key_name.as_deref(), Some("bob"));
    let alice = store
        .list_requests(&RequestQuery {
            filter: RequestFilter {
                api_key: Some("alice".into()),
                ..RequestFilter::default()
            },
            limit: 10,
            offset: 0,
        })
        .await
        .expect("query");
    assert_eq!(alice.total, 2);

    // The admin API filters and breaks down by key.
    let admin = forwarder.admin.clone().expect("admin API on");
    let get = |path: String| {
        let client = forwarder.client.clone();
        async move {
            let response = tokio::time::timeout(WAIT, client.get(path.parse().expect("admin url")))
                .await
                .expect("admin answers in time")
                .expect("admin answers");
            assert_eq!(response.status(), 200, "{path}");
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("admin body")
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("admin JSON")
        }
    };
    let listed = get(format!("{admin}/api/v1/usage/requests?api_key=alice")).await;
    assert_eq!(listed["total"], 2, "{listed}");
    for item in listed["data"].as_array().expect("rows") {
        assert_eq!(item["api_key_name"], "alice", "{item}");
    }
    let stats = get(format!("{admin}/api/v1/usage/stats?period=1d")).await;
    let by_key = stats["data"]["by_api_key"].as_array().expect("by_api_key");
    let alice_bucket = by_key
        .iter()
        .find(|bucket| bucket["key"] == "alice")
        .expect("alice bucket");
    assert_eq!(alice_bucket["request_count"], 2, "{stats}");
    assert!(by_key.iter().any(|bucket| bucket["key"] == "default"));
    forwarder.stop().await;
}

#[tokio::test]
async fn a_public_address_without_auth_is_refused_at_start_unless_allowed() {
    let upstream = MockUpstream::start().await;
    let yaml = |extra: &str| {
        format!(
            "server:\n  host: 0.0.0.0\n  port: 0\n{extra}usage_tracking:\n  enabled: false\nendpoints:\n{}",
            endpoint_yaml("mock", &upstream.url(), "")
        )
    };
    let refused = App::bind(Config::from_yaml_str(&yaml("")).expect("loads"))
        .await
        .expect_err("refused");
    assert!(matches!(refused, AppError::Insecure(_)), "{refused:?}");
    let message = refused.to_string();
    assert!(message.contains("auth.enabled"), "{message}");
    assert!(message.contains("server.allow_insecure"), "{message}");

    let allowed = App::bind(
        Config::from_yaml_str(&yaml("").replace("port: 0\n", "port: 0\n  allow_insecure: true\n"))
            .expect("loads"),
    )
    .await;
    assert!(allowed.is_ok(), "{allowed:?}");
    let with_auth = App::bind(Config::from_yaml_str(&yaml(AUTH)).expect("loads")).await;
    assert!(with_auth.is_ok(), "{with_auth:?}");

    let public_admin = App::bind(
        Config::from_yaml_str(&yaml(
            "web:\n  enabled: true\n  host: 0.0.0.0\n  port: 0\nauth:\n  enabled: true\n  tokens:\n    - name: a\n      token: a-token-0001\n",
        ))
        .expect("loads"),
    )
    .await
    .expect_err("an admin API open to the network is refused");
    assert!(
        public_admin.to_string().contains("web.auth_token"),
        "{public_admin}"
    );
}

/// Writes `head` on a new connection and reads until the server closes it (or `WAIT` passes).
async fn raw_exchange(base: &str, head: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

fn request_head(addr: &str, extra_headers: &str) -> String {
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 2\r\nconnection: close\r\n{extra_headers}\r\n{{}}"
    )
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(
        &upstream,
        "server:\n  max_headers: 20\n  max_header_bytes: 8KB\n",
        "",
    )
    .await;
    let addr = forwarder.base.trim_start_matches("http://").to_string();
    let forty: String = (0..40).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    let answer = raw_exchange(&forwarder.base, &request_head(&addr, &forty)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let huge = format!("x-huge: {}\r\n", "a".repeat(10 * 1024));
    let answer = raw_exchange(&forwarder.base, &request_head(&addr, &huge)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(upstream_requests(&upstream), 0);

    // Within the limits a request goes through.
    let ten: String = (0..10).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    let answer = raw_exchange(&forwarder.base, &request_head(&addr, &ten)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    forwarder.stop().await;
}

/// The default limit, 100 headers, is hyper's own (the server leaves it unset then): a head of
/// exactly 100 headers goes through, 101 get 431.
#[tokio::test]
async fn the_default_header_limit_is_one_hundred() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::in_front_of(&upstream, "", "").await;
    let addr = forwarder.base.trim_start_matches("http://").to_string();
    // `request_head` writes four headers of its own.
    let fillers = |count: usize| -> String {
        (0..count)
            .map(|i| format!("x-filler-{i}: {i}\r\n"))
            .collect()
    };
    let answer = raw_exchange(&forwarder.base, &request_head(&addr, &fillers(96))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw_exchange(&forwarder.base, &request_head(&addr, &fillers(97))).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(upstream_requests(&upstream), 1);
    forwarder.stop().await;
}

#[tokio::test]
async fn slow_and_silent_clients_are_closed_after_the_header_read_timeout() {
    let upstream = MockUpstream::start().await;
    let forwarder =
        Forwarder::in_front_of(&upstream, "server:\n  header_read_timeout: 1s\n", "").await;
    let addr = forwarder.base.trim_start_matches("http://").to_string();

    // Slowloris: a header line every 100 ms, for up to 20 s.
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(format!("POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await
        .expect("write");
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for line in 0..200 {
            if slow_write
                .write_all(format!("x-slow-{line}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        200
    });
    // A client that connects and sends nothing at all.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");

    // Meanwhile a normal request succeeds.
    assert_eq!(forwarder.messages(message(), &[]).await.status, 200);

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow_read.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow connection was closed");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "no request was served on it: {text}"
    );
    trickle.abort();
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut nothing)).await;
    assert!(closed.is_ok(), "the silent connection was closed");
    assert_eq!(
        upstream_requests(&upstream),
        1,
        "only the normal request went upstream"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn over_the_in_flight_limit_the_proxy_answers_529_overloaded_error() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let forwarder = Forwarder::in_front_of(&upstream, "server:\n  max_in_flight: 1\n", "").await;
    let held = {
        let base = forwarder.base.clone();
        let addr = base.trim_start_matches("http://").to_string();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr.as_str()).await.expect("connect");
            let body = message().to_string();
            let head = format!(
                "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.expect("write");
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        })
    };
    upstream.wait_for_requests(1, WAIT).await;

    let rejected = forwarder.messages(message(), &[]).await;
    rejected.assert_anthropic_error(529, "overloaded_error");
    assert!(rejected.header("x-ccf-request-id").is_some());
    assert_eq!(
        upstream_requests(&upstream),
        1,
        "the rejected one never went upstream"
    );
    // Monitoring stays available while saturated.
    assert_eq!(
        forwarder.send(Method::GET, "/health", &[], "").await.status,
        200
    );

    // The held client leaves: its slot frees and requests go through again.
    held.abort();
    let _ = held.await;
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while last != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never freed: {last}"
        );
        last = forwarder.messages(message(), &[]).await.status.as_u16();
        if last != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    forwarder.stop().await;
}

#[tokio::test]
async fn over_the_connection_limit_clients_wait_until_a_connection_closes() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let forwarder = Forwarder::in_front_of(&upstream, "server:\n  max_connections: 1\n", "").await;
    let addr = forwarder.base.trim_start_matches("http://").to_string();
    let body = message().to_string();
    let mut first = TcpStream::connect(&addr).await.expect("connect");
    first
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    upstream.wait_for_requests(1, WAIT).await;

    let second = {
        let client = forwarder.client.clone();
        let uri: hyper::Uri = format!("{}/health", forwarder.base).parse().expect("uri");
        tokio::spawn(async move { client.get(uri).await.map(|response| response.status()) })
    };
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "the second connection waits while the only slot is taken"
    );
    drop(first);
    let status = tokio::time::timeout(WAIT, second)
        .await
        .expect("served once the first connection closed")
        .expect("task")
        .expect("response");
    assert_eq!(status, 200);
    eventually("the upstream saw the first client leave", || {
        upstream
            .outcomes()
            .first()
            .is_some_and(|outcome| outcome.is_finished())
    })
    .await;
    forwarder.stop().await;
}

#[tokio::test]
async fn loopback_with_auth_off_still_starts_with_the_default_limits() {
    let upstream = MockUpstream::start().await;
    let config = config("", &[endpoint_yaml("mock", &upstream.url(), "")]);
    assert_eq!(config.server.max_in_flight, 1024);
    assert_eq!(config.server.max_connections, 4096);
    assert_eq!(config.server.max_headers, 100);
    assert_eq!(config.server.max_header_bytes.bytes(), 64 * 1024);
    let forwarder = Forwarder::start(config).await;
    assert_eq!(forwarder.messages(message(), &[]).await.status, 200);
    forwarder.stop().await;
}
