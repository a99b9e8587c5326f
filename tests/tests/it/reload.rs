//! Hot reload end to end: the real app started from a configuration file, the file edited (or a
//! reload asked for through the admin API) while it serves, against mock upstreams.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ccf_app::reload::ConfigSource;
use ccf_app::App;
use ccf_config::ConfigLoader;
use ccf_testkit::{MockUpstream, Reply};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::json;
use support::{admin_request, eventually, messages_sent, Forwarder, WAIT};

/// Fast retries, one attempt per endpoint, so failures move on at once.
/// Session affinity is off: it keeps a conversation on its endpoint on purpose, and these tests
/// send the same conversation again and again.
const FAST: &str = "retry:\n  max_attempts: 1\n  base_delay: 10ms\n  max_delay: 20ms\nrouting:\n  session_affinity: off\n";

fn request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "reload me"}],
    })
}

/// One endpoint list item.
fn endpoint(name: &str, upstream: &MockUpstream, extra: &str) -> String {
    support::endpoint_yaml(name, &upstream.url(), extra)
}

/// A whole configuration file: loopback on a free port, no usage tracking.
fn file_text(settings: &str, endpoints: &[String]) -> String {
    let settings = if settings.contains("server:\n") {
        settings.replacen("server:\n", "server:\n  host: 127.0.0.1\n  port: 0\n", 1)
    } else {
        format!("server:\n  host: 127.0.0.1\n  port: 0\n{settings}")
    };
    format!(
        "usage_tracking:\n  enabled: false\n{settings}\nendpoints:\n{}",
        endpoints.concat()
    )
}

/// Replaces the file the way most editors do: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("yaml.tmp");
    std::fs::write(&temporary, text).expect("write the new configuration");
    std::fs::rename(&temporary, path).expect("rename it over the old one");
}

/// A configuration file in its own folder, and the app started from it with hot reload on.
struct Reloadable {
    _folder: tempfile::TempDir,
    path: PathBuf,
    forwarder: Forwarder,
}

impl Reloadable {
    /// Starts from `text`; `primary` is the `-p` override; `watch` turns the file watcher on.
    async fn start(text: &str, primary: Option<&str>, watch: bool) -> Reloadable {
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("config.yaml");
        std::fs::write(&path, text).expect("write the configuration");
        let loader = ConfigLoader::new()
            .file(&path)
            .env_vars(Vec::<(String, String)>::new());
        let mut source = ConfigSource::new(loader)
            .primary_endpoint(primary.map(str::to_string))
            .poll_interval(Duration::from_millis(20));
        if watch {
            source = source.watch(&path);
        }
        let config = source.load().expect("the first configuration is valid");
        let app = App::bind(config)
            .await
            .expect("app binds on loopback")
            .with_reload(source);
        Reloadable {
            _folder: folder,
            path,
            forwarder: Forwarder::run_app(app),
        }
    }

    fn engine(&self) -> &ccf_proxy::Forwarder {
        &self.forwarder.engine
    }

    /// Waits until a reload attempt satisfies `check`.
    async fn reloaded(&self, what: &str, check: impl Fn(&ccf_proxy::ReloadStatus) -> bool) {
        let engine = self.engine().clone();
        eventually(what, move || {
            engine.reload_status().is_some_and(|s| check(&s))
        })
        .await;
    }

    /// Sends one non-streaming request and asserts it succeeded.
    async fn ok_request(&self) {
        let answer = self.forwarder.messages(request(false), &[]).await;
        assert_eq!(answer.status.as_u16(), 200, "{:?}", answer.body);
    }

    /// `method path` on the admin API, with the JSON answer.
    async fn admin(&self, method: Method, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = admin_request(&self.forwarder, method, path).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|error| {
            panic!("admin body is not JSON ({error}): {body:?}");
        });
        (status.as_u16(), json)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_adds_an_endpoint_that_then_gets_traffic() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let app = Reloadable::start(
        &file_text(FAST, &[endpoint("a", &a, "priority: 2")]),
        None,
        true,
    )
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&a), 1);

    replace_file(
        &app.path,
        &file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 2"),
                endpoint("b", &b, "priority: 1"),
            ],
        ),
    );
    app.reloaded("the file reload adding b", |status| {
        status.ok
            && status
                .applied
                .iter()
                .any(|change| change == "endpoint `b` added")
    })
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1, "the new, preferred endpoint serves");
    assert_eq!(messages_sent(&a), 1);
    let status = app.engine().reload_status().expect("a reload happened");
    assert_eq!(status.trigger, "file");
    assert!(status.restart_required.is_empty(), "{status:?}");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_stops_its_traffic() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let app = Reloadable::start(
        &file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 1"),
                endpoint("b", &b, "priority: 2"),
            ],
        ),
        None,
        true,
    )
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&a), 1);

    replace_file(
        &app.path,
        &file_text(FAST, &[endpoint("b", &b, "priority: 2")]),
    );
    app.reloaded("the reload removing a", |status| {
        status.ok
            && status
                .applied
                .iter()
                .any(|change| change == "endpoint `a` removed")
    })
    .await;
    for _ in 0..3 {
        app.ok_request().await;
    }
    assert_eq!(messages_sent(&a), 1, "a gets nothing after its removal");
    assert_eq!(messages_sent(&b), 3);
    assert!(app.engine().endpoints().iter().all(|view| view.name != "a"));
    assert!(app.engine().health().snapshot().get("a").is_none());
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_change_in_the_file_moves_traffic() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let app = Reloadable::start(
        &file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 1"),
                endpoint("b", &b, "priority: 2"),
            ],
        ),
        None,
        true,
    )
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&a), 1);

    // Written in place this time (no rename).
    std::fs::write(
        &app.path,
        file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 3"),
                endpoint("b", &b, "priority: 2"),
            ],
        ),
    )
    .expect("rewrite the configuration");
    app.reloaded("the priority reload", |status| {
        status.ok
            && status
                .applied
                .iter()
                .any(|change| change == "endpoint `a` changed (priority)")
    })
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1, "b is preferred now");
    assert_eq!(messages_sent(&a), 1);
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_during_a_reload_finishes_intact() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    // About two seconds of stream: it is still flowing when the reload happens.
    a.set_default(
        Reply::sse()
            .deltas(100)
            .chunk_delay(Duration::from_millis(20)),
    );
    let app = Reloadable::start(&file_text(FAST, &[endpoint("a", &a, "")]), None, true).await;

    let client = app.forwarder.client.clone();
    let base = app.forwarder.base.clone();
    let streaming = tokio::spawn(async move {
        let request = Request::post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from(request(true).to_string())))
            .expect("valid request");
        let response = client.request(request).await.expect("answer headers");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        (status, body)
    });
    a.wait_for_requests(1, WAIT).await;

    // `a` is removed and `b` added, with other retry and streaming settings.
    replace_file(
        &app.path,
        &file_text(
            "retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 20ms\nstreaming:\n  max_idle_time: 60s\n",
            &[endpoint("b", &b, "")],
        ),
    );
    app.reloaded("the reload replacing a with b", |status| status.ok)
        .await;
    assert!(
        !streaming.is_finished(),
        "the stream must still be running during the reload for this test to mean anything"
    );

    let (status, body) = tokio::time::timeout(WAIT, streaming)
        .await
        .expect("the stream ends in time")
        .expect("the streaming task");
    assert_eq!(status, 200);
    let body = body.expect("the stream was not cut");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        text.matches("event: content_block_delta").count(),
        100,
        "every delta arrived"
    );
    assert!(text.contains("message_stop"), "the stream ended normally");

    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1, "new requests use the new endpoint");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_cooling_down_groups_stay_so_across_a_reload() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let c = MockUpstream::start().await;
    a.set_default(Reply::error(500, "api_error", "down"));
    let endpoints = |extra_c: &str| {
        vec![
            endpoint("a", &a, "group: main\ngroup-priority: 1"),
            endpoint("b", &b, "group: backup\ngroup-priority: 2"),
            endpoint(
                "c",
                &c,
                &format!("group: third\ngroup-priority: 3\n{extra_c}"),
            ),
        ]
    };
    let app = Reloadable::start(&file_text(FAST, &endpoints("")), None, true).await;
    // `main` fails and cools down; the request moves on to `backup`.
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1);
    app.engine()
        .pause_group("third", None)
        .expect("third can be paused");
    let group = |name: &str| {
        app.engine()
            .groups()
            .into_iter()
            .find(|group| group.name == name)
            .expect("group exists")
    };
    assert!(group("main").in_cooldown);
    assert!(group("third").paused);

    replace_file(&app.path, &file_text(FAST, &endpoints("timeout: 120s")));
    app.reloaded("the reload changing c", |status| status.ok)
        .await;
    assert!(group("main").in_cooldown, "the cooldown survived");
    assert!(group("third").paused, "the pause survived");
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 2, "backup still serves");
    assert_eq!(messages_sent(&a), 1, "main is still out of rotation");
    assert_eq!(messages_sent(&c), 0, "third is still paused");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_endpoint_override_survives_a_reload() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let c = MockUpstream::start().await;
    let app = Reloadable::start(
        &file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 1"),
                endpoint("b", &b, "priority: 2"),
            ],
        ),
        Some("b"),
        true,
    )
    .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1, "-p b wins over the file");

    replace_file(
        &app.path,
        &file_text(
            FAST,
            &[
                endpoint("a", &a, "priority: 1"),
                endpoint("b", &b, "priority: 2"),
                endpoint("c", &c, "priority: 1"),
            ],
        ),
    );
    app.reloaded("the reload adding c", |status| status.ok)
        .await;
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 2, "-p b still wins after the reload");
    assert_eq!(messages_sent(&a) + messages_sent(&c), 0);
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_rejected_and_the_old_configuration_keeps_serving() {
    let a = MockUpstream::start().await;
    let web = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";
    let app = Reloadable::start(
        &file_text(&format!("{FAST}{web}"), &[endpoint("a", &a, "")]),
        None,
        true,
    )
    .await;
    app.ok_request().await;

    // A retry count that is not a number.
    replace_file(
        &app.path,
        &file_text(
            &format!("retry:\n  max_attempts: many\n{web}"),
            &[endpoint("a", &a, "")],
        ),
    );
    app.reloaded("the rejected reload", |status| !status.ok)
        .await;
    let status = app.engine().reload_status().expect("a reload happened");
    let error = status.error.expect("the reason");
    assert!(error.contains("config.yaml"), "names the file: {error}");
    assert!(error.contains("max_attempts"), "names the key: {error}");

    app.ok_request().await;
    assert_eq!(messages_sent(&a), 2, "the old configuration still serves");
    assert_eq!(app.engine().config().retry.max_attempts, 1);

    let (code, json) = app.admin(Method::GET, "/api/v1/config/status").await;
    assert_eq!(code, 200);
    assert_eq!(json["reload_enabled"], true);
    assert_eq!(json["last_reload"]["ok"], false);
    assert!(json["last_reload"]["error"]
        .as_str()
        .is_some_and(|error| error.contains("max_attempts")));
    let (_, status) = app.admin(Method::GET, "/api/v1/status").await;
    assert_eq!(status["config_reload"]["ok"], false, "{status}");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_port_change_is_reported_as_needing_a_restart() {
    let a = MockUpstream::start().await;
    let app = Reloadable::start(&file_text(FAST, &[endpoint("a", &a, "")]), None, true).await;
    replace_file(
        &app.path,
        &file_text(FAST, &[endpoint("a", &a, "")]).replacen("  port: 0\n", "  port: 1\n", 1),
    );
    app.reloaded("the reload changing the port", |_| true).await;
    let status = app.engine().reload_status().expect("a reload happened");
    assert!(status.ok, "{status:?}");
    assert_eq!(
        status.restart_required,
        ["server.host/server.port (proxy listen address)"]
    );
    assert!(status.applied.is_empty(), "{status:?}");
    // Still served where it listens; the running configuration keeps the bound port's setting.
    app.ok_request().await;
    assert_eq!(app.engine().config().server.port, 0);
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_config_reload_applies_the_file_or_answers_why_not() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let web = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";
    let settings = format!("{FAST}{web}");
    // No file watcher: only the API reloads.
    let app = Reloadable::start(
        &file_text(&settings, &[endpoint("a", &a, "priority: 2")]),
        None,
        false,
    )
    .await;
    replace_file(
        &app.path,
        &file_text(
            &settings,
            &[
                endpoint("a", &a, "priority: 2"),
                endpoint("b", &b, "priority: 1"),
            ],
        ),
    );
    let (code, json) = app.admin(Method::POST, "/api/v1/config/reload").await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["reload"]["trigger"], "api");
    assert_eq!(json["reload"]["applied"], json!(["endpoint `b` added"]));
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 1);

    replace_file(&app.path, "endpoints: [");
    let (code, json) = app.admin(Method::POST, "/api/v1/config/reload").await;
    assert_eq!(code, 422, "{json}");
    app.ok_request().await;
    assert_eq!(messages_sent(&b), 2, "the old configuration still serves");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_open_the_proxy_without_auth_is_rejected() {
    let a = MockUpstream::start().await;
    let app = Reloadable::start(&file_text(FAST, &[endpoint("a", &a, "")]), None, true).await;
    replace_file(
        &app.path,
        &file_text(FAST, &[endpoint("a", &a, "")]).replacen("127.0.0.1", "0.0.0.0", 1),
    );
    app.reloaded("the rejected reload", |status| !status.ok)
        .await;
    let error = app
        .engine()
        .reload_status()
        .and_then(|status| status.error)
        .expect("the reason");
    assert!(error.contains("auth.enabled"), "{error}");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_reports_every_reload() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let web = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";
    let settings = format!("{FAST}{web}");
    let app = Reloadable::start(&file_text(&settings, &[endpoint("a", &a, "")]), None, true).await;
    let admin = app.forwarder.admin.clone().expect("web.enabled");
    let request = Request::get(format!("{admin}/api/v1/stream?events=log,status"))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let response = tokio::time::timeout(WAIT, app.forwarder.client.request(request))
        .await
        .expect("stream opens in time")
        .expect("stream opens");
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.into_body();

    replace_file(
        &app.path,
        &file_text(&settings, &[endpoint("a", &a, ""), endpoint("b", &b, "")]),
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(seen.contains("configuration reloaded (file)") && seen.contains("\"config_reload\":{"))
    {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no reload event on the stream; got:\n{seen}"))
            .expect("the stream stays open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.contains("endpoint `b` added"), "{seen}");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_routes_again_under_the_new_configuration() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let settings = format!(
        "{FAST}request_suspend:\n  enabled: true\n  timeout: 30s\n  max_suspended_requests: 5\n"
    );
    let app = Reloadable::start(
        &file_text(&settings, &[endpoint("a", &a, "group: main")]),
        None,
        true,
    )
    .await;
    app.engine()
        .pause_group("main", None)
        .expect("main can be paused");
    let client = app.forwarder.client.clone();
    let base = app.forwarder.base.clone();
    let held = tokio::spawn(async move {
        let request = Request::post(format!("{base}/v1/messages"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(request(false).to_string())))
            .expect("valid request");
        client
            .request(request)
            .await
            .map(|response| response.status())
    });
    let engine = app.engine().clone();
    eventually("the request is held", move || {
        engine.held_requests().len() == 1
    })
    .await;

    replace_file(
        &app.path,
        &file_text(
            &settings,
            &[
                endpoint("a", &a, "group: main"),
                endpoint("b", &b, "group: spare\ngroup-priority: 2"),
            ],
        ),
    );
    let status = tokio::time::timeout(WAIT, held)
        .await
        .expect("the held request is answered in time")
        .expect("the request task")
        .expect("an answer");
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        messages_sent(&b),
        1,
        "served by the endpoint the reload added"
    );
    assert_eq!(messages_sent(&a), 0, "main is still paused");
    app.forwarder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_prices_apply_to_live_costs_after_a_reload() {
    let upstream = MockUpstream::start().await;
    let web = "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n";
    let prices = |input: f64| {
        format!(
            "usage_tracking:\n  model_pricing:\n    claude-sonnet-4-5:\n      input: {input}\n      output: 0\n      cache_creation: 0\n      cache_read: 0\n"
        )
    };
    // The prices go into the `usage_tracking:` section `file_text` writes (tracking stays off).
    let text = |input: f64| {
        file_text(&format!("{FAST}{web}"), &[endpoint("a", &upstream, "")]).replacen(
            "usage_tracking:\n",
            &prices(input),
            1,
        )
    };
    let app = Reloadable::start(&text(3.0), None, false).await;
    let before = app.forwarder.messages(request(false), &[]).await;
    assert_eq!(before.status.as_u16(), 200);
    let cost_before = live_cost(&app, &before).await;
    assert!(cost_before > 0.0, "priced: {cost_before}");

    replace_file(&app.path, &text(6.0));
    let (code, json) = app.admin(Method::POST, "/api/v1/config/reload").await;
    assert_eq!(code, 200, "{json}");
    let after = app.forwarder.messages(request(false), &[]).await;
    let cost_after = live_cost(&app, &after).await;
    assert!(
        (cost_after - 2.0 * cost_before).abs() < 1e-9,
        "doubled input price doubles the cost: {cost_before} -> {cost_after}"
    );
    app.forwarder.stop().await;
}

/// The cost the admin API shows for the (finished, in-memory) request that gave `answer`.
async fn live_cost(app: &Reloadable, answer: &support::Answer) -> f64 {
    let id = answer
        .header("x-ccf-request-id")
        .expect("request id header");
    app.forwarder.settled().await;
    let (code, json) = app
        .admin(Method::GET, &format!("/api/v1/requests/{id}"))
        .await;
    assert_eq!(code, 200, "{json}");
    json["data"]["total_cost_usd"]
        .as_f64()
        .expect("a finished request has a cost")
}
