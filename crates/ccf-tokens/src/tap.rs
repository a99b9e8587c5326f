//! [`BodyTap`]: what the forwarding engine attaches to a response body to read its usage.
//!
//! The tap sees a copy of every frame the client receives. It decodes the content encoding for
//! its own parsing only (it never produces bytes to send), streams server-sent events through a
//! [`UsageExtractor`], and buffers anything else, up to a limit, to parse as a whole at the end.
//!
//! Decoders are push-style (`std::io::Write`) and write straight into the [`Sink`], so memory
//! stays bounded by the decoders' own windows plus the JSON buffer limit, whatever the
//! compression ratio.

use std::io::{self, Write};

use crate::extract::{
    extract_body, looks_like_sse, BodyFormat, Diagnostic, Diagnostics, Extraction, StreamPosition,
    UsageExtractor,
};

/// How many decoded bytes of a non-streaming body are buffered for parsing by default.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;

/// The largest zstd window (as a power of two) decoded: 8 MiB, the limit RFC 9659 sets for the
/// `zstd` content coding. Without it a frame header can ask for a window of up to 2 GiB per
/// response. A body that needs more is left undecoded (for parsing only: its bytes are relayed
/// untouched).
pub const MAX_ZSTD_WINDOW_LOG: u32 = 23;

/// Where decoded bytes go: undecided until the first non-blank byte, then a streaming extractor
/// or a bounded buffer.
#[derive(Debug)]
enum Mode {
    /// Only whitespace (or nothing) so far.
    Undecided,
    /// Buffering a body to parse at the end (JSON, or not yet known).
    Buffer(Vec<u8>),
    /// Streaming server-sent events.
    Stream(Box<UsageExtractor>),
    /// The buffered body outgrew the limit and was not SSE: ignoring the rest.
    Overflowed,
}

/// The consumer of decoded bytes. It implements [`Write`] so the decoders write straight into it;
/// its `write` never fails.
#[derive(Debug)]
struct Sink {
    mode: Mode,
    declared_sse: bool,
    max_buffered_bytes: usize,
}

impl Sink {
    fn push(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Mode::Undecided = self.mode {
            let Some(first) = bytes.iter().position(|byte| !byte.is_ascii_whitespace()) else {
                return; // leading blank lines mean nothing in JSON or in SSE
            };
            bytes = &bytes[first..];
            // JSON first, whatever the content type says: an error body is JSON even on a
            // `text/event-stream` response.
            self.mode = if bytes[0] != b'{' && bytes[0] != b'[' && self.declared_sse {
                Mode::Stream(Box::default())
            } else {
                Mode::Buffer(Vec::new())
            };
        }
        match &mut self.mode {
            Mode::Undecided | Mode::Overflowed => {}
            Mode::Stream(extractor) => extractor.feed(bytes),
            Mode::Buffer(buffer) => {
                if buffer.len() + bytes.len() <= self.max_buffered_bytes {
                    buffer.extend_from_slice(bytes);
                } else if looks_like_sse(buffer) {
                    // An undeclared event stream (missing or wrong content type): stream it
                    // rather than give up on it.
                    let mut extractor = Box::<UsageExtractor>::default();
                    extractor.feed(buffer);
                    extractor.feed(bytes);
                    self.mode = Mode::Stream(extractor);
                } else {
                    self.mode = Mode::Overflowed;
                }
            }
        }
    }

    fn model(&self) -> Option<&str> {
        match &self.mode {
            Mode::Stream(extractor) => extractor.model(),
            _ => None,
        }
    }

    /// Content deltas decoded so far; `None` when the body is not read as an event stream.
    fn content_deltas(&self) -> Option<u64> {
        match &self.mode {
            Mode::Undecided => Some(0),
            Mode::Stream(extractor) => Some(extractor.content_deltas()),
            Mode::Buffer(_) | Mode::Overflowed => None,
        }
    }

    /// Where the event stream stands; `None` when the body is not read as an event stream.
    fn position(&self) -> Option<StreamPosition> {
        match &self.mode {
            // Nothing but blank lines so far: between events, and nothing ended.
            Mode::Undecided => Some(StreamPosition {
                at_event_boundary: true,
                ended: false,
            }),
            Mode::Stream(extractor) => Some(extractor.position()),
            Mode::Buffer(_) | Mode::Overflowed => None,
        }
    }

    fn finish(self) -> Extraction {
        match self.mode {
            Mode::Undecided => Extraction::default(),
            Mode::Buffer(buffer) => extract_body(&buffer),
            Mode::Stream(extractor) => extractor.finish(),
            Mode::Overflowed => Extraction {
                format: BodyFormat::Unknown,
                diagnostics: vec![Diagnostic::BodyTooLarge {
                    limit: self.max_buffered_bytes,
                }],
                ..Extraction::default()
            },
        }
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.push(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink with nothing in it, swapped in while the real one is taken out of a decoder.
fn placeholder() -> Sink {
    Sink {
        mode: Mode::Overflowed,
        declared_sse: false,
        max_buffered_bytes: 0,
    }
}

/// A content coding this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }
}

/// The decoder chain in front of the sink.
enum Decoding {
    Identity(Sink),
    Gzip(Box<flate2::write::MultiGzDecoder<Sink>>),
    /// `deflate` is meant to be zlib-wrapped (RFC 9110), but servers also send raw deflate: the
    /// first two bytes decide.
    DeflatePending {
        header: Vec<u8>,
        sink: Sink,
    },
    Zlib(Box<flate2::write::ZlibDecoder<Sink>>),
    RawDeflate(Box<flate2::write::DeflateDecoder<Sink>>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>),
    /// The compressed stream ended (trailing bytes are ignored) or failed: input is ignored.
    Stopped(Sink),
}

impl std::fmt::Debug for Decoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Identity(_) => "Identity",
            Self::Gzip(_) => "Gzip",
            Self::DeflatePending { .. } => "DeflatePending",
            Self::Zlib(_) => "Zlib",
            Self::RawDeflate(_) => "RawDeflate",
            Self::Brotli(_) => "Brotli",
            Self::Zstd(_) => "Zstd",
            Self::Stopped(_) => "Stopped",
        };
        f.write_str(name)
    }
}

/// Whether two bytes are a zlib header (RFC 1950: deflate method, window ≤ 32 KiB, check bits).
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0F == 8 && cmf >> 4 <= 7 && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0
}

/// Writes all of `input` into a decoder. `Ok(true)` means the compressed stream ended before the
/// input did (the rest is trailing garbage, ignored).
fn write_all_or_end<W: Write>(decoder: &mut W, mut input: &[u8]) -> io::Result<bool> {
    let mut ended = false;
    while !input.is_empty() {
        match decoder.write(input) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(written) => input = &input[written.min(input.len())..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    // Push what the decoder still holds to the sink now, so events are seen without waiting for
    // the next frame (and nothing is lost when the stream ended).
    decoder.flush()?;
    Ok(ended)
}

/// Reads the model and usage out of a response body as its frames go by.
///
/// Create it from the response headers, [`feed`](BodyTap::feed) it a copy of every frame sent
/// to the client (original, possibly compressed bytes), and [`finish`](BodyTap::finish) it when
/// the body ends, fails or is cancelled. It never fails and never panics: whatever goes wrong
/// ends up in [`Extraction::diagnostics`].
#[derive(Debug)]
pub struct BodyTap {
    decoding: Decoding,
    coding: Option<Coding>,
    /// Whether any body byte was fed: an empty body (HEAD, 204, 304) is not a cut stream, even
    /// when the headers announce a content coding.
    fed_any: bool,
    /// The content coding could not be decoded (unsupported, corrupt, or a zstd window over
    /// [`MAX_ZSTD_WINDOW_LOG`]): what the decoded stream looks like is unknown.
    undecodable: bool,
    diagnostics: Diagnostics,
}

impl BodyTap {
    /// A tap for a response with these `content-type` and `content-encoding` header values,
    /// buffering at most [`DEFAULT_MAX_BUFFERED_BYTES`] of a non-streaming body.
    pub fn new(content_type: Option<&str>, content_encoding: Option<&str>) -> Self {
        Self::with_max_buffered_bytes(content_type, content_encoding, DEFAULT_MAX_BUFFERED_BYTES)
    }

    /// Like [`BodyTap::new`], with another limit on the decoded bytes buffered for a
    /// non-streaming body (an event stream is never buffered whole).
    pub fn with_max_buffered_bytes(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        max_buffered_bytes: usize,
    ) -> Self {
        let declared_sse = content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        let sink = Sink {
            mode: Mode::Undecided,
            declared_sse,
            max_buffered_bytes,
        };
        let mut diagnostics = Diagnostics::default();
        // Most answers carry no content coding: no list of codings to build then (issue 19).
        let codings: Vec<String> = match content_encoding {
            None => Vec::new(),
            Some(value) => value
                .split(',')
                .map(|coding| coding.trim().to_ascii_lowercase())
                .filter(|coding| !coding.is_empty() && coding != "identity")
                .collect(),
        };
        let coding = match codings.as_slice() {
            [] => None,
            [one] => match one.as_str() {
                "gzip" | "x-gzip" => Some(Coding::Gzip),
                "deflate" => Some(Coding::Deflate),
                "br" => Some(Coding::Brotli),
                "zstd" => Some(Coding::Zstd),
                _ => {
                    diagnostics.push(Diagnostic::UnsupportedEncoding {
                        encoding: content_encoding.unwrap_or_default().trim().to_string(),
                    });
                    return Self {
                        decoding: Decoding::Stopped(sink),
                        coding: None,
                        fed_any: false,
                        undecodable: true,
                        diagnostics,
                    };
                }
            },
            _ => {
                // Stacked codings are legal but nobody sends them to API clients.
                diagnostics.push(Diagnostic::UnsupportedEncoding {
                    encoding: content_encoding.unwrap_or_default().trim().to_string(),
                });
                return Self {
                    decoding: Decoding::Stopped(sink),
                    coding: None,
                    fed_any: false,
                    undecodable: true,
                    diagnostics,
                };
            }
        };
        let mut undecodable = false;
        let decoding = match coding {
            None => Decoding::Identity(sink),
            Some(Coding::Gzip) => {
                Decoding::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
            }
            Some(Coding::Deflate) => Decoding::DeflatePending {
                header: Vec::with_capacity(2),
                sink,
            },
            Some(Coding::Brotli) => {
                Decoding::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 16 * 1024)))
            }
            Some(Coding::Zstd) => {
                // Creating the context only fails when zstd cannot allocate it; the sink was
                // moved into the failed call, so start from a fresh one.
                let decoder = zstd::stream::write::Decoder::new(Sink {
                    mode: Mode::Undecided,
                    declared_sse,
                    max_buffered_bytes,
                })
                .and_then(|mut decoder| {
                    decoder.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
                    Ok(decoder)
                });
                match decoder {
                    Ok(decoder) => Decoding::Zstd(Box::new(decoder)),
                    Err(error) => {
                        undecodable = true;
                        diagnostics.push(Diagnostic::CorruptEncoding {
                            encoding: "zstd".to_string(),
                            error: error.to_string(),
                        });
                        Decoding::Stopped(Sink {
                            mode: Mode::Undecided,
                            declared_sse,
                            max_buffered_bytes,
                        })
                    }
                }
            }
        };
        Self {
            decoding,
            coding,
            fed_any: false,
            undecodable,
            diagnostics,
        }
    }

    /// Where the decoded event stream stands after the frames fed so far: whether they end
    /// between two events, and whether its last event (`message_stop` or `error`) was seen.
    /// `None` when that is unknown: the body is not read as an event stream (JSON, too large)
    /// or its content coding could not be decoded.
    pub fn stream_position(&self) -> Option<StreamPosition> {
        self.decoded_sink()?.position()
    }

    /// How many `content_block_delta` events the frames fed so far completed, decoded (through
    /// any content coding) as the usage is. `None` when that is unknown: the body is not read as
    /// an event stream (JSON, too large) or its content coding could not be decoded.
    pub fn content_deltas(&self) -> Option<u64> {
        self.decoded_sink()?.content_deltas()
    }

    /// The sink, unless the content coding could not be decoded (then what it holds says
    /// nothing about the stream).
    fn decoded_sink(&self) -> Option<&Sink> {
        (!self.undecodable).then(|| self.sink())
    }

    /// The model, as soon as a streamed response's `message_start` has been decoded.
    pub fn model(&self) -> Option<&str> {
        self.sink().model()
    }

    fn sink(&self) -> &Sink {
        match &self.decoding {
            Decoding::Identity(sink)
            | Decoding::Stopped(sink)
            | Decoding::DeflatePending { sink, .. } => sink,
            Decoding::Gzip(decoder) => decoder.get_ref(),
            Decoding::Zlib(decoder) => decoder.get_ref(),
            Decoding::RawDeflate(decoder) => decoder.get_ref(),
            Decoding::Brotli(decoder) => decoder.get_ref(),
            Decoding::Zstd(decoder) => decoder.get_ref(),
        }
    }

    /// Feeds one frame of the body, exactly as it is sent to the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.fed_any = true;
        let result = match &mut self.decoding {
            Decoding::Identity(sink) => {
                sink.push(chunk);
                Ok(false)
            }
            Decoding::Stopped(_) => Ok(false),
            Decoding::DeflatePending { header, sink } => {
                let needed = 2 - header.len();
                let taken = needed.min(chunk.len());
                header.extend_from_slice(&chunk[..taken]);
                if header.len() < 2 {
                    return;
                }
                let header = std::mem::take(header);
                let sink = std::mem::replace(sink, placeholder());
                self.decoding = if is_zlib_header(header[0], header[1]) {
                    Decoding::Zlib(Box::new(flate2::write::ZlibDecoder::new(sink)))
                } else {
                    Decoding::RawDeflate(Box::new(flate2::write::DeflateDecoder::new(sink)))
                };
                self.feed(&header);
                self.feed(&chunk[taken..]);
                return;
            }
            Decoding::Gzip(decoder) => write_all_or_end(decoder.as_mut(), chunk),
            Decoding::Zlib(decoder) => write_all_or_end(decoder.as_mut(), chunk),
            Decoding::RawDeflate(decoder) => write_all_or_end(decoder.as_mut(), chunk),
            Decoding::Brotli(decoder) => write_all_or_end(decoder.as_mut(), chunk),
            Decoding::Zstd(decoder) => write_all_or_end(decoder.as_mut(), chunk),
        };
        match result {
            // A body over the buffering limit will not be parsed: stop decompressing it.
            Ok(false) if matches!(self.sink().mode, Mode::Overflowed) => self.stop(),
            Ok(false) => {}
            // The compressed stream is complete; bytes after it are not part of the body.
            Ok(true) => self.stop(),
            Err(error) => {
                self.diagnostics.push(Diagnostic::CorruptEncoding {
                    encoding: self.coding_name(),
                    error: error.to_string(),
                });
                self.undecodable = true;
                self.stop();
            }
        }
    }

    fn coding_name(&self) -> String {
        self.coding
            .map(Coding::name)
            .unwrap_or("identity")
            .to_string()
    }

    /// Takes the sink out of whatever decoder holds it and ignores further input.
    fn stop(&mut self) {
        let sink = match &mut self.decoding {
            Decoding::Stopped(_) | Decoding::Identity(_) => return,
            Decoding::DeflatePending { sink, .. } => std::mem::replace(sink, placeholder()),
            Decoding::Gzip(decoder) => std::mem::replace(decoder.get_mut(), placeholder()),
            Decoding::Zlib(decoder) => std::mem::replace(decoder.get_mut(), placeholder()),
            Decoding::RawDeflate(decoder) => std::mem::replace(decoder.get_mut(), placeholder()),
            Decoding::Brotli(decoder) => std::mem::replace(decoder.get_mut(), placeholder()),
            Decoding::Zstd(decoder) => std::mem::replace(decoder.get_mut(), placeholder()),
        };
        self.decoding = Decoding::Stopped(sink);
    }

    /// Ends the body (complete, failed or cancelled alike) and returns what was read.
    pub fn finish(mut self) -> Extraction {
        let coding = self.coding_name();
        let decoding = std::mem::replace(&mut self.decoding, Decoding::Stopped(placeholder()));
        // Each decoder's finish flushes what it still holds and reports a stream that did not
        // reach its end marker.
        let (sink, finished) = match decoding {
            Decoding::Identity(sink) | Decoding::Stopped(sink) => (sink, Ok(())),
            Decoding::DeflatePending { header, sink } => {
                // Fewer than two bytes of a compressed body: nothing decodable.
                let finished = if header.is_empty() {
                    Ok(())
                } else {
                    Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                };
                (sink, finished)
            }
            Decoding::Gzip(mut decoder) => {
                let finished = decoder.try_finish();
                (
                    std::mem::replace(decoder.get_mut(), placeholder()),
                    finished,
                )
            }
            Decoding::Zlib(mut decoder) => {
                let finished = decoder.try_finish();
                (
                    std::mem::replace(decoder.get_mut(), placeholder()),
                    finished,
                )
            }
            Decoding::RawDeflate(mut decoder) => {
                let finished = decoder.try_finish();
                (
                    std::mem::replace(decoder.get_mut(), placeholder()),
                    finished,
                )
            }
            Decoding::Brotli(decoder) => match decoder.into_inner() {
                Ok(sink) => (sink, Ok(())),
                Err(sink) => (sink, Err(io::Error::from(io::ErrorKind::UnexpectedEof))),
            },
            Decoding::Zstd(mut decoder) => {
                let finished = decoder.do_finish();
                (
                    std::mem::replace(decoder.get_mut(), placeholder()),
                    finished,
                )
            }
        };
        if finished.is_err() && self.fed_any {
            self.diagnostics
                .push(Diagnostic::TruncatedEncoding { encoding: coding });
        }
        let mut extraction = sink.finish();
        let mut diagnostics = std::mem::take(&mut self.diagnostics).into_vec();
        diagnostics.append(&mut extraction.diagnostics);
        extraction.diagnostics = diagnostics;
        extraction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_zlib_headers() {
        assert!(is_zlib_header(0x78, 0x9C));
        assert!(is_zlib_header(0x78, 0x01));
        assert!(is_zlib_header(0x78, 0xDA));
        assert!(!is_zlib_header(0xED, 0xBD)); // a typical raw deflate start
        assert!(!is_zlib_header(0x1F, 0x8B)); // gzip magic
    }

    const JSON_MESSAGE: &[u8] = br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","usage":{"input_tokens":3,"output_tokens":4}}"#;

    /// `body` compressed by zstd with a window of 2^`window_log` bytes announced in its frame
    /// header (a streaming encoder: no content size, so the header carries the window).
    fn zstd_with_window(body: &[u8], window_log: u32) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(window_log).unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(body).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_zstd_window_over_8_mib_is_not_decoded_and_one_within_is() {
        let within = zstd_with_window(JSON_MESSAGE, MAX_ZSTD_WINDOW_LOG);
        let mut tap = BodyTap::new(Some("application/json"), Some("zstd"));
        tap.feed(&within);
        let extraction = tap.finish();
        assert_eq!(extraction.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(
            extraction.diagnostics.is_empty(),
            "{:?}",
            extraction.diagnostics
        );

        let over = zstd_with_window(JSON_MESSAGE, MAX_ZSTD_WINDOW_LOG + 1);
        let mut tap = BodyTap::new(Some("application/json"), Some("zstd"));
        tap.feed(&over);
        let extraction = tap.finish();
        assert_eq!(
            extraction.model, None,
            "a window over the limit is never decoded"
        );
        assert!(
            matches!(
                extraction.diagnostics.first(),
                Some(Diagnostic::CorruptEncoding { encoding, .. }) if encoding == "zstd"
            ),
            "{:?}",
            extraction.diagnostics
        );
    }

    #[test]
    fn the_stream_position_follows_the_decoded_events() {
        let position = |at_event_boundary, ended| {
            Some(StreamPosition {
                at_event_boundary,
                ended,
            })
        };
        let mut tap = BodyTap::new(Some("text/event-stream"), None);
        assert_eq!(tap.stream_position(), position(true, false));
        tap.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n");
        assert_eq!(tap.stream_position(), position(false, false));
        // The blank line in a frame of its own.
        tap.feed(b"\n");
        assert_eq!(tap.stream_position(), position(true, false));
        tap.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert_eq!(tap.stream_position(), position(true, true));

        let mut tap = BodyTap::new(Some("text/event-stream"), None);
        tap.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(
            tap.stream_position(),
            position(true, true),
            "an error event ends it"
        );

        // Compressed: the decoded events decide.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"event: ping\ndata: {}\n").unwrap();
        let mut tap = BodyTap::new(Some("text/event-stream"), Some("gzip"));
        encoder.flush().unwrap();
        tap.feed(encoder.get_ref());
        assert_eq!(tap.stream_position(), position(false, false));

        let mut tap = BodyTap::new(Some("application/json"), None);
        tap.feed(JSON_MESSAGE);
        assert_eq!(tap.stream_position(), None, "not an event stream");
        let mut tap = BodyTap::new(Some("text/event-stream"), Some("compress"));
        tap.feed(b"anything");
        assert_eq!(tap.stream_position(), None, "not decodable");
        let mut tap = BodyTap::new(Some("text/event-stream"), Some("gzip"));
        tap.feed(b"not gzip at all");
        assert_eq!(tap.stream_position(), None, "corrupt");
    }

    #[test]
    fn content_deltas_are_counted_as_their_events_complete_also_through_gzip() {
        const NAMED: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        // No `event:` line: the payload's type names it.
        const UNNAMED: &[u8] =
            b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{}}\n\n";
        // The marker inside another event's text is no delta.
        const QUOTED: &[u8] = b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"content_block\":{\"text\":\"\\\"content_block_delta\\\"\"}}\n\n";

        let mut tap = BodyTap::new(Some("text/event-stream"), None);
        assert_eq!(tap.content_deltas(), Some(0));
        tap.feed(QUOTED);
        tap.feed(NAMED);
        assert_eq!(tap.content_deltas(), Some(1));
        // Counted when its blank line arrives.
        tap.feed(&UNNAMED[..UNNAMED.len() - 1]);
        assert_eq!(tap.content_deltas(), Some(1));
        tap.feed(b"\n");
        assert_eq!(tap.content_deltas(), Some(2));

        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tap = BodyTap::new(Some("text/event-stream"), Some("gzip"));
        for _ in 0..3 {
            encoder.write_all(NAMED).unwrap();
            encoder.flush().unwrap();
            tap.feed(&std::mem::take(encoder.get_mut()));
        }
        assert_eq!(tap.content_deltas(), Some(3));

        let mut tap = BodyTap::new(Some("application/json"), None);
        tap.feed(JSON_MESSAGE);
        assert_eq!(tap.content_deltas(), None, "not an event stream");
        let mut tap = BodyTap::new(Some("text/event-stream"), Some("gzip"));
        tap.feed(b"not gzip at all");
        assert_eq!(tap.content_deltas(), None, "corrupt");
    }

    #[test]
    fn the_tap_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BodyTap>();
    }
}
