//! Streamed CSV and JSON export: rows are read in id order, a chunk at a time, and encoded as
//! they come, so an export has no row cap and holds at most one chunk in memory.

use std::io::Write;
use std::sync::Arc;

use crate::pricing::Cost;
use crate::query::{ExportFormat, ExportQuery};
use crate::record::RequestRow;
use crate::time::format_timestamp;
use crate::{StoreError, UsageStore};

/// Rows read per chunk.
pub const EXPORT_CHUNK_ROWS: u32 = 1000;

/// CSV header: the Go forwarder's columns in its order, then the columns this port added.
pub const CSV_HEADER: [&str; 39] = [
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
    "status",
    "http_status_code",
    "retry_count",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "cache_creation_cost_usd",
    "cache_read_cost_usd",
    "total_cost_usd",
    "created_at",
    "updated_at",
    "is_streaming",
    "failure_reason",
    "last_failure_reason",
    "cancel_reason",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "time_to_first_byte_ms",
    "model_mismatch",
    "partial",
    "instance_id",
    "is_final",
    "total_cost_nano_usd",
    "api_key_name",
    "requested_model",
];

/// Encodes rows as CSV (RFC 4180 quoting by the `csv` crate) or as one JSON array.
#[derive(Debug)]
pub struct ExportEncoder {
    format: ExportFormat,
    rows_written: u64,
}

impl ExportEncoder {
    /// An encoder for `format`.
    pub fn new(format: ExportFormat) -> Self {
        Self {
            format,
            rows_written: 0,
        }
    }

    /// Rows encoded so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// The bytes before the first row: the CSV header or `[`.
    pub fn begin(&self) -> Result<Vec<u8>, StoreError> {
        match self.format {
            ExportFormat::Csv => {
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(CSV_HEADER).map_err(csv_error)?;
                writer
                    .into_inner()
                    .map_err(|e| StoreError::Sink(e.into_error()))
            }
            ExportFormat::Json => Ok(b"[".to_vec()),
        }
    }

    /// The bytes of `rows`.
    pub fn rows(&mut self, rows: &[RequestRow]) -> Result<Vec<u8>, StoreError> {
        match self.format {
            ExportFormat::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new());
                for row in rows {
                    writer.write_record(csv_fields(row)).map_err(csv_error)?;
                    self.rows_written += 1;
                }
                writer
                    .into_inner()
                    .map_err(|e| StoreError::Sink(e.into_error()))
            }
            ExportFormat::Json => {
                let mut out = Vec::new();
                for row in rows {
                    if self.rows_written > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, row)
                        .map_err(|e| StoreError::Sink(std::io::Error::other(e)))?;
                    self.rows_written += 1;
                }
                Ok(out)
            }
        }
    }

    /// The bytes after the last row.
    pub fn finish(&self) -> Vec<u8> {
        match self.format {
            ExportFormat::Csv => Vec::new(),
            ExportFormat::Json => b"]\n".to_vec(),
        }
    }
}

fn csv_error(error: csv::Error) -> StoreError {
    StoreError::Sink(std::io::Error::other(error))
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn usd(nano: i64) -> String {
    format!("{:.6}", Cost::usd(nano))
}

fn csv_fields(row: &RequestRow) -> Vec<String> {
    let record = &row.record;
    vec![
        record.request_id.clone(),
        opt(record.client_ip.as_deref()),
        opt(record.user_agent.as_deref()),
        record.method.clone(),
        record.path.clone(),
        format_timestamp(record.start_time),
        opt(record.end_time.map(format_timestamp)),
        opt(record.duration_ms),
        opt(record.endpoint_name.as_deref()),
        opt(record.group_name.as_deref()),
        opt(record.model_name.as_deref()),
        record.status.clone(),
        opt(record.http_status_code),
        record.retry_count.to_string(),
        record.usage.input_tokens.to_string(),
        record.usage.output_tokens.to_string(),
        record.usage.cache_creation_input_tokens.to_string(),
        record.usage.cache_read_input_tokens.to_string(),
        usd(row.cost.input),
        usd(row.cost.output),
        usd(row.cost.cache_creation),
        usd(row.cost.cache_read),
        usd(row.cost.total),
        opt(row.created_at.map(format_timestamp)),
        opt(row.updated_at.map(format_timestamp)),
        record.is_streaming.to_string(),
        opt(record.failure_reason.as_deref()),
        opt(record.last_failure_reason.as_deref()),
        opt(record.cancel_reason.as_deref()),
        record.usage.cache_creation_5m_input_tokens.to_string(),
        record.usage.cache_creation_1h_input_tokens.to_string(),
        opt(record.time_to_first_byte_ms),
        record.model_mismatch.to_string(),
        record.partial.to_string(),
        opt(record.instance_id.as_deref()),
        record.is_final.to_string(),
        row.cost.total.to_string(),
        opt(record.api_key_name.as_deref()),
        opt(record.requested_model.as_deref()),
    ]
}

/// A pull-based export: each [`ExportCursor::next_chunk`] reads the next rows from the store
/// and returns their encoded bytes, for streaming into an HTTP body.
pub struct ExportCursor {
    store: Arc<dyn UsageStore>,
    query: ExportQuery,
    encoder: ExportEncoder,
    after_id: i64,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Begin,
    Rows,
    Done,
}

impl ExportCursor {
    /// An export of the rows matching `query`, in id (insertion) order.
    pub fn new(store: Arc<dyn UsageStore>, query: ExportQuery, format: ExportFormat) -> Self {
        Self {
            store,
            query,
            encoder: ExportEncoder::new(format),
            after_id: 0,
            stage: Stage::Begin,
        }
    }

    /// The next bytes, or `None` when the export is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.stage {
            Stage::Begin => {
                self.stage = Stage::Rows;
                self.encoder.begin().map(Some)
            }
            Stage::Rows => {
                let rows = self
                    .store
                    .scan_requests(&self.query, self.after_id, EXPORT_CHUNK_ROWS)
                    .await?;
                match rows.last() {
                    Some(last) => {
                        self.after_id = last.id;
                        self.encoder.rows(&rows).map(Some)
                    }
                    None => {
                        self.stage = Stage::Done;
                        Ok(Some(self.encoder.finish()))
                    }
                }
            }
            Stage::Done => Ok(None),
        }
    }

    /// Rows encoded so far.
    pub fn rows_written(&self) -> u64 {
        self.encoder.rows_written()
    }
}

/// Writes a whole export into `sink`; returns the number of rows. Used by the default
/// [`UsageStore::export`].
pub async fn export_into<S: UsageStore + ?Sized>(
    store: &S,
    query: &ExportQuery,
    format: ExportFormat,
    sink: &mut (dyn Write + Send),
) -> Result<u64, StoreError> {
    let mut encoder = ExportEncoder::new(format);
    sink.write_all(&encoder.begin()?)
        .map_err(StoreError::Sink)?;
    let mut after_id = 0;
    loop {
        let rows = store
            .scan_requests(query, after_id, EXPORT_CHUNK_ROWS)
            .await?;
        let Some(last) = rows.last() else { break };
        after_id = last.id;
        sink.write_all(&encoder.rows(&rows)?)
            .map_err(StoreError::Sink)?;
    }
    sink.write_all(&encoder.finish())
        .map_err(StoreError::Sink)?;
    sink.flush().map_err(StoreError::Sink)?;
    Ok(encoder.rows_written())
}
