//! What can be asked of a store, and the shapes of the answers.

use std::time::SystemTime;

use crate::pricing::Cost;

/// Row filters shared by listing, stats and export. Every field narrows the result; `None`
/// means "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFilter {
    /// `start_time >= start`.
    pub start: Option<SystemTime>,
    /// `start_time <= end`.
    pub end: Option<SystemTime>,
    /// Exact status, except `failed`, which matches the whole failed family
    /// ([`crate::status::FAILED_FAMILY`]).
    pub status: Option<String>,
    /// Exact model name.
    pub model: Option<String>,
    /// Exact endpoint name.
    pub endpoint: Option<String>,
    /// Exact group name.
    pub group: Option<String>,
    /// Exact request id.
    pub request_id: Option<String>,
    /// Exact `instance_id` (the forwarder instance that wrote the row).
    pub instance: Option<String>,
    /// Exact `api_key_name` (the inbound auth key the request was made with).
    pub api_key: Option<String>,
}

/// Stats use the listing filters.
pub type StatsQuery = RequestFilter;
/// Exports use the listing filters.
pub type ExportQuery = RequestFilter;

/// A page of the request listing: newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestQuery {
    /// Which rows.
    pub filter: RequestFilter,
    /// Rows per page (a store caps it at [`MAX_PAGE_SIZE`]).
    pub limit: u32,
    /// Rows skipped.
    pub offset: u64,
}

/// The largest page a store returns.
pub const MAX_PAGE_SIZE: u32 = 10_000;

impl RequestQuery {
    /// The limit a store applies: at least 1, at most [`MAX_PAGE_SIZE`].
    pub fn effective_limit(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }
}

/// One page of results with the total number of rows matching the same filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Rows matching the filter, all pages together.
    pub total: u64,
    /// The limit applied.
    pub limit: u32,
    /// The offset applied.
    pub offset: u64,
}

/// Counts, durations, tokens and cost over a set of rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Rows.
    pub request_count: u64,
    /// Rows with `status = completed`.
    pub success_count: u64,
    /// Rows in the failed family.
    pub failed_count: u64,
    /// Rows with `status = cancelled`.
    pub cancelled_count: u64,
    /// `success_count` as a percentage of finished rows (completed + failed + cancelled); 0 when
    /// none finished.
    pub success_rate: f64,
    /// Mean `duration_ms` of the rows that have one.
    pub avg_duration_ms: Option<f64>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-write tokens.
    pub cache_creation_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// Exact total cost in nano-USD.
    pub total_cost_nano_usd: i64,
    /// The same in USD.
    pub total_cost_usd: f64,
}

impl Aggregate {
    /// Fills the derived fields (`success_rate`, `total_cost_usd`) after the counts are set.
    pub fn finish(mut self) -> Self {
        let finished = self.success_count + self.failed_count + self.cancelled_count;
        self.success_rate = if finished == 0 {
            0.0
        } else {
            self.success_count as f64 * 100.0 / finished as f64
        };
        self.total_cost_usd = Cost::usd(self.total_cost_nano_usd);
        self
    }

    /// All four token counts added up.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_tokens)
            .saturating_add(self.cache_read_tokens)
    }
}

/// An [`Aggregate`] for one value of a grouping key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    /// The model, endpoint, group or API key name (empty when the rows have none), the UTC day
    /// `YYYY-MM-DD`, or the UTC hour `YYYY-MM-DDTHH:00:00Z`.
    pub key: String,
    /// The numbers.
    pub aggregate: Aggregate,
}

/// Stats over the rows matching a [`StatsQuery`], computed in SQL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Every matching row.
    pub totals: Aggregate,
    /// 95th percentile of `duration_ms` (nearest rank), over the rows that have one.
    pub p95_duration_ms: Option<u64>,
    /// By model, most requests first.
    pub by_model: Vec<Bucket>,
    /// By endpoint, most requests first.
    pub by_endpoint: Vec<Bucket>,
    /// By group, most requests first.
    pub by_group: Vec<Bucket>,
    /// By inbound auth key name (`""` for rows without one), most requests first.
    pub by_api_key: Vec<Bucket>,
    /// By UTC day, oldest first.
    pub by_day: Vec<Bucket>,
    /// By UTC hour, oldest first.
    pub by_hour: Vec<Bucket>,
}

/// Which `usage_summary` rows to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryQuery {
    /// First UTC day included, `YYYY-MM-DD`.
    pub start_date: Option<String>,
    /// Last UTC day included, `YYYY-MM-DD`.
    pub end_date: Option<String>,
    /// Exact model name.
    pub model: Option<String>,
    /// Exact endpoint name.
    pub endpoint: Option<String>,
    /// Exact group name (`""` for rows without a group).
    pub group: Option<String>,
}

/// One `usage_summary` row: the final requests of one UTC day, model, endpoint and group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryRow {
    /// UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Model (`unknown` when the rows had none).
    pub model_name: String,
    /// Endpoint (`unknown` when the rows had none).
    pub endpoint_name: String,
    /// Group (`""` when the rows had none).
    pub group_name: String,
    /// Final requests.
    pub request_count: i64,
    /// Completed ones.
    pub success_count: i64,
    /// Failed-family ones.
    pub error_count: i64,
    /// Input tokens.
    pub total_input_tokens: i64,
    /// Output tokens.
    pub total_output_tokens: i64,
    /// Cache-write tokens.
    pub total_cache_creation_tokens: i64,
    /// Cache-read tokens.
    pub total_cache_read_tokens: i64,
    /// Exact cost in nano-USD.
    pub total_cost_nano_usd: i64,
    /// The same in USD.
    pub total_cost_usd: f64,
    /// Sum of `duration_ms`.
    pub total_duration_ms: i64,
    /// Mean `duration_ms`.
    pub avg_duration_ms: f64,
}

/// Export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON array of row objects.
    Json,
}

impl ExportFormat {
    /// Parses `csv` or `json`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "csv" => Some(ExportFormat::Csv),
            "json" => Some(ExportFormat::Json),
            _ => None,
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
        }
    }

    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
        }
    }
}

/// What `migrate()` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, oldest first.
    pub applied: Vec<u32>,
    /// The database was written by the Go forwarder (tables present, no `schema_migrations`):
    /// version 1 was recorded as already applied.
    pub detected_legacy: bool,
    /// The schema version after the call.
    pub current_version: u32,
}

/// What `cleanup()` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// `request_logs` rows deleted.
    pub requests_deleted: u64,
    /// `usage_summary` rows deleted.
    pub summary_rows_deleted: u64,
}
