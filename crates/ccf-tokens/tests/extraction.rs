//! Usage extraction from streamed and non-streaming fixtures (`tests/fixtures/{sse,json}`),
//! whole, split at every byte, split at random, with every line-end style and behind every
//! content encoding.

// Helpers outside `#[test]` functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;

use ccf_tokens::{
    extract_body, ApiError, BodyFormat, BodyTap, Diagnostic, Extraction, UsageExtractor,
};
use ccf_types::Usage;
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every fixture, for the properties that hold for all of them.
const SSE_FIXTURES: &[&str] = &[
    "sse/normal_with_cache.sse",
    "sse/delta_repeats_counts.sse",
    "sse/delta_zeros.sse",
    "sse/cut_after_message_start.sse",
    "sse/error_mid_stream.sse",
    "sse/missing_final_blank_line.sse",
    "sse/no_space_after_colon.sse",
    "sse/multiline_data.sse",
    "sse/comments_and_unknown_fields.sse",
    "sse/unknown_event_types.sse",
    "sse/data_only_no_event_lines.sse",
    "sse/malformed_message_delta.sse",
];

const JSON_FIXTURES: &[&str] = &[
    "json/success.json",
    "json/rate_limited_with_usage.json",
    "json/error.json",
    "json/json_containing_event_text.json",
];

fn stream(chunks: &[&[u8]]) -> Extraction {
    let mut extractor = UsageExtractor::new();
    for chunk in chunks {
        extractor.feed(chunk);
    }
    extractor.finish()
}

fn tokens(input: u64, output: u64, cache_creation: u64, cache_read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: cache_creation,
        cache_read_input_tokens: cache_read,
        ..Usage::default()
    }
}

/// The cache-heavy `message_start` usage shared by several fixtures.
fn cached_start(output: u64) -> Usage {
    Usage {
        cache_creation_5m_input_tokens: 1024,
        service_tier: Some("standard".into()),
        ..tokens(2095, output, 1024, 14336)
    }
}

fn sse(model: Option<&str>, usage: Option<Usage>, partial: bool, completed: bool) -> Extraction {
    Extraction {
        format: BodyFormat::Sse,
        model: model.map(str::to_string),
        message_id: model.map(|_| "msg_01XFDUDYJgAACzvnptvVoYEL".to_string()),
        usage,
        partial,
        completed,
        error: None,
        diagnostics: Vec::new(),
    }
}

const SONNET: Option<&str> = Some("claude-sonnet-4-5-20250929");

/// Expected extraction of every SSE fixture.
fn expected_sse(name: &str) -> Extraction {
    match name {
        "sse/normal_with_cache.sse" => sse(SONNET, Some(cached_start(87)), false, true),
        "sse/delta_repeats_counts.sse" => sse(
            SONNET,
            Some(Usage {
                web_search_requests: 2,
                ..cached_start(503)
            }),
            false,
            true,
        ),
        // Zeros in message_delta must not erase message_start's input and cache counts.
        "sse/delta_zeros.sse" => sse(SONNET, Some(cached_start(42)), false, true),
        "sse/cut_after_message_start.sse" => sse(SONNET, Some(cached_start(1)), true, false),
        "sse/error_mid_stream.sse" => Extraction {
            error: Some(ApiError {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            }),
            ..sse(SONNET, Some(tokens(512, 1, 0, 0)), true, false)
        },
        "sse/missing_final_blank_line.sse" => sse(SONNET, Some(tokens(10, 12, 0, 0)), false, true),
        "sse/no_space_after_colon.sse" => sse(SONNET, Some(tokens(10, 12, 0, 5)), false, true),
        "sse/multiline_data.sse" => sse(SONNET, Some(tokens(30, 77, 0, 0)), false, true),
        "sse/comments_and_unknown_fields.sse" => sse(SONNET, Some(tokens(7, 3, 0, 0)), false, true),
        // Unknown event types, even with broken JSON, are skipped without a diagnostic.
        "sse/unknown_event_types.sse" => sse(SONNET, Some(tokens(7, 9, 0, 0)), false, true),
        "sse/data_only_no_event_lines.sse" => sse(SONNET, Some(tokens(44, 5, 0, 100)), false, true),
        "sse/malformed_message_delta.sse" => Extraction {
            diagnostics: vec![Diagnostic::MalformedEvent {
                event: "message_delta".into(),
                error: "EOF while parsing a value at line 1 column 49".into(),
            }],
            ..sse(SONNET, Some(tokens(7, 1, 0, 0)), true, true)
        },
        other => panic!("no expectation for {other}"),
    }
}

/// Expected extraction of every JSON fixture.
fn expected_json(name: &str) -> Extraction {
    let json = Extraction {
        format: BodyFormat::Json,
        ..Extraction::default()
    };
    match name {
        "json/success.json" => Extraction {
            model: Some("claude-sonnet-4-5-20250929".into()),
            message_id: Some("msg_013Zva2CMHLNnXjNJJKqJ2EF".into()),
            usage: Some(Usage {
                cache_creation_5m_input_tokens: 5,
                service_tier: Some("standard".into()),
                ..tokens(12, 6, 5, 7)
            }),
            completed: true,
            ..json
        },
        // An error status whose body carries usage: the usage counts.
        "json/rate_limited_with_usage.json" => Extraction {
            model: Some("claude-opus-4-1-20250805".into()),
            usage: Some(tokens(1500, 0, 0, 0)),
            error: Some(ApiError {
                error_type: "rate_limit_error".into(),
                message: "Number of request tokens has exceeded your per-minute rate limit".into(),
            }),
            ..json
        },
        "json/error.json" => Extraction {
            error: Some(ApiError {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            }),
            ..json
        },
        // Contains "event: message_start" in its text: still JSON (the original's bug 14bd516).
        "json/json_containing_event_text.json" => Extraction {
            model: Some("claude-haiku-4-5".into()),
            message_id: Some("msg_01".into()),
            usage: Some(tokens(20, 40, 0, 0)),
            completed: true,
            ..json
        },
        other => panic!("no expectation for {other}"),
    }
}

fn check(name: &str, got: &Extraction, expected: &Extraction) {
    assert_eq!(got, expected, "fixture {name}");
}

#[test]
fn every_sse_fixture_gives_its_expected_extraction() {
    for name in SSE_FIXTURES {
        let body = fixture(name);
        let expected = expected_sse(name);
        check(name, &stream(&[&body]), &expected);
        // The complete-body path applies the same rules to an SSE body.
        check(name, &extract_body(&body), &expected);
    }
}

#[test]
fn every_json_fixture_gives_its_expected_extraction() {
    for name in JSON_FIXTURES {
        let body = fixture(name);
        check(name, &extract_body(&body), &expected_json(name));
    }
}

#[test]
fn every_split_into_two_pieces_gives_the_same_extraction() {
    for name in SSE_FIXTURES {
        let body = fixture(name);
        let expected = expected_sse(name);
        for at in 0..=body.len() {
            let (head, tail) = body.split_at(at);
            check(
                &format!("{name} split at {at}"),
                &stream(&[head, tail]),
                &expected,
            );
        }
    }
}

#[test]
fn crlf_and_cr_line_ends_give_the_same_extraction() {
    for name in SSE_FIXTURES {
        let body = String::from_utf8(fixture(name)).unwrap();
        let expected = expected_sse(name);
        for line_end in ["\r\n", "\r"] {
            let converted = body.replace('\n', line_end).into_bytes();
            check(
                &format!("{name} with {line_end:?}"),
                &stream(&[&converted]),
                &expected,
            );
            // Byte by byte, so `\r` and `\n` land in different chunks.
            let bytes: Vec<&[u8]> = converted.chunks(1).collect();
            check(
                &format!("{name} with {line_end:?}, byte by byte"),
                &stream(&bytes),
                &expected,
            );
        }
    }
}

#[test]
fn sse_extraction_stops_at_nothing_but_bytes() {
    let cases: &[(&str, &[u8], Extraction)] = &[
        ("empty stream", b"", sse(None, None, false, false)),
        ("only pings", b"event: ping\ndata: {}\n\n", sse(None, None, false, false)),
        (
            "message_delta without message_start",
            b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":4}}\n\n",
            sse(None, Some(tokens(0, 4, 0, 0)), false, false),
        ),
        (
            "message_delta without usage keeps the stream partial",
            b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n\
              event: message_delta\ndata: {\"delta\":{}}\n\n",
            Extraction {
                usage: Some(tokens(3, 0, 0, 0)),
                partial: true,
                ..sse(None, None, false, false)
            },
        ),
        (
            "error event with an unexpected shape",
            b"event: error\ndata: {\"error\":\"boom\"}\n\n",
            Extraction {
                error: Some(ApiError {
                    error_type: "unknown_error".into(),
                    message: "boom".into(),
                }),
                ..sse(None, None, false, false)
            },
        ),
        (
            "usage that is not an object",
            b"event: message_delta\ndata: {\"usage\":[1]}\n\n",
            Extraction {
                diagnostics: vec![Diagnostic::MalformedUsage],
                ..sse(None, None, false, false)
            },
        ),
        (
            "a repeated message_start: the last one wins",
            b"event: message_start\ndata: {\"message\":{\"model\":\"a\",\"usage\":{\"input_tokens\":1}}}\n\n\
              event: message_start\ndata: {\"message\":{\"model\":\"b\",\"usage\":{\"input_tokens\":2}}}\n\n",
            Extraction {
                model: Some("b".into()),
                usage: Some(tokens(2, 0, 0, 0)),
                partial: true,
                diagnostics: vec![Diagnostic::RepeatedMessageStart],
                ..sse(None, None, false, false)
            },
        ),
    ];
    for (name, body, expected) in cases {
        check(name, &stream(&[body]), expected);
    }
}

#[test]
fn complete_bodies_are_detected_json_first() {
    let unknown = |diagnostics: Vec<Diagnostic>| Extraction {
        format: BodyFormat::Unknown,
        diagnostics,
        ..Extraction::default()
    };
    let cases: &[(&str, &[u8], Extraction)] = &[
        ("empty", b"", Extraction::default()),
        ("blank", b" \r\n\t", Extraction::default()),
        (
            "html error page",
            b"<html><body>502 Bad Gateway</body></html>",
            unknown(vec![Diagnostic::UnrecognisedBody]),
        ),
        (
            "json array",
            b"[1, 2]",
            unknown(vec![Diagnostic::UnrecognisedBody]),
        ),
        (
            "truncated json",
            b"{\"model\": \"x\", \"usage\": {\"input_",
            Extraction {
                format: BodyFormat::Json,
                diagnostics: vec![Diagnostic::MalformedJsonBody {
                    error: "EOF while parsing a string at line 1 column 32".into(),
                }],
                ..Extraction::default()
            },
        ),
        (
            "json message without usage",
            b"  {\"type\":\"message\",\"model\":\"m\"}",
            Extraction {
                format: BodyFormat::Json,
                model: Some("m".into()),
                completed: true,
                ..Extraction::default()
            },
        ),
        (
            "json error without details",
            b"{\"type\":\"error\"}",
            Extraction {
                format: BodyFormat::Json,
                error: Some(ApiError {
                    error_type: "unknown_error".into(),
                    message: String::new(),
                }),
                ..Extraction::default()
            },
        ),
        (
            "sse body starting with a comment",
            b": hello\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":2}}\n\n",
            sse(None, Some(tokens(0, 2, 0, 0)), false, false),
        ),
        (
            "sse body with a byte order mark",
            b"\xEF\xBB\xBFevent: message_delta\ndata: {\"usage\":{\"output_tokens\":2}}\n\n",
            sse(None, Some(tokens(0, 2, 0, 0)), false, false),
        ),
    ];
    for (name, body, expected) in cases {
        check(name, &extract_body(body), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// BodyTap: content types and encodings.

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Zlib,
    RawDeflate,
    Brotli,
    Zstd,
}

const ENCODINGS: &[Encoding] = &[
    Encoding::Identity,
    Encoding::Gzip,
    Encoding::Zlib,
    Encoding::RawDeflate,
    Encoding::Brotli,
    Encoding::Zstd,
];

impl Encoding {
    fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Zlib | Self::RawDeflate => Some("deflate"),
            Self::Brotli => Some("br"),
            Self::Zstd => Some("zstd"),
        }
    }

    fn encode(self, body: &[u8]) -> Vec<u8> {
        use flate2::Compression;
        match self {
            Self::Identity => body.to_vec(),
            Self::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
                encoder.write_all(body).unwrap();
                encoder.finish().unwrap()
            }
            Self::Zlib => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
                encoder.write_all(body).unwrap();
                encoder.finish().unwrap()
            }
            Self::RawDeflate => {
                let mut encoder =
                    flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
                encoder.write_all(body).unwrap();
                encoder.finish().unwrap()
            }
            Self::Brotli => {
                let mut output = Vec::new();
                {
                    let mut encoder = brotli::CompressorWriter::new(&mut output, 4096, 5, 22);
                    encoder.write_all(body).unwrap();
                }
                output
            }
            Self::Zstd => zstd::encode_all(body, 3).unwrap(),
        }
    }
}

fn tap(content_type: Option<&str>, encoding: Option<&str>, chunks: &[&[u8]]) -> Extraction {
    let mut tap = BodyTap::new(content_type, encoding);
    for chunk in chunks {
        tap.feed(chunk);
    }
    tap.finish()
}

const SSE_TYPE: Option<&str> = Some("text/event-stream; charset=utf-8");
const JSON_TYPE: Option<&str> = Some("application/json");

#[test]
fn the_tap_decodes_every_encoding_of_every_fixture() {
    for encoding in ENCODINGS {
        for name in SSE_FIXTURES {
            let encoded = encoding.encode(&fixture(name));
            let expected = expected_sse(name);
            let label = format!("{name} as {encoding:?}");
            check(
                &label,
                &tap(SSE_TYPE, encoding.header(), &[&encoded]),
                &expected,
            );
            // In 7-byte frames, so headers and trailers are split too.
            let frames: Vec<&[u8]> = encoded.chunks(7).collect();
            check(
                &label,
                &tap(SSE_TYPE, encoding.header(), &frames),
                &expected,
            );
            // A stream sent without its content type is still found.
            check(
                &label,
                &tap(None, encoding.header(), &[&encoded]),
                &expected,
            );
        }
        for name in JSON_FIXTURES {
            let encoded = encoding.encode(&fixture(name));
            let label = format!("{name} as {encoding:?}");
            let frames: Vec<&[u8]> = encoded.chunks(5).collect();
            check(
                &label,
                &tap(JSON_TYPE, encoding.header(), &frames),
                &expected_json(name),
            );
            // An error body on a response labelled as a stream is still JSON.
            check(
                &label,
                &tap(SSE_TYPE, encoding.header(), &frames),
                &expected_json(name),
            );
        }
    }
}

#[test]
fn every_split_of_a_compressed_stream_gives_the_same_extraction() {
    let body = fixture("sse/normal_with_cache.sse");
    let expected = expected_sse("sse/normal_with_cache.sse");
    for encoding in ENCODINGS {
        let encoded = encoding.encode(&body);
        for at in 0..=encoded.len() {
            let (head, tail) = encoded.split_at(at);
            check(
                &format!("{encoding:?} split at {at}"),
                &tap(SSE_TYPE, encoding.header(), &[head, tail]),
                &expected,
            );
        }
    }
}

#[test]
fn header_values_are_read_leniently() {
    let body = fixture("json/success.json");
    let expected = expected_json("json/success.json");
    let gzip = Encoding::Gzip.encode(&body);
    for header in ["GZIP", " gzip ", "x-gzip", "identity, gzip", "gzip,"] {
        check(header, &tap(JSON_TYPE, Some(header), &[&gzip]), &expected);
    }
    for header in ["", "identity", " "] {
        check(header, &tap(JSON_TYPE, Some(header), &[&body]), &expected);
    }
    check("no content type", &tap(None, None, &[&body]), &expected);
}

#[test]
fn encoding_failures_are_diagnostics_not_panics() {
    let sse_body = fixture("sse/normal_with_cache.sse");
    let gzip = Encoding::Gzip.encode(&sse_body);
    let brotli = Encoding::Brotli.encode(&sse_body);
    let zstd = Encoding::Zstd.encode(&sse_body);

    let unsupported = tap(SSE_TYPE, Some("compress"), &[&sse_body]);
    assert_eq!(unsupported.usage, None);
    assert_eq!(
        unsupported.diagnostics,
        vec![Diagnostic::UnsupportedEncoding {
            encoding: "compress".into()
        }]
    );
    let stacked = tap(SSE_TYPE, Some("gzip, br"), &[&gzip]);
    assert_eq!(stacked.usage, None);
    assert!(matches!(
        stacked.diagnostics[..],
        [Diagnostic::UnsupportedEncoding { .. }]
    ));

    // Plain text labelled as gzip.
    let corrupt = tap(SSE_TYPE, Some("gzip"), &[&sse_body]);
    assert_eq!(corrupt.usage, None);
    assert!(
        matches!(&corrupt.diagnostics[..], [Diagnostic::CorruptEncoding { encoding, .. }] if encoding == "gzip"),
        "{:?}",
        corrupt.diagnostics
    );

    // Cut compressed streams: what was decoded counts, and the cut is reported.
    for (encoding, encoded) in [("gzip", &gzip), ("br", &brotli), ("zstd", &zstd)] {
        let cut = &encoded[..encoded.len() * 2 / 3];
        let got = tap(SSE_TYPE, Some(encoding), &[cut]);
        assert!(
            got.diagnostics.contains(&Diagnostic::TruncatedEncoding {
                encoding: encoding.into()
            }),
            "{encoding}: {:?}",
            got.diagnostics
        );
        // zstd decodes whole blocks (this body is one block), so a cut block yields nothing.
        if encoding != "zstd" {
            assert_eq!(got.model.as_deref(), SONNET, "{encoding}");
        }
    }

    // Garbage in the middle of a compressed stream: never a panic, whatever the coding.
    for encoding in ENCODINGS {
        let mut encoded = encoding.encode(&sse_body);
        let middle = encoded.len() / 2;
        for byte in &mut encoded[middle..middle + 16] {
            *byte ^= 0x5A;
        }
        let _ = tap(SSE_TYPE, encoding.header(), &[&encoded]);
    }
}

#[test]
fn an_empty_body_with_a_content_coding_is_just_empty() {
    for encoding in ENCODINGS {
        check(
            &format!("{encoding:?}"),
            &tap(SSE_TYPE, encoding.header(), &[]),
            &Extraction::default(),
        );
    }
}

#[test]
fn trailing_bytes_after_a_compressed_body_are_ignored() {
    let body = fixture("json/success.json");
    let mut zlib = Encoding::Zlib.encode(&body);
    zlib.extend_from_slice(b"\r\n");
    check(
        "zlib with trailing bytes",
        &tap(JSON_TYPE, Some("deflate"), &[&zlib]),
        &expected_json("json/success.json"),
    );
}

#[test]
fn large_bodies_are_bounded() {
    // A JSON body over the limit is not parsed.
    let mut big = b"{\"model\":\"m\",\"content\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 4096));
    big.extend_from_slice(b"\",\"usage\":{\"input_tokens\":1}}");
    let mut tap = BodyTap::with_max_buffered_bytes(JSON_TYPE, None, 1024);
    for frame in big.chunks(100) {
        tap.feed(frame);
    }
    let got = tap.finish();
    assert_eq!(got.usage, None);
    assert_eq!(
        got.diagnostics,
        vec![Diagnostic::BodyTooLarge { limit: 1024 }]
    );

    // A highly compressed body over the limit: decompression stops there, one diagnostic.
    let mut bomb = b"{\"content\":\"".to_vec();
    bomb.extend(std::iter::repeat_n(b'0', 8 * 1024 * 1024));
    let gzip = Encoding::Gzip.encode(&bomb);
    let mut tap = BodyTap::with_max_buffered_bytes(JSON_TYPE, Some("gzip"), 64 * 1024);
    for frame in gzip.chunks(1024) {
        tap.feed(frame);
    }
    assert_eq!(
        tap.finish().diagnostics,
        vec![Diagnostic::BodyTooLarge { limit: 64 * 1024 }]
    );

    // An event stream without its content type outgrows the buffer: it is streamed instead.
    let stream_body = fixture("sse/normal_with_cache.sse");
    let mut tap = BodyTap::with_max_buffered_bytes(Some("text/plain"), None, 256);
    for frame in stream_body.chunks(100) {
        tap.feed(frame);
    }
    check(
        "undeclared stream over the buffer limit",
        &tap.finish(),
        &expected_sse("sse/normal_with_cache.sse"),
    );
}

#[test]
fn the_model_is_known_as_soon_as_message_start_is_decoded() {
    let body = fixture("sse/normal_with_cache.sse");
    let gzip = Encoding::Gzip.encode(&body);
    let mut tap = BodyTap::new(SSE_TYPE, Some("gzip"));
    assert_eq!(tap.model(), None);
    tap.feed(&gzip);
    assert_eq!(tap.model(), SONNET);
}

// ---------------------------------------------------------------------------------------------
// Random splits.

/// Cuts `body` at the given (unsorted, possibly repeated) positions.
fn cut_at(body: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|cut| *cut %= body.len() + 1);
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&body[start..cut]);
        start = cut;
    }
    pieces.push(&body[start..]);
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_multi_splits_give_the_same_extraction(
        fixture_index in 0..SSE_FIXTURES.len(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let name = SSE_FIXTURES[fixture_index];
        let body = fixture(name);
        let pieces = cut_at(&body, cuts);
        prop_assert_eq!(stream(&pieces), expected_sse(name));
    }

    #[test]
    fn random_multi_splits_through_the_tap_give_the_same_extraction(
        fixture_index in 0..SSE_FIXTURES.len(),
        encoding_index in 0..ENCODINGS.len(),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let name = SSE_FIXTURES[fixture_index];
        let encoded = ENCODINGS[encoding_index].encode(&fixture(name));
        let pieces = cut_at(&encoded, cuts);
        prop_assert_eq!(
            tap(SSE_TYPE, ENCODINGS[encoding_index].header(), &pieces),
            expected_sse(name)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        encoding_index in 0..ENCODINGS.len(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let pieces = cut_at(&body, cuts);
        let _ = stream(&pieces);
        let _ = extract_body(&body);
        let _ = tap(SSE_TYPE, ENCODINGS[encoding_index].header(), &pieces);
        let _ = tap(None, ENCODINGS[encoding_index].header(), &pieces);
    }
}
