//! The row written per request ([`UsageRecord`]), the priced form handed to a store
//! ([`StoredRecord`]) and the row read back ([`RequestRow`]).

use std::time::SystemTime;

use ccf_types::Usage;
use serde::Serialize;

use crate::pricing::{Cost, Pricing};
use crate::time::format_timestamp;

/// Statuses written by this forwarder.
pub mod status {
    /// Row inserted at start.
    pub const PENDING: &str = "pending";
    /// An endpoint was selected and the request sent.
    pub const FORWARDING: &str = "forwarding";
    /// The upstream accepted the request; the response is being relayed.
    pub const PROCESSING: &str = "processing";
    /// Terminal success.
    pub const COMPLETED: &str = "completed";
    /// Terminal failure.
    pub const FAILED: &str = "failed";
    /// Terminal: the client went away or the request was cancelled.
    pub const CANCELLED: &str = "cancelled";

    /// The "failed" family: `failed` plus the legacy failure statuses the Go forwarder wrote.
    /// A filter on `failed` matches all of them.
    pub const FAILED_FAMILY: [&str; 8] = [
        "failed",
        "error",
        "timeout",
        "auth_error",
        "rate_limited",
        "server_error",
        "network_error",
        "stream_error",
    ];

    /// Whether `status` belongs to the failed family.
    pub fn is_failure(status: &str) -> bool {
        FAILED_FAMILY.contains(&status)
    }

    /// Whether `status` is terminal (completed, cancelled or the failed family): rows migrated
    /// from the Go forwarder with such a status count as final.
    pub fn is_terminal(status: &str) -> bool {
        status == COMPLETED || status == CANCELLED || is_failure(status)
    }

    /// The statuses a filter value matches: `failed` expands to [`FAILED_FAMILY`], anything else
    /// matches itself.
    pub fn filter_values(filter: &str) -> Vec<&str> {
        if filter == FAILED {
            FAILED_FAMILY.to_vec()
        } else {
            vec![filter]
        }
    }
}

/// One request's row, as a snapshot: each lifecycle record becomes one
/// ([`UsageRecord::from_request`]) and is handed to the recorder, keyed by `request_id`; the
/// latest snapshot wins.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// Request id (`req-…`), unique per row.
    pub request_id: String,
    /// Client address.
    pub client_ip: Option<String>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// When the request arrived. A later snapshot never changes the stored value.
    pub start_time: SystemTime,
    /// When the request finished.
    pub end_time: Option<SystemTime>,
    /// Total duration in milliseconds.
    pub duration_ms: Option<u64>,
    /// Endpoint that served (or last tried) the request.
    pub endpoint_name: Option<String>,
    /// That endpoint's group.
    pub group_name: Option<String>,
    /// Model (as reported by the upstream, else as sent, else as requested): the model billed.
    pub model_name: Option<String>,
    /// The model the client asked for, when the request named one (issue 20: an endpoint's
    /// `model_map` may have sent another); `None` on rows written before v8 and by the Go
    /// forwarder.
    pub requested_model: Option<String>,
    /// Whether the client asked for a stream.
    pub is_streaming: bool,
    /// `pending|forwarding|processing|completed|failed|cancelled`; legacy values read back as
    /// they are (see [`status`]).
    pub status: String,
    /// HTTP status sent to the client.
    pub http_status_code: Option<u16>,
    /// Attempts beyond the first.
    pub retry_count: u32,
    /// Failure class of the latest failed attempt.
    pub failure_reason: Option<String>,
    /// Detail of the latest failure.
    pub last_failure_reason: Option<String>,
    /// Why the request was cancelled.
    pub cancel_reason: Option<String>,
    /// Tokens consumed.
    pub usage: Usage,
    /// Time from the request's arrival to the first response byte sent to the client.
    pub time_to_first_byte_ms: Option<u64>,
    /// The attempts trail, as JSON.
    pub attempts_json: Option<String>,
    /// The upstream answered with a different model than requested.
    pub model_mismatch: bool,
    /// The response was cut short (stream ended early); usage may be partial.
    pub partial: bool,
    /// The forwarder instance that wrote the row.
    pub instance_id: Option<String>,
    /// The name of the inbound auth key the request was made with (`auth.tokens[].name`,
    /// `default` for `auth.token`); `None` with inbound auth off and on rows the Go forwarder
    /// wrote.
    pub api_key_name: Option<String>,
    /// This is the request's final outcome: it is priced, counted in `usage_summary`, and never
    /// overwritten by a non-final snapshot.
    pub is_final: bool,
}

impl UsageRecord {
    /// A `pending` POST `/v1/messages` snapshot with nothing else known.
    pub fn new(request_id: impl Into<String>, start_time: SystemTime) -> Self {
        Self {
            request_id: request_id.into(),
            client_ip: None,
            user_agent: None,
            method: "POST".into(),
            path: "/v1/messages".into(),
            start_time,
            end_time: None,
            duration_ms: None,
            endpoint_name: None,
            group_name: None,
            model_name: None,
            requested_model: None,
            is_streaming: false,
            status: status::PENDING.into(),
            http_status_code: None,
            retry_count: 0,
            failure_reason: None,
            last_failure_reason: None,
            cancel_reason: None,
            usage: Usage::default(),
            time_to_first_byte_ms: None,
            attempts_json: None,
            model_mismatch: false,
            partial: false,
            instance_id: None,
            api_key_name: None,
            is_final: false,
        }
    }
}

/// A snapshot ready to be written: the record plus its cost, computed by [`StoredRecord::price`]
/// (never by callers) when the record is final and consumed tokens, and zero otherwise; the
/// recorder keeps that cost with the record until it is written ([`StoredRecord::with_cost`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    record: UsageRecord,
    cost: Cost,
}

impl StoredRecord {
    /// Prices `record` (final records only) with `pricing` and fits its text to the columns
    /// ([`UsageRecord::fit_to_columns`]): every value a store writes comes from here.
    pub fn price(mut record: UsageRecord, pricing: &Pricing) -> Self {
        let cost = if record.is_final {
            final_cost(pricing, record.model_name.as_deref(), &record.usage)
        } else {
            Cost::default()
        };
        record.fit_to_columns();
        Self { record, cost }
    }

    /// `record` with the `cost` it was priced at when it became final (the recorder prices an
    /// outcome once, with the prices in force then; a journal line keeps that cost). A non-final
    /// record costs zero whatever `cost` says. Fits the text to the columns like
    /// [`StoredRecord::price`].
    pub fn with_cost(mut record: UsageRecord, cost: Cost) -> Self {
        let cost = if record.is_final {
            cost
        } else {
            Cost::default()
        };
        record.fit_to_columns();
        Self { record, cost }
    }

    /// The snapshot.
    pub fn record(&self) -> &UsageRecord {
        &self.record
    }

    /// Its cost (zero unless final).
    pub fn cost(&self) -> &Cost {
        &self.cost
    }

    /// Takes the snapshot back.
    pub fn into_record(self) -> UsageRecord {
        self.record
    }
}

/// The cost of a final outcome: `usage` priced for `model`, zero when no token was used. The one
/// rule both the stored row and the `ccf_cost_usd` metric follow (the recorder computes it once
/// per outcome, see [`RecorderHandle::record_deferred`](crate::RecorderHandle::record_deferred)).
pub fn final_cost(pricing: &Pricing, model: Option<&str>, usage: &Usage) -> Cost {
    if usage.is_empty() {
        Cost::default()
    } else {
        pricing.cost(model, usage)
    }
}

/// A row read back from `request_logs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    /// `request_logs.id`.
    pub id: i64,
    /// Every stored field.
    pub record: UsageRecord,
    /// The stored cost in nano-USD (legacy rows: converted from their USD columns).
    pub cost: Cost,
    /// `created_at`, if readable.
    pub created_at: Option<SystemTime>,
    /// `updated_at`, if readable.
    pub updated_at: Option<SystemTime>,
}

/// The JSON shape of a row: the Go forwarder's `RequestDetail` field names (§9.4) plus the new
/// columns. Times are RFC 3339 UTC.
#[derive(Serialize)]
struct RequestDetail<'a> {
    id: i64,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<serde_json::Value>,
    model_mismatch: bool,
    partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_model: Option<&'a str>,
    is_final: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

impl Serialize for RequestRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = &self.record;
        RequestDetail {
            id: self.id,
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
            input_tokens: record.usage.input_tokens,
            output_tokens: record.usage.output_tokens,
            cache_creation_tokens: record.usage.cache_creation_input_tokens,
            cache_read_tokens: record.usage.cache_read_input_tokens,
            cache_creation_5m_tokens: record.usage.cache_creation_5m_input_tokens,
            cache_creation_1h_tokens: record.usage.cache_creation_1h_input_tokens,
            input_cost_usd: Cost::usd(self.cost.input),
            output_cost_usd: Cost::usd(self.cost.output),
            cache_creation_cost_usd: Cost::usd(self.cost.cache_creation),
            cache_read_cost_usd: Cost::usd(self.cost.cache_read),
            total_cost_usd: Cost::usd(self.cost.total),
            total_cost_nano_usd: self.cost.total,
            time_to_first_byte_ms: record.time_to_first_byte_ms,
            attempts: record.attempts_json.as_deref().map(|text| {
                serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
            }),
            model_mismatch: record.model_mismatch,
            partial: record.partial,
            instance_id: record.instance_id.as_deref(),
            api_key_name: record.api_key_name.as_deref(),
            requested_model: record.requested_model.as_deref(),
            is_final: record.is_final,
            created_at: self.created_at.map(format_timestamp),
            updated_at: self.updated_at.map(format_timestamp),
        }
        .serialize(serializer)
    }
}
