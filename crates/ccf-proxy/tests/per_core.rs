//! Thread-per-core serving (`serve_per_core`) and serving on a caller's multi-threaded runtime
//! (`serve`): real sockets, the test kit's mock upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ccf_config::Config;
use ccf_proxy::{bind_reuseport_listeners, serve, serve_per_core, Forwarder, ServeOptions};
use ccf_testkit::{MockUpstream, Reply};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const WAIT: Duration = Duration::from_secs(20);
const BODY: &str =
    r#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

fn forwarder(upstream: &MockUpstream, threads: u32) -> Forwarder {
    let config = Config::from_yaml_str(&format!(
        "server:\n  threads: {threads}\nendpoints:\n  - name: mock\n    url: {}\n    token: t\n",
        upstream.url()
    ))
    .expect("valid configuration");
    Forwarder::build(Arc::new(config)).expect("forwarder builds")
}

fn options() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
    }
}

/// Sends one `POST /v1/messages` on a new connection (no pooling) and returns status and body.
async fn message_on_new_connection(address: std::net::SocketAddr) -> (u16, Bytes) {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://{address}/v1/messages"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = response.status().as_u16();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, body)
}

#[test]
fn reuseport_listeners_share_the_port_the_first_one_picked() {
    let listeners =
        bind_reuseport_listeners("127.0.0.1:0".parse().expect("address"), 3, 128).expect("bind");
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().expect("address").port())
        .collect();
    assert_eq!(ports.len(), 3);
    assert_ne!(ports[0], 0);
    assert_eq!(ports, vec![ports[0]; 3]);
}

#[tokio::test]
async fn every_core_answers_on_one_port_with_its_own_upstream_connection_and_drains_on_shutdown() {
    const CONNECTIONS: usize = 40;
    let upstream = MockUpstream::start().await;
    let listeners =
        bind_reuseport_listeners("127.0.0.1:0".parse().expect("address"), 2, 128).expect("bind");
    let address = listeners[0].local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve_per_core(
        listeners,
        forwarder(&upstream, 2),
        options(),
        async move {
            let _ = stopped.await;
        },
    ));
    // One request at a time, each on a new client connection: the kernel spreads the
    // connections over both listeners by a hash of their addresses (all 40 on one listener has
    // a chance of 2^-39), and each core reuses its own idle upstream connection.
    for _ in 0..CONNECTIONS {
        let (status, _) = message_on_new_connection(address).await;
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.request_count(), CONNECTIONS as u64);
    assert_eq!(upstream.connection_count(), 2);

    // A request in flight when shutdown starts is answered in full.
    upstream.enqueue(Reply::json().header_delay(Duration::from_millis(300)));
    let in_flight = tokio::spawn(message_on_new_connection(address));
    upstream.wait_for_requests(CONNECTIONS + 1, WAIT).await;
    let _ = stop.send(());
    let (status, body) = in_flight.await.expect("request task");
    assert_eq!(status, 200);
    let recorded = upstream
        .wait_for_finished(CONNECTIONS, WAIT)
        .await
        .expect("the upstream finished the last answer");
    assert_eq!(body, recorded.sent_body);
    let report = tokio::time::timeout(WAIT, serving)
        .await
        .expect("every core stops in time")
        .expect("serving task")
        .expect("cores stop cleanly");
    assert_eq!(report.abandoned_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_still_serves_on_a_callers_multi_threaded_runtime() {
    const REQUESTS: usize = 16;
    let upstream = MockUpstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve(
        listener,
        forwarder(&upstream, 0),
        options(),
        async move {
            let _ = stopped.await;
        },
    ));
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| tokio::spawn(message_on_new_connection(address)))
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("request task").0, 200);
    }
    assert_eq!(upstream.request_count(), REQUESTS as u64);
    let _ = stop.send(());
    let report = tokio::time::timeout(WAIT, serving)
        .await
        .expect("stops in time")
        .expect("serving task");
    assert_eq!(report.abandoned_connections, 0);
}
