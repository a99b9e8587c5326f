//! `GET /api/v1/webhooks`: each webhook receiver's subscription and delivery counters
//! (ccf-webhooks' `WebhookStats`). The URL is masked before it gets here; the secret never does
//! (only whether deliveries are `signed`).

use ccf_proxy::monitoring::rfc3339;
use ccf_webhooks::WebhookStats;
use serde::Serialize;

/// The answer: every receiver in `webhooks[]` order.
#[derive(Debug, Serialize)]
pub(crate) struct WebhooksDto {
    webhooks: Vec<WebhookDto>,
}

/// One receiver.
#[derive(Debug, Serialize)]
struct WebhookDto {
    /// Position in `webhooks[]`; the `webhook` label of the metrics.
    index: usize,
    /// Masked URL.
    url: String,
    /// Subscribed event names.
    events: Vec<&'static str>,
    signed: bool,
    delivered: u64,
    failed: u64,
    dropped: u64,
    failed_tries: u64,
    queued: usize,
    last_attempt: Option<String>,
    last_status: Option<u16>,
    last_error: Option<String>,
    last_error_at: Option<String>,
}

impl From<&[WebhookStats]> for WebhooksDto {
    fn from(stats: &[WebhookStats]) -> Self {
        WebhooksDto {
            webhooks: stats
                .iter()
                .map(|stats| WebhookDto {
                    index: stats.index,
                    url: stats.url.clone(),
                    events: stats.events.iter().map(|event| event.as_str()).collect(),
                    signed: stats.signed,
                    delivered: stats.delivered,
                    failed: stats.failed,
                    dropped: stats.dropped,
                    failed_tries: stats.failed_tries,
                    queued: stats.queued,
                    last_attempt: stats.last_attempt.map(rfc3339),
                    last_status: stats.last_status,
                    last_error: stats.last_error.clone(),
                    last_error_at: stats.last_error_at.map(rfc3339),
                })
                .collect(),
        }
    }
}
