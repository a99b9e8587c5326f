//! MariaDB-specific behaviour: a database written by the Go forwarder, two forwarders writing
//! at once, and outcomes kept while the database is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccf_store::contract::{at_ms, outcome, pricing, snapshot, tokens};
use ccf_store::time::format_timestamp;
use ccf_store::{
    status, LegacyZone, Recorder, RecorderSettings, RequestFilter, RequestQuery, SummaryQuery,
    UsageStore,
};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use common::{admin, create_database, drop_database, target};
use mysql_async::prelude::Queryable;

/// The Go forwarder's MySQL schema (reference §7.1, `mysql_schema.sql`).
const GO_SCHEMA: &str = include_str!("../migrations/0001_initial.sql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_a_database_written_by_the_go_forwarder_and_keeps_going() {
    let database = create_database().await;
    {
        // As the Go forwarder left it: its schema, its session in Asia/Shanghai, local DATETIMEs.
        let mut conn =
            mysql_async::Conn::from_url(format!("mysql://root@127.0.0.1:3306/{database}"))
                .await
                .unwrap();
        for statement in GO_SCHEMA
            .split(";\n")
            .map(str::trim)
            .filter(|s| s.contains("CREATE"))
        {
            conn.query_drop(statement.trim_end_matches(';'))
                .await
                .unwrap();
        }
        conn.query_drop(
            "INSERT INTO request_logs (request_id, client_ip, user_agent, method, path, start_time,
                end_time, duration_ms, endpoint_name, group_name, model_name, is_streaming, status,
                http_status_code, retry_count, input_tokens, output_tokens, cache_creation_tokens,
                cache_read_tokens, input_cost_usd, output_cost_usd, cache_creation_cost_usd,
                cache_read_cost_usd, total_cost_usd, created_at, updated_at)
             VALUES
             ('req-0000aaaa', '127.0.0.1:50000', 'claude-cli/1.0.0', 'POST', '/v1/messages',
                '2025-09-28 08:00:01.250000', '2025-09-28 08:00:03.750000', 2500, 'primary', 'main',
                'claude-sonnet-4-20250514', TRUE, 'completed', 200, 0, 1000, 200, 300, 4000,
                0.003, 0.003, 0.001125, 0.0012, 0.008325,
                '2025-09-28 08:00:01.000000', '2025-09-28 08:00:03.000000'),
             ('req-0000bbbb', '127.0.0.1:50001', 'curl/8.0', 'POST', '/v1/messages',
                '2025-09-28 07:59:00', '2025-09-28 07:59:30', 30000, 'backup', 'spare',
                'claude-3-5-haiku-20241022', FALSE, 'rate_limited', 429, 2, 0, 0, 0, 0,
                0, 0, 0, 0, 0, '2025-09-28 07:59:00', '2025-09-28 07:59:30'),
             ('req-0000cccc', '127.0.0.1:50002', NULL, 'POST', '/v1/messages',
                '2025-09-28 09:15:00.5', NULL, NULL, 'primary', 'main',
                NULL, TRUE, 'processing', 200, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, '2025-09-28 09:15:00', '2025-09-28 09:15:00')",
        )
        .await
        .unwrap();
        conn.disconnect().await.unwrap();
    }
    let store = MysqlStore::connect(
        &target(&database),
        MysqlOptions {
            legacy_zone: LegacyZone::parse("Asia/Shanghai").unwrap(),
        },
    )
    .await
    .unwrap();
    let report = store.migrate().await.unwrap();
    assert!(report.detected_legacy);
    assert_eq!(report.applied, vec![2, 3, 4, 5]);

    let completed = store.get_request("req-0000aaaa").await.unwrap().unwrap();
    assert_eq!(
        format_timestamp(completed.record.start_time),
        "2025-09-28T00:00:01.250000Z"
    );
    assert_eq!(
        completed.created_at.map(format_timestamp).as_deref(),
        Some("2025-09-28T00:00:01.000000Z")
    );
    assert_eq!(
        completed.cost.total, 8_325_000,
        "DECIMAL costs become exact nano-USD"
    );
    assert!(completed.record.is_final && completed.record.is_streaming);
    let limited = store.get_request("req-0000bbbb").await.unwrap().unwrap();
    assert_eq!(limited.record.status, "rate_limited");
    assert_eq!(
        format_timestamp(limited.record.start_time),
        "2025-09-27T23:59:00.000000Z"
    );
    let failed = RequestFilter {
        status: Some("failed".into()),
        ..RequestFilter::default()
    };
    let page = store
        .list_requests(&RequestQuery {
            filter: failed,
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.iter().map(|r| r.request_count).sum::<i64>(), 2);
    assert_eq!(
        summary.iter().map(|r| r.total_cost_nano_usd).sum::<i64>(),
        8_325_000
    );

    let store = Arc::new(store);
    let recorder = Recorder::spawn(store.clone(), RecorderSettings::default(), pricing());
    recorder.record(outcome(
        "req-0000cccc",
        at_ms(0),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(5, 5),
        7,
    ));
    recorder.record(outcome(
        "req-new-1",
        at_ms(1),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(1, 1),
        7,
    ));
    recorder.shutdown().await;
    let row = store.get_request("req-0000cccc").await.unwrap().unwrap();
    assert_eq!(row.record.status, status::COMPLETED);
    assert_eq!(
        format_timestamp(row.record.start_time),
        "2025-09-28T01:15:00.500000Z"
    );
    assert!(store.migrate().await.unwrap().applied.is_empty());
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.iter().map(|r| r.request_count).sum::<i64>(), 4);
    drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recorders_writing_to_one_database_lose_nothing() {
    let database = create_database().await;
    let first = Arc::new(
        MysqlStore::connect(&target(&database), MysqlOptions::default())
            .await
            .unwrap(),
    );
    let second = Arc::new(
        MysqlStore::connect(&target(&database), MysqlOptions::default())
            .await
            .unwrap(),
    );
    // Both instances migrate at start-up, concurrently.
    let (a, b) = tokio::join!(first.migrate(), second.migrate());
    a.unwrap();
    b.unwrap();
    let settings = RecorderSettings {
        batch_size: 50,
        flush_interval: Duration::from_millis(20),
        initial_backoff: Duration::from_millis(5),
        ..RecorderSettings::default()
    };
    let recorders = [
        Recorder::spawn(first.clone(), settings.clone(), pricing()),
        Recorder::spawn(second.clone(), settings, pricing()),
    ];
    let mut tasks = Vec::new();
    for (instance, recorder) in recorders.iter().enumerate() {
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1500u64 {
                let id = format!("req-{instance}-{i:05}");
                // Same days, models and endpoints for both: they update the same summary rows.
                let start = at_ms(i * 60_000);
                recorder.record(snapshot(&id, start, status::PENDING));
                let mut done = outcome(
                    &id,
                    start,
                    status::COMPLETED,
                    "claude-haiku-4-5",
                    ["a", "b"][(i % 2) as usize],
                    "g",
                    tokens(i, 3),
                    10,
                );
                done.instance_id = Some(format!("instance-{instance}"));
                recorder.record(done);
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for recorder in &recorders {
        recorder.shutdown().await;
        assert_eq!(recorder.dropped(), 0);
        assert_eq!(recorder.backlog(), 0);
    }
    let stats = first.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.request_count, 3000);
    assert_eq!(stats.totals.success_count, 3000);
    let expected: i64 = (0..1500u64)
        .map(|i| {
            pricing()
                .cost(Some("claude-haiku-4-5"), &tokens(i, 3))
                .total
        })
        .sum::<i64>()
        * 2;
    assert_eq!(stats.totals.total_cost_nano_usd, expected);
    let summary = first.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.iter().map(|r| r.request_count).sum::<i64>(), 3000);
    assert_eq!(
        summary.iter().map(|r| r.total_cost_nano_usd).sum::<i64>(),
        expected
    );
    let instance_rows = first
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 10_000,
            offset: 0,
        })
        .await
        .unwrap()
        .items
        .iter()
        .filter(|row| row.record.instance_id.as_deref() == Some("instance-1"))
        .count();
    assert_eq!(instance_rows, 1500);
    drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_keeps_outcomes_while_the_database_is_gone_and_writes_them_after() {
    let database = create_database().await;
    let store = Arc::new(
        MysqlStore::connect(&target(&database), MysqlOptions::default())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let settings = RecorderSettings {
        batch_size: 50,
        flush_interval: Duration::from_millis(20),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..RecorderSettings::default()
    };
    let recorder = Recorder::spawn(store.clone(), settings, pricing());
    for i in 0..100u64 {
        recorder.record(outcome(
            &format!("req-before-{i:03}"),
            at_ms(i),
            status::COMPLETED,
            "claude-haiku-4-5",
            "a",
            "g",
            tokens(i, 1),
            5,
        ));
    }
    recorder.flush().await;
    assert_eq!(recorder.written(), 100);

    // The database disappears mid-run (connections drop, the schema is gone).
    admin()
        .await
        .query_drop(format!("DROP DATABASE {database}"))
        .await
        .unwrap();
    for i in 0..300u64 {
        let id = format!("req-during-{i:03}");
        recorder.record(snapshot(&id, at_ms(i), status::PENDING));
        recorder.record(outcome(
            &id,
            at_ms(i),
            status::FAILED,
            "claude-haiku-4-5",
            "a",
            "g",
            tokens(i, 2),
            5,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.last_error().is_none() {
        assert!(Instant::now() < deadline, "no failure seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = recorder.last_error().unwrap();
    assert!(error.retryable, "{error:?}");
    // Counted in snapshots: a request whose pending snapshot is in the failing batch and whose
    // final one waits behind it counts twice.
    assert!(recorder.backlog() >= 300, "every outcome kept: {error:?}");
    assert_eq!(recorder.written(), 100, "nothing written meanwhile");

    // It comes back (restored empty, migrated by an operator or another instance).
    admin()
        .await
        .query_drop(format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    MysqlStore::connect(&target(&database), MysqlOptions::default())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    recorder.flush().await;
    assert_eq!(recorder.backlog(), 0);
    assert!(recorder.last_error().is_none());
    assert_eq!(recorder.dropped(), 0);
    let stats = store
        .stats(&RequestFilter {
            status: Some("failed".into()),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stats.totals.request_count, 300,
        "every outcome written after recovery"
    );
    recorder.shutdown().await;
    drop_database(&database).await;
}
