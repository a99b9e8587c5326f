//! The [`UsageStore`] trait every database adapter implements.

use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::query::{
    CleanupReport, ExportFormat, ExportQuery, MigrationReport, Page, RequestFilter, RequestQuery,
    Stats, StatsQuery, SummaryQuery, SummaryRow,
};
use crate::record::{RequestRow, StoredRecord};
use crate::StoreError;

/// How the recorder wants one write paced: a hint a store may ignore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePace {
    /// The recorder is caught up (no more than a batch waits): a store that writes on a thread of
    /// its own may let that thread give its core to request serving between statements.
    ///
    /// Why: with two cores, a proxy's answer that became ready while the writer held a core
    /// waited for the writer's time slice; at concurrency 1 that was most of the added p99
    /// latency with usage recording on (issue 19).
    GiveWay,
    /// More than a batch waits, the journal is being replayed, or someone waits for the write
    /// (flush, shutdown): write without pausing. Writes that always gave way let the recorder
    /// fall behind on saturated cores.
    CatchUp,
}

/// A batch of rows shared between the recorder, which keeps it until it is written (for a
/// retry), and the store ([`UsageStore::write_shared`]). A `Vec` behind the `Arc` rather than
/// an `Arc<[StoredRecord]>`: the recorder collects each batch into a vector, and making a slice
/// `Arc` of it would copy every row again (about 600 instructions per row, issue 19).
pub type SharedBatch = Arc<Vec<StoredRecord>>;

/// A usage database. Implementations must be safe to share between tasks; no method blocks the
/// async runtime (blocking drivers run on their own threads).
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// A short name for logs (`sqlite`, `mysql`).
    fn backend(&self) -> &'static str;

    /// Applies the embedded migrations not yet applied; detects a database written by the Go
    /// forwarder and only adds what it lacks. Idempotent, safe to call from several processes.
    async fn migrate(&self) -> Result<MigrationReport, StoreError>;

    /// The migration versions [`UsageStore::migrate`] would apply, found without changing the
    /// database (a Go-written database lists every version). Readers that must not migrate
    /// (`cc-forwarder export`) refuse when it is not empty. The default, for stores without
    /// versioned migrations (test doubles), reports nothing pending.
    async fn pending_migrations(&self) -> Result<Vec<u32>, StoreError> {
        Ok(Vec::new())
    }

    /// Writes a batch in one transaction: upsert by `request_id` (a later snapshot overwrites the
    /// earlier fields, `start_time` stays the first one written, a final row is never overwritten
    /// by a non-final snapshot) and keeps `usage_summary` current for final rows. On error nothing
    /// of the batch is written.
    async fn write_batch(&self, batch: &[StoredRecord]) -> Result<(), StoreError>;

    /// [`UsageStore::write_batch`] of a batch the caller shares (the recorder keeps it until it
    /// is written, for a retry), paced as `pace` asks: a store that writes on a thread of its own
    /// takes the batch there without copying it. The default writes `&batch` and ignores `pace`.
    async fn write_shared(&self, batch: SharedBatch, pace: WritePace) -> Result<(), StoreError> {
        let _ = pace;
        self.write_batch(&batch).await
    }

    /// One page of rows, newest first, and the number of rows matching the same filter.
    async fn list_requests(&self, query: &RequestQuery) -> Result<Page<RequestRow>, StoreError>;

    /// One row by request id.
    async fn get_request(&self, request_id: &str) -> Result<Option<RequestRow>, StoreError>;

    /// Up to `limit` rows matching `filter` with `id > after_id`, in id order (keyset paging
    /// for exports).
    async fn scan_requests(
        &self,
        filter: &RequestFilter,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError>;

    /// Totals, success rate, average and p95 duration, tokens and cost, overall and by model,
    /// endpoint, group, UTC day and UTC hour, computed in SQL.
    async fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError>;

    /// `usage_summary` rows, by date then model, endpoint and group.
    async fn summary(&self, query: &SummaryQuery) -> Result<Vec<SummaryRow>, StoreError>;

    /// Streams every row matching `query` into `sink` (no row cap); returns the row count.
    async fn export(
        &self,
        query: &ExportQuery,
        format: ExportFormat,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, StoreError> {
        crate::export::export_into(self, query, format, sink).await
    }

    /// Retention: deletes rows that started before `older_than` and summary rows of days before
    /// its UTC date.
    async fn cleanup(&self, older_than: SystemTime) -> Result<CleanupReport, StoreError>;

    /// Whether the database answers (reads and writes).
    async fn health(&self) -> Result<(), StoreError>;
}
