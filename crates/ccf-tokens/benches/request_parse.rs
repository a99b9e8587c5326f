//! What admission spends on a request body before forwarding it (issue 19: the body is parsed
//! once, and the relay-honesty estimate is made from that parse): the parse into the borrowed
//! tree, and the parse plus the estimate, for a Claude Code request of 9 KB and one of about
//! 500 KB (the same conversation, its messages repeated, as a long session's context grows).
//!
//! `cargo bench -p ccf-tokens --bench request_parse -- --warm-up-time 1 --measurement-time 3`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use ccf_tokens::estimate_parsed_request;
use ccf_tokens::tree::Json;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The Claude Code fixture of the estimate's tests.
const SESSION: &str = include_str!("../tests/fixtures/estimate/16_claude_code_session.json");

/// The fixture with its messages repeated until the body holds at least `bytes`.
fn grown_session(bytes: usize) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_str(SESSION).expect("fixture is JSON");
    let messages = body["messages"]
        .as_array()
        .cloned()
        .expect("fixture has messages");
    while serde_json::to_vec(&body).expect("serialises").len() < bytes {
        if let Some(all) = body["messages"].as_array_mut() {
            all.extend(messages.iter().cloned());
        }
    }
    serde_json::to_vec(&body).expect("serialises")
}

fn request_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_parse");
    for (name, body) in [
        ("claude_code_9k", SESSION.as_bytes().to_vec()),
        ("claude_code_500k", grown_session(500_000)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/parse"), |b| {
            b.iter(|| Json::parse(black_box(&body)).map(|tree| drop(black_box(tree))))
        });
        group.bench_function(format!("{name}/parse_and_estimate"), |b| {
            b.iter(|| {
                let tree = Json::parse(black_box(&body)).expect("valid body");
                estimate_parsed_request(&tree, 4.0).expect("an object")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_parse);
criterion_main!(benches);
