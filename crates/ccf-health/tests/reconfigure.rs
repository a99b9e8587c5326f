//! Hot reload of the health monitor ([`HealthMonitor::reconfigure`]) against a scripted prober, on
//! Tokio's paused clock (helpers in `support/mod.rs`).
//!
//! With `start_paused = true` the runtime advances virtual time only when every task is idle, so
//! `tokio::time::sleep` in a test is a deterministic "let everything due before then happen", not
//! a real wait.

mod support;

use std::time::Duration;

use ccf_config::{Config, Endpoint};
use ccf_health::{HealthSettings, PassiveFailure};
use tokio::time::{sleep, Instant};

use support::*;

fn endpoints_with_url(specs: &[(&str, &str)]) -> Vec<Endpoint> {
    let mut yaml = String::from("endpoints:\n");
    for (name, url) in specs {
        yaml.push_str(&format!("  - name: {name}\n    url: {url}\n    token: t\n"));
    }
    Config::from_yaml_str(&yaml)
        .expect("valid endpoints yaml")
        .endpoints
}

#[tokio::test]
async fn unchanged_endpoints_keep_their_health_and_changed_or_new_ones_start_over() {
    let (monitor, prober) = setup(&["a", "b", "c"]);
    monitor.record_failure("a", PassiveFailure::Connect);
    monitor.mark_auth_failed("b");
    monitor.mark_auth_failed("c");
    assert!(!monitor.is_healthy("b"));
    let before_a = monitor.snapshot().get("a").cloned().expect("a");
    assert_eq!(before_a.consecutive_failures, 1);

    // a and b unchanged, c moves to another URL, d is new, nothing else is kept.
    let _ = drain(&mut monitor.events());
    monitor.reconfigure(
        &endpoints_with_url(&[
            ("a", "https://a.example"),
            ("b", "https://b.example"),
            ("c", "https://c-new.example"),
            ("d", "https://d.example"),
        ]),
        settings(),
        prober.clone(),
    );
    let snapshot = monitor.snapshot();
    assert_eq!(
        snapshot.get("a"),
        Some(&before_a),
        "a kept its failure count"
    );
    assert!(!monitor.is_healthy("b"), "b kept its auth failure");
    let c = snapshot.get("c").expect("c");
    assert!(
        c.healthy && c.never_checked,
        "c has new details: starts over"
    );
    let d = snapshot.get("d").expect("d");
    assert!(d.healthy && d.never_checked, "d is new");
    assert_eq!(snapshot.endpoints.len(), 4);

    // Observations now apply to the new topology; removed names are ignored.
    monitor.reconfigure(
        &endpoints_with_url(&[("d", "https://d.example")]),
        settings(),
        prober.clone(),
    );
    assert!(monitor.snapshot().get("a").is_none(), "a is forgotten");
    monitor.record_failure("a", PassiveFailure::Connect);
    assert!(monitor.snapshot().get("a").is_none());
    assert!(monitor.check_now("a").await.is_none());
    assert!(monitor.check_now("d").await.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_running_supervisor_probes_the_new_endpoints_with_the_new_interval() {
    let (monitor, prober) = setup_with(
        &["a"],
        HealthSettings {
            check_interval: Duration::from_secs(10),
            ..settings()
        },
    );
    let start = Instant::now();
    let task = monitor.spawn();
    sleep(ms(1_000)).await;
    assert_eq!(prober.times_ms("a", start), [0]);

    monitor.reconfigure(
        &endpoints(&["a", "b"]),
        HealthSettings {
            check_interval: Duration::from_secs(4),
            ..settings()
        },
        prober.clone(),
    );
    sleep(ms(9_500)).await;
    // A fresh round at the reload (1 s), then every 4 s.
    assert_eq!(prober.times_ms("b", start), [1_000, 5_000, 9_000]);
    assert_eq!(prober.times_ms("a", start), [0, 1_000, 5_000, 9_000]);
    task.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_endpoint_kept_across_a_reload_keeps_recovering() {
    let (monitor, prober) = setup(&["a", "b"]);
    prober.fallback("a", refused());
    let task = monitor.spawn();
    sleep(ms(100)).await;
    assert!(!monitor.is_healthy("a"));
    monitor.reconfigure(&endpoints(&["a", "b"]), settings(), prober.clone());
    assert!(!monitor.is_healthy("a"), "still unhealthy after the reload");
    prober.fallback("a", status(200, 5));
    sleep(ms(1_200)).await;
    assert!(monitor.is_healthy("a"), "recovery probing went on");
    task.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_of_a_reconfigured_endpoint_finishing_late_changes_nothing() {
    let (monitor, prober) = setup(&["a"]);
    prober.hang.lock().expect("lock").push("a".into());
    let checking = {
        let monitor = monitor.clone();
        tokio::spawn(async move { monitor.check_now("a").await })
    };
    sleep(ms(10)).await;
    monitor.reconfigure(
        &endpoints_with_url(&[("a", "https://a-moved.example")]),
        settings(),
        prober.clone(),
    );
    let health = checking.await.expect("check task");
    // The probe timed out against the old URL: it is discarded, a stays unchecked.
    assert!(health.is_some());
    let a = monitor.snapshot().get("a").cloned().expect("a");
    assert!(a.healthy && a.never_checked, "{a:?}");
}
