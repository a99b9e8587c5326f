//! Per-key limits (`auth.tokens[].limits`) end to end: the real app in front of the mock
//! upstream, two keys (`alice` limited, `bob` not), requests refused with 429
//! `rate_limit_error` over the rate, after waiting in the concurrency queue, and over a budget
//! (also after a restart on the same SQLite database).

use crate::support;

use ccf_proxy::{BudgetPeriod, ForwarderEvent};
use ccf_testkit::{MockUpstream, MockUsage, Reply};
use serde_json::json;
use support::{admin_get, config, config_with_usage, endpoint_yaml, eventually, Forwarder, WAIT};

const ALICE: (&str, &str) = ("x-api-key", "alice-token-0001");
const BOB: (&str, &str) = ("x-api-key", "bob-token-0001");

/// `auth` with `alice` limited by `limits` (YAML lines under `limits:`) and `bob` unlimited.
fn auth(limits: &str, extra: &str) -> String {
    let mut yaml = String::from(
        "auth:\n  enabled: true\n  tokens:\n    - name: alice\n      token: alice-token-0001\n      limits:\n",
    );
    for line in limits.lines() {
        yaml.push_str("        ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml.push_str("    - name: bob\n      token: bob-token-0001\n");
    yaml.push_str(extra);
    yaml
}

fn message() -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

fn alice_view(forwarder: &Forwarder) -> ccf_proxy::key_limits::KeyLimitView {
    forwarder
        .engine
        .key_limit_views()
        .into_iter()
        .find(|view| view.name == "alice")
        .expect("alice is configured")
}

/// Sends alice's request from a task the test can abort (the client leaving).
fn spawn_alice_request(forwarder: &Forwarder) -> tokio::task::JoinHandle<u16> {
    let client = forwarder.client.clone();
    let uri = format!("{}/v1/messages", forwarder.base);
    tokio::spawn(async move {
        let request = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header(ALICE.0, ALICE.1)
            .body(http_body_util::Full::new(bytes::Bytes::from(
                message().to_string(),
            )))
            .expect("request");
        match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                status
            }
            Err(_) => 0,
        }
    })
}

#[tokio::test]
async fn over_its_rate_a_key_gets_429_with_retry_after_and_other_keys_are_served() {
    let upstream = MockUpstream::start().await;
    let forwarder =
        Forwarder::in_front_of(&upstream, &auth("requests_per_minute: 2", ""), "").await;
    for _ in 0..2 {
        assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    }
    let refused = forwarder.messages(message(), &[ALICE]).await;
    refused.assert_anthropic_error(429, "rate_limit_error");
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let message_text = refused.json()["error"]["message"].to_string();
    assert!(message_text.contains("'alice'"), "{message_text}");
    assert!(
        message_text.contains("2 requests per minute"),
        "{message_text}"
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "the refused request never left"
    );
    assert_eq!(forwarder.messages(message(), &[BOB]).await.status, 200);
    assert_eq!(alice_view(&forwarder).requests_last_minute, 2);
    let metrics = forwarder
        .send(hyper::Method::GET, "/metrics", &[BOB], "")
        .await;
    let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
    assert!(
        text.contains("ccf_key_rejected_total{key=\"alice\",reason=\"rate\"} 1"),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test]
async fn with_concurrency_one_the_second_request_waits_and_is_served_when_the_first_ends() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let forwarder = Forwarder::in_front_of(&upstream, &auth("concurrency: 1", ""), "").await;
    let first = spawn_alice_request(&forwarder);
    upstream.wait_for_requests(1, WAIT).await;
    let second = spawn_alice_request(&forwarder);
    eventually("the second request queues", || {
        alice_view(&forwarder).queued == 1
    })
    .await;
    assert_eq!(
        upstream.requests().len(),
        1,
        "the second waits in the queue"
    );
    assert_eq!(alice_view(&forwarder).in_flight, 1);
    // Another key is not held up by alice's queue.
    assert_eq!(forwarder.messages(message(), &[BOB]).await.status, 200);
    // The first request ends (its client leaves): the queued one is served.
    first.abort();
    let status = tokio::time::timeout(WAIT, second)
        .await
        .expect("the queued request is served")
        .expect("task");
    assert_eq!(status, 200);
    eventually("nothing of alice's is in flight", || {
        let view = alice_view(&forwarder);
        view.in_flight == 0 && view.queued == 0
    })
    .await;
    forwarder.stop().await;
}

#[tokio::test]
async fn a_queued_request_gets_429_after_the_queue_timeout_and_a_client_leaving_the_queue_frees_its_place(
) {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &auth("concurrency: 1", "  queue_timeout: 300ms\n"),
        "",
    )
    .await;
    let first = spawn_alice_request(&forwarder);
    upstream.wait_for_requests(1, WAIT).await;

    // Waits the whole queue timeout, then 429.
    let refused = forwarder.messages(message(), &[ALICE]).await;
    refused.assert_anthropic_error(429, "rate_limit_error");
    let text = refused.json()["error"]["message"].to_string();
    assert!(text.contains("auth.queue_timeout"), "{text}");

    // A client that leaves while queued takes its place with it.
    let leaving = spawn_alice_request(&forwarder);
    eventually("the request queues", || alice_view(&forwarder).queued == 1).await;
    leaving.abort();
    eventually("the queue is empty again", || {
        alice_view(&forwarder).queued == 0
    })
    .await;
    first.abort();
    eventually("the slot is free", || alice_view(&forwarder).in_flight == 0).await;
    // No place leaked: the key's one slot serves the next request at once.
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    assert_eq!(alice_view(&forwarder).in_flight, 0);
    forwarder.stop().await;
}

/// Sonnet at $3 / $15 per million tokens: 10,000 in and 1,000 out cost $0.045.
const PRICING: &str = "  flush_interval: 100ms\n  model_pricing:\n    claude-sonnet-4-5:\n      input: 3.00\n      output: 15.00\n      cache_creation: 3.75\n      cache_read: 0.30\n";

const EXPENSIVE: MockUsage = MockUsage {
    input: 10_000,
    output: 1_000,
    cache_creation: 0,
    cache_read: 0,
};

#[tokio::test]
async fn over_its_daily_budget_a_key_is_refused_until_midnight_also_after_a_restart() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::json().usage(EXPENSIVE));
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join("usage.db");
    let usage = format!(
        "  enabled: true\n  database_path: {}\n{PRICING}",
        path.display()
    );
    let settings = format!(
        "timezone: Asia/Shanghai\nweb:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n{}",
        auth("daily_budget_usd: 0.04\nmonthly_budget_usd: 100", "")
    );
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let forwarder = Forwarder::start(config_with_usage(&usage, &settings, &endpoints)).await;
    let mut events = forwarder.engine.events().subscribe();

    // Under the budget when it starts: served, and its cost crosses the budget.
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    let refused = forwarder.messages(message(), &[ALICE]).await;
    refused.assert_anthropic_error(429, "rate_limit_error");
    let text = refused.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(
        text.contains("API key 'alice' reached its daily budget of $0.04"),
        "{text}"
    );
    assert!(
        text.contains("it resets at ") && text.contains("T00:00:00+08:00"),
        "midnight in the configured zone: {text}"
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(forwarder.messages(message(), &[BOB]).await.status, 200);
    let view = alice_view(&forwarder);
    assert!((view.spent_today_usd - 0.045).abs() < 1e-9, "{view:?}");
    assert_eq!(view.budget_exceeded, Some(BudgetPeriod::Daily));

    // The admin API shows each key by name, its spend against its budgets, never the key.
    let keys = admin_get(&forwarder, "/api/v1/keys").await;
    let text = keys.to_string();
    assert!(!text.contains("token-0001"), "no key in the answer: {text}");
    assert_eq!(keys["keys"][0]["name"], "alice");
    assert_eq!(keys["keys"][0]["daily_budget_usd"], 0.04);
    assert_eq!(keys["keys"][0]["monthly_budget_usd"], 100.0);
    assert_eq!(keys["keys"][0]["budget_exceeded"], "daily");
    let spent = keys["keys"][0]["spent_today_usd"].as_f64().expect("number");
    assert!((spent - 0.045).abs() < 1e-9, "{text}");
    assert_eq!(keys["keys"][1]["name"], "bob");
    assert_eq!(keys["keys"][1]["daily_budget_usd"], serde_json::Value::Null);
    assert_eq!(keys["keys"][1]["budget_exceeded"], serde_json::Value::Null);

    // Published once for the key and period.
    let mut crossings = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ForwarderEvent::KeyBudgetExceeded {
            key_name, period, ..
        } = event
        {
            crossings.push((key_name, period));
        }
    }
    assert_eq!(crossings, vec![("alice".to_string(), BudgetPeriod::Daily)]);
    // Stopping writes every row (the recorder flushes before the app ends).
    forwarder.stop().await;

    // A restart on the same database remembers the spend.
    let again = Forwarder::start(config_with_usage(&usage, &settings, &endpoints)).await;
    let refused = again.messages(message(), &[ALICE]).await;
    refused.assert_anthropic_error(429, "rate_limit_error");
    assert!(
        refused.json()["error"]["message"]
            .to_string()
            .contains("daily budget of $0.04"),
        "seeded from the store"
    );
    assert_eq!(again.messages(message(), &[BOB]).await.status, 200);
    assert_eq!(
        upstream.requests().len(),
        3,
        "refused requests never reached the upstream"
    );
    again.stop().await;
}

#[tokio::test]
async fn a_reload_applies_new_limits_and_keeps_the_counters() {
    let upstream = MockUpstream::start().await;
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let forwarder = Forwarder::start(config(&auth("requests_per_minute: 1", ""), &endpoints)).await;
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 429);
    let raised = config(&auth("requests_per_minute: 3", ""), &endpoints);
    forwarder
        .engine
        .reload(std::sync::Arc::new(raised))
        .expect("reload");
    // The minute's count was kept: two more fit under the new limit of 3, not three.
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 429);
    let limits = alice_view(&forwarder).limits;
    assert_eq!(limits.requests_per_minute, Some(3));
    forwarder.stop().await;
}

#[tokio::test]
async fn without_usage_tracking_spend_is_counted_in_memory_and_a_monthly_budget_refuses() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::sse().usage(EXPENSIVE));
    let usage = format!("  enabled: false\n{PRICING}");
    let settings = format!("timezone: UTC\n{}", auth("monthly_budget_usd: 0.05", ""));
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let forwarder = Forwarder::start(config_with_usage(&usage, &settings, &endpoints)).await;
    let streamed = json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 16,
        "stream": true,
        "messages": [{"role": "user", "content": "hello"}],
    });
    // $0.045, then $0.09: the second request crosses the budget of $0.05.
    for _ in 0..2 {
        assert_eq!(
            forwarder.messages(streamed.clone(), &[ALICE]).await.status,
            200
        );
    }
    let refused = forwarder.messages(streamed, &[ALICE]).await;
    refused.assert_anthropic_error(429, "rate_limit_error");
    let text = refused.json()["error"]["message"].to_string();
    assert!(text.contains("monthly budget of $0.05"), "{text}");
    assert!(
        text.contains("-01T00:00:00+00:00"),
        "first of next month: {text}"
    );
    assert_eq!(
        alice_view(&forwarder).budget_exceeded,
        Some(BudgetPeriod::Monthly)
    );
    let metrics = forwarder
        .send(hyper::Method::GET, "/metrics", &[BOB], "")
        .await;
    let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
    let spend = |period: &str| -> f64 {
        let series = format!("ccf_key_spend_usd{{key=\"alice\",period=\"{period}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in {text}"))
    };
    assert!((spend("monthly") - 0.09).abs() < 1e-9);
    assert!((spend("daily") - 0.09).abs() < 1e-9);
    assert!(text.contains("ccf_key_rejected_total{key=\"alice\",reason=\"budget\"} 1"));
    forwarder.stop().await;
}

#[tokio::test]
async fn spend_stored_in_mariadb_is_read_back_at_start() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Reply::json().usage(EXPENSIVE));
    let own = support::mariadb::OwnDatabase::create("key_budget").await;
    let usage = format!("  enabled: true\n{}{PRICING}", own.usage_yaml(3306));
    let settings = auth("daily_budget_usd: 0.04", "");
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let forwarder = Forwarder::start(config_with_usage(&usage, &settings, &endpoints)).await;
    assert_eq!(forwarder.messages(message(), &[ALICE]).await.status, 200);
    assert_eq!(forwarder.messages(message(), &[BOB]).await.status, 200);
    forwarder.stop().await;

    let again = Forwarder::start(config_with_usage(&usage, &settings, &endpoints)).await;
    let view = alice_view(&again);
    assert!((view.spent_today_usd - 0.045).abs() < 1e-9, "{view:?}");
    assert!((view.spent_this_month_usd - 0.045).abs() < 1e-9, "{view:?}");
    again
        .messages(message(), &[ALICE])
        .await
        .assert_anthropic_error(429, "rate_limit_error");
    assert_eq!(again.messages(message(), &[BOB]).await.status, 200);
    again.stop().await;
}
