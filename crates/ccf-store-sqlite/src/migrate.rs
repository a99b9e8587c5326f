//! Versioned migrations, embedded in the binary and recorded in `schema_migrations`.
//!
//! - v1 `initial`: the Go forwarder's tables. On a database the Go forwarder wrote (its tables
//!   exist, `schema_migrations` does not) v1 is recorded as applied (`detected = 1`); only what is
//!   missing is created (older Go versions lacked some columns: they are added).
//! - v2 `extend`: the columns this port adds, exact integer costs filled from the USD columns.
//! - v3 `utc_timestamps_and_summary`: every stored time rewritten as RFC 3339 UTC (zone-less legacy
//!   values read in the store's [`LegacyZone`]), then `usage_summary` rebuilt from final rows.
//! - v5 `api_key_name`: the nullable name of the inbound auth key each request was made with
//!   (v4 is MySQL's `cluster_state`; SQLite has no counterpart, the number is kept aligned).
//! - v6 `summary_in_day_zone`: `usage_summary` counts cancelled requests and requests with a
//!   duration (so stats can be served from it exactly), an index finds the rows it does not count
//!   (`summarized, start_time`), and `usage_settings` records the day zone of its rows.
//! - v7 `hourly_summary`: `usage_hourly_summary` and `usage_hourly_key_summary`, the summaries by
//!   local hour; the recorded day zone is forgotten so the rebuild below fills them.
//! - v8 `requested_model`: the nullable model the client asked for (an endpoint's `model_map`
//!   may send another; `model_name` stays the model billed).
//! - v9 `lean_request_indexes`: a request row touches fewer b-trees: the status, model,
//!   endpoint and group indexes dropped (no query looks rows up by them), the failure-reason
//!   index holds only rows with a reason, and the index of rows the summary does not count holds
//!   only those (`summarized = 0`).
//! - v10 `partial_key_indexes`: two b-trees fewer again: the `instance_id` index dropped (a
//!   filter of the request list only, and every row has one), the `api_key_name` index holding
//!   only rows with a key.
//!
//! After the versions, on every run: when the configured day zone is not the one recorded (a
//! database from before v6 counted UTC days), `usage_summary` is rebuilt from the final rows in
//! the configured zone, the hourly summaries with it ([`crate::write::summary_in_day_zone`]).
//!
//! All of it runs in one `BEGIN IMMEDIATE` transaction on the writer connection, so it is atomic
//! and two processes migrating at once serialise.

use std::collections::BTreeSet;
use std::time::SystemTime;

use ccf_store::time::{format_timestamp, parse_timestamp};
use ccf_store::{DayZone, LegacyZone, MigrationReport, StoreError};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use crate::convert::{as_text, sqlite_error};

const V1_INITIAL: &str = include_str!("../migrations/0001_initial.sql");
const V2_EXTEND: &str = include_str!("../migrations/0002_extend.sql");
const V3_SUMMARY: &str = include_str!("../migrations/0003_summary.sql");
const V5_API_KEY_NAME: &str = include_str!("../migrations/0005_api_key_name.sql");
const V6_SUMMARY_IN_DAY_ZONE: &str = include_str!("../migrations/0006_summary_in_day_zone.sql");
const V7_HOURLY_SUMMARY: &str = include_str!("../migrations/0007_hourly_summary.sql");
const V8_REQUESTED_MODEL: &str = include_str!("../migrations/0008_requested_model.sql");
const V9_LEAN_REQUEST_INDEXES: &str = include_str!("../migrations/0009_lean_request_indexes.sql");
const V10_PARTIAL_KEY_INDEXES: &str = include_str!("../migrations/0010_partial_key_indexes.sql");
const TRIGGERS: &str = include_str!("../migrations/triggers.sql");

/// Every migration: version and name.
pub const MIGRATIONS: [(u32, &str); 9] = [
    (1, "initial"),
    (2, "extend"),
    (3, "utc_timestamps_and_summary"),
    (5, "api_key_name"),
    (6, "summary_in_day_zone"),
    (7, "hourly_summary"),
    (8, "requested_model"),
    (9, "lean_request_indexes"),
    (10, "partial_key_indexes"),
];

/// v1 columns that an older Go database may lack, with the definition used to add them.
const V1_COLUMNS: [(&str, &str); 27] = [
    ("client_ip", "TEXT"),
    ("user_agent", "TEXT"),
    ("method", "TEXT DEFAULT 'POST'"),
    ("path", "TEXT DEFAULT '/v1/messages'"),
    ("end_time", "DATETIME"),
    ("duration_ms", "INTEGER"),
    ("endpoint_name", "TEXT"),
    ("group_name", "TEXT"),
    ("model_name", "TEXT"),
    ("is_streaming", "BOOLEAN DEFAULT FALSE"),
    ("status", "TEXT NOT NULL DEFAULT 'pending'"),
    ("http_status_code", "INTEGER"),
    ("retry_count", "INTEGER DEFAULT 0"),
    ("failure_reason", "TEXT"),
    ("last_failure_reason", "TEXT"),
    ("cancel_reason", "TEXT"),
    ("input_tokens", "INTEGER DEFAULT 0"),
    ("output_tokens", "INTEGER DEFAULT 0"),
    ("cache_creation_tokens", "INTEGER DEFAULT 0"),
    ("cache_read_tokens", "INTEGER DEFAULT 0"),
    ("input_cost_usd", "REAL DEFAULT 0"),
    ("output_cost_usd", "REAL DEFAULT 0"),
    ("cache_creation_cost_usd", "REAL DEFAULT 0"),
    ("cache_read_cost_usd", "REAL DEFAULT 0"),
    ("total_cost_usd", "REAL DEFAULT 0"),
    ("created_at", "DATETIME"),
    ("updated_at", "DATETIME"),
];

/// Applies the pending versions, then makes sure the summary is counted in `day_zone`.
pub(crate) fn run(
    connection: &mut Connection,
    zone: LegacyZone,
    day_zone: DayZone,
) -> Result<MigrationReport, StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            detected BOOLEAN NOT NULL DEFAULT 0
        );",
    )
    .map_err(sqlite_error)?;
    let mut applied: BTreeSet<u32> = {
        let mut statement = tx
            .prepare("SELECT version FROM schema_migrations")
            .map_err(sqlite_error)?;
        let versions = statement
            .query_map([], |row| row.get::<_, u32>(0))
            .map_err(sqlite_error)?
            .collect::<Result<_, _>>()
            .map_err(sqlite_error)?;
        versions
    };
    let mut report = MigrationReport::default();
    if applied.is_empty() && table_exists(&tx, "request_logs")? {
        // Written by the Go forwarder: v1 is there; complete what an older version lacked.
        let failed = |source| StoreError::Migration {
            version: 1,
            name: "initial".into(),
            source,
        };
        add_missing_columns(&tx).map_err(|e| failed(e.into()))?;
        tx.execute_batch(V1_INITIAL).map_err(|e| failed(e.into()))?;
        record(&tx, 1, "initial", true)?;
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
        apply(&tx, version, zone).map_err(|source| StoreError::Migration {
            version,
            name: name.into(),
            source: source.into(),
        })?;
        record(&tx, version, name, false)?;
        applied.insert(version);
        report.applied.push(version);
    }
    if applied.contains(&6) {
        crate::write::summary_in_day_zone(&tx, day_zone)?;
    }
    tx.commit().map_err(sqlite_error)?;
    report.current_version = applied.iter().next_back().copied().unwrap_or(0);
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, version = report.current_version, "usage database migrated");
    }
    Ok(report)
}

/// The versions of [`MIGRATIONS`] not recorded in `schema_migrations`, read only: every version
/// when the table is missing (a Go-written or empty database).
pub(crate) fn pending(connection: &Connection) -> Result<Vec<u32>, StoreError> {
    let recorded: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite_error)?;
    let applied: BTreeSet<u32> = if recorded == 0 {
        BTreeSet::new()
    } else {
        let mut statement = connection
            .prepare("SELECT version FROM schema_migrations")
            .map_err(sqlite_error)?;
        let versions = statement
            .query_map([], |row| row.get::<_, u32>(0))
            .map_err(sqlite_error)?
            .collect::<Result<_, _>>()
            .map_err(sqlite_error)?;
        versions
    };
    Ok(MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .filter(|version| !applied.contains(version))
        .collect())
}

fn record(
    tx: &Transaction<'_>,
    version: u32,
    name: &str,
    detected: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO schema_migrations (version, name, applied_at, detected) VALUES (?1, ?2, ?3, ?4)",
        params![version, name, format_timestamp(SystemTime::now()), detected],
    )
    .map_err(sqlite_error)?;
    Ok(())
}

fn table_exists(tx: &Transaction<'_>, table: &str) -> Result<bool, StoreError> {
    tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sqlite_error)
}

fn columns(tx: &Transaction<'_>, table: &str) -> rusqlite::Result<BTreeSet<String>> {
    let mut statement = tx.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = statement
        .query_map([], |row| row.get::<_, String>(1))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}

fn add_missing_columns(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let present = columns(tx, "request_logs")?;
    for (column, definition) in V1_COLUMNS {
        if !present.contains(column) {
            tx.execute_batch(&format!(
                "ALTER TABLE request_logs ADD COLUMN {column} {definition};"
            ))?;
        }
    }
    Ok(())
}

fn drop_triggers(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let names: Vec<String> = {
        let mut statement = tx.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' \
             AND tbl_name IN ('request_logs', 'usage_summary')",
        )?;
        let names = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        names
    };
    for name in names {
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS \"{}\";",
            name.replace('"', "\"\"")
        ))?;
    }
    Ok(())
}

fn apply(tx: &Transaction<'_>, version: u32, zone: LegacyZone) -> rusqlite::Result<()> {
    match version {
        1 => tx.execute_batch(V1_INITIAL),
        2 => {
            drop_triggers(tx)?;
            tx.execute_batch(V2_EXTEND)?;
            tx.execute_batch(TRIGGERS)
        }
        3 => {
            // The triggers would overwrite updated_at while rows are rewritten.
            drop_triggers(tx)?;
            let (rewritten, unreadable) = normalise_timestamps(tx, zone)?;
            if rewritten > 0 || unreadable > 0 {
                tracing::info!(rewritten, unreadable, legacy_zone = ?zone, "legacy usage timestamps rewritten in UTC");
            }
            tx.execute_batch(V3_SUMMARY)?;
            tx.execute_batch(TRIGGERS)
        }
        5 => {
            if !columns(tx, "request_logs")?.contains("api_key_name") {
                tx.execute_batch("ALTER TABLE request_logs ADD COLUMN api_key_name TEXT;")?;
            }
            tx.execute_batch(V5_API_KEY_NAME)
        }
        6 => {
            let present = columns(tx, "usage_summary")?;
            for column in ["cancelled_count", "duration_count"] {
                if !present.contains(column) {
                    tx.execute_batch(&format!(
                        "ALTER TABLE usage_summary ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0;"
                    ))?;
                }
            }
            tx.execute_batch(V6_SUMMARY_IN_DAY_ZONE)
        }
        7 => tx.execute_batch(V7_HOURLY_SUMMARY),
        8 => {
            if !columns(tx, "request_logs")?.contains("requested_model") {
                tx.execute_batch("ALTER TABLE request_logs ADD COLUMN requested_model TEXT;")?;
            }
            tx.execute_batch(V8_REQUESTED_MODEL)
        }
        9 => tx.execute_batch(V9_LEAN_REQUEST_INDEXES),
        10 => tx.execute_batch(V10_PARTIAL_KEY_INDEXES),
        _ => Ok(()),
    }
}

/// Rewrites every stored time as fixed-width RFC 3339 UTC. Values that cannot be read are left
/// as they are (and counted).
fn normalise_timestamps(tx: &Transaction<'_>, zone: LegacyZone) -> rusqlite::Result<(u64, u64)> {
    let mut rewritten = 0;
    let mut unreadable = 0;
    let mut after_id: i64 = 0;
    let mut select = tx.prepare(
        "SELECT id, start_time, end_time, created_at, updated_at FROM request_logs \
         WHERE id > ?1 ORDER BY id LIMIT 1000",
    )?;
    let mut update = tx.prepare(
        "UPDATE request_logs SET start_time = ?2, end_time = ?3, created_at = ?4, updated_at = ?5 \
         WHERE id = ?1",
    )?;
    loop {
        let rows: Vec<(i64, [Option<String>; 4])> = select
            .query_map([after_id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    [
                        as_text(row.get_ref(1)?),
                        as_text(row.get_ref(2)?),
                        as_text(row.get_ref(3)?),
                        as_text(row.get_ref(4)?),
                    ],
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after_id = last.0;
        for (id, values) in rows {
            let mut changed = false;
            let converted: Vec<Option<String>> = values
                .iter()
                .map(|value| match value {
                    None => None,
                    Some(text) => match parse_timestamp(text, zone) {
                        Some(time) => {
                            let canonical = format_timestamp(time);
                            changed |= canonical != *text;
                            Some(canonical)
                        }
                        None => {
                            unreadable += 1;
                            Some(text.clone())
                        }
                    },
                })
                .collect();
            if changed {
                update.execute(params![
                    id,
                    converted[0],
                    converted[1],
                    converted[2],
                    converted[3]
                ])?;
                rewritten += 1;
            }
        }
    }
    Ok((rewritten, unreadable))
}
