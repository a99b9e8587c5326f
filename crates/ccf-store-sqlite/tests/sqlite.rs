//! SQLite-specific behaviour: PRAGMAs, a database written by the Go forwarder, readers that do not
//! wait behind writes, and outcomes kept while the database is locked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ccf_store::contract::{at_ms, outcome, pricing, snapshot, tokens, write, write_paced};
use ccf_store::time::format_timestamp;
use ccf_store::{
    status, DayZone, LegacyZone, Recorder, RecorderSettings, RequestFilter, RequestQuery,
    StoreError, SummaryQuery, UsageStore, WritePace,
};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};
use rusqlite::Connection;

async fn open(path: &std::path::Path, options: SqliteOptions) -> SqliteStore {
    let store = SqliteStore::open(path, options).await.unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn pragmas_are_set_on_the_writer_and_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        &dir.path().join("nested/dir/usage.db"),
        SqliteOptions {
            busy_timeout: Duration::from_millis(1234),
            ..SqliteOptions::default()
        },
    )
    .await;
    let (writer, reader) = store.pragmas().await.unwrap();
    // Statement journals of batches in memory, restored after the migration; readers' sorts
    // in files.
    assert_eq!(writer.temp_store, 2, "MEMORY on the writer");
    assert_eq!(reader.temp_store, 0, "DEFAULT on readers");
    // The writer's WAL is checkpointed by a thread of its own, not in the writer's commits.
    assert_eq!(
        writer.wal_autocheckpoint, 0,
        "no automatic checkpoint on the writer"
    );
    assert_eq!(reader.wal_autocheckpoint, 10_000);
    for pragmas in [writer, reader] {
        assert_eq!(pragmas.journal_mode, "wal");
        assert_eq!(pragmas.synchronous, 1, "NORMAL");
        assert_eq!(pragmas.busy_timeout_ms, 1234);
        assert_eq!(pragmas.foreign_keys, 1);
        assert_eq!(pragmas.journal_size_limit, 4 * 1024 * 1024);
    }
}

/// The Go forwarder's SQLite schema, as its `schema.sql` created it (reference §7.1), with its
/// '+08:00' local-time defaults and its updated_at trigger.
const GO_SCHEMA: &str = include_str!("fixtures/go_schema.sql");

/// Rows as the Go forwarder wrote them: zone-less local times (Asia/Shanghai) for start/end,
/// '+08:00'-suffixed created_at, REAL costs, legacy statuses.
fn write_go_rows(connection: &Connection) {
    connection
        .execute_batch(
            "INSERT INTO request_logs (request_id, client_ip, user_agent, method, path, start_time,
                end_time, duration_ms, endpoint_name, group_name, model_name, is_streaming, status,
                http_status_code, retry_count, input_tokens, output_tokens, cache_creation_tokens,
                cache_read_tokens, input_cost_usd, output_cost_usd, cache_creation_cost_usd,
                cache_read_cost_usd, total_cost_usd, created_at, updated_at)
             VALUES
             ('req-0000aaaa', '127.0.0.1:50000', 'claude-cli/1.0.0', 'POST', '/v1/messages',
                '2025-09-28 08:00:01.250000', '2025-09-28 08:00:03.750000', 2500, 'primary', 'main',
                'claude-sonnet-4-20250514', 1, 'completed', 200, 0, 1000, 200, 300, 4000,
                0.003, 0.003, 0.001125, 0.0012, 0.008325,
                '2025-09-28 08:00:01+08:00', '2025-09-28 08:00:03+08:00'),
             ('req-0000bbbb', '127.0.0.1:50001', 'curl/8.0', 'POST', '/v1/messages',
                '2025-09-28 07:59:00.000000', '2025-09-28 07:59:30.000000', 30000, 'backup', 'spare',
                'claude-3-5-haiku-20241022', 0, 'error', 207, 2, 0, 0, 0, 0,
                0, 0, 0, 0, 0,
                '2025-09-28 07:59:00+08:00', '2025-09-28 07:59:30+08:00'),
             ('req-0000cccc', '127.0.0.1:50002', NULL, 'POST', '/v1/messages',
                '2025-09-28 09:15:00.5', NULL, NULL, 'primary', 'main',
                NULL, 1, 'processing', 200, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0,
                '2025-09-28 09:15:00+08:00', '2025-09-28 09:15:00+08:00'),
             ('req-0000dddd', '10.1.1.1:1', 'ua', 'POST', '/v1/messages',
                '2025-09-27 23:30:00 +0800 CST', '2025-09-27 23:30:01 +0800 CST', 1000, 'primary', 'main',
                'claude-sonnet-4-20250514', 0, 'cancelled', 499, 0, 10, 0, 0, 0,
                0, 0, 0, 0, 0,
                '2025-09-27 23:30:00+08:00', '2025-09-27 23:30:01+08:00');",
        )
        .unwrap();
}

#[tokio::test]
async fn migrates_a_database_written_by_the_go_forwarder_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    {
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch(GO_SCHEMA).unwrap();
        write_go_rows(&connection);
    }
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            legacy_zone: LegacyZone::parse("Asia/Shanghai").unwrap(),
            day_zone: DayZone::parse("Asia/Shanghai").unwrap(),
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    // Read without migrating: the Go database lacks every recorded version.
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        vec![1, 2, 3, 5, 6, 7, 8, 9, 10]
    );
    let report = store.migrate().await.unwrap();
    assert!(report.detected_legacy);
    assert!(store.pending_migrations().await.unwrap().is_empty());
    assert_eq!(report.applied, vec![2, 3, 5, 6, 7, 8, 9, 10]);
    assert_eq!(report.current_version, 10);

    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 50,
            offset: 0,
        })
        .await
        .unwrap();
    let ids: Vec<_> = page
        .items
        .iter()
        .map(|r| r.record.request_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            "req-0000cccc",
            "req-0000aaaa",
            "req-0000bbbb",
            "req-0000dddd"
        ]
    );

    let completed = store.get_request("req-0000aaaa").await.unwrap().unwrap();
    assert_eq!(
        format_timestamp(completed.record.start_time),
        "2025-09-28T00:00:01.250000Z",
        "zone-less legacy times are read in the configured zone"
    );
    assert_eq!(
        completed.record.end_time.map(format_timestamp).as_deref(),
        Some("2025-09-28T00:00:03.750000Z")
    );
    assert_eq!(
        completed.created_at.map(format_timestamp).as_deref(),
        Some("2025-09-28T00:00:01.000000Z"),
        "created_at with its +08:00 suffix"
    );
    assert_eq!(
        completed.record.client_ip.as_deref(),
        Some("127.0.0.1:50000")
    );
    assert!(completed.record.is_streaming);
    assert!(completed.record.is_final);
    assert_eq!(
        completed.record.api_key_name, None,
        "rows the Go forwarder wrote have no key name"
    );
    assert_eq!(completed.record.usage.cache_read_input_tokens, 4000);
    assert_eq!(
        completed.cost.total, 8_325_000,
        "REAL costs become exact nano-USD"
    );
    assert_eq!(completed.cost.cache_creation, 1_125_000);

    let legacy_error = store.get_request("req-0000bbbb").await.unwrap().unwrap();
    assert_eq!(legacy_error.record.status, "error");
    assert!(legacy_error.record.is_final);
    let in_flight = store.get_request("req-0000cccc").await.unwrap().unwrap();
    assert!(!in_flight.record.is_final);
    assert_eq!(
        format_timestamp(in_flight.record.start_time),
        "2025-09-28T01:15:00.500000Z"
    );
    let go_string = store.get_request("req-0000dddd").await.unwrap().unwrap();
    assert_eq!(
        format_timestamp(go_string.record.start_time),
        "2025-09-27T15:30:00.000000Z"
    );

    // Filters work across legacy rows now that they are UTC.
    let failed = RequestFilter {
        status: Some("failed".into()),
        ..RequestFilter::default()
    };
    assert_eq!(
        store
            .list_requests(&RequestQuery {
                filter: failed,
                limit: 10,
                offset: 0
            })
            .await
            .unwrap()
            .total,
        1
    );
    let morning = RequestFilter {
        start: Some(at_ms(0) - Duration::from_secs(60)),
        end: Some(at_ms(0) + Duration::from_secs(60)),
        ..RequestFilter::default()
    };
    let rows = store
        .list_requests(&RequestQuery {
            filter: morning,
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        rows.total, 2,
        "req-0000aaaa (00:00:01Z) and req-0000bbbb (23:59:00Z)"
    );

    // The summary is rebuilt from the legacy final rows.
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    let requests: i64 = summary.iter().map(|r| r.request_count).sum();
    assert_eq!(requests, 3);
    let total: i64 = summary.iter().map(|r| r.total_cost_nano_usd).sum();
    assert_eq!(total, 8_325_000);
    // On the Shanghai days the Go forwarder's local times name (07:59 on the 28th is 23:59 UTC
    // on the 27th).
    let days: Vec<_> = summary
        .iter()
        .map(|r| (r.date.as_str(), r.model_name.as_str()))
        .collect();
    assert_eq!(
        days,
        vec![
            ("2025-09-27", "claude-sonnet-4-20250514"),
            ("2025-09-28", "claude-3-5-haiku-20241022"),
            ("2025-09-28", "claude-sonnet-4-20250514")
        ]
    );

    // The forwarder keeps writing into it.
    let store = Arc::new(store);
    let recorder = Recorder::spawn(store.clone(), RecorderSettings::default(), pricing());
    recorder.record(snapshot("req-new-1", at_ms(60_000), status::PENDING));
    recorder.record(outcome(
        "req-new-1",
        at_ms(60_000),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(100, 10),
        42,
    ));
    // Overwriting a legacy in-flight row with its final outcome.
    let mut finished = outcome(
        "req-0000cccc",
        at_ms(0),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(5, 5),
        7,
    );
    finished.start_time = at_ms(999_999);
    recorder.record(finished);
    recorder.shutdown().await;
    let row = store.get_request("req-0000cccc").await.unwrap().unwrap();
    assert_eq!(row.record.status, status::COMPLETED);
    assert_eq!(
        format_timestamp(row.record.start_time),
        "2025-09-28T01:15:00.500000Z",
        "start_time kept from the legacy row"
    );
    assert_eq!(
        store
            .list_requests(&RequestQuery {
                filter: RequestFilter::default(),
                limit: 1,
                offset: 0
            })
            .await
            .unwrap()
            .total,
        5
    );
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty() && !again.detected_legacy);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.iter().map(|r| r.request_count).sum::<i64>(), 5);
}

#[tokio::test]
async fn an_older_go_database_missing_columns_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    {
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE request_logs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    request_id TEXT UNIQUE NOT NULL,
                    start_time DATETIME NOT NULL,
                    status TEXT NOT NULL DEFAULT 'pending',
                    input_tokens INTEGER DEFAULT 0
                 );
                 INSERT INTO request_logs (request_id, start_time, status, input_tokens)
                 VALUES ('req-old', '2025-01-01 00:00:00', 'completed', 3);",
            )
            .unwrap();
    }
    let store = open(&path, SqliteOptions::default()).await;
    let row = store.get_request("req-old").await.unwrap().unwrap();
    assert_eq!(row.record.usage.input_tokens, 3);
    assert_eq!(row.record.method, "POST");
    assert_eq!(
        format_timestamp(row.record.start_time),
        "2025-01-01T00:00:00.000000Z"
    );
}

#[tokio::test]
async fn readers_do_not_wait_behind_a_held_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(&path, SqliteOptions::default()).await;
    let pricing = pricing();
    let row =
        ccf_store::StoredRecord::price(snapshot("req-r", at_ms(0), status::PENDING), &pricing);
    store.write_batch(&[row]).await.unwrap();
    let blocker = Connection::open(&path).unwrap();
    blocker
        .execute_batch("BEGIN IMMEDIATE; UPDATE request_logs SET retry_count = 9;")
        .unwrap();
    let started = Instant::now();
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(
        page.items[0].record.retry_count, 0,
        "readers see the last commit"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    blocker.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_keeps_outcomes_while_the_database_is_locked_and_writes_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = Arc::new(
        open(
            &path,
            SqliteOptions {
                busy_timeout: Duration::from_millis(20),
                ..SqliteOptions::default()
            },
        )
        .await,
    );
    // Another process holds the write lock: every write fails with SQLITE_BUSY.
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let direct = store
        .write_batch(&[ccf_store::StoredRecord::price(
            snapshot("req-probe", at_ms(0), status::PENDING),
            &pricing(),
        )])
        .await;
    assert!(
        matches!(direct, Err(StoreError::Locked { .. })),
        "{direct:?}"
    );

    let settings = RecorderSettings {
        batch_size: 50,
        flush_interval: Duration::from_millis(20),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..RecorderSettings::default()
    };
    let recorder = Recorder::spawn(store.clone(), settings, pricing());
    for i in 0..500u64 {
        let id = format!("req-lock-{i:03}");
        recorder.record(snapshot(&id, at_ms(i), status::PENDING));
        recorder.record(outcome(
            &id,
            at_ms(i),
            status::COMPLETED,
            "claude-haiku-4-5",
            "a",
            "g",
            tokens(i, 1),
            5,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(error) = recorder.last_error() {
            assert!(error.retryable);
            assert!(error.message.contains("locked"), "{}", error.message);
            break;
        }
        assert!(Instant::now() < deadline, "no write failure seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(recorder.backlog() >= 500, "every outcome kept meanwhile");
    assert_eq!(recorder.written(), 0);

    blocker.execute_batch("COMMIT;").unwrap();
    recorder.flush().await;
    assert_eq!(recorder.backlog(), 0);
    assert!(recorder.last_error().is_none());
    assert_eq!(recorder.dropped(), 0);
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.request_count, 500);
    assert_eq!(stats.totals.success_count, 500);
    recorder.shutdown().await;
}

/// One batch mixing ids never written (inserted without a read) with stored ones (read, planned
/// and upserted): the rows and the summary are what writing them one by one gives.
#[tokio::test]
async fn a_batch_of_new_and_stored_ids_writes_each_row_once_and_counts_each_final_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("usage.db"), SqliteOptions::default()).await;
    let final_of = |id: &str, input: u64| {
        outcome(
            id,
            at_ms(0),
            status::COMPLETED,
            "claude-haiku-4-5",
            "primary",
            "main",
            tokens(input, 1),
            100,
        )
    };
    let stored_final = final_of("req-stored-final", 10);
    write(
        &store,
        vec![
            snapshot("req-stored-live", at_ms(0), status::FORWARDING),
            stored_final.clone(),
        ],
    )
    .await;

    let new_final = final_of("req-new-final", 100);
    let stored_live_final = final_of("req-stored-live", 1000);
    write(
        &store,
        vec![
            snapshot("req-new-final", at_ms(0), status::PENDING),
            new_final.clone(),
            snapshot("req-stored-final", at_ms(0), status::PROCESSING),
            stored_live_final.clone(),
            snapshot("req-new-live", at_ms(0), status::FORWARDING),
        ],
    )
    .await;

    for (id, expected) in [
        ("req-new-final", &new_final),
        ("req-stored-final", &stored_final),
        ("req-stored-live", &stored_live_final),
    ] {
        let row = store.get_request(id).await.unwrap().unwrap();
        assert_eq!(&row.record, expected, "{id}");
    }
    let live = store.get_request("req-new-live").await.unwrap().unwrap();
    assert_eq!(live.record.status, status::FORWARDING);
    assert!(!live.record.is_final);
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 4);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (
            summary[0].request_count,
            summary[0].success_count,
            summary[0].total_input_tokens,
            summary[0].total_output_tokens
        ),
        (3, 3, 10 + 100 + 1000, 3)
    );
}

/// Migrations 9 and 10: a request row is inserted into fewer b-trees, and the lookups that used
/// the dropped or narrowed indexes still find their rows through an index (checked on the query
/// plan SQLite chooses, on a Go database and on a new one).
#[tokio::test]
async fn request_rows_touch_only_the_indexes_that_queries_use() {
    let dir = tempfile::tempdir().unwrap();
    for (name, go_schema) in [("go.db", true), ("new.db", false)] {
        let path = dir.path().join(name);
        if go_schema {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(GO_SCHEMA).unwrap();
            write_go_rows(&connection);
        }
        let store = open(&path, SqliteOptions::default()).await;
        store.migrate().await.unwrap();
        drop(store);
        let connection = Connection::open(&path).unwrap();
        let mut indexes: Vec<String> = connection
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'request_logs' \
                 AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        indexes.sort();
        assert_eq!(
            indexes,
            [
                "idx_request_logs_api_key_name_set",
                "idx_request_logs_failure_reason_set",
                "idx_request_logs_start_time_duration",
                "idx_request_logs_unsummarized_start_time",
            ],
            "{name}"
        );
        let plan = |sql: &str| -> String {
            connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .join("; ")
        };
        let unsummarized = plan(
            "SELECT COUNT(*) FROM request_logs WHERE summarized = 0 \
             AND start_time >= '2025-01-01' AND start_time < '2026-01-01'",
        );
        assert!(
            unsummarized.contains("idx_request_logs_unsummarized_start_time"),
            "{name}: {unsummarized}"
        );
        let failures = plan("SELECT id FROM request_logs WHERE failure_reason = 'timeout'");
        assert!(
            failures.contains("idx_request_logs_failure_reason_set"),
            "{name}: {failures}"
        );
        // Migration 10: a key's rows are still found through the key's partial index.
        let keyed = plan("SELECT id FROM request_logs WHERE api_key_name = 'team'");
        assert!(
            keyed.contains("idx_request_logs_api_key_name_set"),
            "{name}: {keyed}"
        );
    }
}

/// Batches longer than one multi-row insert (8 rows): whole chunks go in one statement, the ids
/// a chunk found stored are upserted, the rest of a batch is inserted row by row, and the rows
/// and the summary are those of writing every snapshot on its own.
#[tokio::test]
async fn long_batches_write_every_row_and_count_every_final_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("usage.db"), SqliteOptions::default()).await;
    let id = |n: u64| format!("req-long-{n:03}");
    let final_of = |n: u64| {
        outcome(
            &id(n),
            at_ms(n),
            status::COMPLETED,
            "claude-haiku-4-5",
            "primary",
            "main",
            tokens(n + 1, 1),
            100,
        )
    };
    // 0-29 final; 30-49 and 70-72 still live.
    let first: Vec<_> = (0..50)
        .chain(70..73)
        .map(|n| {
            if n < 30 {
                final_of(n)
            } else {
                snapshot(&id(n), at_ms(n), status::FORWARDING)
            }
        })
        .collect();
    // Stored times keep microseconds: the window starts at the last whole one.
    let before = SystemTime::UNIX_EPOCH
        + Duration::from_micros(
            u64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_micros(),
            )
            .unwrap(),
        );
    write(&store, first).await;
    // 60 finals, 30-89, in inserts of 8 ids: 30-37 and 38-45 all stored, 46-53 half stored,
    // 54-61 and 62-69 new, 70-77 three stored (after inserts that inserted), 78-85 new, and
    // 86-89 fewer than an insert's rows. Written as the caught-up recorder writes, giving way
    // between inserts: the rows are the same.
    let second: Vec<_> = (30..90).map(final_of).collect();
    write_paced(&store, second, WritePace::GiveWay).await;
    let after = SystemTime::now();

    for n in 0..90 {
        let row = store.get_request(&id(n)).await.unwrap().unwrap();
        assert_eq!(row.record, final_of(n), "{}", id(n));
        // Each row holds the write time of its batch (rows of a multi-row insert share one
        // parameter for it); a row written again keeps its `created_at`.
        let (created, updated) = (row.created_at.unwrap(), row.updated_at.unwrap());
        assert!(
            before <= created && created <= updated && updated <= after,
            "{}: {created:?} {updated:?}",
            id(n)
        );
    }
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 1,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 90);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (summary[0].request_count, summary[0].total_input_tokens),
        (90, (1..=90).sum::<u64>() as i64)
    );
}
