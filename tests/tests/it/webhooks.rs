//! Webhooks end to end (`webhooks:`): the real app, an upstream whose health probe the test
//! scripts, and a second mock upstream as the webhook receiver, which records every POST and
//! answers what the test queued. Signatures are checked with the `hmac` crate here, not with the
//! forwarder's own signing code.

use crate::support;

use std::time::Duration;

use ccf_app::reload::ConfigSource;
use ccf_app::App;
use ccf_config::ConfigLoader;
use ccf_proxy::ForwarderEvent;
use ccf_testkit::{MockUpstream, MockUsage, RecordedRequest, Reply};
use hmac::{Hmac, Mac};
use hyper::Method;
use serde_json::Value;
use sha2::Sha256;
use support::{
    admin_get, admin_request, config_with_usage, endpoint_yaml, eventually, Forwarder, WAIT,
};

const SIGNING_KEY: &str = "whsec-test-signing-key-0123";
const WEB: &str = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";
/// Only the start-up probe and the recovery re-probes run during a test.
const HEALTH: &str = "health:\n  check_interval: 1h\n";

/// A `webhooks:` list item.
fn webhook_yaml(url: &str, events: &[&str], secret: Option<&str>) -> String {
    let mut yaml = format!("  - url: {url}\n    events: [{}]\n", events.join(", "));
    if let Some(secret) = secret {
        yaml.push_str(&format!("    secret: {secret}\n"));
    }
    yaml
}

/// Settings with the admin API, quiet health checks and `webhooks`.
fn settings(webhooks: &[String]) -> String {
    format!("{WEB}{HEALTH}webhooks:\n{}", webhooks.concat())
}

/// An upstream whose health probe fails, so the start-up probe marks it unhealthy.
async fn failing_upstream() -> MockUpstream {
    let upstream = MockUpstream::start().await;
    upstream.set_probe_reply(Reply::error(503, "api_error", "probe refused"));
    upstream
}

/// A webhook receiver: answers `200 {"ok":true}` unless the test queues other replies (the mock's
/// own default answers only the Anthropic API's paths).
async fn receiver() -> MockUpstream {
    let receiver = MockUpstream::start().await;
    receiver.set_default(Reply::status(200, serde_json::json!({"ok": true})));
    receiver
}

/// The request's `x-ccf-signature` is the HMAC-SHA256 of its exact body under `key`.
fn assert_signed(request: &RecordedRequest, key: &str) {
    let header = request
        .header("x-ccf-signature")
        .unwrap_or_else(|| panic!("no signature header: {:?}", request.headers));
    let hex = header
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature without the sha256= prefix: {header}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(&request.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(hex, expected, "signature of {}", request.body_text());
}

/// The delivered body, checked for the fields every notification has.
fn notification(request: &RecordedRequest, event: &str) -> Value {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/ccf");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-ccf-event"), Some(event));
    let body = request.json().expect("the body is JSON");
    assert_eq!(body["event"], event, "{body}");
    let timestamp = body["timestamp"].as_str().unwrap_or_default();
    assert!(
        timestamp.len() >= 20 && timestamp.contains('T') && timestamp.ends_with('Z'),
        "RFC 3339 in UTC: {body}"
    );
    assert!(
        body["instance_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    body
}

/// The forwarder's `/metrics` text.
async fn metrics(forwarder: &Forwarder) -> String {
    let answer = forwarder.send(Method::GET, "/metrics", &[], "").await;
    String::from_utf8_lossy(&answer.bytes()).into_owned()
}

/// `GET /api/v1/webhooks`' entry `index`, once `check` holds for it.
async fn webhook_stats(
    forwarder: &Forwarder,
    index: usize,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = admin_get(forwarder, "/api/v1/webhooks").await;
        let entry = answer["webhooks"][index].clone();
        if check(&entry) {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for webhook {index}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_endpoint_and_its_recovery_are_delivered_signed() {
    let upstream = failing_upstream().await;
    let receiver = receiver().await;
    let hook = format!("{}/hooks/ccf", receiver.url());
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &settings(&[webhook_yaml(
            &hook,
            &["endpoint_unhealthy", "endpoint_recovered"],
            Some(SIGNING_KEY),
        )]),
        "",
    )
    .await;

    let delivered = receiver.wait_for_requests(1, WAIT).await;
    let first = delivered.first().expect("endpoint_unhealthy delivered");
    let body = notification(first, "endpoint_unhealthy");
    assert_signed(first, SIGNING_KEY);
    assert_eq!(body["data"]["endpoint"], "mock", "{body}");
    assert!(
        body["data"]["consecutive_failures"].as_u64() >= Some(1),
        "{body}"
    );
    assert!(
        body["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("503")),
        "{body}"
    );

    // The probe passes again: the recovery re-probe brings the endpoint back.
    upstream.set_probe_reply(Reply::auto());
    let delivered = receiver.wait_for_requests(2, WAIT).await;
    let second = delivered.get(1).expect("endpoint_recovered delivered");
    let body = notification(second, "endpoint_recovered");
    assert_signed(second, SIGNING_KEY);
    assert_eq!(body["data"]["endpoint"], "mock", "{body}");

    let stats = webhook_stats(&forwarder, 0, |entry| entry["delivered"] == 2).await;
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["dropped"], 0, "{stats}");
    assert_eq!(stats["signed"], true, "{stats}");
    assert_eq!(stats["last_status"], 200, "{stats}");
    assert_eq!(
        stats["events"],
        serde_json::json!(["endpoint_unhealthy", "endpoint_recovered"])
    );
    assert!(!stats.to_string().contains(SIGNING_KEY), "{stats}");
    let text = metrics(&forwarder).await;
    for event in ["endpoint_unhealthy", "endpoint_recovered"] {
        let line = format!(
            "ccf_webhook_deliveries_total{{webhook=\"0\",event=\"{event}\",result=\"delivered\"}} 1"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert!(
        text.contains("ccf_webhook_queue_depth{webhook=\"0\"} 0"),
        "{text}"
    );
    forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_twice_gets_the_event_on_the_third_try() {
    let upstream = failing_upstream().await;
    let receiver = receiver().await;
    receiver.enqueue(Reply::error(500, "api_error", "receiver broken"));
    receiver.enqueue(Reply::error(500, "api_error", "receiver still broken"));
    let hook = format!("{}/hooks/ccf", receiver.url());
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &settings(&[webhook_yaml(
            &hook,
            &["endpoint_unhealthy"],
            Some(SIGNING_KEY),
        )]),
        "",
    )
    .await;

    let tries = receiver.wait_for_requests(3, WAIT).await;
    assert_eq!(tries.len(), 3, "three tries");
    for request in &tries {
        notification(request, "endpoint_unhealthy");
        assert_signed(request, SIGNING_KEY);
        assert_eq!(request.body, tries[0].body, "every try sends the same body");
    }
    let stats = webhook_stats(&forwarder, 0, |entry| entry["delivered"] == 1).await;
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["failed_tries"], 2, "{stats}");
    assert_eq!(stats["last_status"], 200, "{stats}");
    assert!(
        stats["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("500")),
        "the earlier failure stays visible: {stats}"
    );
    let text = metrics(&forwarder).await;
    for (result, count) in [("retried", 2), ("delivered", 1)] {
        let line = format!(
            "ccf_webhook_deliveries_total{{webhook=\"0\",event=\"endpoint_unhealthy\",result=\"{result}\"}} {count}"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    assert_eq!(
        receiver.request_count(),
        3,
        "nothing sent after the delivery"
    );
    forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_or_refuses_shows_counted_failures_in_the_api() {
    let upstream = failing_upstream().await;
    let refusing = MockUpstream::start().await;
    refusing.set_default(Reply::error(
        400,
        "invalid_request_error",
        "unknown payload",
    ));
    // Nothing listens on port 1; the password must never be shown.
    let down = "http://hookuser:pw-secret-4711abcdef@127.0.0.1:1/hooks/ccf";
    let forwarder = Forwarder::in_front_of(
        &upstream,
        &settings(&[
            webhook_yaml(down, &["endpoint_unhealthy"], None),
            webhook_yaml(
                &format!("{}/hooks/ccf", refusing.url()),
                &["endpoint_unhealthy"],
                None,
            ),
        ]),
        "",
    )
    .await;

    // A 400 is the receiver's final word: counted as failed after one try.
    let refused = webhook_stats(&forwarder, 1, |entry| entry["failed"] == 1).await;
    assert_eq!(refused["failed_tries"], 1, "{refused}");
    assert_eq!(refused["delivered"], 0, "{refused}");
    assert_eq!(refused["last_status"], 400, "{refused}");
    assert_eq!(refused["signed"], false, "{refused}");
    assert_eq!(refusing.request_count(), 1, "a 4xx is not retried");
    let request = refusing.request(0).expect("the one try");
    notification(&request, "endpoint_unhealthy");
    assert!(
        request.header("x-ccf-signature").is_none(),
        "no secret, no signature"
    );

    // Connection refused: a counted failed try, retried later.
    let unreachable = webhook_stats(&forwarder, 0, |entry| {
        entry["failed_tries"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(unreachable["delivered"], 0, "{unreachable}");
    assert!(unreachable["last_status"].is_null(), "{unreachable}");
    assert!(
        unreachable["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("retrying")),
        "{unreachable}"
    );
    assert!(unreachable["last_attempt"].is_string(), "{unreachable}");
    let answer = admin_get(&forwarder, "/api/v1/webhooks").await;
    assert!(
        !answer.to_string().contains("pw-secret-4711abcdef"),
        "{answer}"
    );
    assert!(
        answer["webhooks"][0]["url"]
            .as_str()
            .is_some_and(|url| url.contains("127.0.0.1:1/hooks/ccf")),
        "{answer}"
    );
    let text = metrics(&forwarder).await;
    let line = "ccf_webhook_deliveries_total{webhook=\"1\",event=\"endpoint_unhealthy\",result=\"failed\"} 1";
    assert!(text.contains(line), "{line} in\n{text}");
    assert!(!text.contains("pw-secret-4711abcdef"));
    forwarder.stop().await;
}

/// The app started from a configuration file with hot reload on (reloads through the admin API).
struct Reloadable {
    _folder: tempfile::TempDir,
    path: std::path::PathBuf,
    forwarder: Forwarder,
}

impl Reloadable {
    /// Starts from `settings` and `upstream`; every bus event from before the first probe on is
    /// sent to the returned receiver.
    async fn start(
        settings: &str,
        upstream: &MockUpstream,
    ) -> (Reloadable, tokio::sync::broadcast::Receiver<ForwarderEvent>) {
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("config.yaml");
        std::fs::write(&path, file_text(settings, upstream)).expect("write the configuration");
        let loader = ConfigLoader::new()
            .file(&path)
            .env_vars(Vec::<(String, String)>::new());
        let source = ConfigSource::new(loader);
        let config = source.load().expect("the first configuration is valid");
        let app = App::bind(config)
            .await
            .expect("app binds on loopback")
            .with_reload(source);
        let events = app.forwarder().events().subscribe();
        let reloadable = Reloadable {
            _folder: folder,
            path,
            forwarder: Forwarder::run_app(app),
        };
        (reloadable, events)
    }

    /// Writes `text` as the configuration file and asks for a reload through the admin API.
    async fn reload(&self, text: &str) -> u16 {
        std::fs::write(&self.path, text).expect("write the configuration");
        let (status, _) =
            admin_request(&self.forwarder, Method::POST, "/api/v1/config/reload").await;
        status.as_u16()
    }
}

/// A whole configuration file: loopback on a free port, no usage tracking, one endpoint.
fn file_text(settings: &str, upstream: &MockUpstream) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\nusage_tracking:\n  enabled: false\n{settings}\nendpoints:\n{}",
        support::endpoint_yaml("mock", &upstream.url(), "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_events_are_sent_and_a_reload_replaces_the_receivers() {
    let upstream = failing_upstream().await;
    let first = receiver().await;
    let second = receiver().await;
    let subscribed = |receiver: &MockUpstream| {
        settings(&[webhook_yaml(
            &format!("{}/hooks/ccf", receiver.url()),
            &["config_reload_failed"],
            None,
        )])
    };
    let (app, mut events) = Reloadable::start(&subscribed(&first), &upstream).await;

    // The endpoint turned unhealthy on the bus (an event the receiver did not subscribe to)...
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the start-up probe marks the endpoint unhealthy")
            .expect("the bus is open");
        if matches!(
            event,
            ForwarderEvent::Health(ccf_health::HealthEvent::EndpointUnhealthy { .. })
        ) {
            break;
        }
    }
    // ...then a reload is rejected. Notifications go out in bus order, so the first request the
    // receiver gets would be `endpoint_unhealthy` had it been queued.
    let bad = file_text(
        &format!("{}retry:\n  max_attempts: many\n", subscribed(&first)),
        &upstream,
    );
    assert_ne!(app.reload(&bad).await, 200, "the bad file is rejected");
    let delivered = first.wait_for_requests(1, WAIT).await;
    let body = notification(&delivered[0], "config_reload_failed");
    assert_eq!(body["data"]["trigger"], "api", "{body}");
    assert!(
        body["data"]["error"]
            .as_str()
            .is_some_and(|error| error.contains("max_attempts") && error.contains("config.yaml")),
        "{body}"
    );
    assert!(delivered[0].header("x-ccf-signature").is_none());

    // A good reload moves the subscription to the second receiver.
    assert_eq!(
        app.reload(&file_text(&subscribed(&second), &upstream))
            .await,
        200
    );
    let engine = app.forwarder.engine.clone();
    eventually("the new receiver list is in force", || {
        engine
            .config()
            .webhooks
            .first()
            .is_some_and(|webhook| webhook.url.as_str().starts_with(&second.url()))
    })
    .await;
    let stats = webhook_stats(&app.forwarder, 0, |entry| {
        entry["url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&second.url()))
    })
    .await;
    assert_eq!(
        stats["delivered"], 0,
        "a new receiver starts afresh: {stats}"
    );
    assert_ne!(app.reload(&bad).await, 200);
    let delivered = second.wait_for_requests(1, WAIT).await;
    notification(&delivered[0], "config_reload_failed");
    assert_eq!(
        first.request_count(),
        1,
        "the removed receiver gets nothing more"
    );
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_delivers_the_group_cooldown_and_the_switch() {
    let main = MockUpstream::start().await;
    main.set_default(Reply::error(500, "api_error", "main is broken"));
    let backup = MockUpstream::start().await;
    let receiver = receiver().await;
    let hook = format!("{}/hooks/ccf", receiver.url());
    let forwarder = Forwarder::start(support::config(
        &format!(
            "retry:\n  max_attempts: 1\n  base_delay: 10ms\n  max_delay: 20ms\ngroup:\n  cooldown: 1h\n{}",
            settings(&[webhook_yaml(
                &hook,
                &["group_switched", "group_cooldown"],
                Some(SIGNING_KEY),
            )])
        ),
        &[
            support::endpoint_yaml("a", &main.url(), "group: main\ngroup-priority: 1"),
            support::endpoint_yaml("c", &backup.url(), "group: backup\ngroup-priority: 2"),
        ],
    ))
    .await;
    let request = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "fail over"}],
    });
    let answer = forwarder.messages(request, &[]).await;
    assert_eq!(answer.status, 200, "served by the backup group");

    // Both notifications arrive (a switch to `main` at the first plan may come first).
    let deadline = tokio::time::Instant::now() + WAIT;
    let (cooldown, switch) = loop {
        let bodies: Vec<(RecordedRequest, Value)> = receiver
            .requests()
            .into_iter()
            .filter_map(|request| request.json().map(|body| (request, body)))
            .collect();
        let cooldown = bodies
            .iter()
            .find(|(_, body)| body["event"] == "group_cooldown")
            .cloned();
        let switch = bodies
            .iter()
            .find(|(_, body)| body["event"] == "group_switched" && body["data"]["to"] == "backup")
            .cloned();
        if let (Some(cooldown), Some(switch)) = (cooldown, switch) {
            break (cooldown, switch);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the failover notifications: {bodies:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body = notification(&cooldown.0, "group_cooldown");
    assert_signed(&cooldown.0, SIGNING_KEY);
    assert_eq!(body["data"]["group"], "main", "{body}");
    assert!(
        body["data"]["until"]
            .as_str()
            .is_some_and(|until| until.ends_with('Z')),
        "{body}"
    );
    let body = notification(&switch.0, "group_switched");
    assert_signed(&switch.0, SIGNING_KEY);
    assert_eq!(body["data"]["from"], "main", "{body}");
    for request in receiver.requests() {
        let event = request
            .header("x-ccf-event")
            .unwrap_or_default()
            .to_string();
        assert!(
            event == "group_switched" || event == "group_cooldown",
            "only subscribed events: {event}"
        );
    }
    forwarder.stop().await;
}

/// The two events other features publish, through the whole app: a key crossing its daily
/// budget (`auth.tokens[].limits`, docs/keys.md) and a subscription account whose deciding
/// window is 95 % used (`anthropic-ratelimit-unified-*`, docs/quotas.md). Each is delivered once,
/// signed, with the key's name but never its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_budget_and_a_nearly_spent_account_are_delivered() {
    const ALICE_TOKEN: &str = "alice-token-webhook-0001";
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3_600;
    let upstream = MockUpstream::start().await;
    // $0.045 per answer at the prices below; the account at 95 % of its five-hour window.
    upstream.set_default(
        Reply::json()
            .usage(MockUsage {
                input: 10_000,
                output: 1_000,
                cache_creation: 0,
                cache_read: 0,
            })
            .header("anthropic-ratelimit-unified-status", "allowed_warning")
            .header("anthropic-ratelimit-unified-reset", &reset.to_string())
            .header(
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            )
            .header("anthropic-ratelimit-unified-5h-utilization", "0.95")
            .header("anthropic-ratelimit-unified-5h-reset", &reset.to_string()),
    );
    let receiver = receiver().await;
    let hook = format!("{}/hooks/ccf", receiver.url());
    let settings = format!(
        "timezone: UTC\n{WEB}{HEALTH}auth:\n  enabled: true\n  tokens:\n    - name: alice\n      \
         token: {ALICE_TOKEN}\n      limits:\n        daily_budget_usd: 0.05\nwebhooks:\n{}",
        webhook_yaml(
            &hook,
            &["key_budget_exceeded", "quota_low"],
            Some(SIGNING_KEY)
        )
    );
    let usage =
        "  enabled: false\n  model_pricing:\n    claude-sonnet-4-5:\n      input: 3.00\n      \
                 output: 15.00\n      cache_creation: 3.75\n      cache_read: 0.30\n";
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let forwarder = Forwarder::start(config_with_usage(usage, &settings, &endpoints)).await;
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    });
    // $0.045, then $0.09: the second answer crosses the budget; the third is refused.
    for expected in [200, 200, 429] {
        let answer = forwarder
            .messages(body.clone(), &[("x-api-key", ALICE_TOKEN)])
            .await;
        assert_eq!(answer.status, expected);
    }

    let delivered = receiver.wait_for_requests(2, WAIT).await;
    let of = |event: &str| -> Vec<&RecordedRequest> {
        delivered
            .iter()
            .filter(|request| request.header("x-ccf-event") == Some(event))
            .collect()
    };
    let budget = of("key_budget_exceeded");
    assert_eq!(budget.len(), 1, "delivered once: {delivered:?}");
    assert_signed(budget[0], SIGNING_KEY);
    let data = notification(budget[0], "key_budget_exceeded")["data"].clone();
    assert_eq!(data["key_name"], "alice", "{data}");
    assert_eq!(data["period"], "daily", "{data}");
    assert_eq!(data["budget_usd"], 0.05, "{data}");
    assert!(data["spent_usd"].as_f64() >= Some(0.05), "{data}");
    assert!(
        data["resets_at"]
            .as_str()
            .is_some_and(|at| at.ends_with("T00:00:00.000Z")),
        "midnight UTC: {data}"
    );
    assert!(!budget[0].body_text().contains(ALICE_TOKEN));
    let quota = of("quota_low");
    assert_eq!(quota.len(), 1, "once per crossing: {delivered:?}");
    assert_signed(quota[0], SIGNING_KEY);
    let data = notification(quota[0], "quota_low")["data"].clone();
    assert_eq!(data["endpoint"], "mock", "{data}");
    assert_eq!(data["window"], "five_hour", "{data}");
    assert_eq!(data["utilization"], 0.95, "{data}");
    assert_eq!(data["rejected"], false, "{data}");

    // Nothing more arrives: the later answers above the threshold and the refusal are the same
    // crossing and the same budget period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.requests().len(), 2, "{:?}", receiver.requests());
    forwarder.stop().await;
}
