//! An incremental decoder for `text/event-stream` bodies (the WHATWG "server-sent events"
//! interpretation rules), fed with whatever chunks the network delivers.
//!
//! The decoder owns three reusable buffers (a partial line, the event name, the data) and never
//! allocates per event once they have grown to the size of the largest event. Lines that lie
//! entirely inside one chunk are parsed in place, without being copied into the line buffer.
//!
//! Deliberate departures from the specification, both for accounting robustness:
//! - [`SseDecoder::finish`] dispatches an event that lacks its terminating blank line (the
//!   specification discards it; some upstreams omit the final blank line and the last event is
//!   the one that carries the final usage);
//! - events larger than a limit are dropped and counted instead of growing memory without bound.
//!
//! `id` and `retry` fields are recognised as fields and ignored: nothing here reconnects.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

/// Largest event (its data lines joined) and largest single line the decoder buffers by default.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// How much longer than the event limit one line may be: room for the field name (`data: `), so
/// that a line holding a value of exactly the limit is not dropped for its prefix.
const LINE_ALLOWANCE: usize = 16;

const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// `name` as text when it is one of the event names the Messages API streams.
fn known_event_name(name: &[u8]) -> Option<&'static str> {
    Some(match name {
        b"message_start" => "message_start",
        b"content_block_start" => "content_block_start",
        b"content_block_delta" => "content_block_delta",
        b"content_block_stop" => "content_block_stop",
        b"message_delta" => "message_delta",
        b"message_stop" => "message_stop",
        b"ping" => "ping",
        b"error" => "error",
        _ => return None,
    })
}

/// One dispatched event. It borrows the decoder's buffers (or the chunk being fed) and is only
/// valid inside the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `"message"` when the event had none (as the specification says).
    pub event: &'a str,
    /// The `data:` lines joined with `\n`, as raw bytes (UTF-8 in any sane stream). JSON parsers
    /// take bytes directly, which saves a validation pass.
    pub data: &'a [u8],
}

impl<'a> SseEvent<'a> {
    /// The data as text, with invalid UTF-8 replaced by U+FFFD (borrowed when it is valid).
    pub fn data_str(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.data)
    }
}

/// Where the decoder is with the optional UTF-8 byte order mark at the start of the stream.
#[derive(Debug, Clone, Copy)]
enum Bom {
    /// Still collecting the first bytes: `len` of them are held in `bytes`.
    Checking { bytes: [u8; 3], len: usize },
    /// Decided: the stream has started.
    Done,
}

/// Incremental server-sent-events decoder.
///
/// Feed it every chunk in order with [`SseDecoder::feed`]; it calls back once per complete event.
/// Chunks may be split anywhere: inside a line, inside a UTF-8 character, between `\r` and `\n`.
/// Call [`SseDecoder::finish`] at end of stream (or on cancel) to dispatch a last event that had
/// no blank line after it; the decoder is then ready for a new stream.
#[derive(Debug)]
pub struct SseDecoder {
    /// A line that began in an earlier chunk and has no line end yet.
    line: Vec<u8>,
    /// The current event's `event:` value.
    event: String,
    /// The current event's `data:` lines, joined with `\n`.
    data: Vec<u8>,
    /// Whether the current event has at least one `data:` line (an empty one counts).
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next chunk belongs to it.
    after_cr: bool,
    bom: Bom,
    max_event_bytes: usize,
    /// The current line outgrew the limit: its remaining bytes are dropped up to the line end.
    skipping_line: bool,
    /// The current event outgrew the limit: it is dropped when it would be dispatched.
    oversized: bool,
    dropped_events: u64,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default size limit ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder that drops (and counts) events longer than `max_event_bytes`, and the event of a
    /// line longer than `max_event_bytes` plus a 16-byte allowance for the field name.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            event: String::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            bom: Bom::Checking {
                bytes: [0; 3],
                len: 0,
            },
            max_event_bytes,
            skipping_line: false,
            oversized: false,
            dropped_events: 0,
        }
    }

    /// How many events were dropped so far because they outgrew the size limit.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Whether the bytes fed so far end exactly between two events: no partial line, no field
    /// of an event still waiting for its blank line. A new event written after them (a relay's
    /// own `event: error`) is then read as an event of its own and cannot corrupt another.
    ///
    /// This is the decoder's state, not a look at the last chunk: a blank line that arrives in
    /// a chunk of its own ends an event as well as one at the tail of a chunk does. Before any
    /// byte, the stream is at a boundary.
    pub fn at_event_boundary(&self) -> bool {
        let holds_bom_prefix = matches!(self.bom, Bom::Checking { len, .. } if len > 0);
        !holds_bom_prefix
            && self.line.is_empty()
            && !self.skipping_line
            && !self.has_data
            && !self.oversized
            && self.event.is_empty()
    }

    /// Decodes one chunk, calling `on_event` for every event it completes.
    pub fn feed<F>(&mut self, chunk: &[u8], on_event: &mut F)
    where
        F: FnMut(SseEvent<'_>),
    {
        let mut chunk = chunk;
        if let Bom::Checking { mut bytes, mut len } = self.bom {
            // The specification strips one leading U+FEFF. Collect up to three bytes (they may
            // arrive one per chunk) before deciding.
            while len < 3 {
                let Some((&first, rest)) = chunk.split_first() else {
                    self.bom = Bom::Checking { bytes, len };
                    return;
                };
                if first != UTF8_BOM[len] {
                    // Not a BOM: replay what was held back, then go on with this chunk.
                    self.bom = Bom::Done;
                    let held = bytes;
                    self.feed_lines(&held[..len], on_event);
                    self.feed_lines(chunk, on_event);
                    return;
                }
                bytes[len] = first;
                len += 1;
                chunk = rest;
            }
            self.bom = Bom::Done;
        }
        self.feed_lines(chunk, on_event);
    }

    /// Ends the stream: parses a last line without a line end, dispatches a pending event that
    /// had no blank line after it, and resets the decoder for a new stream.
    pub fn finish<F>(&mut self, on_event: &mut F)
    where
        F: FnMut(SseEvent<'_>),
    {
        if let Bom::Checking { bytes, len } = self.bom {
            // Fewer than three bytes, all a BOM prefix: they are content after all.
            self.bom = Bom::Done;
            self.feed_lines(&bytes[..len], on_event);
        }
        if !self.skipping_line && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, on_event);
            self.line = line;
        }
        self.dispatch(on_event);
        self.line.clear();
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.after_cr = false;
        self.skipping_line = false;
        self.oversized = false;
        self.bom = Bom::Checking {
            bytes: [0; 3],
            len: 0,
        };
    }

    /// Splits `input` into lines (`\n`, `\r\n` or `\r`), joining with the carried partial line.
    fn feed_lines<F>(&mut self, input: &[u8], on_event: &mut F)
    where
        F: FnMut(SseEvent<'_>),
    {
        let mut start = 0;
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == b'\n' {
                start = 1;
            }
        }
        while let Some(offset) = memchr2(b'\n', b'\r', &input[start..]) {
            let end = start + offset;
            let segment = &input[start..end];
            if self.skipping_line {
                // The tail of an oversized line: drop it; the event is already marked.
                self.skipping_line = false;
                self.line.clear();
            } else if self.line.len() + segment.len() > self.max_line_bytes() {
                // An oversized line marks its event whether or not it was split across chunks
                // (found by the `sse_decoder` fuzz target: the in-place path skipped this check).
                self.line.clear();
                self.oversized = true;
            } else if self.line.is_empty() {
                // The common case: the whole line is in this chunk. Parse it in place.
                self.process_line(segment, on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(segment);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            start = end + 1;
            if input[end] == b'\r' {
                match input.get(end + 1) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        let rest = &input[start..];
        if rest.is_empty() || self.skipping_line {
            return;
        }
        if self.line.len() + rest.len() > self.max_line_bytes() {
            self.line.clear();
            self.skipping_line = true;
            self.oversized = true;
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// The longest line kept: the event limit plus [`LINE_ALLOWANCE`]. The same rule holds for a
    /// line parsed in place and one joined across chunks, so splitting never changes the result.
    fn max_line_bytes(&self) -> usize {
        self.max_event_bytes.saturating_add(LINE_ALLOWANCE)
    }

    /// Interprets one complete line (without its line end).
    fn process_line<F>(&mut self, line: &[u8], on_event: &mut F)
    where
        F: FnMut(SseEvent<'_>),
    {
        let Some(&first) = line.first() else {
            self.dispatch(on_event);
            return;
        };
        if first == b':' {
            return; // a comment
        }
        let (field, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.oversized {
                    return;
                }
                let needed = self.data.len() + value.len() + usize::from(self.has_data);
                if needed > self.max_event_bytes {
                    self.oversized = true;
                    self.data.clear();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                // The Messages API's own names are matched as bytes; any other is checked as
                // UTF-8 in one pass (`from_utf8` cost about 120 instructions an event, and
                // `from_utf8_lossy` walks its chunk iterator even for valid text; issue 19).
                match known_event_name(value) {
                    Some(name) => self.event.push_str(name),
                    None => match std::str::from_utf8(value) {
                        Ok(name) => self.event.push_str(name),
                        Err(_) => self.event.push_str(&String::from_utf8_lossy(value)),
                    },
                }
            }
            // `id`, `retry` and unknown fields: nothing here needs them.
            _ => {}
        }
    }

    /// A blank line (or the end of the stream): hand the event over and start a new one.
    fn dispatch<F>(&mut self, on_event: &mut F)
    where
        F: FnMut(SseEvent<'_>),
    {
        if self.oversized {
            self.dropped_events += 1;
        } else if self.has_data {
            let event = if self.event.is_empty() {
                "message"
            } else {
                self.event.as_str()
            };
            on_event(SseEvent {
                event,
                data: &self.data,
            });
        }
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in `pieces`, returning `(event, data)` pairs.
    fn decode(pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut collect = |event: SseEvent<'_>| {
            events.push((event.event.to_string(), event.data_str().into_owned()));
        };
        for piece in pieces {
            decoder.feed(piece, &mut collect);
        }
        decoder.finish(&mut collect);
        events
    }

    fn check(input: &str, expected: &[(&str, &str)]) {
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(e, d)| (e.to_string(), d.to_string()))
            .collect();
        assert_eq!(
            decode(&[input.as_bytes()]),
            expected,
            "whole input {input:?}"
        );
        // Every split into single bytes gives the same events.
        let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
        assert_eq!(decode(&bytes), expected, "byte by byte {input:?}");
    }

    #[test]
    fn decodes_the_specification_cases() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("event: a\ndata: 1\n\n", &[("a", "1")]),
            ("event:a\ndata:1\n\n", &[("a", "1")]),
            ("data:  two spaces\n\n", &[("message", " two spaces")]),
            ("data: x\r\n\r\n", &[("message", "x")]),
            (
                "data: x\r\rdata: y\r\r",
                &[("message", "x"), ("message", "y")],
            ),
            ("data: a\ndata: b\ndata\n\n", &[("message", "a\nb\n")]),
            (
                ": comment\nfoo: bar\ndata: x\nid: 7\nretry: 10\n\n",
                &[("message", "x")],
            ),
            ("event: only-a-name\n\n", &[]),
            ("data\n\n", &[("message", "")]),
            ("data:\n\n", &[("message", "")]),
            ("\u{feff}data: bom\n\n", &[("message", "bom")]),
            ("\u{feff}\u{feff}data: x\n\n", &[]),
            ("data: no blank line", &[("message", "no blank line")]),
            ("data: no blank line\n", &[("message", "no blank line")]),
            ("event: e\ndata: héllo 世界\n\n", &[("e", "héllo 世界")]),
            ("\n\n\ndata: x\n\n\n\n", &[("message", "x")]),
            ("event: a\nevent: b\ndata: x\n\n", &[("b", "x")]),
            ("event: a\n\ndata: x\n\n", &[("message", "x")]),
            ("dat", &[]),
            ("", &[]),
            ("\u{ef}", &[]),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    /// The Messages API's names (matched as bytes) and their near misses (checked as text)
    /// read exactly as sent.
    #[test]
    fn event_names_read_as_sent_whether_known_or_not() {
        for name in [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
            "message_starts",
            "Ping",
            "messagestop",
            "error ",
            "content_block_delta\u{e9}",
        ] {
            check(&format!("event: {name}\ndata: x\n\n"), &[(name, "x")]);
        }
    }

    /// An event name that is not UTF-8 reads with U+FFFD in place of the bad bytes, whole or
    /// split between chunks inside a character; a valid multi-byte name reads as sent.
    #[test]
    fn event_names_that_are_not_utf8_read_with_replacement_characters() {
        let expected = vec![
            ("a\u{FFFD}b".to_string(), "1".to_string()),
            ("caf\u{e9}".to_string(), "2".to_string()),
        ];
        let input: &[u8] = b"event: a\xFFb\ndata: 1\n\nevent: caf\xC3\xA9\ndata: 2\n\n";
        assert_eq!(decode(&[input]), expected);
        let split = input
            .iter()
            .position(|&byte| byte == 0xC3)
            .map_or(input.len(), |at| at + 1);
        assert_eq!(decode(&[&input[..split], &input[split..]]), expected);
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let events = decode(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(
            events,
            vec![
                ("message".into(), "a".into()),
                ("message".into(), "b".into())
            ]
        );
    }

    #[test]
    fn oversized_events_are_dropped_and_counted() {
        let mut decoder = SseDecoder::with_max_event_bytes(8);
        let mut events = Vec::new();
        let mut collect = |event: SseEvent<'_>| events.push(event.data_str().into_owned());
        decoder.feed(b"data: 0123456789\n\ndata: ok\n\n", &mut collect);
        decoder.feed(b"data: 01234", &mut collect);
        decoder.feed(
            b"56789\n\ndata: a\ndata: bcdefgh\n\ndata: end\n\n",
            &mut collect,
        );
        decoder.finish(&mut collect);
        assert_eq!(events, vec!["ok".to_string(), "end".to_string()]);
        assert_eq!(decoder.dropped_events(), 3);
    }

    /// `at_event_boundary` after feeding `pieces` one by one.
    fn boundary_after(pieces: &[&[u8]]) -> bool {
        let mut decoder = SseDecoder::new();
        for piece in pieces {
            decoder.feed(piece, &mut |_| {});
        }
        decoder.at_event_boundary()
    }

    #[test]
    fn knows_when_the_stream_stands_between_two_events() {
        let cases: &[(&[&[u8]], bool)] = &[
            (&[], true),
            (&[b"event: ping\ndata: {}\n\n"], true),
            // The blank line flushed on its own still ends the event.
            (&[b"event: ping\ndata: {}\n", b"\n"], true),
            (&[b"event: ping\ndata: {}\r\n", b"\r\n"], true),
            (&[b"event: ping\ndata: {}\r", b"\r"], true),
            (&[b"event: ping\ndata: {}\n"], false),
            (&[b"event: ping\n"], false),
            (&[b"event: content_block_delta\ndata: {\"ty"], false),
            (&[b"data: {}\n\nevent: pi"], false),
            (&[b": keep-alive comment\n"], true),
            (&[b"\xEF\xBB"], false),
            (&[b"\xEF\xBB\xBF"], true),
        ];
        for (pieces, expected) in cases {
            assert_eq!(boundary_after(pieces), *expected, "{pieces:?}");
            // Byte by byte: the same answer, whatever the split.
            let joined: Vec<u8> = pieces.concat();
            let bytes: Vec<&[u8]> = joined.chunks(1).collect();
            assert_eq!(boundary_after(&bytes), *expected, "{pieces:?} byte by byte");
        }
    }

    #[test]
    fn the_decoder_is_reusable_after_finish() {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut collect = |event: SseEvent<'_>| events.push(event.data_str().into_owned());
        decoder.feed(b"data: first\r", &mut collect);
        decoder.finish(&mut collect);
        decoder.feed(b"\ndata: second\n\n", &mut collect);
        decoder.finish(&mut collect);
        assert_eq!(events, vec!["first".to_string(), "second".to_string()]);
    }
}
