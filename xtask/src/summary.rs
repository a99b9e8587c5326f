//! One-line summaries of Anthropic API answers for the demo's output.

use serde_json::Value;

/// The longest text excerpt shown.
const TEXT_LIMIT: usize = 60;

/// Summarises a Messages API JSON answer, a `count_tokens` answer or an error envelope.
pub fn summarize_json(body: &[u8]) -> String {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => return format!("not JSON: {}", excerpt(&String::from_utf8_lossy(body))),
    };
    if let Some(error) = summarize_error(&value) {
        return error;
    }
    if value.get("type").and_then(Value::as_str) == Some("message") {
        let text: String = value
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect();
        let usage = value.get("usage");
        return format!(
            "model={} stop_reason={} input_tokens={} output_tokens={} text={:?}",
            field(&value, "model"),
            field(&value, "stop_reason"),
            usage.map_or("?".into(), |u| field(u, "input_tokens")),
            usage.map_or("?".into(), |u| field(u, "output_tokens")),
            excerpt(&text)
        );
    }
    if let Some(tokens) = value.get("input_tokens") {
        return format!("input_tokens={tokens}");
    }
    excerpt(&value.to_string())
}

/// Summarises a server-sent event stream from the Messages API.
pub fn summarize_sse(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut events = 0usize;
    let mut model = String::from("?");
    let mut input_tokens = String::from("?");
    let mut output_tokens = String::from("?");
    let mut stop_reason = String::from("?");
    let mut answer = String::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        if line.starts_with("event:") {
            events += 1;
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        match value.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(message) = value.get("message") {
                    model = field(message, "model");
                    if let Some(usage) = message.get("usage") {
                        input_tokens = field(usage, "input_tokens");
                        output_tokens = field(usage, "output_tokens");
                    }
                }
            }
            Some("content_block_delta") => {
                if let Some(piece) = value
                    .get("delta")
                    .and_then(|delta| delta.get("text"))
                    .and_then(Value::as_str)
                {
                    answer.push_str(piece);
                }
            }
            Some("message_delta") => {
                if let Some(reason) = value.get("delta").and_then(|d| d.get("stop_reason")) {
                    stop_reason = plain(reason);
                }
                if let Some(usage) = value.get("usage") {
                    if let Some(tokens) = usage.get("input_tokens") {
                        input_tokens = plain(tokens);
                    }
                    if let Some(tokens) = usage.get("output_tokens") {
                        output_tokens = plain(tokens);
                    }
                }
            }
            Some("error") => errors.extend(summarize_error(&value)),
            _ => {}
        }
    }
    let mut summary = format!(
        "events={events} model={model} stop_reason={stop_reason} input_tokens={input_tokens} \
         output_tokens={output_tokens} text={:?}",
        excerpt(&answer)
    );
    for error in errors {
        summary.push_str(" stream ");
        summary.push_str(&error);
    }
    summary
}

/// `error: <type>: <message>` for an Anthropic error envelope.
fn summarize_error(value: &Value) -> Option<String> {
    if value.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let error = value.get("error")?;
    Some(format!(
        "error: {}: {}",
        field(error, "type"),
        excerpt(&field(error, "message"))
    ))
}

fn field(value: &Value, key: &str) -> String {
    value.get(key).map_or_else(|| "?".to_string(), plain)
}

/// A JSON value without quotes around strings.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= TEXT_LIMIT {
        return text.to_string();
    }
    let mut short: String = text.chars().take(TEXT_LIMIT).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_a_message() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
            "content":[{"type":"text","text":"Hello there"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":12,"output_tokens":3}}"#;
        assert_eq!(
            summarize_json(body),
            "model=claude-sonnet-4-20250514 stop_reason=end_turn input_tokens=12 output_tokens=3 text=\"Hello there\""
        );
    }

    #[test]
    fn summarizes_count_tokens_and_errors() {
        assert_eq!(summarize_json(br#"{"input_tokens":42}"#), "input_tokens=42");
        assert_eq!(
            summarize_json(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "error: overloaded_error: Overloaded"
        );
        assert_eq!(summarize_json(b"<html>"), "not JSON: <html>");
    }

    #[test]
    fn summarizes_a_stream() {
        let body = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" you\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(
            summarize_sse(body.as_bytes()),
            "events=5 model=claude-x stop_reason=end_turn input_tokens=9 output_tokens=5 text=\"Hi you\""
        );
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(200);
        assert_eq!(excerpt(&long).chars().count(), TEXT_LIMIT + 1);
    }
}
