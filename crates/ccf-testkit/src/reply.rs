//! What a scripted reply does: [`Reply`], its token counts ([`MockUsage`]) and how the reply
//! ended ([`ReplyOutcome`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The model named in replies when the request body names none.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5-20250929";

/// Token counts the mock reports in `usage` (JSON body, `message_start` and `message_delta`).
///
/// `cache_creation` is reported as `cache_creation_input_tokens` and, split by TTL, as
/// `cache_creation.ephemeral_5m_input_tokens` (the 1-hour bucket comes from
/// [`Reply::cache_creation_1h`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockUsage {
    /// `input_tokens`.
    pub input: u64,
    /// `output_tokens` (the final count; `message_start` carries a provisional 1).
    pub output: u64,
    /// `cache_creation_input_tokens` written with the 5-minute TTL.
    pub cache_creation: u64,
    /// `cache_read_input_tokens`.
    pub cache_read: u64,
}

impl Default for MockUsage {
    /// The counts of the protocol reference example: 12 in, 6 out, 5 cache write, 7 cache read.
    fn default() -> Self {
        MockUsage {
            input: 12,
            output: 6,
            cache_creation: 5,
            cache_read: 7,
        }
    }
}

/// How the mock's answer to one request ended, as seen by the mock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyOutcome {
    /// The reply is still being produced (waiting for its headers, streaming, or stalled).
    Pending,
    /// The whole body was handed to the connection (for a stream: through `message_stop`).
    Completed,
    /// The peer closed or reset the connection while the mock was still sending, stalling or
    /// hanging.
    ClientGone,
    /// The mock cut the reply short on purpose ([`Reply::drop_after_events`]) or was shut down
    /// while the reply was in flight.
    Aborted,
}

impl ReplyOutcome {
    /// True once the reply has ended one way or another.
    pub fn is_finished(self) -> bool {
        self != ReplyOutcome::Pending
    }
}

/// What the body of a reply is made of.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// Route like the real API (see [`Reply::auto`]).
    Auto,
    /// A non-streaming message.
    Json,
    /// A streamed message.
    Sse,
    /// This status with this JSON body, verbatim.
    Status {
        status: u16,
        body: serde_json::Value,
    },
    /// This status with an Anthropic error envelope carrying the request id.
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// Never send headers.
    Hang,
    /// Exactly these body chunks as `text/event-stream`.
    RawSse(Vec<Bytes>),
}

/// What happens once the first `n` body frames are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Send everything, then end the body normally.
    Complete,
    /// Send `n` frames, then never send another byte.
    StallAfter(usize),
    /// Send `n` frames, then close the connection without terminating the body.
    DropAfter(usize),
}

/// A scripted answer: build one with a constructor, refine it with the builder methods, hand it
/// to [`MockUpstream::enqueue`](crate::MockUpstream::enqueue) or
/// [`MockUpstream::set_default`](crate::MockUpstream::set_default).
///
/// Bodies are split in *events*, each written as its own body frame: for a stream the events are,
/// in order, `message_start`, `content_block_start`, `ping`, `deltas` x `content_block_delta`,
/// `content_block_stop`, `message_delta`, `message_stop` (so `deltas + 6` events); a JSON body
/// is a single event; [`Reply::raw_sse`] chunks are one event each. The event-counting modifiers
/// ([`Reply::stall_after_events`], [`Reply::drop_after_events`],
/// [`Reply::error_event_after`]) count these.
///
/// Every response carries `request-id: req_mock_<n>` (`n` counts requests from 1).
#[derive(Clone, Debug)]
pub struct Reply {
    pub(crate) kind: Kind,
    pub(crate) model: Option<String>,
    pub(crate) usage: MockUsage,
    pub(crate) cache_creation_1h: u64,
    pub(crate) deltas: usize,
    pub(crate) chunk_delay: Option<Duration>,
    pub(crate) header_delay: Option<Duration>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) invalid_header: Option<String>,
    pub(crate) end: End,
    pub(crate) gzip: bool,
    pub(crate) full_usage_in_delta: bool,
    pub(crate) error_event: Option<(usize, String, String)>,
}

impl Default for Reply {
    fn default() -> Self {
        Reply::auto()
    }
}

impl Reply {
    fn of(kind: Kind) -> Reply {
        Reply {
            kind,
            model: None,
            usage: MockUsage::default(),
            cache_creation_1h: 0,
            deltas: 3,
            chunk_delay: None,
            header_delay: None,
            headers: Vec::new(),
            invalid_header: None,
            end: End::Complete,
            gzip: false,
            full_usage_in_delta: false,
            error_event: None,
        }
    }

    /// Answer like the real API (the default reply):
    /// - `POST /v1/messages`: a stream if the JSON body has `"stream": true`, else a JSON
    ///   message; a body that is not JSON gets a 400 `invalid_request_error`;
    /// - `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, N = body bytes / 4 (at least 1);
    /// - `GET /v1/models`: a models list;
    /// - `HEAD /` or `GET /`: 200 with an empty body;
    /// - anything else: 404 `not_found_error`.
    ///
    /// The query string is ignored when routing.
    pub fn auto() -> Reply {
        Reply::of(Kind::Auto)
    }

    /// A non-streaming message (`application/json`), whatever the request.
    pub fn json() -> Reply {
        Reply::of(Kind::Json)
    }

    /// A streamed message (`text/event-stream`), whatever the request.
    pub fn sse() -> Reply {
        Reply::of(Kind::Sse)
    }

    /// This status with this JSON body, sent verbatim (`application/json`).
    ///
    /// A code outside 100..=999 is answered as 500.
    pub fn status(code: u16, body_json: serde_json::Value) -> Reply {
        Reply::of(Kind::Status {
            status: code,
            body: body_json,
        })
    }

    /// This status with the Anthropic error envelope
    /// `{"type":"error","error":{"type":error_type,"message":message},"request_id":"req_mock_<n>"}`.
    pub fn error(code: u16, error_type: impl Into<String>, message: impl Into<String>) -> Reply {
        Reply::of(Kind::Error {
            status: code,
            error_type: error_type.into(),
            message: message.into(),
        })
    }

    /// 529 `overloaded_error` "Overloaded", like the real API under load.
    pub fn overloaded() -> Reply {
        Reply::error(529, "overloaded_error", "Overloaded")
    }

    /// 429 `rate_limit_error` with `retry-after: <retry_after_secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Reply {
        Reply::error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        )
        .header("retry-after", &retry_after_secs.to_string())
    }

    /// Accept the request (its body is read and recorded) and never send headers; the reply ends
    /// as [`ReplyOutcome::ClientGone`] when the peer goes away.
    pub fn hang() -> Reply {
        Reply::of(Kind::Hang)
    }

    /// Send exactly these body chunks, one frame each, with `content-type: text/event-stream`
    /// (for malformed or unusual streams).
    pub fn raw_sse<I, C>(chunks: I) -> Reply
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        Reply::of(Kind::RawSse(chunks.into_iter().map(Into::into).collect()))
    }

    /// Send `count` copies of `event` as `text/event-stream`, one frame each: a large stream
    /// made cheaply (every frame shares one buffer), for backpressure tests with
    /// [`MockUpstream::body_bytes_sent`](crate::MockUpstream::body_bytes_sent).
    pub fn bulk_sse(event: impl Into<Bytes>, count: usize) -> Reply {
        Reply::of(Kind::RawSse(vec![event.into(); count]))
    }

    /// The model named in the reply (default: the request body's `model`, else
    /// [`DEFAULT_MODEL`]).
    pub fn model(mut self, model: impl Into<String>) -> Reply {
        self.model = Some(model.into());
        self
    }

    /// The token counts reported (default: [`MockUsage::default`]).
    pub fn usage(mut self, usage: MockUsage) -> Reply {
        self.usage = usage;
        self
    }

    /// Cache-write tokens with the 1-hour TTL, reported in
    /// `cache_creation.ephemeral_1h_input_tokens` and added to `cache_creation_input_tokens`
    /// (default 0).
    pub fn cache_creation_1h(mut self, tokens: u64) -> Reply {
        self.cache_creation_1h = tokens;
        self
    }

    /// Number of `text_delta` events in a stream, and of words in a JSON message (default 3).
    pub fn deltas(mut self, count: usize) -> Reply {
        self.deltas = count;
        self
    }

    /// Wait this long between two body events (not before the first one).
    pub fn chunk_delay(mut self, delay: Duration) -> Reply {
        self.chunk_delay = (!delay.is_zero()).then_some(delay);
        self
    }

    /// Wait this long before sending the response headers.
    pub fn header_delay(mut self, delay: Duration) -> Reply {
        self.header_delay = (!delay.is_zero()).then_some(delay);
        self
    }

    /// Add a response header; it replaces a default header of the same name (`content-type`,
    /// `request-id`, `cache-control`), and repeated calls with one name send every value.
    ///
    /// An invalid name or value makes the mock answer 500 `api_error` naming the header, so the
    /// mistake shows up in the test instead of being ignored.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.headers.push((name, value)),
            _ => {
                self.invalid_header = Some(format!("invalid scripted header {name:?}: {value:?}"));
            }
        }
        self
    }

    /// Send the headers and the first `events` events, then stall forever (an idle stream); the
    /// reply ends as [`ReplyOutcome::ClientGone`] when the peer goes away.
    pub fn stall_after_events(mut self, events: usize) -> Reply {
        self.end = End::StallAfter(events);
        self
    }

    /// Send the headers and the first `events` events, then close the connection abruptly (no
    /// terminating chunk; a reset stream on HTTP/2); the reply ends as [`ReplyOutcome::Aborted`].
    pub fn drop_after_events(mut self, events: usize) -> Reply {
        self.end = End::DropAfter(events);
        self
    }

    /// Compress the body with gzip (`content-encoding: gzip`). Each event is compressed and
    /// flushed as its own frame, so a stream stays a stream.
    pub fn gzip(mut self) -> Reply {
        self.gzip = true;
        self
    }

    /// In a stream, repeat the input and cache counts in `message_delta.usage` (as newer API
    /// responses do) instead of sending only `output_tokens`.
    pub fn full_usage_in_delta(mut self) -> Reply {
        self.full_usage_in_delta = true;
        self
    }

    /// In a stream, send the first `events` events, then
    /// `event: error` / `data: {"type":"error","error":{"type":error_type,"message":message}}`,
    /// then end the body normally.
    pub fn error_event_after(
        mut self,
        events: usize,
        error_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Reply {
        self.error_event = Some((events, error_type.into(), message.into()));
        self
    }
}
