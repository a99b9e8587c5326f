//! Turns a [`Reply`] and the request it answers into a status, headers and body frames.
//!
//! Everything here is pure and runs once per request, before the first byte is sent: the body
//! task only hands the prepared frames out (see `body.rs`).

use std::borrow::Cow;
use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{Method, StatusCode};
use serde::Deserialize;

use crate::reply::{Kind, MockUsage, Reply, DEFAULT_MODEL};

/// Words the text deltas cycle through.
const WORDS: [&str; 8] = [
    "Hello",
    " from",
    " the",
    " mock",
    " Anthropic",
    " upstream",
    ",",
    " friend.",
];

/// The models list answered to `GET /v1/models`.
const MODELS_BODY: &str = concat!(
    r#"{"data":["#,
    r#"{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},"#,
    r#"{"type":"model","id":"claude-haiku-4-5-20251001","display_name":"Claude Haiku 4.5","created_at":"2025-10-01T00:00:00Z"},"#,
    r#"{"type":"model","id":"claude-opus-4-1-20250805","display_name":"Claude Opus 4.1","created_at":"2025-08-05T00:00:00Z"}"#,
    r#"],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-opus-4-1-20250805"}"#
);

/// The parts of the request a reply depends on.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) body: &'a [u8],
    /// The request number `n` of `req_mock_<n>` / `msg_mock_<n>`.
    pub(crate) number: u64,
}

/// What to do with one request.
pub(crate) enum Plan {
    /// Never answer.
    Hang,
    /// Answer with this.
    Respond(Rendered),
}

/// A fully prepared answer.
pub(crate) struct Rendered {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<&'static str>,
    /// An event stream: `cache-control: no-cache`, and the body length is never announced.
    pub(crate) stream: bool,
    pub(crate) gzip: bool,
    pub(crate) frames: Vec<Bytes>,
}

/// The fields of a Messages request body the mock looks at.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

pub(crate) fn render(reply: &Reply, request: &RequestView<'_>) -> Plan {
    if let Some(problem) = &reply.invalid_header {
        return Plan::Respond(error(500, "api_error", problem, request.number));
    }
    let mut rendered = match &reply.kind {
        Kind::Hang => return Plan::Hang,
        Kind::Auto => route(reply, request),
        Kind::Json => message(reply, request, lenient_probe(request.body), false),
        Kind::Sse => message(reply, request, lenient_probe(request.body), true),
        Kind::Status { status, body } => Rendered {
            status: status_code(*status),
            content_type: Some("application/json"),
            stream: false,
            gzip: false,
            frames: vec![Bytes::from(body.to_string())],
        },
        Kind::Error {
            status,
            error_type,
            message,
        } => error(*status, error_type, message, request.number),
        Kind::RawSse(chunks) => Rendered {
            status: StatusCode::OK,
            content_type: Some("text/event-stream"),
            stream: true,
            gzip: false,
            frames: chunks.clone(),
        },
    };
    if let (true, Some((after, error_type, message))) = (rendered.stream, &reply.error_event) {
        rendered.frames.truncate(*after);
        let envelope = error_envelope(error_type, message, None);
        rendered
            .frames
            .push(Bytes::from(format!("event: error\ndata: {envelope}\n\n")));
    }
    if reply.gzip {
        match gzip_frames(&rendered.frames) {
            Ok(frames) => {
                rendered.frames = frames;
                rendered.gzip = true;
            }
            Err(problem) => {
                let message = format!("gzip failed: {problem}");
                return Plan::Respond(error(500, "api_error", &message, request.number));
            }
        }
    }
    Plan::Respond(rendered)
}

/// [`Reply::auto`]: answer like the real API.
fn route(reply: &Reply, request: &RequestView<'_>) -> Rendered {
    match (request.method, request.path) {
        (&Method::POST, "/v1/messages") => {
            match serde_json::from_slice::<Probe<'_>>(request.body) {
                Ok(probe) => {
                    let stream = probe.stream.unwrap_or(false);
                    message(reply, request, Some(probe), stream)
                }
                Err(problem) => error(
                    400,
                    "invalid_request_error",
                    &format!("request body is not a valid Messages request: {problem}"),
                    request.number,
                ),
            }
        }
        (&Method::POST, "/v1/messages/count_tokens") => {
            let tokens = (request.body.len() / 4).max(1);
            json(StatusCode::OK, format!(r#"{{"input_tokens":{tokens}}}"#))
        }
        (&Method::GET, "/v1/models") => json(StatusCode::OK, MODELS_BODY),
        (&Method::GET | &Method::HEAD, "/") => Rendered {
            status: StatusCode::OK,
            content_type: None,
            stream: false,
            gzip: false,
            frames: Vec::new(),
        },
        (method, path) => error(
            404,
            "not_found_error",
            &format!("mock upstream has no route for {method} {path}"),
            request.number,
        ),
    }
}

fn lenient_probe(body: &[u8]) -> Option<Probe<'_>> {
    serde_json::from_slice(body).ok()
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Rendered {
    Rendered {
        status,
        content_type: Some("application/json"),
        stream: false,
        gzip: false,
        frames: vec![body.into()],
    }
}

/// An Anthropic error envelope.
fn error(status: u16, error_type: &str, message: &str, number: u64) -> Rendered {
    let body = error_envelope(error_type, message, Some(number));
    json(status_code(status), body)
}

/// `{"type":"error","error":{"type":..,"message":..}[,"request_id":"req_mock_<n>"]}`, keys in
/// the API's order.
fn error_envelope(error_type: &str, message: &str, number: Option<u64>) -> String {
    let error_type = json_string(error_type);
    let message = json_string(message);
    let request_id = match number {
        Some(number) => format!(r#","request_id":"req_mock_{number}""#),
        None => String::new(),
    };
    format!(r#"{{"type":"error","error":{{"type":{error_type},"message":{message}}}{request_id}}}"#)
}

/// A message, as JSON or as an event stream.
fn message(
    reply: &Reply,
    request: &RequestView<'_>,
    probe: Option<Probe<'_>>,
    stream: bool,
) -> Rendered {
    let model = match (&reply.model, probe.and_then(|probe| probe.model)) {
        (Some(model), _) => Cow::Borrowed(model.as_str()),
        (None, Some(model)) => model,
        (None, None) => Cow::Borrowed(DEFAULT_MODEL),
    };
    let message = MessageParts {
        id: format!("msg_mock_{}", request.number),
        model: json_string(&model),
        usage: reply.usage,
        cache_creation_1h: reply.cache_creation_1h,
    };
    if stream {
        Rendered {
            status: StatusCode::OK,
            content_type: Some("text/event-stream"),
            stream: true,
            gzip: false,
            frames: message.events(reply.deltas, reply.full_usage_in_delta),
        }
    } else {
        json(StatusCode::OK, message.json(reply.deltas))
    }
}

struct MessageParts {
    id: String,
    /// Already a JSON string literal, quotes included.
    model: String,
    usage: MockUsage,
    cache_creation_1h: u64,
}

impl MessageParts {
    /// The `usage` object without `output_tokens` and the closing brace.
    fn usage_prefix(&self) -> String {
        let MockUsage {
            input,
            cache_creation,
            cache_read,
            ..
        } = self.usage;
        let one_hour = self.cache_creation_1h;
        let total_creation = cache_creation.saturating_add(one_hour);
        format!(
            r#"{{"input_tokens":{input},"cache_creation_input_tokens":{total_creation},"cache_read_input_tokens":{cache_read},"cache_creation":{{"ephemeral_5m_input_tokens":{cache_creation},"ephemeral_1h_input_tokens":{one_hour}}}"#
        )
    }

    fn json(&self, words: usize) -> String {
        let MessageParts { id, model, .. } = self;
        let text: String = (0..words).map(|index| WORDS[index % WORDS.len()]).collect();
        let usage = self.usage_prefix();
        let output = self.usage.output;
        format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":{model},"content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{usage},"output_tokens":{output},"server_tool_use":{{"web_search_requests":0}},"service_tier":"standard"}}}}"#
        )
    }

    fn events(&self, deltas: usize, full_usage_in_delta: bool) -> Vec<Bytes> {
        let MessageParts { id, model, .. } = self;
        let usage = self.usage_prefix();
        let output = self.usage.output;
        let mut events = Vec::with_capacity(deltas + 6);
        events.push(format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"{id}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{model},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{usage},\"output_tokens\":1,\"service_tier\":\"standard\"}}}}}}\n\n"
        ));
        events.push(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                .to_owned(),
        );
        events.push("event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned());
        for index in 0..deltas {
            let word = WORDS[index % WORDS.len()];
            events.push(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{word}\"}}}}\n\n"
            ));
        }
        events.push(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
                .to_owned(),
        );
        let delta_usage = if full_usage_in_delta {
            format!("{usage},\"output_tokens\":{output}}}")
        } else {
            format!("{{\"output_tokens\":{output}}}")
        };
        events.push(format!(
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{delta_usage}}}\n\n"
        ));
        events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
        events.into_iter().map(Bytes::from).collect()
    }
}

/// `value` as a JSON string literal.
fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// Gzip the frames as one stream, flushing after each so every frame can be decoded as soon as
/// it arrives; the gzip trailer rides on the last frame.
fn gzip_frames(frames: &[Bytes]) -> std::io::Result<Vec<Bytes>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut compressed = Vec::with_capacity(frames.len().max(1));
    for frame in frames {
        encoder.write_all(frame)?;
        encoder.flush()?;
        compressed.push(std::mem::take(encoder.get_mut()));
    }
    let tail = encoder.finish()?;
    match compressed.last_mut() {
        Some(last) => last.extend_from_slice(&tail),
        None => compressed.push(tail),
    }
    Ok(compressed.into_iter().map(Bytes::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(method: &'a Method, path: &'a str, body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            method,
            path,
            body,
            number: 7,
        }
    }

    fn respond(reply: &Reply, request: &RequestView<'_>) -> Rendered {
        match render(reply, request) {
            Plan::Respond(rendered) => rendered,
            Plan::Hang => panic!("unexpected hang"),
        }
    }

    #[test]
    fn json_message_is_valid_json_with_full_usage() {
        let body = br#"{"model":"claude-haiku-4-5","max_tokens":5,"messages":[]}"#;
        let rendered = respond(&Reply::auto(), &view(&Method::POST, "/v1/messages", body));
        assert_eq!(rendered.frames.len(), 1);
        let value: serde_json::Value =
            serde_json::from_slice(&rendered.frames[0]).expect("json body");
        assert_eq!(value["model"], "claude-haiku-4-5");
        assert_eq!(value["id"], "msg_mock_7");
        assert_eq!(value["content"][0]["text"], "Hello from the");
        assert_eq!(value["usage"]["input_tokens"], 12);
        assert_eq!(value["usage"]["output_tokens"], 6);
        assert_eq!(value["usage"]["cache_creation_input_tokens"], 5);
        assert_eq!(value["usage"]["cache_read_input_tokens"], 7);
        assert_eq!(
            value["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
            5
        );
        assert_eq!(
            value["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
            0
        );
        assert_eq!(value["usage"]["server_tool_use"]["web_search_requests"], 0);
        assert_eq!(value["usage"]["service_tier"], "standard");
    }

    #[test]
    fn every_stream_event_carries_valid_json_named_like_its_type() {
        let reply = Reply::sse()
            .deltas(10)
            .model("we\"ird")
            .cache_creation_1h(4)
            .full_usage_in_delta();
        let rendered = respond(&reply, &view(&Method::POST, "/v1/messages", b"not json"));
        assert_eq!(rendered.frames.len(), 16);
        let mut names = Vec::new();
        for frame in &rendered.frames {
            let text = std::str::from_utf8(frame).expect("utf-8");
            let (name, data) = text
                .strip_prefix("event: ")
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .and_then(|rest| rest.split_once("\ndata: "))
                .expect("event shape");
            let value: serde_json::Value = serde_json::from_str(data).expect("event json");
            assert_eq!(value["type"], name);
            if name == "message_start" {
                assert_eq!(value["message"]["model"], "we\"ird");
                let usage = &value["message"]["usage"];
                assert_eq!(usage["cache_creation_input_tokens"], 9);
                assert_eq!(usage["cache_creation"]["ephemeral_1h_input_tokens"], 4);
            }
            if name == "message_delta" {
                assert_eq!(value["usage"]["output_tokens"], 6);
                assert_eq!(value["usage"]["input_tokens"], 12);
            }
            names.push(name.to_owned());
        }
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(
            names[13..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
    }

    #[test]
    fn error_event_replaces_the_tail_of_the_stream() {
        let reply = Reply::sse().error_event_after(2, "overloaded_error", "Overloaded");
        let rendered = respond(&reply, &view(&Method::POST, "/v1/messages", b"{}"));
        assert_eq!(rendered.frames.len(), 3);
        assert_eq!(
            rendered.frames[2],
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        );
    }

    #[test]
    fn auto_answers_bad_json_with_invalid_request_error() {
        let rendered = respond(&Reply::auto(), &view(&Method::POST, "/v1/messages", b"{"));
        assert_eq!(rendered.status, StatusCode::BAD_REQUEST);
        let value: serde_json::Value =
            serde_json::from_slice(&rendered.frames[0]).expect("json body");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert_eq!(value["request_id"], "req_mock_7");
    }

    #[test]
    fn invalid_scripted_header_becomes_a_500() {
        let reply = Reply::json().header("bad header", "x");
        let rendered = respond(&reply, &view(&Method::POST, "/v1/messages", b"{}"));
        assert_eq!(rendered.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn models_body_is_valid_json() {
        let value: serde_json::Value = serde_json::from_str(MODELS_BODY).expect("models json");
        assert_eq!(value["data"].as_array().map(Vec::len), Some(3));
    }
}
