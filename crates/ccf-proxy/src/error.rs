//! The engine's error taxonomy and the one place that turns errors into client responses.
//!
//! Errors are classified by type, never by matching strings: each [`ProxyError`] knows where it
//! came from ([`ErrorOrigin`]), whether another attempt could succeed, the HTTP status the client
//! gets and the Anthropic error type in the body. Upstream *answers* (any status) are not errors:
//! they pass through verbatim. Only failures where no upstream answer exists become a response
//! built here, always in the Anthropic envelope `{"type":"error","error":{"type":..,"message":..}}`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full_body, ProxyBody};

/// `529`: the status the Anthropic API answers when it is overloaded.
pub const OVERLOADED: StatusCode = match StatusCode::from_u16(529) {
    Ok(status) => status,
    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// The client sent something unacceptable or went away.
    Client,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// The forwarder itself (configuration, a bug).
    Internal,
}

/// A failure the forwarder answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body exceeds `server.max_request_body_size`.
    #[error("request body exceeds the {limit} byte limit")]
    BodyTooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// Reading the request body failed (client reset, truncated body).
    #[error("could not read the request body: {source}")]
    BodyRead {
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Inbound authentication failed.
    #[error("{reason}")]
    Unauthorized {
        /// Why, as shown to the client.
        reason: &'static str,
    },
    /// The request's API key is over one of its `auth.tokens[].limits` (rate, concurrency queue
    /// or budget): 429 `rate_limit_error`, with `retry-after` when a time is known.
    #[error(transparent)]
    KeyLimited(#[from] crate::key_limits::KeyRefusal),
    /// `server.max_in_flight` requests are already in flight.
    #[error("the forwarder is overloaded: {limit} requests are already in flight (server.max_in_flight); retry shortly")]
    Overloaded {
        /// The configured limit.
        limit: usize,
    },
    /// No endpoint is configured or available for this request.
    #[error("no upstream endpoint is available")]
    NoEndpoint,
    /// The upstream URL could not be built from the endpoint and the request path.
    #[error("cannot build the upstream url for endpoint {endpoint}: {message}")]
    BadUpstreamUrl {
        /// Endpoint name.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// Connecting to or talking with the upstream failed before it answered.
    #[error("endpoint {endpoint} could not be reached: {source}")]
    Connect {
        /// Endpoint name.
        endpoint: String,
        /// The client error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream did not send response headers in time.
    #[error("endpoint {endpoint} sent no response headers within {timeout:?}")]
    HeaderTimeout {
        /// Endpoint name.
        endpoint: String,
        /// The applied limit.
        timeout: Duration,
        /// The request was handed to the upstream on an open connection: it may be generating
        /// (and billing) it.
        request_sent: bool,
    },
}

impl ProxyError {
    /// Who caused it.
    pub fn origin(&self) -> ErrorOrigin {
        match self {
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyRead { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::KeyLimited(_) => ErrorOrigin::Client,
            ProxyError::Connect { .. } | ProxyError::HeaderTimeout { .. } => ErrorOrigin::Upstream,
            ProxyError::NoEndpoint
            | ProxyError::BadUpstreamUrl { .. }
            | ProxyError::Overloaded { .. } => ErrorOrigin::Internal,
        }
    }

    /// Whether another attempt (on this or another endpoint) could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::HeaderTimeout { .. }
        )
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyRead { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::KeyLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Overloaded { .. } => OVERLOADED,
            ProxyError::BadUpstreamUrl { .. } | ProxyError::Connect { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::HeaderTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The Anthropic `error.type` in the body.
    pub fn anthropic_type(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyRead { .. } => "invalid_request_error",
            ProxyError::Unauthorized { .. } => "authentication_error",
            ProxyError::KeyLimited(_) => "rate_limit_error",
            ProxyError::NoEndpoint | ProxyError::Overloaded { .. } => "overloaded_error",
            ProxyError::BadUpstreamUrl { .. }
            | ProxyError::Connect { .. }
            | ProxyError::HeaderTimeout { .. } => "api_error",
        }
    }

    /// The response the client receives for this error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut response =
            anthropic_error_response(self.status(), self.anthropic_type(), &self.to_string());
        if let ProxyError::KeyLimited(refusal) = self {
            if let Some(seconds) = refusal.retry_after_secs() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
        }
        response
    }
}

/// `x-should-retry`: the official SDKs obey it instead of their own retry rules.
pub const X_SHOULD_RETRY: header::HeaderName = header::HeaderName::from_static("x-should-retry");

/// Marks the final error of a request the forwarder already retried with `x-should-retry:
/// false`, so the client's SDK does not multiply the attempts again (it retries twice by
/// default). An answer after a single attempt is left as it is: the client may retry it.
pub fn mark_already_retried(response: &mut Response<ProxyBody>, attempts: usize) {
    if attempts > 1 && !response.status().is_success() {
        response
            .headers_mut()
            .insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
    }
}

/// Builds a response in the Anthropic error envelope.
pub fn anthropic_error_response(
    status: StatusCode,
    error_type: &str,
    message: &str,
) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(anthropic_error_json(error_type, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"type":"error","error":{"type":..,"message":..}}`, keys in the order the API writes them.
pub fn anthropic_error_json(error_type: &str, message: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        r#type: &'static str,
        error: Detail<'a>,
    }
    #[derive(serde::Serialize)]
    struct Detail<'a> {
        r#type: &'a str,
        message: &'a str,
    }
    let envelope = Envelope {
        r#type: "error",
        error: Detail {
            r#type: error_type,
            message,
        },
    };
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_bodies_use_the_anthropic_envelope() {
        let response = ProxyError::BodyTooLarge { limit: 10 }.to_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "request_too_large");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 byte limit"));
    }

    #[tokio::test]
    async fn overload_is_a_529_overloaded_error() {
        let error = ProxyError::Overloaded { limit: 3 };
        assert!(!error.is_retryable());
        let response = error.to_response();
        assert_eq!(response.status().as_u16(), 529);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["type"], "overloaded_error");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_in_flight"));
    }

    #[test]
    fn only_a_retried_failure_says_do_not_retry() {
        let mut once = anthropic_error_response(OVERLOADED, "overloaded_error", "Overloaded");
        mark_already_retried(&mut once, 1);
        assert_eq!(once.headers().get(X_SHOULD_RETRY), None);
        let mut retried = anthropic_error_response(OVERLOADED, "overloaded_error", "Overloaded");
        retried
            .headers_mut()
            .insert(X_SHOULD_RETRY, HeaderValue::from_static("true"));
        mark_already_retried(&mut retried, 2);
        assert_eq!(
            retried.headers().get(X_SHOULD_RETRY),
            Some(&HeaderValue::from_static("false"))
        );
        let mut success = Response::new(full_body(Bytes::new()));
        mark_already_retried(&mut success, 3);
        assert_eq!(success.headers().get(X_SHOULD_RETRY), None);
    }

    #[test]
    fn classification_is_by_type() {
        let connect = ProxyError::Connect {
            endpoint: "a".into(),
            source: "refused".into(),
        };
        assert!(connect.is_retryable());
        assert_eq!(connect.origin(), ErrorOrigin::Upstream);
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        let unauthorized = ProxyError::Unauthorized { reason: "x" };
        assert!(!unauthorized.is_retryable());
        assert_eq!(unauthorized.origin(), ErrorOrigin::Client);
    }
}
