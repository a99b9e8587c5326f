//! A local estimate of a request's input tokens, for `POST /v1/messages/count_tokens` when no
//! upstream can count them. The method and its measured error are in `docs/token-estimation.md`.
//!
//! Every piece of text the model would read is weighed by script: CJK characters (Han,
//! Hiragana, Katakana, Hangul, CJK punctuation and full-width forms) cost about one token each;
//! other non-ASCII characters (Cyrillic, Greek, Arabic, ...) about half a token, emoji and other
//! characters beyond the Basic Multilingual Plane one and a half; ASCII punctuation, symbols and
//! digits (dense in code, JSON and numbers) about a third of a token; the remaining ASCII
//! (letters, spaces, line ends) about `1 / estimation_ratio` of a token. Fixed overheads are added
//! per request, message, content block and tool, plus the tool-use system prompt when tools are
//! present, and flat amounts for images and documents whose content is not text.
//!
//! The body is read into a tree that borrows its strings from the body ([`Json`]) rather than a
//! `serde_json::Value`: the estimate runs for every request the relay-honesty usage check
//! watches, and copying every key and string of the request was most of its cost. The forwarder
//! parses a request into that tree once and hands it to [`estimate_parsed_request`].

use crate::tree::{Json, Node};

/// Tokens for the framing of any request (turn markers around the conversation).
const REQUEST_OVERHEAD: f64 = 4.0;
/// Tokens for one message's role marker.
const MESSAGE_OVERHEAD: f64 = 4.0;
/// Tokens for the framing of one structured block (tool_use, tool_result, document, ...).
const BLOCK_OVERHEAD: f64 = 6.0;
/// Tokens for the framing of one tool definition.
const TOOL_OVERHEAD: f64 = 8.0;
/// The system prompt the API adds when `tools` is not empty. Anthropic's pricing page publishes
/// 159 to 530 tokens depending on model and `tool_choice` for the Claude 3 family; the middle of
/// that range is used.
const TOOL_USE_SYSTEM_PROMPT: f64 = 340.0;
/// A tool defined by Anthropic (`bash_*`, `text_editor_*`, `web_search_*`, `computer_*`, ...)
/// whose definition the API adds; a guess of the same order as the tool-use system prompt.
const SERVER_TOOL_DEFINITION: f64 = 300.0;
/// An image: the API's formula is width × height / 750, at most about 1,600 tokens after the
/// API's own downscaling. Dimensions are not decoded here, so the upper bound is used.
const IMAGE_TOKENS: f64 = 1600.0;
/// A PDF (or other non-text) document: Anthropic publishes 1,500 to 3,000 tokens per page; the
/// page count is not decoded here, so one page at the middle of that range is used.
const BINARY_DOCUMENT_TOKENS: f64 = 2250.0;
/// `redacted_thinking` blocks carry encrypted data whose token count is unknown.
const REDACTED_THINKING_TOKENS: f64 = 100.0;

/// Tokens per CJK character.
const CJK_WEIGHT: f64 = 1.0;
/// Tokens per non-ASCII, non-CJK character.
const OTHER_NON_ASCII_WEIGHT: f64 = 0.5;
/// Tokens per ASCII punctuation, symbol or digit character.
const ASCII_SYMBOL_WEIGHT: f64 = 1.0 / 3.0;
/// Tokens per character outside the Basic Multilingual Plane that is not CJK (mostly emoji,
/// four UTF-8 bytes that byte-level tokenizers split).
const ASTRAL_WEIGHT: f64 = 1.5;

/// Why a request body cannot be estimated. The forwarder answers 400 `invalid_request_error`.
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    /// The body is not JSON.
    #[error("invalid request body: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("invalid request body: expected a JSON object")]
    NotAnObject,
}

/// Estimates the input tokens of a Messages API request body (`system`, `messages`, `tools`).
///
/// `estimation_ratio` is the number of ordinary ASCII characters per token (configuration
/// `token_counting.estimation_ratio`, 4.0 by default); a value that is not a positive finite
/// number is replaced by 4.0. Fields the model does not read (`model`, `max_tokens`,
/// `metadata`, ...) are ignored, and unexpected shapes are counted as well as they can be rather
/// than rejected: only a body that is not a JSON object is an error.
pub fn estimate_input_tokens(body: &[u8], estimation_ratio: f64) -> Result<u64, EstimateError> {
    let counter = count_request(body, estimation_ratio, false)?;
    // Saturating float-to-int conversion: never a panic, whatever the input.
    Ok((counter.tokens + counter.opaque_tokens).ceil() as u64)
}

/// What [`estimate_request_input`] can say about a request's input tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEstimate {
    /// The tokens of everything whose size can be read locally: text, tool definitions and
    /// inputs, framing overheads.
    pub known_tokens: u64,
    /// Blocks whose size cannot be known locally (images, PDFs and other non-text documents,
    /// `redacted_thinking`): each adds an unknown number of tokens, from a few dozen (a small
    /// image) to thousands (a PDF of many pages), on top of `known_tokens`.
    pub unknown_blocks: u32,
}

/// Estimates a request's input tokens as the API counts them, for comparing with what an
/// upstream reported: thinking blocks of earlier turns are left out (the API drops them from
/// the context: only the current turn's thinking, after the last user message that is not a
/// tool result, is read), and content whose size cannot be known locally is counted apart in
/// [`InputEstimate::unknown_blocks`] instead of as a flat amount, so a caller can treat the
/// estimate as a lower bound.
pub fn estimate_request_input(
    body: &[u8],
    estimation_ratio: f64,
) -> Result<InputEstimate, EstimateError> {
    let request = Json::parse(body).map_err(EstimateError::InvalidJson)?;
    estimate_parsed_request(&request, estimation_ratio)
}

/// [`estimate_request_input`] of a body already parsed (the forwarder's one parse of a request,
/// [`Json::parse`]).
pub fn estimate_parsed_request(
    request: &Json<'_>,
    estimation_ratio: f64,
) -> Result<InputEstimate, EstimateError> {
    let counter = count_parsed(request, estimation_ratio, true)?;
    Ok(InputEstimate {
        known_tokens: counter.tokens.ceil() as u64,
        unknown_blocks: counter.opaque_blocks,
    })
}

/// Where the current turn starts: the index of the last user message that is not only tool
/// results (a tool result continues the assistant's turn). Thinking before it is of earlier
/// turns.
fn current_turn_start<N: Node>(messages: &[N]) -> usize {
    messages
        .iter()
        .rposition(|message| {
            message.get("role").and_then(N::as_str) == Some("user")
                && match message.get("content").and_then(N::as_array) {
                    Some(blocks) => !blocks
                        .iter()
                        .all(|block| block.get("type").and_then(N::as_str) == Some("tool_result")),
                    None => true,
                }
        })
        .unwrap_or(0)
}

/// Counts a request body; `drop_earlier_thinking` leaves out the thinking of earlier turns.
fn count_request(
    body: &[u8],
    estimation_ratio: f64,
    drop_earlier_thinking: bool,
) -> Result<Counter, EstimateError> {
    let request = Json::parse(body).map_err(EstimateError::InvalidJson)?;
    count_parsed(&request, estimation_ratio, drop_earlier_thinking)
}

/// Counts a parsed request body ([`count_request`]).
fn count_parsed<N: Node>(
    request: &N,
    estimation_ratio: f64,
    drop_earlier_thinking: bool,
) -> Result<Counter, EstimateError> {
    if !request.is_object() {
        return Err(EstimateError::NotAnObject);
    }
    let ratio = if estimation_ratio.is_finite() && estimation_ratio > 0.0 {
        estimation_ratio
    } else {
        4.0
    };
    let mut counter = Counter::new(ratio);
    counter.tokens += REQUEST_OVERHEAD;
    if let Some(system) = request.get("system") {
        counter.content(system);
    }
    if let Some(messages) = request.get("messages").and_then(N::as_array) {
        let turn_start = current_turn_start(messages);
        for (index, message) in messages.iter().enumerate() {
            counter.skip_thinking = drop_earlier_thinking && index < turn_start;
            counter.tokens += MESSAGE_OVERHEAD;
            match message.get("content") {
                Some(content) => counter.content(content),
                None => counter.value_strings(message),
            }
        }
    }
    if let Some(tools) = request.get("tools").and_then(N::as_array) {
        if !tools.is_empty() {
            counter.tokens += TOOL_USE_SYSTEM_PROMPT;
        }
        for tool in tools {
            counter.tool(tool);
        }
    }
    Ok(counter)
}

/// Adds up the weighted characters and overheads.
#[derive(Debug)]
struct Counter {
    tokens: f64,
    ascii_weight: f64,
    /// Flat amounts for content whose size is unknown here, and how many such blocks.
    opaque_tokens: f64,
    opaque_blocks: u32,
    /// The blocks being read are of an earlier turn whose thinking the API drops.
    skip_thinking: bool,
}

impl Counter {
    fn new(ratio: f64) -> Self {
        Self {
            tokens: 0.0,
            ascii_weight: 1.0 / ratio,
            opaque_tokens: 0.0,
            opaque_blocks: 0,
            skip_thinking: false,
        }
    }

    /// A block whose size is unknown here, counted as `flat` tokens by the plain estimate.
    fn opaque(&mut self, flat: f64) {
        self.opaque_tokens += flat;
        self.opaque_blocks = self.opaque_blocks.saturating_add(1);
    }

    /// Plain text.
    fn text(&mut self, text: &str) {
        self.tokens += text_tokens(text, self.ascii_weight);
    }

    /// A JSON value the model reads in serialized form (tool inputs, schemas).
    fn json<N: Node>(&mut self, value: &N) {
        let serialized = value.serialized();
        self.text(&serialized);
    }

    /// `content` of a message, `system`, or a `tool_result`: a string or a list of blocks.
    fn content<N: Node>(&mut self, content: &N) {
        if let Some(text) = content.as_str() {
            self.text(text);
        } else if let Some(blocks) = content.as_array() {
            for block in blocks {
                self.block(block);
            }
        } else if !content.is_null() {
            self.value_strings(content);
        }
    }

    /// One content block.
    fn block<N: Node>(&mut self, block: &N) {
        if !block.is_object() {
            // A bare string in a block list (older clients send these in `system`).
            self.content(block);
            return;
        }
        let fields = block;
        let kind = fields.get("type").and_then(N::as_str).unwrap_or("");
        match kind {
            "text" => self.field_text(fields, "text"),
            "thinking" | "redacted_thinking" if self.skip_thinking => {}
            "thinking" => self.field_text(fields, "thinking"),
            "redacted_thinking" => self.opaque(REDACTED_THINKING_TOKENS),
            "image" => self.opaque(IMAGE_TOKENS),
            "tool_use" | "server_tool_use" | "mcp_tool_use" => {
                self.tokens += BLOCK_OVERHEAD;
                self.field_text(fields, "name");
                if let Some(input) = fields.get("input") {
                    self.json(input);
                }
            }
            "tool_result" | "mcp_tool_result" => {
                self.tokens += BLOCK_OVERHEAD;
                if let Some(content) = fields.get("content") {
                    self.content(content);
                }
            }
            "document" => {
                self.tokens += BLOCK_OVERHEAD;
                self.field_text(fields, "title");
                self.field_text(fields, "context");
                self.document_source(fields.get("source"));
            }
            _ => {
                // search results, web search results, future block types: read what text they
                // carry, minus identifiers and opaque payloads.
                self.tokens += BLOCK_OVERHEAD;
                self.value_strings(block);
            }
        }
    }

    fn document_source<N: Node>(&mut self, source: Option<&N>) {
        let Some(source) = source else {
            return;
        };
        match source.get("type").and_then(N::as_str) {
            Some("text") => {
                if let Some(data) = source.get("data").and_then(N::as_str) {
                    self.text(data);
                }
            }
            Some("content") => {
                if let Some(content) = source.get("content") {
                    self.content(content);
                }
            }
            // base64 PDFs, URLs, file ids: content unknown here.
            _ => self.opaque(BINARY_DOCUMENT_TOKENS),
        }
    }

    /// One tool definition.
    fn tool<N: Node>(&mut self, tool: &N) {
        self.tokens += TOOL_OVERHEAD;
        if !tool.is_object() {
            self.value_strings(tool);
            return;
        }
        let fields = tool;
        self.field_text(fields, "name");
        self.field_text(fields, "description");
        match fields.get("input_schema") {
            Some(schema) => self.json(schema),
            // An Anthropic-defined tool (`{"type": "bash_20250124", "name": "bash"}`): its
            // definition is added by the API.
            None if fields.get("type").and_then(N::as_str).is_some() => {
                self.tokens += SERVER_TOOL_DEFINITION;
            }
            None => {}
        }
    }

    fn field_text<N: Node>(&mut self, fields: &N, key: &str) {
        if let Some(text) = fields.get(key).and_then(N::as_str) {
            self.text(text);
        }
    }

    /// Every string in a value, except identifiers, signatures and opaque payloads.
    fn value_strings<N: Node>(&mut self, value: &N) {
        if let Some(text) = value.as_str() {
            self.text(text);
        } else if let Some(items) = value.as_array() {
            for item in items {
                self.value_strings(item);
            }
        } else {
            for (key, item) in value.members() {
                if !is_opaque_key(key) {
                    self.value_strings(item);
                }
            }
        }
    }
}

/// Keys whose values the model does not read as text.
fn is_opaque_key(key: &str) -> bool {
    matches!(
        key,
        "type"
            | "id"
            | "tool_use_id"
            | "signature"
            | "cache_control"
            | "media_type"
            | "encrypted_content"
            | "encrypted_index"
            | "data"
            | "file_id"
            | "citations"
    )
}

/// The weighted token count of one piece of text.
fn text_tokens(text: &str, ascii_weight: f64) -> f64 {
    let mut plain_ascii = 0u64;
    let mut ascii_symbols = 0u64;
    let mut cjk = 0u64;
    let mut other = 0u64;
    let mut astral = 0u64;
    if text.is_ascii() {
        // Most text (English, code, JSON) is ASCII: counted byte by byte without decoding
        // characters, in a loop the compiler vectorises (the estimate runs for every watched
        // request, and the character loop below was most of its time).
        // Counted in bytes per chunk of at most 255 (a byte-wide count cannot overflow), so
        // that each vector lane is a byte.
        ascii_symbols = text
            .as_bytes()
            .chunks(255)
            .map(|chunk| {
                let symbols = chunk
                    .iter()
                    .fold(0u8, |count, &byte| count + u8::from(is_ascii_symbol(byte)));
                u64::from(symbols)
            })
            .sum();
        plain_ascii = text.len() as u64 - ascii_symbols;
    } else {
        for character in text.chars() {
            if character.is_ascii() {
                // Punctuation and digits: tokenizers split numbers into short digit groups,
                // and code and JSON punctuation rarely merges with neighbouring letters.
                if character.is_ascii_punctuation() || character.is_ascii_digit() {
                    ascii_symbols += 1;
                } else {
                    plain_ascii += 1;
                }
            } else if is_cjk(character) {
                cjk += 1;
            } else if u32::from(character) > 0xFFFF {
                astral += 1;
            } else {
                other += 1;
            }
        }
    }
    plain_ascii as f64 * ascii_weight
        + ascii_symbols as f64 * ASCII_SYMBOL_WEIGHT.max(ascii_weight)
        + cjk as f64 * CJK_WEIGHT
        + other as f64 * OTHER_NON_ASCII_WEIGHT.max(ascii_weight)
        + astral as f64 * ASTRAL_WEIGHT
}

/// ASCII punctuation or a digit (`char::is_ascii_punctuation || is_ascii_digit`): `!` to `@`,
/// `[` to `` ` ``, `{` to `~`, written as ranges so that the counting loop needs no branch.
fn is_ascii_symbol(byte: u8) -> bool {
    (byte.wrapping_sub(b'!') <= b'@' - b'!')
        | (byte.wrapping_sub(b'[') <= b'`' - b'[')
        | (byte.wrapping_sub(b'{') <= b'~' - b'{')
}

/// Han, Hiragana, Katakana, Hangul, Bopomofo, CJK punctuation and full-width forms.
fn is_cjk(character: char) -> bool {
    matches!(u32::from(character),
        0x1100..=0x11FF       // Hangul Jamo
        | 0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3000..=0x303F     // CJK symbols and punctuation
        | 0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3100..=0x31FF     // Bopomofo, Hangul compatibility Jamo, Kanbun, Katakana ext.
        | 0x3200..=0x33FF     // enclosed CJK letters, CJK compatibility
        | 0x3400..=0x4DBF     // CJK extension A
        | 0x4E00..=0x9FFF     // CJK unified ideographs
        | 0xA960..=0xA97F     // Hangul Jamo extended A
        | 0xAC00..=0xD7FF     // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0xFE30..=0xFE4F     // CJK compatibility forms
        | 0xFF00..=0xFFEF     // half-width and full-width forms
        | 0x20000..=0x3134F   // CJK extensions B to G, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_input(body: &serde_json::Value) -> InputEstimate {
        estimate_request_input(body.to_string().as_bytes(), 4.0).unwrap()
    }

    #[test]
    fn the_request_estimate_drops_earlier_turns_thinking_and_keeps_the_current_turns() {
        let thought = "weighing every option at length ".repeat(100);
        let earlier = serde_json::json!({"messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": thought, "signature": "sig"},
                {"type": "text", "text": "first answer"}]},
            {"role": "user", "content": "second question"}]});
        let without = serde_json::json!({"messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
            {"role": "user", "content": "second question"}]});
        assert_eq!(request_input(&earlier), request_input(&without));
        // The plain estimate (count_tokens' fallback) is unchanged: it reads every block.
        assert!(
            estimate_input_tokens(earlier.to_string().as_bytes(), 4.0).unwrap()
                > request_input(&earlier).known_tokens + 500
        );
        // A tool result continues the turn: the thinking before it is read.
        let current = serde_json::json!({"messages": [
            {"role": "user", "content": "question"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": thought, "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "look", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "found"}]}]});
        assert!(request_input(&current).known_tokens > 500);
    }

    /// The ASCII fast path counts as the character loop does, for every ASCII character.
    #[test]
    fn ascii_text_is_weighed_as_the_character_loop_weighs_it() {
        for byte in 0u8..=127 {
            let character = char::from(byte);
            assert_eq!(
                is_ascii_symbol(byte),
                character.is_ascii_punctuation() || character.is_ascii_digit(),
                "{byte:#04x}"
            );
        }
        let ascii = "fn main() { let x = 42; println!(\"{x}\"); } // done\n\t~`[]";
        // The same text with one non-ASCII character takes the character loop.
        let mixed = format!("{ascii}é");
        let ascii_weight = 0.25;
        let difference = text_tokens(&mixed, ascii_weight) - text_tokens(ascii, ascii_weight);
        assert!(
            (difference - OTHER_NON_ASCII_WEIGHT).abs() < 1e-9,
            "{difference}"
        );
    }

    #[test]
    fn images_and_binary_documents_are_unknown_in_the_request_estimate() {
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "text", "text": "what do these show?"}]}]});
        let estimate = request_input(&body);
        assert_eq!(estimate.unknown_blocks, 2);
        assert!(estimate.known_tokens < 100, "{estimate:?}");
        assert!(
            estimate_input_tokens(body.to_string().as_bytes(), 4.0).unwrap()
                >= estimate.known_tokens + 1600 + 2250
        );
    }

    /// Both estimates of `body`, read into the borrowed tree and into a `serde_json::Value`
    /// (what the estimate read before): they must be equal to the last bit.
    fn both_ways(body: &[u8]) -> Option<[(f64, f64, u32); 2]> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let tree: Json<'_> = serde_json::from_slice(body).unwrap();
        let mut results = [(0.0, 0.0, 0); 2];
        for (slot, drop) in [false, true].into_iter().enumerate() {
            let from_value = count_parsed(&value, 4.0, drop);
            let from_tree = count_parsed(&tree, 4.0, drop);
            match (from_value, from_tree) {
                (Ok(one), Ok(other)) => {
                    let one = (one.tokens, one.opaque_tokens, one.opaque_blocks);
                    let other = (other.tokens, other.opaque_tokens, other.opaque_blocks);
                    assert_eq!(
                        one.0.to_bits(),
                        other.0.to_bits(),
                        "{}",
                        String::from_utf8_lossy(body)
                    );
                    assert_eq!(one, other, "{}", String::from_utf8_lossy(body));
                    results[slot] = one;
                }
                (Err(EstimateError::NotAnObject), Err(EstimateError::NotAnObject)) => {}
                (one, other) => panic!("{one:?} != {other:?}"),
            }
        }
        Some(results)
    }

    #[test]
    fn the_borrowed_tree_estimates_every_fixture_as_the_value_did() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/estimate");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            assert!(both_ways(&body).is_some(), "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 10, "{checked} fixtures");
    }

    #[test]
    fn the_borrowed_tree_estimates_odd_shapes_as_the_value_did() {
        let bodies: &[&str] = &[
            r#"{}"#,
            r#"[]"#,
            r#""text""#,
            r#"{"system": "plain", "messages": "not a list", "tools": {"a": 1}}"#,
            r#"{"system": [{"type": "text", "text": "a\nb\u00e9\"q\"", "text": "replaced"}, "bare", 12, null]}"#,
            r#"{"messages": [{"role": "user"}, {"role": "user", "content": null}, {"content": 3.5e3},
                {"role": "assistant", "content": [{"type": "tool_use", "name": "f",
                 "input": {"z": [1, -2, 3.25, 1e300, true, null], "a": "\u2603\ud83d\ude00", "a": "dup"}}]},
                {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "ok"}]}]}]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "long thought"}, {"type": "redacted_thinking", "data": "x"},
                {"type": "document", "title": "t", "context": "c", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
                {"type": "document", "source": {"type": "text", "data": "doc text"}},
                {"type": "document", "source": {"type": "url", "url": "https://x"}},
                {"type": "search_result", "id": "skip", "title": "T", "content": [{"type": "text", "text": "body"}], "citations": {"x": "y"}},
                {"type": "image", "source": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}"#,
            r#"{"tools": [], "messages": []}"#,
            r#"{"tools": [{"name": "bash", "type": "bash_20250124"}, {"name": "f", "description": "d",
                "input_schema": {"type": "object", "properties": {"p": {"type": "string", "description": "\t tab"}}}},
                "bare tool", {"name": "n"}]}"#,
        ];
        for body in bodies {
            both_ways(body.as_bytes()).unwrap_or_else(|| panic!("not JSON: {body}"));
        }
        assert!(matches!(
            estimate_request_input(b"[1]", 4.0),
            Err(EstimateError::NotAnObject)
        ));
        assert!(matches!(
            estimate_request_input(b"{\"messages\": [", 4.0),
            Err(EstimateError::InvalidJson(_))
        ));
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let names = prop::sample::select(vec![
            "type",
            "text",
            "content",
            "role",
            "messages",
            "tools",
            "input",
            "input_schema",
            "system",
            "thinking",
            "id",
            "source",
            "data",
            "name",
            "description",
            "title",
            "context",
            "citations",
            "x",
        ]);
        let words = prop::sample::select(vec![
            "user",
            "assistant",
            "text",
            "thinking",
            "redacted_thinking",
            "image",
            "tool_use",
            "tool_result",
            "document",
            "content",
            "bash_1",
            "a\"b",
            "中文",
            "😀 é",
            "\n\t\u{1}",
        ]);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            words.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec((names.clone(), inner), 0..6).prop_map(|members| {
                    serde_json::Value::Object(
                        members
                            .into_iter()
                            .map(|(name, value)| (name.to_string(), value))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn the_borrowed_tree_estimates_any_json_as_the_value_did(value in arbitrary_json()) {
            let wrapped = serde_json::json!({"system": value, "messages": [value, {"role": "user", "content": value}], "tools": [value]});
            both_ways(wrapped.to_string().as_bytes()).unwrap();
            both_ways(serde_json::to_string_pretty(&value).unwrap().as_bytes());
        }
    }

    #[test]
    fn classifies_scripts() {
        for cjk in ['中', '文', 'あ', 'カ', '한', '。', '，', 'Ａ', '𠀀'] {
            assert!(is_cjk(cjk), "{cjk}");
        }
        for not_cjk in ['a', 'é', 'Ж', 'α', '😀', ' '] {
            assert!(!is_cjk(not_cjk), "{not_cjk}");
        }
    }

    #[test]
    fn weighs_text_by_script() {
        let check = |text: &str, expected: f64| {
            let got = text_tokens(text, 0.25);
            assert!(
                (got - expected).abs() < 1e-9,
                "{text:?}: {got} != {expected}"
            );
        };
        check("abcd", 1.0);
        check("a b ", 1.0);
        check("{}()[]", 2.0);
        check("123", 1.0);
        check("😀", 1.5);
        check("中文字", 3.0);
        check("Жж", 1.0);
        check("", 0.0);
    }
}
