//! The recorder's journal: an append-only file of priced final outcomes the database could not
//! take yet (the in-memory backlog was full, or the shutdown flush ran out of time).
//!
//! Format: one JSON object per line (JSON Lines), each a whole [`StoredRecord`] with the cost it
//! was priced at when it became final, so a journal replayed after a price change keeps the old
//! prices. A line is written with a single `write` and the file is synced after every append.
//! A crash can leave a torn last line: reading skips any line that does not parse (counted and
//! logged), never the rest of the file, and opening a journal whose last line is torn ends that
//! line first, so the next append starts on a line of its own.
//!
//! Ownership: the recorder's writer task owns the [`Journal`]; nothing else reads or writes the
//! file while the recorder runs. Records are removed only by [`Journal::clear`], which the writer
//! calls after every record in the file was committed to the database; a crash in between
//! replays them again, which the stores' upsert by `request_id` makes harmless (a final row
//! replaced by the same final row counts once in `usage_summary`).
//!
//! It knows nothing of the database: it stores and returns [`StoredRecord`]s.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_types::Usage;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

use crate::pricing::Cost;
use crate::record::{StoredRecord, UsageRecord};

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("usage journal {path}: cannot {action}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What was being done (`open`, `append to`, `read`, `clear`).
        action: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// An append-only file of priced outcomes; see the module docs.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Records in the file not yet replayed (torn lines excluded).
    records: u64,
    /// Size of the file.
    bytes: u64,
    /// Set after a failed append: the file may end inside a line.
    needs_newline: bool,
}

/// Records read from the journal, and where the next read starts.
#[derive(Debug, Default)]
pub struct JournalBatch {
    /// The records, in file order.
    pub records: Vec<StoredRecord>,
    /// Offset after the last line read.
    pub next_offset: u64,
    /// Lines that did not parse and were skipped.
    pub skipped: u64,
}

impl Journal {
    /// Opens the journal at `path`; a file left by an earlier run keeps its records, which are
    /// counted here. Nothing is created until the first append (then the folder too).
    pub async fn open(path: impl Into<PathBuf>) -> Result<Journal, JournalError> {
        let path = path.into();
        let io = |action| {
            let path = path.clone();
            move |source| JournalError::Io {
                path,
                action,
                source,
            }
        };
        let mut journal = Journal {
            path: path.clone(),
            records: 0,
            bytes: 0,
            needs_newline: false,
        };
        match tokio::fs::metadata(&path).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(journal),
            Err(error) => return Err(io("open")(error)),
        }
        // Count what an earlier run left, reading in bounded batches.
        let mut offset = 0;
        loop {
            let batch = journal.read_from(offset, 1000).await?;
            if batch.next_offset == offset {
                break;
            }
            journal.records += batch.records.len() as u64;
            offset = batch.next_offset;
        }
        journal.bytes = offset;
        journal.needs_newline = !ends_with_newline(&path).await.map_err(io("read"))?;
        if journal.records > 0 {
            tracing::warn!(
                journal = %path.display(),
                records = journal.records,
                "usage journal left by an earlier run: writing it to the database first"
            );
        }
        Ok(journal)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records waiting in the file.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends `records` (one line each) and syncs the file.
    pub async fn append(&mut self, records: &[StoredRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = Vec::with_capacity(records.len() * 512);
        if self.needs_newline {
            text.push(b'\n');
        }
        for stored in records {
            // Serialising plain strings and numbers cannot fail; a failure would skip one line.
            if let Ok(line) = serde_json::to_vec(&JournalLine::from(stored)) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
        }
        let result = async {
            if let Some(folder) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(folder).await?;
            }
            let mut options = tokio::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            options.mode(0o600);
            let mut file = options.open(&self.path).await?;
            file.write_all(&text).await?;
            file.sync_data().await
        }
        .await;
        match result {
            Ok(()) => {
                self.needs_newline = false;
                self.records += records.len() as u64;
                self.bytes += text.len() as u64;
                Ok(())
            }
            Err(source) => {
                self.needs_newline = true;
                Err(JournalError::Io {
                    path: self.path.clone(),
                    action: "append to",
                    source,
                })
            }
        }
    }

    /// Reads up to `limit` records from `offset` (a line start). A line that does not parse (a
    /// torn last line after a crash) is skipped, counted and logged; the lines after it are read.
    pub async fn read_from(&self, offset: u64, limit: usize) -> Result<JournalBatch, JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            action: "read",
            source,
        };
        let mut batch = JournalBatch {
            records: Vec::new(),
            next_offset: offset,
            skipped: 0,
        };
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(batch),
            Err(error) => return Err(io(error)),
        };
        file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        while batch.records.len() < limit {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).await.map_err(io)?;
            if read == 0 {
                break;
            }
            batch.next_offset += read as u64;
            match serde_json::from_slice::<JournalLine>(&line) {
                Ok(parsed) => batch.records.push(parsed.into_stored()),
                Err(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if !text.trim().is_empty() {
                        batch.skipped += 1;
                        tracing::warn!(
                            journal = %self.path.display(),
                            offset = batch.next_offset - read as u64,
                            bytes = read,
                            "skipping a torn or unreadable usage journal line"
                        );
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Notes that `count` records of the file were committed to the database.
    pub fn committed(&mut self, count: usize) {
        self.records = self.records.saturating_sub(count as u64);
    }

    /// Empties the file: every record in it was committed.
    pub async fn clear(&mut self) -> Result<(), JournalError> {
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Io {
                    path: self.path.clone(),
                    action: "clear",
                    source,
                })
            }
        }
        self.records = 0;
        self.bytes = 0;
        self.needs_newline = false;
        Ok(())
    }
}

async fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    let mut file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    if length == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(length - 1)).await?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last).await?;
    Ok(last[0] == b'\n')
}

/// One journal line: the record's every field and its cost. Times are Unix nanoseconds.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    request_id: String,
    client_ip: Option<String>,
    user_agent: Option<String>,
    method: String,
    path: String,
    start_time_ns: u64,
    end_time_ns: Option<u64>,
    duration_ms: Option<u64>,
    endpoint_name: Option<String>,
    group_name: Option<String>,
    model_name: Option<String>,
    is_streaming: bool,
    status: String,
    http_status_code: Option<u16>,
    retry_count: u32,
    failure_reason: Option<String>,
    last_failure_reason: Option<String>,
    cancel_reason: Option<String>,
    usage: Usage,
    time_to_first_byte_ms: Option<u64>,
    attempts_json: Option<String>,
    model_mismatch: bool,
    partial: bool,
    instance_id: Option<String>,
    api_key_name: Option<String>,
    /// Absent from lines written before the column existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requested_model: Option<String>,
    is_final: bool,
    cost: JournalCost,
}

#[derive(Serialize, Deserialize)]
struct JournalCost {
    input: i64,
    output: i64,
    cache_creation: i64,
    cache_read: i64,
    total: i64,
}

fn to_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl From<&StoredRecord> for JournalLine {
    fn from(stored: &StoredRecord) -> Self {
        let record = stored.record();
        let cost = stored.cost();
        JournalLine {
            request_id: record.request_id.clone(),
            client_ip: record.client_ip.clone(),
            user_agent: record.user_agent.clone(),
            method: record.method.clone(),
            path: record.path.clone(),
            start_time_ns: to_ns(record.start_time),
            end_time_ns: record.end_time.map(to_ns),
            duration_ms: record.duration_ms,
            endpoint_name: record.endpoint_name.clone(),
            group_name: record.group_name.clone(),
            model_name: record.model_name.clone(),
            is_streaming: record.is_streaming,
            status: record.status.clone(),
            http_status_code: record.http_status_code,
            retry_count: record.retry_count,
            failure_reason: record.failure_reason.clone(),
            last_failure_reason: record.last_failure_reason.clone(),
            cancel_reason: record.cancel_reason.clone(),
            usage: record.usage.clone(),
            time_to_first_byte_ms: record.time_to_first_byte_ms,
            attempts_json: record.attempts_json.clone(),
            model_mismatch: record.model_mismatch,
            partial: record.partial,
            instance_id: record.instance_id.clone(),
            api_key_name: record.api_key_name.clone(),
            requested_model: record.requested_model.clone(),
            is_final: record.is_final,
            cost: JournalCost {
                input: cost.input,
                output: cost.output,
                cache_creation: cost.cache_creation,
                cache_read: cost.cache_read,
                total: cost.total,
            },
        }
    }
}

impl JournalLine {
    fn into_stored(self) -> StoredRecord {
        let record = UsageRecord {
            request_id: self.request_id,
            client_ip: self.client_ip,
            user_agent: self.user_agent,
            method: self.method,
            path: self.path,
            start_time: from_ns(self.start_time_ns),
            end_time: self.end_time_ns.map(from_ns),
            duration_ms: self.duration_ms,
            endpoint_name: self.endpoint_name,
            group_name: self.group_name,
            model_name: self.model_name,
            is_streaming: self.is_streaming,
            status: self.status,
            http_status_code: self.http_status_code,
            retry_count: self.retry_count,
            failure_reason: self.failure_reason,
            last_failure_reason: self.last_failure_reason,
            cancel_reason: self.cancel_reason,
            usage: self.usage,
            time_to_first_byte_ms: self.time_to_first_byte_ms,
            attempts_json: self.attempts_json,
            model_mismatch: self.model_mismatch,
            partial: self.partial,
            instance_id: self.instance_id,
            api_key_name: self.api_key_name,
            requested_model: self.requested_model,
            is_final: self.is_final,
        };
        // The cost as written: components as stored, the total as stored (not re-added).
        let cost = Cost {
            input: self.cost.input,
            output: self.cost.output,
            cache_creation: self.cost.cache_creation,
            cache_read: self.cost.cache_read,
            total: self.cost.total,
        };
        StoredRecord::with_cost(record, cost)
    }
}

#[cfg(test)]
mod tests;
