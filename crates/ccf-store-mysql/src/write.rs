//! Batch upserts with `usage_summary` upkeep, and retention.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use ccf_store::columns::{EXISTING_ROW, KEPT_ON_UPDATE, SNAPSHOT};
use ccf_store::stats::HOURLY_REBUILD_FLUSH;
use ccf_store::{
    plan_batch, CleanupReport, ContributionParts, DayZone, ExistingRow, KeySummaryKey, LegacyZone,
    StoreError, StoredRecord, SummaryContribution, SummaryDelta, SummaryKey, SummaryTables,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row, TxOpts, Value};

use crate::convert::{
    as_i64, as_text, as_time, at, column_value, datetime, mysql_error, text, usd, MysqlRow,
};

const ROWS_PER_INSERT: usize = 200;
const IDS_PER_SELECT: usize = 500;
const CLEANUP_CHUNK: u64 = 5000;

fn params(values: Vec<Value>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values)
    }
}

/// Inserts `rows` snapshots ([`SNAPSHOT`], bound in its order) or updates every column of a
/// stored row but those of [`KEPT_ON_UPDATE`].
fn upsert_sql(rows: usize) -> String {
    let placeholders = format!("({})", vec!["?"; SNAPSHOT.len()].join(", "));
    let updates: Vec<String> = SNAPSHOT
        .iter()
        .filter(|c| !KEPT_ON_UPDATE.contains(c))
        .map(|c| format!("{c} = VALUES({c})"))
        .collect();
    format!(
        "INSERT INTO request_logs ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        SNAPSHOT.join(", "),
        vec![placeholders; rows].join(", "),
        updates.join(", ")
    )
}

fn summary_sql(rows: usize) -> String {
    // MySQL applies ON DUPLICATE KEY assignments left to right, each seeing the ones before:
    // the totals are updated first, then the derived USD total and average use them.
    format!(
        "INSERT INTO usage_summary (date, model_name, endpoint_name, group_name, request_count, \
         success_count, error_count, total_input_tokens, total_output_tokens, \
         total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd, \
         total_duration_ms, total_cost_usd, avg_duration_ms, created_at, updated_at, \
         cancelled_count, duration_count) VALUES {} \
         ON DUPLICATE KEY UPDATE \
         request_count = request_count + VALUES(request_count), \
         success_count = success_count + VALUES(success_count), \
         error_count = error_count + VALUES(error_count), \
         cancelled_count = cancelled_count + VALUES(cancelled_count), \
         duration_count = duration_count + VALUES(duration_count), \
         total_input_tokens = total_input_tokens + VALUES(total_input_tokens), \
         total_output_tokens = total_output_tokens + VALUES(total_output_tokens), \
         total_cache_creation_tokens = total_cache_creation_tokens + VALUES(total_cache_creation_tokens), \
         total_cache_read_tokens = total_cache_read_tokens + VALUES(total_cache_read_tokens), \
         total_cost_nano_usd = total_cost_nano_usd + VALUES(total_cost_nano_usd), \
         total_duration_ms = total_duration_ms + VALUES(total_duration_ms), \
         total_cost_usd = total_cost_nano_usd / 1000000000, \
         avg_duration_ms = IF(request_count > 0, total_duration_ms / request_count, 0), \
         updated_at = VALUES(updated_at)",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ")
    )
}

/// Writes one batch in one transaction (READ COMMITTED, rows locked in request-id order); final
/// requests count in the summary row of their day in `day_zone`.
pub(crate) async fn write_batch(
    conn: &mut Conn,
    batch: &[StoredRecord],
    zone: LegacyZone,
    day_zone: DayZone,
) -> Result<(), StoreError> {
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .await
        .map_err(mysql_error)?;
    let ids: Vec<&str> = batch
        .iter()
        .map(|s| s.record().request_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut existing: HashMap<String, ExistingRow> = HashMap::new();
    for chunk in ids.chunks(IDS_PER_SELECT) {
        let sql = format!(
            "SELECT {} FROM request_logs WHERE request_id IN ({}) FOR UPDATE",
            EXISTING_ROW.join(", "),
            vec!["?"; chunk.len()].join(", ")
        );
        let rows: Vec<Row> = tx
            .exec(sql, params(chunk.iter().map(|id| text(id)).collect()))
            .await
            .map_err(mysql_error)?;
        existing.extend(
            rows.iter()
                .filter_map(|row| ExistingRow::from_columns(&MysqlRow { row, zone })),
        );
    }
    let plan = plan_batch(batch, &existing, day_zone);
    let written_at = SystemTime::now();
    let now = datetime(written_at);
    for chunk in plan.writes.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * SNAPSHOT.len());
        for stored in chunk {
            values.extend(stored.snapshot_values(written_at).map(column_value));
        }
        tx.exec_drop(upsert_sql(chunk.len()), params(values))
            .await
            .map_err(mysql_error)?;
    }
    let summary: Vec<(&SummaryKey, &SummaryDelta)> = plan
        .summary
        .iter()
        .map(|(key, delta)| (key, delta))
        .collect();
    add_to_summary(&mut tx, &summary, &now).await?;
    let key_summary: Vec<(&KeySummaryKey, &SummaryDelta)> = plan
        .key_summary
        .iter()
        .map(|(key, delta)| (key, delta))
        .collect();
    add_to_key_summary(&mut tx, &key_summary, &now).await?;
    add_to_hourly_summary(&mut tx, &plan.hourly_summary, &now).await?;
    add_to_hourly_key_summary(&mut tx, &plan.hourly_key_summary, &now).await?;
    tx.commit().await.map_err(mysql_error)
}

/// Adds `rows` to `usage_key_summary`.
async fn add_to_key_summary<Q: Queryable>(
    tx: &mut Q,
    rows: &[(&KeySummaryKey, &SummaryDelta)],
    now: &Value,
) -> Result<(), StoreError> {
    let rows: Vec<_> = rows
        .iter()
        .map(|(key, delta)| (text(&key.date), *key, *delta))
        .collect();
    add_to_key_table(tx, "usage_key_summary (date", &rows, now).await
}

/// The summed columns of the key and hourly summary tables, in the order [`summed_values`]
/// binds them.
const SUMMED_COLUMNS: &str = "request_count, success_count, error_count, cancelled_count, \
    duration_count, total_duration_ms, total_input_tokens, total_output_tokens, \
    total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd";

/// `delta`'s values for [`SUMMED_COLUMNS`].
fn summed_values(delta: &SummaryDelta) -> [Value; 11] {
    [
        Value::Int(delta.request_count),
        Value::Int(delta.success_count),
        Value::Int(delta.error_count),
        Value::Int(delta.cancelled_count),
        Value::Int(delta.duration_count),
        Value::Int(delta.duration_ms),
        Value::Int(delta.input_tokens),
        Value::Int(delta.output_tokens),
        Value::Int(delta.cache_creation_tokens),
        Value::Int(delta.cache_read_tokens),
        Value::Int(delta.cost_nano_usd),
    ]
}

/// The `ON DUPLICATE KEY UPDATE` assignments the key and hourly summary upserts share: each
/// summed column adds the row's increment (no assignment reads a column an earlier one set).
const SUMMED_UPDATES: &str = "request_count = request_count + VALUES(request_count), \
    success_count = success_count + VALUES(success_count), \
    error_count = error_count + VALUES(error_count), \
    cancelled_count = cancelled_count + VALUES(cancelled_count), \
    duration_count = duration_count + VALUES(duration_count), \
    total_duration_ms = total_duration_ms + VALUES(total_duration_ms), \
    total_input_tokens = total_input_tokens + VALUES(total_input_tokens), \
    total_output_tokens = total_output_tokens + VALUES(total_output_tokens), \
    total_cache_creation_tokens = total_cache_creation_tokens + VALUES(total_cache_creation_tokens), \
    total_cache_read_tokens = total_cache_read_tokens + VALUES(total_cache_read_tokens), \
    total_cost_nano_usd = total_cost_nano_usd + VALUES(total_cost_nano_usd), \
    updated_at = VALUES(updated_at)";

/// Adds `rows` to `usage_hourly_key_summary`.
async fn add_to_hourly_key_summary<Q: Queryable>(
    tx: &mut Q,
    rows: &[((i64, KeySummaryKey), SummaryDelta)],
    now: &Value,
) -> Result<(), StoreError> {
    let rows: Vec<_> = rows
        .iter()
        .map(|((hour_start, key), delta)| (Value::Int(*hour_start), key, delta))
        .collect();
    add_to_key_table(tx, "usage_hourly_key_summary (hour_start", &rows, now).await
}

/// Adds `rows` (period value, key, delta) to the key summary table `table_and_period`
/// (`"<table> (<period column>"`).
async fn add_to_key_table<Q: Queryable>(
    tx: &mut Q,
    table_and_period: &str,
    rows: &[(Value, &KeySummaryKey, &SummaryDelta)],
    now: &Value,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * 14);
        for (period, key, delta) in chunk {
            values.extend([period.clone(), text(&key.api_key_name)]);
            values.extend(summed_values(delta));
            values.push(now.clone());
        }
        let sql = format!(
            "INSERT INTO {table_and_period}, api_key_name, {SUMMED_COLUMNS}, updated_at) \
             VALUES {} \
             ON DUPLICATE KEY UPDATE {SUMMED_UPDATES}",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        tx.exec_drop(sql, params(values))
            .await
            .map_err(mysql_error)?;
    }
    Ok(())
}

/// Adds `rows` to `usage_hourly_summary`.
async fn add_to_hourly_summary<Q: Queryable>(
    tx: &mut Q,
    rows: &[((i64, SummaryKey), SummaryDelta)],
    now: &Value,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * 16);
        for ((hour_start, key), delta) in chunk {
            values.extend([
                Value::Int(*hour_start),
                text(&key.model_name),
                text(&key.endpoint_name),
                text(&key.group_name),
            ]);
            values.extend(summed_values(delta));
            values.push(now.clone());
        }
        let sql = format!(
            "INSERT INTO usage_hourly_summary (hour_start, model_name, endpoint_name, \
             group_name, {SUMMED_COLUMNS}, updated_at) VALUES {} \
             ON DUPLICATE KEY UPDATE {SUMMED_UPDATES}",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        tx.exec_drop(sql, params(values))
            .await
            .map_err(mysql_error)?;
    }
    Ok(())
}

/// Adds `rows` to `usage_summary`.
async fn add_to_summary<Q: Queryable>(
    tx: &mut Q,
    rows: &[(&SummaryKey, &SummaryDelta)],
    now: &Value,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * 19);
        for (key, delta) in chunk {
            let average = if delta.request_count > 0 {
                delta.duration_ms as f64 / delta.request_count as f64
            } else {
                0.0
            };
            values.extend([
                text(&key.date),
                text(&key.model_name),
                text(&key.endpoint_name),
                text(&key.group_name),
                Value::Int(delta.request_count),
                Value::Int(delta.success_count),
                Value::Int(delta.error_count),
                Value::Int(delta.input_tokens),
                Value::Int(delta.output_tokens),
                Value::Int(delta.cache_creation_tokens),
                Value::Int(delta.cache_read_tokens),
                Value::Int(delta.cost_nano_usd),
                Value::Int(delta.duration_ms),
                usd(delta.cost_nano_usd),
                Value::Double(average),
                now.clone(),
                now.clone(),
                Value::Int(delta.cancelled_count),
                Value::Int(delta.duration_count),
            ]);
        }
        tx.exec_drop(summary_sql(chunk.len()), params(values))
            .await
            .map_err(mysql_error)?;
    }
    Ok(())
}

/// Adds the hourly rows of `tables` to the hourly tables and empties them.
async fn write_hourly<Q: Queryable>(
    tx: &mut Q,
    tables: &mut SummaryTables,
) -> Result<(), StoreError> {
    let now = datetime(SystemTime::now());
    let hour_rows: Vec<_> = std::mem::take(&mut tables.by_model_hour)
        .into_iter()
        .collect();
    add_to_hourly_summary(tx, &hour_rows, &now).await?;
    let key_hour_rows: Vec<_> = std::mem::take(&mut tables.by_key_hour)
        .into_iter()
        .collect();
    add_to_hourly_key_summary(tx, &key_hour_rows, &now).await
}

/// The setting that records the zone the summary rows were counted in.
const SUMMARY_DAY_ZONE: &str = "summary_day_zone";

/// Rebuilds `usage_summary` from the final rows with every request on its day in `day_zone`
/// when the summary was counted in another zone (or before the zone was recorded: UTC days),
/// in one transaction. Returns whether it rebuilt.
pub(crate) async fn summary_in_day_zone(
    conn: &mut Conn,
    day_zone: DayZone,
) -> Result<bool, StoreError> {
    let name = day_zone.name();
    let recorded: Option<String> = conn
        .exec_first(
            "SELECT value FROM usage_settings WHERE name = ?",
            (SUMMARY_DAY_ZONE,),
        )
        .await
        .map_err(mysql_error)?;
    if recorded.as_deref() == Some(name.as_str()) {
        return Ok(false);
    }
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .await
        .map_err(mysql_error)?;
    // Paged by id, so that a large table is never held in memory at once. The migration lock
    // keeps other forwarders from migrating meanwhile.
    for statement in [
        "DELETE FROM usage_hourly_summary",
        "DELETE FROM usage_hourly_key_summary",
    ] {
        tx.query_drop(statement).await.map_err(mysql_error)?;
    }
    let mut tables = SummaryTables::default();
    let mut after_id: i64 = 0;
    loop {
        let rows: Vec<Row> = tx
            .exec(
                "SELECT id, start_time, model_name, endpoint_name, group_name, status, \
                 input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, \
                 total_cost_nano_usd, duration_ms, api_key_name FROM request_logs \
                 WHERE is_final = 1 AND id > ? ORDER BY id LIMIT 10000",
                (after_id,),
            )
            .await
            .map_err(mysql_error)?;
        let Some(last) = rows.last() else { break };
        after_id = as_i64(at(last, 0)).unwrap_or(i64::MAX);
        for row in &rows {
            let text = |index: usize| as_text(at(row, index));
            let count = |index: usize| -> u64 {
                as_i64(at(row, index))
                    .and_then(|value| u64::try_from(value).ok())
                    .unwrap_or(0)
            };
            let (model, endpoint, group, status, api_key) =
                (text(2), text(3), text(4), text(5), text(12));
            let parts = ContributionParts {
                start_time: as_time(at(row, 1), LegacyZone::Utc).unwrap_or(SystemTime::UNIX_EPOCH),
                model_name: model.as_deref(),
                endpoint_name: endpoint.as_deref(),
                group_name: group.as_deref(),
                api_key_name: api_key.as_deref(),
                status: status.as_deref().unwrap_or_default(),
                input_tokens: count(6),
                output_tokens: count(7),
                cache_creation_tokens: count(8),
                cache_read_tokens: count(9),
                cost_nano_usd: as_i64(at(row, 10)).unwrap_or(0),
                duration_ms: as_i64(at(row, 11)).map(|value| u64::try_from(value).unwrap_or(0)),
            };
            tables.add(&SummaryContribution::from_parts_in(parts, day_zone), 1);
        }
        // The hourly rows are written out as they grow (upserts add up).
        if tables.by_model_hour.len() + tables.by_key_hour.len() >= HOURLY_REBUILD_FLUSH {
            write_hourly(&mut tx, &mut tables).await?;
        }
    }
    for statement in [
        "DELETE FROM usage_summary",
        "DELETE FROM usage_key_summary",
        "UPDATE request_logs SET summarized = is_final WHERE summarized <> is_final",
    ] {
        tx.query_drop(statement).await.map_err(mysql_error)?;
    }
    write_hourly(&mut tx, &mut tables).await?;
    let now = datetime(SystemTime::now());
    let rows: Vec<(&SummaryKey, &SummaryDelta)> = tables.by_model.iter().collect();
    add_to_summary(&mut tx, &rows, &now).await?;
    let key_rows: Vec<(&KeySummaryKey, &SummaryDelta)> = tables.by_key.iter().collect();
    add_to_key_summary(&mut tx, &key_rows, &now).await?;
    tx.exec_drop(
        "INSERT INTO usage_settings (name, value) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE value = VALUES(value)",
        (SUMMARY_DAY_ZONE, name.as_str()),
    )
    .await
    .map_err(mysql_error)?;
    tx.commit().await.map_err(mysql_error)?;
    tracing::info!(
        day_zone = %name,
        previous = recorded.as_deref().unwrap_or("UTC (not recorded)"),
        rows = rows.len(),
        "usage_summary rebuilt with the days of the configured time zone"
    );
    Ok(true)
}

/// Deletes rows that started before `older_than`, a chunk per statement, then summary rows of
/// days (in `day_zone`) before its date.
pub(crate) async fn cleanup(
    conn: &mut Conn,
    older_than: SystemTime,
    day_zone: DayZone,
) -> Result<CleanupReport, StoreError> {
    let mut report = CleanupReport::default();
    loop {
        conn.exec_drop(
            "DELETE FROM request_logs WHERE start_time < ? LIMIT 5000",
            (datetime(older_than),),
        )
        .await
        .map_err(mysql_error)?;
        let deleted = conn.affected_rows();
        report.requests_deleted += deleted;
        if deleted < CLEANUP_CHUNK {
            break;
        }
    }
    let day = day_zone.format_date(older_than);
    conn.exec_drop("DELETE FROM usage_key_summary WHERE date < ?", (&day,))
        .await
        .map_err(mysql_error)?;
    // The hours of the same days: before the first instant of `older_than`'s day.
    let day_start = day_zone.day_start(day_zone.date_of(older_than));
    let first_hour = ccf_store::stats::hour_start(day_zone, day_start);
    for sql in [
        "DELETE FROM usage_hourly_summary WHERE hour_start < ?",
        "DELETE FROM usage_hourly_key_summary WHERE hour_start < ?",
    ] {
        conn.exec_drop(sql, (first_hour,))
            .await
            .map_err(mysql_error)?;
    }
    conn.exec_drop("DELETE FROM usage_summary WHERE date < ?", (&day,))
        .await
        .map_err(mysql_error)?;
    report.summary_rows_deleted = conn.affected_rows();
    Ok(report)
}
