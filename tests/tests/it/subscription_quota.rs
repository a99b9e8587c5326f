//! Subscription-aware quotas end to end: mock upstreams answer like Claude Pro/Max accounts, with
//! the `anthropic-ratelimit-unified-*` headers of the protocol reference. A `rejected` account is
//! skipped until its reset (no request reaches it meanwhile), a representative window used at or
//! above `routing.quota_drain_at` sends new sessions elsewhere while a bound session stays, a 529
//! throttle is not exhaustion, the admin API shows every window, and each crossing is published
//! once as `QuotaLow`.

use crate::support;

use std::time::SystemTime;

use ccf_proxy::ForwarderEvent;
use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::{admin_get, config, endpoint_yaml, eventually, messages_sent, Forwarder};

/// Admin API on, retries that would wait in place for a short `retry-after` (up to 30 s), no
/// health probes during the test.
const SETTINGS: &str = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\nretry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 30s\nhealth:\n  check_interval: 1h\n";

/// Mocks `a` (priority 1) and `b` (priority 2), one subscription account each, in one group.
struct Accounts {
    a: MockUpstream,
    b: MockUpstream,
}

impl Accounts {
    async fn start() -> Accounts {
        Accounts {
            a: MockUpstream::start().await,
            b: MockUpstream::start().await,
        }
    }

    fn config(&self, extra_settings: &str) -> ccf_config::Config {
        config(
            &format!("{SETTINGS}{extra_settings}"),
            &[
                endpoint_yaml("a", &self.a.url(), "group: max\npriority: 1"),
                endpoint_yaml("b", &self.b.url(), "priority: 2"),
            ],
        )
    }

    async fn forwarder(&self, extra_settings: &str) -> Forwarder {
        Forwarder::start(self.config(extra_settings)).await
    }

    fn sent(&self) -> [usize; 2] {
        [messages_sent(&self.a), messages_sent(&self.b)]
    }
}

/// Unix seconds `seconds` from now (the unified headers' reset format).
fn epoch_in(seconds: u64) -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + seconds
}

/// `reply` with a subscription account's unified headers: `status`, the five-hour window
/// representative and used at `five_hour`, the seven-day window at 0.30, resets as given.
fn unified(reply: Reply, status: &str, five_hour: f64, reset_epoch: u64) -> Reply {
    let reset = reset_epoch.to_string();
    let week = epoch_in(5 * 86_400).to_string();
    reply
        .header("anthropic-ratelimit-unified-status", status)
        .header("anthropic-ratelimit-unified-reset", &reset)
        .header(
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour",
        )
        .header(
            "anthropic-ratelimit-unified-5h-utilization",
            &five_hour.to_string(),
        )
        .header("anthropic-ratelimit-unified-5h-reset", &reset)
        .header("anthropic-ratelimit-unified-7d-utilization", "0.30")
        .header("anthropic-ratelimit-unified-7d-reset", &week)
}

/// A Claude Code turn of a conversation; `session` goes in `x-claude-code-session-id`.
async fn send_turn(forwarder: &Forwarder, session: &str) {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": format!("a turn of {session}")}],
    });
    let answer = forwarder
        .messages(body, &[("x-claude-code-session-id", session)])
        .await;
    assert_eq!(answer.status, 200, "turn of {session}");
}

/// `endpoint`'s entry in `GET /api/v1/routing/quota`.
async fn quota_of(forwarder: &Forwarder, endpoint: &str) -> Value {
    let quota = admin_get(forwarder, "/api/v1/routing/quota").await;
    quota["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|entry| entry["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} listed in {quota}"))
        .clone()
}

/// The `QuotaLow` events received so far, as `(endpoint, window, utilization, rejected)`.
fn quota_events(
    events: &mut tokio::sync::broadcast::Receiver<ForwarderEvent>,
) -> Vec<(String, String, f64, bool)> {
    let mut found = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ForwarderEvent::QuotaLow {
            endpoint,
            window,
            utilization,
            rejected,
            resets_at,
        } = event
        {
            assert!(resets_at.is_some(), "the reset is passed on");
            found.push((endpoint, window, utilization, rejected));
        }
    }
    found
}

#[tokio::test]
async fn a_rejected_account_is_skipped_until_its_reset_and_no_request_reaches_it_meanwhile() {
    let accounts = Accounts::start().await;
    let reset = epoch_in(3);
    // a's account is spent: a 429 saying `rejected` until its reset, with a retry-after short
    // enough that an ordinary 429 would be waited out on the same endpoint.
    accounts.a.enqueue(
        unified(
            Reply::error(
                429,
                "rate_limit_error",
                "This request would exceed your account's rate limit. Please try again later.",
            ),
            "rejected",
            1.0,
            reset,
        )
        .header("retry-after", "2"),
    );
    let forwarder = accounts.forwarder("").await;
    let mut events = forwarder.engine.events().subscribe();
    send_turn(&forwarder, "s1").await;
    assert_eq!(
        accounts.sent(),
        [1, 1],
        "no retry against a rejected account"
    );

    // Until the reset, nothing reaches a: not new sessions, not s1 (served by b), not requests
    // without a session.
    send_turn(&forwarder, "s2").await;
    send_turn(&forwarder, "s1").await;
    let answer = forwarder
        .messages(
            json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(accounts.sent(), [1, 4], "a is skipped while rejected");

    let a = quota_of(&forwarder, "a").await;
    assert!(a["blocked_until"].is_string(), "{a}");
    assert_eq!(a["drain_reason"]["reason"], "subscription_rejected", "{a}");
    let subscription = &a["subscription"];
    assert_eq!(subscription["status"], "rejected", "{a}");
    assert_eq!(subscription["rejected"], true);
    assert_eq!(subscription["representative_window"], "5h");
    assert!(subscription["reset_at"].is_string(), "{a}");
    assert_eq!(
        quota_events(&mut events),
        vec![("a".to_string(), "five_hour".to_string(), 1.0, true)]
    );
    let metrics = forwarder.send(Method::GET, "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.bytes()).to_string();
    assert!(
        text.contains("ccf_quota_rejected_total{endpoint=\"a\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ccf_quota_utilization{endpoint=\"a\",window=\"5h\"} 1.0"),
        "{text}"
    );

    // After the reset a serves again (its default answer is a plain success).
    eventually("a's reset passes", || {
        forwarder
            .engine
            .quota()
            .iter()
            .all(|endpoint| endpoint.blocked_for.is_none() && endpoint.draining.is_none())
    })
    .await;
    send_turn(&forwarder, "s3").await;
    assert_eq!(accounts.sent(), [2, 4], "a takes requests again");
    let a = quota_of(&forwarder, "a").await;
    assert!(a["blocked_until"].is_null(), "{a}");
    assert_eq!(a["subscription"]["rejected"], false, "{a}");
}

#[tokio::test]
async fn a_window_at_the_drain_threshold_sends_new_sessions_elsewhere_while_a_bound_one_stays() {
    let accounts = Accounts::start().await;
    // Every answer of a: allowed, but the representative five-hour window is 95 % used.
    let reset = epoch_in(3600);
    accounts
        .a
        .set_default(unified(Reply::auto(), "allowed_warning", 0.95, reset));
    accounts
        .b
        .set_default(unified(Reply::auto(), "allowed", 0.10, reset));
    let forwarder = accounts
        .forwarder("routing:\n  quota_drain_at: 0.9\n")
        .await;
    let mut events = forwarder.engine.events().subscribe();
    send_turn(&forwarder, "bound").await;
    assert_eq!(accounts.sent(), [1, 0]);
    // New sessions go to b; the conversation already on a keeps its cache there.
    send_turn(&forwarder, "new-1").await;
    send_turn(&forwarder, "new-2").await;
    assert_eq!(accounts.sent(), [1, 2], "new sessions drained away from a");
    send_turn(&forwarder, "bound").await;
    send_turn(&forwarder, "bound").await;
    assert_eq!(accounts.sent(), [3, 2], "the bound session stays on a");
    // Three answers above the threshold, one crossing: one event.
    assert_eq!(
        quota_events(&mut events),
        vec![("a".to_string(), "five_hour".to_string(), 0.95, false)]
    );

    let a = quota_of(&forwarder, "a").await;
    assert_eq!(a["draining"], true, "{a}");
    assert_eq!(a["drain_reason"]["reason"], "subscription_used", "{a}");
    assert!(a["blocked_until"].is_null(), "draining is not a block: {a}");
    let subscription = &a["subscription"];
    assert_eq!(subscription["status"], "allowed_warning");
    assert_eq!(subscription["representative_claim"], "five_hour");
    assert_eq!(subscription["representative_window"], "5h");
    assert_eq!(subscription["utilization"], 0.95);
    assert_eq!(subscription["drain_at"], 0.9);
    let windows = subscription["windows"].as_array().expect("windows");
    let window = |name: &str| {
        windows
            .iter()
            .find(|window| window["window"] == name)
            .unwrap_or_else(|| panic!("{name} in {subscription}"))
            .clone()
    };
    assert_eq!(window("5h")["utilization"], 0.95);
    assert_eq!(window("5h")["representative"], true);
    assert_eq!(window("7d")["utilization"], 0.3);
    assert_eq!(window("7d")["representative"], false);
    for name in ["5h", "7d"] {
        let reset_at = window(name)["reset_at"].as_str().map(str::to_string);
        assert!(
            reset_at.is_some_and(|at| at.contains('T') && at.ends_with('Z')),
            "{subscription}"
        );
    }
    let b = quota_of(&forwarder, "b").await;
    assert_eq!(b["draining"], false, "{b}");
    assert_eq!(b["subscription"]["utilization"], 0.1);
}

#[tokio::test]
async fn an_overloaded_529_is_a_transient_throttle_not_exhaustion() {
    let accounts = Accounts::start().await;
    let reset = epoch_in(3600);
    // One 529 from a, carrying its account's (healthy) unified headers, then successes.
    accounts
        .a
        .enqueue(unified(Reply::overloaded(), "allowed", 0.40, reset));
    accounts
        .a
        .set_default(unified(Reply::auto(), "allowed", 0.41, reset));
    let forwarder = accounts.forwarder("").await;
    let mut events = forwarder.engine.events().subscribe();
    send_turn(&forwarder, "s1").await;
    assert_eq!(accounts.sent(), [2, 0], "retried on a after a back-off");
    send_turn(&forwarder, "s2").await;
    assert_eq!(accounts.sent(), [3, 0], "a still takes new sessions");

    let a = quota_of(&forwarder, "a").await;
    assert!(a["blocked_until"].is_null(), "{a}");
    assert_eq!(a["draining"], false, "{a}");
    assert_eq!(a["subscription"]["rejected"], false, "{a}");
    assert_eq!(a["subscription"]["utilization"], 0.41, "{a}");
    assert!(
        forwarder
            .engine
            .endpoints()
            .iter()
            .all(|endpoint| endpoint.blocked_until.is_none()),
        "no endpoint is blocked"
    );
    assert!(quota_events(&mut events).is_empty());
}

#[tokio::test]
async fn a_reloaded_drain_threshold_applies_to_the_next_new_session() {
    let accounts = Accounts::start().await;
    let reset = epoch_in(3600);
    accounts
        .a
        .set_default(unified(Reply::auto(), "allowed_warning", 0.95, reset));
    // 95 % used, below a 0.97 threshold: a keeps taking new sessions.
    let forwarder = accounts
        .forwarder("routing:\n  quota_drain_at: 0.97\n")
        .await;
    send_turn(&forwarder, "s1").await;
    send_turn(&forwarder, "s2").await;
    assert_eq!(accounts.sent(), [2, 0]);
    let report = forwarder
        .engine
        .reload(std::sync::Arc::new(
            accounts.config("routing:\n  quota_drain_at: 0.9\n"),
        ))
        .expect("the new threshold is valid");
    assert!(
        report
            .applied
            .iter()
            .any(|change| change.contains("routing")),
        "{report:?}"
    );
    assert!(report.restart_required.is_empty(), "{report:?}");
    send_turn(&forwarder, "s3").await;
    assert_eq!(accounts.sent(), [2, 1], "the reloaded threshold drains a");
    assert_eq!(
        quota_of(&forwarder, "a").await["subscription"]["drain_at"],
        0.9
    );
}
