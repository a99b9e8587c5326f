//! Smart routing end to end: prompt-cache affinity (hold, move once, expire, off) and quota
//! awareness (draining before a 429, return after the reset), with mock upstreams behind the
//! real app, and the admin API routes that show both.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_testkit::{MockUpstream, MockUsage, Reply};
use serde_json::{json, Value};
use support::{admin_get, config, endpoint_yaml, eventually, messages_sent, Forwarder, Outcomes};

/// Fast retries so failures do not wait on production back-offs; probes rarely.
const BASE: &str = "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 50ms\n";

/// A Claude Code-like turn of conversation `session` (sent as `x-claude-code-session-id`).
fn turn(text: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "system": [{"type": "text", "text": "You are a test.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    })
}

/// A turn asking for the 1-hour cache.
fn long_turn(text: &str) -> Value {
    let mut body = turn(text);
    body["system"][0]["cache_control"] = json!({"type": "ephemeral", "ttl": "1h"});
    body
}

/// Mocks `a` (priority 1), `b` (2) and `c` (3) in one group.
struct Mocks {
    a: MockUpstream,
    b: MockUpstream,
    c: MockUpstream,
}

impl Mocks {
    async fn start() -> Mocks {
        Mocks {
            a: MockUpstream::start().await,
            b: MockUpstream::start().await,
            c: MockUpstream::start().await,
        }
    }

    fn config(&self, settings: &str) -> ccf_config::Config {
        config(
            &if settings.contains("retry:") {
                settings.to_string()
            } else {
                format!("{BASE}{settings}")
            },
            &[
                endpoint_yaml("a", &self.a.url(), "group: main\npriority: 1"),
                endpoint_yaml("b", &self.b.url(), "priority: 2"),
                endpoint_yaml("c", &self.c.url(), "priority: 3"),
            ],
        )
    }

    async fn forwarder(&self, settings: &str) -> Forwarder {
        Forwarder::start(self.config(settings)).await
    }

    fn sent(&self) -> [usize; 3] {
        [
            messages_sent(&self.a),
            messages_sent(&self.b),
            messages_sent(&self.c),
        ]
    }
}

/// Sends one turn of `session` and asserts it succeeded.
async fn send_turn(forwarder: &Forwarder, session: &str, body: Value) {
    let answer = forwarder
        .messages(body, &[("x-claude-code-session-id", session)])
        .await;
    assert_eq!(answer.status, 200, "turn of {session}");
}

const ADMIN: &str = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";

#[tokio::test]
async fn affinity_holds_a_session_on_its_endpoint_while_priority_prefers_another() {
    let mocks = Mocks::start().await;
    // Every answer reads a large cached prefix, so the held turn has something to save.
    let cached = MockUsage {
        input: 10,
        output: 5,
        cache_creation: 0,
        cache_read: 100_000,
    };
    for mock in [&mocks.a, &mocks.b] {
        mock.set_default(Reply::auto().usage(cached));
    }
    let forwarder = mocks.forwarder(ADMIN).await;
    send_turn(&forwarder, "s1", turn("hello")).await;
    assert_eq!(mocks.sent(), [1, 0, 0]);
    // b becomes the preferred endpoint; the conversation keeps its cache on a.
    forwarder
        .engine
        .set_endpoint_priority("b", 0)
        .expect("known endpoint");
    for _ in 0..3 {
        send_turn(&forwarder, "s1", turn("hello")).await;
    }
    assert_eq!(mocks.sent(), [4, 0, 0], "the session stayed on a");
    // A new conversation follows the priorities.
    send_turn(&forwarder, "s2", turn("another conversation")).await;
    assert_eq!(mocks.sent(), [4, 1, 0]);

    let affinity = admin_get(&forwarder, "/api/v1/routing/affinity").await;
    assert_eq!(affinity["enabled"], true);
    assert_eq!(affinity["active_sessions"], 2);
    assert_eq!(affinity["totals"]["held_turns"], 3, "{affinity}");
    assert_eq!(affinity["totals"]["moves"], 0);
    eventually("the last turn's usage is counted", || {
        forwarder
            .engine
            .affinity(10)
            .endpoints
            .iter()
            .map(|e| e.tokens.turns)
            .sum::<u64>()
            == 5
    })
    .await;
    let affinity = admin_get(&forwarder, "/api/v1/routing/affinity").await;
    let endpoint_a = affinity["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|endpoint| endpoint["endpoint"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(endpoint_a["turns"], 4);
    assert_eq!(endpoint_a["held_turns"], 3);
    assert_eq!(endpoint_a["held_cache_read_tokens"], 300_000);
    // Four turns of 10 input and 100k cache read tokens each.
    let ratio = endpoint_a["cache_read_ratio"].as_f64().expect("ratio");
    assert!((ratio - 400_000.0 / 400_040.0).abs() < 1e-12, "{ratio}");
    // 300k held cache reads at the default prices (3.75 write - 0.30 read per million):
    // 300,000 x 3,450 nano-USD = 1,035,000,000 nano-USD.
    let expected_saved = 1_035_000_000.0 / 1e9;
    let saved = affinity["totals"]["saved_usd"].as_f64().expect("saved");
    assert!((saved - expected_saved).abs() < 1e-12, "{saved}");
    let sessions = affinity["sessions"].as_array().expect("sessions");
    let s1 = sessions
        .iter()
        .find(|session| session["endpoint"] == "a")
        .expect("s1 listed");
    assert_eq!(s1["source"], "header");
    assert_eq!(s1["session"].as_str().map(str::len), Some(16));
    assert_eq!(s1["held_turns"], 3);
    // Only s1 had held turns: it saved everything.
    let s1_saved = s1["saved_usd"].as_f64().expect("saved");
    assert!((s1_saved - expected_saved).abs() < 1e-12, "{s1_saved}");
}

#[tokio::test]
async fn a_failed_bound_endpoint_moves_the_session_once_and_it_stays_after_recovery() {
    let mocks = Mocks::start().await;
    let outcomes = Arc::new(Outcomes::default());
    let forwarder = Forwarder::start_observed(
        mocks.config(""),
        Some(Arc::clone(&outcomes) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    send_turn(&forwarder, "s1", turn("hello")).await;
    assert_eq!(mocks.sent(), [1, 0, 0]);

    // a fails: the turn is served by b and the session moves there.
    mocks.a.set_default(Reply::overloaded());
    send_turn(&forwarder, "s1", turn("hello")).await;
    assert_eq!(mocks.sent(), [4, 1, 0]);
    let records = outcomes.wait_for(2).await;
    let moved = records
        .iter()
        .find(|record| record.endpoint.as_deref() == Some("b"))
        .expect("the turn served by b");
    assert_eq!(moved.affinity_moved_from.as_deref(), Some("a"));
    assert_eq!(moved.session_id, records[0].session_id);
    assert!(moved.session_id.is_some());

    // a recovers; the conversation stays where its cache now is.
    mocks.a.set_default(Reply::auto());
    eventually("a is healthy again", || {
        forwarder.engine.health().snapshot().is_healthy("a")
    })
    .await;
    for _ in 0..3 {
        send_turn(&forwarder, "s1", turn("hello")).await;
    }
    assert_eq!(mocks.sent(), [4, 4, 0], "no move back to a");
    // A new conversation goes to a by priority.
    send_turn(&forwarder, "s2", turn("new conversation")).await;
    assert_eq!(mocks.sent(), [5, 4, 0]);
    let affinity = forwarder.engine.affinity(10);
    assert_eq!(affinity.totals.moves, 1);
    // Stopped, every request has reported: the list of outcomes is complete.
    forwarder.stop_settled().await;
    let records = outcomes.all();
    assert_eq!(records.len(), 6, "one outcome per turn");
    assert_eq!(
        records
            .iter()
            .filter(|record| record.affinity_moved_from.is_some())
            .count(),
        1,
        "exactly one move recorded"
    );
}

#[tokio::test]
async fn a_binding_expires_after_its_ttl_and_the_next_turn_follows_priority() {
    let mocks = Mocks::start().await;
    let forwarder = mocks.forwarder("routing:\n  affinity_ttl: 2s\n").await;
    send_turn(&forwarder, "s1", turn("hello")).await;
    send_turn(&forwarder, "s2", long_turn("one hour cache")).await;
    assert_eq!(mocks.sent(), [2, 0, 0]);
    forwarder
        .engine
        .set_endpoint_priority("b", 0)
        .expect("known endpoint");
    // The 5-minute-style binding (here 2 s) ends; the 1-hour one stays.
    eventually("the short binding expires", || {
        forwarder.engine.affinity(10).active_sessions == 1
    })
    .await;
    send_turn(&forwarder, "s1", turn("hello")).await;
    assert_eq!(mocks.sent(), [2, 1, 0], "expired: routed by priority");
    // Expired bindings are swept when a turn is served: s1's was, s2's (1 hour) was not.
    assert_eq!(forwarder.engine.affinity(10).totals.expired, 1);
    send_turn(&forwarder, "s2", long_turn("one hour cache")).await;
    assert_eq!(mocks.sent(), [3, 1, 0], "the 1-hour binding still holds");
}

#[tokio::test]
async fn with_affinity_off_every_turn_follows_priority() {
    let mocks = Mocks::start().await;
    let forwarder = mocks.forwarder("routing:\n  session_affinity: off\n").await;
    send_turn(&forwarder, "s1", turn("hello")).await;
    forwarder
        .engine
        .set_endpoint_priority("b", 0)
        .expect("known endpoint");
    send_turn(&forwarder, "s1", turn("hello")).await;
    assert_eq!(mocks.sent(), [1, 1, 0]);
    assert!(!forwarder.engine.affinity(10).enabled);
}

#[tokio::test]
async fn the_prompt_identifies_a_session_without_headers() {
    let mocks = Mocks::start().await;
    let forwarder = mocks.forwarder("").await;
    let conversation = |turns: usize| {
        let mut body = turn("first question");
        let messages = body["messages"].as_array_mut().expect("messages");
        for index in 1..turns {
            let role = if index % 2 == 1 { "assistant" } else { "user" };
            messages.push(json!({"role": role, "content": format!("turn {index}")}));
        }
        body
    };
    assert_eq!(forwarder.messages(conversation(1), &[]).await.status, 200);
    forwarder
        .engine
        .set_endpoint_priority("b", 0)
        .expect("known endpoint");
    assert_eq!(forwarder.messages(conversation(3), &[]).await.status, 200);
    assert_eq!(
        mocks.sent(),
        [2, 0, 0],
        "same system + first message: same session"
    );
    let session = &forwarder.engine.affinity(10).sessions[0];
    assert_eq!(session.source, ccf_router::SessionSource::Prompt);
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (the ratelimit reset format).
fn rfc3339(time: SystemTime) -> String {
    ccf_testkit::realistic::rfc3339(
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
}

fn with_requests_quota(remaining: u64, reset: &str) -> Reply {
    Reply::auto()
        .header("anthropic-ratelimit-requests-limit", "100")
        .header(
            "anthropic-ratelimit-requests-remaining",
            &remaining.to_string(),
        )
        .header("anthropic-ratelimit-requests-reset", reset)
}

#[tokio::test]
async fn an_endpoint_about_to_run_out_gets_no_new_sessions_before_a_429_and_gets_them_back_after_its_reset(
) {
    let mocks = Mocks::start().await;
    let reset_at = SystemTime::now() + Duration::from_secs(4);
    let reset = rfc3339(reset_at);
    // a burns fast: 30 then 5 requests left, with its reset seconds away. It never answers 429.
    mocks.a.enqueue(with_requests_quota(30, &reset));
    mocks.a.enqueue(with_requests_quota(5, &reset));
    let forwarder = mocks.forwarder(ADMIN).await;
    send_turn(&forwarder, "s1", turn("one")).await;
    send_turn(&forwarder, "s2", turn("two")).await;
    assert_eq!(mocks.sent(), [2, 0, 0]);

    // Predicted to run out before its reset: new sessions go to b.
    let quota = admin_get(&forwarder, "/api/v1/routing/quota").await;
    let a = quota["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|endpoint| endpoint["endpoint"] == "a")
        .expect("a listed")
        .clone();
    assert_eq!(a["draining"], true, "{quota}");
    assert_eq!(a["drain_reason"]["reason"], "predicted");
    assert_eq!(a["dimensions"][0]["dimension"], "requests");
    assert_eq!(a["dimensions"][0]["remaining"], 5);
    assert_eq!(a["dimensions"][0]["limit"], 100);
    assert!(
        a["predicted_exhaustion_in_seconds"].as_f64().is_some(),
        "{a}"
    );
    assert!(a["dimensions"][0]["reset_at"].is_string(), "{a}");
    send_turn(&forwarder, "s3", turn("three")).await;
    send_turn(&forwarder, "s4", turn("four")).await;
    assert_eq!(mocks.sent(), [2, 2, 0], "new sessions drained away from a");
    // A conversation already on a keeps its cache there.
    send_turn(&forwarder, "s1", turn("one")).await;
    assert_eq!(mocks.sent(), [3, 2, 0], "and a never had to answer 429");

    // After the reset a takes new sessions again.
    eventually("a's reset passes", || {
        forwarder
            .engine
            .quota()
            .iter()
            .all(|endpoint| endpoint.draining.is_none())
    })
    .await;
    send_turn(&forwarder, "s5", turn("five")).await;
    assert_eq!(mocks.sent(), [4, 2, 0]);
}

#[tokio::test]
async fn retry_after_drains_new_sessions_until_it_passes() {
    let mocks = Mocks::start().await;
    // A 529 with a long retry-after on a: the request goes on to b, and a is avoided by new
    // sessions while the retry-after runs.
    mocks
        .a
        .set_default(Reply::overloaded().header("retry-after", "30"));
    let forwarder = mocks
        .forwarder("retry:\n  max_attempts: 1\n  base_delay: 10ms\n  max_delay: 50ms\nhealth:\n  check_interval: 1h\n")
        .await;
    send_turn(&forwarder, "s1", turn("one")).await;
    assert_eq!(mocks.sent(), [1, 1, 0]);
    mocks.a.set_default(Reply::auto());
    send_turn(&forwarder, "s2", turn("two")).await;
    assert_eq!(
        mocks.sent(),
        [1, 2, 0],
        "a is drained while its retry-after runs"
    );
    let quota = forwarder.engine.quota();
    let a = quota
        .iter()
        .find(|endpoint| endpoint.endpoint == "a")
        .expect("a reported");
    assert_eq!(a.draining, Some(ccf_router::DrainReason::RetryAfter));
}
