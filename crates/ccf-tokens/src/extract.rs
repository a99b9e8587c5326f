//! Usage extraction from Anthropic responses: [`UsageExtractor`] for streams, [`extract_body`]
//! for complete bodies, and the [`Extraction`] they both produce.

use std::borrow::Cow;
use std::fmt;

use ccf_types::Usage;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

#[cfg(test)]
use crate::report::{text, Payload};
use crate::report::{ApiError, UsageReport};
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
    /// `content_block_delta` events seen (for the pacing of the answer: see
    /// [`UsageExtractor::content_deltas`]).
    content_deltas: u64,
}

/// The event that carries each piece of an answer's content.
const CONTENT_DELTA: &str = "content_block_delta";

impl StreamState {
    fn on_event(&mut self, event: SseEvent<'_>) {
        let kind = match Interesting::from_name(event.event) {
            Some(kind) => kind,
            None if event.event == CONTENT_DELTA => {
                self.content_deltas += 1;
                return;
            }
            // No `event:` line: look at the payload's own type.
            None if event.event == "message" => match sniff_type(event.data) {
                Some(CONTENT_DELTA) => {
                    self.content_deltas += 1;
                    return;
                }
                sniffed => match sniffed.and_then(Interesting::from_name) {
                    Some(kind) => kind,
                    None => return,
                },
            },
            None => return, // other content_block_*, ping and unknown types: never parsed
        };
        if kind == Interesting::MessageStop {
            self.completed = true;
            return;
        }
        let Some(payload) =
            parse_payload::<event::Payload<'_>>(kind, event.data, &mut self.diagnostics)
        else {
            return;
        };
        match kind {
            Interesting::MessageStart => self.on_message_start(payload),
            Interesting::MessageDelta => self.on_message_delta(payload),
            Interesting::Error => {
                let error = payload.error.unwrap_or(ErrorField {
                    error_type: None,
                    message: None,
                });
                self.error = Some(error.into_api_error());
            }
            Interesting::MessageStop => {}
        }
    }

    fn on_message_start(&mut self, payload: event::Payload<'_>) {
        self.message_starts += 1;
        if self.message_starts == 2 {
            self.diagnostics.push(Diagnostic::RepeatedMessageStart);
        }
        let message = payload.message.unwrap_or_default();
        if let Some(model) = message.model.and_then(LenientText::into_text) {
            self.model = Some(model);
        }
        if let Some(id) = message.id.and_then(LenientText::into_text) {
            self.message_id = Some(id);
        }
        match message.usage {
            Some(UsageField::Object(report)) => self.start_usage = Some(report),
            Some(UsageField::NotAnObject) => self.diagnostics.push(Diagnostic::MalformedUsage),
            None => {}
        }
    }

    fn on_message_delta(&mut self, payload: event::Payload<'_>) {
        match payload.usage {
            Some(UsageField::Object(report)) => {
                self.final_usage = Some(report.merged_over(self.start_usage.as_ref()));
            }
            Some(UsageField::NotAnObject) => self.diagnostics.push(Diagnostic::MalformedUsage),
            None => {}
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

/// Where a stream stands after the bytes fed so far ([`UsageExtractor::position`],
/// [`crate::BodyTap::stream_position`]): what a relay needs to end it well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// The bytes so far end exactly between two events (the decoder's state: see
    /// [`SseDecoder::at_event_boundary`]), so an event written after them stands on its own.
    pub at_event_boundary: bool,
    /// The stream's last event was seen: `message_stop`, or an `error` event. A stream that
    /// stops before that did not deliver a whole message.
    pub ended: bool,
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

    /// How many `content_block_delta` events (named so, or unnamed with that `type`) the bytes
    /// fed so far completed: the pieces of the answer, whose arrival times tell a paced
    /// generation from a replayed one.
    pub fn content_deltas(&self) -> u64 {
        self.state.content_deltas
    }

    /// Where the stream stands after the bytes fed so far.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            at_event_boundary: self.decoder.at_event_boundary(),
            ended: self.state.completed || self.state.error.is_some(),
        }
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

/// An event's payload parsed as `T`, or `None` with a [`Diagnostic::MalformedEvent`] noted when
/// it is not JSON of that shape.
fn parse_payload<'a, T: Deserialize<'a>>(
    kind: Interesting,
    data: &'a [u8],
    diagnostics: &mut Diagnostics,
) -> Option<T> {
    match crate::tree::from_json_bytes(data) {
        Ok(payload) => Some(payload),
        Err(error) => {
            diagnostics.push(Diagnostic::MalformedEvent {
                event: kind.name().to_string(),
                error: error.to_string(),
            });
            None
        }
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
///
/// Parsed into [`JsonBody`], a typed view that borrows its strings from `body` and builds no
/// `serde_json::Value`: the fields read are decoded as they stream past, everything else is
/// skipped. The leniency is that of the tests' reference reading through `serde_json::Value`
/// (`report::Payload`, `UsageReport::from_value`, `ApiError::from_value`), and the tests below
/// compare the two on many shapes.
fn extract_json(body: &[u8]) -> Extraction {
    let mut extraction = Extraction {
        format: BodyFormat::Json,
        ..Extraction::default()
    };
    let payload: JsonBody<'_> = match crate::tree::from_json_bytes(body) {
        Ok(payload) => payload,
        Err(error) => {
            extraction.diagnostics.push(Diagnostic::MalformedJsonBody {
                error: error.to_string(),
            });
            return extraction;
        }
    };
    extraction.model = payload.model.and_then(LenientText::into_text);
    extraction.message_id = payload.id.and_then(LenientText::into_text);
    match payload.usage {
        Some(UsageField::Object(counts)) => extraction.usage = Some(counts.to_usage()),
        Some(UsageField::NotAnObject) => extraction.diagnostics.push(Diagnostic::MalformedUsage),
        None => {}
    }
    let is_error_type = payload.kind.is_some_and(|kind| kind.is_str("error"));
    match payload.error {
        Some(error) => extraction.error = Some(error.into_api_error()),
        None if is_error_type => {
            extraction.error = Some(ApiError {
                error_type: UNKNOWN_ERROR.to_string(),
                message: String::new(),
            });
        }
        None => extraction.completed = true,
    }
    extraction
}

/// `error.type` when the upstream gave none (the reference `ApiError::from_value` too).
pub(crate) const UNKNOWN_ERROR: &str = "unknown_error";

/// The top-level fields of a JSON body that are read; a `null` field is the same as an absent
/// one. `message` is read as the reference `report::Payload` reads it, so that the same bodies
/// are rejected.
#[derive(Default, Deserialize)]
#[serde(default)]
struct JsonBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<LenientText<'a>>,
    #[serde(borrow)]
    id: Option<LenientText<'a>>,
    #[serde(borrow)]
    model: Option<LenientText<'a>>,
    usage: Option<UsageField>,
    error: Option<ErrorField>,
    #[allow(dead_code)]
    #[serde(borrow)]
    message: Option<event::MessageObject<'a>>,
}

/// The fields of an event's payload that are read (`message_start`'s `message`, `message_delta`'s
/// `usage`, `error`'s `error`), parsed as [`JsonBody`] is: strings borrowed, no
/// `serde_json::Value` built (issue 19: the `Value`s cost about 6,000 instructions per streamed
/// answer). The types are named as the tests' reference `report::Payload` and
/// `report::MessageObject` and have their fields, so the same payloads are rejected with the
/// same messages (the tests compare the two).
mod event {
    use serde::Deserialize;

    use super::{ErrorField, LenientText, Skip, UsageField};

    /// An event's payload.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub(super) struct Payload<'a> {
        #[serde(rename = "type")]
        #[allow(dead_code)]
        kind: Option<Skip>,
        #[allow(dead_code)]
        id: Option<Skip>,
        #[allow(dead_code)]
        model: Option<Skip>,
        pub(super) usage: Option<UsageField>,
        pub(super) error: Option<ErrorField>,
        #[serde(borrow)]
        pub(super) message: Option<MessageObject<'a>>,
    }

    /// `message_start`'s `message` object.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    pub(super) struct MessageObject<'a> {
        #[serde(borrow)]
        pub(super) id: Option<LenientText<'a>>,
        #[serde(borrow)]
        pub(super) model: Option<LenientText<'a>>,
        pub(super) usage: Option<UsageField>,
    }
}

/// Any JSON value, kept only when it is a string (borrowed from the body unless it had escapes).
enum LenientText<'a> {
    Text(Cow<'a, str>),
    Other,
}

impl LenientText<'_> {
    /// A non-empty string, owned.
    fn into_text(self) -> Option<String> {
        match self {
            LenientText::Text(text) if !text.is_empty() => Some(text.into_owned()),
            _ => None,
        }
    }

    fn is_str(&self, expected: &str) -> bool {
        matches!(self, LenientText::Text(text) if text == expected)
    }

    /// A string value (even empty), or `None` for anything else.
    fn into_string(self) -> Option<String> {
        match self {
            LenientText::Text(text) => Some(text.into_owned()),
            LenientText::Other => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LenientText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue(|kind: AnyKind<'_, 'de>| match kind {
            AnyKind::BorrowedStr(text) => LenientText::Text(Cow::Borrowed(text)),
            AnyKind::Str(text) => LenientText::Text(Cow::Owned(text.to_string())),
            _ => LenientText::Other,
        }))
    }
}

/// What a scalar (or a skipped container) turned out to be, handed to an [`AnyValue`] closure:
/// a string borrowed from the body (`'de`) or only for the call (`'s`, it had escapes), ...
enum AnyKind<'s, 'de> {
    BorrowedStr(&'de str),
    Str(&'s str),
    Unsigned(u64),
    Negative,
    Float(f64),
    Null,
    /// `true`/`false`, an array or an object (already skipped).
    Other,
}

/// A visitor that accepts any JSON value, validates it fully (as a `serde_json::Value` parse
/// would) without building it, and maps what it was with a closure.
struct AnyValue<F>(F);

impl<'de, T, F> Visitor<'de> for AnyValue<F>
where
    F: for<'s> FnOnce(AnyKind<'s, 'de>) -> T,
{
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Ok((self.0)(AnyKind::Other))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        Ok((self.0)(match u64::try_from(value) {
            Ok(value) => AnyKind::Unsigned(value),
            Err(_) => AnyKind::Negative,
        }))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        Ok((self.0)(AnyKind::Unsigned(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        Ok((self.0)(AnyKind::Float(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        Ok((self.0)(AnyKind::Str(value)))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<T, E> {
        Ok((self.0)(AnyKind::BorrowedStr(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok((self.0)(AnyKind::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok((self.0)(AnyKind::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok((self.0)(AnyKind::Other))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok((self.0)(AnyKind::Other))
    }
}

/// Any JSON value, validated (strings, escapes, numbers, nesting) and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue(|_: AnyKind<'_, 'de>| Skip))
    }
}

/// A token count read leniently (as `report::count`): a non-negative integer, a finite
/// non-negative float (saturating), or a string holding an integer; anything else is "not
/// reported".
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue(|kind: AnyKind<'_, 'de>| {
            Count(match kind {
                AnyKind::Unsigned(value) => Some(value),
                // `as` saturates: a float beyond u64::MAX becomes u64::MAX, never UB or a panic.
                AnyKind::Float(value) if value.is_finite() && value >= 0.0 => Some(value as u64),
                AnyKind::BorrowedStr(text) | AnyKind::Str(text) => text.trim().parse().ok(),
                _ => None,
            })
        }))
    }
}

/// The key of an object, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_string())))
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A `usage` value: an object (its counts), or something else (a diagnostic).
enum UsageField {
    /// The counts; a repeated key counts with its last value (as in a `serde_json::Map`).
    Object(UsageReport),
    NotAnObject,
}

impl<'de> Deserialize<'de> for UsageField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsageVisitor;
        impl<'de> Visitor<'de> for UsageVisitor {
            type Value = UsageField;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UsageField, A::Error> {
                let mut counts = UsageReport::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        "input_tokens" => counts.input_tokens = map.next_value::<Count>()?.0,
                        "output_tokens" => counts.output_tokens = map.next_value::<Count>()?.0,
                        "cache_creation_input_tokens" => {
                            counts.cache_creation_input_tokens = map.next_value::<Count>()?.0;
                        }
                        "cache_read_input_tokens" => {
                            counts.cache_read_input_tokens = map.next_value::<Count>()?.0;
                        }
                        "cache_creation" => {
                            let [five_minutes, one_hour] = map.next_value_seed(Counts([
                                "ephemeral_5m_input_tokens",
                                "ephemeral_1h_input_tokens",
                            ]))?;
                            counts.cache_creation_5m_input_tokens = five_minutes;
                            counts.cache_creation_1h_input_tokens = one_hour;
                        }
                        "server_tool_use" => {
                            let [searches] =
                                map.next_value_seed(Counts(["web_search_requests"]))?;
                            counts.web_search_requests = searches;
                        }
                        "service_tier" => {
                            counts.service_tier =
                                map.next_value::<LenientText<'de>>()?.into_string();
                        }
                        _ => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(UsageField::Object(counts))
            }
        }
        // Anything but an object (a `null` never gets here: it is an absent field).
        deserializer.deserialize_any(Either(UsageVisitor, || UsageField::NotAnObject))
    }
}

/// Reads the named counts of a nested object (`cache_creation`, `server_tool_use`); a value
/// that is not an object gives no counts, a repeated key counts with its last value.
struct Counts<const N: usize>([&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Counts<N> {
    type Value = [Option<u64>; N];

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct CountsVisitor<const N: usize>([&'static str; N]);
        impl<'de, const N: usize> Visitor<'de> for CountsVisitor<N> {
            type Value = [Option<u64>; N];
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object of counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = [None; N];
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match self.0.iter().position(|name| *name == key.as_ref()) {
                        Some(index) => found[index] = map.next_value::<Count>()?.0,
                        None => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(found)
            }
        }
        deserializer.deserialize_any(Either(CountsVisitor(self.0), || [None; N]))
    }
}

/// An `error` value: a string (the message), an object (`type`, `message`) or anything else.
struct ErrorField {
    error_type: Option<String>,
    message: Option<String>,
}

impl ErrorField {
    fn into_api_error(self) -> ApiError {
        ApiError {
            error_type: self.error_type.unwrap_or_else(|| UNKNOWN_ERROR.to_string()),
            message: self.message.unwrap_or_default(),
        }
    }
}

impl<'de> Deserialize<'de> for ErrorField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ErrorVisitor;
        impl<'de> Visitor<'de> for ErrorVisitor {
            type Value = ErrorField;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an error object or message")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ErrorField, E> {
                Ok(ErrorField {
                    error_type: None,
                    message: Some(value.to_string()),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ErrorField, A::Error> {
                let mut error = ErrorField {
                    error_type: None,
                    message: None,
                };
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let slot = match key.as_ref() {
                        "type" => &mut error.error_type,
                        "message" => &mut error.message,
                        _ => {
                            map.next_value::<Skip>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<LenientText<'de>>()?.into_string();
                }
                Ok(error)
            }
        }
        deserializer.deserialize_any(Either(ErrorVisitor, || ErrorField {
            error_type: None,
            message: None,
        }))
    }
}

/// A visitor that hands strings and objects to `.0` and turns any other value (validated and
/// skipped) into `.1()`.
struct Either<V, F>(V, F);

impl<'de, V, F> Visitor<'de> for Either<V, F>
where
    V: Visitor<'de>,
    F: FnOnce() -> V::Value,
{
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(formatter)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<V::Value, E> {
        // Only the error visitor reads strings; the others say "not an object".
        match self.0.visit_str::<E>(value) {
            Ok(read) => Ok(read),
            Err(_) => Ok((self.1)()),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<V::Value, E> {
        Ok((self.1)())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<V::Value, E> {
        Ok((self.1)())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<V::Value, E> {
        Ok((self.1)())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<V::Value, E> {
        Ok((self.1)())
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        Ok((self.1)())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<V::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok((self.1)())
    }
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

    /// The JSON-body extraction as it was before [`JsonBody`]: everything read through
    /// `serde_json::Value`, the reference the typed parse must match.
    fn extract_json_via_value(body: &[u8]) -> Extraction {
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
            Some(error) if !error.is_null() => {
                extraction.error = Some(ApiError::from_value(&error));
            }
            _ if is_error_type => {
                extraction.error = Some(ApiError::from_value(&serde_json::Value::Null));
            }
            _ => extraction.completed = true,
        }
        extraction
    }

    /// The stream events' handling as it was before `event::Payload`: every payload read
    /// through `serde_json::Value`, the reference the typed parse must match.
    fn on_event_via_value(state: &mut StreamState, kind: Interesting, data: &[u8]) {
        if kind == Interesting::MessageStop {
            state.completed = true;
            return;
        }
        let Some(payload) = parse_payload::<Payload>(kind, data, &mut state.diagnostics) else {
            return;
        };
        let read_usage = |usage: &serde_json::Value, diagnostics: &mut Diagnostics| {
            let report = UsageReport::from_value(usage);
            if report.is_none() && !usage.is_null() {
                diagnostics.push(Diagnostic::MalformedUsage);
            }
            report
        };
        match kind {
            Interesting::MessageStart => {
                state.message_starts += 1;
                if state.message_starts == 2 {
                    state.diagnostics.push(Diagnostic::RepeatedMessageStart);
                }
                let message = payload.message.unwrap_or_default();
                if let Some(model) = text(message.model.as_ref()) {
                    state.model = Some(model);
                }
                if let Some(id) = text(message.id.as_ref()) {
                    state.message_id = Some(id);
                }
                if let Some(usage) = message.usage.as_ref() {
                    if let Some(report) = read_usage(usage, &mut state.diagnostics) {
                        state.start_usage = Some(report);
                    }
                }
            }
            Interesting::MessageDelta => {
                if let Some(usage) = payload.usage.as_ref() {
                    if let Some(report) = read_usage(usage, &mut state.diagnostics) {
                        state.final_usage = Some(report.merged_over(state.start_usage.as_ref()));
                    }
                }
            }
            Interesting::Error => {
                let error = payload.error.unwrap_or(serde_json::Value::Null);
                state.error = Some(ApiError::from_value(&error));
            }
            Interesting::MessageStop => {}
        }
    }

    /// Feeds the same events to the typed and the `Value` handling and compares what each
    /// extracts.
    fn assert_same_events(events: &[(&str, &[u8])]) {
        let mut typed = StreamState::default();
        let mut by_value = StreamState::default();
        for (name, data) in events {
            typed.on_event(SseEvent { event: name, data });
            if let Some(kind) = Interesting::from_name(name) {
                on_event_via_value(&mut by_value, kind, data);
            }
        }
        let shown: Vec<_> = events
            .iter()
            .map(|(name, data)| format!("{name}: {}", String::from_utf8_lossy(data)))
            .collect();
        assert_eq!(
            typed.into_extraction(0),
            by_value.into_extraction(0),
            "{shown:#?}"
        );
    }

    #[test]
    fn the_typed_event_parse_matches_the_value_parse_on_odd_shapes() {
        let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":12,"output_tokens":1,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":1,"ephemeral_1h_input_tokens":2},"service_tier":"standard"}}}"#;
        let payloads: &[&str] = &[
            start,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7,"input_tokens":0,"server_tool_use":{"web_search_requests":2}}}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            r#"{"message":{"model":"m\u00e9","id":"","usage":{"input_tokens":12.7,"output_tokens":"7","cache_read_input_tokens":-3,"unknown":{"nested":[1,{"a":null}]},"cache_creation":"no","service_tier":5}}}"#,
            r#"{"message":{"usage":null,"model":null,"id":null},"usage":null,"error":null}"#,
            r#"{"message":{"usage":[1],"model":7,"id":{"x":1}}}"#,
            r#"{"message":"not an object"}"#,
            r#"{"message":null}"#,
            r#"{"message":{"model":"a","model":"b"}}"#,
            r#"{"message":{"usage":{"input_tokens":1,"input_tokens":"x"}}}"#,
            r#"{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}"#,
            r#"{"usage":"12"}"#,
            r#"{"usage":true}"#,
            r#"{"usage":{"output_tokens":1e30,"input_tokens":18446744073709551616}}"#,
            r#"{"type":"a","type":"b"}"#,
            r#"{"error":"boom"}"#,
            r#"{"error":42}"#,
            r#"{"error":{"type":"a","type":5,"message":"m"}}"#,
            r#"{"error":{"message":{"nested":"x"}}}"#,
            r#"{"id":{"x":[1,2]},"model":[true],"content":[[[[]]]]}"#,
            r#"{"usage":{"x":"\ud800"}}"#,
            r#"{"usage":{"\u0069nput_tokens":5}}"#,
            r#"{"usage":{"input_tokens":01}}"#,
            r#"{"usage":{"input_tokens":1}} trailing"#,
            r#"{"usage":{"input_tokens":1}"#,
            r#"42"#,
            r#"[DONE]"#,
            r#""#,
            r#"{}"#,
        ];
        for payload in payloads {
            for name in ["message_start", "message_delta", "error"] {
                assert_same_events(&[(name, payload.as_bytes())]);
                // After a well-formed start, as in a real stream.
                assert_same_events(&[
                    ("message_start", start.as_bytes()),
                    (name, payload.as_bytes()),
                ]);
            }
        }
        assert_same_events(&[("message_start", b"{\"message\":{\"model\":\"\xff\"}}")]);
    }

    fn assert_same(body: &[u8]) {
        assert_eq!(
            extract_json(body),
            extract_json_via_value(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn the_typed_json_parse_matches_the_value_parse_on_odd_shapes() {
        let bodies: &[&str] = &[
            r#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi \"there\""}],"usage":{"input_tokens":12,"output_tokens":7,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":1,"ephemeral_1h_input_tokens":2},"server_tool_use":{"web_search_requests":5},"service_tier":"standard"}}"#,
            r#"{"model":"m\u00e9","id":"","usage":{"input_tokens":12.7,"output_tokens":"7","cache_read_input_tokens":-3,"cache_creation_input_tokens":null,"unknown":{"nested":[1,2,{"a":null}]},"cache_creation":"no","server_tool_use":{"web_search_requests":"2 "},"service_tier":5}}"#,
            r#"{"usage":{"input_tokens":1e30,"output_tokens":-0.0,"cache_read_input_tokens":18446744073709551616,"service_tier":""}}"#,
            r#"{"usage":{"input_tokens":1,"input_tokens":"x","cache_creation":{"ephemeral_5m_input_tokens":1},"cache_creation":null}}"#,
            r#"{"usage":{"cache_creation":{"ephemeral_5m_input_tokens":1,"ephemeral_5m_input_tokens":true,"ephemeral_1h_input_tokens":[9]}}}"#,
            r#"{"usage":null,"model":null,"id":null,"type":null,"error":null}"#,
            r#"{"usage":[1,2],"model":7,"id":{"x":1}}"#,
            r#"{"usage":"12"}"#,
            r#"{"usage":true}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            r#"{"type":"error","error":{"type":"a","type":5,"message":"m","message":"n\n"}}"#,
            r#"{"type":"error","error":"boom"}"#,
            r#"{"type":"error","error":42}"#,
            r#"{"type":"error","error":[{"type":"x"}]}"#,
            r#"{"type":"error"}"#,
            r#"{"type":"error","error":null}"#,
            r#"{"type":"err\u006fr"}"#,
            r#"{"type":["error"]}"#,
            r#"{"error":{}}"#,
            r#"{"error":{"message":{"nested":"x"}}}"#,
            r#"{"message":"not an object"}"#,
            r#"{"message":{"model":"x","usage":{"input_tokens":1}},"model":"y"}"#,
            r#"{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"usage":{"input_tokens":1,}}"#,
            r#"{"usage":{"x":"\ud800"}}"#,
            r#"{"usage":{"x":"\ud83d\ude00"}}"#,
            r#"{"usage":{"\u0069nput_tokens":5}}"#,
            r#"{"usage":{"input_tokens":01}}"#,
            r#"{"usage":{"input_tokens":1}} trailing"#,
            r#"{"usage":{"input_tokens":1}"#,
            r#"{}"#,
            r#"{"content":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        ];
        for body in bodies {
            assert_same(body.as_bytes());
        }
        let deep = format!(
            r#"{{"usage":{{"unknown":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_same(deep.as_bytes());
        assert_same(b"{\"model\":\"\xff\"}");
    }

    #[test]
    fn the_typed_json_parse_matches_the_value_parse_on_the_fixtures_and_fuzz_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for dir in [
            root.join("tests/fixtures/json"),
            root.join("../../fuzz/corpus/usage_extractor"),
            root.join("../../fuzz/regressions/usage_extractor"),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("listing inputs").path();
                let body = std::fs::read(&path).expect("reading an input");
                let trimmed = skip_whitespace(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body));
                if trimmed.first() == Some(&b'{') {
                    assert_same(trimmed);
                    checked += 1;
                }
            }
        }
        assert!(checked > 0, "no JSON inputs found");
    }

    mod typed_versus_value {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<u64>().prop_map(|n| json!(n)),
                any::<i64>().prop_map(|n| json!(n)),
                (-1e20f64..1e20).prop_map(|f| json!(f)),
                "[a-z0-9 \\-\"é]{0,6}".prop_map(Value::String),
                Just(json!("error")),
                Just(json!(" 42 ")),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("type"),
                Just("id"),
                Just("model"),
                Just("usage"),
                Just("error"),
                Just("message"),
                Just("input_tokens"),
                Just("output_tokens"),
                Just("cache_creation_input_tokens"),
                Just("cache_read_input_tokens"),
                Just("cache_creation"),
                Just("ephemeral_5m_input_tokens"),
                Just("ephemeral_1h_input_tokens"),
                Just("server_tool_use"),
                Just("web_search_requests"),
                Just("service_tier"),
                Just("content"),
            ]
            .prop_map(str::to_string)
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((key(), inner), 0..6)
                        .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
                ]
            })
        }

        /// A payload of `fields`, written by hand so that repeated keys stay repeated.
        fn object(fields: &[(String, Value)]) -> String {
            format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(key, value)| format!("{}:{}", Value::String(key.clone()), value))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }

        proptest! {
            #[test]
            fn same_events(
                start in prop::collection::vec((key(), value()), 0..6),
                message in prop::collection::vec((key(), value()), 0..6),
                delta in prop::collection::vec((key(), value()), 0..6),
                error in prop::collection::vec((key(), value()), 0..6),
            ) {
                // `message_start` with a `message` object of its own, as upstreams send it
                // (the object written by hand too, so its repeated keys stay repeated).
                let start = format!(
                    "{{\"message\":{}{}{}}}",
                    object(&message),
                    if start.is_empty() { "" } else { "," },
                    object(&start).trim_start_matches('{').trim_end_matches('}'),
                );
                let (delta, error) = (object(&delta), object(&error));
                super::assert_same_events(&[
                    ("message_start", start.as_bytes()),
                    ("message_delta", delta.as_bytes()),
                    ("error", error.as_bytes()),
                ]);
            }

            #[test]
            fn same_extraction(fields in prop::collection::vec((key(), value()), 0..6)) {
                // Written by hand so that repeated keys stay repeated.
                let body = format!(
                    "{{{}}}",
                    fields
                        .iter()
                        .map(|(key, value)| format!("{}:{}", Value::String(key.clone()), value))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                prop_assert_eq!(
                    super::extract_json(body.as_bytes()),
                    super::extract_json_via_value(body.as_bytes()),
                    "{}",
                    body
                );
            }
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
