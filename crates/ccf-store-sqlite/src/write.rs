//! The writer thread's statements: batch upserts with `usage_summary` upkeep, and retention.

use std::collections::HashMap;
use std::time::SystemTime;

use ccf_store::time::format_date;
use ccf_store::{
    plan_batch, ContributionParts, Cost, ExistingRow, LegacyZone, StoreError, StoredRecord,
    SummaryContribution,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::convert::{
    as_bool, as_i64, as_text, as_time, format_timestamp, int, opt_int, opt_text, sqlite_error,
    u64_or_zero,
};

/// Rows deleted per retention statement.
pub(crate) const CLEANUP_CHUNK: u64 = 5000;

const SELECT_EXISTING: &str =
    "SELECT is_final, summarized, start_time, model_name, endpoint_name, \
    group_name, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, \
    total_cost_nano_usd, duration_ms FROM request_logs WHERE request_id = ?1";

const UPSERT: &str = "INSERT INTO request_logs (
    request_id, client_ip, user_agent, method, path, start_time, end_time, duration_ms,
    endpoint_name, group_name, model_name, is_streaming, status, http_status_code, retry_count,
    failure_reason, last_failure_reason, cancel_reason,
    input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens,
    cache_creation_5m_tokens, cache_creation_1h_tokens,
    input_cost_usd, output_cost_usd, cache_creation_cost_usd, cache_read_cost_usd, total_cost_usd,
    input_cost_nano_usd, output_cost_nano_usd, cache_creation_cost_nano_usd,
    cache_read_cost_nano_usd, total_cost_nano_usd,
    time_to_first_byte_ms, attempts_json, model_mismatch, partial, instance_id, is_final,
    summarized, created_at, updated_at, api_key_name
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38,
    ?39, ?40, ?41, ?42, ?42, ?43)
ON CONFLICT(request_id) DO UPDATE SET
    client_ip = excluded.client_ip, user_agent = excluded.user_agent, method = excluded.method,
    path = excluded.path, end_time = excluded.end_time, duration_ms = excluded.duration_ms,
    endpoint_name = excluded.endpoint_name, group_name = excluded.group_name,
    model_name = excluded.model_name, is_streaming = excluded.is_streaming,
    status = excluded.status, http_status_code = excluded.http_status_code,
    retry_count = excluded.retry_count, failure_reason = excluded.failure_reason,
    last_failure_reason = excluded.last_failure_reason, cancel_reason = excluded.cancel_reason,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    cache_creation_tokens = excluded.cache_creation_tokens,
    cache_read_tokens = excluded.cache_read_tokens,
    cache_creation_5m_tokens = excluded.cache_creation_5m_tokens,
    cache_creation_1h_tokens = excluded.cache_creation_1h_tokens,
    input_cost_usd = excluded.input_cost_usd, output_cost_usd = excluded.output_cost_usd,
    cache_creation_cost_usd = excluded.cache_creation_cost_usd,
    cache_read_cost_usd = excluded.cache_read_cost_usd, total_cost_usd = excluded.total_cost_usd,
    input_cost_nano_usd = excluded.input_cost_nano_usd,
    output_cost_nano_usd = excluded.output_cost_nano_usd,
    cache_creation_cost_nano_usd = excluded.cache_creation_cost_nano_usd,
    cache_read_cost_nano_usd = excluded.cache_read_cost_nano_usd,
    total_cost_nano_usd = excluded.total_cost_nano_usd,
    time_to_first_byte_ms = excluded.time_to_first_byte_ms,
    attempts_json = excluded.attempts_json, model_mismatch = excluded.model_mismatch,
    partial = excluded.partial, instance_id = excluded.instance_id,
    is_final = excluded.is_final, summarized = excluded.summarized,
    updated_at = excluded.updated_at,
    api_key_name = COALESCE(excluded.api_key_name, request_logs.api_key_name)";

const SUMMARY_UPSERT: &str = "INSERT INTO usage_summary (
    date, model_name, endpoint_name, group_name, request_count, success_count, error_count,
    total_input_tokens, total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens,
    total_cost_nano_usd, total_duration_ms, total_cost_usd, avg_duration_ms, created_at, updated_at
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?12 / 1000000000.0,
    CASE WHEN ?5 > 0 THEN CAST(?13 AS REAL) / ?5 ELSE 0 END, ?14, ?14)
ON CONFLICT(date, model_name, endpoint_name, group_name) DO UPDATE SET
    request_count = request_count + excluded.request_count,
    success_count = success_count + excluded.success_count,
    error_count = error_count + excluded.error_count,
    total_input_tokens = total_input_tokens + excluded.total_input_tokens,
    total_output_tokens = total_output_tokens + excluded.total_output_tokens,
    total_cache_creation_tokens = total_cache_creation_tokens + excluded.total_cache_creation_tokens,
    total_cache_read_tokens = total_cache_read_tokens + excluded.total_cache_read_tokens,
    total_cost_nano_usd = total_cost_nano_usd + excluded.total_cost_nano_usd,
    total_cost_usd = (total_cost_nano_usd + excluded.total_cost_nano_usd) / 1000000000.0,
    total_duration_ms = total_duration_ms + excluded.total_duration_ms,
    avg_duration_ms = CASE WHEN request_count + excluded.request_count > 0
        THEN CAST(total_duration_ms + excluded.total_duration_ms AS REAL)
            / (request_count + excluded.request_count)
        ELSE 0 END,
    updated_at = excluded.updated_at";

/// Writes one batch in one `BEGIN IMMEDIATE` transaction.
pub(crate) fn write_batch(
    connection: &mut Connection,
    batch: &[StoredRecord],
    zone: LegacyZone,
) -> Result<(), StoreError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let mut existing: HashMap<String, ExistingRow> = HashMap::new();
    {
        let mut select = tx.prepare_cached(SELECT_EXISTING).map_err(sqlite_error)?;
        for stored in batch {
            let id = &stored.record().request_id;
            if existing.contains_key(id) {
                continue;
            }
            let row = select
                .query_row([id], |row| {
                    let is_final = as_bool(row.get_ref(0)?);
                    let summarized = as_bool(row.get_ref(1)?);
                    let start_time =
                        as_time(row.get_ref(2)?, zone).unwrap_or(SystemTime::UNIX_EPOCH);
                    let counted = if is_final && summarized {
                        let model = as_text(row.get_ref(3)?);
                        let endpoint = as_text(row.get_ref(4)?);
                        let group = as_text(row.get_ref(5)?);
                        let status = as_text(row.get_ref(6)?).unwrap_or_default();
                        Some(SummaryContribution::from_parts(ContributionParts {
                            start_time,
                            model_name: model.as_deref(),
                            endpoint_name: endpoint.as_deref(),
                            group_name: group.as_deref(),
                            status: &status,
                            input_tokens: u64_or_zero(row.get_ref(7)?),
                            output_tokens: u64_or_zero(row.get_ref(8)?),
                            cache_creation_tokens: u64_or_zero(row.get_ref(9)?),
                            cache_read_tokens: u64_or_zero(row.get_ref(10)?),
                            cost_nano_usd: as_i64(row.get_ref(11)?).unwrap_or(0),
                            duration_ms: as_i64(row.get_ref(12)?)
                                .and_then(|d| u64::try_from(d).ok()),
                        }))
                    } else {
                        None
                    };
                    Ok(ExistingRow {
                        is_final,
                        start_time,
                        counted,
                    })
                })
                .optional()
                .map_err(sqlite_error)?;
            if let Some(row) = row {
                existing.insert(id.clone(), row);
            }
        }
    }
    let plan = plan_batch(batch, &existing);
    let now = format_timestamp(SystemTime::now());
    {
        let mut upsert = tx.prepare_cached(UPSERT).map_err(sqlite_error)?;
        for stored in &plan.writes {
            let record = stored.record();
            let cost: &Cost = stored.cost();
            let usage = &record.usage;
            upsert
                .execute(params![
                    record.request_id,
                    opt_text(record.client_ip.as_deref()),
                    opt_text(record.user_agent.as_deref()),
                    record.method,
                    record.path,
                    format_timestamp(record.start_time),
                    record.end_time.map(format_timestamp),
                    opt_int(record.duration_ms),
                    opt_text(record.endpoint_name.as_deref()),
                    opt_text(record.group_name.as_deref()),
                    opt_text(record.model_name.as_deref()),
                    record.is_streaming,
                    record.status,
                    record.http_status_code,
                    record.retry_count,
                    opt_text(record.failure_reason.as_deref()),
                    opt_text(record.last_failure_reason.as_deref()),
                    opt_text(record.cancel_reason.as_deref()),
                    int(usage.input_tokens),
                    int(usage.output_tokens),
                    int(usage.cache_creation_input_tokens),
                    int(usage.cache_read_input_tokens),
                    int(usage.cache_creation_5m_input_tokens),
                    int(usage.cache_creation_1h_input_tokens),
                    Cost::usd(cost.input),
                    Cost::usd(cost.output),
                    Cost::usd(cost.cache_creation),
                    Cost::usd(cost.cache_read),
                    Cost::usd(cost.total),
                    cost.input,
                    cost.output,
                    cost.cache_creation,
                    cost.cache_read,
                    cost.total,
                    opt_int(record.time_to_first_byte_ms),
                    opt_text(record.attempts_json.as_deref()),
                    record.model_mismatch,
                    record.partial,
                    opt_text(record.instance_id.as_deref()),
                    record.is_final,
                    record.is_final,
                    now,
                    opt_text(record.api_key_name.as_deref()),
                ])
                .map_err(sqlite_error)?;
        }
    }
    if !plan.summary.is_empty() {
        let mut upsert = tx.prepare_cached(SUMMARY_UPSERT).map_err(sqlite_error)?;
        for (key, delta) in &plan.summary {
            upsert
                .execute(params![
                    key.date,
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
                ])
                .map_err(sqlite_error)?;
        }
    }
    tx.commit().map_err(sqlite_error)
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

/// Deletes summary rows of UTC days before `older_than`'s.
pub(crate) fn delete_summary(
    connection: &mut Connection,
    older_than: SystemTime,
) -> Result<u64, StoreError> {
    let deleted = connection
        .execute(
            "DELETE FROM usage_summary WHERE date < ?1",
            [format_date(older_than)],
        )
        .map_err(sqlite_error)?;
    Ok(deleted as u64)
}
