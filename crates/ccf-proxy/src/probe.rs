//! The health prober: `GET endpoint.url + path` with the endpoint's credentials (Bearer and/or
//! `x-api-key`), its custom headers and `anthropic-version`, on the shared pooled client. The Go
//! original sent only the Bearer token, so `x-api-key` providers looked down.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_config::Endpoint;
use ccf_health::{ProbeOutcome, Prober};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};

use crate::client::UpstreamClient;
use crate::headers::rewrite_request_headers;

/// The API version sent with probes when the endpoint does not configure one.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Probes endpoints with the forwarder's own client.
#[derive(Clone)]
pub struct UpstreamProber {
    client: UpstreamClient,
}

impl UpstreamProber {
    /// A prober sending on `client`.
    pub fn new(client: UpstreamClient) -> Self {
        UpstreamProber { client }
    }

    async fn run(&self, endpoint: &Endpoint, path: &str, timeout: Duration) -> ProbeOutcome {
        let started = Instant::now();
        let failed = |error: String| ProbeOutcome::Failed {
            error,
            latency: started.elapsed(),
        };
        let mut base_headers = HeaderMap::new();
        base_headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        let headers = match rewrite_request_headers(&base_headers, endpoint) {
            Ok(headers) => headers,
            Err(error) => return failed(error.to_string()),
        };
        let url = format!("{}{}", endpoint.request_base(), path);
        let uri = match url.parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(error) => return failed(format!("invalid probe url {url}: {error}")),
        };
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self.client.request(&endpoint.name, request).await?;
            let status = response.status().as_u16();
            let latency = started.elapsed();
            // Drain the (small) body so the pooled connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, crate::client::UpstreamRequestError>((status, latency))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((status, latency))) => ProbeOutcome::Status { status, latency },
            Ok(Err(error)) => failed(error.to_string()),
            Err(_) => failed(format!("no answer within {timeout:?}")),
        }
    }
}

impl Prober for UpstreamProber {
    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        path: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
        Box::pin(self.run(endpoint, path, timeout))
    }
}
