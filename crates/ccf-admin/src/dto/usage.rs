//! Usage data on the wire: request rows (`GET /api/v1/usage/requests`, `/api/v1/requests`,
//! `/api/v1/requests/{id}`) from ccf-store's [`RequestRow`], stats buckets from its [`Bucket`],
//! daily summary rows from its [`SummaryRow`], and model prices from ccf-config's
//! [`ModelPricing`].
//!
//! A row has the Go forwarder's `RequestDetail` field names (reference §9.4) plus the columns this
//! port added; times are RFC 3339 UTC; optional columns are left out when empty. The JSON export
//! (`ccf_store::ExportEncoder`) writes the store's own rendering of the same row; the wire-shape
//! snapshot pins both.

use ccf_config::ModelPricing;
use ccf_store::time::format_timestamp;
use ccf_store::{Aggregate, Bucket, Cost, RequestRow, SummaryRow};
use serde::Serialize;
use serde_json::Value;

/// One request row. `id` is left out for a live request (it has no row yet).
#[derive(Debug, Serialize)]
pub(crate) struct RequestRowDto<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_name: Option<&'a str>,
    is_streaming: bool,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status_code: Option<u16>,
    retry_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_reason: Option<&'a str>,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    cache_creation_5m_tokens: u64,
    cache_creation_1h_tokens: u64,
    input_cost_usd: f64,
    output_cost_usd: f64,
    cache_creation_cost_usd: f64,
    cache_read_cost_usd: f64,
    total_cost_usd: f64,
    total_cost_nano_usd: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_first_byte_ms: Option<u64>,
    /// The stored attempt trail, passed on as JSON (a column that is not JSON shows as text).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Value>,
    model_mismatch: bool,
    partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_name: Option<&'a str>,
    /// The model the client asked for (issue 20: `model_name` is the model billed, the
    /// upstream's, which an endpoint's `model_map` may have made another).
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_model: Option<&'a str>,
    is_final: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

impl<'a> From<&'a RequestRow> for RequestRowDto<'a> {
    fn from(row: &'a RequestRow) -> Self {
        let record = &row.record;
        let usage = &record.usage;
        RequestRowDto {
            id: Some(row.id),
            request_id: &record.request_id,
            client_ip: record.client_ip.as_deref(),
            user_agent: record.user_agent.as_deref(),
            method: &record.method,
            path: &record.path,
            start_time: format_timestamp(record.start_time),
            end_time: record.end_time.map(format_timestamp),
            duration_ms: record.duration_ms,
            endpoint_name: record.endpoint_name.as_deref(),
            group_name: record.group_name.as_deref(),
            model_name: record.model_name.as_deref(),
            is_streaming: record.is_streaming,
            status: &record.status,
            http_status_code: record.http_status_code,
            retry_count: record.retry_count,
            failure_reason: record.failure_reason.as_deref(),
            last_failure_reason: record.last_failure_reason.as_deref(),
            cancel_reason: record.cancel_reason.as_deref(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_creation_tokens: usage.cache_creation_input_tokens,
            cache_read_tokens: usage.cache_read_input_tokens,
            cache_creation_5m_tokens: usage.cache_creation_5m_input_tokens,
            cache_creation_1h_tokens: usage.cache_creation_1h_input_tokens,
            input_cost_usd: Cost::usd(row.cost.input),
            output_cost_usd: Cost::usd(row.cost.output),
            cache_creation_cost_usd: Cost::usd(row.cost.cache_creation),
            cache_read_cost_usd: Cost::usd(row.cost.cache_read),
            total_cost_usd: Cost::usd(row.cost.total),
            total_cost_nano_usd: row.cost.total,
            time_to_first_byte_ms: record.time_to_first_byte_ms,
            attempts: record.attempts_json.as_deref().map(|text| {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
            }),
            model_mismatch: record.model_mismatch,
            partial: record.partial,
            instance_id: record.instance_id.as_deref(),
            api_key_name: record.api_key_name.as_deref(),
            requested_model: record.requested_model.as_deref(),
            is_final: record.is_final,
            created_at: row.created_at.map(format_timestamp),
            updated_at: row.updated_at.map(format_timestamp),
        }
    }
}

/// A row read from the database by `GET /api/v1/requests/{id}`: `source: "store"`.
#[derive(Debug, Serialize)]
pub(crate) struct StoredRequestDto<'a> {
    #[serde(flatten)]
    row: RequestRowDto<'a>,
    source: &'static str,
}

impl<'a> From<&'a RequestRow> for StoredRequestDto<'a> {
    fn from(row: &'a RequestRow) -> Self {
        StoredRequestDto {
            row: row.into(),
            source: "store",
        }
    }
}

/// A request still in memory, in the same shape as a stored row (without `id`) plus
/// `source: "live"` and its live state.
#[derive(Debug, Serialize)]
pub(crate) struct LiveRequestDto<'a> {
    #[serde(flatten)]
    row: RequestRowDto<'a>,
    source: &'static str,
    /// `retry` or `suspended` while it waits, else `null`.
    error_state: Option<&'static str>,
    /// The lifecycle change that produced this state (`request_started`, ...).
    change_type: &'static str,
}

impl<'a> LiveRequestDto<'a> {
    /// `row` (what the recorder would write for the request now, priced when final) with the
    /// live `error_state` and `change_type` words.
    pub(crate) fn new(
        row: &'a RequestRow,
        error_state: Option<&'static str>,
        change_type: &'static str,
    ) -> Self {
        let mut row = RequestRowDto::from(row);
        row.id = None;
        LiveRequestDto {
            row,
            source: "live",
            error_state,
            change_type,
        }
    }
}

/// Counts, durations, tokens and cost over a set of rows.
#[derive(Debug, Serialize)]
struct AggregateDto {
    request_count: u64,
    success_count: u64,
    failed_count: u64,
    cancelled_count: u64,
    success_rate: f64,
    avg_duration_ms: Option<f64>,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    total_cost_nano_usd: i64,
    total_cost_usd: f64,
}

impl From<&Aggregate> for AggregateDto {
    fn from(aggregate: &Aggregate) -> Self {
        AggregateDto {
            request_count: aggregate.request_count,
            success_count: aggregate.success_count,
            failed_count: aggregate.failed_count,
            cancelled_count: aggregate.cancelled_count,
            success_rate: aggregate.success_rate,
            avg_duration_ms: aggregate.avg_duration_ms,
            input_tokens: aggregate.input_tokens,
            output_tokens: aggregate.output_tokens,
            cache_creation_tokens: aggregate.cache_creation_tokens,
            cache_read_tokens: aggregate.cache_read_tokens,
            total_cost_nano_usd: aggregate.total_cost_nano_usd,
            total_cost_usd: aggregate.total_cost_usd,
        }
    }
}

/// The numbers of one group, API key or hour of `GET /api/v1/usage/stats`: its key and the
/// aggregate's fields side by side.
#[derive(Debug, Serialize)]
pub(crate) struct BucketDto<'a> {
    key: &'a str,
    #[serde(flatten)]
    aggregate: AggregateDto,
}

impl<'a> From<&'a Bucket> for BucketDto<'a> {
    fn from(bucket: &'a Bucket) -> Self {
        BucketDto {
            key: &bucket.key,
            aggregate: (&bucket.aggregate).into(),
        }
    }
}

/// One `usage_summary` row of `GET /api/v1/usage/summary`.
#[derive(Debug, Serialize)]
pub(crate) struct SummaryRowDto<'a> {
    date: &'a str,
    model_name: &'a str,
    endpoint_name: &'a str,
    group_name: &'a str,
    request_count: i64,
    success_count: i64,
    error_count: i64,
    total_input_tokens: i64,
    total_output_tokens: i64,
    total_cache_creation_tokens: i64,
    total_cache_read_tokens: i64,
    total_cost_nano_usd: i64,
    total_cost_usd: f64,
    total_duration_ms: i64,
    avg_duration_ms: f64,
}

impl<'a> From<&'a SummaryRow> for SummaryRowDto<'a> {
    fn from(row: &'a SummaryRow) -> Self {
        SummaryRowDto {
            date: &row.date,
            model_name: &row.model_name,
            endpoint_name: &row.endpoint_name,
            group_name: &row.group_name,
            request_count: row.request_count,
            success_count: row.success_count,
            error_count: row.error_count,
            total_input_tokens: row.total_input_tokens,
            total_output_tokens: row.total_output_tokens,
            total_cache_creation_tokens: row.total_cache_creation_tokens,
            total_cache_read_tokens: row.total_cache_read_tokens,
            total_cost_nano_usd: row.total_cost_nano_usd,
            total_cost_usd: row.total_cost_usd,
            total_duration_ms: row.total_duration_ms,
            avg_duration_ms: row.avg_duration_ms,
        }
    }
}

/// A configured model price of `GET /api/v1/usage/models`, USD per million tokens.
#[derive(Debug, Serialize)]
pub(crate) struct ModelPriceDto {
    input: f64,
    output: f64,
    cache_creation: f64,
    cache_read: f64,
    /// `null` when the file gives none (2 x input applies).
    cache_creation_1h: Option<f64>,
    /// The rates of a request over `threshold_input_tokens` input tokens (input + cache writes
    /// + cache reads), for models with a long-context tier; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    long_context: Option<LongContextPriceDto>,
}

/// A model's long-context tier, USD per million tokens for every token of such a request.
#[derive(Debug, Serialize)]
pub(crate) struct LongContextPriceDto {
    threshold_input_tokens: u64,
    input: f64,
    output: f64,
    cache_creation: f64,
    cache_read: f64,
    /// `null` when the file gives none (2 x the tier's input applies).
    cache_creation_1h: Option<f64>,
}

impl From<&ModelPricing> for ModelPriceDto {
    fn from(price: &ModelPricing) -> Self {
        ModelPriceDto {
            input: price.input,
            output: price.output,
            cache_creation: price.cache_creation,
            cache_read: price.cache_read,
            cache_creation_1h: price.cache_creation_1h,
            long_context: price.long_context.as_ref().map(|tier| LongContextPriceDto {
                threshold_input_tokens: tier.threshold_input_tokens,
                input: tier.input,
                output: tier.output,
                cache_creation: tier.cache_creation,
                cache_read: tier.cache_read,
                cache_creation_1h: tier.cache_creation_1h,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::to_json;
    use ccf_store::UsageRecord;
    use std::time::{Duration, SystemTime};

    fn row() -> RequestRow {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut record = UsageRecord::new("req-0000000000000001", start);
        record.end_time = Some(start + Duration::from_millis(1500));
        record.duration_ms = Some(1500);
        record.endpoint_name = Some("primary".into());
        record.model_name = Some("claude-sonnet-4-5".into());
        record.status = "completed".into();
        record.http_status_code = Some(200);
        record.usage.input_tokens = 12;
        record.usage.output_tokens = 6;
        record.attempts_json = Some(r#"[{"endpoint":"primary"}]"#.into());
        record.is_final = true;
        RequestRow {
            id: 7,
            record,
            cost: Cost::new(36_000, 90_000, 0, 0),
            created_at: Some(start),
            updated_at: None,
        }
    }

    #[test]
    fn a_stored_row_has_the_go_field_names_and_leaves_empty_columns_out() {
        let row = row();
        let value = to_json(&StoredRequestDto::from(&row));
        assert_eq!(
            value,
            serde_json::json!({
                "id": 7,
                "request_id": "req-0000000000000001",
                "method": "POST",
                "path": "/v1/messages",
                "start_time": "2023-11-14T22:13:20.000000Z",
                "end_time": "2023-11-14T22:13:21.500000Z",
                "duration_ms": 1500,
                "endpoint_name": "primary",
                "model_name": "claude-sonnet-4-5",
                "is_streaming": false,
                "status": "completed",
                "http_status_code": 200,
                "retry_count": 0,
                "input_tokens": 12,
                "output_tokens": 6,
                "cache_creation_tokens": 0,
                "cache_read_tokens": 0,
                "cache_creation_5m_tokens": 0,
                "cache_creation_1h_tokens": 0,
                "input_cost_usd": 0.000036,
                "output_cost_usd": 0.00009,
                "cache_creation_cost_usd": 0.0,
                "cache_read_cost_usd": 0.0,
                "total_cost_usd": 0.000126,
                "total_cost_nano_usd": 126_000,
                "attempts": [{"endpoint": "primary"}],
                "model_mismatch": false,
                "partial": false,
                "is_final": true,
                "created_at": "2023-11-14T22:13:20.000000Z",
                "source": "store",
            })
        );
    }

    #[test]
    fn the_api_row_and_the_stores_json_export_agree() {
        // Two renderings of one row: the API's (here) and the export file's (ccf-store). They
        // are separate on purpose, and equal today.
        let row = row();
        let api = to_json(&RequestRowDto::from(&row));
        let export = serde_json::to_value(&row).expect("export rendering");
        assert_eq!(api, export);
    }

    #[test]
    fn a_live_row_has_no_id_and_says_where_it_comes_from() {
        let row = row();
        let value = to_json(&LiveRequestDto::new(&row, Some("retry"), "request_updated"));
        assert!(value.get("id").is_none(), "{value}");
        assert_eq!(value["source"], "live");
        assert_eq!(value["error_state"], "retry");
        assert_eq!(value["change_type"], "request_updated");
        let value = to_json(&LiveRequestDto::new(&row, None, "request_started"));
        assert_eq!(value["error_state"], Value::Null);
    }

    #[test]
    fn a_price_shows_its_long_context_tier_only_when_it_has_one() {
        let mut price = ccf_config::ModelPricing {
            input: 3.0,
            output: 15.0,
            cache_creation: 3.75,
            cache_read: 0.3,
            cache_creation_1h: None,
            long_context: None,
        };
        assert_eq!(
            to_json(&ModelPriceDto::from(&price)),
            serde_json::json!({
                "input": 3.0, "output": 15.0, "cache_creation": 3.75, "cache_read": 0.3,
                "cache_creation_1h": null
            })
        );
        price.long_context = Some(ccf_config::LongContextPricing {
            threshold_input_tokens: 200_000,
            input: 6.0,
            output: 22.5,
            cache_creation: 7.5,
            cache_read: 0.6,
            cache_creation_1h: Some(12.0),
        });
        assert_eq!(
            to_json(&ModelPriceDto::from(&price))["long_context"],
            serde_json::json!({
                "threshold_input_tokens": 200000, "input": 6.0, "output": 22.5,
                "cache_creation": 7.5, "cache_read": 0.6, "cache_creation_1h": 12.0
            })
        );
    }
}
