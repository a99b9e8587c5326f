//! Unit tests of `session.rs`, kept in their own file so the module reads as its logic.

use super::*;
use http::HeaderValue;

/// The session parts the forwarder reads from `body`.
fn parts_of(body: &str) -> BodySession {
    BodySession::read(&Json::parse(body.as_bytes()).expect("valid test body"))
}

fn session_of(
    headers: &[(&'static str, &str)],
    body: &serde_json::Value,
) -> Option<SessionRequest> {
    session_of_text(headers, &body.to_string())
}

/// [`session_of`] for a body as written (a `Value` would sort its keys and merge repeated ones).
fn session_of_text(headers: &[(&'static str, &str)], body: &str) -> Option<SessionRequest> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_str(value).expect("header"));
    }
    identify(&http::Method::POST, "/v1/messages", &map, &parts_of(body))
}

fn conversation(turns: &[&str], breakpoint_on_last: bool) -> serde_json::Value {
    let messages: Vec<serde_json::Value> = turns
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let role = if index % 2 == 0 { "user" } else { "assistant" };
            let mut block = serde_json::json!({"type": "text", "text": text});
            if breakpoint_on_last && index + 1 == turns.len() {
                block["cache_control"] = serde_json::json!({"type": "ephemeral"});
            }
            serde_json::json!({"role": role, "content": [block]})
        })
        .collect();
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
    })
}

#[test]
fn the_prompt_hash_follows_a_conversation_across_turns() {
    let first = session_of(&[], &conversation(&["hello"], true)).expect("session");
    let third = session_of(&[], &conversation(&["hello", "hi", "more"], true)).expect("session");
    assert_eq!(first.source, SessionSource::Prompt);
    assert_eq!(
        first.key, third.key,
        "moving breakpoints do not change the key"
    );
    let other = session_of(&[], &conversation(&["goodbye"], true)).expect("session");
    assert_ne!(first.key, other.key);
    assert!(!first.long_ttl);
}

#[test]
fn headers_win_over_user_id_which_wins_over_the_prompt() {
    let mut body = conversation(&["hello"], false);
    body["metadata"] = serde_json::json!({"user_id": "user_abc_session_1"});
    let by_user = session_of(&[], &body).expect("session");
    assert_eq!(by_user.source, SessionSource::UserId);
    let by_header = session_of(&[("x-claude-code-session-id", "s-1")], &body).expect("session");
    assert_eq!(by_header.source, SessionSource::Header);
    let generic = session_of(&[("x-session-id", "s-1")], &body).expect("session");
    assert_eq!(generic.key, by_header.key, "one value, one session");
    assert_ne!(by_user.key, by_header.key);
    // A user id that is not a string is ignored, and does not break the request fields.
    body["metadata"] = serde_json::json!({"user_id": 42});
    let fallback = session_of(&[], &body).expect("session");
    assert_eq!(fallback.source, SessionSource::Prompt);
}

#[test]
fn the_one_hour_cache_is_found_anywhere_in_the_body() {
    let mut body = conversation(&["hello"], false);
    assert!(!session_of(&[], &body).expect("session").long_ttl);
    body["messages"][0]["content"][0]["cache_control"] =
        serde_json::json!({"type": "ephemeral", "ttl": "1h"});
    assert!(session_of(&[], &body).expect("session").long_ttl);
    let mut body = conversation(&["hello"], false);
    body["tools"] = serde_json::json!([{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]);
    assert!(session_of(&[], &body).expect("session").long_ttl);
    let mut body = conversation(&["hello"], false);
    body["system"][0]["cache_control"] = serde_json::json!({"type": "ephemeral", "ttl": "1h"});
    assert!(session_of(&[], &body).expect("session").long_ttl);
    // A text that merely mentions it is not a request for it.
    let body = conversation(&["\"cache_control\": {\"ttl\": \"1h\"}"], false);
    assert!(!session_of(&[], &body).expect("session").long_ttl);
    // A "ttl" key outside cache_control is content, not a cache setting.
    let mut body = conversation(&["hello"], false);
    body["messages"][0]["content"][0]["ttl"] = serde_json::json!("1h");
    assert!(!session_of(&[], &body).expect("session").long_ttl);
}

#[test]
fn other_requests_and_empty_bodies_have_no_session() {
    let body = serde_json::json!({"model": "m"});
    assert_eq!(session_of(&[], &body), None);
    assert_eq!(
        identify(
            &http::Method::GET,
            "/v1/models",
            &HeaderMap::new(),
            &BodySession::default()
        ),
        None
    );
}

#[test]
fn odd_value_types_never_break_the_request_fields() {
    let body = serde_json::json!({
        "model": "m",
        "system": "plain text system",
        "messages": "not an array",
        "tools": 5,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
        "metadata": null,
    });
    let parts = parts_of(&body.to_string());
    assert!(parts.long_ttl_elsewhere);
    let session = session_of(&[], &body).expect("session");
    assert!(session.long_ttl);
}

#[test]
fn keys_are_stable_and_shown_as_hex() {
    // FNV-1a is fixed: the same header gives the same key on every run and instance.
    let a = key_of(b'h', "session-1");
    assert_eq!(a, key_of(b'h', "session-1"));
    assert_eq!(a.to_string().len(), 16);
    assert_ne!(a, key_of(b'u', "session-1"));
}

/// Keys computed by the serde walk of earlier versions (before issue 19's one parse): a
/// conversation must keep its key across an upgrade, and between instances of two versions
/// sharing affinity. Numbers of each kind, escapes, a repeated key, moved breakpoints, a
/// nested `cache_control` and empty parts are all in these bodies.
#[test]
fn prompt_keys_are_those_of_earlier_versions() {
    let pinned = [
        (
            r#"{"system":"You are Claude Code.","messages":[{"role":"user","content":"hello"}]}"#,
            "aa470260bbee2bcf",
            false,
        ),
        (
            r#"{"system":[{"type":"text","text":"Sys\n\"quoted\" é 中","cache_control":{"type":"ephemeral","ttl":"1h"}}],"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}, {"type":"x","n":-5,"u":7,"f":1.5,"b":true,"z":null,"a":[1,[2]],"o":{"k":"v","k":"w"}}]},{"role":"assistant","content":"later"}]}"#,
            "14d0e22c28c0bdc9",
            true,
        ),
        (
            r#"{"messages":[{"role":"user","content":"only messages","metadata":{"cache_control":{"ttl":"1h"}}}]}"#,
            "f41af1f710303975",
            true,
        ),
        (r#"{"system":[],"messages":[]}"#, "896e3367d066fb6c", false),
        (
            r#"{"system":"s","messages":[{"ro\u006ce":"user","content":"esc key"}]}"#,
            "de9409af109bc272",
            false,
        ),
    ];
    for (body, key, long_ttl) in pinned {
        let session = session_of_text(&[], body).expect("a prompt session");
        assert_eq!(
            (session.key.to_string().as_str(), session.long_ttl),
            (key, long_ttl),
            "{body}"
        );
    }
    // A `null` part is an absent one: the same key as without it, and none without the other.
    let without = session_of_text(&[], r#"{"messages":[{"role":"user","content":"hello"}]}"#)
        .expect("a prompt session");
    let with_null = session_of_text(
        &[],
        r#"{"system":null,"messages":[{"role":"user","content":"hello"}]}"#,
    )
    .expect("a prompt session");
    assert_eq!(with_null.key, without.key);
    assert_eq!(
        session_of_text(&[], r#"{"system":null,"messages":null}"#),
        None
    );
    let empty = parts_of(r#"{"system":[],"messages":[]}"#);
    assert!(empty.system.is_some_and(|part| part.hash.is_some()));
    assert_eq!(empty.messages.and_then(|part| part.hash), None);
}
