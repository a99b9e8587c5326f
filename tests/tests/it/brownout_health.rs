//! Overload handled like a brown-out, not a flap (issue #17, points 3, 4 and 9), end to end with
//! mock upstreams behind the real app:
//!
//! - a 529 storm whose `/v1/models` probes keep passing does not end its group's cooldown: a
//!   probe says "reachable", not "serving"; the group comes back on real traffic;
//! - a held request routes again on its own, so it resumes when messages start succeeding
//!   although no health change ever signalled it, and its lifecycle shows `suspended` then
//!   `resumed`;
//! - an operator's demotion releases the prompt-cache bindings to the demoted endpoint, so a
//!   bound conversation's next turn moves; a promotion of another endpoint does not.

use crate::support;

use std::sync::{Arc, Mutex};

use ccf_lifecycle::{ChangeType, ErrorState, LifecycleEvent, Outcome, Status};
use ccf_proxy::ForwarderEvent;
use ccf_testkit::{MockUpstream, Reply};
use serde_json::{json, Value};
use support::{config, endpoint_yaml, eventually, messages_sent, Forwarder, WAIT};

/// Fast retries so tests do not wait on production back-offs.
const FAST_RETRY: &str = "retry:\n  max_attempts: 3\n  base_delay: 10ms\n  max_delay: 50ms\n";

fn request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "brown-out"}],
    })
}

/// A Claude Code-like turn (a system prompt with a cache breakpoint).
fn turn(text: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "system": [{"type": "text", "text": "You are a test.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    })
}

/// Waits until the forwarder has published (so its health-to-routing bridge has handled) the
/// event that `endpoint` turned healthy.
async fn bridged_healthy(
    events: &mut tokio::sync::broadcast::Receiver<ForwarderEvent>,
    endpoint: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{endpoint} never turned healthy"));
        let Ok(ForwarderEvent::Health(health)) = event else {
            continue;
        };
        let health = serde_json::to_value(&health).expect("health events serialise");
        if health["type"] == "endpoint_healthy" && health["endpoint"] == endpoint {
            return;
        }
    }
}

#[tokio::test]
async fn a_529_storm_whose_probes_pass_keeps_its_group_cooling_until_real_traffic_succeeds() {
    let storming = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    // `POST /v1/messages` is overloaded; `GET /v1/models` keeps answering 200.
    storming.set_default(Reply::overloaded());
    let forwarder = Forwarder::start(config(
        &format!("{FAST_RETRY}group:\n  cooldown: 1h\nhealth:\n  check_interval: 1h\n"),
        &[
            endpoint_yaml("a", &storming.url(), "group: first\ngroup-priority: 1"),
            endpoint_yaml("b", &spare.url(), "group: second\ngroup-priority: 2"),
        ],
    ))
    .await;
    let mut events = forwarder.engine.events().subscribe();
    // The start-up probes have passed (a passing probe resets the failure count).
    let engine = forwarder.engine.clone();
    eventually("the start-up probes finished", || {
        let health = engine.health().snapshot();
        ["a", "b"]
            .iter()
            .all(|name| health.get(name).is_some_and(|health| !health.never_checked))
    })
    .await;

    // The storm: three 529s make `a` unhealthy and cool its group; the request fails over.
    assert_eq!(forwarder.messages(request(), &[]).await.status, 200);
    assert_eq!(messages_sent(&storming), 3);
    assert_eq!(messages_sent(&spare), 1);

    // Half a second later the fast-recovery probe of `/v1/models` passes.
    bridged_healthy(&mut events, "a").await;
    let probes = storming.probes();
    assert!(
        !probes.is_empty(),
        "the recovery probe reached the storming upstream"
    );
    assert!(probes
        .iter()
        .all(|probe| probe.status == Some(200) || probe.status.is_none()));
    assert!(forwarder.engine.health().is_healthy("a"));

    // Reachable is not serving: the group keeps cooling and no request goes back into the storm.
    for _ in 0..5 {
        assert_eq!(forwarder.messages(request(), &[]).await.status, 200);
    }
    assert_eq!(
        messages_sent(&storming),
        3,
        "no request reached the storming group"
    );
    assert_eq!(messages_sent(&spare), 6);
    let groups = forwarder.engine.groups();
    let first = groups
        .iter()
        .find(|group| group.name == "first")
        .expect("known group");
    assert!(
        first.in_cooldown,
        "a passing probe does not end the cooldown"
    );

    // The storm ends. With nothing else available the cooling group is tried as the last resort,
    // and its real traffic succeeding ends the cooldown.
    storming.set_default(Reply::auto());
    forwarder
        .engine
        .pause_group("second", None)
        .expect("known group");
    assert_eq!(forwarder.messages(request(), &[]).await.status, 200);
    assert_eq!(messages_sent(&storming), 4);
    let groups = forwarder.engine.groups();
    let first = groups
        .iter()
        .find(|group| group.name == "first")
        .expect("known group");
    assert!(
        !first.in_cooldown,
        "real traffic succeeding ends the cooldown"
    );
    forwarder.engine.resume_group("second").expect("paused");
    assert_eq!(forwarder.messages(request(), &[]).await.status, 200);
    assert_eq!(
        messages_sent(&storming),
        5,
        "the preferred group serves again"
    );
    assert_eq!(messages_sent(&spare), 6);
}

/// Every lifecycle change, with its change type.
#[derive(Default)]
struct Changes {
    events: Mutex<Vec<(ChangeType, Option<ErrorState>, Status)>>,
}

impl ccf_proxy::RequestObserver for Changes {
    fn on_event(&self, event: &LifecycleEvent) {
        let record = event.record();
        self.events.lock().expect("changes lock").push((
            event.change_type(),
            record.error_state,
            record.status,
        ));
    }

    fn on_outcome(&self, outcome: &Outcome) -> Option<f64> {
        let record = outcome.record();
        self.events.lock().expect("changes lock").push((
            outcome.event().change_type(),
            record.error_state,
            record.status,
        ));
        None
    }
}

#[tokio::test]
async fn a_held_request_resumes_when_messages_succeed_although_probes_passed_all_along() {
    let upstream = MockUpstream::start().await;
    // Messages fail, `/v1/models` answers 200 throughout. Two attempts stay under the passive
    // threshold of three failures, so no health change ever happens: nothing signals the held
    // request, it has to look again on its own.
    upstream.set_default(Reply::error(503, "api_error", "upstream unavailable"));
    let changes = Arc::new(Changes::default());
    let forwarder = Forwarder::start_observed(
        config(
            "retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 50ms\n\
             health:\n  check_interval: 1h\n\
             request_suspend:\n  enabled: true\n  timeout: 20s\n",
            &[endpoint_yaml("only", &upstream.url(), "group: solo")],
        ),
        Some(Arc::clone(&changes) as Arc<dyn ccf_proxy::RequestObserver>),
    )
    .await;
    let mut events = forwarder.engine.events().subscribe();
    let base = forwarder.base.clone();
    let client = forwarder.client.clone();
    let pending = tokio::spawn(async move {
        let request = hyper::Request::post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                request().to_string(),
            )))
            .expect("valid request");
        client
            .request(request)
            .await
            .map(|response| response.status())
    });
    let engine = forwarder.engine.clone();
    eventually("the request is held", || engine.held_requests().len() == 1).await;
    assert!(messages_sent(&upstream) >= 2);
    assert!(
        forwarder.engine.health().is_healthy("only"),
        "no health change happened"
    );

    // The upstream serves again; no probe result changes, no operator acts.
    upstream.set_default(Reply::auto());
    let status = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the held request is answered")
        .expect("task")
        .expect("response");
    assert_eq!(status, 200, "the held request resumed and was served");
    assert!(forwarder.engine.held_requests().is_empty());

    // The lifecycle shows it was suspended, then resumed, then completed.
    forwarder.settled().await;
    let changes = changes.events.lock().expect("changes lock").clone();
    let suspended = changes
        .iter()
        .position(|(change, state, _)| {
            *change == ChangeType::SuspendedChange && *state == Some(ErrorState::Suspended)
        })
        .unwrap_or_else(|| panic!("never suspended: {changes:?}"));
    let resumed = changes
        .iter()
        .skip(suspended)
        .position(|(change, state, _)| *change == ChangeType::SuspendedChange && state.is_none())
        .unwrap_or_else(|| panic!("never resumed: {changes:?}"));
    assert!(
        changes
            .iter()
            .skip(suspended + resumed)
            .any(|(change, _, status)| *change == ChangeType::Completed
                && *status == Status::Completed),
        "completed after resuming: {changes:?}"
    );
    // And the event bus said so.
    let mut saw_resumed = false;
    while let Ok(event) = events.try_recv() {
        saw_resumed |= matches!(event, ForwarderEvent::RequestResumed { .. });
    }
    assert!(saw_resumed, "RequestResumed published");
}

/// Sends one turn of `session` and returns which mock served it.
async fn send_turn(forwarder: &Forwarder, session: &str, mocks: &[&MockUpstream; 2]) -> usize {
    let before = [messages_sent(mocks[0]), messages_sent(mocks[1])];
    let answer = forwarder
        .messages(turn("hello"), &[("x-claude-code-session-id", session)])
        .await;
    assert_eq!(answer.status, 200, "turn of {session}");
    let after = [messages_sent(mocks[0]), messages_sent(mocks[1])];
    match (after[0] - before[0], after[1] - before[1]) {
        (1, 0) => 0,
        (0, 1) => 1,
        other => panic!("one upstream request per turn, got {other:?}"),
    }
}

#[tokio::test]
async fn a_priority_demotion_moves_a_bound_conversation_and_a_promotion_does_not() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let endpoints = |a_priority: u32, b_priority: u32| {
        vec![
            endpoint_yaml(
                "a",
                &a.url(),
                &format!("group: main\npriority: {a_priority}"),
            ),
            endpoint_yaml("b", &b.url(), &format!("priority: {b_priority}")),
        ]
    };
    let settings = format!("{FAST_RETRY}health:\n  check_interval: 1h\n");
    let forwarder = Forwarder::start(config(&settings, &endpoints(1, 2))).await;
    let mocks = [&a, &b];
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        0,
        "a is preferred"
    );
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        0,
        "and holds the session"
    );

    // The operator demotes a (API, TUI): the bound conversation moves with the traffic.
    forwarder
        .engine
        .set_endpoint_priority("a", 5)
        .expect("known endpoint");
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        1,
        "demotion moves the session"
    );
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        1,
        "and it stays there"
    );

    // Promoting a again is not a demotion of b: the conversation keeps its cache on b, new
    // sessions follow the new order.
    forwarder
        .engine
        .set_endpoint_priority("a", 1)
        .expect("known endpoint");
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        1,
        "a promotion does not move it"
    );
    assert_eq!(
        send_turn(&forwarder, "s2", &mocks).await,
        0,
        "new sessions follow"
    );

    // A demotion in the file (hot reload) moves it too.
    forwarder
        .engine
        .reload(Arc::new(config(&settings, &endpoints(1, 9))))
        .expect("reload applies");
    assert_eq!(
        send_turn(&forwarder, "s1", &mocks).await,
        0,
        "the file's demotion moves it"
    );
    assert_eq!(send_turn(&forwarder, "s2", &mocks).await, 0);
}
