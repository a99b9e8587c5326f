//! Serving a [`Forwarder`] on a TCP listener with graceful shutdown.
//!
//! Ownership: [`serve`] owns the accept loop and one task per connection. When `shutdown`
//! resolves it stops accepting, asks every connection to finish its in-flight request (HTTP/1
//! connections close after their current response, HTTP/2 ones send GOAWAY) and waits up to
//! `drain_timeout` for them; connections still open after that are dropped.
//!
//! Limits ([`ConnectionLimits`], from `server.*` for the proxy listener):
//! - `max_connections`: the accept loop takes a slot for each connection it accepts; with every
//!   slot taken it holds the one connection it accepted and stops accepting, so further clients
//!   wait in the kernel's listen backlog (their connect succeeds, their request is answered once
//!   a slot frees) instead of being reset;
//! - `header_read_timeout`: a connection must deliver its first complete request head within
//!   this time of being accepted, whatever the protocol (this also covers the bytes hyper-util
//!   reads to tell HTTP/1 from HTTP/2, which hyper's own timer does not), and every later HTTP/1
//!   request head within this time of the server starting to wait for it (hyper's timer), so
//!   slowloris clients and idle connections are closed;
//! - TCP keepalive on every accepted socket (idle 60 s, then every 60 s, 5 probes), so a client
//!   machine that vanishes without closing its connection is noticed and its connection (and
//!   the request it carried) dropped; a client that stalls mid-body while its socket stays up is
//!   the admission's `server.body_read_timeout`;
//! - `max_header_bytes` (hyper's HTTP/1 read buffer) and `max_headers`: a bigger request head
//!   gets `431 Request Header Fields Too Large` and the connection is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::forwarder::Forwarder;

pub(crate) mod after_write;
pub mod per_core;

/// The address of the client that sent a request, read from the request's extensions by
/// [`Forwarder`]'s `Service` implementation and [`Forwarder::handle`]: embedders serving the
/// engine themselves insert it. [`serve`] hands each connection's peer to the engine directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The forwarder as one connection's service: every request learns the peer address.
#[derive(Clone)]
struct WithClientAddr {
    forwarder: Forwarder,
    client: ClientAddr,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithClientAddr {
    type Response =
        <Forwarder as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Response;
    type Error = std::convert::Infallible;
    type Future =
        <Forwarder as hyper::service::Service<http::Request<hyper::body::Incoming>>>::Future;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let forwarder = self.forwarder.clone();
        let client_ip = self.client.0.ip();
        Box::pin(async move { Ok(forwarder.handle_from(request, Some(client_ip)).await) })
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest time a client may take to send request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest time in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
}

/// Resource limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest HTTP/1 request head in bytes (at least 8 KiB, hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
}

/// The most headers hyper's HTTP/1 server reads in a request head when no limit is set.
const HYPER_MAX_HEADERS: usize = 100;

/// hyper refuses a smaller HTTP/1 read buffer.
const MIN_HEADER_BYTES: usize = 8 * 1024;

impl Default for ConnectionLimits {
    /// The `server.*` defaults: 4096 connections, 64 KiB of headers, 100 headers.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

impl ConnectionLimits {
    /// The limits `server.*` asks for.
    pub fn from_config(server: &ccf_config::ServerConfig) -> Self {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        ConnectionLimits {
            max_connections: size(u64::from(server.max_connections)).max(1),
            max_header_bytes: size(server.max_header_bytes.bytes()),
            max_headers: size(u64::from(server.max_headers)).max(1),
        }
    }
}

/// How a [`serve`] run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections that were still open when the drain timeout ran out.
    pub abandoned_connections: usize,
}

/// Serves `forwarder` on `listener` until `shutdown` resolves, then drains. The connection
/// limits are the forwarder's `server.*` settings at the time of the call.
pub async fn serve(
    listener: TcpListener,
    forwarder: Forwarder,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    let limits = ConnectionLimits::from_config(&forwarder.config().server);
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_forwarder_with_slots(
        listener,
        forwarder,
        options,
        limits,
        connection_slots,
        shutdown,
    )
    .await
}

/// [`serve`] with connection slots shared with other listeners (the per-core listeners of one
/// forwarder share `server.max_connections`).
pub(crate) async fn serve_forwarder_with_slots(
    listener: TcpListener,
    forwarder: Forwarder,
    options: ServeOptions,
    limits: ConnectionLimits,
    connection_slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> ServeReport {
    serve_with_slots(
        listener,
        move |peer| WithClientAddr {
            forwarder: forwarder.clone(),
            client: ClientAddr(peer),
        },
        options,
        limits,
        connection_slots,
        shutdown,
    )
    .await
}

/// [`serve_connections_with_limits`] with the default [`ConnectionLimits`].
pub async fn serve_connections<S, B>(
    listener: TcpListener,
    service_for: impl Fn(SocketAddr) -> S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_connections_with_limits(
        listener,
        service_for,
        options,
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// Marks its connection as having delivered a complete request head.
struct NoticeRequests<S> {
    inner: S,
    seen: Arc<AtomicBool>,
}

impl<S, R> hyper::service::Service<R> for NoticeRequests<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> Self::Future {
        self.seen.store(true, Ordering::Release);
        self.inner.call(request)
    }
}

/// TCP keepalive timing on accepted sockets (the Python SDK's values for its own sockets).
const INBOUND_KEEPALIVE: Duration = Duration::from_secs(60);
/// Unanswered keepalive probes before the kernel closes an accepted socket.
const INBOUND_KEEPALIVE_RETRIES: u32 = 5;

/// Turns on TCP keepalive for an accepted client socket; failure only loses the early notice.
fn set_tcp_keepalive(stream: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(INBOUND_KEEPALIVE)
        .with_interval(INBOUND_KEEPALIVE)
        .with_retries(INBOUND_KEEPALIVE_RETRIES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!("cannot enable TCP keepalive on a client socket: {error}");
    }
}

/// The accept loop shared by every listener of the forwarder (proxy and admin): HTTP/1 and
/// HTTP/2 on one port, a header read timeout, one task per connection, and on `shutdown` a
/// graceful drain bounded by `options.drain_timeout`, and the `limits` (see the module doc).
/// `service_for` makes the service of one connection from the peer's address.
pub async fn serve_connections_with_limits<S, B>(
    listener: TcpListener,
    service_for: impl Fn(SocketAddr) -> S,
    options: ServeOptions,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_with_slots(
        listener,
        service_for,
        options,
        limits,
        connection_slots,
        shutdown,
    )
    .await
}

/// The accept loop of [`serve_connections_with_limits`], taking a slot of `connection_slots`
/// for every open connection (`limits.max_connections` is already in the semaphore).
async fn serve_with_slots<S, B>(
    listener: TcpListener,
    service_for: impl Fn(SocketAddr) -> S,
    options: ServeOptions,
    limits: ConnectionLimits,
    connection_slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        // Heads and body frames copied into one buffer and written with one `write`, rather
        // than queued as separate buffers for `writev`: a chunked frame is three buffers (size
        // line, data, CRLF), and keeping the queue cost more than the copy of these small frames
        // (callgrind: SSE 165,291 -> 163,419 instructions per request; the same syscalls).
        .writev(false);
    // hyper's own limit is the default's 100 headers, parsed into arrays it leaves
    // uninitialised; any limit set explicitly, even 100, makes it fill two arrays of that many
    // entries for every request head (about 1,700 instructions a request, issue 19).
    if limits.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let first_head_timeout = options.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        // Accept, then take a slot for the accepted connection: with none free this loop waits
        // and accepts nothing more, so further clients wait in the listen backlog. The slot is
        // taken after the accept so that, with several per-core listeners sharing the slots,
        // a free slot goes to a loop that holds a waiting connection instead of to one that
        // would then wait in `accept` with the slot while the client waits on another listener.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = tokio::select! {
            slot = Arc::clone(&connection_slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            // The waiting connection is closed unserved, like one still in the backlog.
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        set_tcp_keepalive(&stream);
        let seen = Arc::new(AtomicBool::new(false));
        let service = NoticeRequests {
            inner: service_for(peer),
            seen: Arc::clone(&seen),
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        // The relay's end-of-answer work waits for the answer's last bytes to be written.
        let connection = after_write::WritesFirst::new(graceful.watch(connection));
        // The task owns the connection and its slot; dropping the connection closes it.
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let first_head_deadline = tokio::time::sleep(first_head_timeout);
            tokio::pin!(first_head_deadline);
            let mut deadline_passed = false;
            let result = loop {
                tokio::select! {
                    result = &mut connection => break Some(result),
                    () = &mut first_head_deadline, if !deadline_passed => {
                        if seen.load(Ordering::Acquire) {
                            deadline_passed = true;
                        } else {
                            break None;
                        }
                    }
                }
            };
            match result {
                Some(Err(error)) => debug!(%peer, "connection ended: {error}"),
                Some(Ok(())) => {}
                None => debug!(
                    %peer,
                    timeout = ?first_head_timeout,
                    "closing connection: no complete request head within server.header_read_timeout"
                ),
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    info!(
        open_connections = open,
        "shutting down: draining open connections"
    );
    match tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await {
        Ok(()) => ServeReport {
            abandoned_connections: 0,
        },
        Err(_) => {
            warn!(timeout = ?options.drain_timeout, "drain timeout: closing remaining connections");
            ServeReport {
                abandoned_connections: open,
            }
        }
    }
}
