//! The link to the other instances (`cluster.redis_url`, issue 21) as `/health`,
//! `/health/detailed` and `/metrics` show it, through the engine's own request path
//! (`Forwarder::handle`) with a fake `ClusterLink` installed by `Forwarder::set_cluster_link`:
//! absent without a link, connected, then down (degraded, never unhealthy), and the engine's own
//! publications counted.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ccf_config::Config;
use ccf_proxy::cluster::{ClusterLink, ClusterStatus, SharedKeyCounters, SharedUpdate};
use ccf_proxy::Forwarder;
use ccf_testkit::MockUpstream;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// A link whose status the test sets; it counts what the engine publishes, as a real one does.
struct FakeLink {
    status: Mutex<ClusterStatus>,
    updates: Mutex<Vec<SharedUpdate>>,
}

impl FakeLink {
    fn new(status: ClusterStatus) -> Arc<FakeLink> {
        Arc::new(FakeLink {
            status: Mutex::new(status),
            updates: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, change: impl FnOnce(&mut ClusterStatus)) {
        change(&mut self.status.lock().unwrap());
    }
}

impl ClusterLink for FakeLink {
    fn publish(&self, update: SharedUpdate) {
        self.updates.lock().unwrap().push(update);
        self.status.lock().unwrap().published += 1;
    }

    fn key_counters(&self) -> Option<Arc<dyn SharedKeyCounters>> {
        None
    }

    fn status(&self) -> ClusterStatus {
        self.status.lock().unwrap().clone()
    }

    fn note_fallback(&self) {
        self.status.lock().unwrap().fallbacks += 1;
    }
}

fn forwarder_for(upstream: &MockUpstream) -> Forwarder {
    let config = Config::from_yaml_str(&format!(
        "endpoints:\n  - name: only\n    url: {}\n    token: upstream-token\n",
        upstream.url()
    ))
    .unwrap();
    Forwarder::build(Arc::new(config)).unwrap()
}

async fn get(forwarder: &Forwarder, path: &str) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = forwarder.handle(request).await;
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn get_json(forwarder: &Forwarder, path: &str) -> (StatusCode, Value) {
    let (status, body) = get(forwarder, path).await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn metrics(forwarder: &Forwarder) -> String {
    let (status, body) = get(forwarder, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec()).unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn health_and_metrics_show_the_cluster_link_only_when_one_is_installed() {
    let upstream = MockUpstream::start().await;
    let forwarder = forwarder_for(&upstream);

    // Without a link: no `cluster` object, no series, the usual status.
    let (status, detailed) = get_json(&forwarder, "/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detailed["status"], "healthy");
    assert!(detailed.get("cluster").is_none(), "{detailed}");
    assert!(!metrics(&forwarder).await.contains("ccf_cluster_"));
    assert_eq!(forwarder.cluster_status(), None);

    let since = SystemTime::now();
    let link = FakeLink::new(ClusterStatus {
        backend: "redis",
        address: "redis://:***@127.0.0.1:6379".to_string(),
        connected: true,
        since: Some(since),
        ..ClusterStatus::default()
    });
    assert!(forwarder.set_cluster_link(link.clone()));

    let (status, detailed) = get_json(&forwarder, "/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detailed["status"], "healthy");
    let cluster = &detailed["cluster"];
    assert_eq!(cluster["backend"], "redis");
    assert_eq!(cluster["address"], "redis://:***@127.0.0.1:6379");
    assert_eq!(cluster["connected"], true);
    assert_eq!(
        cluster["since"],
        ccf_proxy::monitoring::rfc3339(since).as_str()
    );
    assert_eq!(cluster["last_error"], Value::Null);
    for counter in ["fallbacks", "reconnects", "published", "applied", "dropped"] {
        assert_eq!(cluster[counter], 0, "{counter} in {cluster}");
    }
    let text = metrics(&forwarder).await;
    assert!(has_line(&text, "ccf_cluster_connected 1"), "{text}");
    assert!(has_line(&text, "ccf_cluster_fallbacks_total 0"), "{text}");

    // A served turn is handed to the link (the session binding): the counters show it.
    let request = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let response = forwarder.handle(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.updates.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the served turn was not published"
        );
        tokio::task::yield_now().await;
    }
    let published = link.status().published;
    let text = metrics(&forwarder).await;
    assert!(
        has_line(
            &text,
            &format!("ccf_cluster_updates_published_total {published}")
        ),
        "{text}"
    );

    // The link is lost: degraded (the instance routes on its own state), still 200.
    let lost = SystemTime::now();
    link.set(|status| {
        status.connected = false;
        status.since = Some(lost);
        status.last_error = Some("connection refused (redis://:***@127.0.0.1:6379)".into());
        status.fallbacks = 7;
        status.reconnects = 2;
        status.applied = 9;
        status.dropped = 1;
    });
    let (status, detailed) = get_json(&forwarder, "/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detailed["status"], "degraded");
    assert_eq!(detailed["healthy_endpoints"], 1);
    let cluster = &detailed["cluster"];
    assert_eq!(cluster["connected"], false);
    assert_eq!(
        cluster["since"],
        ccf_proxy::monitoring::rfc3339(lost).as_str()
    );
    assert_eq!(
        cluster["last_error"],
        "connection refused (redis://:***@127.0.0.1:6379)"
    );
    assert_eq!(cluster["fallbacks"], 7);
    assert_eq!(cluster["reconnects"], 2);
    assert_eq!(cluster["applied"], 9);
    assert_eq!(cluster["dropped"], 1);
    let (status, summary) = get_json(&forwarder, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["status"], "degraded");
    assert!(summary.get("cluster").is_none(), "{summary}");
    let text = metrics(&forwarder).await;
    for line in [
        "ccf_cluster_connected 0",
        "ccf_cluster_fallbacks_total 7",
        "ccf_cluster_reconnects_total 2",
        "ccf_cluster_updates_applied_total 9",
        "ccf_cluster_updates_dropped_total 1",
    ] {
        assert!(has_line(&text, line), "{line} missing in {text}");
    }

    // Back: healthy again.
    link.set(|status| status.connected = true);
    let (_, detailed) = get_json(&forwarder, "/health/detailed").await;
    assert_eq!(detailed["status"], "healthy");
    assert_eq!(detailed["cluster"]["connected"], true);
}

#[tokio::test]
async fn a_lost_link_never_makes_the_instance_unhealthy_on_its_own_and_the_first_link_stays() {
    let upstream = MockUpstream::start().await;
    let forwarder = forwarder_for(&upstream);
    let first = FakeLink::new(ClusterStatus {
        backend: "redis",
        address: "redis://10.0.0.1:6379".to_string(),
        connected: false,
        ..ClusterStatus::default()
    });
    assert!(forwarder.set_cluster_link(first));
    let second = FakeLink::new(ClusterStatus {
        backend: "redis",
        address: "redis://10.0.0.2:6379".to_string(),
        connected: true,
        ..ClusterStatus::default()
    });
    assert!(!forwarder.set_cluster_link(second));
    let (status, detailed) = get_json(&forwarder, "/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detailed["status"], "degraded");
    assert_eq!(detailed["cluster"]["address"], "redis://10.0.0.1:6379");
    assert_eq!(detailed["cluster"]["since"], Value::Null);
    let text = metrics(&forwarder).await;
    assert!(has_line(&text, "ccf_cluster_connected 0"), "{text}");
    assert_eq!(
        text.matches("# TYPE ccf_cluster_connected gauge").count(),
        1
    );
}
