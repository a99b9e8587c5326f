//! Shared helpers of the end-to-end tests: start a mock upstream and the real app on loopback,
//! send requests with a plain hyper client, and stop everything when the test ends.

pub mod mariadb;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ccf_app::App;
use ccf_config::Config;
use ccf_testkit::MockUpstream;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound for anything a test waits for, long enough that only a hang reaches it (also
/// on a loaded two-core machine); never used as synchronisation by sleeping.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running forwarder and the client to talk to it.
pub struct Forwarder {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The running engine, for operator actions and state.
    pub engine: ccf_proxy::Forwarder,
    /// `http://127.0.0.1:PORT` of the admin API, when `web.enabled`.
    pub admin: Option<String>,
    /// Plain HTTP client (no proxy-specific behaviour).
    pub client: Client<HttpConnector, Full<Bytes>>,
    /// The usage store and recorder, when `usage_tracking.enabled`.
    pub usage: Option<ccf_app::usage::UsageTracking>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// YAML for one endpoint named `name` at `url` with extra indented keys.
pub fn endpoint_yaml(name: &str, url: &str, extra: &str) -> String {
    let mut yaml = format!("  - name: {name}\n    url: {url}\n");
    for line in extra.lines().filter(|line| !line.trim().is_empty()) {
        yaml.push_str("    ");
        yaml.push_str(line.trim_end());
        yaml.push('\n');
    }
    yaml
}

/// A full config: loopback on a free port, `settings` (top-level YAML) and `endpoints` (YAML list
/// items from [`endpoint_yaml`]).
pub fn config(settings: &str, endpoints: &[String]) -> Config {
    config_with_usage("  enabled: false\n", settings, endpoints)
}

/// [`config`] with `usage_tracking` (the YAML lines under `usage_tracking:`) instead of usage
/// tracking off.
pub fn config_with_usage(usage_tracking: &str, settings: &str, endpoints: &[String]) -> Config {
    // Loopback on a free port, merged into the test's own `server:` section when it has one.
    const SERVER: &str = "server:\n  host: 127.0.0.1\n  port: 0\n";
    let settings = if settings.contains("server:\n") {
        settings.replacen("server:\n", SERVER, 1)
    } else {
        format!("{SERVER}{settings}")
    };
    let yaml = format!(
        "usage_tracking:\n{usage_tracking}{settings}\nendpoints:\n{}",
        endpoints.concat()
    );
    match Config::from_yaml_str(&yaml) {
        Ok(config) => config,
        Err(error) => panic!("test config is invalid: {error}\n{yaml}"),
    }
}

impl Forwarder {
    /// Binds and runs the app for `config`.
    pub async fn start(config: Config) -> Forwarder {
        Self::start_observed(config, None).await
    }

    /// Binds and runs the app for `config`, reporting requests to `observer`.
    pub async fn start_observed(
        config: Config,
        observer: Option<Arc<dyn ccf_proxy::RequestObserver>>,
    ) -> Forwarder {
        let app = App::bind_observed(config, observer)
            .await
            .expect("app binds on loopback");
        Self::run_app(app)
    }

    /// Runs an app the test bound itself (e.g. with hot reload turned on).
    pub fn run_app(app: App) -> Forwarder {
        let base = format!("http://{}", app.proxy_addr());
        let engine = app.forwarder().clone();
        let admin = app.admin_addr().map(|address| format!("http://{address}"));
        let usage = app.usage().cloned();
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run(async move {
                    let _ = shutdown_signal.await;
                })
                .await;
        });
        Forwarder {
            base,
            engine,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
            usage,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Forwarder in front of one mock upstream endpoint named `mock`.
    pub async fn in_front_of(
        upstream: &MockUpstream,
        settings: &str,
        endpoint_extra: &str,
    ) -> Forwarder {
        Forwarder::start(config(
            settings,
            &[endpoint_yaml("mock", &upstream.url(), endpoint_extra)],
        ))
        .await
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("valid request");
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("forwarder answers in time")
            .expect("forwarder answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(WAIT, response.into_body().collect())
            .await
            .expect("body arrives in time")
            .map(|collected| collected.to_bytes());
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `POST /v1/messages` with a JSON body and the usual Claude headers.
    pub async fn messages(
        &self,
        body: serde_json::Value,
        extra_headers: &[(&str, &str)],
    ) -> Answer {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ];
        headers.extend_from_slice(extra_headers);
        self.send(Method::POST, "/v1/messages", &headers, body.to_string())
            .await
    }

    /// Sends `POST /v1/messages` with `body` on a raw TCP connection and returns the connection
    /// unread, so a test can read part of the answer or hang up whenever it likes.
    pub async fn raw_request(&self, body: &str) -> tokio::net::TcpStream {
        let addr = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .expect("write");
        stream
    }

    /// Asks the app to shut down and waits until it has drained and stopped.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT * 4, task).await;
        }
    }

    /// Waits until no request is in flight: every answer read so far has had its bookkeeping
    /// (usage, health, honesty, the outcome) done. That runs once the answer's last bytes are
    /// written, so it may follow the client's read by a moment.
    pub async fn settled(&self) {
        let engine = self.engine.clone();
        eventually("the requests' bookkeeping", || {
            engine.metrics().requests_in_flight() == 0
        })
        .await;
    }

    /// Stops the app and waits until it has stopped for good: the listener closed, every
    /// connection drained (so every request has reached its one outcome and handed it to the
    /// observers) and, with usage tracking on, every row written. Nothing more can be observed or
    /// recorded once this returns, so a test may count outcomes and rows exactly ("exactly one",
    /// "none") without pausing for stragglers. Panics when the app does not stop within the
    /// deadline, a request is still in flight after the drain, or the recorder kept a backlog.
    /// Returns the usage store and recorder (when tracking is on) so the rows can still be read.
    pub async fn stop_settled(mut self) -> Option<ccf_app::usage::UsageTracking> {
        let usage = self.usage.clone();
        self.begin_stop();
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(WAIT * 4, task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("the app task failed: {error}"),
                Err(_) => panic!("the app did not drain and stop in time"),
            }
        }
        // The drain has a timeout of its own (`server.shutdown_timeout`): a connection it gave
        // up on would still hold its request.
        assert_eq!(
            requests_in_flight(&self.engine).await,
            0,
            "a request is still in flight after the app stopped"
        );
        if let Some(tracking) = &usage {
            assert_eq!(
                tracking.recorder.backlog(),
                0,
                "the recorder writes everything before the app stops"
            );
        }
        usage
    }

    /// Signals shutdown without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits for the app task to end.
    pub async fn wait_stopped(&mut self, timeout: Duration) -> bool {
        match self.task.take() {
            Some(task) => tokio::time::timeout(timeout, task).await.is_ok(),
            None => true,
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A complete answer.
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, or the error that cut it.
    pub body: Result<Bytes, hyper::Error>,
}

impl Answer {
    /// The body bytes; panics when the body was cut.
    pub fn bytes(&self) -> Bytes {
        match &self.body {
            Ok(bytes) => bytes.clone(),
            Err(error) => panic!("body was cut: {error}"),
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes()).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.bytes())
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts an Anthropic-format error with this status and error type.
    pub fn assert_anthropic_error(&self, status: u16, error_type: &str) {
        assert_eq!(self.status.as_u16(), status, "status");
        let json = self.json();
        assert_eq!(json["type"], "error", "{json}");
        assert_eq!(json["error"]["type"], error_type, "{json}");
        assert!(json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

/// An address on loopback that refuses connections: port 1 is below the ephemeral range, so no
/// test's listener can ever take it (a bound-then-released port could be reused by a parallel
/// test's mock).
pub async fn closed_port_url() -> String {
    "http://127.0.0.1:1".to_string()
}

/// The engine's `ccf_requests_in_flight` gauge, read from its `/metrics` route in process (so it
/// also works once the listener is closed). The gauge counts a request from admission until its
/// answer is fully relayed or dropped, after its outcome was recorded.
pub async fn requests_in_flight(engine: &ccf_proxy::Forwarder) -> i64 {
    let request = Request::get("/metrics")
        .body(Full::new(Bytes::new()))
        .expect("metrics request");
    let response = engine.handle(request).await;
    assert_eq!(response.status(), StatusCode::OK, "GET /metrics");
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => panic!("metrics body: {error}"),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("ccf_requests_in_flight "))
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no ccf_requests_in_flight gauge in:\n{text}"))
}

/// `POST /v1/messages` requests the upstream received (health probes excluded).
pub fn messages_sent(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|request| request.method == "POST" && request.path.ends_with("/v1/messages"))
        .count()
}

/// `method path` on the forwarder's admin API (`web.enabled`): the status and the whole body.
pub async fn admin_request(
    forwarder: &Forwarder,
    method: Method,
    path: &str,
) -> (StatusCode, Bytes) {
    let admin = forwarder.admin.as_deref().expect("web.enabled");
    let request = Request::builder()
        .method(method)
        .uri(format!("{admin}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, forwarder.client.request(request))
        .await
        .expect("admin answers in time")
        .expect("admin answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (status, body)
}

/// `GET` on the admin API, as JSON; asserts a 200.
pub async fn admin_get(forwarder: &Forwarder, path: &str) -> serde_json::Value {
    let (status, body) = admin_request(forwarder, Method::GET, path).await;
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&body).expect("admin JSON")
}

/// Polls `check` until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Collects every request outcome (and counts the intermediate events) for assertions.
#[derive(Default)]
pub struct Outcomes {
    finished: Mutex<Vec<ccf_lifecycle::RequestRecord>>,
    events: Mutex<Vec<ccf_lifecycle::RequestRecord>>,
}

impl ccf_proxy::RequestObserver for Outcomes {
    fn on_event(&self, event: &ccf_lifecycle::LifecycleEvent) {
        self.events
            .lock()
            .expect("events lock")
            .push(event.record().clone());
    }

    fn on_outcome(&self, outcome: &ccf_lifecycle::Outcome) -> Option<f64> {
        self.finished
            .lock()
            .expect("outcomes lock")
            .push(outcome.record().clone());
        None
    }
}

impl Outcomes {
    /// Every outcome so far.
    pub fn all(&self) -> Vec<ccf_lifecycle::RequestRecord> {
        self.finished.lock().expect("outcomes lock").clone()
    }

    /// Waits until `count` outcomes exist and returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<ccf_lifecycle::RequestRecord> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let all = self.all();
            if all.len() >= count {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} outcomes arrived",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Intermediate snapshots seen for a request.
    pub fn events_for(&self, id: ccf_lifecycle::RequestId) -> Vec<ccf_lifecycle::RequestRecord> {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|record| record.id == id)
            .cloned()
            .collect()
    }
}
