//! Oracle for the `usage_extractor` target: `ccf_tokens::extract_body`, `UsageExtractor` and
//! `BodyTap` on arbitrary response bodies cut at arbitrary points.
//!
//! Properties: nothing panics; a `UsageExtractor` or a `BodyTap` reads the same [`Extraction`]
//! whatever the frame boundaries; a body the tap receives gzip-compressed (compressed here, so
//! the compression is valid) reads exactly like the same body sent uncompressed.
//!
//! Input format: byte 0 picks the headers (bits 0-1: `content-type` none / `text/event-stream` /
//! `application/json` / `text/html`; bits 2-4: `content-encoding` none / gzip / deflate / br /
//! zstd / identity / `x-unknown`, applied to the raw fuzzed bytes, which are then mostly
//! corrupt); byte 1 modulo 16 is the number `n` of frame lengths that follow (one byte each);
//! the rest is the body, cut into frames of those lengths plus a last frame with the rest.

use std::io::Write;

use ccf_tokens::{extract_body, BodyTap, Extraction, UsageExtractor};

use crate::chunks::split_chunks;

const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("text/event-stream; charset=utf-8"),
    Some("application/json"),
    Some("text/html"),
];
const CONTENT_ENCODINGS: [Option<&str>; 8] = [
    None,
    Some("gzip"),
    Some("deflate"),
    Some("br"),
    Some("zstd"),
    Some("identity"),
    Some("x-unknown"),
    None,
];

/// Runs one input through the oracle; panics on a property violation.
pub fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector & 0b11)];
    let content_encoding = CONTENT_ENCODINGS[usize::from((selector >> 2) & 0b111)];
    let (frames, body) = split_chunks(rest);
    let lengths: Vec<usize> = frames.iter().map(|frame| frame.len()).collect();

    // A complete body, whatever it holds.
    let _ = extract_body(body);

    // The stream reader: frame boundaries never change the result.
    let whole = extract_stream(&[body]);
    assert_eq!(
        whole,
        extract_stream(&frames),
        "UsageExtractor depends on frame boundaries {lengths:?}"
    );

    // The tap on the raw bytes with the chosen headers: no panic, and for bodies it does not
    // have to decompress, the same result whatever the frame boundaries.
    let tapped_whole = tap(content_type, content_encoding, &[body]);
    let tapped_frames = tap(content_type, content_encoding, &frames);
    if matches!(content_encoding, None | Some("identity")) {
        assert_eq!(
            tapped_whole, tapped_frames,
            "BodyTap ({content_type:?}) depends on frame boundaries {lengths:?}"
        );
    }

    // The same body gzip-compressed by a real encoder reads like the plain body.
    let plain = tap(content_type, None, &[body]);
    let compressed = gzip(body);
    let compressed_frames = resplit(&compressed, &lengths);
    assert_eq!(
        plain,
        tap(content_type, Some("gzip"), &compressed_frames),
        "BodyTap reads a gzip body ({content_type:?}) differently from the plain body"
    );
}

fn extract_stream(frames: &[&[u8]]) -> Extraction {
    let mut extractor = UsageExtractor::new();
    for frame in frames {
        extractor.feed(frame);
        let _ = extractor.model();
    }
    extractor.finish()
}

fn tap(content_type: Option<&str>, content_encoding: Option<&str>, frames: &[&[u8]]) -> Extraction {
    let mut tap = BodyTap::new(content_type, content_encoding);
    for frame in frames {
        tap.feed(frame);
        let _ = tap.model();
    }
    let extraction = tap.finish();
    // Every diagnostic renders.
    for diagnostic in &extraction.diagnostics {
        let _ = diagnostic.to_string();
    }
    extraction
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(body)
        .expect("writing into a Vec cannot fail");
    encoder.finish().expect("writing into a Vec cannot fail")
}

/// Cuts `data` with the same frame lengths (the rest is the last frame).
fn resplit<'a>(data: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
    let mut frames = Vec::with_capacity(lengths.len());
    let mut remaining = data;
    for &length in lengths.iter().take(lengths.len().saturating_sub(1)) {
        let (frame, tail) = remaining.split_at(length.min(remaining.len()));
        frames.push(frame);
        remaining = tail;
    }
    frames.push(remaining);
    frames
}
