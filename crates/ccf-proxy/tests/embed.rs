//! Exercises `examples/embed.rs`: the engine mounted inside another hyper application.

#[allow(dead_code)]
#[path = "../examples/embed.rs"]
mod embed;

use std::time::Duration;

use bytes::Bytes;
use ccf_testkit::MockUpstream;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

#[tokio::test]
async fn the_engine_serves_requests_mounted_under_a_host_application_route() {
    let upstream = MockUpstream::start().await;
    let forwarder = embed::forwarder_for(&upstream.url()).expect("forwarder builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(embed::serve_host_app(listener, forwarder));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let hello = client
        .get(format!("http://{address}/hello").parse().expect("uri"))
        .await
        .expect("host route answers");
    let hello = hello.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(hello, "hello from the host app");

    let request = http::Request::post(format!("http://{address}/anthropic/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("x-api-key", "client-key")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .expect("request");
    let response = client.request(request).await.expect("engine answers");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-ccf-request-id"));
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let recorded = upstream
        .wait_for_finished(0, Duration::from_secs(10))
        .await
        .expect("upstream saw the request");
    assert_eq!(body, recorded.sent_body);
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.query.as_deref(), Some("beta=true"));
    assert_eq!(
        recorded.header("authorization"),
        Some("Bearer example-token")
    );
    assert_eq!(recorded.header("x-api-key"), None);
}
