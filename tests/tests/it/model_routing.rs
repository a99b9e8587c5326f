//! Issue 20, model mapping per endpoint (`endpoints[].model_map`) and routing by model
//! (`routing.model_rules`), end to end against mock upstreams that record the body each one
//! received. The mock answers like the real API: with the model it was sent (the default reply
//! names the request body's `model`).

use crate::support;

use std::sync::Arc;

use ccf_store::UsageStore;
use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use serde_json::json;
use support::{admin_get, config, endpoint_yaml, Forwarder, Outcomes, WAIT};

/// One attempt per endpoint, no back-off to speak of, affinity off (it keeps conversations on
/// their endpoint on purpose, and these tests send the same one again).
const FAST: &str = "retry:\n  max_attempts: 1\n  base_delay: 1ms\n  max_delay: 2ms\nrouting:\n  session_affinity: off\n";

fn request(model: &str) -> serde_json::Value {
    json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "map me"}],
    })
}

/// The `model` of every request body `upstream` received on `path`, in order.
fn models_received(upstream: &MockUpstream, path: &str) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .filter(|request| request.path == path)
        .map(|request| {
            request
                .json()
                .and_then(|body| body["model"].as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

fn messages_models(upstream: &MockUpstream) -> Vec<String> {
    models_received(upstream, "/v1/messages")
}

#[tokio::test]
async fn each_endpoint_gets_its_own_mapping_and_a_failover_uses_the_next_ones() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let third = MockUpstream::start().await;
    first.enqueue(Reply::overloaded());
    second.enqueue(Reply::error(500, "api_error", "boom"));
    let forwarder = Forwarder::start(config(
        FAST,
        &[
            endpoint_yaml(
                "first",
                &first.url(),
                "priority: 1\nmodel_map: {'claude-3-5-haiku-*': first-haiku}",
            ),
            endpoint_yaml(
                "second",
                &second.url(),
                "priority: 2\nmodel_map: {'*haiku*': second-haiku}",
            ),
            // No map: the client's model passes unchanged.
            endpoint_yaml("third", &third.url(), "priority: 3"),
        ],
    ))
    .await;
    let answer = forwarder
        .messages(request("claude-3-5-haiku-20241022"), &[])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(messages_models(&first), ["first-haiku"]);
    assert_eq!(messages_models(&second), ["second-haiku"]);
    assert_eq!(messages_models(&third), ["claude-3-5-haiku-20241022"]);
    // The relayed answer is the upstream's, naming the model it was sent.
    assert_eq!(answer.json()["model"], "claude-3-5-haiku-20241022");
    // Each rewrite is counted by endpoint, the map key that matched and the name sent.
    let metrics = forwarder
        .send(Method::GET, "/metrics", &[], String::new())
        .await;
    let text = String::from_utf8_lossy(&metrics.bytes()).to_string();
    for line in [
        "ccf_model_mapped_total{endpoint=\"first\",pattern=\"claude-3-5-haiku-*\",to=\"first-haiku\"} 1",
        "ccf_model_mapped_total{endpoint=\"second\",pattern=\"*haiku*\",to=\"second-haiku\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    assert!(
        !text.contains("endpoint=\"third\",pattern"),
        "third maps nothing"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn the_body_is_spliced_byte_for_byte_and_content_length_follows() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        FAST,
        &[endpoint_yaml(
            "relay",
            &upstream.url(),
            "model_map: {'claude-opus-4-5': 'relay/opus \"4.5\"'}",
        )],
    ))
    .await;
    // Odd spacing, `model` not first, another `model` key nested: only the top-level value moves.
    let sent = "{ \"max_tokens\": 8,\n  \"metadata\": {\"model\": \"claude-opus-4-5\"},\n  \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}],\n  \"model\" :  \"claude-opus-4-5\" }";
    let answer = forwarder
        .send(
            Method::POST,
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            sent.to_string(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let received = upstream.wait_for_requests(1, WAIT).await;
    let expected = sent.replacen(
        "\"model\" :  \"claude-opus-4-5\"",
        "\"model\" :  \"relay/opus \\\"4.5\\\"\"",
        1,
    );
    assert_eq!(received[0].body_text(), expected);
    assert_eq!(
        received[0].header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn an_exact_name_beats_a_glob_and_unknown_models_pass_unchanged() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        FAST,
        &[endpoint_yaml(
            "relay",
            &upstream.url(),
            "model_map:\n  'claude-*': any-claude\n  'claude-sonnet-*': any-sonnet\n  claude-sonnet-4-5: exact-sonnet",
        )],
    ))
    .await;
    for model in [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-5",
        "gpt-4o",
    ] {
        assert_eq!(forwarder.messages(request(model), &[]).await.status, 200);
    }
    assert_eq!(
        messages_models(&upstream),
        ["exact-sonnet", "any-sonnet", "any-claude", "gpt-4o"]
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn count_tokens_is_mapped_per_endpoint_too() {
    let refusing = MockUpstream::start().await;
    let counting = MockUpstream::start().await;
    refusing.enqueue(Reply::error(500, "api_error", "no counting today"));
    let forwarder = Forwarder::start(config(
        &format!("{FAST}token_counting:\n  enabled: true\n"),
        &[
            endpoint_yaml(
                "refusing",
                &refusing.url(),
                "priority: 1\nsupports_count_tokens: true\nmodel_map: {'*haiku*': refusing-haiku}",
            ),
            endpoint_yaml(
                "counting",
                &counting.url(),
                "priority: 2\nsupports_count_tokens: true\nmodel_map: {'*haiku*': counting-haiku}",
            ),
        ],
    ))
    .await;
    let answer = forwarder
        .send(
            Method::POST,
            "/v1/messages/count_tokens",
            &[("content-type", "application/json")],
            request("claude-3-5-haiku-20241022").to_string(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-token-estimation"), None);
    assert_eq!(
        models_received(&refusing, "/v1/messages/count_tokens"),
        ["refusing-haiku"]
    );
    assert_eq!(
        models_received(&counting, "/v1/messages/count_tokens"),
        ["counting-haiku"]
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn the_record_and_the_stored_row_keep_the_requested_and_the_reported_model() {
    let upstream = MockUpstream::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join("usage.db");
    let outcomes = Arc::new(Outcomes::default());
    let config = support::config_with_usage(
        &format!(
            "  enabled: true\n  flush_interval: 100ms\n  database_path: {}\n",
            path.display()
        ),
        FAST,
        &[endpoint_yaml(
            "relay",
            &upstream.url(),
            "model_map: {'*haiku*': glm-4.5-air}",
        )],
    );
    let forwarder = Forwarder::start_observed(
        config,
        Some(Arc::clone(&outcomes) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    let mapped = forwarder
        .messages(request("claude-3-5-haiku-20241022"), &[])
        .await;
    assert_eq!(mapped.status, 200);
    // The upstream substitutes another model than the one it was sent: that is a mismatch.
    upstream.enqueue(Reply::json().model("glm-4.5-flash"));
    let substituted = forwarder
        .messages(request("claude-3-5-haiku-20241022"), &[])
        .await;
    assert_eq!(substituted.status, 200);
    let id = |answer: &support::Answer| answer.header("x-ccf-request-id").unwrap().to_string();
    let (mapped_id, substituted_id) = (id(&mapped), id(&substituted));
    let records = outcomes.wait_for(2).await;
    let record = |id: &str| {
        records
            .iter()
            .find(|record| record.id.to_string() == id)
            .unwrap()
            .clone()
    };
    let first = record(&mapped_id);
    assert_eq!(
        first.request_model.as_deref(),
        Some("claude-3-5-haiku-20241022")
    );
    assert_eq!(first.sent_model.as_deref(), Some("glm-4.5-air"));
    assert_eq!(first.response_model.as_deref(), Some("glm-4.5-air"));
    assert!(!first.model_mismatch, "the mapped name is what was sent");
    assert!(record(&substituted_id).model_mismatch);
    forwarder.stop_settled().await;

    let store: Arc<dyn UsageStore> = Arc::new(
        ccf_store_sqlite::SqliteStore::open(&path, ccf_store_sqlite::SqliteOptions::default())
            .await
            .expect("open the database the app wrote"),
    );
    let row = store
        .get_request(&mapped_id)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.record.model_name.as_deref(), Some("glm-4.5-air"));
    assert_eq!(
        row.record.requested_model.as_deref(),
        Some("claude-3-5-haiku-20241022")
    );
    assert!(!row.record.model_mismatch);
    let row = store
        .get_request(&substituted_id)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.record.model_name.as_deref(), Some("glm-4.5-flash"));
    assert!(row.record.model_mismatch);
}

/// Two groups: `official` (group-priority 1, the active one) and `cheap` (2).
fn two_groups(official: &MockUpstream, cheap: &MockUpstream) -> Vec<String> {
    vec![
        endpoint_yaml(
            "official",
            &official.url(),
            "group: official\ngroup-priority: 1",
        ),
        endpoint_yaml("cheap", &cheap.url(), "group: cheap\ngroup-priority: 2"),
    ]
}

#[tokio::test]
async fn a_rule_starts_haiku_in_the_cheap_group_and_fails_over_as_usual() {
    let official = MockUpstream::start().await;
    let cheap = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        &format!("{FAST}  model_rules:\n    - {{match: '*haiku*', group: cheap}}\n"),
        &two_groups(&official, &cheap),
    ))
    .await;
    assert_eq!(
        forwarder
            .messages(request("claude-3-5-haiku-20241022"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        forwarder
            .messages(request("claude-opus-4-5"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&cheap), ["claude-3-5-haiku-20241022"]);
    assert_eq!(messages_models(&official), ["claude-opus-4-5"]);

    // The cheap group fails: the haiku request fails over to the official group.
    cheap.enqueue(Reply::overloaded());
    let answer = forwarder
        .messages(request("claude-3-5-haiku-20241022"), &[])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-ccf-attempts"), Some("2"));
    assert_eq!(
        messages_models(&official),
        ["claude-opus-4-5", "claude-3-5-haiku-20241022"]
    );
    let metrics = forwarder
        .send(Method::GET, "/metrics", &[], String::new())
        .await;
    let text = String::from_utf8_lossy(&metrics.bytes()).to_string();
    assert!(
        text.contains("ccf_model_rule_matches_total{rule_group=\"cheap\"} 2"),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn an_only_rule_does_not_fail_over() {
    let official = MockUpstream::start().await;
    let cheap = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        &format!(
            "{FAST}  model_rules:\n    - {{match: 'claude-opus-*', group: official, only: true}}\n"
        ),
        &[
            endpoint_yaml(
                "official",
                &official.url(),
                "group: official\ngroup-priority: 2",
            ),
            endpoint_yaml("cheap", &cheap.url(), "group: cheap\ngroup-priority: 1"),
        ],
    ))
    .await;
    official.enqueue(Reply::error(500, "api_error", "official is down"));
    let answer = forwarder.messages(request("claude-opus-4-5"), &[]).await;
    // The usual final failure: the last upstream answer, relayed.
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["error"]["message"], "official is down");
    assert_eq!(messages_models(&official), ["claude-opus-4-5"]);
    assert!(messages_models(&cheap).is_empty(), "no failover to cheap");
    // A model no rule matches uses the usual active group.
    assert_eq!(
        forwarder
            .messages(request("claude-sonnet-4-5"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&cheap), ["claude-sonnet-4-5"]);
    forwarder.stop().await;
}

/// The admin API on a free loopback port.
const WEB: &str = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";

#[tokio::test]
async fn reload_changes_the_rules_and_the_maps() {
    let official = MockUpstream::start().await;
    let cheap = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        &format!("{WEB}{FAST}"),
        &two_groups(&official, &cheap),
    ))
    .await;
    let before = admin_get(&forwarder, "/api/v1/routing/model-rules").await;
    assert_eq!(before["rules"], json!([]));
    assert_eq!(
        forwarder
            .messages(request("claude-3-5-haiku-20241022"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&official), ["claude-3-5-haiku-20241022"]);

    let reloaded = config(
        &format!("{WEB}{FAST}  model_rules:\n    - {{match: '*haiku*', group: cheap}}\n"),
        &[
            endpoint_yaml(
                "official",
                &official.url(),
                "group: official\ngroup-priority: 1",
            ),
            endpoint_yaml(
                "cheap",
                &cheap.url(),
                "group: cheap\ngroup-priority: 2\nmodel_map: {'*haiku*': cheap-haiku}",
            ),
        ],
    );
    let report = forwarder
        .engine
        .reload(Arc::new(reloaded))
        .expect("reload applies");
    assert!(
        report.applied.iter().any(|line| line.contains("model_map")),
        "{report:?}"
    );
    assert_eq!(
        forwarder
            .messages(request("claude-3-5-haiku-20241022"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&cheap), ["cheap-haiku"]);
    assert_eq!(messages_models(&official).len(), 1);

    // The admin API shows the configuration in force.
    let after = admin_get(&forwarder, "/api/v1/routing/model-rules").await;
    assert_eq!(
        after["rules"],
        json!([{"index": 0, "match": "*haiku*", "group": "cheap", "only": false}])
    );
    let cheap_map = after["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["endpoint"] == "cheap")
        .unwrap()["model_map"]
        .clone();
    assert_eq!(
        cheap_map,
        json!([{"match": "*haiku*", "model": "cheap-haiku", "glob": true}])
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn a_bound_session_wins_only_inside_the_rules_group() {
    let official = MockUpstream::start().await;
    let cheap_one = MockUpstream::start().await;
    let cheap_two = MockUpstream::start().await;
    // Session affinity on (the default); one attempt per endpoint.
    let forwarder = Forwarder::start(config(
        "retry:\n  max_attempts: 1\n  base_delay: 1ms\n  max_delay: 2ms\nrouting:\n  model_rules:\n    - {match: '*haiku*', group: cheap}\n",
        &[
            endpoint_yaml(
                "official",
                &official.url(),
                "group: official\ngroup-priority: 1",
            ),
            endpoint_yaml(
                "cheap-one",
                &cheap_one.url(),
                "group: cheap\ngroup-priority: 2\npriority: 1",
            ),
            endpoint_yaml(
                "cheap-two",
                &cheap_two.url(),
                "group: cheap\ngroup-priority: 2\npriority: 2",
            ),
        ],
    ))
    .await;
    let turn = |model: &str| {
        json!({
            "model": model,
            "max_tokens": 16,
            "metadata": {"user_id": "user_abc_account__session_1234"},
            "messages": [{"role": "user", "content": "one conversation"}],
        })
    };
    // The conversation is bound to `official` by a Sonnet turn.
    assert_eq!(
        forwarder
            .messages(turn("claude-sonnet-4-5"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&official), ["claude-sonnet-4-5"]);
    // A Haiku turn of the same conversation goes to the rule's group, not to the bound endpoint.
    assert_eq!(
        forwarder
            .messages(turn("claude-3-5-haiku-20241022"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&cheap_one), ["claude-3-5-haiku-20241022"]);
    assert_eq!(messages_models(&official).len(), 1);
    // Inside the group the binding wins: with `cheap-two` now first by priority, the bound
    // conversation stays on `cheap-one`, while a new conversation goes to `cheap-two`.
    forwarder
        .engine
        .set_endpoint_priority("cheap-two", 0)
        .expect("known endpoint");
    assert_eq!(
        forwarder
            .messages(turn("claude-3-5-haiku-20241022"), &[])
            .await
            .status,
        200
    );
    assert_eq!(messages_models(&cheap_one).len(), 2, "the binding held");
    let mut other = turn("claude-3-5-haiku-20241022");
    other["metadata"]["user_id"] = json!("user_def_account__session_5678");
    other["messages"][0]["content"] = json!("another conversation");
    assert_eq!(forwarder.messages(other, &[]).await.status, 200);
    assert_eq!(messages_models(&cheap_two).len(), 1);
    forwarder.stop().await;
}
