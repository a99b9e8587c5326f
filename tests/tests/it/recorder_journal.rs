//! The usage recorder's bounded backlog and journal against a real MariaDB behind a TCP proxy
//! (stopping the proxy is a database outage): outcomes past `buffer_size` wait in the journal
//! and reach the database exactly once, with the price they had when they became final (a
//! reload meanwhile changes nothing), `ccf_cost_usd_total` agrees with the stored costs, and a
//! shutdown that cannot reach the database journals what is left for the next start.

use crate::faults_common::{assert_completed_with_mock_usage, message, request_id};
use crate::log_capture::Capture;
use crate::support::{self, eventually, Forwarder, WAIT};
use ccf_testkit::TcpProxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ccf_app::reload::ConfigSource;
use ccf_app::App;
use ccf_config::{Config, ConfigLoader};
use ccf_store::{RequestQuery, RequestRow};
use ccf_testkit::MockUpstream;

const MARIADB: &str = "127.0.0.1:3306";

/// Prices (USD per million tokens) that make the mock's usage (12 in, 6 out, 5 cache writes,
/// 7 cache reads) cost `12*input + 6*output + 5*write + 7*read` thousand nano-USD, whichever
/// TTL the cache writes have.
fn pricing_yaml(scale: u32) -> String {
    format!(
        "  default_pricing:\n    input: {}\n    output: {}\n    cache_creation: {}\n    cache_creation_1h: {}\n    cache_read: {}\n",
        scale,
        10 * scale,
        100 * scale,
        100 * scale,
        1000 * scale
    )
}

/// The mock's usage at [`pricing_yaml`]`(scale)`, in nano-USD.
fn mock_cost_nano(scale: i64) -> i64 {
    (12 + 6 * 10 + 5 * 100 + 7 * 1000) * 1000 * scale
}

/// The whole configuration file: loopback, usage into `database` (YAML lines under
/// `usage_tracking:`) with a small backlog and the journal in `journal_dir`.
fn file_text(database: &str, journal_dir: &Path, scale: u32, upstream: &MockUpstream) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: 5s\nusage_tracking:\n  enabled: true\n  flush_interval: 20ms\n  buffer_size: 20\n  batch_size: 5\n  shutdown_flush_timeout: 300ms\n  journal_dir: {}\n{database}{}endpoints:\n{}",
        journal_dir.display(),
        pricing_yaml(scale),
        support::endpoint_yaml("mock", &upstream.url(), "")
    )
}

fn parse(text: &str) -> Config {
    Config::from_yaml_str(text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

async fn usage_health(forwarder: &Forwarder) -> serde_json::Value {
    forwarder
        .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
        .await
        .json()
}

/// Polls `/health/usage-tracker` until `wanted` holds; returns that answer.
async fn wait_health(
    forwarder: &Forwarder,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = usage_health(forwarder).await;
        if wanted(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recorder never {what}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the recorder holds nothing, in memory or in its journal, and is healthy.
async fn wait_drained(forwarder: &Forwarder) {
    wait_health(forwarder, "drained", |health| {
        health["status"] == "healthy"
            && health["backlog"] == 0
            && health["journal_records"] == 0
            && health["journal_bytes"] == 0
    })
    .await;
}

/// Sends `count` requests; every client gets its 200; returns the request ids.
async fn traffic(forwarder: &Forwarder, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for index in 0..count {
        let answer = forwarder.messages(message(index % 2 == 1), &[]).await;
        assert_eq!(answer.status, 200, "clients never notice the database");
        ids.push(request_id(&answer));
    }
    forwarder.settled().await;
    ids
}

async fn all_rows(store: &dyn ccf_store::UsageStore) -> Vec<RequestRow> {
    store
        .list_requests(&RequestQuery {
            limit: 10_000,
            ..RequestQuery::default()
        })
        .await
        .expect("list the rows")
        .items
}

/// How many rows each request id has.
fn rows_per_id(rows: &[RequestRow]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for row in rows {
        *counts.entry(row.record.request_id.clone()).or_default() += 1;
    }
    counts
}

/// The sum of every `ccf_cost_usd_total` series, in nano-USD (rounded: the counter is a float).
async fn cost_metric_nano(forwarder: &Forwarder) -> i64 {
    let text = forwarder
        .send(hyper::Method::GET, "/metrics", &[], "")
        .await;
    let text = String::from_utf8_lossy(&text.bytes()).into_owned();
    let usd: f64 = text
        .lines()
        .filter(|line| line.starts_with("ccf_cost_usd_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (usd * 1e9).round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_past_buffer_size_wait_in_the_journal_and_reach_mariadb_exactly_once() {
    let upstream = MockUpstream::start().await;
    let mariadb: SocketAddr = MARIADB.parse().expect("address");
    let proxy = TcpProxy::start("127.0.0.1:0".parse().expect("address"), mariadb).await;
    let own = support::mariadb::OwnDatabase::create("journal").await;
    let folder = tempfile::tempdir().expect("temp dir");
    let config = parse(&file_text(
        &own.usage_yaml(proxy.addr().port()),
        folder.path(),
        1,
        &upstream,
    ));
    let journal = config.usage_tracking.journal_path();
    assert!(journal.starts_with(folder.path()));
    let forwarder = Forwarder::start(config).await;
    let mut ids = traffic(&forwarder, 1).await;
    wait_drained(&forwarder).await;

    // Outage under sustained load: far more outcomes than buffer_size (20).
    let address = proxy.stop().await;
    ids.extend(traffic(&forwarder, 150).await);
    // Memory holds buffer_size plus the write being retried (the finals gathered before it:
    // ten batches, at most half of buffer_size, so 10); the journal took the rest.
    let health = wait_health(&forwarder, "used its journal", |health| {
        health["status"] == "unhealthy"
            && health["backlog"].as_u64().unwrap_or(u64::MAX) <= 20 + 10
            && health["journal_records"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let in_journal = health["journal_records"].as_u64().unwrap_or(0);
    let in_memory = health["backlog"].as_u64().unwrap_or(0);
    assert_eq!(
        in_journal + in_memory,
        150,
        "every held outcome is counted once: {health}"
    );
    assert!(
        health["journal_bytes"].as_u64().unwrap_or(0) > 0,
        "{health}"
    );
    assert!(journal.exists(), "{}", journal.display());

    // Back: the journal and the backlog drain, and every outcome is there once.
    let proxy = TcpProxy::start(address, mariadb).await;
    wait_drained(&forwarder).await;
    assert!(!journal.exists(), "the journal is emptied once written");
    let store = forwarder.usage.as_ref().expect("usage on").store.clone();
    let rows = all_rows(store.as_ref()).await;
    let counts = rows_per_id(&rows);
    assert_eq!(rows.len(), ids.len(), "one row per request, nothing else");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} stored exactly once");
    }
    for row in &rows {
        assert_completed_with_mock_usage(row);
        assert_eq!(row.cost.total, mock_cost_nano(1), "{:?}", row.record);
    }
    assert_eq!(
        cost_metric_nano(&forwarder).await,
        mock_cost_nano(1) * ids.len() as i64
    );
    forwarder.stop_settled().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_held_through_a_price_reload_keeps_its_price_and_the_metric_agrees() {
    let upstream = MockUpstream::start().await;
    let mariadb: SocketAddr = MARIADB.parse().expect("address");
    let proxy = TcpProxy::start("127.0.0.1:0".parse().expect("address"), mariadb).await;
    let own = support::mariadb::OwnDatabase::create("reprice").await;
    let folder = tempfile::tempdir().expect("temp dir");
    let database = own.usage_yaml(proxy.addr().port());
    let path = folder.path().join("config.yaml");
    std::fs::write(&path, file_text(&database, folder.path(), 1, &upstream)).expect("write");
    let source = ConfigSource::new(
        ConfigLoader::new()
            .file(&path)
            .env_vars(Vec::<(String, String)>::new()),
    )
    .poll_interval(Duration::from_millis(20))
    .watch(&path);
    let config = source.load().expect("valid configuration");
    let app = App::bind(config)
        .await
        .expect("app binds")
        .with_reload(source);
    let forwarder = Forwarder::run_app(app);
    let before = traffic(&forwarder, 1).await;

    // Final outcomes held in the backlog (and the journal) while the database is down...
    let address = proxy.stop().await;
    let held = traffic(&forwarder, 30).await;
    // ...then the prices double.
    let temporary = path.with_extension("tmp");
    std::fs::write(
        &temporary,
        file_text(&database, folder.path(), 2, &upstream),
    )
    .expect("write");
    std::fs::rename(&temporary, &path).expect("rename");
    let engine = forwarder.engine.clone();
    eventually("the new prices to be in force", move || {
        engine
            .reload_status()
            .is_some_and(|status| status.ok && status.trigger == "file")
    })
    .await;
    let proxy = TcpProxy::start(address, mariadb).await;
    wait_drained(&forwarder).await;
    let after = traffic(&forwarder, 2).await;

    let tracking = forwarder.usage.clone().expect("usage on");
    tracking.recorder.flush().await;
    let rows = all_rows(tracking.store.as_ref()).await;
    let cost: HashMap<&str, i64> = rows
        .iter()
        .map(|row| (row.record.request_id.as_str(), row.cost.total))
        .collect();
    for id in before.iter().chain(&held) {
        assert_eq!(cost.get(id.as_str()), Some(&mock_cost_nano(1)), "{id}");
    }
    for id in &after {
        assert_eq!(cost.get(id.as_str()), Some(&mock_cost_nano(2)), "{id}");
    }
    assert_eq!(rows.len(), before.len() + held.len() + after.len());
    let stored: i64 = rows.iter().map(|row| row.cost.total).sum();
    assert_eq!(cost_metric_nano(&forwarder).await, stored);
    forwarder.stop_settled().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_without_the_database_journals_the_records_and_the_next_start_writes_them() {
    let upstream = MockUpstream::start().await;
    let mariadb: SocketAddr = MARIADB.parse().expect("address");
    let proxy = TcpProxy::start("127.0.0.1:0".parse().expect("address"), mariadb).await;
    let own = support::mariadb::OwnDatabase::create("shutdown").await;
    let folder = tempfile::tempdir().expect("temp dir");
    let text = file_text(
        &own.usage_yaml(proxy.addr().port()),
        folder.path(),
        1,
        &upstream,
    );
    let journal = parse(&text).usage_tracking.journal_path();
    let forwarder = Forwarder::start(parse(&text)).await;
    let mut ids = traffic(&forwarder, 1).await;
    wait_drained(&forwarder).await;

    let address = proxy.stop().await;
    ids.extend(traffic(&forwarder, 3).await);
    let capture = Capture::start();
    let mut forwarder = forwarder;
    forwarder.begin_stop();
    assert!(forwarder.wait_stopped(WAIT).await, "the app stops");
    let line = format!(
        "3 usage records journaled at shutdown: {}",
        journal.display()
    );
    assert!(capture.text().contains(&line), "no {line:?} in the log");
    drop(capture);
    assert!(journal.exists());

    // The next start writes the journal first.
    let proxy = TcpProxy::start(address, mariadb).await;
    let forwarder = Forwarder::start(parse(&text)).await;
    wait_drained(&forwarder).await;
    assert!(!journal.exists());
    let store = forwarder.usage.as_ref().expect("usage on").store.clone();
    let rows = all_rows(store.as_ref()).await;
    assert_eq!(rows.len(), ids.len());
    let counts = rows_per_id(&rows);
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} stored exactly once");
    }
    for row in &rows {
        assert_completed_with_mock_usage(row);
        assert_eq!(row.cost.total, mock_cost_nano(1));
    }
    forwarder.stop_settled().await;
    proxy.stop().await;
}
