//! `/metrics` on the proxy port: parses as Prometheus text and moves when traffic flows.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::Harness;

async fn scrape(harness: &Harness) -> Vec<prometheus_parse::Sample> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .get(harness.proxy_url("/metrics").parse().expect("uri"))
        .await
        .expect("metrics answer");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    for family in [
        "endpoint_forwarder_endpoints_total",
        "ccf_requests_suspended",
        "ccf_recorder_backlog",
        "ccf_requests_in_flight",
    ] {
        assert!(
            scrape.docs.keys().any(|name| name.starts_with(family)),
            "no HELP for {family}"
        );
    }
    if scrape
        .samples
        .iter()
        .any(|s| s.metric.starts_with("ccf_requests_finished"))
    {
        for family in [
            "ccf_requests_finished",
            "ccf_request_duration_seconds",
            "ccf_tokens",
        ] {
            assert!(
                scrape.docs.keys().any(|name| name.starts_with(family)),
                "no HELP for {family}"
            );
        }
    }
    scrape.samples
}

fn value(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| {
            labels
                .iter()
                .all(|(name, value)| sample.labels.get(name) == Some(*value))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map_or(0.0, |bucket| bucket.count)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move_when_traffic_flows() {
    let harness = Harness::start().await;
    let before = scrape(&harness).await;
    assert_eq!(
        value(&before, "endpoint_forwarder_endpoints_total", &[]),
        2.0
    );
    assert_eq!(value(&before, "ccf_requests_finished_total", &[]), 0.0);

    harness.send_message(true).await;
    harness.send_message(false).await;
    let samples = harness
        .eventually("two finished requests in /metrics", || async {
            // A request counts as in flight until its answer's bookkeeping is done, a moment
            // after it is counted as finished.
            let samples = scrape(&harness).await;
            (value(&samples, "ccf_requests_finished_total", &[]) == 2.0
                && value(&samples, "ccf_requests_in_flight", &[]) == 0.0)
                .then_some(samples)
        })
        .await;
    let route = [("endpoint", "primary"), ("group", "main")];
    assert_eq!(
        value(
            &samples,
            "ccf_requests_finished_total",
            &[
                ("endpoint", "primary"),
                ("group", "main"),
                ("model", "claude-sonnet-4-5"),
                ("status", "completed"),
                ("status_class", "2xx"),
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "ccf_tokens_total",
            &[("kind", "input"), ("endpoint", "primary")]
        ),
        24.0
    );
    // Two requests with the mock's usage (12 in, 6 out, 5 cache writes, 7 cache reads) at the
    // harness's Sonnet prices: 2 x 146,850 nano-USD.
    let cost = value(&samples, "ccf_cost_usd_total", &route);
    assert!((cost - 293_700.0 / 1e9).abs() < 1e-13, "{cost}");
    assert_eq!(
        value(&samples, "ccf_request_duration_seconds_count", &route),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "ccf_request_time_to_first_byte_seconds_count",
            &route
        ),
        2.0
    );
    assert_eq!(value(&samples, "ccf_endpoint_healthy", &route), 1.0);
    assert_eq!(value(&samples, "ccf_requests_in_flight", &[]), 0.0);
    assert_eq!(
        value(&samples, "ccf_group_active", &[("group", "main")]),
        1.0
    );

    // A pause switches groups.
    assert_eq!(
        harness.post("/api/v1/groups/main/pause", "").await.status,
        http::StatusCode::OK
    );
    let samples = scrape(&harness).await;
    assert_eq!(
        value(&samples, "ccf_group_switches_total", &[("to", "spare")]),
        1.0
    );
    assert_eq!(
        value(&samples, "ccf_group_active", &[("group", "spare")]),
        1.0
    );
}

#[tokio::test]
async fn cluster_series_parse_and_appear_only_with_a_link() {
    let harness = Harness::start().await;
    let before = scrape(&harness).await;
    assert!(
        !before.iter().any(|s| s.metric.starts_with("ccf_cluster_")),
        "cluster series without a link"
    );
    let link = support::FakeClusterLink::new(ccf_proxy::cluster::ClusterStatus {
        backend: "redis",
        address: "redis://127.0.0.1:6379".to_string(),
        connected: true,
        reconnects: 2,
        ..ccf_proxy::cluster::ClusterStatus::default()
    });
    assert!(harness.forwarder.set_cluster_link(link.clone()));
    let samples = scrape(&harness).await;
    assert_eq!(value(&samples, "ccf_cluster_connected", &[]), 1.0);
    assert_eq!(value(&samples, "ccf_cluster_reconnects_total", &[]), 2.0);
    link.set(|status| {
        status.connected = false;
        status.fallbacks = 6;
        status.applied = 11;
        status.dropped = 3;
    });
    let samples = scrape(&harness).await;
    for (metric, expected) in [
        ("ccf_cluster_connected", 0.0),
        ("ccf_cluster_fallbacks_total", 6.0),
        ("ccf_cluster_updates_published_total", 0.0),
        ("ccf_cluster_updates_applied_total", 11.0),
        ("ccf_cluster_updates_dropped_total", 3.0),
    ] {
        assert_eq!(value(&samples, metric, &[]), expected, "{metric}");
        assert!(
            samples.iter().any(|s| s.metric == metric),
            "{metric} not emitted"
        );
    }
}
