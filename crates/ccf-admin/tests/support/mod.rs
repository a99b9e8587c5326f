//! A forwarder (with a real SQLite usage store and recorder), its proxy listener and its admin
//! listener on loopback, in front of a mock upstream; plus a small HTTP client.

#![allow(dead_code)]

pub mod shape;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_admin::AdminState;
use ccf_config::Config;
use ccf_lifecycle::{LifecycleEvent, Outcome};
use ccf_proxy::{Forwarder, RequestObserver, ServeOptions};
use ccf_store::{Pricing, Recorder, RecorderHandle, RecorderSettings, UsageRecord, UsageStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};
use ccf_testkit::MockUpstream;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(10);

pub const UPSTREAM_TOKEN: &str = "sk-upstream-secret-token-0123456789";
pub const UPSTREAM_KEY: &str = "sk-ant-api-key-secret-abcdefghijk";
pub const INBOUND_TOKEN: &str = "inbound-client-token-987654321";
pub const ADMIN_TOKEN: &str = "admin-web-token-1122334455";
pub const PROXY_PASSWORD: &str = "outbound-proxy-password-xyz";

/// Feeds the recorder from the forwarder: every snapshot, and the final outcome.
struct RecorderBridge {
    recorder: RecorderHandle,
}

impl RequestObserver for RecorderBridge {
    fn on_event(&self, event: &LifecycleEvent) {
        self.recorder
            .record(UsageRecord::from_request(event.record(), None));
    }

    /// The metric prices the outcome with the cost model installed below.
    fn on_outcome(&self, outcome: &Outcome) -> Option<f64> {
        self.recorder
            .record(UsageRecord::from_request(outcome.record(), None));
        None
    }
}

/// What the application (ccf-app, the composition root) installs on the engine's metrics when it
/// runs the admin API: the cost model and, with usage tracking, the recorder's health.
fn install_store_metrics(forwarder: &Forwarder, config: &Config, recorder: Option<RecorderHandle>) {
    let pricing = Pricing::from_config(&config.usage_tracking);
    forwarder
        .metrics()
        .set_cost_model(Arc::new(move |model, usage| {
            pricing.cost(model, usage).total_usd()
        }));
    if let Some(recorder) = recorder {
        forwarder.metrics().set_usage_health(Arc::new(move || {
            let last_error = recorder.last_error();
            ccf_proxy::monitoring::UsageHealth {
                healthy: last_error.is_none(),
                backlog: recorder.backlog(),
                journal_records: recorder.journal_records(),
                journal_bytes: recorder.journal_bytes(),
                last_error: last_error.map(|error| error.message),
            }
        }));
    }
}

/// How to build the harness.
pub struct Options {
    /// Extra top-level YAML.
    pub settings: String,
    /// Usage tracking on (SQLite on a temp file).
    pub tracking: bool,
    /// Live stream heartbeat.
    pub heartbeat: Duration,
    /// Endpoint groups: (name, group, group_priority).
    pub endpoints: Vec<(&'static str, &'static str, u32)>,
    /// Lifetime of usage-export download tickets.
    pub ticket_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settings: String::new(),
            tracking: true,
            heartbeat: Duration::from_secs(15),
            endpoints: vec![("primary", "main", 1), ("backup", "spare", 2)],
            ticket_ttl: ccf_admin::DEFAULT_TICKET_TTL,
        }
    }
}

pub struct Harness {
    pub upstream: MockUpstream,
    pub forwarder: Forwarder,
    pub proxy: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub store: Option<Arc<dyn UsageStore>>,
    pub recorder: Option<RecorderHandle>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    stop: Vec<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.text()))
            .to_string()
    }
}

pub fn config_yaml(options: &Options, upstream: &str) -> String {
    let mut endpoints = String::new();
    for (name, group, group_priority) in &options.endpoints {
        endpoints.push_str(&format!(
            "  - name: {name}\n    url: {upstream}\n    group: {group}\n    group-priority: {group_priority}\n    token: {UPSTREAM_TOKEN}\n    api-key: {UPSTREAM_KEY}\n    headers:\n      X-Custom-Authorization: {UPSTREAM_TOKEN}\n"
        ));
    }
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\nweb:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\nretry:\n  max_attempts: 1\n  base_delay: 10ms\n  max_delay: 20ms\nhealth:\n  check_interval: 1h\nusage_tracking:\n  enabled: {}\n  model_pricing:\n    claude-sonnet-4-5:\n      input: 3.0\n      output: 15.0\n      cache_creation: 3.75\n      cache_read: 0.3\n{}\nendpoints:\n{endpoints}",
        options.tracking, options.settings
    )
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Harness {
        let upstream = MockUpstream::start().await;
        let yaml = config_yaml(&options, &upstream.url());
        let config = match Config::from_yaml_str(&yaml) {
            Ok(config) => config,
            Err(error) => panic!("invalid test config: {error}\n{yaml}"),
        };
        Self::start_config(upstream, config, options).await
    }

    pub async fn start_config(upstream: MockUpstream, config: Config, options: Options) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Arc::new(config);
        let (store, recorder) = if options.tracking {
            // As the application opens it: usage days in the configured `timezone`.
            let options = SqliteOptions {
                day_zone: ccf_store::DayZone::from_config(config.timezone.as_deref()),
                ..SqliteOptions::default()
            };
            let sqlite = SqliteStore::open(dir.path().join("usage.db"), options)
                .await
                .expect("open sqlite");
            sqlite.migrate().await.expect("migrate");
            let store: Arc<dyn UsageStore> = Arc::new(sqlite);
            let recorder = Recorder::spawn(
                Arc::clone(&store),
                RecorderSettings {
                    flush_interval: Duration::from_millis(50),
                    ..RecorderSettings::from_config(&config.usage_tracking)
                },
                Pricing::from_config(&config.usage_tracking),
            );
            (Some(store), Some(recorder))
        } else {
            (None, None)
        };
        let observer = recorder
            .clone()
            .map(|recorder| Arc::new(RecorderBridge { recorder }) as Arc<dyn RequestObserver>);
        let forwarder =
            Forwarder::build_observed(Arc::clone(&config), observer).expect("forwarder builds");
        install_store_metrics(&forwarder, &config, recorder.clone());
        let mut stop = Vec::new();

        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = proxy_listener.local_addr().expect("proxy addr");
        let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
        stop.push(proxy_stop);
        let serving = forwarder.clone();
        tokio::spawn(async move {
            ccf_proxy::serve(
                proxy_listener,
                serving,
                ServeOptions {
                    header_read_timeout: Duration::from_secs(10),
                    drain_timeout: Duration::from_secs(1),
                },
                async move {
                    let _ = proxy_stopped.await;
                },
            )
            .await;
        });

        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let mut state = AdminState::new(forwarder.clone())
            .with_heartbeat(options.heartbeat)
            .with_download_ticket_ttl(options.ticket_ttl);
        if let (Some(store), Some(recorder)) = (&store, &recorder) {
            state = state
                .with_store(Arc::clone(store))
                .with_recorder(recorder.clone());
        }
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        stop.push(admin_stop);
        tokio::spawn(async move {
            let result = ccf_admin::serve(admin_listener, state, async move {
                let _ = admin_stopped.await;
            })
            .await;
            if let Err(error) = result {
                panic!("admin serve failed: {error}");
            }
        });
        Harness {
            upstream,
            forwarder,
            proxy,
            admin,
            store,
            recorder,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop,
            _dir: dir,
        }
    }

    /// Sends a request to the admin listener.
    pub async fn admin_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("admin answers in time")
            .expect("admin answers");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.admin_request(Method::GET, path, &[], "").await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.admin_request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    /// Sends one Messages API request through the proxy; returns its status and request id.
    pub async fn send_message(&self, stream: bool) -> (StatusCode, String) {
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        });
        self.send_message_with(&body, &[]).await
    }

    /// Sends `body` to `/v1/messages` through the proxy with extra `headers`; returns the status
    /// and the request id.
    pub async fn send_message_with(
        &self,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut request = Request::post(format!("http://{}/v1/messages", self.proxy))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("proxy answers in time")
            .expect("proxy answers");
        let status = response.status();
        let id = response
            .headers()
            .get("x-ccf-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let _ = response.into_body().collect().await;
        (status, id)
    }

    /// Waits until the recorder has written everything.
    pub async fn flush(&self) {
        if let Some(recorder) = &self.recorder {
            recorder.flush().await;
        }
    }

    /// Polls `check` until it returns `Some`, or panics after [`WAIT`].
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Reads an SSE stream from the admin listener, frame by frame.
pub struct SseReader {
    body: hyper::body::Incoming,
    buffer: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// One SSE frame: its event name (None for comments), data and the raw text.
#[derive(Debug, Clone)]
pub struct SseFrame {
    pub event: Option<String>,
    pub data: String,
    pub raw: String,
}

impl SseFrame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

impl SseReader {
    pub async fn open(
        harness: &Harness,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> SseReader {
        let mut request = Request::get(format!("http://{}{path_and_query}", harness.admin));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let response = tokio::time::timeout(WAIT, harness.client.request(request))
            .await
            .expect("stream opens in time")
            .expect("stream opens");
        let (parts, body) = response.into_parts();
        SseReader {
            body,
            buffer: String::new(),
            status: parts.status,
            headers: parts.headers,
        }
    }

    /// The next frame (comment frames included), waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<SseFrame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer[..end].to_string();
                self.buffer.drain(..end + 2);
                let mut event = None;
                let mut data = Vec::new();
                for line in raw.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = Some(name.to_string());
                    } else if let Some(text) = line.strip_prefix("data: ") {
                        data.push(text.to_string());
                    }
                }
                return Some(SseFrame {
                    event,
                    data: data.join("\n"),
                    raw,
                });
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            let frame = frame.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// Frames until one matches, within `limit`.
    pub async fn until(
        &mut self,
        limit: Duration,
        mut matches: impl FnMut(&SseFrame) -> bool,
    ) -> Option<(SseFrame, Vec<SseFrame>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next(left).await?;
            if matches(&frame) {
                return Some((frame, seen));
            }
            seen.push(frame);
        }
    }
}

/// A link to the other instances (`cluster.redis_url`) whose status the test sets, installed with
/// `Forwarder::set_cluster_link`; it counts what the engine publishes, as a real link does.
pub struct FakeClusterLink {
    status: std::sync::Mutex<ccf_proxy::cluster::ClusterStatus>,
}

impl FakeClusterLink {
    pub fn new(status: ccf_proxy::cluster::ClusterStatus) -> Arc<FakeClusterLink> {
        Arc::new(FakeClusterLink {
            status: std::sync::Mutex::new(status),
        })
    }

    /// Changes the status the link reports.
    pub fn set(&self, change: impl FnOnce(&mut ccf_proxy::cluster::ClusterStatus)) {
        change(&mut self.status.lock().expect("status lock"));
    }
}

impl ccf_proxy::cluster::ClusterLink for FakeClusterLink {
    fn publish(&self, _update: ccf_proxy::cluster::SharedUpdate) {
        self.status.lock().expect("status lock").published += 1;
    }

    fn key_counters(&self) -> Option<Arc<dyn ccf_proxy::cluster::SharedKeyCounters>> {
        None
    }

    fn status(&self) -> ccf_proxy::cluster::ClusterStatus {
        self.status.lock().expect("status lock").clone()
    }

    fn note_fallback(&self) {
        self.status.lock().expect("status lock").fallbacks += 1;
    }
}
