//! What the realistic upstream puts on the wire: the JSON message, the SSE events of a stream
//! paced like generation (and the faults that break it), the models list, the Anthropic error
//! envelope, the rate-limit header families, and the response body type that carries them.
//! Decisions (storms, faults, statuses) are made by the parent module; this one only renders.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{RateLimitFamily, RealisticConfig, StreamFault};

/// What one message answer reports.
pub(super) struct Generation {
    pub(super) request_id: String,
    pub(super) model: String,
    pub(super) input_tokens: u32,
    pub(super) output_tokens: u32,
}

fn usage(generation: &Generation, output_tokens: u32) -> Value {
    json!({
        "input_tokens": generation.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard",
    })
}

/// `output_tokens` words of text, one token each.
fn generated_text(tokens: u32) -> String {
    (0..tokens)
        .map(|n| if n == 0 { "Hello" } else { " word" })
        .collect()
}

fn message_id(request_id: &str) -> String {
    format!("msg_{}", request_id.trim_start_matches("req_"))
}

pub(super) fn whole_response(generation: &Generation) -> Response<RealisticBody> {
    let body = json!({
        "id": message_id(&generation.request_id),
        "type": "message",
        "role": "assistant",
        "model": generation.model,
        "content": [{"type": "text", "text": generated_text(generation.output_tokens)}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": usage(generation, generation.output_tokens),
    });
    json_response(200, &body, &generation.request_id)
}

fn sse_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Every event of a streamed answer, with the wait before each (the generation pacing).
fn stream_events(generation: &Generation, config: &RealisticConfig) -> Vec<(Duration, Bytes)> {
    let mut events = vec![
        (
            Duration::ZERO,
            sse_event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": message_id(&generation.request_id), "type": "message",
                    "role": "assistant", "model": generation.model, "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": usage(generation, 1)}}),
            ),
        ),
        (
            Duration::ZERO,
            sse_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            ),
        ),
        (Duration::ZERO, sse_event("ping", &json!({"type": "ping"}))),
    ];
    let per_delta = config.tokens_per_delta.max(1);
    let mut produced = 0;
    while produced < generation.output_tokens {
        let tokens = per_delta.min(generation.output_tokens - produced);
        let text: String = (produced..produced + tokens)
            .map(|n| if n == 0 { "Hello" } else { " word" })
            .collect();
        produced += tokens;
        events.push((
            config.per_token * tokens,
            sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": text}}),
            ),
        ));
    }
    events.push((
        Duration::ZERO,
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
    ));
    events.push((
        Duration::ZERO,
        sse_event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": generation.output_tokens}}),
        ),
    ));
    events.push((
        Duration::ZERO,
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ));
    events
}

pub(super) fn streaming_response(
    generation: &Generation,
    config: &RealisticConfig,
    fault: Option<StreamFault>,
) -> Response<RealisticBody> {
    let mut events = stream_events(generation, config);
    let cut_after = match fault {
        Some(StreamFault::CutAfterEvents(count)) => Some(count),
        Some(StreamFault::NoMessageStop) => {
            events.pop();
            None
        }
        None => None,
    };
    let (sender, receiver) = mpsc::channel(4);
    // The writer task ends when the client goes away (the receiver is dropped with the body).
    tokio::spawn(async move {
        for (position, (wait, event)) in events.into_iter().enumerate() {
            if cut_after == Some(position) {
                let _ = sender.send(Err(StreamCut)).await;
                return;
            }
            tokio::time::sleep(wait).await;
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(RealisticBody::Paced(receiver));
    insert(response.headers_mut(), "content-type", "text/event-stream");
    insert(response.headers_mut(), "cache-control", "no-cache");
    insert(response.headers_mut(), "request-id", &generation.request_id);
    response
}

pub(super) fn models_list() -> Value {
    json!({
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
            {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z"},
            {"type": "model", "id": "claude-opus-4-5-20251101", "display_name": "Claude Opus 4.5", "created_at": "2025-11-01T00:00:00Z"}
        ],
        "has_more": false,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-opus-4-5-20251101"
    })
}

pub(super) fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

pub(super) fn json_response(
    status: u16,
    body: &Value,
    request_id: &str,
) -> Response<RealisticBody> {
    let mut response = Response::new(RealisticBody::whole(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    insert(response.headers_mut(), "content-type", "application/json");
    insert(response.headers_mut(), "request-id", request_id);
    response
}

pub(super) fn empty_response(status: u16, request_id: &str) -> Response<RealisticBody> {
    let mut response = Response::new(RealisticBody::whole(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    insert(response.headers_mut(), "request-id", request_id);
    response
}

/// The Anthropic error envelope, with `x-should-retry: true` on transient errors as the API
/// sends it.
pub(super) fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
    request_id: &str,
) -> Response<RealisticBody> {
    let body = json!({
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    });
    let mut response = json_response(status, &body, request_id);
    if matches!(status, 429 | 500 | 529) {
        insert(response.headers_mut(), "x-should-retry", "true");
    }
    response
}

/// The rate-limit headers of `family`; `exhausted` for a 429 (nothing remaining / `rejected`).
pub(super) fn rate_limit_headers(
    headers: &mut HeaderMap,
    family: RateLimitFamily,
    exhausted: bool,
) {
    let now = SystemTime::now();
    let now_seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match family {
        RateLimitFamily::None => {}
        RateLimitFamily::PerMinute => {
            let reset = rfc3339(now_seconds + 60);
            let limits: [(&str, &str, u64); 4] = [
                ("requests", "anthropic-ratelimit-requests", 4_000),
                ("tokens", "anthropic-ratelimit-tokens", 2_000_000),
                ("input", "anthropic-ratelimit-input-tokens", 2_000_000),
                ("output", "anthropic-ratelimit-output-tokens", 400_000),
            ];
            for (_, prefix, limit) in limits {
                let remaining = if exhausted { 0 } else { limit - 1 };
                insert_owned(headers, &format!("{prefix}-limit"), &limit.to_string());
                insert_owned(
                    headers,
                    &format!("{prefix}-remaining"),
                    &remaining.to_string(),
                );
                insert_owned(headers, &format!("{prefix}-reset"), &reset);
            }
        }
        RateLimitFamily::Unified => {
            let five_hour_reset = now_seconds + 5 * 3600;
            let seven_day_reset = now_seconds + 7 * 24 * 3600;
            let (status, utilization) = if exhausted {
                ("rejected", "1.0")
            } else {
                ("allowed", "0.42")
            };
            let prefix = "anthropic-ratelimit-unified";
            insert_owned(headers, &format!("{prefix}-status"), status);
            insert_owned(
                headers,
                &format!("{prefix}-reset"),
                &five_hour_reset.to_string(),
            );
            insert_owned(
                headers,
                &format!("{prefix}-representative-claim"),
                "five_hour",
            );
            insert_owned(headers, &format!("{prefix}-5h-utilization"), utilization);
            insert_owned(
                headers,
                &format!("{prefix}-5h-reset"),
                &five_hour_reset.to_string(),
            );
            insert_owned(headers, &format!("{prefix}-7d-utilization"), "0.13");
            insert_owned(
                headers,
                &format!("{prefix}-7d-reset"),
                &seven_day_reset.to_string(),
            );
        }
    }
}

fn insert_owned(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(name, value);
    }
}

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `seconds` since the epoch as RFC 3339 UTC (`2026-12-04T15:00:00Z`), the format of the
/// per-minute `-reset` headers.
pub fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The error a cut stream ends with: hyper resets the h2 stream or closes the h1 connection
/// without the final chunk.
#[derive(Debug, thiserror::Error)]
#[error("the realistic upstream cut the stream")]
pub struct StreamCut;

/// A response body: whole, or paced events from the stream's writer task.
pub enum RealisticBody {
    /// The whole body at once (`None` once sent).
    Whole(Option<Bytes>),
    /// Events as the writer task produces them; an `Err` cuts the stream.
    Paced(mpsc::Receiver<Result<Bytes, StreamCut>>),
}

impl RealisticBody {
    pub(super) fn whole(bytes: Bytes) -> RealisticBody {
        RealisticBody::Whole(Some(bytes))
    }
}

impl Body for RealisticBody {
    type Data = Bytes;
    type Error = StreamCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamCut>>> {
        match self.get_mut() {
            RealisticBody::Whole(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            RealisticBody::Paced(receiver) => receiver
                .poll_recv(context)
                .map(|item| item.map(|result| result.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RealisticBody::Whole(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            RealisticBody::Whole(Some(bytes)) => {
                hyper::body::SizeHint::with_exact(bytes.len() as u64)
            }
            RealisticBody::Whole(None) => hyper::body::SizeHint::with_exact(0),
            RealisticBody::Paced(_) => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_396_400), "2026-12-04T15:00:00Z");
    }
}
