//! HTTP/1 upstream connections driven by the request's own task (issue 19).
//!
//! hyper-util's pooled client spawns a task per connection: every chunk of an answer is read by
//! that task and handed to the request's task through a channel, one chunk per wake-up, so the
//! relay writes each SSE event to the client with a syscall of its own even when the upstream
//! sent them together (measured: 11 `writev`s per 3-delta stream against nginx's 3). Here the
//! connection's driver (`hyper::client::conn::http1::Connection`) is polled by whoever waits
//! on it: the request's future while the head is awaited, then the [`UpstreamBody`] whenever
//! the answer has no frame ready. Frames that arrived together reach hyper's server in one poll
//! and leave in one write; nothing is held back (a frame is handed on in the poll that read
//! it), so the relay's invariant stands.
//!
//! **Where it applies.** Only on the per-core runtimes' threads (`server.threads`), each with a
//! pool of its own, and only to origins that speak HTTP/1 (through an outbound proxy's tunnel
//! too: CONNECT and SOCKS5 leave the origin-form request unchanged): the first connection to an
//! origin tells (TLS ALPN); an origin that negotiates HTTP/2 goes back to the pooled client's
//! lanes for good (one connection opened in vain per core), as does every request on any other
//! thread (a caller's runtime, health probes, webhooks).
//!
//! **Idle connections** wait in their core's pool, newest used first, at most
//! [`MAX_IDLE_PER_ORIGIN`] per origin, dropped after [`IDLE_LIMIT`] (the pooled client's 90 s).
//! Nobody polls an idle connection, so it is checked when taken: a connection whose upstream
//! closed it meanwhile has its FIN waiting and its driver ends on that poll. A request refused
//! by a reused connection before any byte of it was written goes to the next one (as hyper-util
//! retries a canceled request); one written to a connection that then failed is the caller's to
//! retry, as with the pooled client.
//!
//! [`UpstreamBody`]: super::UpstreamBody

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::Connection as _;
use tower_service::Service as _;

use super::{BoxedIo, ClientShared, UpstreamConnector, UpstreamRequestError};

/// Idle connections kept per origin on one core (the pooled client's `pool_max_idle_per_host`).
pub(super) const MAX_IDLE_PER_ORIGIN: usize = 256;

/// An idle connection older than this is closed instead of used (the pooled client's
/// `pool_idle_timeout`).
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(90);

/// An upstream connection as the connector opens it.
type Io = MaybeHttpsStream<BoxedIo>;

/// What does a connection's I/O: hyper's HTTP/1 client state machine over it.
type Driver = http1::Connection<Io, Full<Bytes>>;

/// One origin's connections on one core.
pub(super) struct OriginConnections {
    /// The lane key written out (`scheme://host:port`, or `<origin> via <endpoint>`).
    pub(super) key: String,
    /// A connection to the origin negotiated HTTP/2 (or needs the pooled client for another
    /// reason): its requests go to the lanes from then on.
    needs_pooled: bool,
    /// The `Host` header of the origin's requests.
    host: HeaderValue,
    /// What opens the origin's connections (the endpoint's own proxy, the origin's trust).
    connector: HttpsConnector<UpstreamConnector>,
    /// Idle connections, oldest first.
    idle: VecDeque<IdleConnection>,
}

impl OriginConnections {
    /// The origin of `key`, nothing known of it yet, its connections opened by `connector`.
    fn new(key: &super::LaneKey<'_>, connector: HttpsConnector<UpstreamConnector>) -> Self {
        OriginConnections {
            key: key.written(),
            needs_pooled: false,
            host: key.host_header(),
            connector,
            idle: VecDeque::new(),
        }
    }

    /// The newest idle connection young enough to use; older ones are closed.
    fn take_idle(&mut self, now: Instant) -> Option<Http1Connection> {
        while let Some(front) = self.idle.front() {
            if now.duration_since(front.since) < IDLE_LIMIT {
                break;
            }
            self.idle.pop_front();
        }
        self.idle.pop_back().map(|idle| idle.connection)
    }

    /// Idle connections waiting, for tests.
    pub(super) fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

/// The origins of one core, found by their written key.
pub(super) type OriginsOfCore = Vec<OriginConnections>;

struct IdleConnection {
    connection: Http1Connection,
    since: Instant,
}

/// A connection's two halves: where requests go in, and the driver that does the I/O.
pub(crate) struct Http1Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once the driver has finished (the connection is closed). Boxed: hyper's
    /// connection state is large, and requests' futures that hold it by value were copied
    /// whole at every move (about 60,000 instructions of `memcpy` per request, measured).
    driver: Option<Pin<Box<Driver>>>,
}

impl Http1Connection {
    /// Polls the driver once: does whatever I/O is waiting. `true` while the connection lives.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = self.driver.as_mut() else {
            return false;
        };
        if driver.as_mut().poll(cx).is_ready() {
            self.driver = None;
            return false;
        }
        true
    }

    /// Whether a request can go out on it now (the driver polled first, so an upstream's close
    /// that arrived while it was idle is seen).
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }
}

/// Where a connection returns to when its answer has been read.
pub(super) struct Home {
    pub(super) shared: Arc<ClientShared>,
    pub(super) core_set: usize,
    pub(super) origin: usize,
}

impl Home {
    fn origins(&self) -> std::sync::MutexGuard<'_, OriginsOfCore> {
        self.shared.in_task_sets[self.core_set]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self) -> Option<Http1Connection> {
        self.origins()[self.origin].take_idle(Instant::now())
    }

    fn connector(&self) -> HttpsConnector<UpstreamConnector> {
        self.origins()[self.origin].connector.clone()
    }

    fn needs_pooled(&self) {
        self.origins()[self.origin].needs_pooled = true;
    }

    fn put_back(&self, connection: Http1Connection) {
        let mut origins = self.origins();
        let idle = &mut origins[self.origin].idle;
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push_back(IdleConnection {
                connection,
                since: Instant::now(),
            });
        }
    }
}

/// A connection carrying an answer that is being read, and where it goes afterwards.
pub(crate) struct DrivenConnection {
    connection: Http1Connection,
    home: Home,
}

impl DrivenConnection {
    /// Polls the driver once; `false` when the connection has ended.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.connection.drive(cx)
    }

    /// The answer has been read whole: the connection goes back to its core's pool, unless it
    /// is closing (the upstream said `Connection: close`, or failed).
    pub(crate) fn release(mut self, cx: &mut Context<'_>) {
        if self.connection.drive(cx) {
            self.home.put_back(self.connection);
        }
    }
}

/// A request's way out on a per-core thread for an origin not known to need the pooled client.
pub(super) struct InTaskRoute {
    pub(super) home: Home,
    /// A connection taken from the pool (checked before use).
    idle: Option<Http1Connection>,
    /// The `Host` header the request gets when it has none.
    host: HeaderValue,
}

/// What [`InTaskRoute::send`] ended with.
pub(super) enum InTaskOutcome {
    /// The answer's head; its body drives the connection.
    Answered(Response<(Incoming, DrivenConnection)>),
    /// The origin needs the pooled client: the request, as it came, goes there.
    UsePooled(Request<Full<Bytes>>, super::UpstreamClient),
}

impl InTaskRoute {
    /// Takes an idle connection for `key`'s origin from core `core_set`'s pool, or notes that
    /// a new one is needed; `None` when the origin is known to need the pooled client.
    /// `connector` is asked only for an origin this core has not seen yet.
    pub(super) fn take(
        shared: &Arc<ClientShared>,
        core_set: usize,
        key: &super::LaneKey<'_>,
        connector: impl FnOnce() -> HttpsConnector<UpstreamConnector>,
    ) -> Option<InTaskRoute> {
        let mut origins = shared.in_task_sets[core_set]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let origin = match origins.iter().position(|origin| key.is(&origin.key)) {
            Some(index) => index,
            None => {
                origins.push(OriginConnections::new(key, connector()));
                origins.len() - 1
            }
        };
        let entry = &mut origins[origin];
        if entry.needs_pooled {
            return None;
        }
        let host = entry.host.clone();
        let idle = entry.take_idle(Instant::now());
        drop(origins);
        Some(InTaskRoute {
            home: Home {
                shared: Arc::clone(shared),
                core_set,
                origin,
            },
            idle,
            host,
        })
    }

    /// Sends `request` on a usable idle connection, or on a new one.
    pub(super) async fn send(
        mut self,
        mut request: Request<Full<Bytes>>,
        taken: Option<&super::ConnectionWatch>,
    ) -> Result<InTaskOutcome, UpstreamRequestError> {
        let destination = request.uri().clone();
        request
            .headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        *request.uri_mut() = origin_form(&destination);
        loop {
            let mut reused = true;
            let connection = match self.usable_idle().await {
                Some(connection) => connection,
                None => {
                    reused = false;
                    match self.open(&destination).await? {
                        Some(connection) => connection,
                        None => {
                            *request.uri_mut() = destination;
                            let client = super::UpstreamClient {
                                shared: self.home.shared,
                            };
                            return Ok(InTaskOutcome::UsePooled(request, client));
                        }
                    }
                }
            };
            if let Some(taken) = taken {
                taken.set_in_task();
            }
            match exchange(connection, request).await {
                Ok((response, connection)) => {
                    let home = self.home;
                    return Ok(InTaskOutcome::Answered(
                        response.map(|body| (body, DrivenConnection { connection, home })),
                    ));
                }
                Err(mut refused) => match refused.take_message() {
                    // Not a byte of it went out: a reused connection that closed meanwhile.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamRequestError::Http1(refused.into_error())),
                },
            }
        }
    }

    /// The first idle connection that is still usable (the one taken with the route first).
    async fn usable_idle(&mut self) -> Option<Http1Connection> {
        loop {
            let mut connection = match self.idle.take() {
                Some(connection) => connection,
                None => self.home.take_idle()?,
            };
            if poll_fn(|cx| Poll::Ready(connection.usable(cx))).await {
                return Some(connection);
            }
        }
    }

    /// Opens a connection; `None` when the origin turns out to need the pooled client.
    async fn open(
        &mut self,
        destination: &Uri,
    ) -> Result<Option<Http1Connection>, UpstreamRequestError> {
        let mut connector = self.home.connector();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamRequestError::Connect)?;
        let io: Io = connector
            .call(destination.clone())
            .await
            .map_err(UpstreamRequestError::Connect)?;
        let connected = io.connected();
        if connected.is_negotiated_h2() || connected.is_proxied() {
            self.home.needs_pooled();
            return Ok(None);
        }
        // One buffer per write, as on the server side (`server.rs`): a request's head and its
        // body of a kilobyte or two are copied together (about 600 instructions fewer per
        // request than queueing them for `writev`).
        let (sender, driver) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(UpstreamRequestError::Http1)?;
        Ok(Some(Http1Connection {
            sender,
            driver: Some(Box::pin(driver)),
        }))
    }
}

thread_local! {
    /// Exchanges of this thread (a core) waiting for their answer's head ([`exchange`]).
    static WAITING_FOR_HEADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts an exchange among [`WAITING_FOR_HEADS`] while it lives.
struct WaitingForHead;

impl WaitingForHead {
    fn start() -> Self {
        WAITING_FOR_HEADS.with(|waiting| waiting.set(waiting.get() + 1));
        WaitingForHead
    }

    /// Whether another exchange of this core waits for its head too.
    fn has_company(&self) -> bool {
        WAITING_FOR_HEADS.with(|waiting| waiting.get() > 1)
    }
}

impl Drop for WaitingForHead {
    fn drop(&mut self) {
        WAITING_FOR_HEADS.with(|waiting| waiting.set(waiting.get().saturating_sub(1)));
    }
}

/// Sends `request` on `connection` and waits for the answer's head, driving the connection
/// meanwhile.
async fn exchange(
    mut connection: Http1Connection,
    request: Request<Full<Bytes>>,
) -> Result<
    (Response<Incoming>, Http1Connection),
    hyper::client::conn::TrySendError<Request<Full<Bytes>>>,
> {
    let waiting = WaitingForHead::start();
    let mut answer = std::pin::pin!(connection.sender.try_send_request(request));
    // The request goes out, and the answer's head comes back, after the other tasks ready on
    // this core have run, as both did through the pooled client's connection task: requests
    // then reach the upstream, and answers the clients, in bursts. Without these two yields,
    // JSON at concurrency 64 lost 10-25 % of its throughput (the forwarder and the mock each
    // spent up to a quarter more CPU per request, measured with the dist build), although
    // every request took fewer instructions. Each costs a second poll of the whole chain of
    // futures (about 4,000 instructions): a request alone on its core, with no other exchange
    // to go out or come back with, skips them (concurrency 1).
    if waiting.has_company() {
        tokio::task::yield_now().await;
    }
    let head = poll_fn(|cx| {
        if let Poll::Ready(head) = answer.as_mut().poll(cx) {
            return Poll::Ready(head);
        }
        // The driver writes the request and reads the head; the answer is ready right after.
        connection.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await?;
    // The second yield (see above).
    if waiting.has_company() {
        tokio::task::yield_now().await;
    }
    Ok((head, connection))
}

/// `request_uri` as HTTP/1 sends it to an origin: its path and query only.
fn origin_form(request_uri: &Uri) -> Uri {
    match request_uri.path_and_query() {
        Some(path) if path.as_str() != "/" => Uri::from(path.clone()),
        _ => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_form_keeps_path_and_query_only() {
        let uri: Uri = "http://relay.example:8080/v1/messages?beta=true"
            .parse()
            .unwrap();
        assert_eq!(origin_form(&uri), "/v1/messages?beta=true");
        let bare: Uri = "http://relay.example:8080".parse().unwrap();
        assert_eq!(origin_form(&bare), "/");
    }

    #[test]
    fn an_exchange_has_company_only_while_another_of_its_core_waits() {
        let first = WaitingForHead::start();
        assert!(!first.has_company(), "alone: no yield");
        let second = WaitingForHead::start();
        assert!(first.has_company() && second.has_company());
        drop(second);
        assert!(!first.has_company(), "the other one got its head");
        std::thread::spawn(|| {
            let elsewhere = WaitingForHead::start();
            assert!(
                !elsewhere.has_company(),
                "another core's exchanges are not company"
            );
        })
        .join()
        .unwrap();
        drop(first);
        assert_eq!(WAITING_FOR_HEADS.with(std::cell::Cell::get), 0);
    }
}
