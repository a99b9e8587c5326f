//! The admin API cannot be turned against its operator: a DNS-rebound page (a foreign `Host`)
//! gets nothing, the dashboard's files included; every custom endpoint header value is masked;
//! short secrets are swept; the usage export is swept like every other answer.

mod support;

use http::{Method, StatusCode};
use serde_json::Value;
use support::{config_yaml, Harness, Options, UPSTREAM_TOKEN};

/// A short custom header value whose name does not look secret.
const RELAY_PASS: &str = "abc";

async fn harness() -> Harness {
    let upstream = ccf_testkit::MockUpstream::start().await;
    let options = Options::default();
    let yaml = config_yaml(&options, &upstream.url())
        .replacen(
            "web:\n  enabled: true\n",
            "web:\n  enabled: true\n  allowed_hosts: [dash.lan]\n",
            1,
        )
        .replace(
            "    headers:\n",
            &format!("    headers:\n      X-Relay-Pass: {RELAY_PASS}\n"),
        );
    let config = ccf_config::Config::from_yaml_str(&yaml).expect("valid config");
    assert_eq!(config.web.allowed_hosts, vec!["dash.lan".to_string()]);
    Harness::start_config(upstream, config, options).await
}

fn paused(groups: &Value) -> bool {
    groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|group| group["name"] == "main")
        .map(|group| group["manually_paused"] == true)
        .unwrap_or_else(|| panic!("no group main in {groups}"))
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_every_route() {
    let harness = harness().await;
    let port = harness.admin.port();
    let host = format!("evil.example:{port}");
    let origin = format!("http://{host}");
    let headers = [("host", host.as_str()), ("origin", origin.as_str())];
    for (method, path) in [
        (Method::GET, "/api/v1/config"),
        (Method::GET, "/api/v1/usage/export"),
        (Method::POST, "/api/v1/groups/main/pause"),
        (Method::GET, "/"),
    ] {
        let answer = harness
            .admin_request(method.clone(), path, &headers, "")
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            answer.text()
        );
        assert_eq!(answer.error_code(), "forbidden_host", "{method} {path}");
    }
    assert!(!paused(&harness.get("/api/v1/groups").await.json()));
}

#[tokio::test]
async fn loopback_names_ip_literals_and_allowed_hosts_are_served() {
    let harness = harness().await;
    let port = harness.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("dash.lan:{port}"),
    ] {
        let origin = format!("http://{host}");
        let headers = [("host", host.as_str()), ("origin", origin.as_str())];
        let config = harness
            .admin_request(Method::GET, "/api/v1/config", &headers, "")
            .await;
        assert_eq!(config.status, StatusCode::OK, "{host}: {}", config.text());
        let page = harness.admin_request(Method::GET, "/", &headers, "").await;
        assert_eq!(page.status, StatusCode::OK, "{host}");
        let pause = harness
            .admin_request(Method::POST, "/api/v1/groups/main/pause", &headers, "")
            .await;
        assert_eq!(pause.status, StatusCode::OK, "{host}: {}", pause.text());
        assert!(paused(&harness.get("/api/v1/groups").await.json()));
        let resume = harness
            .admin_request(Method::POST, "/api/v1/groups/main/resume", &headers, "")
            .await;
        assert_eq!(resume.status, StatusCode::OK, "{host}: {}", resume.text());
    }
}

/// Every string value anywhere in `value`.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| strings(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_custom_header_value_is_masked_short_ones_included() {
    let harness = harness().await;
    let config = harness.get("/api/v1/config").await.json();
    let headers = &config["endpoints"][0]["headers"];
    assert_eq!(headers["X-Relay-Pass"], "***", "{headers}");
    assert_eq!(headers["X-Custom-Authorization"], "sk-u***", "{headers}");
    for path in ["/api/v1/config", "/api/v1/endpoints"] {
        let mut values = Vec::new();
        strings(&harness.get(path).await.json(), &mut values);
        assert!(
            !values.iter().any(|value| value == RELAY_PASS),
            "{path} shows the relay password: {values:?}"
        );
    }
}

#[tokio::test]
async fn the_usage_export_is_swept() {
    let harness = harness().await;
    // Both endpoints (one mock upstream) fail, so the last answer's text is stored verbatim.
    for _ in 0..2 {
        harness.upstream.enqueue(ccf_testkit::Reply::error(
            500,
            "api_error",
            format!("upstream rejected key {UPSTREAM_TOKEN} for this account"),
        ));
    }
    harness.send_message(false).await;
    harness.flush().await;
    let rows = harness.get("/api/v1/usage/export?format=json").await.json();
    let reasons: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["last_failure_reason"].as_str().map(str::to_string))
        .filter(|reason| reason.contains("upstream rejected key"))
        .collect();
    assert!(!reasons.is_empty(), "the failure reason is stored: {rows}");
    for format in ["json", "csv"] {
        let export = harness
            .get(&format!("/api/v1/usage/export?format={format}"))
            .await;
        assert_eq!(export.status, StatusCode::OK);
        let text = export.text();
        assert!(text.contains("upstream rejected key"), "{format}: {text}");
        assert!(
            !text.contains(UPSTREAM_TOKEN),
            "{format} export leaks the token: {text}"
        );
    }
}
