//! The one shared upstream HTTP client: pooled connections, rustls (HTTP/2 by ALPN), the
//! optional outbound proxy (`proxy.*`: HTTP CONNECT, CONNECT over TLS, or SOCKS5, with
//! credentials), upstream trust (`tls.*`, `endpoints[].ca_file`) and connection use
//! (`upstream.*`).
//!
//! **Per-endpoint proxies.** An endpoint with its own outbound proxy (`endpoints[].proxy`, set
//! or inherited in its group, or `enabled: false` to go direct past the global `proxy`) gets a
//! connector of its own, and its lanes are keyed `<origin> via <endpoint>`: its connections
//! never mix with other endpoints' even when they share an origin. Everything below (lanes,
//! per-core sets, keep-alive) applies to them unchanged.
//!
//! Connections are reused across requests and retries (the Go original built a new transport per
//! attempt). Every upstream connection, whatever the proxy, is a [`BoxedIo`], so the client has
//! one concrete type.
//!
//! **Several HTTP/2 connections per origin.** hyper-util's pooled client multiplexes every
//! request to an h2 origin onto one connection; once the upstream's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is reached, further requests queue inside hyper until the
//! header timeout, and long Claude Code streams reach that limit. hyper does not expose the
//! peer's SETTINGS, and opening h2 connections by hand would mean re-implementing its pool, so
//! an origin gets *lanes*: independent hyper-util clients (each holding its own connection pool,
//! so one h2 connection each) sharing the connector. A request goes to the lane with the fewest
//! requests in flight (counted until the response body is dropped); when every lane carries
//! `upstream.max_streams_per_connection` requests, a new lane (a new connection) is opened, up
//! to [`MAX_LANES_PER_ORIGIN`]. For HTTP/1 upstreams lanes change nothing visible: each lane's
//! pool opens a connection per concurrent request anyway. Only maintained crates' public APIs
//! are used; the cost is one pool per lane (idle lanes' connections close after 90 s).
//!
//! **One set of lanes per core.** When the binary serves on per-core runtimes (`server.threads`,
//! see `server/per_core.rs`), each runtime's thread is marked with [`use_core_lanes`] and its
//! requests take lanes from its own set: the connection a request goes out on was opened, and
//! is driven, by the runtime that accepted the request, so a request and its upstream
//! connection stay on one core from accept to end and the set's mutex is only ever taken by
//! that thread. Any other thread (a caller's multi-threaded runtime, the health probes on the
//! background runtime) shares set 0.
//!
//! **HTTP/1 origins on per-core threads** skip the pooled client: their connections are driven
//! by the request's own task and pooled per core (`client/in_task.rs`), so an answer's frames
//! reach the client without a hand-off per chunk. Lanes keep serving HTTP/2 origins, requests
//! through an HTTP proxy's absolute form, and every other thread.
//!
//! **Dead connections** are found by HTTP/2 keep-alive PINGs (`upstream.keep_alive_interval`,
//! also while idle) and by TCP keepalive on every upstream socket (idle 30 s, then every 30 s,
//! 5 probes), so a silently dropped connection fails fast instead of taking requests until TCP
//! notices minutes later.
//!
//! **Trust:** the system certificate store, the bundled webpki roots, `tls.ca_file` and, for an
//! endpoint's origin, `endpoints[].ca_file`.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ccf_config::{Config, OutboundProxyConfig, OutboundProxyType, UpstreamConfig};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use crate::body::BoxError;

/// Most connections (lanes) opened to one origin; past it the least loaded lane is shared.
pub const MAX_LANES_PER_ORIGIN: usize = 64;

/// TCP keepalive on upstream sockets: first probe after this much idle time, then every
/// interval, [`TCP_KEEPALIVE_RETRIES`] probes (close to the Python SDK's 60 s / 60 s / 5).
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Unanswered TCP keepalive probes before the socket is closed.
const TCP_KEEPALIVE_RETRIES: u32 = 5;

/// One lane's hyper-util client.
type LaneClient = Client<HttpsConnector<UpstreamConnector>, Full<Bytes>>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `proxy.*` does not describe a usable proxy.
    #[error("proxy: {0}")]
    Proxy(String),
    /// `endpoints[].proxy` does not describe a usable proxy.
    #[error("endpoints[{index}].proxy: {message}")]
    EndpointProxy {
        /// The endpoint's index in `endpoints`.
        index: usize,
        /// What is wrong (never the password).
        message: String,
    },
    /// A `ca_file` cannot be used.
    #[error("{key}: {message}")]
    CaFile {
        /// The configuration key, e.g. `tls.ca_file`.
        key: String,
        /// What is wrong with the file.
        message: String,
    },
}

/// The client every upstream request goes through: cheap to clone (shared state).
#[derive(Clone)]
pub struct UpstreamClient {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    /// The connector for origins without an `endpoints[].ca_file`.
    default_connector: HttpsConnector<UpstreamConnector>,
    /// Connectors trusting an endpoint's own `ca_file`, by origin.
    origin_connectors: HashMap<String, HttpsConnector<UpstreamConnector>>,
    /// Connectors of the endpoints with their own outbound proxy (`endpoints[].proxy`), by
    /// endpoint name (their lanes are keyed `<origin> via <endpoint>`).
    endpoint_connectors: HashMap<String, HttpsConnector<UpstreamConnector>>,
    upstream: UpstreamConfig,
    /// Lanes by origin, one map per lane set: index 0 for threads of no per-core runtime,
    /// `n + 1` for per-core runtime `n` (taken modulo the length).
    lane_sets: Box<[Mutex<LanesByOrigin>]>,
    /// HTTP/1 connections driven in the request's task, by origin, one list per lane set
    /// (index 0, the set of threads of no per-core runtime, stays empty: they use lanes).
    in_task_sets: Box<[Mutex<in_task::OriginsOfCore>]>,
}

/// Why an upstream request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamRequestError {
    /// From the pooled client (HTTP/2 origins, threads of no per-core runtime).
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    /// No connection could be opened (worded as the pooled client words it).
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The HTTP/1 exchange on a connection driven in the request's task failed.
    #[error(transparent)]
    Http1(#[from] hyper::Error),
}

/// Tells, once a request has been sent or given up, whether a connection was taken for it
/// (the header timeout's "request sent"), whichever way it went out.
///
/// Shared with the client's future (an `Arc`, cloned into it by
/// [`UpstreamClient::request_watched`]): the request itself carries nothing for it unless it
/// goes out on the pooled client, whose connection capture is a request extension. Issue 19: the capture (a watch channel and an
/// extension map for every request) was made for requests driven in their own task as well,
/// which never read it.
#[derive(Clone, Default)]
pub(crate) struct ConnectionWatch(Arc<WatchState>);

#[derive(Default)]
struct WatchState {
    /// Set when a connection driven in the request's task was taken for it.
    in_task: std::sync::atomic::AtomicBool,
    /// The pooled client's capture, when the request went out on it.
    pooled: OnceLock<hyper_util::client::legacy::connect::CaptureConnection>,
}

impl ConnectionWatch {
    /// Whether a connection carried the request.
    pub(crate) fn connection_taken(&self) -> bool {
        self.0.in_task.load(Ordering::Acquire)
            || self
                .0
                .pooled
                .get()
                .is_some_and(|capture| capture.connection_metadata().is_some())
    }

    /// Notes that a connection driven in the request's task was taken for it.
    fn set_in_task(&self) {
        self.0.in_task.store(true, Ordering::Release);
    }

    /// Asks the pooled client to tell which connection carries `request`.
    fn capture_pooled(&self, request: &mut Request<Full<Bytes>>) {
        // Set once: a request goes out on the pooled client at most once.
        let _ = self
            .0
            .pooled
            .set(hyper_util::client::legacy::connect::capture_connection(
                request,
            ));
    }
}

/// The lanes of each origin (`scheme://host:port`, see [`LaneKey`]): a list, not a map, as a
/// forwarder talks to a handful of origins and the list is searched without writing the key.
type LanesByOrigin = Vec<(String, Vec<Lane>)>;

thread_local! {
    /// The lane set this thread's upstream requests use (see [`use_core_lanes`]).
    static LANE_SET: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as the one of per-core runtime `core`: upstream requests made on
/// it use that core's own lanes (connections) from then on. Called once by each per-core
/// runtime's thread before it serves.
pub(crate) fn use_core_lanes(core: usize) {
    LANE_SET.with(|set| set.set(core.saturating_add(1)));
}

/// One independent pooled client of an origin and the requests it carries.
#[derive(Clone)]
struct Lane {
    client: LaneClient,
    in_flight: Arc<AtomicUsize>,
}

/// A request counted on its lane until the response body is dropped.
struct LaneLoad(Arc<AtomicUsize>);

impl Drop for LaneLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body; holds its lane's in-flight count until dropped. Frames the
    /// engine read ahead to look at an answer before relaying it (an empty answer, a 400 naming
    /// a thinking signature) are put back with [`UpstreamBody::put_back`] and come first, then
    /// the error that stopped the reading, if any, then the rest of the body.
    pub struct UpstreamBody {
        #[pin]
        inner: hyper::body::Incoming,
        // The lane's count (pooled client), or the connection this body drives.
        load: Option<LaneLoad>,
        connection: Option<in_task::DrivenConnection>,
        read_ahead: std::collections::VecDeque<Frame<Bytes>>,
        read_error: Option<hyper::Error>,
    }
}

/// What [`UpstreamBody::read_ahead`] read.
pub(crate) struct ReadAhead {
    /// The data read, in order (also put back in front of the body).
    pub(crate) data: bytes::BytesMut,
    /// The body ended cleanly within the reading: `data` is all of it.
    pub(crate) complete: bool,
}

impl UpstreamBody {
    /// Reads frames ahead until the body ends, `stop` says so for the data read so far, more
    /// than `limit` bytes were read, the body fails or `deadline` passes; then puts everything
    /// read (and a read error) back in front of the body, so the relay sends it as if nothing
    /// had been read.
    pub(crate) async fn read_ahead(
        &mut self,
        deadline: Duration,
        limit: usize,
        stop: impl Fn(&[u8]) -> bool,
    ) -> ReadAhead {
        use http_body_util::BodyExt as _;
        let mut frames = Vec::new();
        let mut data = bytes::BytesMut::new();
        let mut error = None;
        let reading = async {
            loop {
                match self.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(chunk) = frame.data_ref() {
                            data.extend_from_slice(chunk);
                        }
                        frames.push(frame);
                        if data.len() > limit || stop(&data) {
                            return false;
                        }
                    }
                    Some(Err(failure)) => {
                        error = Some(failure);
                        return false;
                    }
                    None => return true,
                }
            }
        };
        let complete = tokio::time::timeout(deadline, reading)
            .await
            .unwrap_or(false);
        self.put_back(frames, error);
        ReadAhead { data, complete }
    }

    /// Puts frames read ahead back in front of the rest of the body, in order, followed by
    /// `error` (the error that ended the reading) when there was one.
    fn put_back(&mut self, frames: Vec<Frame<Bytes>>, error: Option<hyper::Error>) {
        for frame in frames.into_iter().rev() {
            self.read_ahead.push_front(frame);
        }
        if error.is_some() {
            self.read_error = error;
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        if let Some(frame) = this.read_ahead.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.read_error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let mut inner = this.inner;
        let mut polled = inner.as_mut().poll_frame(cx);
        if polled.is_pending() {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Pending;
            };
            // This task drives the connection: the frame it reads is ready right after.
            if !connection.drive(cx) {
                *this.connection = None;
            }
            polled = inner.as_mut().poll_frame(cx);
        }
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(_))) if !inner.is_end_stream() => {}
            // Read whole (a body of known length ends with its last frame, and hyper's server
            // may not ask again): the connection can carry the next request.
            Poll::Ready(Some(Ok(_)) | None) => {
                if let Some(connection) = this.connection.take() {
                    connection.release(cx);
                }
            }
            Poll::Ready(Some(Err(_))) => *this.connection = None,
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_empty() && self.read_error.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let ahead: u64 = self
            .read_ahead
            .iter()
            .filter_map(|frame| frame.data_ref())
            .map(|data| data.len() as u64)
            .sum();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(ahead));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint
    }
}

impl UpstreamClient {
    /// Sends `request` for `endpoint` on the least loaded connection of its origin (through
    /// the endpoint's own proxy when it has one), opening another one when every connection
    /// carries `upstream.max_streams_per_connection` requests.
    pub fn request(
        &self,
        endpoint: &str,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamRequestError>> + Send + 'static
    {
        self.send_on_lane(Some(endpoint), request, None)
    }

    /// [`UpstreamClient::request`], telling `watch` whether a connection was taken for it.
    pub(crate) fn request_watched(
        &self,
        endpoint: &str,
        request: Request<Full<Bytes>>,
        watch: &ConnectionWatch,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamRequestError>> + Send + 'static
    {
        self.send_on_lane(Some(endpoint), request, Some(watch.clone()))
    }

    /// Sends `request` for no endpoint (webhook deliveries): through the global `proxy`, with
    /// the same trust and connection reuse as upstream requests.
    pub fn request_unrouted(
        &self,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamRequestError>> + Send + 'static
    {
        let (client, load) = self.lane_for(request.uri(), None);
        send_pooled(client, load, request)
    }

    /// Sends on a connection driven in the request's task when this is a per-core thread and
    /// the origin is not known to need the pooled client, else on a lane.
    fn send_on_lane(
        &self,
        endpoint: Option<&str>,
        mut request: Request<Full<Bytes>>,
        watch: Option<ConnectionWatch>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamRequestError>> + Send + 'static
    {
        // One per request, inside its future: boxing the pooled client would cost an
        // allocation per pooled request to save bytes of a future that holds it anyway.
        #[allow(clippy::large_enum_variant)]
        enum Way {
            InTask(in_task::InTaskRoute, Option<String>),
            Pooled(LaneClient, LaneLoad),
        }
        // The key and the endpoint's connector are looked up once for both ways.
        let (key, own) = self.key_of(request.uri(), endpoint);
        let way = match self.in_task_route(&key, own) {
            Some(route) => Way::InTask(route, own.map(|(endpoint, _)| endpoint.to_string())),
            None => {
                let (client, load) = self.lane_of(&key, own);
                Way::Pooled(client, load)
            }
        };
        async move {
            let (route, endpoint) = match way {
                Way::Pooled(client, load) => {
                    if let Some(watch) = &watch {
                        watch.capture_pooled(&mut request);
                    }
                    return send_pooled(client, load, request).await;
                }
                Way::InTask(route, endpoint) => (route, endpoint),
            };
            match route.send(request, watch.as_ref()).await? {
                in_task::InTaskOutcome::Answered(response) => {
                    Ok(response.map(|(inner, connection)| UpstreamBody {
                        inner,
                        load: None,
                        connection: Some(connection),
                        read_ahead: std::collections::VecDeque::new(),
                        read_error: None,
                    }))
                }
                in_task::InTaskOutcome::UsePooled(mut request, client) => {
                    if let Some(watch) = &watch {
                        watch.capture_pooled(&mut request);
                    }
                    let (lane, load) = client.lane_for(request.uri(), endpoint.as_deref());
                    send_pooled(lane, load, request).await
                }
            }
        }
    }

    /// The lane key of a request to `uri` made for `endpoint`, and that endpoint with its own
    /// connector when it has one (an outbound proxy of its own).
    fn key_of<'a>(
        &'a self,
        uri: &'a Uri,
        endpoint: Option<&'a str>,
    ) -> (LaneKey<'a>, Option<OwnConnector<'a>>) {
        let own = endpoint.and_then(|endpoint| {
            let connector = self.shared.endpoint_connectors.get(endpoint)?;
            Some((endpoint, connector))
        });
        (LaneKey::of(uri, own.map(|(endpoint, _)| endpoint)), own)
    }

    /// The in-task route of a request to `key`'s origin: `None` off per-core threads and for
    /// origins known to need the pooled client.
    fn in_task_route(
        &self,
        key: &LaneKey<'_>,
        own: Option<OwnConnector<'_>>,
    ) -> Option<in_task::InTaskRoute> {
        let set = LANE_SET.with(Cell::get) % self.shared.in_task_sets.len();
        if set == 0 {
            return None;
        }
        in_task::InTaskRoute::take(&self.shared, set, key, || {
            self.connector_for(key, own.map(|(_, connector)| connector))
        })
    }

    /// The connector of a request to `key`'s origin: the endpoint's `own` (its proxy), else the
    /// origin's (trusting its `ca_file`), else the default one.
    fn connector_for(
        &self,
        key: &LaneKey<'_>,
        own: Option<&HttpsConnector<UpstreamConnector>>,
    ) -> HttpsConnector<UpstreamConnector> {
        own.unwrap_or_else(|| {
            self.shared
                .origin_connectors
                .get(&key.origin())
                .unwrap_or(&self.shared.default_connector)
        })
        .clone()
    }

    /// Idle in-task connections of `origin` (a written lane key) per core, for tests.
    pub fn idle_in_task_connections(&self, origin: &str) -> Vec<usize> {
        self.shared.in_task_sets[1..]
            .iter()
            .map(|set| {
                let origins = set.lock().unwrap_or_else(PoisonError::into_inner);
                origins
                    .iter()
                    .find(|connections| connections.key == origin)
                    .map_or(0, in_task::OriginConnections::idle_count)
            })
            .collect()
    }

    /// Requests in flight per connection (lane) of `origin` (`scheme://host:port`), for tests
    /// and diagnostics.
    pub fn lane_loads(&self, origin: &str) -> Vec<usize> {
        let mut loads = Vec::new();
        for set in &self.shared.lane_sets {
            let lanes = set.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, lanes) in lanes.iter().filter(|(key, _)| key == origin) {
                loads.extend(
                    lanes
                        .iter()
                        .map(|lane| lane.in_flight.load(Ordering::Acquire)),
                );
            }
        }
        loads
    }

    /// The lane for a request to `uri` made for `endpoint`.
    fn lane_for(&self, uri: &Uri, endpoint: Option<&str>) -> (LaneClient, LaneLoad) {
        let (key, own) = self.key_of(uri, endpoint);
        self.lane_of(&key, own)
    }

    /// The lane for a request to `key`'s origin, `own` the connector of its endpoint if any.
    fn lane_of(&self, key: &LaneKey<'_>, own: Option<OwnConnector<'_>>) -> (LaneClient, LaneLoad) {
        let per_connection =
            usize::try_from(self.shared.upstream.max_streams_per_connection.max(1))
                .unwrap_or(usize::MAX);
        let set = LANE_SET.with(Cell::get) % self.shared.lane_sets.len();
        let mut all = self.shared.lane_sets[set]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = match all.iter().position(|(written, _)| key.is(written)) {
            Some(index) => index,
            None => {
                all.push((key.written(), Vec::new()));
                all.len() - 1
            }
        };
        let lanes = &mut all[index].1;
        let least_loaded = lanes
            .iter()
            .min_by_key(|lane| lane.in_flight.load(Ordering::Acquire))
            .filter(|lane| {
                lane.in_flight.load(Ordering::Acquire) < per_connection
                    || lanes.len() >= MAX_LANES_PER_ORIGIN
            })
            .cloned();
        let lane = match least_loaded {
            Some(lane) => lane,
            None => {
                let connector = self.connector_for(key, own.map(|(_, connector)| connector));
                let lane = Lane {
                    client: lane_client(&self.shared.upstream, connector),
                    in_flight: Arc::new(AtomicUsize::new(0)),
                };
                lanes.push(lane.clone());
                lane
            }
        };
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
        (lane.client, LaneLoad(lane.in_flight))
    }
}

/// An endpoint with an outbound proxy of its own, and the connector through it.
type OwnConnector<'a> = (&'a str, &'a HttpsConnector<UpstreamConnector>);

/// Sends `request` on a lane of the pooled client.
async fn send_pooled(
    client: LaneClient,
    load: LaneLoad,
    request: Request<Full<Bytes>>,
) -> Result<Response<UpstreamBody>, UpstreamRequestError> {
    let response = client.request(request).await?;
    Ok(response.map(|inner| UpstreamBody {
        inner,
        load: Some(load),
        connection: None,
        read_ahead: std::collections::VecDeque::new(),
        read_error: None,
    }))
}

/// The host and port of a parsed URI's authority (`user@host:port`, `[v6]:port`), as
/// `Authority::host` and `Authority::port_u16` read them (a bracketed IPv6 host keeps its
/// brackets; a port that is not a number is none). In one pass: those two scanned the text
/// again each, about 700 instructions a request (issue 19).
fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()),
        _ => (host_port, None),
    }
}

/// Which lanes a request uses: those of its origin, `scheme://host:port`, or for an endpoint
/// with an outbound proxy of its own, `<origin> via <endpoint>`. A request's key is compared
/// with the written keys piece by piece ([`LaneKey::is`]) and written out only for a new one:
/// formatting it for every request cost about 2,000 instructions with the hashing (issue 19).
struct LaneKey<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
    via: Option<&'a str>,
}

impl<'a> LaneKey<'a> {
    /// The key of a request to `uri` made for the endpoint `via` names, if it has a proxy.
    fn of(uri: &'a Uri, via: Option<&'a str>) -> Self {
        let scheme = uri.scheme_str().unwrap_or("http");
        let (host, port) = uri
            .authority()
            .map_or(("", None), |authority| host_and_port(authority.as_str()));
        LaneKey {
            scheme,
            host,
            port: port.unwrap_or(if scheme == "https" { 443 } else { 80 }),
            via,
        }
    }

    /// The `Host` header of a request to this origin: `host`, with `:port` unless it is the
    /// scheme's default (as hyper-util's client writes it).
    fn host_header(&self) -> HeaderValue {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        let host = if self.port == default_port {
            HeaderValue::from_str(self.host)
        } else {
            HeaderValue::try_from(format!("{}:{}", self.host, self.port))
        };
        // The host came out of a parsed `Uri`, whose characters are all valid in a header; the
        // fallback is for the type checker, not for any URI that parses.
        host.unwrap_or_else(|_| HeaderValue::from_static("localhost"))
    }

    /// `scheme://host:port`.
    fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// The key written out.
    fn written(&self) -> String {
        match self.via {
            Some(endpoint) => format!("{} via {endpoint}", self.origin()),
            None => self.origin(),
        }
    }

    /// Whether `written` is this key written out ([`LaneKey::written`]).
    fn is(&self, written: &str) -> bool {
        let Some(rest) = written
            .strip_prefix(self.scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .and_then(|rest| rest.strip_prefix(self.host))
            .and_then(|rest| rest.strip_prefix(':'))
        else {
            return false;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (port, rest) = rest.split_at(digits);
        if port.parse::<u16>() != Ok(self.port) {
            return false;
        }
        match self.via {
            Some(endpoint) => rest.strip_prefix(" via ") == Some(endpoint),
            None => rest.is_empty(),
        }
    }
}

/// `scheme://host:port` of an endpoint's base URL.
fn origin_of_url(url: &url::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// One lane: a pooled hyper-util client with HTTP/2 keep-alive PINGs.
fn lane_client(
    upstream: &UpstreamConfig,
    connector: HttpsConnector<UpstreamConnector>,
) -> LaneClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256);
    let interval = upstream.keep_alive_interval.get();
    if !interval.is_zero() {
        builder
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(upstream.keep_alive_timeout.get())
            .http2_keep_alive_while_idle(true);
    }
    builder.build(connector)
}

/// Whether a reload from `old` to `new` can keep the running client (same proxy, trust and
/// connection settings, same endpoint origins with their own CA).
pub fn same_client_settings(old: &Config, new: &Config) -> bool {
    serde_json::to_value(&old.proxy).ok() == serde_json::to_value(&new.proxy).ok()
        && serde_json::to_value(&old.endpoint_proxies).ok()
            == serde_json::to_value(&new.endpoint_proxies).ok()
        && old.tls == new.tls
        && old.upstream == new.upstream
        && endpoint_trust(old) == endpoint_trust(new)
}

/// Origins with their own `ca_file`.
fn endpoint_trust(config: &Config) -> Vec<(String, PathBuf)> {
    config
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let ca_file = config.endpoint_ca_files.get(&endpoint.name)?;
            Some((origin_of_url(&endpoint.url), ca_file.clone()))
        })
        .collect()
}

/// Builds the shared client from `proxy.*`, `tls.*`, `upstream.*` and `endpoints[].ca_file`.
pub fn build_upstream_client(
    config: &Config,
    connect_timeout: Duration,
) -> Result<UpstreamClient, ClientBuildError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    tcp.set_connect_timeout(Some(connect_timeout));
    let base =
        UpstreamConnector::new(&config.proxy, tcp.clone(), "proxy.ca_file").map_err(|error| {
            match error {
                ProxyProblem::Build(error) => error,
                ProxyProblem::Unusable(message) => ClientBuildError::Proxy(message),
            }
        })?;
    let mut global_cas = Vec::new();
    if let Some(path) = &config.tls.ca_file {
        global_cas = read_ca_file(path, "tls.ca_file")?;
    }
    let https = |extra: &[CertificateDer<'static>],
                 connector: UpstreamConnector|
     -> Result<_, ClientBuildError> {
        let tls = tls_config(global_cas.iter().chain(extra).cloned())?;
        Ok(HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector))
    };
    let mut origin_connectors = HashMap::new();
    let mut origin_cas: HashMap<String, Vec<CertificateDer<'static>>> = HashMap::new();
    for (index, endpoint) in config.endpoints.iter().enumerate() {
        let Some(path) = config.endpoint_ca_files.get(&endpoint.name) else {
            continue;
        };
        let own = read_ca_file(path, &format!("endpoints[{index}].ca_file"))?;
        let origin = origin_of_url(&endpoint.url);
        origin_connectors.insert(origin.clone(), https(&own, base.clone())?);
        origin_cas.insert(origin, own);
    }
    let mut endpoint_connectors = HashMap::new();
    for (index, endpoint) in config.endpoints.iter().enumerate() {
        let Some(proxy) = config.endpoint_proxies.get(&endpoint.name) else {
            continue;
        };
        let ca_key = format!("endpoints[{index}].proxy.ca_file");
        let connector =
            UpstreamConnector::new(proxy, tcp.clone(), &ca_key).map_err(|error| match error {
                ProxyProblem::Build(error) => error,
                ProxyProblem::Unusable(message) => {
                    ClientBuildError::EndpointProxy { index, message }
                }
            })?;
        let extra = origin_cas
            .get(&origin_of_url(&endpoint.url))
            .map_or(&[][..], Vec::as_slice);
        endpoint_connectors.insert(endpoint.name.clone(), https(extra, connector)?);
    }
    Ok(UpstreamClient {
        shared: Arc::new(ClientShared {
            default_connector: https(&[], base.clone())?,
            origin_connectors,
            endpoint_connectors,
            upstream: config.upstream.clone(),
            lane_sets: (0..=config.server.per_core_runtimes().unwrap_or(0))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            in_task_sets: (0..=config.server.per_core_runtimes().unwrap_or(0))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }),
    })
}

/// The certificates of a PEM file.
fn read_ca_file(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    use rustls::pki_types::pem::PemObject as _;
    let unusable = |error: &dyn std::fmt::Display| ClientBuildError::CaFile {
        key: key.to_string(),
        message: format!("`{}`: {error}", path.display()),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(&e))?
        .map(|certificate| certificate.map_err(|e| unusable(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err(unusable(&"no PEM certificate in the file"));
    }
    // Checked here so a certificate rustls refuses is reported with its key and file.
    let mut check = rustls::RootCertStore::empty();
    for certificate in &certificates {
        check.add(certificate.clone()).map_err(|e| unusable(&e))?;
    }
    Ok(certificates)
}

/// The system's certificate store, read once per process (reading it costs milliseconds and
/// it does not change under a running forwarder). Unreadable entries are skipped with a warning:
/// the bundled roots still apply.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!("system certificate store: {error}");
        }
        loaded.certs
    })
}

/// A rustls configuration trusting the system store, the webpki roots and `extra`.
fn tls_config(
    extra: impl Iterator<Item = CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // System stores hold the odd certificate rustls rejects; those are skipped.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    for certificate in extra {
        // Already accepted once by `read_ca_file`, which reports problems with key and file.
        let _ = roots.add(certificate);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Proxy(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Opens the TCP (or proxied) connection under TLS.
#[derive(Clone)]
pub enum UpstreamConnector {
    /// Straight to the upstream.
    Direct(HttpConnector),
    /// Through an HTTP proxy with `CONNECT`.
    HttpTunnel(Tunnel<HttpConnector>),
    /// Through an HTTP proxy reached over TLS, with `CONNECT`.
    HttpsTunnel(Tunnel<HttpsConnector<HttpConnector>>),
    /// Through a SOCKS5 proxy (host names resolved by the proxy).
    Socks5(SocksV5<HttpConnector>),
}

/// Why a connector for an outbound proxy could not be made.
enum ProxyProblem {
    /// A problem already naming its key (a `ca_file`).
    Build(ClientBuildError),
    /// The proxy settings are unusable: the message, for the caller to name the key.
    Unusable(String),
}

impl From<ClientBuildError> for ProxyProblem {
    fn from(error: ClientBuildError) -> Self {
        match error {
            ClientBuildError::Proxy(message) => ProxyProblem::Unusable(message),
            other => ProxyProblem::Build(other),
        }
    }
}

impl UpstreamConnector {
    /// The connector for `proxy` (direct when it is not enabled); `ca_key` names its
    /// `ca_file` in errors.
    fn new(
        proxy: &OutboundProxyConfig,
        tcp: HttpConnector,
        ca_key: &str,
    ) -> Result<Self, ProxyProblem> {
        if !proxy.enabled {
            return Ok(UpstreamConnector::Direct(tcp));
        }
        let (proxy_uri, username, password) = proxy_target(proxy)?;
        Ok(match proxy.kind {
            OutboundProxyType::Http => UpstreamConnector::HttpTunnel(with_basic_auth(
                Tunnel::new(proxy_uri, tcp),
                username,
                password,
            )?),
            OutboundProxyType::Https => {
                let tls = HttpsConnectorBuilder::new()
                    .with_tls_config(proxy_tls_config(proxy.ca_file.as_deref(), ca_key)?)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                UpstreamConnector::HttpsTunnel(with_basic_auth(
                    Tunnel::new(proxy_uri, tls),
                    username,
                    password,
                )?)
            }
            OutboundProxyType::Socks5 => {
                let socks = SocksV5::new(proxy_uri, tcp).local_dns(false);
                match (username, password) {
                    (Some(user), Some(pass)) => {
                        UpstreamConnector::Socks5(socks.with_auth(user, pass))
                    }
                    _ => UpstreamConnector::Socks5(socks),
                }
            }
        })
    }
}

/// TLS to an HTTPS proxy: the system store, the webpki roots and the CAs of its `ca_file`
/// (named `ca_key` in errors).
fn proxy_tls_config(
    ca_file: Option<&Path>,
    ca_key: &str,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let extra = match ca_file {
        Some(path) => read_ca_file(path, ca_key)?,
        None => Vec::new(),
    };
    tls_config(extra.into_iter())
}

fn with_basic_auth<C>(
    tunnel: Tunnel<C>,
    username: Option<String>,
    password: Option<String>,
) -> Result<Tunnel<C>, ClientBuildError> {
    let Some(user) = username else {
        return Ok(tunnel);
    };
    let credentials = format!("{user}:{}", password.unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
        ClientBuildError::Proxy("username or password is not a valid header value".into())
    })?;
    value.set_sensitive(true);
    Ok(tunnel.with_auth(value))
}

/// The proxy's address and credentials from `proxy.url` (which may carry `user:pass@`) or
/// `proxy.host` + `proxy.port`.
fn proxy_target(
    proxy: &OutboundProxyConfig,
) -> Result<(Uri, Option<String>, Option<String>), ClientBuildError> {
    let scheme = match proxy.kind {
        OutboundProxyType::Http => "http",
        OutboundProxyType::Https => "https",
        OutboundProxyType::Socks5 => "socks5",
    };
    let (host, port, mut username, mut password) = if let Some(raw) = proxy.url.as_deref() {
        let parsed = url::Url::parse(raw);
        // Errors name the URL with its password masked.
        let raw = &ccf_config::mask_url_password(raw);
        let parsed = parsed
            .map_err(|error| ClientBuildError::Proxy(format!("url `{raw}` is invalid: {error}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| ClientBuildError::Proxy(format!("url `{raw}` has no host")))?
            .to_string();
        let port = parsed
            .port_or_known_default()
            .or(match proxy.kind {
                OutboundProxyType::Socks5 => Some(1080),
                _ => None,
            })
            .ok_or_else(|| ClientBuildError::Proxy(format!("url `{raw}` has no port")))?;
        let username = (!parsed.username().is_empty()).then(|| parsed.username().to_string());
        let password = parsed.password().map(str::to_string);
        (host, port, username, password)
    } else {
        let host = proxy
            .host
            .clone()
            .ok_or_else(|| ClientBuildError::Proxy("set `url`, or `host` and `port`".into()))?;
        let port = proxy
            .port
            .ok_or_else(|| ClientBuildError::Proxy("set `url`, or `host` and `port`".into()))?;
        (host, port, None, None)
    };
    if let Some(user) = &proxy.username {
        username = Some(user.clone());
    }
    if let Some(pass) = &proxy.password {
        password = Some(pass.expose().to_string());
    }
    let uri: Uri = format!("{scheme}://{host}:{port}")
        .parse()
        .map_err(|_| ClientBuildError::Proxy(format!("`{host}:{port}` is not a valid address")))?;
    Ok((uri, username, password))
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = BoxedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<BoxedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every variant wraps an HttpConnector, which is always ready; readiness is checked
        // again inside `call` by the wrapped service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match self {
            UpstreamConnector::Direct(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::HttpTunnel(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::HttpsTunnel(connector) => {
                let future = connector.call(destination);
                Box::pin(async move { Ok(BoxedIo::new(future.await?)) })
            }
            UpstreamConnector::Socks5(connector) => {
                let future = connector.call(destination);
                Box::pin(async move {
                    Ok(BoxedIo::new(
                        future.await.map_err(|e| Box::new(e) as BoxError)?,
                    ))
                })
            }
        }
    }
}

/// Anything an upstream connection can be.
trait UpstreamIo: Read + Write + Connection + Unpin + Send + Sync {}
impl<T: Read + Write + Connection + Unpin + Send + Sync> UpstreamIo for T {}

/// A type-erased upstream connection.
pub struct BoxedIo(Box<dyn UpstreamIo>);

impl BoxedIo {
    fn new(io: impl Read + Write + Connection + Unpin + Send + Sync + 'static) -> Self {
        BoxedIo(Box::new(io))
    }
}

impl Connection for BoxedIo {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl Read for BoxedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl Write for BoxedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }
}

mod in_task;

#[cfg(test)]
mod tests;
