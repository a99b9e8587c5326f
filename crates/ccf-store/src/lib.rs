//! Usage storage for cc-forwarder, without SQL.
//!
//! This crate owns what a usage row is ([`UsageRecord`], made from a request's lifecycle record
//! by [`UsageRecord::from_request`]), how it is priced ([`Pricing`], exact integer nano-USD
//! [`Cost`]s), the [`UsageStore`] trait every database adapter implements, the query and answer
//! types (listing, stats, summary, export) and the [`Recorder`], the tokio task that batches
//! snapshots into a store without ever blocking the request path, bounded in memory by its
//! [`journal`] (an append-only file of outcomes the database could not take yet). It knows nothing of SQL or of
//! any driver: `ccf-store-sqlite` and `ccf-store-mysql` implement the trait, [`plan_batch`]
//! holds the write rules they share and [`columns`] the `request_logs` column names with the
//! mapping of rows to and from them. With the `contract-tests` feature, [`contract`] is the
//! test suite every adapter runs.
//!
//! Main types: [`UsageRecord`], [`StoredRecord`], [`RequestRow`], [`UsageStore`], [`Pricing`],
//! [`Recorder`]/[`RecorderHandle`], [`StoreError`], [`LegacyZone`], [`DayZone`], and [`SharedState`] (settings
//! shared by several instances on one database).

pub mod columns;
mod error;
pub mod export;
pub mod journal;
mod lifecycle;
mod plan;
mod pricing;
mod query;
mod record;
mod recorder;
mod retention;
mod shared;
pub mod stats;
mod store;
pub mod time;

#[cfg(feature = "contract-tests")]
pub mod contract;

pub use error::{BoxError, StoreError};
pub use export::{ExportCursor, ExportEncoder, CSV_HEADER};
pub use journal::{Journal, JournalError};
pub use plan::{
    plan_batch, summarise, BatchPlan, ContributionParts, ExistingRow, KeySummaryKey,
    SummaryContribution, SummaryDelta, SummaryKey, SummaryTables, UNKNOWN,
};
pub use pricing::{
    context_input_tokens, Cost, LongContextPrice, Price, Pricing, Rates, NANO_PER_USD,
};
pub use query::{
    Aggregate, Bucket, CleanupReport, ExportFormat, ExportQuery, MigrationReport, Page,
    RequestFilter, RequestQuery, Stats, StatsQuery, SummaryQuery, SummaryRow, MAX_PAGE_SIZE,
};
pub use record::{final_cost, status, RequestRow, StoredRecord, UsageRecord};
pub use recorder::{
    BacklogSettings, DeferredRecord, Recorder, RecorderError, RecorderHandle, RecorderSettings,
    ShutdownReport, CATCH_UP_BATCHES, JOURNAL_GRACE,
};
pub use retention::{Retention, RetentionHandle};
pub use shared::{ApplyOutcome, SharedChange, SharedSetting, SharedState};
pub use store::{SharedBatch, UsageStore, WritePace};
pub use time::{DayZone, LegacyZone};

// Re-exported so adapters and callers name the same `async_trait`.
pub use async_trait::async_trait;
