//! Embedding the forwarding engine in another Rust service.
//!
//! The engine is a hyper `Service`: this example mounts it under `/anthropic` of a host
//! application that also serves its own `/hello` route, on the host's own listener.
//!
//! Run: `cargo run -p ccf-proxy --example embed -- <upstream-url>` and send requests to
//! `http://127.0.0.1:<printed port>/anthropic/v1/messages`.

use std::sync::Arc;

use bytes::Bytes;
use ccf_config::Config;
use ccf_proxy::{body::full_body, Forwarder};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Builds the forwarder from a YAML config that sends everything to `upstream`.
pub fn forwarder_for(upstream: &str) -> Result<Forwarder, Box<dyn std::error::Error>> {
    let config = Config::from_yaml_str(&format!(
        "endpoints:\n  - name: embedded\n    url: {upstream}\n    token: example-token\n"
    ))?;
    Ok(Forwarder::build(Arc::new(config))?)
}

/// The host application's router: its own route plus the engine under `/anthropic`.
pub async fn host_app(
    forwarder: Forwarder,
    request: Request<Incoming>,
) -> Result<Response<ccf_proxy::ProxyBody>, std::convert::Infallible> {
    let path = request.uri().path().to_string();
    if path == "/hello" {
        return Ok(Response::new(full_body(Bytes::from_static(
            b"hello from the host app",
        ))));
    }
    if let Some(rest) = path.strip_prefix("/anthropic") {
        let (mut parts, body) = request.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.uri = format!("{rest}{query}").parse::<Uri>().unwrap_or_default();
        return Ok(forwarder.handle(Request::from_parts(parts, body)).await);
    }
    let mut not_found = Response::new(full_body(Bytes::from_static(b"not found")));
    *not_found.status_mut() = http::StatusCode::NOT_FOUND;
    Ok(not_found)
}

/// Serves the host application on `listener` forever.
pub async fn serve_host_app(listener: TcpListener, forwarder: Forwarder) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| host_app(forwarder.clone(), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "https://api.anthropic.com".to_string());
    let forwarder = forwarder_for(&upstream)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("host app on http://{}", listener.local_addr()?);
    serve_host_app(listener, forwarder).await;
    Ok(())
}
