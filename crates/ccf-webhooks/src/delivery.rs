//! Delivering one notification to one receiver: the retry policy (tries, exponential back-off,
//! per-try timeout, queue bound), what an answer means, and one try on the upstream client.
//!
//! Retried: network errors, timeouts, `5xx` and `429`. Not retried: any other `4xx` (the
//! receiver refused this body; sending it again would not change that). `2xx` is delivered;
//! `1xx`/`3xx` (redirects are not followed: a signed body must not go elsewhere) count as
//! refusals.

use std::time::Duration;

use bytes::Bytes;
use ccf_proxy::UpstreamClient;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request};

use crate::signing::{signature, EVENT_HEADER, SIGNATURE_HEADER};

/// How hard to try: the defaults are what the forwarder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Tries per notification, the first included (default 5).
    pub max_tries: u32,
    /// Wait after the first failed try; doubled after each further one (default 1 s: 1, 2, 4,
    /// 8 s).
    pub first_backoff: Duration,
    /// Longest wait between tries (default 60 s).
    pub max_backoff: Duration,
    /// Time for one try, from sending to the whole answer (default 10 s).
    pub try_timeout: Duration,
    /// Notifications waiting per receiver; past it the oldest is dropped and counted (default
    /// 1,000).
    pub queue_capacity: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_tries: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            try_timeout: Duration::from_secs(10),
            queue_capacity: 1_000,
        }
    }
}

impl DeliveryPolicy {
    /// The wait after `failed_tries` failed tries (1 for the first failure), or `None` when no
    /// try is left.
    pub fn backoff_after(&self, failed_tries: u32) -> Option<Duration> {
        if failed_tries == 0 || failed_tries >= self.max_tries {
            return None;
        }
        let doublings = failed_tries.saturating_sub(1).min(31);
        let wait = self
            .first_backoff
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_backoff);
        Some(wait.min(self.max_backoff))
    }
}

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    /// The receiver answered `2xx`.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// A failure worth another try (network error, timeout, `5xx`, `429`).
    Retryable {
        /// The status, if the receiver answered.
        status: Option<u16>,
        /// What went wrong, for people.
        error: String,
    },
    /// The receiver refused the notification (another status); no further try.
    Refused {
        /// Its status.
        status: u16,
    },
}

/// What a receiver's answer status means.
pub fn classify(status: u16) -> TryOutcome {
    match status {
        200..=299 => TryOutcome::Delivered { status },
        429 | 500..=599 => TryOutcome::Retryable {
            status: Some(status),
            error: format!("receiver answered {status}"),
        },
        _ => TryOutcome::Refused { status },
    }
}

/// One POST of `body` to `url`, signed with `secret` when set, within `timeout`.
pub async fn send_once(
    client: &UpstreamClient,
    url: &url::Url,
    event: &'static str,
    secret: Option<&str>,
    body: Bytes,
    timeout: Duration,
) -> TryOutcome {
    // The user info becomes a Basic `authorization` header below; it never goes into the
    // request target or `Host`.
    let mut target = url.clone();
    let _ = target.set_username("");
    let _ = target.set_password(None);
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(target.as_str())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("cc-forwarder/", env!("CARGO_PKG_VERSION"))),
        )
        .header(EVENT_HEADER, HeaderValue::from_static(event));
    if let Some(secret) = secret {
        builder = builder.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    // Basic credentials in the URL are sent as the receiver expects them.
    if !url.username().is_empty() {
        use base64::Engine as _;
        let user = percent_decoded(url.username());
        let password = url.password().map(percent_decoded).unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {token}")) {
            value.set_sensitive(true);
            builder = builder.header(hyper::header::AUTHORIZATION, value);
        }
    }
    let request = match builder.body(Full::new(body)) {
        Ok(request) => request,
        Err(error) => {
            return TryOutcome::Retryable {
                status: None,
                error: format!("cannot build the request: {error}"),
            }
        }
    };
    let exchange = async {
        let response = client
            .request_unrouted(request)
            .await
            .map_err(|error| error_chain(&error))?;
        let status = response.status().as_u16();
        // Read the (small) answer so the connection can be reused.
        response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("reading the answer: {}", error_chain(&error)))?;
        Ok::<u16, String>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => classify(status),
        Ok(Err(error)) => TryOutcome::Retryable {
            status: None,
            error,
        },
        Err(_) => TryOutcome::Retryable {
            status: None,
            error: format!("no answer within {}", humantime::format_duration(timeout)),
        },
    }
}

fn percent_decoded(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_doubles_from_one_second_over_five_tries() {
        let policy = DeliveryPolicy::default();
        let waits: Vec<Option<Duration>> = (0..=5).map(|n| policy.backoff_after(n)).collect();
        assert_eq!(
            waits,
            vec![
                None,
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None,
            ]
        );
    }

    #[test]
    fn the_backoff_is_capped() {
        let policy = DeliveryPolicy {
            max_tries: 40,
            max_backoff: Duration::from_secs(60),
            ..DeliveryPolicy::default()
        };
        assert_eq!(policy.backoff_after(7), Some(Duration::from_secs(60)));
        assert_eq!(policy.backoff_after(39), Some(Duration::from_secs(60)));
        assert_eq!(policy.backoff_after(40), None);
    }

    #[test]
    fn server_errors_and_429_are_retried_other_4xx_are_not() {
        let check = |status: u16, expected: &str| {
            let got = match classify(status) {
                TryOutcome::Delivered { .. } => "delivered",
                TryOutcome::Retryable { .. } => "retry",
                TryOutcome::Refused { .. } => "refused",
            };
            assert_eq!(got, expected, "status {status}");
        };
        for (status, expected) in [
            (200, "delivered"),
            (204, "delivered"),
            (301, "refused"),
            (400, "refused"),
            (401, "refused"),
            (404, "refused"),
            (408, "refused"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
        ] {
            check(status, expected);
        }
    }
}
