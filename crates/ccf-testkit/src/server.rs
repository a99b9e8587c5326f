//! The mock server: accept loop, per-request handling, and the shared record of requests.
//!
//! Task ownership: [`MockUpstream::start_with`] spawns one accept task; it owns the listener and
//! a `JoinSet` of connection tasks. Shutdown (explicit, or the last handle dropped) wakes the
//! accept task, which aborts every connection task and waits for them, so in-flight replies are
//! recorded as [`ReplyOutcome::Aborted`] before [`MockUpstream::shutdown`] returns.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::body::{MockBody, Tracker};
use crate::render::{render, Plan, RequestView};
use crate::reply::{End, Reply, ReplyOutcome};

/// The `request-id` response header.
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// One request the mock received, with how it was answered.
///
/// A snapshot: `status`, `outcome` and `sent_body` are filled in when the reply ends (see
/// [`MockUpstream::wait_for_outcome`]).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Position in arrival order, from 0 (the index for [`MockUpstream::wait_for_outcome`]).
    pub index: usize,
    /// The `request-id` the mock answered with: `req_mock_<index + 1>`.
    pub request_id: String,
    /// Which connection carried the request: connections are numbered from 1 in accept order,
    /// so equal numbers mean the client reused a connection.
    pub connection: u64,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string without the `?`, if any.
    pub query: Option<String>,
    /// The HTTP version the request came in with.
    pub version: Version,
    /// The request headers as received.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// When the request body had been read.
    pub received_at: Instant,
    /// The response status sent, once the reply ended (`None` if no headers were sent).
    pub status: Option<u16>,
    /// How the reply ended so far.
    pub outcome: ReplyOutcome,
    /// Exactly the response body bytes the mock handed to the connection (after gzip, before
    /// chunked framing), once the reply ended; empty before.
    pub sent_body: Bytes,
}

impl RecordedRequest {
    /// The first value of a request header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The request body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The request body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How to start a [`MockUpstream`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Where to listen (default `127.0.0.1:0`).
    pub addr: SocketAddr,
    /// Keep every request in memory (default `true`). Turn off for long benchmark runs: nothing
    /// is recorded then, `requests()` and `outcomes()` stay empty and the `wait_for_*` methods
    /// run to their timeout; `request_count()` and `connection_count()` still count.
    pub record: bool,
    /// The reply once the queue is empty (default [`Reply::auto`]).
    pub default_reply: Reply,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record: true,
            default_reply: Reply::auto(),
        }
    }
}

/// State shared by the handle, the accept task, the connection tasks and the reply bodies.
pub(crate) struct Shared {
    record: bool,
    state: Mutex<State>,
    /// Bumped on every new record and every finished reply.
    changed: watch::Sender<()>,
    connections: AtomicU64,
    /// Response body bytes handed to hyper, over every reply.
    body_bytes_sent: AtomicU64,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

struct State {
    queue: VecDeque<Arc<Reply>>,
    default_reply: Arc<Reply>,
    /// The reply to health probes (`GET …/v1/models`), which never take a scripted reply.
    probe_reply: Arc<Reply>,
    /// Health probes received, kept apart from `records`.
    probes: Vec<RecordedRequest>,
    /// Requests received, recorded or not.
    count: u64,
    records: Vec<RecordedRequest>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts response body bytes handed to hyper.
    pub(crate) fn add_body_bytes(&self, bytes: usize) {
        self.body_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_one();
    }

    /// Number the request, record it, and pick its reply, all under one lock so the n-th
    /// recorded request gets the n-th queued reply. Health probes (`GET …/v1/models`, what a
    /// forwarder's health checker sends) are answered by the probe reply and recorded apart, so
    /// a forwarder's background probes never take a reply scripted for the test's requests.
    fn admit(&self, arrival: Arrival) -> (u64, Option<usize>, Arc<Reply>) {
        let mut state = self.lock();
        state.count += 1;
        let number = state.count;
        if is_probe(arrival.method, arrival.uri) {
            let reply = Arc::clone(&state.probe_reply);
            if self.record {
                let record = arrival.into_record(state.probes.len(), number);
                state.probes.push(record);
                drop(state);
                self.changed.send_replace(());
            }
            return (number, None, reply);
        }
        let reply = match state.queue.pop_front() {
            Some(reply) => reply,
            None => Arc::clone(&state.default_reply),
        };
        if !self.record {
            return (number, None, reply);
        }
        let index = state.records.len();
        let record = arrival.into_record(index, number);
        state.records.push(record);
        drop(state);
        self.changed.send_replace(());
        (number, Some(index), reply)
    }

    pub(crate) fn finish(
        &self,
        index: usize,
        status: Option<u16>,
        outcome: ReplyOutcome,
        sent_body: Bytes,
    ) {
        let mut state = self.lock();
        if let Some(record) = state.records.get_mut(index) {
            record.status = status;
            record.outcome = outcome;
            record.sent_body = sent_body;
        }
        drop(state);
        self.changed.send_replace(());
    }
}

/// What [`Shared::admit`] records about a request.
struct Arrival<'a> {
    connection: u64,
    method: &'a Method,
    uri: &'a Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Arrival<'_> {
    fn into_record(self, index: usize, number: u64) -> RecordedRequest {
        RecordedRequest {
            index,
            request_id: request_id(number),
            connection: self.connection,
            method: self.method.as_str().to_owned(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(str::to_owned),
            version: self.version,
            headers: self.headers,
            body: self.body,
            received_at: Instant::now(),
            status: None,
            outcome: ReplyOutcome::Pending,
            sent_body: Bytes::new(),
        }
    }
}

/// Whether a request is a health probe: `GET` on a path ending in `/v1/models`.
fn is_probe(method: &Method, uri: &Uri) -> bool {
    method == Method::GET && uri.path().ends_with("/v1/models")
}

fn request_id(number: u64) -> String {
    format!("req_mock_{number}")
}

/// Owns the accept task; the last [`MockUpstream`] clone to go drops it, which shuts the mock
/// down.
struct ServerHandle {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
    }
}

/// A scriptable mock Anthropic upstream listening on a local port (HTTP/1.1 with keep-alive,
/// and HTTP/2 with prior knowledge).
///
/// Replies come from the queue filled by [`MockUpstream::enqueue`] in FIFO order, then from the
/// default ([`Reply::auto`] unless [`MockUpstream::set_default`] changed it). Clones share one
/// server; it shuts down when the last clone is dropped or on [`MockUpstream::shutdown`].
#[derive(Clone)]
pub struct MockUpstream {
    shared: Arc<Shared>,
    handle: Arc<ServerHandle>,
    addr: SocketAddr,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Start on `127.0.0.1:0`, recording every request.
    ///
    /// # Panics
    /// If no loopback port can be bound: a test cannot go on without its upstream. Use
    /// [`MockUpstream::start_with`] to handle the error.
    pub async fn start() -> MockUpstream {
        match MockUpstream::start_with(MockConfig::default()).await {
            Ok(upstream) => upstream,
            Err(problem) => panic!("mock upstream cannot listen on 127.0.0.1:0: {problem}"),
        }
    }

    /// Start on `addr`, recording every request.
    pub async fn start_on(addr: SocketAddr) -> io::Result<MockUpstream> {
        MockUpstream::start_with(MockConfig {
            addr,
            ..MockConfig::default()
        })
        .await
    }

    /// Start as configured. Must be called inside a Tokio runtime (the server runs as a task on
    /// it).
    pub async fn start_with(config: MockConfig) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            record: config.record,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default_reply: Arc::new(config.default_reply),
                probe_reply: Arc::new(Reply::auto()),
                probes: Vec::new(),
                count: 0,
                records: Vec::new(),
            }),
            changed,
            connections: AtomicU64::new(0),
            body_bytes_sent: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let handle = Arc::new(ServerHandle {
            shared: Arc::clone(&shared),
            task: Mutex::new(Some(task)),
        });
        Ok(MockUpstream {
            shared,
            handle,
            addr,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue `reply`: queued replies answer requests in FIFO order, a request taking its reply
    /// once its body has been read (the order of [`MockUpstream::requests`]).
    pub fn enqueue(&self, reply: Reply) {
        self.shared.lock().queue.push_back(Arc::new(reply));
    }

    /// The reply once the queue is empty (initially [`Reply::auto`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default_reply = Arc::new(reply);
    }

    /// The reply to health probes (`GET …/v1/models`; initially [`Reply::auto`], a models list).
    /// Probes never take queued or default replies.
    pub fn set_probe_reply(&self, reply: Reply) {
        self.shared.lock().probe_reply = Arc::new(reply);
    }

    /// Health probes received (`GET …/v1/models`), in arrival order; not part of
    /// [`MockUpstream::requests`].
    pub fn probes(&self) -> Vec<RecordedRequest> {
        self.shared.lock().probes.clone()
    }

    /// Wait until `count` probes arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for_probes(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        self.wait_until(timeout, |state| {
            (state.probes.len() >= count).then(|| state.probes.clone())
        })
        .await
        .unwrap_or_else(|| self.probes())
    }

    /// How many enqueued replies are still waiting for a request.
    pub fn queued_replies(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().records.clone()
    }

    /// One request by arrival index.
    pub fn request(&self, index: usize) -> Option<RecordedRequest> {
        self.shared.lock().records.get(index).cloned()
    }

    /// How many requests were received (recorded or not).
    pub fn request_count(&self) -> u64 {
        self.shared.lock().count
    }

    /// How many connections were accepted.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Response body bytes handed to the connection so far, over every reply (probes included).
    ///
    /// hyper asks a body for its next frame only once it could write the previous ones, so
    /// with a large reply ([`Reply::bulk_sse`](crate::Reply::bulk_sse)) this shows how far a
    /// slow reader downstream let the mock get: backpressure tests compare it with what the
    /// client read.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes_sent.load(Ordering::Relaxed)
    }

    /// Wait until at least `count` requests were received or `timeout` passed; returns every
    /// request received by then (possibly fewer than `count`).
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        self.wait_until(timeout, |state| {
            (state.records.len() >= count).then(|| state.records.clone())
        })
        .await
        .unwrap_or_else(|| self.requests())
    }

    /// The outcome of every request so far, in arrival order ([`ReplyOutcome::Pending`] while a
    /// reply is in flight).
    pub fn outcomes(&self) -> Vec<ReplyOutcome> {
        let state = self.shared.lock();
        state.records.iter().map(|record| record.outcome).collect()
    }

    /// Wait until the reply to request `index` ended; `None` if it has not within `timeout` (or
    /// no such request arrived).
    pub async fn wait_for_outcome(&self, index: usize, timeout: Duration) -> Option<ReplyOutcome> {
        self.wait_until(timeout, |state| {
            state
                .records
                .get(index)
                .map(|record| record.outcome)
                .filter(|outcome| outcome.is_finished())
        })
        .await
    }

    /// Wait until the request `index` exists and its reply ended; returns the finished record.
    pub async fn wait_for_finished(
        &self,
        index: usize,
        timeout: Duration,
    ) -> Option<RecordedRequest> {
        self.wait_until(timeout, |state| {
            state
                .records
                .get(index)
                .filter(|record| record.outcome.is_finished())
                .cloned()
        })
        .await
    }

    /// Evaluate `check` on every change until it yields something or `timeout` passes.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before checking, so a change between the check and the wait is not missed.
        let mut changes = self.shared.changed.subscribe();
        loop {
            if let Some(found) = check(&self.shared.lock()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return check(&self.shared.lock()),
            }
        }
    }

    /// Stop accepting, close every connection (in-flight replies end as
    /// [`ReplyOutcome::Aborted`]) and wait for it. Other clones stop working too.
    pub async fn shutdown(self) {
        self.shared.begin_shutdown();
        let task = self
            .handle
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // A join error only means the accept task panicked or was cancelled: it is gone
            // either way.
            let _ = task.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shared.shutdown.notified() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let number = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    connections.spawn(serve(builder.clone(), stream, Arc::clone(&shared), number));
                }
                Err(problem) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::debug!(error = %problem, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    shared: Arc<Shared>,
    connection: u64,
) {
    // Events are small and must reach the client as soon as they are written.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| answer(Arc::clone(&shared), connection, request));
    if let Err(problem) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %problem, connection, "mock upstream connection ended with an error");
    }
}

async fn answer(
    shared: Arc<Shared>,
    connection: u64,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, incoming) = request.into_parts();
    let body = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(problem) => {
            tracing::debug!(error = %problem, "mock upstream could not read a request body");
            let mut response = Response::new(MockBody::new(
                Vec::new(),
                End::Complete,
                false,
                None,
                400,
                None,
                Arc::clone(&shared),
            ));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    let (number, index, reply) = shared.admit(Arrival {
        connection,
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: body.clone(),
    });
    // Records ClientGone if this future is dropped (peer gone) before the body takes over.
    let tracker = index.map(|index| Tracker::new(Arc::clone(&shared), index));
    let plan = render(
        &reply,
        &RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            body: &body,
            number,
        },
    );
    drop(body);
    if let Some(delay) = reply.header_delay {
        tokio::time::sleep(delay).await;
    }
    let rendered = match plan {
        Plan::Respond(rendered) => rendered,
        Plan::Hang => {
            let never: Infallible = std::future::pending().await;
            match never {}
        }
    };
    let status = rendered.status;
    let body = MockBody::new(
        rendered.frames,
        reply.end,
        rendered.stream,
        reply.chunk_delay,
        status.as_u16(),
        tracker,
        Arc::clone(&shared),
    );
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(request_id(number)) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(content_type) = rendered.content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if rendered.stream {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if rendered.gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    for (name, _) in &reply.headers {
        headers.remove(name);
    }
    for (name, value) in &reply.headers {
        headers.append(name.clone(), value.clone());
    }
    Ok(response)
}
