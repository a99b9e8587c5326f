//! `cc-forwarder export` on a database the Go forwarder wrote (and may still be writing): the
//! command must not migrate it in place (rewrite its timestamps, drop its triggers) but refuse,
//! telling the operator to run `cc-forwarder migrate` first.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::Connection;

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");

/// The Go schema fixture the SQLite adapter's own tests use.
const GO_SCHEMA: &str =
    include_str!("../../../crates/ccf-store-sqlite/tests/fixtures/go_schema.sql");

/// The schema (tables, indexes, triggers) and one row's timestamps, as the file holds them.
fn snapshot(path: &Path) -> (Vec<String>, String, String) {
    let connection = Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT type || ' ' || name || ': ' || COALESCE(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap();
    let schema = statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let (start, created) = connection
        .query_row(
            "SELECT start_time, created_at FROM request_logs WHERE request_id = 'req-go-1'",
            [],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
        )
        .unwrap();
    (schema, start, created)
}

#[test]
fn export_refuses_an_unmigrated_go_database_and_leaves_it_unchanged() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir(folder.path().join("data")).unwrap();
    let database = folder.path().join("data/usage.db");
    {
        let connection = Connection::open(&database).unwrap();
        connection.execute_batch(GO_SCHEMA).unwrap();
        connection
            .execute_batch(
                "INSERT INTO request_logs (request_id, start_time, end_time, duration_ms,
                    endpoint_name, group_name, model_name, status, created_at, updated_at)
                 VALUES ('req-go-1', '2025-09-28 08:00:01.250000', '2025-09-28 08:00:03.750000',
                    2500, 'primary', 'main', 'claude-sonnet-4-20250514', 'completed',
                    '2025-09-28 08:00:01+08:00', '2025-09-28 08:00:03+08:00');",
            )
            .unwrap();
    }
    let before = snapshot(&database);
    assert!(
        before.0.iter().any(|entry| entry.starts_with("trigger ")),
        "the fixture has the Go trigger"
    );
    std::fs::write(
        folder.path().join("config.yaml"),
        "timezone: Asia/Shanghai\nserver:\n  host: 127.0.0.1\n  port: 8087\n\
         endpoints:\n  - name: primary\n    url: http://127.0.0.1:9\n    group: main\n    group-priority: 1\n\
         usage_tracking:\n  enabled: true\n  database_path: data/usage.db\n",
    )
    .unwrap();

    let output = Command::new(BINARY)
        .current_dir(folder.path())
        .env_remove("RUST_LOG")
        .env_remove("CCF_LOG")
        .stdin(Stdio::null())
        .args(["export", "--config", "config.yaml"])
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("run `cc-forwarder migrate` first"),
        "stderr: {stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing exported");
    assert_eq!(
        snapshot(&database),
        before,
        "schema and timestamps untouched"
    );
}
