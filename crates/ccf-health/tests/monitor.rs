//! Behaviour of the health monitor against a scripted prober, on Tokio's paused clock.
//!
//! With `start_paused = true` the runtime advances virtual time only when every task is idle, so
//! `tokio::time::sleep` in a test is a deterministic "let everything due before then happen", not
//! a real wait.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ccf_health::{HealthEvent, HealthMonitor, HealthSettings, PassiveFailure};
use tokio::time::{sleep, Instant};

use support::*;

#[tokio::test]
async fn endpoints_start_healthy_and_never_checked_and_unknown_names_are_unhealthy() {
    let (monitor, prober) = setup(&["a", "b"]);
    assert!(monitor.is_healthy("a"));
    assert!(!monitor.is_healthy("nope"));
    let snapshot = monitor.snapshot();
    assert_eq!(snapshot.healthy_count(), 2);
    assert!(snapshot.get("a").unwrap().never_checked);

    monitor.record_failure("nope", PassiveFailure::Connect);
    monitor.mark_auth_failed("nope");
    monitor.record_success("nope", ms(1));
    assert_eq!(monitor.check_now("nope").await, None);
    assert_eq!(prober.count(), 0);
}

#[tokio::test]
async fn failing_probe_marks_unhealthy_at_once_and_passing_probe_restores_with_events() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [status(503, 40), status(503, 41), status(200, 42)]);
    let mut events = monitor.events();

    let health = monitor.check_now("a").await.unwrap();
    assert!(!health.healthy);
    assert!(!health.never_checked);
    assert_eq!(health.consecutive_failures, 1);
    assert_eq!(health.last_latency, Some(ms(40)));
    assert_eq!(
        drain(&mut events),
        [
            HealthEvent::ProbeLatency {
                endpoint: "a".into(),
                latency: ms(40)
            },
            HealthEvent::EndpointUnhealthy {
                endpoint: "a".into(),
                reason: "health probe answered status 503".into(),
                consecutive_failures: 1,
            },
        ]
    );

    // Still unhealthy: no transition, only the latency.
    monitor.check_now("a").await.unwrap();
    assert_eq!(
        drain(&mut events),
        [HealthEvent::ProbeLatency {
            endpoint: "a".into(),
            latency: ms(41)
        }]
    );

    let health = monitor.check_now("a").await.unwrap();
    assert!(health.healthy);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.last_error, None);
    assert_eq!(
        drain(&mut events),
        [
            HealthEvent::ProbeLatency {
                endpoint: "a".into(),
                latency: ms(42)
            },
            HealthEvent::EndpointHealthy {
                endpoint: "a".into(),
                latency: Some(ms(42))
            },
        ]
    );
    assert_eq!(prober.seen()[0].path, "/health");
}

#[tokio::test]
async fn probe_without_an_answer_emits_no_latency_event() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [refused()]);
    let mut events = monitor.events();
    let health = monitor.check_now("a").await.unwrap();
    assert_eq!(health.last_error.as_deref(), Some("connection refused"));
    assert_eq!(health.last_latency, None);
    assert_eq!(
        drain(&mut events),
        [HealthEvent::EndpointUnhealthy {
            endpoint: "a".into(),
            reason: "connection refused".into(),
            consecutive_failures: 1,
        }]
    );
}

#[tokio::test]
async fn only_2xx_probes_are_healthy() {
    async fn check(code: u16, healthy: bool) {
        let (monitor, prober) = setup(&["a"]);
        prober.script("a", [status(code, 5)]);
        let health = monitor.check_now("a").await.unwrap();
        assert_eq!(health.healthy, healthy, "status {code}");
        assert_eq!(monitor.is_healthy("a"), healthy, "status {code}");
    }
    check(200, true).await;
    check(204, true).await;
    check(301, false).await;
    check(400, false).await;
    check(401, false).await;
    check(404, false).await;
    check(429, false).await;
    check(500, false).await;
    check(502, false).await;
}

#[tokio::test(start_paused = true)]
async fn prober_ignoring_the_timeout_is_cut_off_by_the_monitor() {
    let (monitor, prober) = setup(&["a"]);
    prober.hang.lock().unwrap().push("a".into());
    let started = Instant::now();
    let health = monitor.check_now("a").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(!health.healthy);
    assert_eq!(
        health.last_error.as_deref(),
        Some("no answer within 5000 ms")
    );
}

#[tokio::test]
async fn passive_failures_mark_unhealthy_at_the_threshold() {
    let (monitor, _prober) = setup(&["a"]);
    let mut events = monitor.events();
    monitor.record_failure("a", PassiveFailure::Connect);
    monitor.record_failure("a", PassiveFailure::Timeout);
    assert!(monitor.is_healthy("a"));
    assert_eq!(monitor.snapshot().get("a").unwrap().consecutive_failures, 2);
    assert!(drain(&mut events).is_empty());

    monitor.record_failure("a", PassiveFailure::ServerError(502));
    assert!(!monitor.is_healthy("a"));
    assert_eq!(
        drain(&mut events),
        [HealthEvent::EndpointUnhealthy {
            endpoint: "a".into(),
            reason: "request answered status 502".into(),
            consecutive_failures: 3,
        }]
    );

    monitor.record_success("a", ms(900));
    assert!(monitor.is_healthy("a"));
    assert_eq!(monitor.snapshot().get("a").unwrap().consecutive_failures, 0);
    assert_eq!(
        drain(&mut events),
        [HealthEvent::EndpointHealthy {
            endpoint: "a".into(),
            latency: Some(ms(900))
        }]
    );
}

#[tokio::test]
async fn passive_success_resets_the_failure_count() {
    let (monitor, _prober) = setup(&["a"]);
    monitor.record_failure("a", PassiveFailure::Connect);
    monitor.record_failure("a", PassiveFailure::Connect);
    monitor.record_success("a", ms(5));
    monitor.record_failure("a", PassiveFailure::Connect);
    monitor.record_failure("a", PassiveFailure::Connect);
    assert!(monitor.is_healthy("a"));
}

#[tokio::test]
async fn auth_failure_is_cleared_only_by_a_passing_probe() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [status(401, 5), status(200, 5)]);
    monitor.mark_auth_failed("a");
    assert!(!monitor.is_healthy("a"));
    assert!(monitor.snapshot().get("a").unwrap().auth_failed);

    monitor.record_success("a", ms(5));
    assert!(!monitor.is_healthy("a"));

    // A probe that is still rejected keeps it down.
    assert!(!monitor.check_now("a").await.unwrap().healthy);
    let health = monitor.check_now("a").await.unwrap();
    assert!(health.healthy);
    assert!(!health.auth_failed);
}

#[tokio::test]
async fn watch_receiver_sees_every_state_change() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [status(200, 7)]);
    let mut snapshots = monitor.subscribe();
    assert!(!snapshots.has_changed().unwrap());

    monitor.record_failure("a", PassiveFailure::Connect);
    assert!(snapshots.has_changed().unwrap());
    assert_eq!(
        snapshots
            .borrow_and_update()
            .get("a")
            .unwrap()
            .consecutive_failures,
        1
    );

    // Nothing changed: no new snapshot.
    monitor.record_success("a", ms(1));
    snapshots.borrow_and_update();
    monitor.record_success("a", ms(1));
    assert!(!snapshots.has_changed().unwrap());

    monitor.check_now("a").await;
    assert!(snapshots.has_changed().unwrap());
    let snapshot = snapshots.borrow_and_update().clone();
    assert_eq!(snapshot.get("a").unwrap().last_latency, Some(ms(7)));
    assert!(snapshot.get("a").unwrap().last_check.is_some());
    assert_eq!(snapshot, monitor.snapshot());
}

#[tokio::test(start_paused = true)]
async fn periodic_loop_probes_every_endpoint_at_start_and_each_interval() {
    let (monitor, prober) = setup_with(
        &["a", "b", "c"],
        HealthSettings {
            check_interval: Duration::from_secs(10),
            ..settings()
        },
    );
    let start = Instant::now();
    let task = monitor.spawn();
    sleep(Duration::from_secs(25)).await;
    for name in ["a", "b", "c"] {
        assert_eq!(prober.times_ms(name, start), [0, 10_000, 20_000], "{name}");
    }
    assert!(prober.seen().iter().all(|seen| seen.path == "/health"));
    assert!(monitor
        .snapshot()
        .endpoints
        .values()
        .all(|health| !health.never_checked));
    task.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watch_receiver_sees_the_first_round() {
    let (monitor, _prober) = setup(&["a"]);
    let mut snapshots = monitor.subscribe();
    let _task = monitor.spawn();
    snapshots.changed().await.unwrap();
    assert!(!snapshots.borrow().get("a").unwrap().never_checked);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_endpoint_is_reprobed_with_doubling_backoff_until_a_probe_passes() {
    let (monitor, prober) = setup(&["a", "b"]);
    prober.script(
        "a",
        [status(503, 5), status(503, 5), refused(), status(200, 5)],
    );
    let mut events = monitor.events();
    let start = Instant::now();
    let _task = monitor.spawn();

    sleep(ms(3_400)).await;
    assert!(!monitor.is_healthy("a"));
    sleep(ms(200)).await;
    assert!(monitor.is_healthy("a"));

    // Back to the normal interval once healthy.
    sleep(Duration::from_secs(30)).await;
    assert_eq!(prober.times_ms("a", start), [0, 500, 1_500, 3_500, 30_000]);
    assert_eq!(prober.times_ms("b", start), [0, 30_000]);
    let transitions: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|event| !matches!(event, HealthEvent::ProbeLatency { .. }))
        .collect();
    assert_eq!(
        transitions,
        [
            HealthEvent::EndpointUnhealthy {
                endpoint: "a".into(),
                reason: "health probe answered status 503".into(),
                consecutive_failures: 1,
            },
            HealthEvent::EndpointHealthy {
                endpoint: "a".into(),
                latency: Some(ms(5))
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn recovery_backoff_is_capped_at_the_check_interval() {
    let (monitor, prober) = setup_with(
        &["a"],
        HealthSettings {
            check_interval: Duration::from_secs(2),
            ..settings()
        },
    );
    prober.fallback("a", status(503, 5));
    let start = Instant::now();
    let _task = monitor.spawn();
    sleep(ms(8_100)).await;
    // Periodic rounds at 0, 2, 4, 6, 8 s; recovery after 0.5, 1, then 2, 2, 2 s.
    assert_eq!(
        prober.times_ms("a", start),
        [0, 500, 1_500, 2_000, 3_500, 4_000, 5_500, 6_000, 7_500, 8_000]
    );
}

#[tokio::test(start_paused = true)]
async fn endpoint_failing_passively_is_healthy_again_within_a_second_of_recovering() {
    let (monitor, prober) = setup(&["a"]);
    // Initial round passes; the first recovery probe is still rejected, the second passes.
    prober.script("a", [status(200, 5), status(401, 5), status(200, 5)]);
    let start = Instant::now();
    let _task = monitor.spawn();
    sleep(Duration::from_secs(1)).await;

    monitor.mark_auth_failed("a");
    sleep(ms(1_400)).await;
    assert!(!monitor.is_healthy("a"));
    sleep(ms(200)).await;
    assert!(monitor.is_healthy("a"));
    assert_eq!(prober.times_ms("a", start), [0, 1_500, 2_500]);
}

#[tokio::test(start_paused = true)]
async fn only_one_recovery_loop_runs_per_endpoint() {
    let (monitor, prober) = setup(&["a"]);
    prober.fallback("a", status(503, 5));
    let start = Instant::now();
    let _task = monitor.spawn();
    sleep(ms(100)).await;

    // Flap healthy -> unhealthy while the first loop sleeps, and pile on more failures.
    monitor.record_success("a", ms(5));
    for _ in 0..3 {
        monitor.record_failure("a", PassiveFailure::Connect);
    }
    monitor.mark_auth_failed("a");
    monitor.mark_auth_failed("a");

    sleep(ms(3_500)).await;
    assert_eq!(prober.times_ms("a", start), [0, 500, 1_500, 3_500]);
}

#[tokio::test(start_paused = true)]
async fn recovery_loop_ends_on_passive_healing_and_restarts_on_the_next_failure() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [status(503, 5)]);
    prober.fallback("a", status(503, 5));
    let start = Instant::now();
    let _task = monitor.spawn();
    sleep(ms(100)).await;
    monitor.record_success("a", ms(5));

    // The loop wakes at 0.5 s, sees a healthy endpoint and ends without probing.
    sleep(ms(900)).await;
    assert_eq!(prober.times_ms("a", start), [0]);

    for _ in 0..3 {
        monitor.record_failure("a", PassiveFailure::Timeout);
    }
    sleep(ms(600)).await;
    assert_eq!(prober.times_ms("a", start), [0, 1_500]);
}

#[tokio::test(start_paused = true)]
async fn endpoint_unhealthy_before_spawn_gets_a_recovery_loop() {
    let (monitor, prober) = setup(&["a"]);
    prober.script("a", [status(503, 5), status(200, 5)]);
    for _ in 0..3 {
        monitor.record_failure("a", PassiveFailure::Connect);
    }
    let start = Instant::now();
    let _task = monitor.spawn();
    sleep(Duration::from_secs(1)).await;
    assert!(monitor.is_healthy("a"));
    assert_eq!(prober.times_ms("a", start), [0, 500]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_task_stops_all_probing() {
    let (monitor, prober) = setup(&["a", "b"]);
    prober.fallback("a", status(503, 5));
    let task = monitor.spawn();
    sleep(ms(600)).await;
    assert_eq!(prober.count(), 3);

    drop(task);
    sleep(Duration::from_secs(120)).await;
    assert_eq!(prober.count(), 3);

    // The monitor keeps working passively.
    monitor.record_failure("b", PassiveFailure::ServerError(500));
    assert_eq!(monitor.snapshot().get("b").unwrap().consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn stopping_the_task_waits_and_stops_all_probing() {
    let (monitor, prober) = setup(&["a"]);
    prober.fallback("a", status(503, 5));
    let task = monitor.spawn();
    sleep(ms(600)).await;
    task.stop().await;
    let count = prober.count();
    sleep(Duration::from_secs(120)).await;
    assert_eq!(prober.count(), count);
}

#[tokio::test(start_paused = true)]
async fn spawning_again_replaces_the_previous_task() {
    let (monitor, prober) = setup_with(
        &["a"],
        HealthSettings {
            check_interval: Duration::from_secs(10),
            ..settings()
        },
    );
    let start = Instant::now();
    let _first = monitor.spawn();
    let _second = monitor.spawn();
    sleep(Duration::from_secs(25)).await;
    assert_eq!(prober.times_ms("a", start), [0, 10_000, 20_000]);
}

#[tokio::test]
async fn check_now_probes_once_and_publishes() {
    let (monitor, prober) = setup(&["a", "b"]);
    prober.script("a", [status(503, 12)]);
    let health = monitor.check_now("a").await.unwrap();
    assert!(!health.healthy);
    assert_eq!(
        health.last_error.as_deref(),
        Some("health probe answered status 503")
    );
    assert_eq!(prober.count_for("a"), 1);
    assert_eq!(prober.count_for("b"), 0);
    assert_eq!(monitor.snapshot().get("a"), Some(&health));
}

#[tokio::test]
async fn fast_test_sorts_reachable_endpoints_by_latency_and_accepts_4xx() {
    let (monitor, prober) = setup(&["a", "b", "c", "d", "e"]);
    prober.script("a", [status(200, 30)]);
    prober.script("b", [status(404, 10)]);
    prober.script("c", [status(500, 1)]);
    prober.script("d", [refused()]);
    prober.script("e", [status(401, 30)]);
    let names: Vec<String> = ["a", "b", "c", "d", "e", "unknown", "a"]
        .map(String::from)
        .to_vec();

    let ranked = monitor.fast_test(&names).await;
    assert_eq!(
        ranked,
        [
            ("b".to_string(), ms(10)),
            ("a".to_string(), ms(30)),
            ("e".to_string(), ms(30)),
        ]
    );
    assert_eq!(prober.count(), 5);
    assert!(prober.seen().iter().all(|seen| seen.path == "/fast"));

    // The fast test never touches health.
    let snapshot = monitor.snapshot();
    assert!(snapshot.is_healthy("c"));
    assert!(snapshot.get("c").unwrap().never_checked);
}

#[tokio::test(start_paused = true)]
async fn fast_test_cache_is_used_only_when_every_endpoint_is_fresh() {
    let (monitor, prober) = setup(&["a", "b", "c"]);
    prober.fallback("b", refused());
    let ab: Vec<String> = vec!["a".into(), "b".into()];
    let abc: Vec<String> = vec!["a".into(), "b".into(), "c".into()];

    assert_eq!(monitor.fast_test(&ab).await, [("a".to_string(), ms(10))]);
    assert_eq!(prober.count(), 2);

    // Fresh for both (the failure of b is cached too): no probe.
    sleep(ms(2_900)).await;
    assert_eq!(monitor.fast_test(&ab).await, [("a".to_string(), ms(10))]);
    assert_eq!(prober.count(), 2);

    // c has no entry: all three are probed again.
    assert_eq!(monitor.fast_test(&abc).await.len(), 2);
    assert_eq!(prober.count(), 5);

    // Expired: probed again.
    sleep(Duration::from_secs(3)).await;
    monitor.fast_test(&ab).await;
    assert_eq!(prober.count(), 7);
}

#[tokio::test(start_paused = true)]
async fn fast_test_bounds_each_probe_by_its_own_timeout() {
    let (monitor, prober) = setup(&["a", "b"]);
    prober.hang.lock().unwrap().push("a".into());
    let started = Instant::now();
    let ranked = monitor.fast_test(&["a".into(), "b".into()]).await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(ranked, [("b".to_string(), ms(10))]);
}

#[tokio::test]
async fn fast_test_disabled_returns_nothing_and_probes_nothing() {
    let (monitor, prober) = setup_with(
        &["a"],
        HealthSettings {
            fast_test: None,
            ..settings()
        },
    );
    assert!(monitor.fast_test(&["a".into()]).await.is_empty());
    assert_eq!(prober.count(), 0);
}

#[test]
fn events_and_snapshots_serialise_with_milliseconds() {
    let event = HealthEvent::ProbeLatency {
        endpoint: "a".into(),
        latency: ms(1_250),
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        serde_json::json!({"type": "probe_latency", "endpoint": "a", "latency_ms": 1250})
    );
    let healthy = HealthEvent::EndpointHealthy {
        endpoint: "a".into(),
        latency: None,
    };
    assert_eq!(
        serde_json::to_value(&healthy).unwrap(),
        serde_json::json!({"type": "endpoint_healthy", "endpoint": "a", "latency_ms": null})
    );

    let prober = Arc::new(ScriptedProber::default());
    let monitor = HealthMonitor::new(&endpoints(&["a"]), settings(), prober);
    assert_eq!(
        serde_json::to_value(&*monitor.snapshot()).unwrap(),
        serde_json::json!({"endpoints": {"a": {
            "healthy": true,
            "never_checked": true,
            "last_check_unix_ms": null,
            "last_latency_ms": null,
            "consecutive_failures": 0,
            "last_error": null,
            "auth_failed": false,
        }}})
    );
}
