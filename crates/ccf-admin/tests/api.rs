//! The admin API on loopback against a real forwarder, SQLite store and recorder, and a mock
//! upstream: every route's shape, errors, auth, masking and the Origin check.

mod support;

use std::time::Duration;

use ccf_config::Config;
use ccf_testkit::MockUpstream;
use http::{Method, StatusCode};
use serde_json::Value;
use support::{
    config_yaml, Harness, Options, ADMIN_TOKEN, INBOUND_TOKEN, PROXY_PASSWORD, UPSTREAM_KEY,
    UPSTREAM_TOKEN,
};

const SECRETS: [&str; 5] = [
    UPSTREAM_TOKEN,
    UPSTREAM_KEY,
    INBOUND_TOKEN,
    ADMIN_TOKEN,
    PROXY_PASSWORD,
];

/// One request with the mock's usage (12 in, 6 out, 5 cache writes, 7 cache reads) at the
/// harness's Sonnet prices (3 / 15 / 3.75 / 0.30 USD per million tokens), in nano-USD:
/// 12 x 3000 + 6 x 15000 + 5 x 3750 + 7 x 300.
const ONE_REQUEST_NANO_USD: i64 = 146_850;
/// [`ONE_REQUEST_NANO_USD`] in USD, as the API shows it.
const ONE_REQUEST_USD: f64 = ONE_REQUEST_NANO_USD as f64 / 1e9;
/// Two such requests, in USD.
const TWO_REQUESTS_USD: f64 = (2 * ONE_REQUEST_NANO_USD) as f64 / 1e9;

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "secret {secret} leaked in {text}");
    }
}

#[tokio::test]
async fn status_reports_live_state_with_version_active_group_and_uptime() {
    let harness = Harness::start().await;
    let answer = harness.get("/api/v1/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("application/json")
    );
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    let status = answer.json();
    assert_eq!(status["status"], "running");
    assert_eq!(status["version"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime"].is_string());
    assert!(status["uptime_seconds"].is_u64());
    assert!(status["start_time"].as_str().is_some_and(|t| t.len() == 19));
    assert_eq!(status["auto_switch_enabled"], true);
    assert_eq!(status["endpoints"]["total"], 2);
    assert_eq!(status["usage_tracking"]["enabled"], true);
    assert_eq!(status["usage_tracking"]["backend"], "sqlite");
    assert_eq!(status["admin_auth_enabled"], false);
    assert_eq!(status["dashboard_built"], ccf_admin::dashboard_built());
    // The active group is known once routing has run.
    harness.send_message(false).await;
    let status = harness.get("/api/v1/status").await.json();
    assert_eq!(status["active_group"], "main");
    assert_no_secret(&harness.get("/api/v1/status").await.text());
}

/// The password of the shared Redis in the cluster tests' link address.
const REDIS_PASSWORD: &str = "redis-password-5566778899";

#[tokio::test]
async fn status_shows_the_cluster_link_when_one_is_installed_with_its_password_masked() {
    let harness = Harness::start().await;
    let status = harness.get("/api/v1/status").await.json();
    assert_eq!(status["cluster"], Value::Null, "{status}");

    let since = std::time::SystemTime::now();
    let link = support::FakeClusterLink::new(ccf_proxy::cluster::ClusterStatus {
        backend: "redis",
        // A link masks its address; the API masks it again, whatever the link did.
        address: format!("rediss://default:{REDIS_PASSWORD}@redis.internal:6380/0"),
        connected: true,
        since: Some(since),
        ..ccf_proxy::cluster::ClusterStatus::default()
    });
    assert!(harness.forwarder.set_cluster_link(link.clone()));
    let answer = harness.get("/api/v1/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.text().contains(REDIS_PASSWORD), "{}", answer.text());
    let cluster = answer.json()["cluster"].clone();
    assert_eq!(cluster["backend"], "redis");
    assert_eq!(
        cluster["address"],
        "rediss://default:***@redis.internal:6380/0"
    );
    assert_eq!(cluster["connected"], true);
    assert_eq!(
        cluster["since"],
        ccf_proxy::monitoring::rfc3339(since).as_str()
    );
    assert_eq!(cluster["last_error"], Value::Null);
    assert_eq!(cluster["fallbacks"], 0);

    // A served turn is published (the session binding); the link goes down with a reason.
    assert_eq!(harness.send_message(false).await.0, StatusCode::OK);
    let deadline = std::time::Instant::now() + support::WAIT;
    while ccf_proxy::cluster::ClusterLink::status(&*link).published == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing published");
        tokio::task::yield_now().await;
    }
    link.set(|status| {
        status.connected = false;
        status.since = Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_136_171));
        status.last_error = Some("connection refused".to_string());
        status.fallbacks = 4;
        status.reconnects = 1;
        status.applied = 3;
        status.dropped = 2;
    });
    let cluster = harness.get("/api/v1/status").await.json()["cluster"].clone();
    assert_eq!(cluster["connected"], false);
    assert_eq!(cluster["since"], "2025-11-26T05:49:31.000Z");
    assert_eq!(cluster["last_error"], "connection refused");
    assert!(
        cluster["published"].as_u64().is_some_and(|n| n >= 1),
        "{cluster}"
    );
    for (field, value) in [
        ("fallbacks", 4),
        ("reconnects", 1),
        ("applied", 3),
        ("dropped", 2),
    ] {
        assert_eq!(cluster[field], value, "{field} in {cluster}");
    }

    // The live stream's `status` snapshot carries the same object.
    let mut stream = support::SseReader::open(&harness, "/api/v1/stream?events=status", &[]).await;
    loop {
        let frame = stream.next(support::WAIT).await.expect("status frame");
        if frame.event.as_deref() == Some("status") {
            assert_eq!(frame.json()["cluster"], cluster);
            break;
        }
    }
}

#[tokio::test]
async fn the_redis_password_is_masked_in_the_config_and_swept_from_every_answer() {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings: format!(
            "cluster:\n  redis_url: redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0\n  redis_prefix: ccf-test\n  redis_timeout: 80ms\n"
        ),
        ..Options::default()
    };
    let config = Config::from_yaml_str(&config_yaml(&options, &upstream.url())).expect("config");
    let harness = Harness::start_config(upstream, config, options).await;
    let answer = harness.get("/api/v1/config").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.text().contains(REDIS_PASSWORD), "{}", answer.text());
    let cluster = answer.json()["cluster"].clone();
    assert_eq!(cluster["redis_url"], "redis://default:***@127.0.0.1:6379/0");
    assert_eq!(cluster["redis_prefix"], "ccf-test");
    assert_eq!(cluster["redis_timeout"], "80ms");
    // A link that let the password into its last error (it must not): the answer is swept.
    let link = support::FakeClusterLink::new(ccf_proxy::cluster::ClusterStatus {
        backend: "redis",
        address: "redis://default:***@127.0.0.1:6379/0".to_string(),
        last_error: Some(format!(
            "cannot connect to redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0"
        )),
        ..ccf_proxy::cluster::ClusterStatus::default()
    });
    assert!(harness.forwarder.set_cluster_link(link));
    let status = harness.get("/api/v1/status").await;
    assert!(!status.text().contains(REDIS_PASSWORD), "{}", status.text());
    assert!(status.json()["cluster"]["last_error"]
        .as_str()
        .is_some_and(|error| error.starts_with("cannot connect to redis://default:")));
}

#[tokio::test]
async fn config_shows_the_effective_config_with_every_secret_masked() {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings: format!(
            "auth:\n  enabled: true\n  token: {INBOUND_TOKEN}\nproxy:\n  enabled: false\n  url: http://user:{PROXY_PASSWORD}@127.0.0.1:9\n  password: {PROXY_PASSWORD}\n"
        ),
        ..Options::default()
    };
    let config = Config::from_yaml_str(&config_yaml(&options, &upstream.url())).expect("config");
    let harness = Harness::start_config(upstream, config, options).await;
    let answer = harness
        .admin_request(Method::GET, "/api/v1/config", &[], "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_no_secret(&answer.text());
    let config = answer.json();
    for section in [
        "server",
        "strategy",
        "retry",
        "health",
        "logging",
        "streaming",
        "group",
        "auth",
        "tui",
        "web",
        "proxy",
        "usage_tracking",
    ] {
        assert!(config[section].is_object(), "section {section} missing");
    }
    assert_eq!(config["global_timeout"], "5m0s");
    assert!(config["health"]["check_interval"].is_string());
    assert_eq!(config["auth"]["token"], "inbo***");
    assert_eq!(config["proxy"]["password"], "outb***");
    let endpoint = &config["endpoints"][0];
    assert_eq!(endpoint["name"], "primary");
    assert_eq!(endpoint["token"], "sk-u***");
    assert_eq!(endpoint["api_key"], "sk-a***");
    assert_eq!(endpoint["headers"]["X-Custom-Authorization"], "sk-u***");
    // Every other route is swept too.
    for path in ["/api/v1/status", "/api/v1/endpoints", "/api/v1/groups"] {
        assert_no_secret(&harness.get(path).await.text());
    }
    // With auth.enabled the proxy needs the inbound token; the admin API stays open on
    // loopback.
    assert_eq!(harness.get("/api/v1/status").await.status, StatusCode::OK);
}

#[tokio::test]
async fn endpoints_priority_health_check_and_performance() {
    let harness = Harness::start().await;
    let endpoints = harness.get("/api/v1/endpoints").await.json();
    assert_eq!(endpoints["total"], 2);
    let first = &endpoints["endpoints"][0];
    for key in [
        "name",
        "url",
        "priority",
        "group",
        "group_priority",
        "timeout",
        "healthy",
        "last_check",
        "response_time",
        "never_checked",
        "error",
    ] {
        assert!(
            !first[key].is_null(),
            "endpoint field {key} missing: {first}"
        );
    }
    assert_eq!(first["timeout"], "5m0s");

    let answer = harness
        .post("/api/v1/endpoints/backup/priority", r#"{"priority": 7}"#)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["success"], true);
    let endpoints = harness.get("/api/v1/endpoints").await.json();
    assert_eq!(endpoints["endpoints"][1]["priority"], 7);

    for (body, code) in [
        ("", "invalid_priority"),
        (r#"{"priority": 0}"#, "invalid_priority"),
        (r#"{"priority": "high"}"#, "invalid_priority"),
        ("{not json", "invalid_json"),
    ] {
        let answer = harness
            .post("/api/v1/endpoints/backup/priority", body)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.error_code(), code, "{body}");
    }
    let answer = harness
        .post("/api/v1/endpoints/nope/priority", r#"{"priority": 2}"#)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "unknown_endpoint");

    let answer = harness
        .post("/api/v1/endpoints/primary/health-check", "")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let check = answer.json();
    assert_eq!(check["healthy"], true);
    assert_eq!(check["never_checked"], false);
    assert!(!harness.upstream.probes().is_empty());
    let answer = harness
        .post("/api/v1/endpoints/nope/health-check", "")
        .await;
    assert_eq!(answer.error_code(), "unknown_endpoint");

    harness.send_message(false).await;
    let performance = harness
        .eventually("performance counts the request", || async {
            let value = harness.get("/api/v1/endpoints/performance").await.json();
            (value["endpoints"][0]["total_requests"] == 1).then_some(value)
        })
        .await;
    let primary = &performance["endpoints"][0];
    assert_eq!(primary["successful_requests"], 1);
    assert_eq!(primary["success_rate"], 100.0);
    // The mock's usage: 12 in, 6 out, 5 cache writes, 7 cache reads.
    assert_eq!(primary["token_usage"], 30);
}

#[tokio::test]
async fn groups_can_be_paused_resumed_and_activated() {
    let harness = Harness::start().await;
    let groups = harness.get("/api/v1/groups").await.json();
    assert_eq!(groups["total_groups"], 2);
    assert_eq!(groups["auto_switch_enabled"], true);
    let main = &groups["groups"][0];
    for key in [
        "name",
        "priority",
        "is_active",
        "status",
        "status_color",
        "total_endpoints",
        "healthy_endpoints",
        "unhealthy_endpoints",
        "manually_paused",
        "in_cooldown",
        "cooldown_remaining",
        "can_activate",
        "can_pause",
        "can_resume",
        "activation_type",
        "can_force_activate",
    ] {
        assert!(!main[key].is_null(), "group field {key} missing: {main}");
    }

    let answer = harness
        .post("/api/v1/groups/main/pause", r#"{"duration":"30m"}"#)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["success"], true);
    let groups = harness.get("/api/v1/groups").await.json();
    assert_eq!(groups["groups"][0]["manually_paused"], true);
    assert_eq!(groups["active_group"], "spare");
    // Traffic moves to the next group.
    harness.send_message(false).await;
    let status = harness.get("/api/v1/status").await.json();
    assert_eq!(status["active_group"], "spare");

    let answer = harness.post("/api/v1/groups/main/resume", "").await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = harness.post("/api/v1/groups/main/resume", "").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.error_code(), "group_not_paused");

    let answer = harness.post("/api/v1/groups/spare/activate", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["force_activated"], false);
    assert_eq!(
        harness.get("/api/v1/groups").await.json()["active_group"],
        "spare"
    );
    let answer = harness
        .post("/api/v1/groups/main/activate?force=true", "")
        .await;
    // Force with healthy endpoints is accepted by the router or refused with a clear code.
    assert!(
        answer.status == StatusCode::OK || answer.status == StatusCode::CONFLICT,
        "{}",
        answer.text()
    );

    let answer = harness.post("/api/v1/groups/nope/pause", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "unknown_group");
    let answer = harness
        .post("/api/v1/groups/main/pause", r#"{"duration":"soon"}"#)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid_duration");
}

#[tokio::test]
async fn state_changing_routes_are_post_only_and_reads_are_get_only() {
    let harness = Harness::start().await;
    for path in [
        "/api/v1/groups/main/pause",
        "/api/v1/groups/main/resume",
        "/api/v1/groups/main/activate",
        "/api/v1/endpoints/primary/priority",
        "/api/v1/endpoints/primary/health-check",
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(answer.error_code(), "method_not_allowed");
        assert_eq!(
            answer.headers.get("allow").and_then(|v| v.to_str().ok()),
            Some("POST")
        );
    }
    let answer = harness.post("/api/v1/status", "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = harness
        .admin_request(Method::DELETE, "/api/v1/groups", &[], "")
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = harness.get("/api/v1/nothing-here").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "not_found");
    let index = harness.get("/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html")));
}

#[tokio::test]
async fn post_routes_refuse_foreign_origins() {
    let harness = Harness::start().await;
    let host = harness.admin.to_string();
    let foreign = harness
        .admin_request(
            Method::POST,
            "/api/v1/groups/main/pause",
            &[("origin", "http://evil.example")],
            "",
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(foreign.error_code(), "forbidden_origin");
    assert_eq!(
        harness.get("/api/v1/groups").await.json()["groups"][0]["manually_paused"],
        false
    );
    let same = harness
        .admin_request(
            Method::POST,
            "/api/v1/groups/main/pause",
            &[("origin", &format!("http://{host}"))],
            "",
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text());
}

#[tokio::test]
async fn an_admin_token_is_required_when_configured() {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings: format!("web:\n  host: 127.0.0.1\n  auth_token: {ADMIN_TOKEN}\n"),
        ..Options::default()
    };
    let yaml = config_yaml(&options, &upstream.url()).replacen(
        "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n",
        "",
        1,
    );
    let config = Config::from_yaml_str(&yaml).expect("config");
    let harness = Harness::start_config(upstream, config, options).await;
    for path in [
        "/api/v1/status",
        "/api/v1/config",
        "/api/v1/openapi.json",
        "/api/v1/stream",
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(answer.error_code(), "unauthorized");
        assert!(answer.headers.contains_key("www-authenticate"));
    }
    let wrong = harness
        .admin_request(
            Method::GET,
            "/api/v1/status",
            &[("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let right = harness
        .admin_request(
            Method::GET,
            "/api/v1/status",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(right.json()["admin_auth_enabled"], true);
    assert_no_secret(&right.text());
    // The query token works only where headers cannot be set.
    let query = harness
        .get(&format!("/api/v1/status?access_token={ADMIN_TOKEN}"))
        .await;
    assert_eq!(query.status, StatusCode::UNAUTHORIZED);
    let export = harness
        .get(&format!("/api/v1/usage/export?access_token={ADMIN_TOKEN}"))
        .await;
    assert_eq!(export.status, StatusCode::OK);
    // The dashboard page itself is public (it asks for the token).
    assert_eq!(harness.get("/").await.status, StatusCode::OK);
}

/// A harness whose admin API needs [`ADMIN_TOKEN`], with download tickets living `ticket_ttl`.
async fn token_harness(ticket_ttl: Duration) -> support::Harness {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings: format!("web:\n  host: 127.0.0.1\n  auth_token: {ADMIN_TOKEN}\n"),
        ticket_ttl,
        ..Options::default()
    };
    let yaml = config_yaml(&options, &upstream.url()).replacen(
        "web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n",
        "",
        1,
    );
    let config = Config::from_yaml_str(&yaml).expect("config");
    Harness::start_config(upstream, config, options).await
}

/// Asks for a download ticket with the admin token; returns the answer's `data`.
async fn ticket_for(harness: &support::Harness, export_query: &str) -> Value {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let answer = harness
        .admin_request(
            Method::POST,
            &format!("/api/v1/usage/export/ticket?{export_query}"),
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_no_secret(&answer.text());
    answer.json()["data"].clone()
}

#[tokio::test]
async fn download_tickets_are_single_use_and_bound_to_their_export_query() {
    let harness = token_harness(ccf_admin::DEFAULT_TICKET_TTL).await;
    let (_, first) = harness.send_message(false).await;
    let (_, second) = harness.send_message(true).await;
    harness.flush().await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    harness
        .eventually("both requests stored as final", || async {
            let list = harness
                .admin_request(
                    Method::GET,
                    "/api/v1/usage/requests?status=completed",
                    &[("authorization", &bearer)],
                    "",
                )
                .await
                .json();
            (list["total"] == 2).then_some(())
        })
        .await;

    // Issuing needs the token like every route.
    let refused = harness
        .post("/api/v1/usage/export/ticket?format=csv", "")
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "unauthorized");

    let since = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let export_query = format!("format=csv&endpoint=primary&start_date={since}");
    let issued = ticket_for(&harness, &export_query).await;
    let ticket = issued["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(ticket.len(), 64, "256 bits in hex: {ticket}");
    assert_eq!(issued["expires_in_seconds"], 60);
    let url = issued["url"].as_str().expect("url").to_string();
    assert_eq!(
        url,
        format!(
            "/api/v1/usage/export?endpoint=primary&format=csv&start_date={}&ticket={ticket}",
            since.replace(':', "%3A")
        )
    );

    // The link alone downloads the export, once.
    let csv = harness.get(&url).await;
    assert_eq!(csv.status, StatusCode::OK, "{}", csv.text());
    assert!(csv
        .headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("attachment; filename=\"usage_export_")));
    let text = csv.text();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains(&first) && text.contains(&second), "{text}");
    let again = harness.get(&url).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.error_code(), "invalid_ticket");

    // Another query (here another format) is refused, and the ticket is used up by trying.
    let issued = ticket_for(&harness, &export_query).await;
    let url = issued["url"].as_str().expect("url").to_string();
    let other = harness
        .get(&url.replacen("format=csv", "format=json", 1))
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.error_code(), "ticket_query_mismatch");
    let after = harness.get(&url).await;
    assert_eq!(after.error_code(), "invalid_ticket");
    let widened = ticket_for(&harness, &export_query).await;
    // Dropping a filter would widen the export: refused too.
    let widened_url = widened["url"]
        .as_str()
        .expect("url")
        .replacen("endpoint=primary&", "", 1);
    assert_eq!(
        harness.get(&widened_url).await.error_code(),
        "ticket_query_mismatch"
    );

    // A made-up ticket, and a ticket on any other route, authenticate nothing.
    let made_up = harness
        .get(&format!(
            "/api/v1/usage/export?{export_query}&ticket={}",
            "0".repeat(64)
        ))
        .await;
    assert_eq!(made_up.status, StatusCode::UNAUTHORIZED);
    assert_eq!(made_up.error_code(), "invalid_ticket");
    let issued = ticket_for(&harness, "").await;
    let ticket = issued["ticket"].as_str().expect("ticket");
    let status = harness
        .get(&format!("/api/v1/status?ticket={ticket}"))
        .await;
    assert_eq!(status.status, StatusCode::UNAUTHORIZED);
    assert_eq!(status.error_code(), "unauthorized");
    // ... and that did not use it up: the export without filters still takes it.
    assert_eq!(
        issued["url"],
        format!("/api/v1/usage/export?ticket={ticket}")
    );
    let all = harness.get(issued["url"].as_str().expect("url")).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    assert_eq!(all.text().lines().count(), 3);
}

#[tokio::test]
async fn an_expired_download_ticket_is_refused() {
    // A zero lifetime: every ticket has expired by the time it is presented.
    let harness = token_harness(Duration::ZERO).await;
    let issued = ticket_for(&harness, "format=json").await;
    assert_eq!(issued["expires_in_seconds"], 0);
    let expired = harness.get(issued["url"].as_str().expect("url")).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.error_code(), "ticket_expired");
    assert!(expired.headers.contains_key("www-authenticate"));
    // Used up too.
    let again = harness.get(issued["url"].as_str().expect("url")).await;
    assert_eq!(again.error_code(), "invalid_ticket");
}

#[tokio::test]
async fn without_a_token_the_export_link_needs_no_ticket() {
    let harness = Harness::start().await;
    let (_, id) = harness.send_message(false).await;
    harness.flush().await;
    harness
        .eventually("the request stored as final", || async {
            let list = harness
                .get("/api/v1/usage/requests?status=completed")
                .await
                .json();
            (list["total"] == 1).then_some(())
        })
        .await;
    let plain = harness.get("/api/v1/usage/export?format=csv").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.text().lines().count(), 2);
    assert!(plain.text().contains(&id));
    // A ticket presented anyway is still checked: a wrong one is refused.
    let wrong = harness
        .get("/api/v1/usage/export?format=csv&ticket=nope")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.error_code(), "invalid_ticket");
}

#[tokio::test]
async fn a_non_loopback_host_uses_the_inbound_token_or_refuses_to_start() {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings: format!("auth:\n  enabled: true\n  token: {INBOUND_TOKEN}\n"),
        ..Options::default()
    };
    let yaml = config_yaml(&options, &upstream.url()).replacen(
        "  host: 127.0.0.1\n  port: 0\nretry",
        "  host: 0.0.0.0\n  port: 0\nretry",
        1,
    );
    let config = Config::from_yaml_str(&yaml).expect("config");
    assert_eq!(config.web.host, "0.0.0.0");
    assert!(ccf_admin::check_security(&config).is_ok());
    let harness = Harness::start_config(upstream, config, options).await;
    assert_eq!(
        harness.get("/api/v1/groups").await.status,
        StatusCode::UNAUTHORIZED
    );
    let bearer = format!("Bearer {INBOUND_TOKEN}");
    let answer = harness
        .admin_request(
            Method::GET,
            "/api/v1/groups",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);

    let open = Config::from_yaml_str(
        "web:\n  host: 0.0.0.0\nendpoints:\n  - name: a\n    url: http://127.0.0.1:9\n",
    )
    .expect("config");
    let error = ccf_admin::check_security(&open).expect_err("must refuse");
    assert!(error.to_string().contains("web.auth_token"), "{error}");
    let forwarder = ccf_proxy::Forwarder::build(std::sync::Arc::new(open)).expect("forwarder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = ccf_admin::serve(listener, ccf_admin::AdminState::new(forwarder), async {}).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn usage_routes_answer_from_the_database() {
    let harness = Harness::start().await;
    let (status, id) = harness.send_message(false).await;
    assert_eq!(status, StatusCode::OK);
    harness.send_message(true).await;
    harness.flush().await;
    let list = harness
        .eventually("both requests stored as final", || async {
            let list = harness.get("/api/v1/usage/requests?limit=10").await.json();
            let finals = list["data"].as_array().map_or(0, |rows| {
                rows.iter().filter(|r| r["status"] == "completed").count()
            });
            (finals == 2).then_some(list)
        })
        .await;
    assert_eq!(list["success"], true);
    assert_eq!(list["total"], 2);
    assert_eq!(list["limit"], 10);
    assert_eq!(list["offset"], 0);
    let row = &list["data"][1];
    for key in [
        "id",
        "request_id",
        "method",
        "path",
        "start_time",
        "status",
        "input_tokens",
        "output_tokens",
        "total_cost_usd",
        "endpoint_name",
        "model_name",
        "is_streaming",
    ] {
        assert!(!row[key].is_null(), "row field {key} missing: {row}");
    }
    let page = harness
        .get("/api/v1/usage/requests?limit=1&offset=1&status=completed&endpoint=primary")
        .await
        .json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["total"], 2);
    let none = harness
        .get("/api/v1/usage/requests?model=no-such-model")
        .await
        .json();
    assert_eq!(none["total"], 0);
    let bad = harness
        .get("/api/v1/usage/requests?start_date=yesterday")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_date");
    let bad = harness.get("/api/v1/usage/requests?limit=-1").await;
    assert_eq!(bad.error_code(), "invalid_parameter");

    let stats = harness.get("/api/v1/usage/stats?period=1d").await.json();
    let data = &stats["data"];
    assert_eq!(data["period"], "1d");
    assert_eq!(data["total_requests"], 2);
    assert_eq!(data["success_rate"], 100.0);
    let cost = data["total_cost_usd"].as_f64().expect("total_cost_usd");
    assert!((cost - TWO_REQUESTS_USD).abs() < 1e-13, "{cost}");
    assert_eq!(data["top_models"][0]["model_name"], "claude-sonnet-4-5");
    assert_eq!(data["top_endpoints"][0]["group_name"], "main");
    assert!(data["daily_stats"].is_array());
    assert_eq!(
        harness
            .get("/api/v1/usage/stats?period=2y")
            .await
            .error_code(),
        "invalid_period"
    );

    let csv = harness.get("/api/v1/usage/export?format=csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    let disposition = csv
        .headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=\"usage_export_")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    assert_eq!(
        csv.headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    assert!(csv.text().contains(&id), "{}", csv.text());
    assert_eq!(csv.text().lines().count(), 3);
    let json_export = harness.get("/api/v1/usage/export?format=json").await;
    let rows: Value = json_export.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    assert_eq!(
        harness
            .get("/api/v1/usage/export?format=xml")
            .await
            .error_code(),
        "invalid_format"
    );

    let summary = harness.get("/api/v1/usage/summary").await.json();
    assert_eq!(summary["success"], true);
    let rows = summary["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "one day, model and endpoint: {summary}");
    assert_eq!(
        rows.iter()
            .map(|r| r["request_count"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        2
    );
    assert_eq!(
        harness
            .get("/api/v1/usage/summary?start_date=2025/01/01")
            .await
            .error_code(),
        "invalid_date"
    );

    let models = harness.get("/api/v1/usage/models").await.json();
    assert_eq!(models["data"][0]["model_name"], "claude-sonnet-4-5");
    assert_eq!(models["data"][0]["display_name"], "Claude Sonnet 4.5");

    let detail = harness.get(&format!("/api/v1/requests/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text());
    let detail = detail.json();
    assert_eq!(detail["data"]["request_id"], id.as_str());
    assert_eq!(detail["data"]["source"], "store");
    let attempts = detail["data"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 1, "{detail}");
    assert_eq!(attempts[0]["endpoint"], "primary");
    let missing = harness.get("/api/v1/requests/req-00000000000000ff").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "request_not_found");

    let costs = harness.get("/api/v1/chart/endpoint-costs").await.json();
    assert_eq!(costs["labels"][0], "primary (main)");
    assert_eq!(
        costs["datasets"][0]["data"][0], 60,
        "two requests of 30 tokens"
    );
    let cost = costs["datasets"][1]["data"][0].as_f64().expect("cost");
    assert!((cost - TWO_REQUESTS_USD).abs() < 1e-13, "{cost}");
    assert_eq!(
        harness
            .get("/api/v1/chart/endpoint-costs?date=today")
            .await
            .error_code(),
        "invalid_date"
    );
    let empty = harness
        .get("/api/v1/chart/endpoint-costs?date=2001-01-01")
        .await
        .json();
    assert_eq!(empty["labels"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn database_routes_answer_503_when_tracking_is_off() {
    let harness = Harness::start_with(Options {
        tracking: false,
        ..Options::default()
    })
    .await;
    for path in [
        "/api/v1/usage/requests",
        "/api/v1/usage/stats",
        "/api/v1/usage/export",
        "/api/v1/usage/summary",
        "/api/v1/chart/endpoint-costs",
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(answer.error_code(), "usage_tracking_disabled");
    }
    // Live routes still answer, and a finished request is found in memory.
    let (_, id) = harness.send_message(false).await;
    assert_eq!(
        harness.get("/api/v1/usage/models").await.status,
        StatusCode::OK
    );
    let detail = harness
        .eventually("the request is known live", || async {
            let answer = harness.get(&format!("/api/v1/requests/{id}")).await;
            (answer.status == StatusCode::OK).then_some(answer.json())
        })
        .await;
    assert_eq!(detail["data"]["source"], "live");
    assert_eq!(detail["data"]["status"], "completed");
    let cost = detail["data"]["total_cost_usd"].as_f64().expect("cost");
    assert!((cost - ONE_REQUEST_USD).abs() < 1e-13, "{cost}");
    assert_eq!(
        harness.get("/api/v1/status").await.json()["usage_tracking"]["enabled"],
        false
    );
}

#[tokio::test]
async fn connections_and_charts_move_with_traffic() {
    let harness = Harness::start().await;
    for _ in 0..3 {
        harness.send_message(false).await;
    }
    let connections = harness
        .eventually("three finished requests counted", || async {
            let value = harness.get("/api/v1/connections").await.json();
            (value["successful_requests"] == 3).then_some(value)
        })
        .await;
    assert_eq!(connections["total_requests"], 3);
    assert_eq!(connections["active_connections"], 0);
    assert_eq!(connections["requests_per_endpoint"]["primary"], 3);
    assert!(connections["suspended"].is_object());
    assert!(connections["suspended_connections"].is_array());
    assert_eq!(harness.get("/api/v1/requests").await.json()["total"], 0);

    let sum = |chart: &Value, index: usize| -> f64 {
        chart["datasets"][index]["data"]
            .as_array()
            .map_or(0.0, |data| data.iter().filter_map(Value::as_f64).sum())
    };
    let trends = harness
        .get("/api/v1/chart/request-trends?minutes=5")
        .await
        .json();
    assert_eq!(trends["labels"].as_array().map(Vec::len), Some(5));
    assert_eq!(sum(&trends, 0), 3.0);
    assert_eq!(sum(&trends, 1), 3.0);
    let times = harness.get("/api/v1/chart/response-times").await.json();
    assert_eq!(times["datasets"].as_array().map(Vec::len), Some(3));
    let health = harness.get("/api/v1/chart/endpoint-health").await.json();
    assert_eq!(health["datasets"][0]["data"], serde_json::json!([2, 0]));
    let activity = harness
        .get("/api/v1/chart/connection-activity")
        .await
        .json();
    assert_eq!(sum(&activity, 0), 3.0);
    let suspended = harness.get("/api/v1/chart/suspended-trends").await.json();
    assert_eq!(suspended["current"], 0);
    let tokens = harness.get("/api/v1/tokens/usage").await.json();
    assert_eq!(tokens["current"]["input_tokens"], 36);
    assert_eq!(tokens["current"]["output_tokens"], 18);
    let input_share = tokens["distribution"]["input_percentage"]
        .as_f64()
        .expect("input_percentage");
    assert!(
        (input_share - 36.0 * 100.0 / 54.0).abs() < 1e-9,
        "{input_share}"
    );
    let history = harness
        .get("/api/v1/metrics/history?minutes=10")
        .await
        .json();
    assert_eq!(history["summary"]["data_points"], 10);
    assert_eq!(history["requests"].as_array().map(Vec::len), Some(10));
    assert_eq!(
        harness
            .get("/api/v1/chart/request-trends?minutes=0")
            .await
            .error_code(),
        "invalid_parameter"
    );
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let harness = Harness::start().await;
    let document = harness.get("/api/v1/openapi.json").await.json();
    assert_eq!(document["openapi"], "3.0.3");
    assert!(document["paths"]["/api/v1/requests/{id}"]["get"].is_object());
}

#[tokio::test]
async fn the_live_view_shows_a_held_request() {
    let upstream = MockUpstream::start().await;
    let options = Options {
        settings:
            "request_suspend:\n  enabled: true\n  timeout: 20s\n  max_suspended_requests: 5\n"
                .into(),
        endpoints: vec![("primary", "main", 1)],
        ..Options::default()
    };
    let config = Config::from_yaml_str(&config_yaml(&options, &upstream.url())).expect("config");
    let harness = Harness::start_config(upstream, config, options).await;
    // Nothing held yet: the Go route answers its shape, empty.
    let none_held = harness.get("/api/v1/suspended/requests").await.json();
    assert_eq!(none_held["current"], 0, "{none_held}");
    assert_eq!(
        none_held["suspended_connections"],
        serde_json::json!([]),
        "{none_held}"
    );
    assert!(none_held["history"].is_array(), "{none_held}");
    assert!(none_held["timestamp"].is_string(), "{none_held}");
    assert_eq!(
        harness.post("/api/v1/groups/main/pause", "").await.status,
        StatusCode::OK
    );
    let sender = {
        let url = harness.proxy_url("/v1/messages");
        tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#,
                )))
                .expect("request");
            client
                .request(request)
                .await
                .map(|response| response.status())
        })
    };
    let connections = harness
        .eventually("the request is held", || async {
            let value = harness.get("/api/v1/connections").await.json();
            (value["suspended"]["suspended_requests"] == 1).then_some(value)
        })
        .await;
    assert_eq!(connections["suspended_connections"][0]["method"], "POST");
    let held = harness.get("/api/v1/suspended/requests").await.json();
    assert_eq!(held["current"], 1, "{held}");
    let entry = &held["suspended_connections"][0];
    assert_eq!(
        entry["id"], connections["suspended_connections"][0]["id"],
        "{held}"
    );
    assert_eq!(entry["method"], "POST", "{held}");
    assert_eq!(entry["path"], "/v1/messages", "{held}");
    for key in [
        "client_ip",
        "endpoint",
        "suspended_at",
        "suspended_time",
        "user_agent",
    ] {
        assert!(entry[key].is_string(), "{key}: {held}");
    }
    assert!(entry["retry_count"].is_u64(), "{held}");
    assert!(held["history"].is_array(), "{held}");
    let live = harness.get("/api/v1/requests").await.json();
    assert_eq!(live["total"], 1);
    let id = live["data"][0]["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let detail = harness.get(&format!("/api/v1/requests/{id}")).await.json();
    assert_eq!(detail["data"]["source"], "live");
    assert_eq!(detail["data"]["error_state"], "suspended");
    assert_eq!(
        harness.post("/api/v1/groups/main/resume", "").await.status,
        StatusCode::OK
    );
    let status = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("held request finishes")
        .expect("task")
        .expect("answer");
    assert_eq!(status, StatusCode::OK);
}

/// Every admin route, in a fixed state that fills as many fields as traffic can (stored and live
/// requests, a flagged relay, quota readings, a bound session, a paused group, a reload), checked
/// against `tests/snapshots/wire_shapes.txt`: field names, nesting, number vs string, integer vs
/// float, null vs absent, vocabulary words, status codes and headers. The JSON the API returns is
/// its own contract: a field renamed in the router or the store must not change it.
#[tokio::test]
async fn every_route_answers_in_its_pinned_wire_shape() {
    let harness = Harness::start().await;
    let mut shapes = support::shape::Shapes::default();
    // A link to the other instances, down since a moment with a reason: every `cluster` field
    // has a value.
    assert!(harness
        .forwarder
        .set_cluster_link(support::FakeClusterLink::new(
            ccf_proxy::cluster::ClusterStatus {
                backend: "redis",
                address: "redis://127.0.0.1:6379".to_string(),
                connected: false,
                since: Some(std::time::SystemTime::now()),
                last_error: Some("connection refused".to_string()),
                fallbacks: 1,
                ..ccf_proxy::cluster::ClusterStatus::default()
            }
        )));

    // Both endpoints checked, so their latencies are numbers.
    for name in ["primary", "backup"] {
        let answer = harness
            .post(&format!("/api/v1/endpoints/{name}/health-check"), "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        if name == "primary" {
            shapes.answer("POST /api/v1/endpoints/{name}/health-check", &answer);
        }
    }
    // A turn of an explicit session, a streamed turn, and an answer from a substituted model (a
    // relay-honesty flag on `primary`).
    let turn = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "system": [{"type": "text", "text": "You are a test.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hello"}],
    });
    let (status, completed_id) = harness
        .send_message_with(&turn, &[("x-claude-code-session-id", "session-1")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(harness.send_message(true).await.0, StatusCode::OK);
    harness
        .upstream
        .enqueue(ccf_testkit::Reply::auto().model("claude-3-haiku-20240307"));
    assert_eq!(harness.send_message(false).await.0, StatusCode::OK);
    // Two quota readings on `primary`: 90 then 89 requests left, the reset an hour away (drained
    // as "predicted" for well over a minute).
    let reset = chrono::Utc::now() + chrono::Duration::hours(1);
    let reset = reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // With them, a subscription account's unified headers (well below the drain threshold).
    let epoch_reset = (chrono::Utc::now() + chrono::Duration::hours(1))
        .timestamp()
        .to_string();
    for remaining in ["90", "89"] {
        harness.upstream.enqueue(
            ccf_testkit::Reply::auto()
                .header("anthropic-ratelimit-requests-limit", "100")
                .header("anthropic-ratelimit-requests-remaining", remaining)
                .header("anthropic-ratelimit-requests-reset", &reset)
                .header("anthropic-ratelimit-unified-status", "allowed")
                .header("anthropic-ratelimit-unified-reset", &epoch_reset)
                .header(
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                )
                .header("anthropic-ratelimit-unified-5h-utilization", "0.42")
                .header("anthropic-ratelimit-unified-5h-reset", &epoch_reset),
        );
        assert_eq!(harness.send_message(false).await.0, StatusCode::OK);
    }
    // Operator actions.
    let answer = harness
        .post("/api/v1/endpoints/backup/priority", r#"{"priority": 7}"#)
        .await;
    shapes.answer("POST /api/v1/endpoints/{name}/priority", &answer);
    let answer = harness
        .post("/api/v1/groups/spare/pause", r#"{"duration":"30m"}"#)
        .await;
    shapes.answer("POST /api/v1/groups/{name}/pause (timed)", &answer);
    let answer = harness.post("/api/v1/groups/spare/resume", "").await;
    shapes.answer("POST /api/v1/groups/{name}/resume", &answer);
    let answer = harness.post("/api/v1/groups/spare/pause", "").await;
    shapes.answer("POST /api/v1/groups/{name}/pause (until resumed)", &answer);
    let answer = harness.post("/api/v1/groups/main/activate", "").await;
    shapes.answer("POST /api/v1/groups/{name}/activate", &answer);
    let answer = harness.post("/api/v1/config/reload", "").await;
    shapes.exact("POST /api/v1/config/reload (no reloader)", &answer);
    assert!(harness
        .forwarder
        .set_reloader(std::sync::Arc::new(support::shape::FixedReloader {
            forwarder: harness.forwarder.clone(),
        })));
    let answer = harness.post("/api/v1/config/reload", "").await;
    shapes.answer("POST /api/v1/config/reload", &answer);

    // One request in flight, waiting for the upstream's headers.
    harness.upstream.enqueue(ccf_testkit::Reply::hang());
    let url = harness.proxy_url("/v1/messages");
    let _in_flight = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"wait"}]}"#,
            )))
            .expect("request");
        client
            .request(request)
            .await
            .map(|response| response.status())
    });
    let live_id = harness
        .eventually("the hanging request is forwarding", || async {
            let live = harness.get("/api/v1/requests").await.json();
            (live["data"][0]["status"] == "forwarding")
                .then(|| live["data"][0]["request_id"].as_str().map(str::to_string))
                .flatten()
        })
        .await;
    harness.flush().await;
    harness
        .eventually("five final rows and the live one stored", || async {
            let list = harness.get("/api/v1/usage/requests").await.json();
            let rows = list["data"].as_array().cloned().unwrap_or_default();
            let completed = rows.iter().filter(|r| r["status"] == "completed").count();
            let forwarding = rows.iter().filter(|r| r["status"] == "forwarding").count();
            (completed == 5 && forwarding == 1).then_some(())
        })
        .await;
    harness
        .eventually("the affinity table counts every finished turn", || async {
            let affinity = harness.get("/api/v1/routing/affinity").await.json();
            (affinity["totals"]["turns"] == 5).then_some(())
        })
        .await;

    for path in [
        "/api/v1/status",
        "/api/v1/endpoints",
        "/api/v1/endpoints/performance",
        "/api/v1/groups",
        "/api/v1/routing/honesty",
        "/api/v1/routing/affinity",
        "/api/v1/routing/quota",
        "/api/v1/keys",
        "/api/v1/routing/model-rules",
        "/api/v1/connections",
        "/api/v1/requests",
        "/api/v1/usage/requests",
        "/api/v1/usage/stats?period=1d",
        "/api/v1/usage/summary",
        "/api/v1/usage/models",
        "/api/v1/usage/export?format=json",
        "/api/v1/chart/request-trends?minutes=3",
        "/api/v1/chart/response-times?minutes=3",
        "/api/v1/chart/endpoint-health",
        "/api/v1/chart/connection-activity?minutes=3",
        "/api/v1/chart/endpoint-costs",
        "/api/v1/chart/suspended-trends?minutes=3",
        "/api/v1/suspended/requests?minutes=3",
        "/api/v1/tokens/usage?minutes=3",
        "/api/v1/metrics/history?minutes=3",
        "/api/v1/config",
        "/api/v1/config/status",
        "/api/v1/webhooks",
    ] {
        let answer = harness.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
        shapes.answer(&format!("GET {path}"), &answer);
    }
    let answer = harness
        .get(&format!("/api/v1/requests/{completed_id}"))
        .await;
    shapes.answer("GET /api/v1/requests/{id} (stored)", &answer);
    let answer = harness.get(&format!("/api/v1/requests/{live_id}")).await;
    shapes.answer("GET /api/v1/requests/{id} (live)", &answer);
    let answer = harness
        .post("/api/v1/usage/export/ticket?format=csv", "")
        .await;
    shapes.answer("POST /api/v1/usage/export/ticket", &answer);
    let url = answer.json()["data"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let answer = harness.get(&url).await;
    shapes.head(
        "GET /api/v1/usage/export?format=csv&ticket={ticket}",
        &answer,
    );
    let answer = harness.get(&url).await;
    shapes.exact(
        "GET /api/v1/usage/export?format=csv&ticket={used ticket}",
        &answer,
    );
    let answer = harness.get("/api/v1/usage/export?format=csv").await;
    shapes.head("GET /api/v1/usage/export?format=csv", &answer);
    shapes.lines.push(format!(
        "GET /api/v1/usage/export?format=csv header {}",
        answer.text().lines().next().unwrap_or_default()
    ));
    let answer = harness.get("/api/v1/openapi.json").await;
    shapes.head("GET /api/v1/openapi.json", &answer);
    let answer = harness
        .admin_request(Method::HEAD, "/api/v1/status", &[], "")
        .await;
    shapes.head("HEAD /api/v1/status", &answer);
    let answer = harness.get("/api/v1/status/").await;
    shapes.head("GET /api/v1/status/ (trailing slash)", &answer);

    // Refusals: status, headers and the whole body.
    for (method, path, body) in [
        (Method::GET, "/api/v1/nothing-here", ""),
        (Method::GET, "/api/v1", ""),
        (Method::GET, "/api/v1/groups//pause", ""),
        (Method::DELETE, "/api/v1/groups", ""),
        (Method::GET, "/api/v1/groups/main/pause", ""),
        (Method::POST, "/api/v1/status", ""),
        (Method::PUT, "/api/v1/stream", ""),
        (Method::POST, "/api/v1/groups/no%20such/pause", ""),
        (
            Method::POST,
            "/api/v1/endpoints/no%2Bsuch/priority",
            r#"{"priority": 2}"#,
        ),
        (Method::GET, "/api/v1/requests/req-00000000000000ff", ""),
        (Method::GET, "/api/v1/usage/requests?limit=x", ""),
        (Method::GET, "/api/v1/stream?events=nope", ""),
        (Method::GET, "/no-such-page", ""),
        (Method::POST, "/", ""),
    ] {
        let answer = harness.admin_request(method.clone(), path, &[], body).await;
        if path == "/no-such-page" {
            // The dashboard's own routes: the same page as `/`. Its body names the bundle's
            // hashed file names, which change with every dashboard change, so it is compared
            // with `/` rather than pinned.
            shapes.head(&format!("{method} {path}"), &answer);
            let index = harness.get("/").await;
            shapes.lines.push(format!(
                "{method} {path} body is the page of GET /: {}",
                answer.body == index.body
            ));
        } else {
            shapes.exact(&format!("{method} {path}"), &answer);
        }
    }

    // The live stream: the snapshots it opens with, then one event of each kind.
    let mut stream = support::SseReader::open(
        &harness,
        "/api/v1/stream?events=status,endpoint,group,connection,log,config",
        &[],
    )
    .await;
    let mut initial = 0;
    while initial < 6 {
        let frame = stream.next(support::WAIT).await.expect("initial frame");
        if let Some(event) = &frame.event {
            shapes.json(&format!("stream initial {event}"), &frame.json());
            initial += 1;
        }
    }
    let answer = harness
        .post("/api/v1/endpoints/backup/priority", r#"{"priority": 3}"#)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        harness.post("/api/v1/groups/spare/resume", "").await.status,
        StatusCode::OK
    );
    assert_eq!(harness.send_message(false).await.0, StatusCode::OK);
    let wanted = [
        "group",
        "endpoint",
        "log",
        "status",
        "connection request_completed",
        "connection connection_stats_updated",
    ];
    let mut seen: std::collections::BTreeMap<String, Value> = Default::default();
    let mut router_events: std::collections::BTreeMap<String, Value> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while wanted.iter().any(|kind| !seen.contains_key(*kind)) || router_events.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = stream
            .next(left)
            .await
            .unwrap_or_else(|| panic!("stream events missing; seen {:?}", seen.keys()));
        let Some(event) = frame.event.clone() else {
            continue;
        };
        let mut value = frame.json();
        let kind = match event.as_str() {
            "connection" => format!(
                "connection {}",
                value["data"]["change_type"].as_str().unwrap_or_default()
            ),
            other => other.to_string(),
        };
        if kind == "group" {
            let events = value["data"]
                .as_object_mut()
                .and_then(|data| data.remove("events"));
            for router_event in events
                .and_then(|e| e.as_array().cloned())
                .unwrap_or_default()
            {
                let name = router_event["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                router_events.entry(name).or_insert(router_event);
            }
            // A frame rendered before the resume still shows `spare` paused: pin the settled one.
            let settled = value["data"]["groups"]
                .as_array()
                .is_some_and(|groups| groups.iter().all(|g| g["manually_paused"] == false));
            if !settled {
                continue;
            }
        }
        seen.entry(kind).or_insert(value);
    }
    for kind in wanted {
        shapes.json(&format!("stream event {kind}"), &seen[kind]);
    }
    for (name, router_event) in &router_events {
        shapes.json(&format!("stream group.events[] {name}"), router_event);
    }
    support::shape::check_snapshot("wire_shapes.txt", &shapes.text());
}

/// With `timezone: Asia/Shanghai`, zone-less API dates, the daily stats and the endpoint-costs
/// chart use Shanghai days: 23:30 and 00:30 UTC are the same day there, 16:30 UTC the next.
#[tokio::test]
async fn usage_days_and_zone_less_dates_follow_the_configured_timezone() {
    let harness = Harness::start_with(Options {
        settings: "timezone: Asia/Shanghai\n".into(),
        ..Options::default()
    })
    .await;
    let store = harness.store.clone().unwrap();
    let pricing = ccf_store::Pricing::default();
    let at =
        |text: &str| ccf_store::time::parse_timestamp(text, ccf_store::LegacyZone::Utc).unwrap();
    let rows: Vec<_> = [
        ("req-a", "2025-09-27T23:30:00Z", 100),
        ("req-b", "2025-09-28T00:30:00Z", 200),
        ("req-c", "2025-09-28T16:30:00Z", 400),
    ]
    .into_iter()
    .map(|(id, start, input)| {
        let mut record = ccf_store::UsageRecord::new(id, at(start));
        record.status = "completed".into();
        record.is_final = true;
        record.model_name = Some("claude-sonnet-4-5".into());
        record.endpoint_name = Some("primary".into());
        record.group_name = Some("main".into());
        record.duration_ms = Some(10);
        record.usage = ccf_types::Usage {
            input_tokens: input,
            ..ccf_types::Usage::default()
        };
        ccf_store::StoredRecord::price(record, &pricing)
    })
    .collect();
    store.write_batch(&rows).await.unwrap();

    // A zone-less day is a Shanghai day: 2025-09-27T16:00Z to 2025-09-28T15:59:59Z.
    let stats = harness
        .get("/api/v1/usage/stats?start_date=2025-09-28&end_date=2025-09-28%2023:59:59")
        .await
        .json();
    assert_eq!(stats["data"]["total_requests"], 2);
    assert_eq!(
        stats["data"]["start_time"], "2025-09-27T16:00:00.000Z",
        "{stats}"
    );
    let daily = |stats: &Value| -> Vec<(String, u64)> {
        stats["data"]["daily_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|day| {
                (
                    day["date"].as_str().unwrap().to_string(),
                    day["request_count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(daily(&stats), vec![("2025-09-28".to_string(), 2)]);
    let both_days = harness
        .get("/api/v1/usage/stats?start_date=2025-09-28&end_date=2025-09-29%2023:59:59")
        .await
        .json();
    assert_eq!(
        daily(&both_days),
        vec![("2025-09-28".to_string(), 2), ("2025-09-29".to_string(), 1)]
    );

    let costs = harness
        .get("/api/v1/chart/endpoint-costs?date=2025-09-28")
        .await
        .json();
    assert_eq!(costs["labels"], serde_json::json!(["primary (main)"]));
    assert_eq!(costs["datasets"][0]["data"], serde_json::json!([300]));
}
