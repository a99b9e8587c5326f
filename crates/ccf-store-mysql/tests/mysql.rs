//! MariaDB-specific behaviour: a database written by the Go forwarder (the current schema, and an
//! older one without the v3.5.0 failure columns), two forwarders writing at once, and outcomes
//! kept while the database is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ccf_store::contract::{at_ms, outcome, pricing, snapshot, tokens};
use ccf_store::time::{format_timestamp, parse_timestamp};
use ccf_store::{
    status, Cost, LegacyZone, Recorder, RecorderSettings, RequestFilter, RequestQuery, RequestRow,
    StoredRecord, SummaryQuery, UsageRecord, UsageStore,
};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use ccf_types::Usage;
use common::{admin, create_database, drop_database, target, with_database};
use mysql_async::prelude::Queryable;

/// The Go forwarder's MySQL schema (reference §7.1, `mysql_schema.sql`).
const GO_SCHEMA: &str = include_str!("../migrations/0001_initial.sql");

/// A database left by a Go forwarder older than v3.5.0, hand-written from the reference (not
/// from this project's migrations): no `failure_reason`, `last_failure_reason`, `cancel_reason`,
/// and three rows as that version wrote them, in Shanghai local time.
const GO_SCHEMA_BEFORE_V3_5_0: &str = include_str!("fixtures/go_schema_before_v3_5_0.sql");

/// The columns v3.5.0 added, with the types the published schema gives them.
const V3_5_0_COLUMNS: [(&str, &str); 3] = [
    ("cancel_reason", "varchar(255)"),
    ("failure_reason", "varchar(50)"),
    ("last_failure_reason", "text"),
];

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
            day_zone: ccf_store::DayZone::parse("Asia/Shanghai").unwrap(),
        },
    )
    .await
    .unwrap();
    // Read without migrating: the Go database lacks every recorded version.
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7, 8]
    );
    let report = store.migrate().await.unwrap();
    assert!(report.detected_legacy);
    assert!(store.pending_migrations().await.unwrap().is_empty());
    assert_eq!(report.applied, vec![2, 3, 4, 5, 6, 7, 8]);

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

/// `text` (an instant with its offset, e.g. the fixture's local time plus `+08:00`).
fn instant(text: &str) -> SystemTime {
    parse_timestamp(text, LegacyZone::Utc).unwrap_or_else(|| panic!("not a timestamp: {text}"))
}

/// Which of the v3.5.0 failure columns `request_logs` has in `database`, with their types.
async fn failure_columns(conn: &mut mysql_async::Conn, database: &str) -> Vec<(String, String)> {
    conn.exec(
        "SELECT column_name, column_type FROM information_schema.columns \
         WHERE table_schema = ? AND table_name = 'request_logs' \
         AND column_name IN ('failure_reason', 'last_failure_reason', 'cancel_reason') \
         ORDER BY column_name",
        (database,),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_a_go_database_older_than_v3_5_0_adding_the_failure_columns() {
    with_database(|database| async move {
        let mut conn =
            mysql_async::Conn::from_url(format!("mysql://root@127.0.0.1:3306/{database}"))
                .await
                .unwrap();
        // The Go forwarder's session ran in its zone; the fixture's times are local.
        conn.query_drop("SET time_zone = '+08:00'").await.unwrap();
        let fixture: String = GO_SCHEMA_BEFORE_V3_5_0
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let statements: Vec<&str> = fixture
            .split(";\n")
            .map(|statement| statement.trim().trim_end_matches(';'))
            .filter(|statement| !statement.is_empty())
            .collect();
        assert_eq!(statements.len(), 5, "two tables and three rows");
        for statement in statements {
            conn.query_drop(statement).await.unwrap();
        }
        assert_eq!(
            failure_columns(&mut conn, &database).await,
            vec![],
            "the fixture is the schema from before v3.5.0"
        );

        // Opened as the forwarder opens it: connect, then migrate.
        let store = MysqlStore::connect(
            &target(&database),
            MysqlOptions {
                legacy_zone: LegacyZone::parse("Asia/Shanghai").unwrap(),
                day_zone: ccf_store::DayZone::parse("Asia/Shanghai").unwrap(),
            },
        )
        .await
        .unwrap();
        let report = store.migrate().await.unwrap();
        assert!(report.detected_legacy, "{report:?}");
        assert_eq!(report.applied, vec![2, 3, 4, 5, 6, 7, 8]);
        let expected_columns: Vec<(String, String)> = V3_5_0_COLUMNS
            .iter()
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect();
        assert_eq!(
            failure_columns(&mut conn, &database).await,
            expected_columns
        );
        // The failure filter's index, which v3.5.0's CREATE TABLE would have made, exists too.
        let failure_indexes: Vec<String> = conn
            .exec(
                "SELECT DISTINCT index_name FROM information_schema.statistics \
                 WHERE table_schema = ? AND table_name = 'request_logs' \
                 AND column_name = 'failure_reason'",
                (&database,),
            )
            .await
            .unwrap();
        assert_eq!(failure_indexes, ["idx_failure_reason"]);
        conn.disconnect().await.unwrap();

        // The old rows read back exactly, their local times now UTC instants.
        let completed = store.get_request("req-1a2b3c4d").await.unwrap().unwrap();
        let expected_completed = RequestRow {
            id: completed.id,
            record: UsageRecord {
                client_ip: Some("192.168.1.20:53122".into()),
                user_agent: Some("claude-cli/1.0.98 (external, cli)".into()),
                end_time: Some(instant("2025-08-30 14:05:17.5+08:00")),
                duration_ms: Some(8375),
                endpoint_name: Some("anthropic-main".into()),
                group_name: Some("primary".into()),
                model_name: Some("claude-sonnet-4-20250514".into()),
                is_streaming: true,
                status: status::COMPLETED.into(),
                http_status_code: Some(200),
                usage: Usage {
                    input_tokens: 1200,
                    output_tokens: 350,
                    cache_creation_input_tokens: 2000,
                    cache_read_input_tokens: 10000,
                    ..Usage::default()
                },
                is_final: true,
                ..UsageRecord::new("req-1a2b3c4d", instant("2025-08-30 14:05:09.125+08:00"))
            },
            cost: Cost::new(3_600_000, 5_250_000, 7_500_000, 3_000_000),
            created_at: Some(instant("2025-08-30 14:05:09.126+08:00")),
            updated_at: Some(instant("2025-08-30 14:05:17.501+08:00")),
        };
        assert_eq!(completed, expected_completed);

        let timed_out = store.get_request("req-5e6f7a8b").await.unwrap().unwrap();
        let expected_timed_out = RequestRow {
            id: timed_out.id,
            record: UsageRecord {
                client_ip: Some("192.168.1.21:40010".into()),
                user_agent: Some("Python/3.12 aiohttp/3.9.5".into()),
                end_time: Some(instant("2025-08-31 00:01:00.25+08:00")),
                duration_ms: Some(62250),
                endpoint_name: Some("relay-backup".into()),
                group_name: Some("backup".into()),
                model_name: Some("claude-3-5-haiku-20241022".into()),
                status: "timeout".into(),
                retry_count: 2,
                is_final: true,
                ..UsageRecord::new("req-5e6f7a8b", instant("2025-08-30 23:59:58+08:00"))
            },
            cost: Cost::default(),
            created_at: Some(instant("2025-08-30 23:59:58.001+08:00")),
            updated_at: Some(instant("2025-08-31 00:01:00.251+08:00")),
        };
        assert_eq!(timed_out, expected_timed_out);

        let in_flight = store.get_request("req-9c0d1e2f").await.unwrap().unwrap();
        let go_start = instant("2025-08-31 09:30:00+08:00");
        let expected_in_flight = RequestRow {
            id: in_flight.id,
            record: UsageRecord {
                client_ip: Some("127.0.0.1:61000".into()),
                user_agent: Some("claude-cli/1.0.98 (external, cli)".into()),
                endpoint_name: Some("anthropic-main".into()),
                group_name: Some("primary".into()),
                is_streaming: true,
                status: status::FORWARDING.into(),
                ..UsageRecord::new("req-9c0d1e2f", go_start)
            },
            cost: Cost::default(),
            created_at: Some(instant("2025-08-31 09:30:00.0005+08:00")),
            updated_at: Some(instant("2025-08-31 09:30:00.01+08:00")),
        };
        assert_eq!(in_flight, expected_in_flight);

        // The summary is rebuilt from the two final rows (both on 2025-08-30 in UTC).
        let summary = store.summary(&SummaryQuery::default()).await.unwrap();
        let totals: Vec<(&str, &str, i64, i64, i64, i64)> = summary
            .iter()
            .map(|row| {
                (
                    row.date.as_str(),
                    row.model_name.as_str(),
                    row.request_count,
                    row.success_count,
                    row.error_count,
                    row.total_cost_nano_usd,
                )
            })
            .collect();
        assert_eq!(
            totals,
            vec![
                ("2025-08-30", "claude-3-5-haiku-20241022", 1, 0, 1, 0),
                (
                    "2025-08-30",
                    "claude-sonnet-4-20250514",
                    1,
                    1,
                    0,
                    19_350_000
                ),
            ]
        );

        // New records use the added columns; the Go row in flight is finished and keeps its
        // first start time.
        let mut failed = outcome(
            "req-new-failed",
            at_ms(1_000),
            status::FAILED,
            "claude-haiku-4-5",
            "anthropic-main",
            "primary",
            Usage::default(),
            40,
        );
        failed.failure_reason = Some("rate_limited".into());
        failed.last_failure_reason = Some("anthropic-main answered 429".into());
        let mut cancelled = outcome(
            "req-new-cancelled",
            at_ms(2_000),
            status::CANCELLED,
            "claude-haiku-4-5",
            "anthropic-main",
            "primary",
            tokens(10, 2),
            25,
        );
        cancelled.cancel_reason = Some("client disconnected".into());
        let finished = outcome(
            "req-9c0d1e2f",
            at_ms(3_000),
            status::COMPLETED,
            "claude-haiku-4-5",
            "anthropic-main",
            "primary",
            tokens(5, 5),
            7,
        );
        let batch: Vec<StoredRecord> = [failed, cancelled, finished]
            .into_iter()
            .map(|record| StoredRecord::price(record, &pricing()))
            .collect();
        store.write_batch(&batch).await.unwrap();
        for written in &batch[..2] {
            let row = store
                .get_request(&written.record().request_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&row.record, written.record());
            assert_eq!(&row.cost, written.cost());
        }
        let finished_row = store.get_request("req-9c0d1e2f").await.unwrap().unwrap();
        let expected_finished = UsageRecord {
            start_time: go_start,
            ..batch[2].record().clone()
        };
        assert_eq!(finished_row.record, expected_finished);
        assert_eq!(&finished_row.cost, batch[2].cost());
        assert!(store.migrate().await.unwrap().applied.is_empty());
        store.close().await.unwrap();
    })
    .await;
}
