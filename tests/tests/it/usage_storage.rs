//! Usage reaches the database: the real app with usage tracking on, against SQLite (a temp file)
//! and the real MariaDB, one exactly priced row per request, flushed at shutdown.

use crate::support;

use std::sync::Arc;

use ccf_config::Config;
use ccf_store::{RequestFilter, RequestQuery, UsageStore};
use ccf_testkit::MockUpstream;
use serde_json::json;
use support::{endpoint_yaml, Forwarder};

/// Sonnet at $3 / $15 / $3.75 / $0.30 per million tokens.
const PRICING: &str = "  model_pricing:\n    claude-sonnet-4-5:\n      input: 3.00\n      output: 15.00\n      cache_creation: 3.75\n      cache_read: 0.30\n";

/// The mock's default usage (12 in, 6 out, 5 cache writes, 7 cache reads) in nano-USD:
/// 12*3000 + 6*15000 + 5*3750 + 7*300.
const EXPECTED_COST_NANO_USD: i64 = 146_850;

fn app_config(upstream: &MockUpstream, database: &str) -> Config {
    let yaml = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\nusage_tracking:\n  enabled: true\n  flush_interval: 100ms\n{database}{PRICING}endpoints:\n{}",
        endpoint_yaml("a", &upstream.url(), "")
    );
    Config::from_yaml_str(&yaml).expect("valid config")
}

async fn send_traffic(forwarder: &Forwarder) -> Vec<String> {
    let mut ids = Vec::new();
    for stream in [false, true] {
        let answer = forwarder
            .messages(
                json!({
                    "model": "claude-sonnet-4-5-20250929",
                    "max_tokens": 16,
                    "stream": stream,
                    "messages": [{"role": "user", "content": "bill me"}],
                }),
                &[("user-agent", "tester, with \"quotes\"")],
            )
            .await;
        assert_eq!(answer.status, 200);
        ids.push(
            answer
                .header("x-ccf-request-id")
                .expect("request id")
                .to_string(),
        );
    }
    ids
}

async fn assert_rows(store: Arc<dyn UsageStore>, ids: &[String]) {
    for id in ids {
        let row = store
            .get_request(id)
            .await
            .expect("query")
            .unwrap_or_else(|| panic!("row for {id}"));
        assert_eq!(row.record.status, "completed");
        assert_eq!(row.record.endpoint_name.as_deref(), Some("a"));
        assert_eq!(
            row.record.model_name.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(row.record.usage.input_tokens, 12);
        assert_eq!(row.record.usage.output_tokens, 6);
        assert_eq!(row.record.usage.cache_creation_input_tokens, 5);
        assert_eq!(row.record.usage.cache_read_input_tokens, 7);
        assert_eq!(
            row.record.user_agent.as_deref(),
            Some("tester, with \"quotes\"")
        );
        assert_eq!(row.record.client_ip.as_deref(), Some("127.0.0.1"));
        assert!(row.record.attempts_json.is_some());
        assert_eq!(
            row.cost.total, EXPECTED_COST_NANO_USD,
            "priced by the family entry, exactly"
        );
    }
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter {
                request_id: Some(ids[0].clone()),
                ..RequestFilter::default()
            },
            limit: 10,
            offset: 0,
        })
        .await
        .expect("list");
    assert_eq!(page.total, 1);
}

/// The database holds exactly `count` rows (for a database only this test wrote to).
async fn assert_row_count(store: &dyn UsageStore, count: u64) {
    let everything = store
        .list_requests(&RequestQuery {
            limit: 100,
            ..RequestQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(everything.total, count, "one row per request, no other");
}

#[tokio::test]
async fn every_request_is_written_to_sqlite_and_flushed_at_shutdown() {
    let upstream = MockUpstream::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join("usage.db");
    let config = app_config(&upstream, &format!("  database_path: {}\n", path.display()));
    let forwarder = Forwarder::start(config).await;
    let ids = send_traffic(&forwarder).await;
    forwarder.stop_settled().await;
    let store: Arc<dyn UsageStore> = Arc::new(
        ccf_store_sqlite::SqliteStore::open(&path, ccf_store_sqlite::SqliteOptions::default())
            .await
            .expect("open the database the app wrote"),
    );
    assert_row_count(store.as_ref(), 2).await;
    assert_rows(store, &ids).await;
}

#[tokio::test]
async fn every_request_is_written_to_mariadb() {
    let upstream = MockUpstream::start().await;
    let own = support::mariadb::OwnDatabase::create("usage").await;
    let database = own.usage_yaml(3306);
    let config = app_config(&upstream, &database);
    let target = match config.usage_tracking.storage() {
        ccf_config::StorageTarget::Mysql(target) => target,
        other => panic!("expected mysql, got {other:?}"),
    };
    let forwarder = Forwarder::start(config).await;
    let ids = send_traffic(&forwarder).await;
    forwarder.stop_settled().await;
    let store: Arc<dyn UsageStore> = Arc::new(
        ccf_store_mysql::MysqlStore::connect(&target, ccf_store_mysql::MysqlOptions::default())
            .await
            .expect("connect to MariaDB"),
    );
    // The database is this test's own: exactly its requests' rows.
    assert_row_count(store.as_ref(), u64::try_from(ids.len()).expect("few ids")).await;
    assert_rows(store, &ids).await;
}

#[tokio::test]
async fn usage_tracker_health_reports_disabled_healthy_and_a_locked_database() {
    // Off: disabled.
    let upstream = MockUpstream::start().await;
    let off = Forwarder::start(support::config(
        "",
        &[endpoint_yaml("a", &upstream.url(), "")],
    ))
    .await;
    let answer = off
        .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "disabled");

    // On: healthy, then unhealthy with a backlog while another process holds the write lock,
    // then healthy again, and the outcome is written after all.
    let folder = tempfile::tempdir().expect("temp dir");
    let path = folder.path().join("usage.db");
    let config = app_config(&upstream, &format!("  database_path: {}\n", path.display()));
    let forwarder = Forwarder::start(config).await;
    let health = forwarder
        .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
        .await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "healthy");

    let locker = rusqlite::Connection::open(&path).expect("open the database");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    let ids = send_traffic(&forwarder).await;
    let deadline = tokio::time::Instant::now() + support::WAIT * 2;
    loop {
        let health = forwarder
            .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
            .await;
        if health.status == 503 {
            assert_eq!(health.json()["status"], "unhealthy");
            assert!(health.json()["backlog"].as_u64().unwrap_or(0) >= 1);
            // The gauge reads the same recorder when /metrics is scraped.
            let metrics = forwarder
                .send(hyper::Method::GET, "/metrics", &[], "")
                .await;
            let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
            let backlog = text
                .lines()
                .find_map(|line| line.strip_prefix("ccf_recorder_backlog "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or_default();
            assert!(backlog >= 1.0, "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    locker.execute_batch("COMMIT").expect("release the lock");
    drop(locker);
    let deadline = tokio::time::Instant::now() + support::WAIT * 3;
    loop {
        let health = forwarder
            .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
            .await;
        if health.status == 200 && health.json()["backlog"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            health.json()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    forwarder.stop_settled().await;
    let store: Arc<dyn UsageStore> = Arc::new(
        ccf_store_sqlite::SqliteStore::open(&path, ccf_store_sqlite::SqliteOptions::default())
            .await
            .expect("open"),
    );
    assert_row_count(store.as_ref(), 2).await;
    assert_rows(store, &ids).await;
}
