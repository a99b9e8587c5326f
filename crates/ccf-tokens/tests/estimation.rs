//! The count_tokens fallback estimate: behaviour tests, and its error on the corpus in
//! `tests/fixtures/estimate` against the reference counts in `reference_counts.tsv` (how they
//! were made: `reference.js` there and `docs/token-estimation.md`).

// Helpers outside `#[test]` functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ccf_tokens::{estimate_input_tokens, EstimateError};

/// The constant the estimator adds when `tools` is not empty (not part of the reference text).
const TOOL_USE_SYSTEM_PROMPT: i64 = 340;

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/estimate")
}

/// `(file, reference tokens, has tools)` rows of `reference_counts.tsv`.
fn reference_counts() -> Vec<(String, i64, bool)> {
    let text = std::fs::read_to_string(corpus_dir().join("reference_counts.tsv")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (
                fields[0].to_string(),
                fields[1].parse().unwrap(),
                fields[2] == "true",
            )
        })
        .collect()
}

#[test]
fn corpus_error_stays_within_the_documented_bounds() {
    let rows = reference_counts();
    assert!(rows.len() >= 10, "the corpus has {} requests", rows.len());
    let mut absolute_errors = Vec::new();
    println!("| request | reference | estimate | error |");
    println!("|---|---:|---:|---:|");
    for (file, reference, has_tools) in &rows {
        let body = std::fs::read(corpus_dir().join(file)).unwrap();
        let estimate = estimate_input_tokens(&body, 4.0).unwrap() as i64;
        // The reference has no tool-use system prompt: compare like with like.
        let comparable = estimate
            - if *has_tools {
                TOOL_USE_SYSTEM_PROMPT
            } else {
                0
            };
        let error = (comparable - reference) as f64 / *reference as f64 * 100.0;
        println!("| {file} | {reference} | {comparable} | {error:+.1}% |");
        absolute_errors.push(error.abs());
        assert!(error.abs() <= 35.0, "{file}: {error:+.1}%");
    }
    let mean = absolute_errors.iter().sum::<f64>() / absolute_errors.len() as f64;
    println!("mean absolute error: {mean:.1}%");
    assert!(mean <= 15.0, "mean absolute error {mean:.1}%");
}

/// Estimates `body` at `ratio`, panicking on error.
fn estimate(body: &str, ratio: f64) -> u64 {
    estimate_input_tokens(body.as_bytes(), ratio).unwrap_or_else(|error| panic!("{body}: {error}"))
}

fn check(cases: &[(&str, &str, f64, u64)]) {
    for (name, body, ratio, expected) in cases {
        assert_eq!(estimate(body, *ratio), *expected, "{name}: {body}");
    }
}

// The overheads, as documented: 4 per request, 4 per message, 6 per structured block, 8 per
// tool plus 340 once when tools are present.

#[test]
fn text_is_weighed_by_script() {
    check(&[
        ("empty request", "{}", 4.0, 4),
        (
            "latin",
            r#"{"messages":[{"role":"user","content":"abcdefgh"}]}"#,
            4.0,
            10,
        ),
        (
            "latin at ratio 2",
            r#"{"messages":[{"role":"user","content":"abcdefgh"}]}"#,
            2.0,
            12,
        ),
        (
            "han",
            r#"{"messages":[{"role":"user","content":"中文中文中文中文"}]}"#,
            4.0,
            16,
        ),
        (
            "kana",
            r#"{"messages":[{"role":"user","content":"ありがとうござい"}]}"#,
            4.0,
            16,
        ),
        (
            "hangul",
            r#"{"messages":[{"role":"user","content":"안녕하세요감사해"}]}"#,
            4.0,
            16,
        ),
        (
            "cyrillic",
            r#"{"messages":[{"role":"user","content":"абвгдежз"}]}"#,
            4.0,
            12,
        ),
        (
            "symbols",
            r#"{"messages":[{"role":"user","content":"{}()[];:"}]}"#,
            4.0,
            11,
        ),
        (
            "a bad ratio falls back to 4",
            r#"{"messages":[{"role":"user","content":"abcdefgh"}]}"#,
            0.0,
            10,
        ),
    ]);
}

#[test]
fn every_place_that_holds_text_is_counted() {
    check(&[
        ("system string", r#"{"system":"abcd"}"#, 4.0, 5),
        (
            "system blocks",
            r#"{"system":[{"type":"text","text":"abcd","cache_control":{"type":"ephemeral"}},{"type":"text","text":"efgh"}]}"#,
            4.0,
            6,
        ),
        (
            "text blocks",
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"text","text":"efgh"}]}]}"#,
            4.0,
            10,
        ),
        (
            "tool_use input is serialized",
            r#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"ab","input":{"a":1}}]}]}"#,
            4.0,
            17,
        ),
        (
            "tool_result string",
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"abcd"}]}]}"#,
            4.0,
            15,
        ),
        (
            "tool_result blocks",
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","is_error":true,"content":[{"type":"text","text":"abcd"}]}]}]}"#,
            4.0,
            15,
        ),
        (
            "thinking, without its signature",
            r#"{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"abcd","signature":"EqQBCgIYAhIM1gbcDa9GJwZA"}]}]}"#,
            4.0,
            9,
        ),
        (
            "document with a text source",
            r#"{"messages":[{"role":"user","content":[{"type":"document","title":"abcd","source":{"type":"text","media_type":"text/plain","data":"efghijkl"}}]}]}"#,
            4.0,
            17,
        ),
        (
            "document with a base64 source",
            r#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"}}]}]}"#,
            4.0,
            2264,
        ),
        (
            "image",
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}"#,
            4.0,
            1608,
        ),
        (
            "unknown block: its strings minus identifiers",
            r#"{"messages":[{"role":"user","content":[{"type":"search_result","id":"zzzzzzzz","source":"abcd","title":"efgh","content":[{"type":"text","text":"ijkl"}]}]}]}"#,
            4.0,
            17,
        ),
    ]);
}

#[test]
fn tools_cost_their_definitions_and_the_tool_use_prompt() {
    check(&[
        ("no tools", r#"{"tools":[]}"#, 4.0, 4),
        (
            "one tool",
            r#"{"tools":[{"name":"abcd","description":"efgh","input_schema":{}}]}"#,
            4.0,
            355,
        ),
        (
            "two tools",
            r#"{"tools":[{"name":"abcd","input_schema":{}},{"name":"efgh","input_schema":{}}]}"#,
            4.0,
            364,
        ),
        (
            "an Anthropic-defined tool",
            r#"{"tools":[{"type":"bash_20250124","name":"bash"}]}"#,
            4.0,
            653,
        ),
    ]);
}

#[test]
fn cjk_text_costs_more_than_latin_text_of_the_same_length() {
    let latin = estimate(
        r#"{"messages":[{"role":"user","content":"hello world, how are you"}]}"#,
        4.0,
    );
    let chinese = estimate(
        r#"{"messages":[{"role":"user","content":"你好世界你好世界你好世界你好世界你好世界你好世界"}]}"#,
        4.0,
    );
    // Same number of characters (24); 8 tokens of overhead in both.
    assert_eq!(chinese, 8 + 24);
    assert!(
        chinese - 8 > 3 * (latin - 8),
        "chinese {chinese}, latin {latin}"
    );
}

#[test]
fn bodies_that_are_not_json_objects_are_rejected() {
    for body in ["", "{", "not json", "{\"messages\": [}"] {
        assert!(
            matches!(
                estimate_input_tokens(body.as_bytes(), 4.0),
                Err(EstimateError::InvalidJson(_))
            ),
            "{body:?}"
        );
    }
    for body in ["[]", "\"text\"", "42", "null"] {
        assert!(
            matches!(
                estimate_input_tokens(body.as_bytes(), 4.0),
                Err(EstimateError::NotAnObject)
            ),
            "{body:?}"
        );
    }
}

#[test]
fn unexpected_shapes_are_estimated_not_rejected() {
    check(&[
        ("messages not an array", r#"{"messages":"abcd"}"#, 4.0, 4),
        (
            "message without content",
            r#"{"messages":[{"role":"user","text":"abcd"}]}"#,
            4.0,
            10,
        ),
        (
            "content a number",
            r#"{"messages":[{"role":"user","content":42}]}"#,
            4.0,
            8,
        ),
        (
            "bare strings in blocks",
            r#"{"system":["abcd","efgh"]}"#,
            4.0,
            6,
        ),
    ]);
}
