//! A brown-out end to end: two groups of the test kit's realistic upstream behind the real app
//! (the first with two endpoints, two keys on one upstream), a 529 storm on the first while its
//! health probes (`GET /v1/models`) keep passing, and 50 concurrent clients for the storm's
//! whole length (issue #17).
//!
//! What it measures, from the upstreams' records (every client request carries a tag in its
//! message text, so each upstream attempt is tied to the client request that caused it) and from
//! the forwarder's router view (the primary group's cooldown windows, as `Forwarder::groups` and
//! the event bus report them):
//! - upstream attempts per client request sent during the storm (goal: at most 1.5);
//! - time to fail over (storm start to the first message request on the second group);
//! - message requests that reached the storming group inside one of its cooldown windows (must
//!   be 0; requests still in their first pass over the group when the cooldown began are not
//!   returns);
//! - recovery (storm end to the first message request the first group answers 200, which must
//!   happen) and client answers with a 5xx status while the second group was healthy (must be 0:
//!   it is healthy throughout).
//!
//! The numbers are printed (`-- --nocapture`); the full-length run is `cargo xtask brownout`
//! (docs/benchmarks.md, "Brown-out").

use crate::support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_proxy::ForwarderEvent;
use ccf_router::RouterEvent;
use ccf_testkit::{RealisticConfig, RealisticRecord, RealisticUpstream, Storm};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;
use support::{config, endpoint_yaml, Forwarder, WAIT};

/// Concurrent clients, as in the scenario.
const CLIENTS: usize = 50;
/// The storm's length: short for a test; `cargo xtask brownout` runs minutes.
const STORM: Duration = Duration::from_secs(5);
/// The primary group's cooldown: shorter than the storm, so the group is tried again once
/// mid-storm (and must fail over again) and comes back after it.
const COOLDOWN: &str = "3s";
/// The storming group's name in the config.
const PRIMARY: &str = "primary";
/// The goal for upstream attempts per client request during the storm.
const ATTEMPTS_GOAL: f64 = 1.5;

/// One client request and how it ended.
#[derive(Clone, Debug)]
struct ClientRequest {
    tag: String,
    started: Instant,
    status: Option<u16>,
    /// A 200 stream that carried an `event: error`.
    error_event: bool,
}

/// One cooldown of the primary group: first seen (by the event bus or the router view) and the
/// end the router reported.
#[derive(Clone, Copy, Debug)]
struct CooldownWindow {
    began: Instant,
    until: Instant,
}

/// Tracks the primary group's cooldown windows from both the event bus and `groups()` polling,
/// merged by their end instant.
#[derive(Default)]
struct CooldownLog {
    windows: Mutex<HashMap<Instant, Instant>>,
}

impl CooldownLog {
    fn saw(&self, until: Instant, at: Instant) {
        let mut windows = self.windows.lock().expect("cooldown log");
        let began = windows.entry(until).or_insert(at);
        if at < *began {
            *began = at;
        }
    }

    fn windows(&self) -> Vec<CooldownWindow> {
        let mut windows: Vec<CooldownWindow> = self
            .windows
            .lock()
            .expect("cooldown log")
            .iter()
            .map(|(until, began)| CooldownWindow {
                began: *began,
                until: *until,
            })
            .collect();
        windows.sort_by_key(|window| window.began);
        windows
    }
}

fn message_body(tag: &str, stream: bool) -> String {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": tag}],
    })
    .to_string()
}

/// One client: requests one after another (every fifth non-streaming) until `stop`.
async fn run_client(
    forwarder: Arc<Forwarder>,
    client: usize,
    stop: Arc<AtomicBool>,
    finished: Arc<AtomicUsize>,
) -> Vec<ClientRequest> {
    let mut done = Vec::new();
    // Bounded: even a forwarder that answered instantly stops here.
    for number in 0..10_000 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let tag = format!("brownout client {client} request {number}");
        let stream = number % 5 != 4;
        let request = Request::post(format!("{}/v1/messages", forwarder.base))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(message_body(&tag, stream))))
            .expect("request");
        let started = Instant::now();
        let answer = tokio::time::timeout(WAIT, async {
            let response = forwarder
                .client
                .request(request)
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| error.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await;
        let (status, error_event) = match answer {
            Ok(Ok((status, body))) => (
                Some(status),
                status == 200 && String::from_utf8_lossy(&body).contains("event: error"),
            ),
            Ok(Err(_)) | Err(_) => (None, false),
        };
        done.push(ClientRequest {
            tag,
            started,
            status,
            error_event,
        });
        finished.fetch_add(1, Ordering::AcqRel);
    }
    done
}

fn message_records_by_tag(records: &[RealisticRecord]) -> HashMap<&str, Vec<&RealisticRecord>> {
    let mut by_tag: HashMap<&str, Vec<&RealisticRecord>> = HashMap::new();
    for record in records.iter().filter(|record| record.message) {
        by_tag.entry(record.tag.as_str()).or_default().push(record);
    }
    by_tag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_529_storm_on_the_first_group_fails_over_once_and_comes_back_after_its_cooldown() {
    let upstream_config = RealisticConfig {
        // 20 output tokens at 10 ms: a 200 ms answer, paced like generation.
        per_token: Duration::from_millis(10),
        output_tokens: 20,
        tokens_per_delta: 4,
        ..RealisticConfig::default()
    };
    // Each upstream checks its key, on probes too, as the real API does.
    let primary = RealisticUpstream::start_with(RealisticConfig {
        required_key: Some("sk-primary".into()),
        ..upstream_config.clone()
    })
    .await
    .expect("primary upstream");
    let backup = RealisticUpstream::start_with(RealisticConfig {
        required_key: Some("sk-backup".into()),
        ..upstream_config
    })
    .await
    .expect("backup upstream");
    let settings = format!(
        "retry:\n  max_attempts: 3\n  base_delay: 50ms\n  max_delay: 500ms\n\
         health:\n  check_interval: 1s\n  timeout: 2s\n\
         group:\n  cooldown: {COOLDOWN}\n"
    );
    let forwarder = Arc::new(
        Forwarder::start(config(
            &settings,
            &[
                endpoint_yaml(
                    "storming",
                    &primary.url(),
                    &format!(
                        "group: {PRIMARY}\ngroup-priority: 1\napi-key: sk-primary\npriority: 1"
                    ),
                ),
                // A second key on the same overloaded upstream: the group has N = 2
                // endpoints, as the "3 × N attempts" has it.
                endpoint_yaml(
                    "storming-2",
                    &primary.url(),
                    "api-key: sk-primary\npriority: 2",
                ),
                endpoint_yaml(
                    "steady",
                    &backup.url(),
                    "group: backup\ngroup-priority: 2\napi-key: sk-backup",
                ),
            ],
        ))
        .await,
    );

    // The router view, watched for the whole run: the bus for exact cooldown starts, polling of
    // `groups()` for anything the bus may drop when it lags behind request events.
    let cooldowns = Arc::new(CooldownLog::default());
    let watching = Arc::new(AtomicBool::new(true));
    let mut events = forwarder.engine.events().subscribe();
    let bus_watch = {
        let cooldowns = Arc::clone(&cooldowns);
        let watching = Arc::clone(&watching);
        tokio::spawn(async move {
            while watching.load(Ordering::Acquire) {
                let received =
                    tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
                match received {
                    Ok(Ok(ForwarderEvent::Router(RouterEvent::GroupCooldown { group, until })))
                        if group == PRIMARY =>
                    {
                        cooldowns.saw(until, Instant::now());
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                    _ => {}
                }
            }
        })
    };
    let view_watch = {
        let cooldowns = Arc::clone(&cooldowns);
        let watching = Arc::clone(&watching);
        let forwarder = Arc::clone(&forwarder);
        tokio::spawn(async move {
            while watching.load(Ordering::Acquire) {
                let now = Instant::now();
                for group in forwarder.engine.groups() {
                    if group.name == PRIMARY {
                        if let Some(until) = group.cooldown_until {
                            cooldowns.saw(until, now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 50 clients; the storm starts once every one of them has been answered at least once.
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(run_client(
                Arc::clone(&forwarder),
                client,
                Arc::clone(&stop),
                Arc::clone(&finished),
            ))
        })
        .collect();
    support::eventually("every client was answered before the storm", || {
        finished.load(Ordering::Acquire) >= CLIENTS
    })
    .await;

    let storm_start = Instant::now();
    let storm_end = storm_start + STORM;
    primary.storm(Storm::overloaded_from(storm_start, STORM));
    // The scenario's length, not a synchronisation: the clients run through the whole storm.
    tokio::time::sleep_until(storm_end.into()).await;

    // Recovery: the primary group answers a message request with 200 after the storm, and
    // after the last cooldown the router reported (polled with a deadline that only catches a
    // hang: a forwarder that never comes back fails here).
    let recovery_deadline = Instant::now() + WAIT * 2;
    let recovered_at = loop {
        let last_cooldown_end = cooldowns
            .windows()
            .iter()
            .map(|window| window.until)
            .max()
            .unwrap_or(storm_end);
        let back = primary.message_requests().into_iter().find(|record| {
            record.status == 200
                && record.received_at >= storm_end
                && record.received_at >= last_cooldown_end
        });
        if let Some(record) = back {
            break Some(record.received_at);
        }
        if Instant::now() >= recovery_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    stop.store(true, Ordering::Release);
    let mut requests = Vec::new();
    for client in clients {
        requests.extend(client.await.expect("client task"));
    }
    watching.store(false, Ordering::Release);
    let _ = bus_watch.await;
    let _ = view_watch.await;

    // --- Measurements ---
    let primary_records = primary.records();
    let backup_records = backup.records();
    let primary_by_tag = message_records_by_tag(&primary_records);
    let backup_by_tag = message_records_by_tag(&backup_records);
    let attempts_of = |tag: &str| {
        primary_by_tag.get(tag).map_or(0, Vec::len) + backup_by_tag.get(tag).map_or(0, Vec::len)
    };

    let during_storm: Vec<&ClientRequest> = requests
        .iter()
        .filter(|request| request.started >= storm_start && request.started < storm_end)
        .collect();
    let storm_attempts: usize = during_storm
        .iter()
        .map(|request| attempts_of(&request.tag))
        .sum();
    let attempts_per_request = storm_attempts as f64 / during_storm.len().max(1) as f64;

    let first_failover = backup_records
        .iter()
        .filter(|record| record.message && record.received_at >= storm_start)
        .map(|record| record.received_at)
        .min();
    let time_to_fail_over = first_failover.map(|at| at - storm_start);

    // Returns to the storming group inside a cooldown window. A request routed before the
    // window began and not yet failed over (all its earlier attempts on the primary) is still in
    // its first pass over the group: those attempts are not returns.
    let windows = cooldowns.windows();
    let started_by_tag: HashMap<&str, Instant> = requests
        .iter()
        .map(|request| (request.tag.as_str(), request.started))
        .collect();
    let mut returns = Vec::new();
    for record in primary_records.iter().filter(|record| record.message) {
        let Some(window) = windows
            .iter()
            .find(|window| record.received_at >= window.began && record.received_at < window.until)
        else {
            continue;
        };
        let started = started_by_tag.get(record.tag.as_str()).copied();
        let on_backup_before = backup_by_tag.get(record.tag.as_str()).is_some_and(|tries| {
            tries
                .iter()
                .any(|attempt| attempt.received_at < record.received_at)
        });
        let first_pass = started.is_some_and(|started| started < window.began) && !on_backup_before;
        if !first_pass {
            returns.push((record.received_at - storm_start, window.until - storm_start));
        }
    }

    let server_errors: Vec<&ClientRequest> = requests
        .iter()
        .filter(|request| request.status.is_some_and(|status| status >= 500))
        .collect();
    let unanswered = requests
        .iter()
        .filter(|request| request.status.is_none())
        .count();
    let error_events = requests
        .iter()
        .filter(|request| request.error_event)
        .count();
    let storm_probes: Vec<u16> = primary_records
        .iter()
        .filter(|record| {
            record.probe && record.received_at >= storm_start && record.received_at < storm_end
        })
        .map(|record| record.status)
        .collect();
    let recovery = recovered_at.map(|at| at - storm_end);
    let distinct_tags: HashSet<&str> = requests
        .iter()
        .map(|request| request.tag.as_str())
        .collect();

    let report = format!(
        "brown-out ({CLIENTS} clients, storm {STORM:?}, cooldown {COOLDOWN}): \
         {} client requests ({} during the storm), {storm_attempts} upstream attempts during the \
         storm = {attempts_per_request:.2} per client request (goal <= {ATTEMPTS_GOAL}); \
         time to fail over {time_to_fail_over:?}; cooldown windows (from storm start) {:?}; \
         returns to the storming group before cooldown end: {} (first: {:?}); recovery after \
         the storm {recovery:?}; client 5xx {} ({:?}), unanswered {unanswered}, 200 streams with \
         an error event {error_events}; probes to the storming group during the storm {storm_probes:?}",
        requests.len(),
        during_storm.len(),
        windows
            .iter()
            .map(|window| (
                window.began.saturating_duration_since(storm_start),
                window.until.saturating_duration_since(storm_start)
            ))
            .collect::<Vec<_>>(),
        returns.len(),
        returns.iter().take(5).collect::<Vec<_>>(),
        server_errors.len(),
        server_errors
            .iter()
            .take(5)
            .map(|request| (request.status, request.started.saturating_duration_since(storm_start)))
            .collect::<Vec<_>>(),
    );
    eprintln!("{report}");

    // --- The scenario is what it claims ---
    assert_eq!(distinct_tags.len(), requests.len(), "tags are unique");
    assert!(
        !during_storm.is_empty(),
        "no client request during the storm\n{report}"
    );
    assert!(
        !storm_probes.is_empty() && storm_probes.iter().all(|status| *status == 200),
        "the storming group's probes must arrive and pass during the storm\n{report}"
    );
    assert!(
        primary_records
            .iter()
            .any(|record| record.message && record.storm),
        "the storm answered no message request\n{report}"
    );
    assert!(time_to_fail_over.is_some(), "never failed over\n{report}");

    // --- The goals ---
    assert_eq!(unanswered, 0, "every client request is answered\n{report}");
    assert!(
        server_errors.is_empty(),
        "no client may get a 5xx while the second group is healthy\n{report}"
    );
    assert!(
        returns.is_empty(),
        "no message request may reach the storming group before its cooldown ends\n{report}"
    );
    assert!(
        attempts_per_request <= ATTEMPTS_GOAL,
        "upstream attempts per client request during the storm\n{report}"
    );
    assert!(
        recovered_at.is_some(),
        "traffic must come back to the first group after the storm and its cooldown\n{report}"
    );
}
