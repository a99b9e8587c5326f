//! [`RealisticUpstream`]: an upstream that behaves like the real Anthropic API and the relays in
//! front of it, written from the protocol reference ("How real traffic behaves"), not from the
//! forwarder's code. Where [`crate::MockUpstream`] answers at once from a script, this one takes
//! time and fails the way production does:
//!
//! - **generation time**: a non-streaming answer's headers come only when generation ends
//!   (output tokens × [`RealisticConfig::per_token`]); a stream sends its headers after
//!   [`RealisticConfig::time_to_first_byte`] and then paced `content_block_delta` events;
//! - **TLS with HTTP/2** (ALPN `h2`, then `http/1.1`) under a CA made at start, with a small
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` ([`RealisticConfig::max_concurrent_streams`]); plain HTTP
//!   serves HTTP/1.1 and h2 with prior knowledge;
//! - **brown-outs**: a [`Storm`] answers message requests 529 `overloaded_error` (or another
//!   [`StormAnswer`]) from a start for a duration, or for the next N message requests, while
//!   `GET /v1/models` keeps answering 200 — health endpoints lie during overload;
//! - **broken streams**: [`StreamFault`]s cut a stream after some events or end it cleanly
//!   without `message_stop`;
//! - **rate-limit headers** on every message answer (`anthropic-ratelimit-*`, and with
//!   [`RateLimitFamily::Unified`] the subscription family `anthropic-ratelimit-unified-*`), and
//!   `retry-after` on storm answers that carry one;
//! - **relays** that answer `HEAD /` with 404 ([`RealisticConfig::head_root_not_found`]).
//!
//! It records every request (method, path, headers, body, arrival, whether it was a health probe,
//! the status it got, whether a storm answered it). With [`RealisticConfig::control_paths`] it
//! also serves `/_realistic/*` so a driver in another process can start a storm and read the
//! record (the `ccf-realistic-upstream` binary turns that on).
//!
//! This module decides (storms, faults, statuses) and records; `realistic/wire.rs` renders the
//! answers (JSON, SSE, errors, rate-limit headers).
//!
//! Ownership: [`RealisticUpstream::start_with`] spawns one accept task owning a `JoinSet` of
//! connection tasks; each stream's events are written by a task of its own that stops when the
//! client goes away. Dropping the last handle aborts the accept task, which aborts every
//! connection.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::tls_proxy::{test_ca_server_config, TlsProxyError};

mod wire;

use wire::{
    empty_response, error_response, insert, json_response, models_list, rate_limit_headers,
    streaming_response, unix_ms, whole_response, Generation,
};
pub use wire::{rfc3339, RealisticBody, StreamCut};

/// The model named in answers when the request names none.
const FALLBACK_MODEL: &str = "claude-sonnet-4-5-20250929";

/// Why the realistic upstream could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RealisticError {
    /// The test CA or the TLS configuration could not be made.
    #[error("test tls setup: {0}")]
    Tls(#[from] TlsProxyError),
    /// The listener could not be bound.
    #[error("bind the realistic upstream: {0}")]
    Bind(#[source] io::Error),
}

/// Which rate-limit header family message answers carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitFamily {
    /// None at all (many relays strip them).
    None,
    /// The API-key family: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*`.
    PerMinute,
    /// The subscription (OAuth) family `anthropic-ratelimit-unified-*`, instead of per-minute.
    Unified,
}

/// How to start a [`RealisticUpstream`].
#[derive(Clone, Debug)]
pub struct RealisticConfig {
    /// Where to listen (default `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// Serve TLS (ALPN `h2`, `http/1.1`) with a certificate from a CA made at start.
    pub tls: bool,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` sent to h2 clients (default 100).
    pub max_concurrent_streams: u32,
    /// Generation time per output token (default 5 ms). A non-streaming answer's headers wait
    /// for the whole generation; a stream paces its deltas by it.
    pub per_token: Duration,
    /// Output tokens generated per answer, capped by the request's `max_tokens` (default 20).
    pub output_tokens: u32,
    /// Output tokens per `content_block_delta` event (default 5).
    pub tokens_per_delta: u32,
    /// Wait before a stream's headers (queueing at the upstream, long prompts; default 0).
    pub time_to_first_byte: Duration,
    /// Answer `HEAD /` with 404, as some relays do (default `false`: 200).
    pub head_root_not_found: bool,
    /// Rate-limit headers on message answers (default [`RateLimitFamily::PerMinute`]).
    pub rate_limits: RateLimitFamily,
    /// The credential required (`x-api-key` or `Authorization: Bearer`); `None` accepts any.
    pub required_key: Option<String>,
    /// Serve `/_realistic/storm` and `/_realistic/records` for drivers in another process.
    pub control_paths: bool,
    /// Keep every request's headers and body (default `true`); a long run turns it off and
    /// keeps only the rest of each record.
    pub keep_bodies: bool,
}

impl Default for RealisticConfig {
    fn default() -> Self {
        RealisticConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: false,
            max_concurrent_streams: 100,
            per_token: Duration::from_millis(5),
            output_tokens: 20,
            tokens_per_delta: 5,
            time_to_first_byte: Duration::ZERO,
            head_root_not_found: false,
            rate_limits: RateLimitFamily::PerMinute,
            required_key: None,
            control_paths: false,
            keep_bodies: true,
        }
    }
}

/// What a storm answers message requests with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormAnswer {
    /// Status code (529 for overload).
    pub status: u16,
    /// The Anthropic `error.type`.
    pub error_type: &'static str,
    /// `retry-after` in seconds, when the answer carries one.
    pub retry_after: Option<u64>,
}

impl StormAnswer {
    /// 529 `overloaded_error`, without `retry-after`.
    pub fn overloaded() -> StormAnswer {
        StormAnswer {
            status: 529,
            error_type: "overloaded_error",
            retry_after: None,
        }
    }

    /// 500 `api_error`.
    pub fn api_error() -> StormAnswer {
        StormAnswer {
            status: 500,
            error_type: "api_error",
            retry_after: None,
        }
    }

    /// 429 `rate_limit_error` with `retry-after: seconds` (and, with the unified family, status
    /// `rejected`: the account is spent until the reset).
    pub fn rate_limited(retry_after_seconds: u64) -> StormAnswer {
        StormAnswer {
            status: 429,
            error_type: "rate_limit_error",
            retry_after: Some(retry_after_seconds),
        }
    }

    /// The same answer with `retry-after: seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> StormAnswer {
        self.retry_after = Some(seconds);
        self
    }
}

/// When message requests fail; health probes (`GET /v1/models`) keep passing throughout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storm {
    /// From `start` (inclusive) until `end` (exclusive): storms that end by themselves.
    Window {
        /// First instant of the storm.
        start: Instant,
        /// First instant after it.
        end: Instant,
        /// What a message request gets meanwhile.
        answer: StormAnswer,
    },
    /// The next `remaining` message requests.
    Next {
        /// Message requests still to fail.
        remaining: u64,
        /// What each of them gets.
        answer: StormAnswer,
    },
}

impl Storm {
    /// A 529 storm from now for `duration`.
    pub fn overloaded_for(duration: Duration) -> Storm {
        let start = Instant::now();
        Storm::Window {
            start,
            end: start + duration,
            answer: StormAnswer::overloaded(),
        }
    }

    /// A 529 storm from `start` for `duration`.
    pub fn overloaded_from(start: Instant, duration: Duration) -> Storm {
        Storm::Window {
            start,
            end: start + duration,
            answer: StormAnswer::overloaded(),
        }
    }

    /// The next `count` message requests answered 529.
    pub fn overloaded_next(count: u64) -> Storm {
        Storm::Next {
            remaining: count,
            answer: StormAnswer::overloaded(),
        }
    }

    /// The same storm with another answer.
    pub fn answering(mut self, with: StormAnswer) -> Storm {
        match &mut self {
            Storm::Window { answer, .. } | Storm::Next { answer, .. } => *answer = with,
        }
        self
    }
}

/// How a stream goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFault {
    /// The connection (h1) or stream (h2 `RST_STREAM`) is cut after this many events.
    CutAfterEvents(usize),
    /// Every event but `message_stop`, then a clean end of the body.
    NoMessageStop,
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct RealisticRecord {
    /// Arrival order, from 0, over every request (probes included).
    pub index: usize,
    /// The connection that carried it, numbered from 1 in accept order.
    pub connection: u64,
    /// `GET`, `POST`, `HEAD`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The HTTP version it came with (`HTTP/2.0` over h2).
    pub version: Version,
    /// The request headers (empty when [`RealisticConfig::keep_bodies`] is off).
    pub headers: HeaderMap,
    /// The request body (empty when [`RealisticConfig::keep_bodies`] is off).
    pub body: Bytes,
    /// When the whole request had arrived.
    pub received_at: Instant,
    /// The same instant as milliseconds since the Unix epoch, for drivers in other processes.
    pub unix_ms: u64,
    /// A health probe: `GET …/v1/models`.
    pub probe: bool,
    /// A message request: `POST …/v1/messages` (count_tokens excluded).
    pub message: bool,
    /// The status answered (for a non-streaming answer, decided on arrival and sent after the
    /// generation time).
    pub status: u16,
    /// A storm answered it.
    pub storm: bool,
    /// The stream fault applied, if any.
    pub fault: Option<StreamFault>,
    /// `stream: true` in the body.
    pub stream: bool,
    /// The first user message's text (up to 200 bytes), which drivers use to tag requests.
    pub tag: String,
}

impl RealisticRecord {
    /// The first value of a request header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The record as one JSON object (what `/_realistic/records` lists).
    pub fn to_json(&self) -> Value {
        json!({
            "index": self.index,
            "connection": self.connection,
            "method": self.method,
            "path": self.path,
            "version": format!("{:?}", self.version),
            "unix_ms": self.unix_ms,
            "probe": self.probe,
            "message": self.message,
            "status": self.status,
            "storm": self.storm,
            "stream": self.stream,
            "tag": self.tag,
        })
    }
}

struct State {
    storm: Option<Storm>,
    stream_faults: VecDeque<StreamFault>,
    models_status: u16,
    records: Vec<RealisticRecord>,
}

struct Shared {
    config: RealisticConfig,
    state: Mutex<State>,
    changed: watch::Sender<()>,
    connections: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owns the accept task; the last handle dropped aborts it and with it every connection.
struct AcceptTask(JoinHandle<()>);

impl Drop for AcceptTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running realistic upstream; see the module doc. Clones share one server.
#[derive(Clone)]
pub struct RealisticUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: Option<(CertificateDer<'static>, String)>,
    _accept: Arc<AcceptTask>,
}

impl std::fmt::Debug for RealisticUpstream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RealisticUpstream")
            .field("addr", &self.addr)
            .field("tls", &self.shared.config.tls)
            .finish_non_exhaustive()
    }
}

impl RealisticUpstream {
    /// Starts with `config`; must run inside a Tokio runtime.
    pub async fn start_with(config: RealisticConfig) -> Result<RealisticUpstream, RealisticError> {
        let (ca, acceptor) = if config.tls {
            let (certificate, pem, mut server_config) =
                test_ca_server_config("cc-forwarder realistic upstream")?;
            // h2 first, as the official API and most relays negotiate it.
            server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            (
                Some((certificate, pem)),
                Some(TlsAcceptor::from(Arc::new(server_config))),
            )
        } else {
            (None, None)
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(RealisticError::Bind)?;
        let addr = listener.local_addr().map_err(RealisticError::Bind)?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                storm: None,
                stream_faults: VecDeque::new(),
                models_status: 200,
                records: Vec::new(),
            }),
            changed,
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        Ok(RealisticUpstream {
            shared,
            addr,
            ca,
            _accept: Arc::new(AcceptTask(task)),
        })
    }

    /// Starts plain HTTP on `127.0.0.1:0` with the defaults. Panics when no port can be bound.
    pub async fn start() -> RealisticUpstream {
        match RealisticUpstream::start_with(RealisticConfig::default()).await {
            Ok(upstream) => upstream,
            Err(problem) => panic!("realistic upstream cannot start: {problem}"),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` or, with TLS, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.config.tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The test CA's certificate (DER) when serving TLS: add it to a client's roots.
    pub fn ca_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.ca.as_ref().map(|(der, _)| der)
    }

    /// The test CA's certificate in PEM when serving TLS (e.g. for a `ca_file`).
    pub fn ca_certificate_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(_, pem)| pem.as_str())
    }

    /// Starts (or replaces) a storm.
    pub fn storm(&self, storm: Storm) {
        self.shared.lock().storm = Some(storm);
    }

    /// Ends any storm now.
    pub fn calm(&self) {
        self.shared.lock().storm = None;
    }

    /// The next streaming message request that is not answered by a storm gets `fault`
    /// (faults queue up in order).
    pub fn enqueue_stream_fault(&self, fault: StreamFault) {
        self.shared.lock().stream_faults.push_back(fault);
    }

    /// The status `GET /v1/models` answers with (initially 200; probes see it even mid-storm).
    pub fn set_models_status(&self, status: u16) {
        self.shared.lock().models_status = status;
    }

    /// Every request so far, in arrival order.
    pub fn records(&self) -> Vec<RealisticRecord> {
        self.shared.lock().records.clone()
    }

    /// Message requests (`POST …/v1/messages`) so far.
    pub fn message_requests(&self) -> Vec<RealisticRecord> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|record| record.message)
            .cloned()
            .collect()
    }

    /// Health probes (`GET …/v1/models`) so far.
    pub fn probes(&self) -> Vec<RealisticRecord> {
        self.shared
            .lock()
            .records
            .iter()
            .filter(|record| record.probe)
            .cloned()
            .collect()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until `wanted` holds for the records or `timeout` passes; returns the records
    /// either way (the caller's assert shows them).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&[RealisticRecord]) -> bool,
    ) -> Result<Vec<RealisticRecord>, Vec<RealisticRecord>> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let state = self.shared.lock();
                if wanted(&state.records) {
                    return Ok(state.records.clone());
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(self.records()),
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                let number = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            // A refused handshake (a client without the CA) just ends here.
                            if let Ok(tls) = acceptor.accept(socket).await {
                                serve_connection(tls, number, shared).await;
                            }
                        }
                        None => serve_connection(socket, number, shared).await,
                    }
                });
            }
            // Reap finished connections so the set does not grow for ever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<S>(io: S, connection: u64, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(shared.config.max_concurrent_streams);
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer(request, connection, shared).await) }
    });
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// What was decided on arrival.
enum Decision {
    Storm(StormAnswer),
    Message {
        stream: bool,
        fault: Option<StreamFault>,
    },
    Other,
}

async fn answer(
    request: Request<Incoming>,
    connection: u64,
    shared: Arc<Shared>,
) -> Response<RealisticBody> {
    let (parts, body) = request.into_parts();
    // A body that cannot be read is answered as an empty one: the record shows it.
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let config = &shared.config;

    if config.control_paths && path.starts_with("/_realistic/") {
        return control(&shared, &parts.method, &path, parts.uri.query(), &body);
    }

    let json_body: Option<Value> = serde_json::from_slice(&body).ok();
    let probe = parts.method == Method::GET && path.ends_with("/v1/models");
    let message = parts.method == Method::POST && path.ends_with("/v1/messages");
    let stream = json_body
        .as_ref()
        .and_then(|body| body.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let authorized = match &config.required_key {
        None => true,
        Some(key) => {
            let api_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
            let bearer = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            api_key == Some(key.as_str()) || bearer == Some(key.as_str())
        }
    };
    let now = Instant::now();

    // Decide and record under one lock, so the n-th message request meets the n-th storm slot.
    let (index, decision, status, models_status) = {
        let mut state = shared.lock();
        let storm_answer = if message && authorized {
            take_storm(&mut state.storm, now)
        } else {
            None
        };
        let decision = match storm_answer {
            Some(answer) => Decision::Storm(answer),
            None if message && authorized => Decision::Message {
                stream,
                fault: if stream {
                    state.stream_faults.pop_front()
                } else {
                    None
                },
            },
            None => Decision::Other,
        };
        let status = if !authorized && path != "/" {
            401
        } else {
            match (&decision, &parts.method) {
                (Decision::Storm(answer), _) => answer.status,
                (Decision::Message { .. }, _) => 200,
                (Decision::Other, _) if probe => state.models_status,
                (Decision::Other, &Method::HEAD) if path == "/" => {
                    if config.head_root_not_found {
                        404
                    } else {
                        200
                    }
                }
                (Decision::Other, &Method::POST) if path.ends_with("/v1/messages/count_tokens") => {
                    200
                }
                (Decision::Other, _) => 404,
            }
        };
        let index = state.records.len();
        let keep = config.keep_bodies;
        state.records.push(RealisticRecord {
            index,
            connection,
            method: parts.method.as_str().to_owned(),
            path: path.clone(),
            version: parts.version,
            headers: if keep {
                parts.headers.clone()
            } else {
                HeaderMap::new()
            },
            body: if keep { body.clone() } else { Bytes::new() },
            received_at: now,
            unix_ms: unix_ms(SystemTime::now()),
            probe,
            message,
            status,
            storm: matches!(decision, Decision::Storm(_)),
            fault: match &decision {
                Decision::Message { fault, .. } => *fault,
                _ => None,
            },
            stream,
            tag: first_user_text(json_body.as_ref()),
        });
        let models_status = state.models_status;
        (index, decision, status, models_status)
    };
    shared.changed.send_replace(());

    let request_id = format!("req_realistic_{}", index + 1);
    let model = json_body
        .as_ref()
        .and_then(|body| body.get("model"))
        .and_then(Value::as_str)
        .unwrap_or(FALLBACK_MODEL)
        .to_owned();
    if status == 401 {
        return error_response(
            401,
            "authentication_error",
            "invalid x-api-key",
            &request_id,
        );
    }
    match decision {
        Decision::Storm(storm) => {
            let mut response = error_response(
                storm.status,
                storm.error_type,
                storm_message(storm.error_type),
                &request_id,
            );
            if let Some(seconds) = storm.retry_after {
                insert(response.headers_mut(), "retry-after", &seconds.to_string());
            }
            if storm.status == 429 {
                rate_limit_headers(response.headers_mut(), config.rate_limits, true);
            }
            response
        }
        Decision::Message { stream, fault } => {
            let output_tokens = json_body
                .as_ref()
                .and_then(|body| body.get("max_tokens"))
                .and_then(Value::as_u64)
                .map_or(config.output_tokens, |max| {
                    config
                        .output_tokens
                        .min(u32::try_from(max).unwrap_or(u32::MAX))
                });
            let input_tokens = u32::try_from(body.len() / 4).unwrap_or(u32::MAX).max(1);
            let generation = Generation {
                request_id,
                model,
                input_tokens,
                output_tokens,
            };
            let mut response = if stream {
                tokio::time::sleep(config.time_to_first_byte).await;
                streaming_response(&generation, config, fault)
            } else {
                // A non-streaming answer arrives whole: nothing before generation ends.
                tokio::time::sleep(config.per_token * output_tokens).await;
                whole_response(&generation)
            };
            rate_limit_headers(response.headers_mut(), config.rate_limits, false);
            response
        }
        Decision::Other => {
            if probe {
                if models_status == 200 {
                    return json_response(200, &models_list(), &request_id);
                }
                return error_response(
                    models_status,
                    "api_error",
                    "Internal server error",
                    &request_id,
                );
            }
            if parts.method == Method::HEAD && path == "/" {
                return empty_response(status, &request_id);
            }
            if status == 200 {
                // count_tokens: not billed, answered at once.
                let input_tokens = (body.len() / 4).max(1);
                return json_response(200, &json!({ "input_tokens": input_tokens }), &request_id);
            }
            error_response(404, "not_found_error", "Not found", &request_id)
        }
    }
}

/// The storm's answer for a message request arriving at `now`, consuming a `Next` slot; clears
/// a storm that is over.
fn take_storm(storm: &mut Option<Storm>, now: Instant) -> Option<StormAnswer> {
    match storm {
        Some(Storm::Window { start, end, answer }) => {
            if now >= *end {
                *storm = None;
                None
            } else if now >= *start {
                Some(answer.clone())
            } else {
                None
            }
        }
        Some(Storm::Next { remaining, answer }) => {
            let answer = answer.clone();
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                *storm = None;
            }
            Some(answer)
        }
        None => None,
    }
}

fn storm_message(error_type: &str) -> &'static str {
    match error_type {
        "overloaded_error" => "Overloaded",
        "rate_limit_error" => "Number of requests has exceeded your rate limit",
        _ => "Internal server error",
    }
}

/// `/_realistic/storm?for_ms=N` (or `?next=N`, with `&status=429&retry_after=S`),
/// `/_realistic/calm`, `/_realistic/records` (JSON lines).
fn control(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    _body: &Bytes,
) -> Response<RealisticBody> {
    let parameter = |name: &str| -> Option<u64> {
        query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
    };
    match (method, path) {
        (&Method::POST, "/_realistic/storm") => {
            let mut answer = match parameter("status") {
                Some(429) => StormAnswer::rate_limited(1),
                Some(500) => StormAnswer::api_error(),
                _ => StormAnswer::overloaded(),
            };
            answer.retry_after = parameter("retry_after").or(answer.retry_after);
            let storm = match (parameter("for_ms"), parameter("next")) {
                (Some(ms), _) => Storm::overloaded_for(Duration::from_millis(ms)),
                (None, Some(count)) => Storm::overloaded_next(count),
                (None, None) => {
                    return error_response(
                        400,
                        "invalid_request_error",
                        "for_ms or next",
                        "req_control",
                    )
                }
            }
            .answering(answer);
            shared.lock().storm = Some(storm);
            json_response(
                200,
                &json!({ "storm": true, "unix_ms": unix_ms(SystemTime::now()) }),
                "req_control",
            )
        }
        (&Method::POST, "/_realistic/calm") => {
            shared.lock().storm = None;
            json_response(200, &json!({ "storm": false }), "req_control")
        }
        (&Method::GET, "/_realistic/records") => {
            let mut lines = String::new();
            for record in shared.lock().records.iter() {
                lines.push_str(&record.to_json().to_string());
                lines.push('\n');
            }
            let mut response = Response::new(RealisticBody::whole(Bytes::from(lines)));
            insert(
                response.headers_mut(),
                "content-type",
                "application/x-ndjson",
            );
            response
        }
        _ => error_response(
            404,
            "not_found_error",
            "unknown control path",
            "req_control",
        ),
    }
}

/// The first user message's text, for tagging (up to 200 bytes).
fn first_user_text(body: Option<&Value>) -> String {
    let Some(first) = body
        .and_then(|body| body.get("messages"))
        .and_then(Value::as_array)
        .and_then(|messages| messages.first())
    else {
        return String::new();
    };
    let text = match first.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .find_map(|block| block.get("text").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_storm_ends_after_its_requests() {
        let mut storm = Some(Storm::overloaded_next(2));
        let now = Instant::now();
        assert!(take_storm(&mut storm, now).is_some());
        assert!(take_storm(&mut storm, now).is_some());
        assert!(take_storm(&mut storm, now).is_none());
        assert!(storm.is_none());
    }

    #[test]
    fn a_timed_storm_answers_only_inside_its_window() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut storm = Some(Storm::overloaded_from(start, Duration::from_secs(5)));
        assert!(take_storm(&mut storm, start - Duration::from_secs(1)).is_none());
        assert_eq!(
            take_storm(&mut storm, start),
            Some(StormAnswer::overloaded())
        );
        assert!(take_storm(&mut storm, start + Duration::from_secs(5)).is_none());
        assert!(storm.is_none());
    }
}
