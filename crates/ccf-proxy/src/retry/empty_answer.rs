//! `retry.failover_on_empty_answer`: a 200 with no content and zero output tokens is a failure
//! of the endpoint. The answer is read ahead before anything reaches the client, and what was
//! read is put back in front of the body ([`crate::client::UpstreamBody::put_back`]), so an
//! answer that is not empty is relayed byte for byte.
//!
//! - **JSON** (`application/json`): the whole body is read (a non-streaming answer is relayed
//!   only once complete anyway, so this costs no latency), up to [`MAX_READ_AHEAD`]. Empty:
//!   a `message` whose `content` is empty (or holds only empty `text` blocks) and whose
//!   `usage.output_tokens` is 0 or absent.
//! - **SSE** (`text/event-stream`): the stream's first events are held until the first
//!   `content_block_start` or `content_block_delta` (which comes right after `message_start`
//!   in a normal stream, so holding costs no latency there) or the end of the stream. Empty: the
//!   stream ended without a content block, without an `error` event, and every reported
//!   `output_tokens` is 0.
//!
//! Anything else is relayed as it is: another status, a compressed body (`content-encoding`
//! other than `identity`), more than [`MAX_READ_AHEAD`] bytes without a decision, the
//! deadline passing, or the body breaking while read (the break is put back too, so the relay
//! reports it as before).

use std::time::Duration;

use http::{header, Response, StatusCode};
use serde_json::Value;

use crate::client::UpstreamBody;

/// Most bytes read ahead to decide; past it the answer is relayed as it is.
pub(crate) const MAX_READ_AHEAD: usize = 8 * 1024 * 1024;

/// What the read-ahead found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerContent {
    /// A 200 with no content and zero output tokens.
    Empty,
    /// Anything else (relay it).
    Relay,
}

/// Reads ahead into `answer`'s body within `deadline` and says whether it is an empty answer;
/// every frame read (and a read error) is put back in front of the body.
pub(crate) async fn inspect(
    answer: &mut Response<UpstreamBody>,
    deadline: Duration,
) -> AnswerContent {
    if answer.status() != StatusCode::OK {
        return AnswerContent::Relay;
    }
    let header_text = |name: header::HeaderName| {
        answer
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    let encoded = header_text(header::CONTENT_ENCODING)
        .is_some_and(|coding| !coding.trim().is_empty() && coding.trim() != "identity");
    if encoded {
        return AnswerContent::Relay;
    }
    let content_type = header_text(header::CONTENT_TYPE).unwrap_or_default();
    let kind = if content_type.starts_with("text/event-stream") {
        Kind::EventStream
    } else if content_type.starts_with("application/json") {
        Kind::Json
    } else {
        return AnswerContent::Relay;
    };
    let read = answer
        .body_mut()
        .read_ahead(deadline, MAX_READ_AHEAD, |seen| {
            kind == Kind::EventStream && has_content_event(seen)
        })
        .await;
    if !read.complete {
        return AnswerContent::Relay;
    }
    let empty = match kind {
        Kind::Json => json_is_empty(&read.data),
        Kind::EventStream => event_stream_is_empty(&read.data),
    };
    if empty {
        AnswerContent::Empty
    } else {
        AnswerContent::Relay
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    EventStream,
}

/// Whether a content block started or a delta came (the answer is not empty).
fn has_content_event(seen: &[u8]) -> bool {
    contains(seen, b"content_block_start") || contains(seen, b"content_block_delta")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A non-streaming `message` with no content and zero output tokens.
pub(crate) fn json_is_empty(body: &[u8]) -> bool {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return false;
    }
    let no_content = match message.get("content") {
        None | Some(Value::Null) => true,
        Some(Value::Array(blocks)) => blocks.iter().all(|block| {
            block.get("type").and_then(Value::as_str) == Some("text")
                && block
                    .get("text")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        }),
        Some(_) => false,
    };
    no_content && output_tokens(message.get("usage")) == 0
}

/// A whole event stream with no content block, no `error` event and zero output tokens.
pub(crate) fn event_stream_is_empty(stream: &[u8]) -> bool {
    if has_content_event(stream) {
        return false;
    }
    let text = String::from_utf8_lossy(stream);
    let mut saw_message = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("error") => return false,
            Some("message_start") => {
                saw_message = true;
                let usage = event
                    .get("message")
                    .and_then(|message| message.get("usage"));
                if output_tokens(usage) > 0 {
                    return false;
                }
            }
            Some("message_delta") if output_tokens(event.get("usage")) > 0 => return false,
            _ => {}
        }
    }
    saw_message
}

fn output_tokens(usage: Option<&Value>) -> u64 {
    usage
        .and_then(|usage| usage.get("output_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_answers_are_empty_only_without_content_and_output_tokens() {
        let message = |content: Value, output: u64| {
            serde_json::to_vec(&json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": content, "stop_reason": "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": output}
            }))
            .unwrap()
        };
        assert!(json_is_empty(&message(json!([]), 0)));
        assert!(json_is_empty(&message(
            json!([{"type": "text", "text": ""}]),
            0
        )));
        assert!(!json_is_empty(&message(
            json!([{"type": "text", "text": "hi"}]),
            1
        )));
        assert!(!json_is_empty(&message(json!([]), 3)));
        assert!(!json_is_empty(&message(
            json!([{"type": "tool_use", "id": "t", "name": "n", "input": {}}]),
            0
        )));
        assert!(!json_is_empty(
            br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#
        ));
        assert!(!json_is_empty(b"not json"));
    }

    #[test]
    fn event_streams_are_empty_only_without_content_errors_or_output_tokens() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":0}}}\n\n";
        let delta = |output: u64| {
            format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{output}}}}}\n\n")
        };
        let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let empty = format!("{start}{}{stop}", delta(0));
        assert!(event_stream_is_empty(empty.as_bytes()));
        assert!(!event_stream_is_empty(
            format!("{start}{}{stop}", delta(2)).as_bytes()
        ));
        let with_block = format!(
            "{start}event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n{}{stop}",
            delta(0)
        );
        assert!(!event_stream_is_empty(with_block.as_bytes()));
        let error = format!(
            "{start}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"x\"}}}}\n\n"
        );
        assert!(!event_stream_is_empty(error.as_bytes()));
        assert!(!event_stream_is_empty(b""));
    }
}
