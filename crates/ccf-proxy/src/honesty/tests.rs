//! Unit tests of `honesty.rs`, kept in their own file so the module reads as its logic.

use super::*;
use ccf_tokens::tree::Json;
use ccf_types::Usage;

fn config(yaml_routing: &str) -> Config {
    let yaml =
        format!("{yaml_routing}\nendpoints:\n  - name: relay\n    url: https://relay.invalid\n");
    Config::from_yaml_str(&yaml).expect("valid test config")
}

fn parts(method: &str, path: &str) -> http::request::Parts {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("valid request")
        .into_parts()
        .0
}

fn body() -> Json<'static> {
    Json::parse(
        br#"{"model":"claude-opus-4-1","messages":[{"role":"user","content":"hello there"}]}"#,
    )
    .expect("valid test body")
}

fn watch(config: &Config) -> HonestyWatch {
    Honesty::watch(
        config,
        RequestId::generate(),
        &parts("POST", "/v1/messages"),
        Some(&body()),
        Some("claude-opus-4-1"),
    )
    .expect("messages are watched")
}

fn extraction(model: &str, input_tokens: u64) -> Extraction {
    let mut extraction = ccf_tokens::extract_body(br#"{"type":"message","model":"m","usage":{}}"#);
    extraction.model = Some(model.to_string());
    extraction.usage = Some(Usage {
        input_tokens,
        output_tokens: 10,
        ..Usage::default()
    });
    extraction.partial = false;
    extraction
}

#[test]
fn counts_each_delta_event_once_and_ignores_the_word_in_text() {
    let check = |frame: &str, expected: u32| {
        assert_eq!(count_content_deltas(frame.as_bytes()), expected, "{frame}");
    };
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
    check(delta, 1);
    check(&delta.repeat(5), 5);
    check("event: content_block_delta\n", 0);
    check(
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"say \\\"content_block_delta\\\"\"}}\n\n",
        1,
    );
    check("", 0);
    check("\"", 0);
    check("event: ping\ndata: {\"type\":\"ping\"}\n\n", 0);
}

#[test]
fn only_messages_posts_are_watched_and_only_when_enabled() {
    let on = config("");
    let off = config("routing:\n  relay_honesty: off\n");
    let id = RequestId::generate();
    let watched = |config: &Config, method: &str, path: &str| {
        Honesty::watch(config, id, &parts(method, path), Some(&body()), Some("m")).is_some()
    };
    assert!(watched(&on, "POST", "/v1/messages"));
    assert!(watched(&on, "POST", "/v1/messages?beta=true"));
    assert!(!watched(&on, "POST", "/v1/messages/count_tokens"));
    assert!(!watched(&on, "GET", "/v1/models"));
    assert!(!watched(&off, "POST", "/v1/messages"));
}

#[test]
fn finish_compares_model_usage_and_stream_pacing() {
    let config = config("");
    let mut short = watch(&config);
    short.watch_answer(true, None);
    short.on_data(b"data: {\"type\":\"content_block_delta\"}\n\n");
    let check = short.finish(&extraction("claude-opus-4-1-20250805", 20));
    let flagged: Vec<bool> = check.verdicts.iter().map(|v| v.flagged).collect();
    // One delta is too few to judge pacing: no stream verdict at all.
    assert_eq!(flagged, [false, false], "{:?}", check.verdicts);

    let mut paced = watch(&config);
    paced.watch_answer(true, None);
    let start = Instant::now();
    paced.stream = Some(DeltaTiming {
        first: Some(start),
        last: Some(start + std::time::Duration::from_millis(600)),
        deltas: 20,
        tight_gaps: 3,
    });
    let check = paced.finish(&extraction("claude-opus-4-1", 20));
    let flagged: Vec<bool> = check.verdicts.iter().map(|v| v.flagged).collect();
    assert_eq!(flagged, [false, false, false], "{:?}", check.verdicts);

    let mut dishonest = watch(&config);
    dishonest.watch_answer(true, None);
    dishonest.on_data(
        "data: {\"type\":\"content_block_delta\"}\n\n"
            .repeat(20)
            .as_bytes(),
    );
    let check = dishonest.finish(&extraction("claude-3-haiku-20240307", 50_000));
    let flagged: Vec<bool> = check.verdicts.iter().map(|v| v.flagged).collect();
    assert_eq!(flagged, [true, true, true], "{:?}", check.verdicts);
    assert!(
        !check
            .verdicts
            .iter()
            .any(|verdict| verdict.observed.asked().contains("hello")
                || verdict.observed.reported().contains("hello")),
        "prompt text never appears in a verdict"
    );
}

/// A watch on a request with this body.
fn watch_body(config: &Config, body: serde_json::Value) -> HonestyWatch {
    Honesty::watch(
        config,
        RequestId::generate(),
        &parts("POST", "/v1/messages"),
        Json::parse(body.to_string().as_bytes()).ok().as_ref(),
        Some("claude-opus-4-1"),
    )
    .expect("messages are watched")
}

/// Honest upstreams that the checks once flagged: none of these may ever be flagged.
#[test]
fn honest_upstreams_are_never_flagged() {
    let config = config("");
    let thought = "Let me weigh each option carefully before answering. ".repeat(80);
    let assistant_turn = |answer: &str| {
        serde_json::json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": thought, "signature": "c2ln"},
            {"type": "text", "text": answer}]})
    };
    let image = serde_json::json!({"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}});
    let pdf = serde_json::json!({"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}});
    // (what, request body, input tokens the real API reports for it)
    let fixtures = [
        (
            "earlier turns' thinking, which the API drops from the context",
            serde_json::json!({"model": "claude-opus-4-1", "messages": [
                {"role": "user", "content": "Which sort should I use?"},
                assistant_turn("Merge sort."),
                {"role": "user", "content": "And for nearly sorted data?"},
                assistant_turn("Insertion sort."),
                {"role": "user", "content": "Thanks. One more question then."}]}),
            60,
        ),
        (
            "ten small images (a few dozen tokens each, not 1,600)",
            serde_json::json!({"model": "claude-opus-4-1", "messages": [
                {"role": "user", "content": [
                    image.clone(), image.clone(), image.clone(), image.clone(),
                    image.clone(), image.clone(), image.clone(), image.clone(),
                    image.clone(), image,
                    {"type": "text", "text": "Which of these icons is blue?"}]}]}),
            900,
        ),
        (
            "a long PDF (thousands of tokens per page, many pages)",
            serde_json::json!({"model": "claude-opus-4-1", "messages": [
                {"role": "user", "content": [
                    pdf, {"type": "text", "text": "Summarise this report."}]}]}),
            60_000,
        ),
    ];
    for (what, body, reported) in fixtures {
        let check = watch_body(&config, body).finish(&extraction("claude-opus-4-1", reported));
        assert!(
            check.verdicts.iter().all(|verdict| !verdict.flagged),
            "{what}: {:?}",
            check.verdicts
        );
    }

    // A slow client held the relay back: the frames that waited for it were read back to
    // back, however the upstream paced them.
    let mut backpressured = watch(&config);
    backpressured.watch_answer(true, None);
    backpressured.relay_backpressured();
    backpressured.on_data(
        "data: {\"type\":\"content_block_delta\"}\n\n"
            .repeat(20)
            .as_bytes(),
    );
    let check = backpressured.finish(&extraction("claude-opus-4-1", 20));
    assert!(
        check.verdicts.iter().all(|verdict| !verdict.flagged),
        "a backpressured stream: {:?}",
        check.verdicts
    );
}

#[test]
fn compressed_or_json_answers_are_not_timed_and_partial_usage_is_not_judged() {
    let config = config("");
    let mut compressed = watch(&config);
    compressed.watch_answer(true, Some("gzip"));
    compressed.on_data("\"content_block_delta\"".repeat(20).as_bytes());
    let mut partial = extraction("claude-opus-4-1", 50_000);
    partial.partial = true;
    let check = compressed.finish(&partial);
    assert_eq!(check.verdicts.len(), 1, "{:?}", check.verdicts);

    let mut json = watch(&config);
    json.watch_answer(false, None);
    json.on_data("\"content_block_delta\"".repeat(20).as_bytes());
    let check = json.finish(&extraction("claude-opus-4-1", 20));
    assert_eq!(check.verdicts.len(), 2, "{:?}", check.verdicts);
}

#[test]
fn the_scoreboard_follows_the_configuration_settings() {
    let quiet = config("");
    let demoting = config("routing:\n  demote_dishonest: true\n");
    let honesty = Honesty::new(&quiet);
    let now = Instant::now();
    let flagged = || HonestyCheck {
        request_id: "req".into(),
        at: SystemTime::now(),
        verdicts: vec![SignalVerdict::model("a", "b", false)],
    };
    for _ in 0..6 {
        assert!(honesty.record(&quiet, "relay", flagged(), now).is_empty());
    }
    let changes = honesty.record(&demoting, "relay", flagged(), now);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].demoted);
    assert!(honesty.view(now)[0].demoted);
}
