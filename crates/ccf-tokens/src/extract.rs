//! Usage extraction from Anthropic responses: [`UsageExtractor`] for streams, [`extract_body`]
//! for complete bodies, and the [`Extraction`] they both produce.

use ccf_types::Usage;

use crate::report::{text, ApiError, Payload, UsageReport};
use crate::sse::{SseDecoder, SseEvent};

/// At most this many diagnostics are kept per response; the rest are counted.
const MAX_DIAGNOSTICS: usize = 16;

/// What a response body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormat {
    /// No body bytes at all (or only whitespace).
    #[default]
    Empty,
    /// A JSON document.
    Json,
    /// A server-sent-events stream.
    Sse,
    /// Neither (an HTML error page, plain text, ...), or not decodable.
    Unknown,
}

/// Something worth logging about a response that did not stop extraction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Diagnostic {
    /// An event this crate reads carried JSON it could not parse.
    #[error("malformed JSON in `{event}` event: {error}")]
    MalformedEvent {
        /// The event type.
        event: String,
        /// The parser's message.
        error: String,
    },
    /// A `usage` value that is not an object.
    #[error("`usage` is not an object")]
    MalformedUsage,
    /// A body that starts like JSON but does not parse.
    #[error("response body is not valid JSON: {error}")]
    MalformedJsonBody {
        /// The parser's message.
        error: String,
    },
    /// A body that is neither JSON nor server-sent events.
    #[error("response body is neither JSON nor server-sent events")]
    UnrecognisedBody,
    /// A stream with more than one `message_start`; the last one was used.
    #[error("stream has more than one message_start; the last one was used")]
    RepeatedMessageStart,
    /// SSE events larger than the decoder's limit were dropped.
    #[error("{count} SSE event(s) larger than the size limit were dropped")]
    EventsTooLarge {
        /// How many.
        count: u64,
    },
    /// A non-streaming body larger than the buffering limit was not parsed.
    #[error("response body is larger than {limit} bytes and was not parsed")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A `content-encoding` this crate cannot decode; the body was not parsed.
    #[error("unsupported content-encoding `{encoding}`")]
    UnsupportedEncoding {
        /// The header value.
        encoding: String,
    },
    /// The compressed body is corrupt; what was decoded before the fault was parsed.
    #[error("corrupt {encoding} body: {error}")]
    CorruptEncoding {
        /// `gzip`, `deflate`, `br` or `zstd`.
        encoding: String,
        /// The decoder's message.
        error: String,
    },
    /// The compressed body ended before its end marker (a cut stream).
    #[error("{encoding} body ended before the end of the compressed stream")]
    TruncatedEncoding {
        /// `gzip`, `deflate`, `br` or `zstd`.
        encoding: String,
    },
    /// More diagnostics than are kept were produced.
    #[error("{count} further diagnostic(s) were dropped")]
    Suppressed {
        /// How many were dropped.
        count: u64,
    },
}

/// Everything read from one response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extraction {
    /// What the body was.
    pub format: BodyFormat,
    /// The model the upstream says answered (`message_start.message.model` or top-level
    /// `model`).
    pub model: Option<String>,
    /// The upstream's message id (`msg_...`).
    pub message_id: Option<String>,
    /// The token usage, when the response reported any (all-zero usage is still `Some`).
    pub usage: Option<Usage>,
    /// A stream that had `message_start` but no `message_delta` usage: `usage` is
    /// `message_start`'s, so `output_tokens` is only the provisional count.
    pub partial: bool,
    /// The response ran to its end: `message_stop` seen (streams), or a JSON body that parsed
    /// and is not an error.
    pub completed: bool,
    /// The upstream's error: an SSE `error` event or an error body.
    pub error: Option<ApiError>,
    /// Things worth logging (malformed JSON, corrupt compression, limits hit, ...).
    pub diagnostics: Vec<Diagnostic>,
}

/// A diagnostics list that keeps at most [`MAX_DIAGNOSTICS`] entries.
#[derive(Debug, Default)]
pub(crate) struct Diagnostics {
    kept: Vec<Diagnostic>,
    suppressed: u64,
}

impl Diagnostics {
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        if self.kept.len() < MAX_DIAGNOSTICS {
            self.kept.push(diagnostic);
        } else {
            self.suppressed += 1;
        }
    }

    pub(crate) fn into_vec(mut self) -> Vec<Diagnostic> {
        if self.suppressed > 0 {
            self.kept.push(Diagnostic::Suppressed {
                count: self.suppressed,
            });
        }
        self.kept
    }
}

/// The event types the extractor reads; everything else is skipped without parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interesting {
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
}

impl Interesting {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "message_start" => Some(Self::MessageStart),
            "message_delta" => Some(Self::MessageDelta),
            "message_stop" => Some(Self::MessageStop),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::MessageStart => "message_start",
            Self::MessageDelta => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Error => "error",
        }
    }
}

/// The type of an event that had no `event:` line, read from the start of its data without a
/// JSON parse: Anthropic-style payloads open with `{"type":"<name>"`. Relays that drop the
/// `event:` lines still send those payloads, so they are still accounted for.
fn sniff_type(data: &[u8]) -> Option<&str> {
    let rest = skip_whitespace(data).strip_prefix(b"{")?;
    let rest = skip_whitespace(rest).strip_prefix(b"\"type\"")?;
    let rest = skip_whitespace(rest).strip_prefix(b":")?;
    let rest = skip_whitespace(rest).strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// What the extractor has learnt from the events so far.
#[derive(Debug, Default)]
struct StreamState {
    model: Option<String>,
    message_id: Option<String>,
    start_usage: Option<UsageReport>,
    final_usage: Option<Usage>,
    message_starts: u32,
    completed: bool,
    error: Option<ApiError>,
    diagnostics: Diagnostics,
}

impl StreamState {
    fn on_event(&mut self, event: SseEvent<'_>) {
        let kind = match Interesting::from_name(event.event) {
            Some(kind) => kind,
            // No `event:` line: look at the payload's own type.
            None if event.event == "message" => {
                match sniff_type(event.data).and_then(Interesting::from_name) {
                    Some(kind) => kind,
                    None => return,
                }
            }
            None => return, // content_block_*, ping and unknown types: never parsed
        };
        if kind == Interesting::MessageStop {
            self.completed = true;
            return;
        }
        let payload: Payload = match serde_json::from_slice(event.data) {
            Ok(payload) => payload,
            Err(error) => {
                self.diagnostics.push(Diagnostic::MalformedEvent {
                    event: kind.name().to_string(),
                    error: error.to_string(),
                });
                return;
            }
        };
        match kind {
            Interesting::MessageStart => self.on_message_start(payload),
            Interesting::MessageDelta => self.on_message_delta(payload),
            Interesting::Error => {
                let error = payload.error.unwrap_or(serde_json::Value::Null);
                self.error = Some(ApiError::from_value(&error));
            }
            Interesting::MessageStop => {}
        }
    }

    fn on_message_start(&mut self, payload: Payload) {
        self.message_starts += 1;
        if self.message_starts == 2 {
            self.diagnostics.push(Diagnostic::RepeatedMessageStart);
        }
        let message = payload.message.unwrap_or_default();
        if let Some(model) = text(message.model.as_ref()) {
            self.model = Some(model);
        }
        if let Some(id) = text(message.id.as_ref()) {
            self.message_id = Some(id);
        }
        if let Some(usage) = message.usage.as_ref() {
            match UsageReport::from_value(usage) {
                Some(report) => self.start_usage = Some(report),
                None if usage.is_null() => {}
                None => self.diagnostics.push(Diagnostic::MalformedUsage),
            }
        }
    }

    fn on_message_delta(&mut self, payload: Payload) {
        let Some(usage) = payload.usage.as_ref() else {
            return;
        };
        match UsageReport::from_value(usage) {
            Some(report) => {
                self.final_usage = Some(report.merged_over(self.start_usage.as_ref()));
            }
            None if usage.is_null() => {}
            None => self.diagnostics.push(Diagnostic::MalformedUsage),
        }
    }

    fn into_extraction(self, dropped_events: u64) -> Extraction {
        let mut diagnostics = self.diagnostics;
        if dropped_events > 0 {
            diagnostics.push(Diagnostic::EventsTooLarge {
                count: dropped_events,
            });
        }
        let (usage, partial) = match (self.final_usage, self.start_usage) {
            (Some(usage), _) => (Some(usage), false),
            (None, Some(start)) => (Some(start.to_usage()), true),
            (None, None) => (None, false),
        };
        Extraction {
            format: BodyFormat::Sse,
            model: self.model,
            message_id: self.message_id,
            usage,
            partial,
            completed: self.completed,
            error: self.error,
            diagnostics: diagnostics.into_vec(),
        }
    }
}

/// Reads the model and usage out of a streamed (SSE) Anthropic response, chunk by chunk.
///
/// Only `message_start`, `message_delta`, `message_stop` and `error` events are looked at, and
/// only the first, second and last of those carry JSON that is parsed; `content_block_*` and
/// `ping` events are skipped without a JSON parse. See [`Extraction`] for the result.
#[derive(Debug, Default)]
pub struct UsageExtractor {
    decoder: SseDecoder,
    state: StreamState,
}

impl UsageExtractor {
    /// A fresh extractor for one stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the (decompressed) stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.decoder.feed(chunk, &mut |event| state.on_event(event));
    }

    /// The model, as soon as `message_start` has been seen.
    pub fn model(&self) -> Option<&str> {
        self.state.model.as_deref()
    }

    /// Ends the stream (end of body, cancel or interruption alike): a last event without its
    /// blank line still counts.
    pub fn finish(mut self) -> Extraction {
        let state = &mut self.state;
        self.decoder.finish(&mut |event| state.on_event(event));
        self.state.into_extraction(self.decoder.dropped_events())
    }
}

/// Reads the model and usage out of a complete, decompressed response body (the non-streaming
/// path, and any error status: a 429 or 5xx body that carries usage counts too).
///
/// Detection is JSON first: a body that starts with `{` is parsed as JSON, whatever text it
/// contains (a tool-use answer quoting `event: message_start` is still JSON). A body whose first
/// line is an SSE field or comment is decoded as a stream with the same rules as
/// [`UsageExtractor`]. Anything else gives [`BodyFormat::Unknown`] and a diagnostic.
pub fn extract_body(body: &[u8]) -> Extraction {
    let trimmed = skip_whitespace(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body));
    match trimmed.first() {
        None => Extraction::default(),
        Some(b'{') => extract_json(trimmed),
        Some(_) if looks_like_sse(trimmed) => {
            let mut extractor = UsageExtractor::new();
            extractor.feed(body);
            extractor.finish()
        }
        Some(_) => Extraction {
            format: BodyFormat::Unknown,
            diagnostics: vec![Diagnostic::UnrecognisedBody],
            ..Extraction::default()
        },
    }
}

/// Whether a body's first non-blank line is an SSE field (`event:`, `data:`, `id:`, `retry:`)
/// or comment (`:`).
pub(crate) fn looks_like_sse(body: &[u8]) -> bool {
    let body = skip_whitespace(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body));
    body.starts_with(b":")
        || [&b"event:"[..], b"data:", b"id:", b"retry:"]
            .iter()
            .any(|field| body.starts_with(field))
}

/// A JSON body: a message (`model`, `id`, `usage`) or an error envelope (`error`).
fn extract_json(body: &[u8]) -> Extraction {
    let mut extraction = Extraction {
        format: BodyFormat::Json,
        ..Extraction::default()
    };
    let payload: Payload = match serde_json::from_slice(body) {
        Ok(payload) => payload,
        Err(error) => {
            extraction.diagnostics.push(Diagnostic::MalformedJsonBody {
                error: error.to_string(),
            });
            return extraction;
        }
    };
    extraction.model = text(payload.model.as_ref());
    extraction.message_id = text(payload.id.as_ref());
    if let Some(usage) = payload.usage.as_ref() {
        match UsageReport::from_value(usage) {
            Some(report) => extraction.usage = Some(report.to_usage()),
            None if usage.is_null() => {}
            None => extraction.diagnostics.push(Diagnostic::MalformedUsage),
        }
    }
    let is_error_type = payload
        .kind
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .is_some_and(|kind| kind == "error");
    match payload.error {
        Some(error) if !error.is_null() => extraction.error = Some(ApiError::from_value(&error)),
        _ if is_error_type => {
            extraction.error = Some(ApiError::from_value(&serde_json::Value::Null));
        }
        _ => extraction.completed = true,
    }
    extraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_payload_type_without_parsing() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                br#"{"type":"message_delta","usage":{}}"#,
                Some("message_delta"),
            ),
            (br#" { "type" : "error" }"#, Some("error")),
            (br#"{"id":"x","type":"message_start"}"#, None),
            (b"[DONE]", None),
            (br#"{"type":"#, None),
            (b"", None),
        ];
        for (data, expected) in cases {
            assert_eq!(
                sniff_type(data),
                *expected,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn diagnostics_are_capped() {
        let mut diagnostics = Diagnostics::default();
        for _ in 0..20 {
            diagnostics.push(Diagnostic::MalformedUsage);
        }
        let list = diagnostics.into_vec();
        assert_eq!(list.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(list.last(), Some(&Diagnostic::Suppressed { count: 4 }));
    }
}
