//! Test scaffolding shared by `monitor.rs` and `reconfigure.rs`: a prober scripted per endpoint
//! that records every probe, endpoint lists built from YAML, fast settings and small helpers.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccf_config::{Config, Endpoint};
use ccf_health::{
    FastTestSettings, HealthEvent, HealthMonitor, HealthSettings, ProbeOutcome, Prober,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// One probe the fake saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub endpoint: String,
    pub path: String,
    pub at: Instant,
}

/// A prober scripted per endpoint: queued outcomes first, then the endpoint's fallback, then 200.
/// Endpoints listed in `hang` never answer.
#[derive(Default)]
pub struct ScriptedProber {
    pub scripts: Mutex<HashMap<String, VecDeque<ProbeOutcome>>>,
    pub fallback: Mutex<HashMap<String, ProbeOutcome>>,
    pub hang: Mutex<Vec<String>>,
    pub seen: Mutex<Vec<Seen>>,
}

impl ScriptedProber {
    pub fn script(&self, endpoint: &str, outcomes: impl IntoIterator<Item = ProbeOutcome>) {
        self.scripts
            .lock()
            .expect("scripted prober lock")
            .entry(endpoint.to_string())
            .or_default()
            .extend(outcomes);
    }

    pub fn fallback(&self, endpoint: &str, outcome: ProbeOutcome) {
        self.fallback
            .lock()
            .expect("scripted prober lock")
            .insert(endpoint.to_string(), outcome);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("scripted prober lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("scripted prober lock").len()
    }

    pub fn count_for(&self, endpoint: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.endpoint == endpoint)
            .count()
    }

    /// Milliseconds since `start` of every probe of `endpoint`.
    pub fn times_ms(&self, endpoint: &str, start: Instant) -> Vec<u128> {
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

pub fn status(status: u16, latency_ms: u64) -> ProbeOutcome {
    ProbeOutcome::Status {
        status,
        latency: Duration::from_millis(latency_ms),
    }
}

pub fn refused() -> ProbeOutcome {
    ProbeOutcome::Failed {
        error: "connection refused".into(),
        latency: Duration::from_millis(1),
    }
}

pub fn endpoints(names: &[&str]) -> Vec<Endpoint> {
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

pub fn settings() -> HealthSettings {
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

pub fn setup(names: &[&str]) -> (HealthMonitor, Arc<ScriptedProber>) {
    setup_with(names, settings())
}

pub fn setup_with(
    names: &[&str],
    settings: HealthSettings,
) -> (HealthMonitor, Arc<ScriptedProber>) {
    let prober = Arc::new(ScriptedProber::default());
    let monitor = HealthMonitor::new(&endpoints(names), settings, prober.clone());
    (monitor, prober)
}

pub fn drain(events: &mut broadcast::Receiver<HealthEvent>) -> Vec<HealthEvent> {
    let mut drained = Vec::new();
    while let Ok(event) = events.try_recv() {
        drained.push(event);
    }
    drained
}

pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}
