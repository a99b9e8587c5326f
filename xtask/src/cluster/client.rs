//! The client side of `cargo xtask cluster`: threads that send a steady rate of `/v1/messages`
//! requests (JSON and SSE, a pool of `x-session-id`s) to the load balancer, each on its own
//! connection, retry a failed request once, and note which instance answered with which request
//! id; and the look at an instance's `/health/detailed`.
//!
//! Std `TcpStream`s and threads, no async runtime: xtask depends on no workspace crate and the
//! rates here are small.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::account::Outcome;
use super::ClusterArgs;

/// Longest wait for one request (only a hang gets near it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before the one retry of a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Whether ticket `ticket` is streamed, and its session among `sessions`. Two in five are
/// streamed (5 is prime to a round robin over 2 or 3 instances, so every instance gets both
/// kinds) and the session is a hash of the ticket, so a session's turns are spread over the
/// instances rather than pinned to one by the round robin.
fn request_kind(ticket: u64, sessions: u32) -> (bool, u64) {
    let stream = matches!(ticket % 5, 1 | 3);
    let session = (ticket.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(sessions.max(1));
    (stream, session)
}

/// The client side: a schedule of tickets (one per request) shared by the client threads.
pub(super) struct Traffic {
    address: SocketAddr,
    rate: u32,
    sessions: u32,
    tag: String,
    /// When the schedule started.
    pub(super) started: Instant,
    duration: Duration,
    stop: Arc<AtomicBool>,
    next_ticket: AtomicU64,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Traffic {
    /// A schedule of `args.rate` requests a second for `duration`, starting now.
    pub(super) fn new(
        address: SocketAddr,
        args: &ClusterArgs,
        tag: &str,
        duration: Duration,
        stop: Arc<AtomicBool>,
    ) -> Arc<Traffic> {
        Arc::new(Traffic {
            address,
            rate: args.rate,
            sessions: args.sessions,
            tag: tag.to_string(),
            started: Instant::now(),
            duration,
            stop,
            next_ticket: AtomicU64::new(0),
            outcomes: Mutex::new(Vec::new()),
        })
    }

    /// One client thread: takes the next ticket, waits for its time, sends it (and once more
    /// when it fails); until the end of the run.
    pub(super) fn work(&self) {
        loop {
            let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
            let due = Duration::from_secs_f64(ticket as f64 / f64::from(self.rate));
            if due >= self.duration || self.stop.load(Ordering::SeqCst) {
                return;
            }
            wait_until(self.started + due, &self.stop);
            let (stream, session) = request_kind(ticket, self.sessions);
            let session = format!("cluster-{}-s{session}", self.tag);
            let first = send(self.address, stream, &session);
            let (result, first_error) = match first {
                Ok(answer) => (Ok(answer), None),
                Err(error) => (
                    {
                        // As the SDKs do: a short pause, then once more.
                        thread::sleep(RETRY_PAUSE);
                        send(self.address, stream, &session)
                    },
                    Some(format!("{error:#}")),
                ),
            };
            let retried = first_error.is_some();
            let outcome = match result {
                Ok(answer) => Outcome {
                    request_id: Some(answer.request_id),
                    instance: Some(answer.instance),
                    answered_at: Instant::now(),
                    retried,
                    error: first_error,
                },
                Err(error) => Outcome {
                    request_id: None,
                    instance: None,
                    answered_at: Instant::now(),
                    retried,
                    error: Some(format!("{error:#}")),
                },
            };
            if let Ok(mut all) = self.outcomes.lock() {
                all.push(outcome);
            }
        }
    }

    /// Every request's outcome so far.
    pub(super) fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
    }
}

/// A successful answer: its request id and the instance that gave it.
struct Answer {
    request_id: String,
    instance: String,
}

/// Sends one `/v1/messages` request through the balancer on its own connection and reads the
/// whole answer; an error for anything but a complete 200 with a request id.
fn send(address: SocketAddr, stream: bool, session: &str) -> Result<Answer> {
    let body = format!(
        "{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":{stream},\
         \"messages\":[{{\"role\":\"user\",\"content\":\"cluster run, session {session}\"}}]}}"
    );
    let response = crate::http::post_json(
        address,
        "/v1/messages",
        &[
            ("anthropic-version", "2023-06-01"),
            ("x-api-key", "cluster-client"),
            ("x-session-id", session),
        ],
        &body,
        REQUEST_TIMEOUT,
    )?;
    if response.status != 200 {
        bail!("status {}", response.status);
    }
    if stream && !contains(&response.body, b"message_stop") {
        bail!("the stream ended before message_stop");
    }
    let request_id = response
        .header("x-ccf-request-id")
        .context("no x-ccf-request-id")?
        .to_string();
    let instance = response
        .header("x-ccf-upstream")
        .map(answering_upstream)
        .context("no x-ccf-upstream from the balancer")?
        .to_string();
    Ok(Answer {
        request_id,
        instance,
    })
}

/// The instance that answered, from the balancer's `x-ccf-upstream`: nginx lists every
/// upstream it tried (`a, b`, or `a : b` across upstream groups) and the last one answered.
fn answering_upstream(header: &str) -> &str {
    header
        .rsplit([',', ' '])
        .find(|part| !part.is_empty() && *part != ":")
        .unwrap_or(header)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Sleeps until `at` or until Ctrl+C (pacing, not synchronisation).
pub(super) fn wait_until(at: Instant, stop: &AtomicBool) {
    while Instant::now() < at && !stop.load(Ordering::SeqCst) {
        thread::sleep((at - Instant::now()).min(Duration::from_millis(100)));
    }
}

/// The `cluster` object of an instance's `/health/detailed`, if it has one.
pub(super) fn cluster_section(port: u16) -> Option<Value> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let response = crate::http::get(address, "/health/detailed", REQUEST_TIMEOUT).ok()?;
    let body: Value = serde_json::from_slice(&response.body).ok()?;
    body.get("cluster")
        .filter(|section| !section.is_null())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_upstream_nginx_tried_is_the_one_that_answered() {
        for (header, expected) in [
            ("127.0.0.1:8101", "127.0.0.1:8101"),
            ("127.0.0.1:8101, 127.0.0.1:8102", "127.0.0.1:8102"),
            (
                "127.0.0.1:8101, 127.0.0.1:8102 : 127.0.0.1:8103",
                "127.0.0.1:8103",
            ),
            ("cluster-2", "cluster-2"),
        ] {
            assert_eq!(answering_upstream(header), expected, "{header}");
        }
    }

    #[test]
    fn a_round_robin_over_three_instances_gives_each_both_kinds_and_many_sessions() {
        for instance in 0..3u64 {
            let tickets: Vec<_> = (0..300)
                .filter(|ticket| ticket % 3 == instance)
                .map(|ticket| request_kind(ticket, 12))
                .collect();
            let streamed = tickets.iter().filter(|(stream, _)| *stream).count();
            assert!(
                (30..=90).contains(&streamed),
                "{instance}: {streamed} of 100 streamed"
            );
            let sessions: std::collections::BTreeSet<_> =
                tickets.iter().map(|(_, session)| *session).collect();
            assert!(sessions.len() >= 10, "{instance}: sessions {sessions:?}");
        }
    }

    #[test]
    fn finds_the_end_of_a_stream() {
        assert!(contains(b"event: message_stop\ndata: {}", b"message_stop"));
        assert!(!contains(b"event: content_block_delta", b"message_stop"));
    }
}
