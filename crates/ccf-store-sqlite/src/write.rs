//! The writer thread's statements: batch upserts with `usage_summary` upkeep, and retention.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::SystemTime;

use ccf_store::columns::{EXISTING_ROW, KEPT_ON_UPDATE, SNAPSHOT};
use ccf_store::stats::HOURLY_REBUILD_FLUSH;
use ccf_store::{
    plan_batch, ContributionParts, DayZone, ExistingRow, KeySummaryKey, LegacyZone, StoreError,
    StoredRecord, SummaryContribution, SummaryDelta, SummaryKey, SummaryTables, WritePace,
};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::convert::{format_timestamp, sqlite_error, SnapshotBinder, SqliteRow};

/// Rows deleted per retention statement.
pub(crate) const CLEANUP_CHUNK: u64 = 5000;

/// What the store holds for one request id ([`EXISTING_ROW`]).
static SELECT_EXISTING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM request_logs WHERE request_id = ?1",
        EXISTING_ROW.join(", ")
    )
});

/// Columns an upsert keeps when the new snapshot has none. (The MySQL adapter overwrites
/// them; every snapshot of a request carries the same key name, so both agree in practice.)
const KEPT_WHEN_NULL: [&str; 1] = ["api_key_name"];

/// Inserts a snapshot ([`SNAPSHOT`], bound in its order) or updates every column of the stored
/// row but those of [`KEPT_ON_UPDATE`].
static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=SNAPSHOT.len())
        .map(|number| format!("?{number}"))
        .collect();
    let updates: Vec<String> = SNAPSHOT
        .iter()
        .filter(|column| !KEPT_ON_UPDATE.contains(column))
        .map(|column| {
            if KEPT_WHEN_NULL.contains(column) {
                format!("{column} = COALESCE(excluded.{column}, request_logs.{column})")
            } else {
                format!("{column} = excluded.{column}")
            }
        })
        .collect();
    format!(
        "INSERT INTO request_logs ({}) VALUES ({}) ON CONFLICT(request_id) DO UPDATE SET {}",
        SNAPSHOT.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    )
});

/// Inserts a snapshot ([`SNAPSHOT`], bound in its order) of a request id the store does not hold
/// yet; changes nothing (0 rows) when it holds one. Tried first for every write of a batch, so a
/// new id costs one statement instead of a read of the (missing) stored row plus the upsert.
static INSERT_NEW: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=SNAPSHOT.len())
        .map(|number| format!("?{number}"))
        .collect();
    format!(
        "INSERT INTO request_logs ({}) VALUES ({}) ON CONFLICT(request_id) DO NOTHING",
        SNAPSHOT.join(", "),
        placeholders.join(", ")
    )
});

/// Positions in [`SNAPSHOT`] of the columns a snapshot written at `now` holds `now` in
/// (`StoredRecord::snapshot_array`): `created_at` and `updated_at`.
const WRITE_TIME_COLUMNS: [usize; 2] = [
    snapshot_position("created_at"),
    snapshot_position("updated_at"),
];

/// [`WRITE_TIME_COLUMNS`] as a bit mask of positions (the binder's `shared`).
const WRITE_TIME_MASK: u64 = (1 << WRITE_TIME_COLUMNS[0]) | (1 << WRITE_TIME_COLUMNS[1]);

/// [`INSERT_NEW_ROWS`]'s parameter for the batch's write time, after every row's.
const WRITE_TIME_PARAMETER: usize = INSERT_ROWS * SNAPSHOT.len() + 1;

/// The position of `column` in [`SNAPSHOT`] (a build error when it is not there).
const fn snapshot_position(column: &str) -> usize {
    let mut position = 0;
    while position < SNAPSHOT.len() {
        let name = SNAPSHOT[position].as_bytes();
        let wanted = column.as_bytes();
        if name.len() == wanted.len() {
            let mut byte = 0;
            while byte < name.len() && name[byte] == wanted[byte] {
                byte += 1;
            }
            if byte == name.len() {
                return position;
            }
        }
        position += 1;
    }
    panic!("not a snapshot column")
}

/// Rows per multi-row insert ([`INSERT_NEW_ROWS`]). 8 rather than 16: the 16 rows' text values,
/// copied by SQLite at binding, no longer fit the connection's lookaside memory and go through
/// `malloc` (measured: 16 rows cost 2,700 instructions a row more in binding and save 1,100 in
/// `sqlite3_step`).
const INSERT_ROWS: usize = 8;

/// [`INSERT_NEW`] of [`INSERT_ROWS`] snapshots in one statement (row `r`'s values are parameters
/// `r * SNAPSHOT.len() + 1` on). One execution per row costs SQLite a statement start and end
/// each time: opening the cursors of the table and its six indexes, and the `AUTOINCREMENT`
/// counter read and written back; a multi-row insert pays them once.
///
/// Every row's `created_at` and `updated_at` is the batch's write time: one parameter
/// ([`WRITE_TIME_PARAMETER`]) bound once per batch, instead of two text values bound (and
/// copied by SQLite) per row, about 480 instructions a row (issue 19, part 15).
///
/// `OR IGNORE` rather than `ON CONFLICT(request_id) DO NOTHING`: with the latter, a row breaking
/// a `NOT NULL` constraint aborts the statement, and a statement that writes several rows and
/// may abort keeps a statement journal (a copy of every page it changes, to undo its earlier
/// rows): 2,400 instructions a row (issue 19, part 15). `request_id` is the table's only unique
/// key besides the `id` no snapshot binds, so both skip the same rows. A row skipped for a `NULL`
/// is not lost: every skipped row is taken as held by the store and written again by [`UPSERT`],
/// a one-row statement that fails on it as before.
static INSERT_NEW_ROWS: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> = (0..INSERT_ROWS)
        .map(|row| {
            let placeholders: Vec<String> = (0..SNAPSHOT.len())
                .map(|column| {
                    if WRITE_TIME_COLUMNS.contains(&column) {
                        format!("?{WRITE_TIME_PARAMETER}")
                    } else {
                        format!("?{}", row * SNAPSHOT.len() + column + 1)
                    }
                })
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    format!(
        "INSERT OR IGNORE INTO request_logs ({}) VALUES {}",
        SNAPSHOT.join(", "),
        rows.join(", ")
    )
});

/// The `DO UPDATE SET` assignments every summary upsert shares: each summed column adds the
/// row's increment (SQLite evaluates every right-hand side on the old row, so the order of the
/// assignments does not matter).
macro_rules! summed_updates {
    () => {
        "request_count = request_count + excluded.request_count,
    success_count = success_count + excluded.success_count,
    error_count = error_count + excluded.error_count,
    cancelled_count = cancelled_count + excluded.cancelled_count,
    duration_count = duration_count + excluded.duration_count,
    total_input_tokens = total_input_tokens + excluded.total_input_tokens,
    total_output_tokens = total_output_tokens + excluded.total_output_tokens,
    total_cache_creation_tokens = total_cache_creation_tokens + excluded.total_cache_creation_tokens,
    total_cache_read_tokens = total_cache_read_tokens + excluded.total_cache_read_tokens,
    total_cost_nano_usd = total_cost_nano_usd + excluded.total_cost_nano_usd,
    total_duration_ms = total_duration_ms + excluded.total_duration_ms,
    updated_at = excluded.updated_at"
    };
}

const SUMMARY_UPSERT: &str = concat!(
    "INSERT INTO usage_summary (
    date, model_name, endpoint_name, group_name, request_count, success_count, error_count,
    total_input_tokens, total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens,
    total_cost_nano_usd, total_duration_ms, total_cost_usd, avg_duration_ms, created_at, updated_at,
    cancelled_count, duration_count
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?12 / 1000000000.0,
    CASE WHEN ?5 > 0 THEN CAST(?13 AS REAL) / ?5 ELSE 0 END, ?14, ?14, ?15, ?16)
ON CONFLICT(date, model_name, endpoint_name, group_name) DO UPDATE SET
    total_cost_usd = (total_cost_nano_usd + excluded.total_cost_nano_usd) / 1000000000.0,
    avg_duration_ms = CASE WHEN request_count + excluded.request_count > 0
        THEN CAST(total_duration_ms + excluded.total_duration_ms AS REAL)
            / (request_count + excluded.request_count)
        ELSE 0 END,
    ",
    summed_updates!()
);

/// [`SUMMARY_UPSERT`]'s parameters into `usage_hourly_summary` (`?1` is the hour start).
const HOURLY_SUMMARY_UPSERT: &str = concat!(
    "INSERT INTO usage_hourly_summary (
    hour_start, model_name, endpoint_name, group_name, request_count, success_count, error_count,
    total_input_tokens, total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens,
    total_cost_nano_usd, total_duration_ms, updated_at, cancelled_count, duration_count
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
ON CONFLICT(hour_start, model_name, endpoint_name, group_name) DO UPDATE SET
    ",
    summed_updates!()
);

/// Writes one batch in one `BEGIN IMMEDIATE` transaction; final requests count in the summary
/// row of their day in `day_zone`.
///
/// Most request ids of a batch were never written before (a request that ends within a flush
/// interval is written once), so the batch is first planned as if the store held none of them
/// and each planned write is tried as an insert ([`INSERT_NEW_ROWS`], [`INSERT_ROWS`] at a time,
/// the rest by [`INSERT_NEW`]): no read precedes the insert of a new id. Only the ids whose insert found a stored row are read ([`EXISTING_ROW`]), planned
/// again against what is stored ([`plan_batch`] decides per id, so the other ids' writes and
/// summary contributions are the same in both plans) and upserted ([`UPSERT`]). The rows and
/// summaries written are the same as reading every id first.
pub(crate) fn write_batch(
    connection: &mut Connection,
    batch: &[StoredRecord],
    zone: LegacyZone,
    day_zone: DayZone,
    pace: WritePace,
) -> Result<(), StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let now = SystemTime::now();
    let mut binder = SnapshotBinder::new(now);
    let as_if_new = plan_batch(batch, &HashMap::new(), day_zone);
    let mut stored_before: HashSet<&str> = HashSet::new();
    {
        // Every statement is taken from the cache once per batch: a cached statement's lookup
        // and return hash its SQL and clear its bindings.
        let mut rows_insert = if as_if_new.writes.len() >= INSERT_ROWS {
            Some(RowsInsert::prepare(&tx, binder.now_text())?)
        } else {
            None
        };
        let mut insert = tx
            .prepare_cached(INSERT_NEW.as_str())
            .map_err(sqlite_error)?;
        expect_parameters(&insert, SNAPSHOT.len())?;
        for rows in as_if_new.writes.chunks(INSERT_ROWS) {
            if let Some(rows_insert) = rows_insert.as_mut().filter(|_| rows.len() == INSERT_ROWS) {
                rows_insert.insert(rows, &mut binder, now, &mut stored_before)?;
                if pace == WritePace::GiveWay {
                    // A proxy thread woken meanwhile runs now instead of after this thread's
                    // time slice: at concurrency 1 on two cores, added p99 with usage on fell
                    // from 726-852 to 273-403 µs (issue 19, part 6).
                    std::thread::yield_now();
                }
                continue;
            }
            for stored in rows {
                binder
                    .bind(&mut insert, stored.snapshot_array(now))
                    .map_err(sqlite_error)?;
                let inserted = insert.raw_execute().map_err(sqlite_error)?;
                if inserted == 0 {
                    stored_before.insert(stored.record().request_id.as_str());
                }
            }
        }
    }
    let plan = if stored_before.is_empty() {
        as_if_new
    } else {
        let mut existing: HashMap<String, ExistingRow> = HashMap::new();
        {
            let mut select = tx
                .prepare_cached(SELECT_EXISTING.as_str())
                .map_err(sqlite_error)?;
            for id in &stored_before {
                let row = select
                    .query_row([id], |row| {
                        Ok(ExistingRow::from_columns(&SqliteRow { row, zone }))
                    })
                    .optional()
                    .map_err(sqlite_error)?
                    .flatten();
                if let Some((_, row)) = row {
                    existing.insert((*id).to_string(), row);
                }
            }
        }
        let plan = plan_batch(batch, &existing, day_zone);
        let mut upsert = tx.prepare_cached(UPSERT.as_str()).map_err(sqlite_error)?;
        expect_parameters(&upsert, SNAPSHOT.len())?;
        for stored in plan
            .writes
            .iter()
            .filter(|stored| stored_before.contains(stored.record().request_id.as_str()))
        {
            binder
                .bind(&mut upsert, stored.snapshot_array(now))
                .map_err(sqlite_error)?;
            upsert.raw_execute().map_err(sqlite_error)?;
        }
        drop(upsert);
        plan
    };
    add_to_summary(
        &tx,
        SUMMARY_UPSERT,
        plan.summary.iter().map(|(key, delta)| by_day((key, delta))),
        now,
    )?;
    add_to_key_summary(
        &tx,
        KEY_SUMMARY_UPSERT,
        plan.key_summary
            .iter()
            .map(|(key, delta)| key_by_day((key, delta))),
        now,
    )?;
    add_to_summary(
        &tx,
        HOURLY_SUMMARY_UPSERT,
        plan.hourly_summary
            .iter()
            .map(|(key, delta)| by_hour((key, delta))),
        now,
    )?;
    add_to_key_summary(
        &tx,
        HOURLY_KEY_SUMMARY_UPSERT,
        plan.hourly_key_summary
            .iter()
            .map(|(key, delta)| key_by_hour((key, delta))),
        now,
    )?;
    tx.commit().map_err(sqlite_error)
}

/// Fails unless `statement` takes `count` parameters: snapshots are bound by position
/// ([`SnapshotBinder`]), which does not count the parameters itself.
fn expect_parameters(statement: &rusqlite::Statement<'_>, count: usize) -> Result<(), StoreError> {
    let expected = statement.parameter_count();
    if expected == count {
        Ok(())
    } else {
        Err(sqlite_error(rusqlite::Error::InvalidParameterCount(
            count, expected,
        )))
    }
}

/// The statements of a multi-row insert of new ids ([`INSERT_NEW_ROWS`]).
struct RowsInsert<'c> {
    connection: &'c Connection,
    insert: rusqlite::CachedStatement<'c>,
    inserted_since: rusqlite::CachedStatement<'c>,
    /// Every row of `request_logs` has an `id` up to this one, so far in the transaction.
    last_id: i64,
}

impl<'c> RowsInsert<'c> {
    /// The statements for a batch written at the time stored as `write_time`.
    fn prepare(connection: &'c Connection, write_time: &str) -> Result<Self, StoreError> {
        let mut insert = connection
            .prepare_cached(INSERT_NEW_ROWS.as_str())
            .map_err(sqlite_error)?;
        expect_parameters(&insert, WRITE_TIME_PARAMETER)?;
        insert
            .raw_bind_parameter(WRITE_TIME_PARAMETER, write_time)
            .map_err(sqlite_error)?;
        let last_id = connection
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM request_logs")
            .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
            .map_err(sqlite_error)?;
        Ok(Self {
            connection,
            insert,
            inserted_since: connection
                .prepare_cached("SELECT request_id FROM request_logs WHERE id > ?1")
                .map_err(sqlite_error)?,
            last_id,
        })
    }

    /// Inserts `rows` ([`INSERT_ROWS`] of them, distinct request ids) in one statement, each
    /// unless the store holds its request id, and adds the ids it held to `stored_before`.
    ///
    /// Which ones were held is learnt without a read in the common case: when every row was
    /// inserted, none was. Otherwise the rows this statement inserted are the ones with an `id`
    /// above every earlier row's (`AUTOINCREMENT` never reuses an id or goes back), read back
    /// through the primary key.
    fn insert<'r>(
        &mut self,
        rows: &[&'r StoredRecord],
        binder: &mut SnapshotBinder,
        now: SystemTime,
        stored_before: &mut HashSet<&'r str>,
    ) -> Result<(), StoreError> {
        for (row, stored) in rows.iter().enumerate() {
            binder
                .bind_from(
                    &mut self.insert,
                    row * SNAPSHOT.len() + 1,
                    stored.snapshot_array(now),
                    WRITE_TIME_MASK,
                )
                .map_err(sqlite_error)?;
        }
        let inserted = self.insert.raw_execute().map_err(sqlite_error)?;
        if inserted < rows.len() {
            let mut new_ids: HashSet<String> = HashSet::with_capacity(inserted);
            if inserted > 0 {
                let mut selected = self
                    .inserted_since
                    .query([self.last_id])
                    .map_err(sqlite_error)?;
                while let Some(row) = selected.next().map_err(sqlite_error)? {
                    new_ids.insert(row.get(0).map_err(sqlite_error)?);
                }
            }
            for stored in rows {
                let id = stored.record().request_id.as_str();
                if !new_ids.contains(id) {
                    stored_before.insert(id);
                }
            }
        }
        if inserted > 0 {
            self.last_id = self.connection.last_insert_rowid();
        }
        Ok(())
    }
}

/// A daily summary row: its day is the period.
fn by_day<'a>(
    (key, delta): (&'a SummaryKey, &'a SummaryDelta),
) -> (Value, &'a SummaryKey, &'a SummaryDelta) {
    (Value::Text(key.date.clone()), key, delta)
}

/// A daily key summary row: its day is the period.
fn key_by_day<'a>(
    (key, delta): (&'a KeySummaryKey, &'a SummaryDelta),
) -> (Value, &'a KeySummaryKey, &'a SummaryDelta) {
    (Value::Text(key.date.clone()), key, delta)
}

/// An hourly summary row: its hour start is the period.
fn by_hour<'a>(
    ((hour_start, key), delta): (&'a (i64, SummaryKey), &'a SummaryDelta),
) -> (Value, &'a SummaryKey, &'a SummaryDelta) {
    (Value::Integer(*hour_start), key, delta)
}

/// An hourly key summary row: its hour start is the period.
fn key_by_hour<'a>(
    ((hour_start, key), delta): (&'a (i64, KeySummaryKey), &'a SummaryDelta),
) -> (Value, &'a KeySummaryKey, &'a SummaryDelta) {
    (Value::Integer(*hour_start), key, delta)
}

/// Adds `rows` to `usage_summary` ([`SUMMARY_UPSERT`]) or `usage_hourly_summary`
/// ([`HOURLY_SUMMARY_UPSERT`]).
fn add_to_summary<'a>(
    connection: &Connection,
    sql: &str,
    rows: impl Iterator<Item = (Value, &'a SummaryKey, &'a SummaryDelta)>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now = format_timestamp(now);
    let mut upsert = connection.prepare_cached(sql).map_err(sqlite_error)?;
    for (period, key, delta) in rows {
        upsert
            .execute(params![
                period,
                key.model_name,
                key.endpoint_name,
                key.group_name,
                delta.request_count,
                delta.success_count,
                delta.error_count,
                delta.input_tokens,
                delta.output_tokens,
                delta.cache_creation_tokens,
                delta.cache_read_tokens,
                delta.cost_nano_usd,
                delta.duration_ms,
                now,
                delta.cancelled_count,
                delta.duration_count,
            ])
            .map_err(sqlite_error)?;
    }
    Ok(())
}

const KEY_SUMMARY_UPSERT: &str = concat!(
    "INSERT INTO usage_key_summary (
    date, api_key_name, request_count, success_count, error_count, cancelled_count,
    duration_count, total_duration_ms, total_input_tokens, total_output_tokens,
    total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd, updated_at
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT(date, api_key_name) DO UPDATE SET
    ",
    summed_updates!()
);

/// [`KEY_SUMMARY_UPSERT`] into `usage_hourly_key_summary` (`?1` is the hour start).
const HOURLY_KEY_SUMMARY_UPSERT: &str = concat!(
    "INSERT INTO usage_hourly_key_summary (
    hour_start, api_key_name, request_count, success_count, error_count, cancelled_count,
    duration_count, total_duration_ms, total_input_tokens, total_output_tokens,
    total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd, updated_at
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT(hour_start, api_key_name) DO UPDATE SET
    ",
    summed_updates!()
);

/// Adds `rows` to `usage_key_summary` ([`KEY_SUMMARY_UPSERT`]) or `usage_hourly_key_summary`
/// ([`HOURLY_KEY_SUMMARY_UPSERT`]).
fn add_to_key_summary<'a>(
    connection: &Connection,
    sql: &str,
    rows: impl Iterator<Item = (Value, &'a KeySummaryKey, &'a SummaryDelta)>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let now = format_timestamp(now);
    let mut upsert = connection.prepare_cached(sql).map_err(sqlite_error)?;
    for (period, key, delta) in rows {
        upsert
            .execute(params![
                period,
                key.api_key_name,
                delta.request_count,
                delta.success_count,
                delta.error_count,
                delta.cancelled_count,
                delta.duration_count,
                delta.duration_ms,
                delta.input_tokens,
                delta.output_tokens,
                delta.cache_creation_tokens,
                delta.cache_read_tokens,
                delta.cost_nano_usd,
                now,
            ])
            .map_err(sqlite_error)?;
    }
    Ok(())
}

/// Adds the hourly rows of `summary` to the hourly tables and empties them.
fn write_hourly(connection: &Connection, summary: &mut SummaryTables) -> Result<(), StoreError> {
    let now = SystemTime::now();
    add_to_summary(
        connection,
        HOURLY_SUMMARY_UPSERT,
        summary.by_model_hour.iter().map(by_hour),
        now,
    )?;
    add_to_key_summary(
        connection,
        HOURLY_KEY_SUMMARY_UPSERT,
        summary.by_key_hour.iter().map(key_by_hour),
        now,
    )?;
    summary.by_model_hour.clear();
    summary.by_key_hour.clear();
    Ok(())
}

/// The setting that records the zone the summary rows were counted in.
const SUMMARY_DAY_ZONE: &str = "summary_day_zone";

/// Rebuilds `usage_summary` from the final rows with every request on its day in `day_zone`
/// when the summary was counted in another zone (or before the zone was recorded: UTC days),
/// inside the caller's transaction. Returns whether it rebuilt.
pub(crate) fn summary_in_day_zone(
    connection: &Connection,
    day_zone: DayZone,
) -> Result<bool, StoreError> {
    let recorded: Option<String> = connection
        .query_row(
            "SELECT value FROM usage_settings WHERE name = ?1",
            [SUMMARY_DAY_ZONE],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite_error)?;
    let name = day_zone.name();
    if recorded.as_deref() == Some(name.as_str()) {
        return Ok(false);
    }
    // Row by row into the tables: a large request_logs is never held in memory at once, and
    // the hourly rows are written out as they grow.
    connection
        .execute_batch("DELETE FROM usage_hourly_summary; DELETE FROM usage_hourly_key_summary;")
        .map_err(sqlite_error)?;
    let mut summary = SummaryTables::default();
    {
        let mut select = connection
            .prepare(
                "SELECT start_time, model_name, endpoint_name, group_name, status, \
                 input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, \
                 total_cost_nano_usd, duration_ms, api_key_name FROM request_logs \
                 WHERE is_final = 1",
            )
            .map_err(sqlite_error)?;
        let mut rows = select.query([]).map_err(sqlite_error)?;
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let count = |index: usize| -> rusqlite::Result<u64> {
                Ok(row
                    .get::<_, Option<i64>>(index)?
                    .and_then(|value| u64::try_from(value).ok())
                    .unwrap_or(0))
            };
            let read = || -> rusqlite::Result<RebuildRow> {
                Ok(RebuildRow {
                    start_time: row.get::<_, Option<String>>(0)?,
                    model: row.get(1)?,
                    endpoint: row.get(2)?,
                    group: row.get(3)?,
                    api_key: row.get(11)?,
                    status: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    tokens: [count(5)?, count(6)?, count(7)?, count(8)?],
                    cost: row.get::<_, Option<i64>>(9)?.unwrap_or(0),
                    duration: row
                        .get::<_, Option<i64>>(10)?
                        .map(|value| u64::try_from(value).unwrap_or(0)),
                })
            };
            let rebuilt = read().map_err(sqlite_error)?;
            summary.add(
                &SummaryContribution::from_parts_in(rebuilt.parts(), day_zone),
                1,
            );
            if summary.by_model_hour.len() + summary.by_key_hour.len() >= HOURLY_REBUILD_FLUSH {
                write_hourly(connection, &mut summary)?;
            }
        }
    }
    connection
        .execute_batch(
            "DELETE FROM usage_summary; DELETE FROM usage_key_summary; \
             UPDATE request_logs SET summarized = is_final WHERE summarized <> is_final;",
        )
        .map_err(sqlite_error)?;
    let now = SystemTime::now();
    add_to_summary(
        connection,
        SUMMARY_UPSERT,
        summary.by_model.iter().map(by_day),
        now,
    )?;
    add_to_key_summary(
        connection,
        KEY_SUMMARY_UPSERT,
        summary.by_key.iter().map(key_by_day),
        now,
    )?;
    write_hourly(connection, &mut summary)?;
    connection
        .execute(
            "INSERT INTO usage_settings (name, value) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [SUMMARY_DAY_ZONE, name.as_str()],
        )
        .map_err(sqlite_error)?;
    tracing::info!(
        day_zone = %name,
        previous = recorded.as_deref().unwrap_or("UTC (not recorded)"),
        rows = summary.by_model.len(),
        "usage_summary rebuilt with the days of the configured time zone"
    );
    Ok(true)
}

/// The stored values of a final row that its summary contribution is computed from.
struct RebuildRow {
    start_time: Option<String>,
    model: Option<String>,
    endpoint: Option<String>,
    group: Option<String>,
    api_key: Option<String>,
    status: String,
    tokens: [u64; 4],
    cost: i64,
    duration: Option<u64>,
}

impl RebuildRow {
    fn parts(&self) -> ContributionParts<'_> {
        ContributionParts {
            start_time: self
                .start_time
                .as_deref()
                .and_then(|text| ccf_store::time::parse_timestamp(text, LegacyZone::Utc))
                .unwrap_or(SystemTime::UNIX_EPOCH),
            model_name: self.model.as_deref(),
            endpoint_name: self.endpoint.as_deref(),
            group_name: self.group.as_deref(),
            api_key_name: self.api_key.as_deref(),
            status: &self.status,
            input_tokens: self.tokens[0],
            output_tokens: self.tokens[1],
            cache_creation_tokens: self.tokens[2],
            cache_read_tokens: self.tokens[3],
            cost_nano_usd: self.cost,
            duration_ms: self.duration,
        }
    }
}

/// Deletes up to [`CLEANUP_CHUNK`] rows that started before `older_than`.
pub(crate) fn delete_requests_chunk(
    connection: &mut Connection,
    older_than: SystemTime,
) -> Result<u64, StoreError> {
    let deleted = connection
        .execute(
            "DELETE FROM request_logs WHERE id IN \
             (SELECT id FROM request_logs WHERE start_time < ?1 LIMIT ?2)",
            params![format_timestamp(older_than), CLEANUP_CHUNK as i64],
        )
        .map_err(sqlite_error)?;
    Ok(deleted as u64)
}

/// Deletes summary rows of days (in `day_zone`) before `older_than`'s.
pub(crate) fn delete_summary(
    connection: &mut Connection,
    older_than: SystemTime,
    day_zone: DayZone,
) -> Result<u64, StoreError> {
    let day = day_zone.format_date(older_than);
    connection
        .execute("DELETE FROM usage_key_summary WHERE date < ?1", [&day])
        .map_err(sqlite_error)?;
    // The hours of the same days: before the first instant of `older_than`'s day.
    let day_start = day_zone.day_start(day_zone.date_of(older_than));
    let first_hour = ccf_store::stats::hour_start(day_zone, day_start);
    for sql in [
        "DELETE FROM usage_hourly_summary WHERE hour_start < ?1",
        "DELETE FROM usage_hourly_key_summary WHERE hour_start < ?1",
    ] {
        connection
            .execute(sql, [first_hour])
            .map_err(sqlite_error)?;
    }
    let deleted = connection
        .execute("DELETE FROM usage_summary WHERE date < ?1", [&day])
        .map_err(sqlite_error)?;
    Ok(deleted as u64)
}
