//! The database file's life outside the store: replaced while open (a restored backup moved
//! over it), and shrunk after the retention clean-up (incremental auto-vacuum), including a
//! database created without auto-vacuum (the Go forwarder's, an earlier version's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use ccf_store::contract::{at_ms, outcome, pricing, tokens};
use ccf_store::{status, RequestFilter, RequestQuery, StoredRecord, UsageStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};
use rusqlite::Connection;

/// Options that check for a replaced file at every reader checkout (the default is once a
/// second), so that "the next read" is exact.
fn checking_every_read() -> SqliteOptions {
    SqliteOptions {
        replacement_check_interval: Duration::ZERO,
        ..SqliteOptions::default()
    }
}

async fn open(path: &Path, options: SqliteOptions) -> SqliteStore {
    let store = SqliteStore::open(path, options).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Completed outcomes `<prefix>-0000`.. with a 2 KB user agent each (so that rows fill pages).
fn rows(prefix: &str, count: u64) -> Vec<StoredRecord> {
    let pricing = pricing();
    (0..count)
        .map(|i| {
            let mut record = outcome(
                &format!("{prefix}-{i:04}"),
                at_ms(i),
                status::COMPLETED,
                "claude-haiku-4-5",
                "a",
                "g",
                tokens(10, 1),
                5,
            );
            record.user_agent = Some("x".repeat(2048));
            StoredRecord::price(record, &pricing)
        })
        .collect()
}

/// The request ids the store lists, sorted.
async fn listed_ids(store: &SqliteStore) -> Vec<String> {
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 100,
            offset: 0,
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = page
        .items
        .into_iter()
        .map(|row| row.record.request_id)
        .collect();
    ids.sort();
    ids
}

/// A second database with `ids` rows, as one self-contained file (a backup: `VACUUM INTO`).
async fn backup_with(dir: &Path, prefix: &str, count: u64) -> std::path::PathBuf {
    let source = dir.join(format!("{prefix}-source.db"));
    let store = open(&source, SqliteOptions::default()).await;
    store.write_batch(&rows(prefix, count)).await.unwrap();
    let backup = dir.join(format!("{prefix}-backup.db"));
    Connection::open(&source)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    backup
}

fn expected_ids(prefix: &str, count: u64) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:04}")).collect()
}

#[tokio::test]
async fn a_file_replaced_while_open_is_read_and_written_at_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(&path, checking_every_read()).await;
    store.write_batch(&rows("old", 3)).await.unwrap();
    assert_eq!(listed_ids(&store).await, expected_ids("old", 3));

    // An operator restores a backup: `mv backup.db usage.db`.
    let backup = backup_with(dir.path(), "new", 2).await;
    std::fs::rename(&backup, &path).unwrap();

    // The very next read shows the new file's rows, not the unlinked file's.
    assert_eq!(listed_ids(&store).await, expected_ids("new", 2));
    // Writes land in the new file too, and the readers see them.
    store.write_batch(&rows("after", 1)).await.unwrap();
    let mut expected = expected_ids("after", 1);
    expected.extend(expected_ids("new", 2));
    assert_eq!(listed_ids(&store).await, expected);

    // A connection of its own (not the store's) sees the same rows in the file at the path.
    let count: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM request_logs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn a_write_notices_the_replacement_before_any_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(&path, SqliteOptions::default()).await;
    store.write_batch(&rows("old", 2)).await.unwrap();
    let backup = backup_with(dir.path(), "new", 1).await;
    std::fs::rename(&backup, &path).unwrap();

    store.write_batch(&rows("after", 1)).await.unwrap();
    let ids: Vec<String> = {
        let connection = Connection::open(&path).unwrap();
        let mut statement = connection
            .prepare("SELECT request_id FROM request_logs ORDER BY request_id")
            .unwrap();
        let ids = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        ids
    };
    assert_eq!(ids, vec!["after-0000".to_string(), "new-0000".to_string()]);
}

#[tokio::test]
async fn a_deleted_file_reads_as_the_fresh_database_the_writer_creates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(&path, checking_every_read()).await;
    store.write_batch(&rows("old", 2)).await.unwrap();
    assert_eq!(listed_ids(&store).await, expected_ids("old", 2));
    // `rm usage.db`: its -wal and -shm stay behind.
    std::fs::remove_file(&path).unwrap();
    // Not the unlinked file's rows: the path's, a fresh migrated database.
    assert_eq!(listed_ids(&store).await, Vec::<String>::new());
    assert!(path.exists());
    store.write_batch(&rows("new", 1)).await.unwrap();
    assert_eq!(listed_ids(&store).await, expected_ids("new", 1));
}

/// (page_count, freelist_count) of the file at `path`, read by a connection of its own.
fn pages(path: &Path) -> (i64, i64) {
    let connection = Connection::open(path).unwrap();
    let count = |pragma: &str| -> i64 {
        connection
            .pragma_query_value(None, pragma, |row| row.get(0))
            .unwrap()
    };
    (count("page_count"), count("freelist_count"))
}

#[tokio::test]
async fn the_clean_up_gives_the_space_of_deleted_rows_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(&path, SqliteOptions::default()).await;
    assert_eq!(store.auto_vacuum_mode().await.unwrap(), 2, "incremental");
    store.write_batch(&rows("old", 2000)).await.unwrap();
    let (full, _) = pages(&path);
    assert!(
        full > 1000,
        "2000 rows of 2 KB fill more than 1000 pages: {full}"
    );

    let report = store.cleanup(SystemTime::now()).await.unwrap();
    assert_eq!(report.requests_deleted, 2000);
    let (after, free) = pages(&path);
    assert_eq!(free, 0, "every free page released");
    assert!(
        after * 10 < full,
        "the file shrinks to a tenth or less: {full} -> {after} pages"
    );
    // Still a working database.
    store.write_batch(&rows("new", 1)).await.unwrap();
    assert_eq!(listed_ids(&store).await, expected_ids("new", 1));
}

#[tokio::test]
async fn a_database_without_auto_vacuum_is_switched_once_at_migration_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    // A database created without auto-vacuum (as the Go forwarder and earlier versions did).
    {
        let store = open(&path, SqliteOptions::default()).await;
        store.write_batch(&rows("kept", 1500)).await.unwrap();
    }
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    let copy = path;
    let auto_vacuum = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
            .unwrap()
    };
    assert_eq!(auto_vacuum(&copy), 0, "the fixture has no auto-vacuum");

    let store = SqliteStore::open(&copy, SqliteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store.auto_vacuum_mode().await.unwrap(),
        0,
        "not before migrate"
    );
    store.migrate().await.unwrap();
    assert_eq!(store.auto_vacuum_mode().await.unwrap(), 2);
    assert_eq!(auto_vacuum(&copy), 2, "recorded in the file");
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.request_count, 1500);

    let (full, _) = pages(&copy);
    let report = store.cleanup(SystemTime::now()).await.unwrap();
    assert_eq!(report.requests_deleted, 1500);
    let (after, free) = pages(&copy);
    assert_eq!(free, 0);
    assert!(after * 10 < full, "{full} -> {after} pages");
}

/// Size in bytes of the database file itself (not its WAL).
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Waits until the checkpoint thread has completed more than `after` checkpoints and the
/// database file at `path` has grown past `size` bytes: pages went from the WAL into the file.
async fn checkpointed_past(store: &SqliteStore, path: &Path, after: u64, size: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.checkpoints() <= after || file_size(path) <= size {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint into {}: {} checkpoints (more than {after} expected), {} bytes \
             (more than {size} expected)",
            path.display(),
            store.checkpoints(),
            file_size(path)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_wal_is_copied_into_the_file_by_the_checkpoint_thread_and_follows_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = open(
        &path,
        SqliteOptions {
            wal_checkpoint_pages: 8,
            ..SqliteOptions::default()
        },
    )
    .await;
    // The writer's own automatic checkpoint is off: its commits only note the WAL's size.
    let (writer, reader) = store.pragmas().await.unwrap();
    assert_eq!(writer.wal_autocheckpoint, 0);
    assert_eq!(reader.wal_autocheckpoint, 10_000);

    // Rows of 2 KB: 12 of them fill more than the 8 pages of WAL that ask for a checkpoint, and
    // fewer than the 32 at which the writer would checkpoint itself.
    let (before, size) = (store.checkpoints(), file_size(&path));
    store.write_batch(&rows("a", 12)).await.unwrap();
    checkpointed_past(&store, &path, before, size).await;

    // A backup moved over the file: the writer opens the new file at its next write, and the
    // checkpoint thread checkpoints the new file's WAL.
    let backup = backup_with(dir.path(), "new", 1).await;
    std::fs::rename(&backup, &path).unwrap();
    let (before, size) = (store.checkpoints(), file_size(&path));
    store.write_batch(&rows("after", 12)).await.unwrap();
    checkpointed_past(&store, &path, before, size).await;
    let count: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM request_logs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 13);
}
