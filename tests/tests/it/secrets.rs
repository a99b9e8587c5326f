//! Secrets never appear unmasked: the real app runs with known credentials (endpoint token and
//! api-key, inbound auth tokens, the admin token, a database password, outbound proxy
//! credentials) while every log line at TRACE level is captured; then successful and failing
//! requests are made and every place a person or a program can read is searched: the logs, every
//! admin API GET answer, the monitoring routes, error bodies, `Debug` of the configuration and of
//! the engine, startup errors, a panic message and every tab of the terminal UI.
//!
//! Every credential carries a start marker, `SECRET` and an end marker (`ccf_testkit::secret_markers`),
//! and the check is that none of them appears anywhere: a leaked prefix longer than the four
//! characters a masked value shows, a leaked middle and a leaked suffix are all caught. The real
//! binary's console and file logs are checked by `bins/cc-forwarder/tests/secrets_logging.rs`.

use crate::support;
use ccf_testkit::secret_markers as credentials;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ccf_app::{App, AppError};
use ccf_config::Config;
use ccf_store::StoreError;
use ccf_testkit::{MockUpstream, Reply};
use credentials::{
    assert_clean, find_leak, markers, CREDENTIALS, DATABASE_PASSWORD, ENDPOINT_API_KEY,
    ENDPOINT_TOKEN, ENDPOINT_URL_PASSWORD, INBOUND_ALICE, INBOUND_LEGACY, PROXY_PASSWORD,
    PROXY_URL_PASSWORD, REJECTED_TOKEN, RELAY_HEADER, WEBHOOK_SECRET, WEBHOOK_URL_PASSWORD,
    WEB_TOKEN, WRONG_ALICE, WRONG_LEGACY, WRONG_WEB_TOKEN,
};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::json;
use support::{endpoint_yaml, Forwarder, Outcomes, WAIT};

fn main_config(ok_url: &str, rejecting_url: &str, database_path: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n\
         logging:\n  level: debug\n\
         web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n  auth_token: {WEB_TOKEN}\n\
         auth:\n  enabled: true\n  token: {INBOUND_LEGACY}\n  tokens:\n    - name: alice\n      token: {INBOUND_ALICE}\n\
         proxy:\n  enabled: false\n  url: http://bob:{PROXY_URL_PASSWORD}@127.0.0.1:3128\n  username: bob\n  password: {PROXY_PASSWORD}\n\
         usage_tracking:\n  enabled: true\n  flush_interval: 50ms\n  database:\n    type: sqlite\n    path: {database_path}\n    password: {DATABASE_PASSWORD}\n\
         webhooks:\n  - url: http://hook:{WEBHOOK_URL_PASSWORD}@127.0.0.1:1/hook?token={WEBHOOK_URL_PASSWORD}\n    events: [endpoint_unhealthy, group_cooldown, group_switched]\n    secret: {WEBHOOK_SECRET}\n\
         endpoints:\n{}{}",
        endpoint_yaml(
            "primary",
            ok_url,
            &format!("token: {ENDPOINT_TOKEN}\napi-key: {ENDPOINT_API_KEY}\ngroup: main\ngroup-priority: 1\nheaders:\n  x-custom: plain-value\n  x-relay-token: {RELAY_HEADER}"),
        ),
        endpoint_yaml(
            "rejecting",
            rejecting_url,
            &format!("token: {REJECTED_TOKEN}\ngroup: spare\ngroup-priority: 2"),
        ),
    )
}

async fn admin_get(forwarder: &Forwarder, path: &str, token: Option<&str>) -> (u16, String) {
    let admin = forwarder.admin.clone().expect("admin API on");
    let mut request = hyper::Request::get(format!("{admin}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, forwarder.client.request(request))
        .await
        .expect("admin answers in time")
        .expect("admin answers");
    let status = response.status().as_u16();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("admin body in time")
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn message(model: &str) -> serde_json::Value {
    json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_api_errors_debug_output_or_the_tui() {
    let capture = crate::log_capture::Capture::start();
    let ok_upstream = MockUpstream::start().await;
    let rejecting_upstream = MockUpstream::start().await;
    rejecting_upstream.set_default(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    let folder = tempfile::tempdir().expect("temp dir");
    let database = folder.path().join("usage.db");
    // The rejecting endpoint's URL carries credentials in its user info.
    let rejecting_url = rejecting_upstream.url().replacen(
        "http://",
        &format!("http://relay:{ENDPOINT_URL_PASSWORD}@"),
        1,
    );
    let yaml = main_config(
        &ok_upstream.url(),
        &rejecting_url,
        &database.display().to_string(),
    );
    let config = Config::from_yaml_str(&yaml).expect("valid config");
    assert_clean("Debug of the configuration", &format!("{config:?}"));
    assert_clean("pretty Debug of the configuration", &format!("{config:#?}"));
    let panic_message =
        std::panic::catch_unwind(|| panic!("bad state: {config:?}")).expect_err("panicked");
    let panic_text = panic_message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(panic_text.contains("bad state"));
    assert_clean("a panic message formatting the configuration", &panic_text);

    let outcomes = Arc::new(Outcomes::default());
    let forwarder = Forwarder::start_observed(config.clone(), Some(outcomes.clone())).await;
    assert_clean("Debug of the engine", &format!("{:?}", forwarder.engine));
    assert_clean(
        "Debug of the engine's configuration",
        &format!("{:?}", forwarder.engine.config()),
    );

    // Successful requests, JSON and streamed, with each inbound credential form.
    let mut error_bodies = Vec::new();
    for (headers, stream) in [
        ([("x-api-key", INBOUND_ALICE)], false),
        (
            [("authorization", &*format!("Bearer {INBOUND_LEGACY}"))],
            true,
        ),
    ] {
        let mut body = message("claude-sonnet-4-5");
        body["stream"] = json!(stream);
        let answer = forwarder.messages(body, &headers).await;
        assert_eq!(answer.status, 200);
        assert_clean(
            "a relayed answer",
            &String::from_utf8_lossy(&answer.bytes()),
        );
    }
    // Wrong, malformed and missing inbound credentials (the wrong one looks like a real one).
    for headers in [
        vec![("x-api-key", WRONG_ALICE)],
        vec![("authorization", &*format!("Bearer {WRONG_LEGACY}"))],
        vec![("authorization", &*format!("Basic {INBOUND_LEGACY}"))],
        vec![],
    ] {
        let answer = forwarder
            .messages(message("claude-sonnet-4-5"), &headers)
            .await;
        assert_eq!(answer.status, 401);
        error_bodies.push(String::from_utf8_lossy(&answer.bytes()).into_owned());
    }
    // The upstream refuses its credentials: the main group is paused so the rejecting endpoint
    // answers (401, relayed verbatim; the endpoint is marked as failing authentication).
    forwarder
        .engine
        .pause_group("main", None)
        .expect("pause main");
    let rejected = forwarder
        .messages(
            message("claude-sonnet-4-5"),
            &[("x-api-key", INBOUND_ALICE)],
        )
        .await;
    assert_eq!(rejected.status, 401);
    error_bodies.push(String::from_utf8_lossy(&rejected.bytes()).into_owned());
    // A body that is not JSON.
    let not_json = forwarder
        .send(
            Method::POST,
            "/v1/messages/count_tokens",
            &[
                ("x-api-key", INBOUND_ALICE),
                ("content-type", "application/json"),
            ],
            "{not json",
        )
        .await;
    error_bodies.push(String::from_utf8_lossy(&not_json.bytes()).into_owned());
    forwarder.engine.resume_group("main").expect("resume main");
    for body in &error_bodies {
        assert_clean("an error body", body);
    }

    // Monitoring routes.
    for path in [
        "/health",
        "/health/detailed",
        "/health/usage-tracker",
        "/metrics",
    ] {
        let answer = forwarder
            .send(Method::GET, path, &[("x-api-key", INBOUND_ALICE)], "")
            .await;
        assert_eq!(answer.status, 200, "{path}");
        assert_clean(path, &String::from_utf8_lossy(&answer.bytes()));
    }

    // Every admin API GET route (the live stream excepted: it never ends).
    let records = outcomes.wait_for(3).await;
    if let Some(tracking) = &forwarder.usage {
        tracking.recorder.flush().await;
    }
    let request_id = records[0].id.to_string();
    let (status, _) = admin_get(&forwarder, "/api/v1/config", None).await;
    assert_eq!(status, 401, "the admin API asks for its token");
    let (status, body) = admin_get(&forwarder, "/api/v1/config", Some(WRONG_WEB_TOKEN)).await;
    assert_eq!(status, 401);
    assert_clean("an admin API error", &body);
    for path in [
        "/api/v1/status".to_string(),
        "/api/v1/endpoints".to_string(),
        "/api/v1/endpoints/performance".to_string(),
        "/api/v1/groups".to_string(),
        "/api/v1/routing/honesty".to_string(),
        "/api/v1/routing/affinity".to_string(),
        "/api/v1/routing/quota".to_string(),
        "/api/v1/connections".to_string(),
        "/api/v1/requests".to_string(),
        format!("/api/v1/requests/{request_id}"),
        "/api/v1/usage/requests".to_string(),
        "/api/v1/usage/stats".to_string(),
        "/api/v1/usage/export?format=csv".to_string(),
        "/api/v1/usage/export?format=json".to_string(),
        "/api/v1/usage/summary".to_string(),
        "/api/v1/usage/models".to_string(),
        "/api/v1/chart/request-trends".to_string(),
        "/api/v1/chart/response-times".to_string(),
        "/api/v1/chart/endpoint-health".to_string(),
        "/api/v1/chart/connection-activity".to_string(),
        "/api/v1/chart/endpoint-costs".to_string(),
        "/api/v1/chart/suspended-trends".to_string(),
        "/api/v1/tokens/usage".to_string(),
        "/api/v1/metrics/history".to_string(),
        "/api/v1/config".to_string(),
        "/api/v1/webhooks".to_string(),
        "/api/v1/openapi.json".to_string(),
        "/".to_string(),
    ] {
        let (status, body) = admin_get(&forwarder, &path, Some(WEB_TOKEN)).await;
        assert!(status < 500 || status == 503, "{path}: {status} {body}");
        assert_clean(&format!("GET {path}"), &body);
    }

    // Every tab of the terminal UI, with the requests fed in.
    let logs = ccf_tui::LogBuffer::new(1000);
    for line in capture.text().lines().rev().take(500) {
        logs.push(ccf_tui::LogLevel::Info, line);
    }
    let now = Instant::now();
    let mut tui = ccf_tui::App::new(
        forwarder.engine.config(),
        ccf_tui::AppInfo {
            base_url: "http://127.0.0.1:8087".to_string(),
            version: "0.1.0".to_string(),
        },
        logs,
        now,
    );
    tui.refresh(
        ccf_tui::Snapshot::capture(&forwarder.engine),
        now,
        SystemTime::now(),
    );
    for record in &records {
        tui.on_request(record);
    }
    for (index, _) in ccf_tui::Tab::ALL.iter().enumerate() {
        let digit = char::from(b'1' + u8::try_from(index).expect("few tabs"));
        tui.handle_key(ccf_tui::crossterm::event::KeyEvent::new(
            ccf_tui::crossterm::event::KeyCode::Char(digit),
            ccf_tui::crossterm::event::KeyModifiers::NONE,
        ));
        let screen = render(&tui, 160, 60);
        assert_clean(&format!("TUI tab {}", index + 1), &screen);
    }

    forwarder.stop().await;
    assert_clean("the logs", &capture.text());
    assert!(
        capture.text().contains("request started"),
        "the logs were captured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_outbound_proxy_and_database_logins_do_not_leak_their_passwords() {
    let capture = crate::log_capture::Capture::start();
    let upstream = MockUpstream::start().await;
    // The outbound proxy refuses connections: every upstream attempt fails through it.
    let yaml = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\nretry:\n  max_attempts: 1\n\
         proxy:\n  enabled: true\n  url: http://bob:{PROXY_URL_PASSWORD}@127.0.0.1:1\n  password: {PROXY_PASSWORD}\n\
         usage_tracking:\n  enabled: false\nendpoints:\n{}",
        endpoint_yaml("primary", &upstream.url(), &format!("token: {ENDPOINT_TOKEN}"))
    );
    let config = Config::from_yaml_str(&yaml).expect("valid config");
    assert_clean(
        "Debug of the proxy configuration",
        &format!("{:?}", config.proxy),
    );
    let forwarder = Forwarder::start(config).await;
    let answer = forwarder.messages(message("claude-sonnet-4-5"), &[]).await;
    assert!(answer.status.is_server_error(), "{}", answer.status);
    assert_clean(
        "a proxy failure answer",
        &String::from_utf8_lossy(&answer.bytes()),
    );
    let detailed = forwarder
        .send(Method::GET, "/health/detailed", &[], "")
        .await;
    assert_clean(
        "/health/detailed",
        &String::from_utf8_lossy(&detailed.bytes()),
    );
    forwarder.stop().await;

    // A MySQL login that fails: the start is refused; the error says the database is unavailable
    // and carries the server's refusal (which names the user), never the password.
    let yaml = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n\
         usage_tracking:\n  enabled: true\n  database:\n    type: mysql\n    host: 127.0.0.1\n    port: 3306\n    database: test\n    username: ccf_no_such_user\n    password: {DATABASE_PASSWORD}\n\
         endpoints:\n{}",
        endpoint_yaml("primary", &upstream.url(), "")
    );
    let config = Config::from_yaml_str(&yaml).expect("valid config");
    assert_clean(
        "Debug of the database configuration",
        &format!("{config:?}"),
    );
    let error = App::bind(config)
        .await
        .expect_err("a MySQL login with a wrong user and password refuses the start");
    assert!(
        matches!(error, AppError::Store(StoreError::Unavailable { .. })),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "usage store: usage database unavailable: mysql database unavailable"
    );
    let chain = error_chain(&error);
    assert!(
        chain.contains("Access denied for user 'ccf_no_such_user'"),
        "the server's refusal is kept as the cause: {chain}"
    );
    assert!(
        chain.contains("using password: YES"),
        "the password was sent, so it is the one thing not to print: {chain}"
    );
    assert_clean("the start error", &error.to_string());
    assert_clean("the start error with its causes", &chain);
    assert_clean("Debug of the start error", &format!("{error:?}"));
    assert_clean("pretty Debug of the start error", &format!("{error:#?}"));
    assert_clean("the logs", &capture.text());
}

/// `error` and its causes, one per line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut lines = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        lines.push(cause.to_string());
        source = cause.source();
    }
    lines.join("\n")
}

/// The check itself can fail: a prefix one character longer than a masked value shows, the
/// middle, and a suffix of every credential are each found, while the masked forms pass.
#[test]
fn the_markers_catch_a_leaked_prefix_middle_or_suffix_but_not_a_masked_value() {
    for (what, value) in CREDENTIALS {
        let [start, end] = markers(value);
        assert!(
            value.starts_with(start) && value.ends_with(end) && value.contains("SECRET"),
            "{what}"
        );
        let leaked_prefix = &value[..credentials::START_MARKER_CHARS];
        let leaked_suffix = &value[value.len() - credentials::END_MARKER_CHARS..];
        for leaked in [leaked_prefix, "SECRET", leaked_suffix] {
            let found = find_leak(&format!("log line: {leaked} …")).map(|leak| leak.credentials);
            assert!(
                found.as_ref().is_some_and(|names| names.contains(what)),
                "{what}: `{leaked}` is not caught ({found:?})"
            );
        }
        let masked = ccf_types::mask_secret(value);
        assert!(
            find_leak(&masked).is_none(),
            "{what}: the masked form {masked} must pass"
        );
        // The URL mask of the admin API and of `Debug`.
        let url = format!("http://bob:{value}@127.0.0.1:3128/");
        assert!(
            find_leak(&ccf_config::mask_url_password(&url)).is_none(),
            "{what}"
        );
    }
    // Every credential has its own end marker, so a failure names the one that leaked.
    let mut ends: Vec<&str> = CREDENTIALS
        .iter()
        .map(|(_, value)| markers(value)[1])
        .collect();
    ends.sort_unstable();
    ends.dedup();
    assert_eq!(ends.len(), CREDENTIALS.len());
}

/// The terminal UI drawn into a `TestBackend`, as text.
fn render(app: &ccf_tui::App, width: u16, height: u16) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .expect("test terminal");
    terminal.draw(|frame| app.render(frame)).expect("draw");
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
