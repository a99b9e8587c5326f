//! Throughput of [`UsageExtractor`] on a realistic large Claude stream, fed in 4 KiB frames.
//!
//! `cargo bench -p ccf-tokens --bench sse_decode -- --warm-up-time 1 --measurement-time 3`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use ccf_tokens::{BodyTap, UsageExtractor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A long answer: message_start, a thinking block, 1,400 text deltas, a tool call streamed as
/// 600 input_json deltas, pings, message_delta and message_stop (2,000 content_block_delta
/// events in all).
fn claude_stream() -> Vec<u8> {
    let mut stream = String::new();
    let mut event = |name: &str, data: &str| {
        stream.push_str("event: ");
        stream.push_str(name);
        stream.push_str("\ndata: ");
        stream.push_str(data);
        stream.push_str("\n\n");
    };
    event(
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":1024,"cache_read_input_tokens":14336,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#,
    );
    event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    let words = [
        "The",
        " function",
        " reads",
        " each",
        " frame",
        " once,",
        " and",
        " the",
        " decoder",
        " never",
        " copies",
        " data",
        " it",
        " does",
        " not",
        " need.",
        " 中文",
        " テキスト",
    ];
    for index in 0..1400 {
        let text = format!(
            "{}{}",
            words[index % words.len()],
            words[(index * 7) % words.len()]
        );
        event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            ),
        );
        if index % 300 == 0 {
            event("ping", r#"{"type": "ping"}"#);
        }
    }
    event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    event(
        "content_block_start",
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"Edit","input":{}}}"#,
    );
    for index in 0..600 {
        let fragment = match index % 4 {
            0 => r#"{\"file_path\": \"/src/ma"#,
            1 => r#"in.rs\", \"old_string\": \"let x"#,
            2 => r#" = 1;\\n\", \"new_str"#,
            _ => r#"ing\": \"let x = 2;\"}"#,
        };
        event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":1,"delta":{{"type":"input_json_delta","partial_json":"{fragment}"}}}}"#
            ),
        );
    }
    event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":1}"#,
    );
    event(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":2503}}"#,
    );
    event("message_stop", r#"{"type":"message_stop"}"#);
    stream.into_bytes()
}

fn bench(criterion: &mut Criterion) {
    let stream = claude_stream();
    // Sanity: the stream parses to the expected usage before it is timed.
    let mut check = UsageExtractor::new();
    check.feed(&stream);
    let extraction = check.finish();
    assert_eq!(
        extraction.usage.map(|usage| usage.output_tokens),
        Some(2503)
    );

    let mut group = criterion.benchmark_group("sse_decode");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("usage_extractor_4k_frames", |bencher| {
        bencher.iter(|| {
            let mut extractor = UsageExtractor::new();
            for frame in stream.chunks(4096) {
                extractor.feed(black_box(frame));
            }
            black_box(extractor.finish())
        });
    });
    group.bench_function("body_tap_identity_4k_frames", |bencher| {
        bencher.iter(|| {
            let mut tap = BodyTap::new(Some("text/event-stream"), None);
            for frame in stream.chunks(4096) {
                tap.feed(black_box(frame));
            }
            black_box(tap.finish())
        });
    });
    group.finish();

    // The same stream gzip-compressed, as some upstreams send it: the cost is dominated by
    // inflate. Throughput is in decoded (stream) bytes per second.
    let gzip = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&stream).expect("in-memory write");
        encoder.finish().expect("in-memory write")
    };
    let mut group = criterion.benchmark_group("sse_decode_gzip");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("body_tap_gzip_4k_frames", |bencher| {
        bencher.iter(|| {
            let mut tap = BodyTap::new(Some("text/event-stream"), Some("gzip"));
            for frame in gzip.chunks(4096) {
                tap.feed(black_box(frame));
            }
            black_box(tap.finish())
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
