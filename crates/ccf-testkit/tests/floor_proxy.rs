//! `ccf-floor-proxy` (the benchmarks' floor) in front of `MockUpstream`: what it measures is
//! only worth comparing if it forwards as the forwarder would, so requests and answers must pass
//! unchanged, streams included, over one reused upstream connection per client connection.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_testkit::{MockUpstream, Reply};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// The floor proxy as a child process, killed when dropped.
struct Floor {
    child: Child,
    addr: SocketAddr,
}

impl Floor {
    async fn start(upstream: SocketAddr) -> Floor {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_ccf-floor-proxy"))
            .args(["--port", &port.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(["--threads", "2"])
            .stdout(Stdio::null())
            .spawn()
            .expect("ccf-floor-proxy starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(started.elapsed() < WAIT, "ccf-floor-proxy never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Floor { child, addr }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive client connection to `addr`.
async fn connect(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn post(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    body: &'static str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    sender.ready().await.expect("connection ready");
    let request = Request::post("/v1/messages?beta=true")
        .header("host", "floor.test")
        .header("content-type", "application/json")
        .header("x-api-key", "test-key")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = sender.send_request(request).await.expect("answer head");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole answer").to_bytes();
    (parts.status, parts.headers, body)
}

const JSON_REQUEST: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const SSE_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn requests_and_answers_pass_unchanged_over_one_upstream_connection() {
    let upstream = MockUpstream::start().await;
    let floor = Floor::start(upstream.addr()).await;
    let mut client = connect(floor.addr).await;

    let (json_status, json_headers, json_body) = post(&mut client, JSON_REQUEST).await;
    let (sse_status, sse_headers, sse_body) = post(&mut client, SSE_REQUEST).await;
    let (again_status, _, again_body) = post(&mut client, JSON_REQUEST).await;

    assert_eq!(json_status, StatusCode::OK);
    assert_eq!(sse_status, StatusCode::OK);
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(
        json_headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        sse_headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut recorded = Vec::new();
    for index in 0..3 {
        let request = upstream.wait_for_finished(index, WAIT).await;
        recorded.push(request.expect("every request reached the upstream and was answered"));
    }
    assert_eq!(upstream.request_count(), 3);
    for (request, (sent, answer)) in recorded.iter().zip([
        (JSON_REQUEST, &json_body),
        (SSE_REQUEST, &sse_body),
        (JSON_REQUEST, &again_body),
    ]) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/messages");
        assert_eq!(request.query.as_deref(), Some("beta=true"));
        assert_eq!(request.header("host"), Some("floor.test"));
        assert_eq!(request.header("x-api-key"), Some("test-key"));
        assert_eq!(request.body, Bytes::from_static(sent.as_bytes()));
        assert_eq!(
            &request.sent_body, answer,
            "the answer reached the client byte for byte"
        );
    }
    assert!(
        std::str::from_utf8(&sse_body)
            .expect("utf-8 stream")
            .contains("event: message_stop"),
        "the stream ran to its end"
    );
    assert!(
        recorded
            .iter()
            .all(|request| request.connection == recorded[0].connection),
        "one upstream connection carried the client connection's requests: {:?}",
        recorded.iter().map(|r| r.connection).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_bad_gateway() {
    // A port nobody listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let floor = Floor::start(closed).await;
    let mut client = connect(floor.addr).await;
    let (status, _, body) = post(&mut client, JSON_REQUEST).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with(b"ccf-floor-proxy: "), "{body:?}");
}

#[tokio::test]
async fn a_failed_upstream_answer_is_passed_on() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::overloaded());
    let floor = Floor::start(upstream.addr()).await;
    let mut client = connect(floor.addr).await;
    let (status, _, body) = post(&mut client, JSON_REQUEST).await;
    assert_eq!(status.as_u16(), 529);
    assert!(
        std::str::from_utf8(&body)
            .expect("utf-8")
            .contains("overloaded_error"),
        "{body:?}"
    );
}
