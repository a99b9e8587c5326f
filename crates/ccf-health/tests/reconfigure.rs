//! Hot reload of the health monitor ([`HealthMonitor::reconfigure`]) against a scripted prober, on
//! Tokio's paused clock (helpers as in `monitor.rs`).
//!
//! With `start_paused = true` the runtime advances virtual time only when every task is idle, so
//! `tokio::time::sleep` in a test is a deterministic "let everything due before then happen", not
//! a real wait.

// The scripted prober is the one of `monitor.rs`; not every helper is used here.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccf_config::{Config, Endpoint};
use ccf_health::{
    FastTestSettings, HealthEvent, HealthMonitor, HealthSettings, PassiveFailure, ProbeOutcome,
    Prober,
};
use tokio::sync::broadcast;
use tokio::time::{sleep, Instant};

/// One probe the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    endpoint: String,
    path: String,
    at: Instant,
}

/// A prober scripted per endpoint: queued outcomes first, then the endpoint's fallback, then 200.
/// Endpoints listed in `hang` never answer.
#[derive(Default)]
struct ScriptedProber {
    scripts: Mutex<HashMap<String, VecDeque<ProbeOutcome>>>,
    fallback: Mutex<HashMap<String, ProbeOutcome>>,
    hang: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
}

impl ScriptedProber {
    fn script(&self, endpoint: &str, outcomes: impl IntoIterator<Item = ProbeOutcome>) {
        self.scripts
            .lock()
            .expect("scripted prober lock")
            .entry(endpoint.to_string())
            .or_default()
            .extend(outcomes);
    }

    fn fallback(&self, endpoint: &str, outcome: ProbeOutcome) {
        self.fallback
            .lock()
            .expect("scripted prober lock")
            .insert(endpoint.to_string(), outcome);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("scripted prober lock").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("scripted prober lock").len()
    }

    fn count_for(&self, endpoint: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.endpoint == endpoint)
            .count()
    }

    /// Milliseconds since `start` of every probe of `endpoint`.
    fn times_ms(&self, endpoint: &str, start: Instant) -> Vec<u128> {
        self.seen()
            .iter()
            .filter(|seen| seen.endpoint == endpoint)
            .map(|seen| seen.at.duration_since(start).as_millis())
            .collect()
    }
}

impl Prober for ScriptedProber {
    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        path: &'a str,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
        self.seen.lock().expect("scripted prober lock").push(Seen {
            endpoint: endpoint.name.clone(),
            path: path.to_string(),
            at: Instant::now(),
        });
        if self
            .hang
            .lock()
            .expect("scripted prober lock")
            .contains(&endpoint.name)
        {
            return Box::pin(std::future::pending());
        }
        let scripted = self
            .scripts
            .lock()
            .expect("scripted prober lock")
            .get_mut(&endpoint.name)
            .and_then(VecDeque::pop_front);
        let outcome = scripted
            .or_else(|| {
                self.fallback
                    .lock()
                    .expect("scripted prober lock")
                    .get(&endpoint.name)
                    .cloned()
            })
            .unwrap_or_else(|| status(200, 10));
        Box::pin(async move { outcome })
    }
}

fn status(status: u16, latency_ms: u64) -> ProbeOutcome {
    ProbeOutcome::Status {
        status,
        latency: Duration::from_millis(latency_ms),
    }
}

fn refused() -> ProbeOutcome {
    ProbeOutcome::Failed {
        error: "connection refused".into(),
        latency: Duration::from_millis(1),
    }
}

fn endpoints(names: &[&str]) -> Vec<Endpoint> {
    let mut yaml = String::from("endpoints:\n");
    for name in names {
        yaml.push_str(&format!(
            "  - name: {name}\n    url: https://{name}.example\n    token: t\n"
        ));
    }
    Config::from_yaml_str(&yaml)
        .expect("valid endpoints yaml")
        .endpoints
}

fn settings() -> HealthSettings {
    HealthSettings {
        check_interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        health_path: "/health".into(),
        fast_test: Some(FastTestSettings {
            cache_ttl: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            path: "/fast".into(),
        }),
        passive_failure_threshold: 3,
        recovery_initial_backoff: Duration::from_millis(500),
    }
}

fn setup(names: &[&str]) -> (HealthMonitor, Arc<ScriptedProber>) {
    setup_with(names, settings())
}

fn setup_with(names: &[&str], settings: HealthSettings) -> (HealthMonitor, Arc<ScriptedProber>) {
    let prober = Arc::new(ScriptedProber::default());
    let monitor = HealthMonitor::new(&endpoints(names), settings, prober.clone());
    (monitor, prober)
}

fn drain(events: &mut broadcast::Receiver<HealthEvent>) -> Vec<HealthEvent> {
    let mut drained = Vec::new();
    while let Ok(event) = events.try_recv() {
        drained.push(event);
    }
    drained
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

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
