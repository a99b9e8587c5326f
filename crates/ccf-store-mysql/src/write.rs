//! Batch upserts with `usage_summary` upkeep, and retention.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use ccf_store::time::format_date;
use ccf_store::{
    plan_batch, CleanupReport, ContributionParts, Cost, ExistingRow, LegacyZone, StoreError,
    StoredRecord, SummaryContribution,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row, TxOpts, Value};

use crate::convert::{
    as_bool, as_i64, as_text, as_time, at, datetime, int, mysql_error, opt_datetime, opt_int,
    opt_text, text, u64_or_zero,
};

const ROWS_PER_INSERT: usize = 200;
const IDS_PER_SELECT: usize = 500;
const CLEANUP_CHUNK: u64 = 5000;

const COLUMNS: [&str; 44] = [
    "request_id",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "start_time",
    "end_time",
    "duration_ms",
    "endpoint_name",
    "group_name",
    "model_name",
    "is_streaming",
    "status",
    "http_status_code",
    "retry_count",
    "failure_reason",
    "last_failure_reason",
    "cancel_reason",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "cache_creation_cost_usd",
    "cache_read_cost_usd",
    "total_cost_usd",
    "input_cost_nano_usd",
    "output_cost_nano_usd",
    "cache_creation_cost_nano_usd",
    "cache_read_cost_nano_usd",
    "total_cost_nano_usd",
    "time_to_first_byte_ms",
    "attempts_json",
    "model_mismatch",
    "partial",
    "instance_id",
    "is_final",
    "summarized",
    "created_at",
    "updated_at",
    "api_key_name",
];

/// Columns a later snapshot does not change.
const KEPT: [&str; 3] = ["request_id", "start_time", "created_at"];

fn params(values: Vec<Value>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values)
    }
}

fn upsert_sql(rows: usize) -> String {
    let placeholders = format!("({})", vec!["?"; COLUMNS.len()].join(", "));
    let updates: Vec<String> = COLUMNS
        .iter()
        .filter(|c| !KEPT.contains(c))
        .map(|c| format!("{c} = VALUES({c})"))
        .collect();
    format!(
        "INSERT INTO request_logs ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        COLUMNS.join(", "),
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
         total_duration_ms, total_cost_usd, avg_duration_ms, created_at, updated_at) VALUES {} \
         ON DUPLICATE KEY UPDATE \
         request_count = request_count + VALUES(request_count), \
         success_count = success_count + VALUES(success_count), \
         error_count = error_count + VALUES(error_count), \
         total_input_tokens = total_input_tokens + VALUES(total_input_tokens), \
         total_output_tokens = total_output_tokens + VALUES(total_output_tokens), \
         total_cache_creation_tokens = total_cache_creation_tokens + VALUES(total_cache_creation_tokens), \
         total_cache_read_tokens = total_cache_read_tokens + VALUES(total_cache_read_tokens), \
         total_cost_nano_usd = total_cost_nano_usd + VALUES(total_cost_nano_usd), \
         total_duration_ms = total_duration_ms + VALUES(total_duration_ms), \
         total_cost_usd = total_cost_nano_usd / 1000000000, \
         avg_duration_ms = IF(request_count > 0, total_duration_ms / request_count, 0), \
         updated_at = VALUES(updated_at)",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ")
    )
}

fn record_values(stored: &StoredRecord, now: &Value, out: &mut Vec<Value>) {
    let record = stored.record();
    let cost: &Cost = stored.cost();
    let usage = &record.usage;
    out.extend([
        text(&record.request_id),
        opt_text(record.client_ip.as_deref()),
        opt_text(record.user_agent.as_deref()),
        text(&record.method),
        text(&record.path),
        datetime(record.start_time),
        opt_datetime(record.end_time),
        opt_int(record.duration_ms),
        opt_text(record.endpoint_name.as_deref()),
        opt_text(record.group_name.as_deref()),
        opt_text(record.model_name.as_deref()),
        Value::from(record.is_streaming),
        text(&record.status),
        record.http_status_code.map_or(Value::NULL, Value::from),
        Value::from(record.retry_count),
        opt_text(record.failure_reason.as_deref()),
        opt_text(record.last_failure_reason.as_deref()),
        opt_text(record.cancel_reason.as_deref()),
        int(usage.input_tokens),
        int(usage.output_tokens),
        int(usage.cache_creation_input_tokens),
        int(usage.cache_read_input_tokens),
        int(usage.cache_creation_5m_input_tokens),
        int(usage.cache_creation_1h_input_tokens),
        usd(cost.input),
        usd(cost.output),
        usd(cost.cache_creation),
        usd(cost.cache_read),
        usd(cost.total),
        Value::Int(cost.input),
        Value::Int(cost.output),
        Value::Int(cost.cache_creation),
        Value::Int(cost.cache_read),
        Value::Int(cost.total),
        opt_int(record.time_to_first_byte_ms),
        opt_text(record.attempts_json.as_deref()),
        Value::from(record.model_mismatch),
        Value::from(record.partial),
        opt_text(record.instance_id.as_deref()),
        Value::from(record.is_final),
        Value::from(record.is_final),
        now.clone(),
        now.clone(),
        opt_text(record.api_key_name.as_deref()),
    ]);
}

/// Nano-USD as an exact decimal string for a DECIMAL column (rounded by the column's scale).
fn usd(nano: i64) -> Value {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    text(&format!(
        "{sign}{}.{:09}",
        abs / 1_000_000_000,
        abs % 1_000_000_000
    ))
}

/// Writes one batch in one transaction (READ COMMITTED, rows locked in request-id order).
pub(crate) async fn write_batch(
    conn: &mut Conn,
    batch: &[StoredRecord],
    zone: LegacyZone,
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
            "SELECT request_id, is_final, summarized, start_time, model_name, endpoint_name, \
             group_name, status, input_tokens, output_tokens, cache_creation_tokens, \
             cache_read_tokens, total_cost_nano_usd, duration_ms FROM request_logs \
             WHERE request_id IN ({}) FOR UPDATE",
            vec!["?"; chunk.len()].join(", ")
        );
        let rows: Vec<Row> = tx
            .exec(sql, params(chunk.iter().map(|id| text(id)).collect()))
            .await
            .map_err(mysql_error)?;
        for row in rows {
            let Some(id) = as_text(at(&row, 0)) else {
                continue;
            };
            let is_final = as_bool(at(&row, 1));
            let summarized = as_bool(at(&row, 2));
            let start_time = as_time(at(&row, 3), zone).unwrap_or(SystemTime::UNIX_EPOCH);
            let counted = (is_final && summarized).then(|| {
                let model = as_text(at(&row, 4));
                let endpoint = as_text(at(&row, 5));
                let group = as_text(at(&row, 6));
                let status = as_text(at(&row, 7)).unwrap_or_default();
                SummaryContribution::from_parts(ContributionParts {
                    start_time,
                    model_name: model.as_deref(),
                    endpoint_name: endpoint.as_deref(),
                    group_name: group.as_deref(),
                    status: &status,
                    input_tokens: u64_or_zero(at(&row, 8)),
                    output_tokens: u64_or_zero(at(&row, 9)),
                    cache_creation_tokens: u64_or_zero(at(&row, 10)),
                    cache_read_tokens: u64_or_zero(at(&row, 11)),
                    cost_nano_usd: as_i64(at(&row, 12)).unwrap_or(0),
                    duration_ms: as_i64(at(&row, 13)).and_then(|d| u64::try_from(d).ok()),
                })
            });
            existing.insert(
                id,
                ExistingRow {
                    is_final,
                    start_time,
                    counted,
                },
            );
        }
    }
    let plan = plan_batch(batch, &existing);
    let now = datetime(SystemTime::now());
    for chunk in plan.writes.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * COLUMNS.len());
        for stored in chunk {
            record_values(stored, &now, &mut values);
        }
        tx.exec_drop(upsert_sql(chunk.len()), params(values))
            .await
            .map_err(mysql_error)?;
    }
    for chunk in plan.summary.chunks(ROWS_PER_INSERT) {
        let mut values = Vec::with_capacity(chunk.len() * 17);
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
            ]);
        }
        tx.exec_drop(summary_sql(chunk.len()), params(values))
            .await
            .map_err(mysql_error)?;
    }
    tx.commit().await.map_err(mysql_error)
}

/// Deletes rows that started before `older_than`, a chunk per statement, then summary rows of
/// UTC days before its date.
pub(crate) async fn cleanup(
    conn: &mut Conn,
    older_than: SystemTime,
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
    conn.exec_drop(
        "DELETE FROM usage_summary WHERE date < ?",
        (format_date(older_than),),
    )
    .await
    .map_err(mysql_error)?;
    report.summary_rows_deleted = conn.affected_rows();
    Ok(report)
}
