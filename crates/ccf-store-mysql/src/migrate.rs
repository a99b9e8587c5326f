//! Versioned migrations in the MySQL dialect, recorded in `schema_migrations`.
//!
//! Same versions as the SQLite adapter (v1 the Go schema, detected on a Go database; v2 the added
//! columns; v3 legacy local times to UTC and the summary rebuilt). MySQL commits DDL implicitly, so
//! v1 and v2 are made of idempotent statements (an existing table, column or index is skipped) and
//! resume after an interruption; v3 is DML only and runs in one transaction with its
//! `schema_migrations` row. v4 (MySQL only) adds `cluster_state`, the settings shared by several
//! instances. v5 adds the nullable `api_key_name` (the inbound auth key each request was made
//! with) and its index, idempotently like v1 and v2. v6 adds the `usage_summary` counts stats
//! need to be served from it exactly (cancelled requests, requests with a duration), the
//! `(summarized, start_time)` index and `usage_settings`, idempotently. v7 adds the hourly
//! summaries `usage_hourly_summary` and `usage_hourly_key_summary` and forgets the recorded day
//! zone, so that the rebuild fills them. v8 adds the nullable `requested_model` (the model the
//! client asked for, when an endpoint's `model_map` sent another), idempotently. After the versions, on every run, `usage_summary` (with
//! the hourly summaries) is rebuilt in the configured day zone when it was counted in another
//! one (a database from before v6 counted UTC days). A named lock (`GET_LOCK`)
//! serialises forwarders migrating at once.

use std::collections::BTreeSet;
use std::time::SystemTime;

use ccf_store::{DayZone, LegacyZone, MigrationReport, StoreError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, TxOpts, Value};

use crate::convert::{as_i64, as_time, at, datetime, mysql_error};

const V1_INITIAL: &str = include_str!("../migrations/0001_initial.sql");
const V2_EXTEND: &str = include_str!("../migrations/0002_extend.sql");
const V3_SUMMARY: &str = include_str!("../migrations/0003_summary.sql");
const V4_CLUSTER_STATE: &str = include_str!("../migrations/0004_cluster_state.sql");
const V5_API_KEY_NAME: &str = include_str!("../migrations/0005_api_key_name.sql");
const V6_SUMMARY_IN_DAY_ZONE: &str = include_str!("../migrations/0006_summary_in_day_zone.sql");
const V7_HOURLY_SUMMARY: &str = include_str!("../migrations/0007_hourly_summary.sql");
const V8_REQUESTED_MODEL: &str = include_str!("../migrations/0008_requested_model.sql");

/// Every migration: version and name.
pub const MIGRATIONS: [(u32, &str); 8] = [
    (1, "initial"),
    (2, "extend"),
    (3, "utc_timestamps_and_summary"),
    (4, "cluster_state"),
    (5, "api_key_name"),
    (6, "summary_in_day_zone"),
    (7, "hourly_summary"),
    (8, "requested_model"),
];

const LOCK_NAME: &str = "ccf_usage_migrate";

/// v1 columns an older Go database may lack.
const V1_COLUMNS: [(&str, &str); 27] = [
    ("client_ip", "VARCHAR(45)"),
    ("user_agent", "TEXT"),
    ("method", "VARCHAR(10) DEFAULT 'POST'"),
    ("path", "VARCHAR(255) DEFAULT '/v1/messages'"),
    ("end_time", "DATETIME(6)"),
    ("duration_ms", "BIGINT"),
    ("endpoint_name", "VARCHAR(255)"),
    ("group_name", "VARCHAR(255)"),
    ("model_name", "VARCHAR(255)"),
    ("is_streaming", "BOOLEAN DEFAULT FALSE"),
    ("status", "VARCHAR(50) NOT NULL DEFAULT 'pending'"),
    ("http_status_code", "INT"),
    ("retry_count", "INT DEFAULT 0"),
    ("failure_reason", "VARCHAR(50)"),
    ("last_failure_reason", "TEXT"),
    ("cancel_reason", "VARCHAR(255)"),
    ("input_tokens", "BIGINT DEFAULT 0"),
    ("output_tokens", "BIGINT DEFAULT 0"),
    ("cache_creation_tokens", "BIGINT DEFAULT 0"),
    ("cache_read_tokens", "BIGINT DEFAULT 0"),
    ("input_cost_usd", "DECIMAL(10,6) DEFAULT 0"),
    ("output_cost_usd", "DECIMAL(10,6) DEFAULT 0"),
    ("cache_creation_cost_usd", "DECIMAL(10,6) DEFAULT 0"),
    ("cache_read_cost_usd", "DECIMAL(10,6) DEFAULT 0"),
    ("total_cost_usd", "DECIMAL(10,6) DEFAULT 0"),
    ("created_at", "DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6)"),
    (
        "updated_at",
        "DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)",
    ),
];

/// The statements of a migration file: comments dropped, split at `;` line ends.
fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(";\n")
        .map(|s| s.trim().trim_end_matches(';').trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Applies the pending versions, then makes sure the summary is counted in `day_zone`.
pub(crate) async fn run(
    conn: &mut Conn,
    zone: LegacyZone,
    day_zone: DayZone,
) -> Result<MigrationReport, StoreError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT PRIMARY KEY,
            name VARCHAR(100) NOT NULL,
            applied_at DATETIME(6) NOT NULL,
            detected BOOLEAN NOT NULL DEFAULT FALSE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .await
    .map_err(mysql_error)?;
    let locked: Option<i64> = conn
        .exec_first("SELECT GET_LOCK(?, 120)", (LOCK_NAME,))
        .await
        .map_err(mysql_error)?;
    if locked != Some(1) {
        return Err(StoreError::Locked {
            message: "another process is migrating the usage database".into(),
            source: None,
        });
    }
    let result = match run_locked(conn, zone).await {
        Ok(report) => rebuild_summaries_retrying(conn, day_zone)
            .await
            .map(|_| report),
        Err(error) => Err(error),
    };
    let _ = conn.exec_drop("SELECT RELEASE_LOCK(?)", (LOCK_NAME,)).await;
    result
}

/// Attempts at the summary rebuild when it loses a deadlock to other writers.
const REBUILD_ATTEMPTS: u32 = 5;

/// [`crate::write::summary_in_day_zone`], tried again when it loses a deadlock or a lock wait:
/// other instances (or this one's recorder, retrying a backlog) write rows and summaries while a
/// starting instance rebuilds them, and InnoDB answers one of the two with a deadlock. The
/// rebuild is one transaction, rolled back whole on a deadlock, so trying again is safe.
async fn rebuild_summaries_retrying(
    conn: &mut Conn,
    day_zone: DayZone,
) -> Result<bool, StoreError> {
    let mut attempt = 1;
    loop {
        match crate::write::summary_in_day_zone(conn, day_zone).await {
            Err(error @ StoreError::Locked { .. }) if attempt < REBUILD_ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    error = %error.chain(),
                    "usage summary rebuild lost a lock to concurrent writes; trying again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                    .await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn run_locked(conn: &mut Conn, zone: LegacyZone) -> Result<MigrationReport, StoreError> {
    let mut applied: BTreeSet<u32> = conn
        .query::<u32, _>("SELECT version FROM schema_migrations")
        .await
        .map_err(mysql_error)?
        .into_iter()
        .collect();
    let mut report = MigrationReport::default();
    if applied.is_empty() && table_exists(conn, "request_logs").await? {
        let failed = |error: StoreError| StoreError::Migration {
            version: 1,
            name: "initial".into(),
            source: Box::new(error),
        };
        add_missing_columns(conn).await.map_err(failed)?;
        apply_statements(conn, V1_INITIAL).await.map_err(failed)?;
        record(conn, 1, "initial", true).await?;
        applied.insert(1);
        report.detected_legacy = true;
        tracing::info!(
            "usage database written by the Go forwarder detected; migrating it in place"
        );
    }
    for (version, name) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let failed = |error: StoreError| StoreError::Migration {
            version,
            name: name.into(),
            source: Box::new(error),
        };
        match version {
            1 => {
                apply_statements(conn, V1_INITIAL).await.map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            2 => {
                apply_statements(conn, V2_EXTEND).await.map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            5 => {
                apply_statements(conn, V5_API_KEY_NAME)
                    .await
                    .map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            6 => {
                apply_statements(conn, V6_SUMMARY_IN_DAY_ZONE)
                    .await
                    .map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            7 => {
                apply_statements(conn, V7_HOURLY_SUMMARY)
                    .await
                    .map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            8 => {
                apply_statements(conn, V8_REQUESTED_MODEL)
                    .await
                    .map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            4 => {
                apply_statements(conn, V4_CLUSTER_STATE)
                    .await
                    .map_err(failed)?;
                record(conn, version, name, false).await?;
            }
            // Records itself inside its transaction.
            _ => normalise_and_summarise(conn, zone).await.map_err(failed)?,
        }
        applied.insert(version);
        report.applied.push(version);
    }
    report.current_version = applied.iter().next_back().copied().unwrap_or(0);
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, version = report.current_version, "usage database migrated");
    }
    Ok(report)
}

async fn record<Q: Queryable>(
    conn: &mut Q,
    version: u32,
    name: &str,
    detected: bool,
) -> Result<(), StoreError> {
    conn.exec_drop(
        "INSERT INTO schema_migrations (version, name, applied_at, detected) VALUES (?, ?, ?, ?)",
        (version, name, datetime(SystemTime::now()), detected),
    )
    .await
    .map_err(mysql_error)
}

/// The versions of [`MIGRATIONS`] not recorded in `schema_migrations`, read only: every version
/// when the table is missing (a Go-written or empty database).
pub(crate) async fn pending(conn: &mut Conn) -> Result<Vec<u32>, StoreError> {
    let applied: BTreeSet<u32> = if table_exists(conn, "schema_migrations").await? {
        conn.query::<u32, _>("SELECT version FROM schema_migrations")
            .await
            .map_err(mysql_error)?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    Ok(MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .filter(|version| !applied.contains(version))
        .collect())
}

async fn table_exists(conn: &mut Conn, table: &str) -> Result<bool, StoreError> {
    let count: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
            (table,),
        )
        .await
        .map_err(mysql_error)?;
    Ok(count.unwrap_or(0) > 0)
}

async fn add_missing_columns(conn: &mut Conn) -> Result<(), StoreError> {
    let present: BTreeSet<String> = conn
        .query::<String, _>(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = 'request_logs'",
        )
        .await
        .map_err(mysql_error)?
        .into_iter()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    for (column, definition) in V1_COLUMNS {
        if !present.contains(column) {
            conn.query_drop(format!(
                "ALTER TABLE request_logs ADD COLUMN {column} {definition}"
            ))
            .await
            .map_err(mysql_error)?;
        }
    }
    // v1's CREATE TABLE, which carries the failure filter's index, is skipped for an existing
    // table: a Go database older than v3.5.0 gets the index here (an existing one is kept).
    apply_statements(
        conn,
        "CREATE INDEX idx_failure_reason ON request_logs (failure_reason);",
    )
    .await?;
    Ok(())
}

/// Runs each statement; one that finds its column, index or table already there is skipped.
async fn apply_statements(conn: &mut Conn, sql: &str) -> Result<(), StoreError> {
    for statement in statements(sql) {
        match conn.query_drop(&statement).await {
            Ok(()) => {}
            // 1050 table exists, 1060 duplicate column, 1061 duplicate key name, 1091 nothing to
            // drop.
            Err(mysql_async::Error::Server(error))
                if matches!(error.code, 1050 | 1060 | 1061 | 1091) => {}
            Err(error) => return Err(mysql_error(error)),
        }
    }
    Ok(())
}

/// v3: legacy local `DATETIME`s to UTC, then the summary rebuilt, in one transaction.
async fn normalise_and_summarise(conn: &mut Conn, zone: LegacyZone) -> Result<(), StoreError> {
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .await
        .map_err(mysql_error)?;
    if !zone.is_utc() {
        let mut after_id: i64 = 0;
        let mut rewritten: u64 = 0;
        loop {
            let rows: Vec<Row> = tx
                .exec(
                    "SELECT id, start_time, end_time, created_at, updated_at FROM request_logs \
                     WHERE id > ? ORDER BY id LIMIT 1000",
                    (after_id,),
                )
                .await
                .map_err(mysql_error)?;
            let Some(last) = rows.last() else { break };
            after_id = as_i64(at(last, 0)).unwrap_or(i64::MAX);
            let mut updates: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
            for row in &rows {
                let convert = |index: usize| -> Value {
                    let value = at(row, index);
                    match as_time(value, zone) {
                        Some(time) => datetime(time),
                        None => value.clone(),
                    }
                };
                updates.push(vec![
                    convert(1),
                    convert(2),
                    convert(3),
                    convert(4),
                    at(row, 0).clone(),
                ]);
            }
            rewritten += updates.len() as u64;
            tx.exec_batch(
                "UPDATE request_logs SET start_time = ?, end_time = ?, created_at = ?, updated_at = ? \
                 WHERE id = ?",
                updates,
            )
            .await
            .map_err(mysql_error)?;
        }
        if rewritten > 0 {
            tracing::info!(rewritten, legacy_zone = ?zone, "legacy usage timestamps rewritten in UTC");
        }
    }
    for statement in statements(V3_SUMMARY) {
        tx.query_drop(&statement).await.map_err(mysql_error)?;
    }
    record(&mut tx, 3, "utc_timestamps_and_summary", false).await?;
    tx.commit().await.map_err(mysql_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `VARCHAR(n)` column of `request_logs` and `usage_summary` that a row writes, as the
    /// migrations declare it: `(column, n)`.
    fn declared_varchars() -> BTreeSet<(String, usize)> {
        let mut found = BTreeSet::new();
        let mut table = String::new();
        for migration in [
            V1_INITIAL,
            V2_EXTEND,
            V3_SUMMARY,
            V5_API_KEY_NAME,
            V8_REQUESTED_MODEL,
        ] {
            for line in migration.lines() {
                let line = line.trim();
                let upper = line.to_ascii_uppercase();
                if let Some(rest) = upper.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
                    table = rest.split_whitespace().next().unwrap_or("").to_lowercase();
                }
                let (target, definition) = if let Some(rest) = upper.strip_prefix("ALTER TABLE ") {
                    let mut words = rest.split_whitespace();
                    let altered = words.next().unwrap_or("").to_lowercase();
                    (
                        altered,
                        rest.split_once("ADD COLUMN ").map_or("", |(_, d)| d),
                    )
                } else {
                    (table.clone(), upper.as_str())
                };
                if target != "request_logs" && target != "usage_summary" {
                    continue;
                }
                let Some((name, rest)) = definition.split_once(" VARCHAR(") else {
                    continue;
                };
                let Some((length, _)) = rest.split_once(')') else {
                    continue;
                };
                let column = name.trim().trim_matches('`').to_lowercase();
                found.insert((column, length.parse().expect("VARCHAR length")));
            }
        }
        found
    }

    #[test]
    fn every_varchar_a_row_writes_has_its_length_in_max_chars() {
        let declared = declared_varchars();
        assert!(declared.len() >= 10, "parsed too little: {declared:?}");
        for (column, length) in declared {
            if column == "request_id" {
                // The upsert key, generated by the forwarder: never cut.
                continue;
            }
            assert_eq!(
                ccf_store::columns::max_chars(&column),
                Some(length),
                "{column} is VARCHAR({length})"
            );
        }
    }
}
