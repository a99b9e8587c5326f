//! Thinking-signature repair (`routing.repair_thinking_signatures`, off by default). A
//! `thinking` block carries a `signature` that only the upstream that produced it accepts; a
//! conversation that moved to another provider mid-way gets a 400 `invalid_request_error`
//! naming an invalid `signature` in a `thinking` block. The repair drops the `thinking` and
//! `redacted_thinking` blocks of every assistant turn but the last one from `messages`, and the
//! forward phase retries the request once on the same endpoint (`forwarder/attempts.rs`).
//!
//! **The last assistant turn keeps its thinking blocks.** With extended thinking and tool use,
//! the API requires the thinking block of the assistant turn being continued (the one whose
//! `tool_use` the final user turn answers) to be passed back unchanged, and a prefilled last
//! assistant turn must start with its thinking; dropping it would turn the 400 into another
//! 400. Thinking blocks of earlier turns are not needed: the API strips them from the context
//! anyway. An earlier assistant turn made only of thinking blocks is dropped whole (the API
//! combines the consecutive user turns this leaves).
//!
//! **What the rewrite changes.** Only the `messages` array, and in it only the assistant turns
//! that lose blocks: every other byte of the body (other fields, their order, whitespace,
//! numbers, other messages and blocks) is kept as it was, because values are spliced by their
//! byte spans ([`serde_json::value::RawValue`]) rather than re-serialised.
//!
//! This is the one place where the forwarder reads an upstream error's text
//! ([`is_invalid_thinking_signature`]); every other decision is made on statuses and headers
//! (`classify.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A request body with the earlier assistant turns' thinking blocks removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepairedBody {
    /// The rewritten body.
    pub(crate) body: Bytes,
    /// How many `thinking` / `redacted_thinking` blocks were dropped.
    pub(crate) dropped_blocks: usize,
}

/// The Anthropic error envelope, as far as the repair reads it.
#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    error: ErrorDetail<'a>,
}

#[derive(Deserialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Cow<'a, str>,
}

/// Whether an upstream 400's body is the Anthropic `invalid_request_error` about an invalid
/// `signature` in a `thinking` block.
///
/// **The one place where an error's text is read** (see the module documentation): the status
/// and error type say only "invalid request", and only the message tells this case apart.
pub(crate) fn is_invalid_thinking_signature(error_body: &[u8]) -> bool {
    let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope<'_>>(error_body) else {
        return false;
    };
    if envelope.kind != "error" || envelope.error.kind != "invalid_request_error" {
        return false;
    }
    let message = envelope.error.message.to_ascii_lowercase();
    message.contains("signature") && message.contains("thinking")
}

/// One message of `messages`, as far as the repair reads it.
#[derive(Deserialize)]
struct Turn<'a> {
    #[serde(default, borrow)]
    role: Cow<'a, str>,
}

/// One content block, as far as the repair reads it.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Cow<'a, str>,
}

/// `body` without the `thinking` / `redacted_thinking` blocks of the assistant turns before the
/// last one; `None` when the body is not a JSON object with a `messages` array, or when no
/// such block exists (retrying would only meet the same 400).
pub(crate) fn drop_earlier_thinking(body: &[u8]) -> Option<RepairedBody> {
    let text = std::str::from_utf8(body).ok()?;
    let messages_span = field_span(text, "messages")?;
    let messages: Vec<&RawValue> = serde_json::from_str(&text[messages_span.clone()]).ok()?;
    let roles: Vec<Option<Turn<'_>>> = messages
        .iter()
        .map(|message| serde_json::from_str::<Turn<'_>>(message.get()).ok())
        .collect();
    let last_assistant = roles
        .iter()
        .rposition(|turn| turn.as_ref().is_some_and(|turn| turn.role == "assistant"))?;
    let mut dropped_blocks = 0;
    let mut kept_messages: Vec<Cow<'_, str>> = Vec::with_capacity(messages.len());
    for (index, (message, turn)) in messages.iter().zip(&roles).enumerate() {
        let is_earlier_assistant =
            index < last_assistant && turn.as_ref().is_some_and(|turn| turn.role == "assistant");
        if !is_earlier_assistant {
            kept_messages.push(Cow::Borrowed(message.get()));
            continue;
        }
        match without_thinking(message.get()) {
            Some((rewritten, dropped)) => {
                dropped_blocks += dropped;
                if let Some(rewritten) = rewritten {
                    kept_messages.push(Cow::Owned(rewritten));
                }
            }
            None => kept_messages.push(Cow::Borrowed(message.get())),
        }
    }
    if dropped_blocks == 0 {
        return None;
    }
    let mut rewritten = String::with_capacity(text.len());
    rewritten.push_str(&text[..messages_span.start]);
    rewritten.push('[');
    rewritten.push_str(&kept_messages.join(","));
    rewritten.push(']');
    rewritten.push_str(&text[messages_span.end..]);
    Some(RepairedBody {
        body: Bytes::from(rewritten),
        dropped_blocks,
    })
}

/// An assistant message without its thinking blocks: `None` when it has none to drop (or no
/// content array), else the rewritten message (`None` inside when no block is left: the turn
/// is dropped) and the number of blocks dropped.
fn without_thinking(message: &str) -> Option<(Option<String>, usize)> {
    let content_span = field_span(message, "content")?;
    let blocks: Vec<&RawValue> = serde_json::from_str(&message[content_span.clone()]).ok()?;
    let kept: Vec<&str> = blocks
        .iter()
        .filter(|block| {
            let kind = serde_json::from_str::<Block<'_>>(block.get())
                .map(|block| block.kind.into_owned())
                .unwrap_or_default();
            kind != "thinking" && kind != "redacted_thinking"
        })
        .map(|block| block.get())
        .collect();
    let dropped = blocks.len() - kept.len();
    if dropped == 0 {
        return None;
    }
    if kept.is_empty() {
        return Some((None, dropped));
    }
    let mut rewritten = String::with_capacity(message.len());
    rewritten.push_str(&message[..content_span.start]);
    rewritten.push('[');
    rewritten.push_str(&kept.join(","));
    rewritten.push(']');
    rewritten.push_str(&message[content_span.end..]);
    Some((Some(rewritten), dropped))
}

/// The byte span, in `object` (a JSON object's text), of the value of its field `field`.
fn field_span(object: &str, field: &str) -> Option<Range<usize>> {
    let fields: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(object).ok()?;
    let value = fields.get(field)?.get();
    // The raw value borrows from `object`: its offset is the distance between the two starts.
    let start = (value.as_ptr() as usize).checked_sub(object.as_ptr() as usize)?;
    let end = start.checked_add(value.len())?;
    (end <= object.len() && object.get(start..end) == Some(value)).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn thinking(text: &str) -> Value {
        json!({"type": "thinking", "thinking": text, "signature": format!("sig-{text}")})
    }

    fn conversation() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {"role": "user", "content": "What is the weather?"},
                {"role": "assistant", "content": [
                    thinking("first"),
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
                {"role": "assistant", "content": [
                    thinking("second"),
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"}]}
            ]
        })
    }

    #[test]
    fn drops_thinking_of_earlier_assistant_turns_and_keeps_the_last_ones() {
        let body = serde_json::to_vec(&conversation()).unwrap();
        let repaired = drop_earlier_thinking(&body).expect("a block to drop");
        assert_eq!(repaired.dropped_blocks, 2);
        let mut expected = conversation();
        let first_assistant = expected["messages"][1]["content"].as_array_mut().unwrap();
        first_assistant.drain(0..2);
        let repaired_json: Value = serde_json::from_slice(&repaired.body).unwrap();
        assert_eq!(repaired_json, expected);
        // The last assistant turn (the one being continued) keeps its thinking block.
        assert_eq!(
            repaired_json["messages"][3]["content"][0]["type"],
            "thinking"
        );
    }

    #[test]
    fn every_other_byte_is_kept_as_written() {
        // Unusual spacing, key order and a float: all outside the dropped blocks survive.
        let body = r#"{ "temperature" : 0.70, "model":"m",
            "messages" : [ {"role":"user","content":"hi"},
              {"content": [ {"type":"thinking","thinking":"x","signature":"s"}, {"type":"text","text":"a"} ], "role":"assistant"},
              {"role":"user","content":"more"}, {"role":"assistant","content":[{"type":"thinking","thinking":"y","signature":"t"}]} ],
            "stream" :true }"#;
        let repaired = drop_earlier_thinking(body.as_bytes()).expect("a block to drop");
        let text = std::str::from_utf8(&repaired.body).unwrap();
        assert_eq!(
            text,
            r#"{ "temperature" : 0.70, "model":"m",
            "messages" : [{"role":"user","content":"hi"},{"content": [{"type":"text","text":"a"}], "role":"assistant"},{"role":"user","content":"more"},{"role":"assistant","content":[{"type":"thinking","thinking":"y","signature":"t"}]}],
            "stream" :true }"#
        );
    }

    #[test]
    fn an_earlier_turn_of_only_thinking_is_dropped_whole() {
        let body = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [thinking("only")]},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
            {"role": "user", "content": "d"}
        ]});
        let repaired = drop_earlier_thinking(&serde_json::to_vec(&body).unwrap()).unwrap();
        let json: Value = serde_json::from_slice(&repaired.body).unwrap();
        let roles: Vec<&str> = json["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "user", "assistant", "user"]);
        assert_eq!(repaired.dropped_blocks, 1);
    }

    #[test]
    fn nothing_to_drop_means_no_repair() {
        let only_last = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [thinking("last")]},
        ]});
        assert_eq!(
            drop_earlier_thinking(&serde_json::to_vec(&only_last).unwrap()),
            None
        );
        let string_content = json!({"messages": [
            {"role": "assistant", "content": "plain"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "again"},
        ]});
        assert_eq!(
            drop_earlier_thinking(&serde_json::to_vec(&string_content).unwrap()),
            None
        );
        assert_eq!(drop_earlier_thinking(b"not json"), None);
        assert_eq!(drop_earlier_thinking(b"{\"model\":\"m\"}"), None);
        assert_eq!(drop_earlier_thinking(b"[1,2]"), None);
    }

    #[test]
    fn only_the_signature_error_is_recognised() {
        let error = |kind: &str, message: &str| {
            serde_json::to_vec(
                &json!({"type": "error", "error": {"type": kind, "message": message}}),
            )
            .unwrap()
        };
        assert!(is_invalid_thinking_signature(&error(
            "invalid_request_error",
            "messages.1.content.0: Invalid `signature` in `thinking` block"
        )));
        assert!(!is_invalid_thinking_signature(&error(
            "invalid_request_error",
            "messages: roles must alternate"
        )));
        assert!(!is_invalid_thinking_signature(&error(
            "authentication_error",
            "Invalid signature in thinking block"
        )));
        assert!(!is_invalid_thinking_signature(b"<html>Bad Request</html>"));
    }
}
