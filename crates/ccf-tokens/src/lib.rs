//! Token accounting for cc-forwarder: reading the model and the exact token usage out of
//! Anthropic responses, and estimating a request's input tokens when no upstream can count them.
//!
//! This crate is pure: bytes in, values and diagnostics out. It does no IO, spawns nothing, holds
//! no clock and never panics on any input; it knows nothing of HTTP, endpoints, configuration or
//! storage. The forwarding engine copies each response frame into it as the frame goes by, so it
//! never delays or alters what the client receives.
//!
//! Main types:
//! - [`BodyTap`]: what the engine attaches to a response. Built from the `content-type` and
//!   `content-encoding` headers, fed every frame, finished into an [`Extraction`]. It decodes
//!   gzip, deflate (zlib or raw), br and zstd for its own parsing only.
//! - [`UsageExtractor`]: the streaming reader of Anthropic server-sent events (`message_start`,
//!   `message_delta`, `message_stop`, `error`), with the usage merge rule.
//! - [`extract_body`]: the same for a complete body (JSON first, SSE when it looks like SSE).
//! - [`Extraction`]: model, message id, [`ccf_types::Usage`], partial/completed flags, the
//!   upstream's [`ApiError`] and [`Diagnostic`]s.
//! - [`SseDecoder`]: the incremental, allocation-free-in-steady-state SSE decoder underneath.
//! - [`estimate_input_tokens`]: the `count_tokens` fallback (method in
//!   `docs/token-estimation.md`); [`estimate_parsed_request`], the same as the API counts a
//!   request, for the relay-honesty check.
//! - [`tree::Json`]: a request body parsed once into a tree borrowing its strings, read by the
//!   forwarder for the request's fields and session and by the estimate.

mod estimate;
mod extract;
mod report;
mod sse;
mod tap;
pub mod tree;

pub use estimate::{
    estimate_input_tokens, estimate_parsed_request, estimate_request_input, EstimateError,
    InputEstimate,
};
pub use extract::{
    extract_body, BodyFormat, Diagnostic, Extraction, StreamPosition, UsageExtractor,
};
pub use report::ApiError;
pub use sse::{SseDecoder, SseEvent, DEFAULT_MAX_EVENT_BYTES};
pub use tap::{BodyTap, DEFAULT_MAX_BUFFERED_BYTES};
