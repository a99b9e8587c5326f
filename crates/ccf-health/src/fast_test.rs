//! The fast test: a parallel reachability probe run before routing with the `fastest` strategy.

use std::time::Duration;

use ccf_config::Endpoint;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::monitor::{lock, FastEntry, HealthMonitor};

impl HealthMonitor {
    /// Probes `endpoints` in parallel on `fast_test.path` with `fast_test.timeout` and returns the
    /// reachable ones (2xx or 4xx) with their latency, fastest first; unreachable endpoints are
    /// left out, so an empty result means "no fast-test information" to the router.
    ///
    /// Results are cached for `fast_test.cache_ttl`. The cache is used only when every requested
    /// endpoint has a fresh result (failures are cached too); otherwise every requested endpoint
    /// is probed again, so all latencies compared come from the same moment. Unknown names and
    /// repeats are ignored; ties keep the requested order. The fast test never changes endpoint
    /// health. Returns an empty list when the fast test is disabled.
    ///
    /// Cancel-safe: dropping the future aborts its probes (nothing is cached then). Concurrent
    /// calls that both miss the cache each probe; the later result wins the cache.
    pub async fn fast_test(&self, endpoints: &[String]) -> Vec<(String, Duration)> {
        let shared = &self.shared;
        let topology = shared.topology();
        let Some(settings) = topology.settings.fast_test.clone() else {
            return Vec::new();
        };
        let mut tested: Vec<Endpoint> = Vec::with_capacity(endpoints.len());
        for name in endpoints {
            if let Some(endpoint) = topology.endpoint(name) {
                if !tested.iter().any(|seen| seen.name == endpoint.name) {
                    tested.push(endpoint.clone());
                }
            }
        }
        if tested.is_empty() {
            return Vec::new();
        }

        let cached: Option<Vec<Option<Duration>>> = {
            let cache = lock(&shared.fast_cache);
            let now = Instant::now();
            tested
                .iter()
                .map(|endpoint| {
                    cache
                        .get(&endpoint.name)
                        .filter(|entry| now.duration_since(entry.tested_at) < settings.cache_ttl)
                        .map(|entry| entry.latency)
                })
                .collect()
        };

        let latencies = match cached {
            Some(latencies) => latencies,
            None => {
                let tested_at = Instant::now();
                let mut probes = JoinSet::new();
                for (position, endpoint) in tested.iter().enumerate() {
                    let topology = topology.clone();
                    let endpoint = endpoint.clone();
                    let path = settings.path.clone();
                    let timeout = settings.timeout;
                    probes.spawn(async move {
                        let outcome = topology.run_probe(&endpoint, &path, timeout).await;
                        (position, outcome)
                    });
                }
                let mut latencies = vec![None; tested.len()];
                while let Some(joined) = probes.join_next().await {
                    // A panicked probe counts as failed.
                    if let Ok((position, outcome)) = joined {
                        if let Some(slot) = latencies.get_mut(position) {
                            *slot = outcome.is_reachable().then(|| outcome.latency());
                        }
                    }
                }
                let mut cache = lock(&shared.fast_cache);
                for (endpoint, &latency) in tested.iter().zip(&latencies) {
                    cache.insert(endpoint.name.clone(), FastEntry { tested_at, latency });
                }
                latencies
            }
        };

        let mut reachable: Vec<(String, Duration)> = tested
            .iter()
            .zip(latencies)
            .filter_map(|(endpoint, latency)| Some((endpoint.name.clone(), latency?)))
            .collect();
        // Stable: equal latencies keep the requested order.
        reachable.sort_by_key(|(_, latency)| *latency);
        reachable
    }
}
