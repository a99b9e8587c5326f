//! Routing and resilience end to end: several mock upstreams in groups behind the real app.

use crate::support;

use std::time::Duration;

use ccf_testkit::{MockUpstream, Reply};
use hyper::Method;
use serde_json::json;
use support::{closed_port_url, config, endpoint_yaml, eventually, messages_sent, Forwarder, WAIT};

/// Fast retries so tests do not wait on production back-offs.
const FAST_RETRY: &str = "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 50ms\n";

fn request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "route me"}],
    })
}

/// Three mocks: `a` (priority 1) and `b` (priority 2) in group `main`, `c` in group `backup`.
struct Topology {
    a: MockUpstream,
    b: MockUpstream,
    c: MockUpstream,
}

impl Topology {
    async fn start() -> Topology {
        Topology {
            a: MockUpstream::start().await,
            b: MockUpstream::start().await,
            c: MockUpstream::start().await,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        vec![
            endpoint_yaml(
                "a",
                &self.a.url(),
                "group: main\ngroup-priority: 1\npriority: 1",
            ),
            endpoint_yaml("b", &self.b.url(), "priority: 2"),
            endpoint_yaml(
                "c",
                &self.c.url(),
                "group: backup\ngroup-priority: 2\npriority: 1",
            ),
        ]
    }

    /// The forwarder in front of the three; `FAST_RETRY` unless `settings` has its own `retry`.
    async fn forwarder(&self, settings: &str) -> Forwarder {
        let settings = if settings.contains("retry:") {
            settings.to_string()
        } else {
            format!("{FAST_RETRY}{settings}")
        };
        Forwarder::start(config(&settings, &self.endpoints())).await
    }

    fn sent(&self) -> [usize; 3] {
        [
            messages_sent(&self.a),
            messages_sent(&self.b),
            messages_sent(&self.c),
        ]
    }
}

fn attempts(answer: &support::Answer) -> usize {
    answer
        .header("x-ccf-attempts")
        .and_then(|value| value.parse().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn overloaded_endpoint_is_retried_then_the_next_endpoint_serves() {
    let mocks = Topology::start().await;
    mocks.a.set_default(Reply::overloaded());
    let forwarder = mocks.forwarder("").await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mocks.sent(), [3, 1, 0]);
    assert_eq!(attempts(&answer), 4);
    // Every attempt replayed the identical body.
    let expected = request(false).to_string();
    for upstream in [&mocks.a, &mocks.b] {
        for recorded in upstream
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/messages")
        {
            assert_eq!(recorded.body, expected.as_bytes());
        }
    }
}

#[tokio::test]
async fn server_errors_and_cloudflare_errors_are_retried() {
    for status in [500, 502, 503, 504, 520, 525, 529] {
        let mocks = Topology::start().await;
        mocks
            .a
            .enqueue(Reply::error(status, "api_error", "transient"));
        let forwarder = mocks.forwarder("").await;
        let answer = forwarder.messages(request(false), &[]).await;
        assert_eq!(answer.status, 200, "{status}");
        assert_eq!(
            mocks.sent(),
            [2, 0, 0],
            "{status}: retried on the same endpoint"
        );
    }
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_skipped_after_one_attempt() {
    let mocks = Topology::start().await;
    // Its health probe passes, so routing starts with it; its messages never get headers.
    mocks.a.set_default(Reply::hang());
    let forwarder = mocks
        .forwarder(&format!(
            "{FAST_RETRY}streaming:\n  response_header_timeout: 200ms\n"
        ))
        .await;
    let answer = forwarder.messages(request(true), &[]).await;
    assert_eq!(answer.status, 200);
    // a got the whole request and may be generating it: never again on a (issue #17), one
    // last attempt elsewhere.
    assert_eq!(attempts(&answer), 2, "1 on a, 1 on b");
    assert_eq!(mocks.sent(), [1, 1, 0]);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped() {
    let mocks = Topology::start().await;
    let dead = closed_port_url().await;
    let forwarder = Forwarder::start(config(
        FAST_RETRY,
        &[
            endpoint_yaml("dead", &dead, "group: main\npriority: 1"),
            endpoint_yaml("b", &mocks.b.url(), "priority: 2"),
        ],
    ))
    .await;
    for _ in 0..3 {
        let answer = forwarder.messages(request(false), &[]).await;
        assert_eq!(answer.status, 200);
        // At most the first request spends attempts on it; once known down it goes last.
        assert!(attempts(&answer) <= 4);
    }
    assert_eq!(messages_sent(&mocks.b), 3);
    assert!(!forwarder.engine.health().is_healthy("dead"));
}

#[tokio::test]
async fn rejected_credentials_move_to_the_next_endpoint_at_once() {
    for status in [401, 403] {
        let mocks = Topology::start().await;
        let refused = Reply::error(status, "authentication_error", "invalid x-api-key");
        mocks.a.set_default(refused.clone());
        // Bad credentials fail the health probe too, so a stays down.
        mocks.a.set_probe_reply(refused);
        // The first request must reach a before the start-up probe's refusal marks it down.
        // Served on the test's own runtime (`server.threads: 0`) the request runs first; on
        // per-core threads the two race, and a request routed after the probe skips a.
        let forwarder = mocks.forwarder("server:\n  threads: 0\n").await;
        let answer = forwarder.messages(request(false), &[]).await;
        assert_eq!(answer.status, 200, "{status}");
        assert_eq!(mocks.sent(), [1, 1, 0], "{status}: no same-endpoint retry");
        assert!(
            !forwarder.engine.health().is_healthy("a"),
            "{status}: a is marked unhealthy"
        );
        // The next request does not waste an attempt on a.
        assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
        assert_eq!(mocks.sent(), [1, 2, 0], "{status}");
    }
}

#[tokio::test]
async fn client_errors_are_final_and_relayed_verbatim() {
    for (status, error_type) in [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
    ] {
        let mocks = Topology::start().await;
        mocks
            .a
            .enqueue(Reply::error(status, error_type, "the request is wrong"));
        let forwarder = mocks.forwarder("").await;
        let answer = forwarder.messages(request(false), &[]).await;
        assert_eq!(answer.status.as_u16(), status);
        let recorded = mocks.a.wait_for_finished(0, WAIT).await.unwrap();
        let recorded = if recorded.path == "/v1/messages" {
            recorded
        } else {
            mocks
                .a
                .requests()
                .into_iter()
                .find(|r| r.path == "/v1/messages")
                .unwrap()
        };
        assert_eq!(answer.bytes(), recorded.sent_body, "{status}: verbatim");
        assert_eq!(mocks.sent(), [1, 0, 0], "{status}: never retried");
    }
}

#[tokio::test]
async fn a_short_retry_after_is_waited_on_the_same_endpoint() {
    let mocks = Topology::start().await;
    mocks.a.enqueue(Reply::rate_limited(0));
    let forwarder = mocks.forwarder("").await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mocks.sent(), [2, 0, 0]);
}

#[tokio::test]
async fn a_long_retry_after_skips_the_endpoint_until_its_reset() {
    let mocks = Topology::start().await;
    mocks.a.enqueue(Reply::rate_limited(3600));
    let forwarder = mocks.forwarder("").await;
    let first = forwarder.messages(request(false), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(mocks.sent(), [1, 1, 0], "moved on at once");
    let second = forwarder.messages(request(false), &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(mocks.sent(), [1, 2, 0], "a is skipped while rate limited");
}

#[tokio::test]
async fn when_everything_fails_the_last_upstream_error_is_relayed_and_attempts_are_exact() {
    let mocks = Topology::start().await;
    for upstream in [&mocks.a, &mocks.b, &mocks.c] {
        upstream.set_default(Reply::overloaded());
    }
    let forwarder = mocks.forwarder("retry:\n  max_attempts: 2").await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(answer.status, 529);
    assert_eq!(answer.json()["error"]["type"], "overloaded_error");
    assert_eq!(
        mocks.sent(),
        [2, 2, 2],
        "3 endpoints x 2 attempts, across both groups"
    );
    assert_eq!(attempts(&answer), 6);
}

#[tokio::test]
async fn a_failed_group_cools_down_and_the_same_request_continues_on_the_next_group() {
    let mocks = Topology::start().await;
    mocks.a.set_default(Reply::overloaded());
    mocks.b.set_default(Reply::overloaded());
    let forwarder = mocks.forwarder("group:\n  cooldown: 1h").await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(
        answer.status, 200,
        "served by the backup group in the same request"
    );
    assert_eq!(mocks.sent(), [3, 3, 1]);
    let groups = forwarder.engine.groups();
    let main = groups.iter().find(|g| g.name == "main").unwrap();
    assert!(main.in_cooldown);
    // The next request goes straight to the backup group.
    let next = forwarder.messages(request(false), &[]).await;
    assert_eq!(next.status, 200);
    assert_eq!(mocks.sent(), [3, 3, 2]);
    // Activating a group in cooldown is refused.
    assert!(forwarder.engine.activate_group("main", true).is_err());
}

#[tokio::test]
async fn the_preferred_group_comes_back_when_its_cooldown_ends() {
    let mocks = Topology::start().await;
    mocks.a.enqueue(Reply::overloaded());
    mocks.a.enqueue(Reply::overloaded());
    mocks.a.enqueue(Reply::overloaded());
    mocks.b.enqueue(Reply::overloaded());
    mocks.b.enqueue(Reply::overloaded());
    mocks.b.enqueue(Reply::overloaded());
    let forwarder = mocks
        .forwarder("group:\n  cooldown: 300ms\nhealth:\n  check_interval: 1h")
        .await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(messages_sent(&mocks.c), 1);
    // After the cooldown the main group serves again, without any operator action.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
        if messages_sent(&mocks.a) > 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "main group never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn manual_mode_never_switches_groups_by_itself() {
    let mocks = Topology::start().await;
    mocks.a.set_default(Reply::overloaded());
    mocks.b.set_default(Reply::overloaded());
    let forwarder = mocks
        .forwarder("group:\n  auto_switch_between_groups: false")
        .await;
    let answer = forwarder.messages(request(false), &[]).await;
    assert_eq!(
        answer.status, 529,
        "no automatic switch to the backup group"
    );
    assert_eq!(mocks.sent(), [3, 3, 0]);
    let groups = forwarder.engine.groups();
    let main = groups.iter().find(|g| g.name == "main").unwrap();
    assert!(main.is_active && main.needs_attention);
    // The operator switches.
    forwarder.engine.activate_group("backup", false).unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(mocks.sent(), [3, 3, 1]);
}

#[tokio::test]
async fn pause_and_resume_move_traffic() {
    let mocks = Topology::start().await;
    let forwarder = mocks.forwarder("").await;
    forwarder.engine.pause_group("main", None).unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(mocks.sent(), [0, 0, 1]);
    forwarder.engine.resume_group("main").unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(mocks.sent(), [1, 0, 1]);
    assert!(forwarder.engine.resume_group("main").is_err(), "not paused");
    assert!(forwarder.engine.pause_group("nope", None).is_err());
}

#[tokio::test]
async fn a_timed_pause_ends_by_itself() {
    let mocks = Topology::start().await;
    let forwarder = mocks.forwarder("").await;
    forwarder
        .engine
        .pause_group("main", Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(mocks.sent(), [0, 0, 1]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while messages_sent(&mocks.a) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "pause never ended");
        forwarder.messages(request(false), &[]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn priority_changes_and_the_primary_override_take_effect_at_once() {
    let mocks = Topology::start().await;
    let forwarder = mocks.forwarder("").await;
    forwarder.engine.set_endpoint_priority("b", 0).unwrap();
    forwarder.messages(request(false), &[]).await;
    assert_eq!(mocks.sent(), [0, 1, 0]);
    forwarder.engine.prefer_endpoint("a").unwrap();
    forwarder.messages(request(false), &[]).await;
    assert_eq!(mocks.sent(), [1, 1, 0]);
    assert!(forwarder.engine.set_endpoint_priority("zzz", 1).is_err());
}

#[tokio::test]
async fn the_primary_override_from_the_command_line_prefers_that_endpoint() {
    let mocks = Topology::start().await;
    let mut settings = config(FAST_RETRY, &mocks.endpoints());
    settings.prefer_endpoint("b").unwrap();
    let forwarder = Forwarder::start(settings).await;
    forwarder.messages(request(false), &[]).await;
    assert_eq!(mocks.sent(), [0, 1, 0]);
}

#[tokio::test]
async fn a_stream_is_never_retried_after_its_first_byte_and_ends_with_an_error_event() {
    let mocks = Topology::start().await;
    mocks.a.enqueue(Reply::sse().drop_after_events(4));
    let forwarder = mocks.forwarder("").await;
    let answer = forwarder.messages(request(true), &[]).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(text.trim_end().ends_with('}'), "{text}");
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last_event.starts_with("event: error\ndata: "),
        "{last_event}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(last_event.trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!(payload["type"], "error");
    assert_eq!(
        mocks.sent(),
        [1, 0, 0],
        "no retry after bytes reached the client"
    );
}

#[tokio::test]
async fn a_stream_that_fails_before_its_headers_fails_over_invisibly() {
    let mocks = Topology::start().await;
    mocks.a.set_default(Reply::overloaded());
    let forwarder = mocks.forwarder("").await;
    let answer = forwarder.messages(request(true), &[]).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.bytes()).into_owned();
    assert!(
        text.starts_with("event: message_start"),
        "nothing injected: {text}"
    );
    assert!(!text.contains("retry"), "{text}");
    let recorded = mocks
        .b
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages")
        .unwrap();
    assert_eq!(answer.bytes(), recorded.sent_body);
}

#[tokio::test]
async fn a_held_request_resumes_when_a_group_is_resumed() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        &format!("{FAST_RETRY}request_suspend:\n  enabled: true\n  timeout: 30s\n"),
        &[endpoint_yaml("only", &upstream.url(), "group: solo")],
    ))
    .await;
    forwarder.engine.pause_group("solo", None).unwrap();
    let base = forwarder.base.clone();
    let client = forwarder.client.clone();
    let pending = tokio::spawn(async move {
        let request = hyper::Request::post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                request(false).to_string(),
            )))
            .unwrap();
        client
            .request(request)
            .await
            .map(|response| response.status())
    });
    let engine = forwarder.engine.clone();
    eventually("the request is held", || engine.held_requests().len() == 1).await;
    assert_eq!(messages_sent(&upstream), 0);
    forwarder.engine.resume_group("solo").unwrap();
    let status = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(messages_sent(&upstream), 1);
    assert!(forwarder.engine.held_requests().is_empty());
}

#[tokio::test]
async fn a_held_request_times_out_with_503_and_the_cap_is_enforced() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "request_suspend:\n  enabled: true\n  timeout: 500ms\n  max_suspended_requests: 1\n",
        &[endpoint_yaml("only", &upstream.url(), "group: solo")],
    ))
    .await;
    forwarder.engine.pause_group("solo", None).unwrap();
    let base = forwarder.base.clone();
    let client = forwarder.client.clone();
    let held = tokio::spawn(async move {
        let request = hyper::Request::post(format!("{base}/v1/messages"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                request(false).to_string(),
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, body)
    });
    let engine = forwarder.engine.clone();
    eventually("the first request is held", || {
        engine.held_requests().len() == 1
    })
    .await;
    // Over the cap: fails at once.
    let over_cap = forwarder.messages(request(false), &[]).await;
    over_cap.assert_anthropic_error(503, "overloaded_error");
    let (status, body) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(status, 503);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["type"], "overloaded_error");
    assert_eq!(messages_sent(&upstream), 0);
}

#[tokio::test]
async fn a_restored_upstream_is_found_by_fast_recovery_probes_and_serves_again_on_real_traffic() {
    let upstream = MockUpstream::start().await;
    let address = upstream.addr();
    let backup = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        &format!("{FAST_RETRY}health:\n  check_interval: 1h\ngroup:\n  cooldown: 1h\n"),
        &[
            endpoint_yaml("primary", &upstream.url(), "group: main\ngroup-priority: 1"),
            endpoint_yaml("backup", &backup.url(), "group: spare\ngroup-priority: 2"),
        ],
    ))
    .await;
    // The start-up probes passed: the primary goes down while it carries traffic, so failed
    // traffic (not a probe) takes it out and cools its group.
    let engine = forwarder.engine.clone();
    eventually("the start-up probes finished", || {
        let health = engine.health().snapshot();
        ["primary", "backup"]
            .iter()
            .all(|name| health.get(name).is_some_and(|health| !health.never_checked))
    })
    .await;
    upstream.shutdown().await;
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(messages_sent(&backup), 1);
    assert!(!forwarder.engine.health().is_healthy("primary"));
    assert!(forwarder
        .engine
        .groups()
        .iter()
        .any(|g| g.name == "main" && g.in_cooldown));
    // The upstream comes back on the same address.
    let restored = MockUpstream::start_on(address)
        .await
        .expect("rebind the same port");
    let started = std::time::Instant::now();
    let engine = forwarder.engine.clone();
    eventually("primary is healthy again", || {
        engine.health().is_healthy("primary")
    })
    .await;
    // With a one-hour check interval only the fast-recovery probes can have noticed; how fast
    // they are is a benchmark matter, not an assertion.
    eprintln!("primary healthy again after {:?}", started.elapsed());
    // A probe says "reachable", not "serving" (issue #17): the group keeps its cooldown and
    // traffic stays on the backup.
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(
        messages_sent(&restored),
        0,
        "a probe does not end the cooldown"
    );
    assert_eq!(messages_sent(&backup), 2);
    // With nothing else available the cooling group is the last resort; real traffic
    // succeeding there ends its cooldown and the primary carries traffic again.
    forwarder.engine.pause_group("spare", None).unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    forwarder.engine.resume_group("spare").unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(
        messages_sent(&restored),
        2,
        "traffic is back on the primary"
    );
    assert_eq!(messages_sent(&backup), 2);
}

#[tokio::test]
async fn health_probes_carry_the_endpoint_credentials_and_api_version() {
    let upstream = MockUpstream::start().await;
    let _forwarder = Forwarder::start(config(
        "",
        &[endpoint_yaml(
            "keyed",
            &upstream.url(),
            "api-key: probe-key\ntoken: probe-token\nheaders:\n  X-Relay: relay-1",
        )],
    ))
    .await;
    let probes = upstream.wait_for_probes(1, WAIT).await;
    let probe = &probes[0];
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.path, "/v1/models");
    assert_eq!(probe.header("x-api-key"), Some("probe-key"));
    assert_eq!(probe.header("authorization"), Some("Bearer probe-token"));
    assert_eq!(probe.header("x-relay"), Some("relay-1"));
    assert_eq!(probe.header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn a_client_leaving_during_back_off_stops_the_request() {
    let mocks = Topology::start().await;
    mocks.a.set_default(Reply::overloaded());
    let forwarder = mocks
        .forwarder("retry:\n  base_delay: 30s\n  max_delay: 30s")
        .await;
    let stream = forwarder.raw_request(&request(false).to_string()).await;
    let a = mocks.a.clone();
    eventually("the first attempt reached a", || messages_sent(&a) == 1).await;
    drop(stream);
    let metrics_forwarder = &forwarder;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = metrics_forwarder
            .send(Method::GET, "/metrics", &[], "")
            .await;
        let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
        if text.contains("ccf_requests_cancelled_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cancel never recorded: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mocks.sent(), [1, 0, 0], "no attempt after the client left");
}

#[tokio::test]
async fn the_fastest_strategy_prefers_the_endpoint_that_answers_sooner() {
    let slow = MockUpstream::start().await;
    let fast = MockUpstream::start().await;
    // The slow endpoint has the better priority; only measured latency can put `fast` first.
    slow.set_default(Reply::auto().header_delay(Duration::from_millis(150)));
    slow.set_probe_reply(Reply::auto().header_delay(Duration::from_millis(150)));
    let forwarder = Forwarder::start(config(
        "strategy:\n  type: fastest\n  fast_test_enabled: true\n  fast_test_cache_ttl: 1m\n  fast_test_timeout: 2s\n",
        &[
            endpoint_yaml("slow", &slow.url(), "priority: 1"),
            endpoint_yaml("fast", &fast.url(), "priority: 2"),
        ],
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    }
    assert_eq!(messages_sent(&fast), 3);
    assert_eq!(messages_sent(&slow), 0);
    let views = forwarder.engine.endpoints();
    let slow_view = views.iter().find(|view| view.name == "slow").unwrap();
    let fast_view = views.iter().find(|view| view.name == "fast").unwrap();
    assert!(slow_view.probe_latency > fast_view.probe_latency);
}

#[tokio::test]
async fn a_held_request_whose_client_leaves_frees_its_slot() {
    let upstream = MockUpstream::start().await;
    let forwarder = Forwarder::start(config(
        "request_suspend:\n  enabled: true\n  timeout: 30s\n  max_suspended_requests: 1\n",
        &[endpoint_yaml("only", &upstream.url(), "group: solo")],
    ))
    .await;
    forwarder.engine.pause_group("solo", None).unwrap();
    let stream = forwarder.raw_request(&request(false).to_string()).await;
    let engine = forwarder.engine.clone();
    eventually("the request is held", || engine.held_requests().len() == 1).await;
    drop(stream);
    eventually("the slot is freed", || engine.held_requests().is_empty()).await;
    forwarder.engine.resume_group("solo").unwrap();
    assert_eq!(forwarder.messages(request(false), &[]).await.status, 200);
    assert_eq!(
        messages_sent(&upstream),
        1,
        "the cancelled request never reached upstream"
    );
}
