//! The recorder: a tokio task that owns the not-yet-written snapshots and writes them in batches.
//!
//! Ownership and cancellation: [`Recorder::spawn`] (or [`Recorder::spawn_with_journal`]) starts
//! one task that owns the writing and the journal; every [`RecorderHandle`] clone shares the
//! pending map with it. The task ends on [`RecorderHandle::shutdown`] (after writing
//! everything), on [`RecorderHandle::shutdown_within`] (after writing what it can before the
//! deadline and journaling the rest) or when every handle is dropped (it then also writes
//! everything it holds before ending).
//!
//! Guarantees:
//! - [`RecorderHandle::record`] never blocks on the database or the disk and never fails: it
//!   replaces the pending snapshot of the same request id (intermediate updates coalesce);
//! - [`RecorderHandle::record_deferred`] does the same with a snapshot whose row is built only if
//!   it is written, by the writer task: the request path pays one small allocation per change
//!   instead of a row's worth of strings;
//! - an outcome is priced exactly once, when its final snapshot is handed over, with the prices
//!   in force then ([`RecorderHandle::set_pricing`] changes only later outcomes); the call returns
//!   that cost, so the caller's cost metric counts the number the row stores, and the cost stays
//!   with the record through the backlog and the journal;
//! - a final snapshot is written once [`gather_limit`] finals wait (ten batches, at most half
//!   the memory bound) or at the next tick; a non-final (live) one only once
//!   it has waited through one tick of `flush_interval` (or on [`RecorderHandle::flush`] and at
//!   shutdown), so a request that ends within about one interval costs one row write, not two,
//!   and a long one still shows up live within two intervals;
//! - a final snapshot is never replaced by a non-final one and never dropped because the database
//!   is unavailable: the batch is kept and retried with exponential backoff, loudly logged, and the
//!   backlog is visible through [`RecorderHandle::backlog`] and [`RecorderHandle::last_error`];
//! - with a journal ([`Recorder::spawn_with_journal`]) memory is bounded: at most
//!   [`BacklogSettings::max_records`] snapshots wait in memory (plus the batch being written, up
//!   to [`CATCH_UP_BATCHES`] batches, and what arrives before the writer next looks, which it
//!   does while it waits for the database).
//!   Past the bound a new live snapshot is not kept (its final one supersedes it) and final
//!   outcomes, oldest first, move to the append-only journal file with their cost. The journal
//!   is written to the database before the in-memory backlog on every drain (a journal left by
//!   an earlier run first, at start) and emptied only after all its records are committed;
//!   [`RecorderHandle::journal_records`] and [`RecorderHandle::journal_bytes`] show its size.
//!   Without a journal nothing final is ever dropped and memory grows with the outage;
//! - [`RecorderHandle::shutdown_within`] writes for a bounded time; what the database did not
//!   take by then goes to the journal, with a log line naming the count and the file, and is
//!   written at the next start;
//! - only a record that the database rejects as invalid `max_retry` times (a non-retryable
//!   [`StoreError`]) is dropped, alone, with an error log; [`RecorderHandle::dropped`] counts them.
//!   A rejected batch is split at once and a rejected record retried without waiting: invalid data
//!   fails the same way every time, so only unavailable, locked or read-only databases are waited
//!   for, and a bad row costs the writer the split and its own attempts, never a backoff.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ccf_config::UsageTrackingConfig;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::journal::{Journal, JournalError};
use crate::pricing::{Cost, Pricing};
use crate::record::{final_cost, StoredRecord, UsageRecord};
use crate::{SharedBatch, StoreError, UsageStore, WritePace};

/// How long past a [`RecorderHandle::shutdown_within`] deadline the handle waits for the writer
/// to put what is left in the journal before it stops the task (a stalled disk).
pub const JOURNAL_GRACE: Duration = Duration::from_secs(5);

/// How many batches' worth of records one write takes at most while the database is behind.
pub const CATCH_UP_BATCHES: usize = 10;

/// Most records one write takes when `finals` final snapshots wait: `batch_size`, or up to
/// [`CATCH_UP_BATCHES`] times as many while more than a batch waits (the database is behind;
/// the journal's records are written in writes of that size too).
///
/// A deviation from the Go recorder, which wrote `batch_size` records per transaction whatever
/// waited: every commit writes again the pages it touched (the table's last pages, each index's
/// and the summaries'), so one commit of 1,000 rows costs much less than ten of 100. Writing 100
/// at a time, the SQLite recorder fell behind at about 15,000 requests/s on two cores, spilled
/// to the journal past `buffer_size`, and the journal's own cost (a JSON line per record, an
/// `fsync` per spill, every line read back and parsed before it is written) made it fall
/// further behind (issue 19).
fn write_limit(finals: usize, batch_size: usize) -> usize {
    finals.clamp(batch_size, catch_up_limit(batch_size))
}

/// Most records one write takes while the database is behind (and for the journal's replay,
/// which always is).
fn catch_up_limit(batch_size: usize) -> usize {
    batch_size.saturating_mul(CATCH_UP_BATCHES)
}

/// Final snapshots let gather before they are written without waiting for the tick: ten
/// batches' worth ([`catch_up_limit`]), at most half of `max_records` (past which finals move to
/// the journal), never fewer than a batch. A record still waits at most one `flush_interval`:
/// the tick writes whatever waits.
///
/// A deviation from the Go recorder, which flushed as soon as `batch_size` events waited. Every
/// commit writes again a fixed set of pages whatever its size: the table's and each index's
/// last page, the summary tables' rows, the database header. In SQLite that was about 29 of the
/// 41 pages a 100-row commit wrote to the WAL (issue 19, part 9). Writing each batch as soon as
/// it was full cost the SQLite writer thread 11.6-11.8 µs per row at concurrency 1 (about 5,000
/// requests/s) against 6.2-6.5 µs gathering, and its five times more frequent commits ran on
/// the cores the requests needed: p99 latency 373-439 µs against 305-320 µs (usage off: about
/// 290). At concurrency 64: 8.3-8.7 against 7.1-7.7 µs per row.
fn gather_limit(batch_size: usize, max_records: usize) -> usize {
    catch_up_limit(batch_size)
        .min(max_records / 2)
        .max(batch_size)
}

/// Rows a caught-up drain builds between offering its core ([`WritePace::GiveWay`]).
const ROWS_BETWEEN_YIELDS: usize = 16;

/// How a drain's write is paced: it gives way only while the recorder is caught up (no more than
/// a batch of finals waits, so in practice at a tick: finals written once gathered are more)
/// and nobody waits for it (a tick or gathered finals, not a flush or a shutdown).
///
/// Gathered finals go without pausing: pausing, a write of the 500 gathered by default at
/// concurrency 64 gave its core away a few hundred times, the finals arriving meanwhile went
/// past `buffer_size` and thousands a second moved to the journal (issue 19, part 9).
fn drain_pace(mode: Drain, finals: usize, batch_size: usize) -> WritePace {
    match mode {
        Drain::Gathered | Drain::Tick if finals <= batch_size => WritePace::GiveWay,
        _ => WritePace::CatchUp,
    }
}

/// How the recorder batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderSettings {
    /// Records per write (at least 1); up to [`CATCH_UP_BATCHES`] times as many while more
    /// wait. Final snapshots are written once ten batches' worth (at most half the memory
    /// bound) gathered ([`gather_limit`]) or at the tick.
    pub batch_size: usize,
    /// Longest time a record waits before it is written.
    pub flush_interval: Duration,
    /// Attempts at a single record the database rejects as invalid before it is dropped (made
    /// back to back, without backoff); a rejected batch of several is split at the first
    /// rejection. Retryable errors are retried for ever, with backoff.
    pub max_retry: u32,
    /// First wait after a failed write.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            flush_interval: Duration::from_secs(1),
            max_retry: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RecorderSettings {
    /// `batch_size`, `flush_interval` and `max_retry` from `usage_tracking`.
    pub fn from_config(config: &UsageTrackingConfig) -> Self {
        Self {
            batch_size: usize::try_from(config.batch_size.max(1)).unwrap_or(100),
            flush_interval: config.flush_interval.get().max(Duration::from_millis(1)),
            max_retry: config.max_retry.max(1),
            ..Self::default()
        }
    }
}

/// The bound on the in-memory backlog and the journal that takes what does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogSettings {
    /// Most snapshots kept in memory (`usage_tracking.buffer_size`, at least 1).
    pub max_records: usize,
    /// The journal file (see [`crate::journal`]).
    pub journal: PathBuf,
}

impl BacklogSettings {
    /// `buffer_size` and the journal path from `usage_tracking`.
    pub fn from_config(config: &UsageTrackingConfig) -> Self {
        Self {
            max_records: usize::try_from(config.buffer_size.max(1)).unwrap_or(1000),
            journal: config.journal_path(),
        }
    }
}

/// The latest write failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderError {
    /// The error with its causes.
    pub message: String,
    /// Whether the recorder is retrying (the database was unavailable, locked or read-only).
    pub retryable: bool,
    /// When it happened.
    pub at: SystemTime,
    /// Failed attempts in a row.
    pub consecutive_failures: u64,
}

/// What a bounded shutdown ([`RecorderHandle::shutdown_within`]) could not write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records put in the journal, written at the next start.
    pub journaled: usize,
    /// Records lost: no journal was configured, or it could not be written.
    pub lost: usize,
    /// The journal file, when there is one.
    pub journal: Option<PathBuf>,
}

/// A request's state, turned into a [`UsageRecord`] only when the recorder writes it (see
/// [`RecorderHandle::record_deferred`]).
pub trait DeferredRecord: Send + 'static {
    /// Whether it is the request's final state.
    fn is_final(&self) -> bool;
    /// The row to write; `None` when there is nothing to write any more: a live state read
    /// after its request ended, whose final state is handed over on its own.
    fn to_record(&self) -> Option<UsageRecord>;
    /// [`DeferredRecord::to_record`] when the row is written: the state is not read again, so
    /// an implementation can move its texts into the row instead of copying them.
    fn into_record(self: Box<Self>) -> Option<UsageRecord> {
        self.to_record()
    }
    /// The cost of the final state under `pricing` ([`final_cost`] of its model and usage).
    /// Called once, on the request path, when the final state is handed over; the default builds
    /// the row, an implementation can price its own fields without that.
    fn cost(&self, pricing: &Pricing) -> Cost {
        self.to_record().map_or_else(Cost::default, |record| {
            final_cost(pricing, record.model_name.as_deref(), &record.usage)
        })
    }
}

/// What a pending snapshot is made of: a row, or what a row is made from.
enum Body {
    Ready(Box<UsageRecord>),
    Deferred(Box<dyn DeferredRecord>),
}

/// One pending snapshot with the cost it was priced at (zero unless final).
struct Snapshot {
    body: Body,
    cost: Cost,
}

impl Snapshot {
    fn is_final(&self) -> bool {
        match &self.body {
            Body::Ready(record) => record.is_final,
            Body::Deferred(deferred) => deferred.is_final(),
        }
    }

    /// The row to write, if any ([`DeferredRecord::to_record`]).
    fn into_stored(self) -> Option<StoredRecord> {
        let record = match self.body {
            Body::Ready(record) => *record,
            Body::Deferred(deferred) => deferred.into_record()?,
        };
        Some(StoredRecord::with_cost(record, self.cost))
    }
}

/// What identifies a request in the pending map.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A row's `request_id` ([`RecorderHandle::record`]).
    Text(String),
    /// A caller-chosen number ([`RecorderHandle::record_deferred`]).
    Number(u64),
}

/// How the pending map hashes its [`Key`]s: every request looks its key up a few times on the
/// request path (one hand-over per lifecycle change), and SipHash cost about 275 instructions a
/// lookup. The numbers are request ids (counting up per serving thread) and the texts are
/// request ids the forwarder generated, so a seeded multiply-and-fold hash (as foldhash does)
/// is enough: the multiply spreads consecutive numbers over every bucket; the seed is random
/// per map, so no client input can aim at a bucket.
#[derive(Clone)]
struct KeyHashing {
    seed: u64,
}

impl Default for KeyHashing {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64),
        }
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// [`KeyHashing`]'s hasher.
struct KeyHasher {
    state: u64,
}

/// An odd 64-bit constant with well-spread bits (the fractional part of π).
const MULTIPLIER: u64 = 0x243F_6A88_85A3_08D3;

impl KeyHasher {
    /// Mixes one 64-bit word into the state: the high and low halves of a full product, folded.
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(MULTIPLIER);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps `ab` and `ab\0` apart.
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.mix(value as u64);
    }

    fn finish(&self) -> u64 {
        let product = u128::from(self.state) * u128::from(MULTIPLIER.rotate_left(17));
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// Starts recorders.
#[derive(Debug)]
pub struct Recorder;

impl Recorder {
    /// Spawns the writer task on the current tokio runtime, without a journal: the backlog is
    /// unbounded while the database is unavailable, and a bounded shutdown loses what is left.
    pub fn spawn(
        store: Arc<dyn UsageStore>,
        settings: RecorderSettings,
        pricing: Pricing,
    ) -> RecorderHandle {
        Self::start(store, settings, pricing, usize::MAX, None)
    }

    /// Spawns the writer task with the backlog bounded by `backlog` and its journal opened (a
    /// journal left by an earlier run is written to the database before anything else).
    pub async fn spawn_with_journal(
        store: Arc<dyn UsageStore>,
        settings: RecorderSettings,
        pricing: Pricing,
        backlog: BacklogSettings,
    ) -> Result<RecorderHandle, JournalError> {
        let journal = Journal::open(backlog.journal).await?;
        Ok(Self::start(
            store,
            settings,
            pricing,
            backlog.max_records.max(1),
            Some(journal),
        ))
    }

    fn start(
        store: Arc<dyn UsageStore>,
        settings: RecorderSettings,
        pricing: Pricing,
        max_records: usize,
        journal: Option<Journal>,
    ) -> RecorderHandle {
        let (deadline, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            overflow: Notify::new(),
            writing: AtomicUsize::new(0),
            spilling: AtomicUsize::new(0),
            batch_size: settings.batch_size.max(1),
            gather: gather_limit(settings.batch_size.max(1), max_records),
            max_records,
            last_error: Mutex::new(None),
            pricing: RwLock::new(Arc::new(pricing)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            live_not_kept: AtomicU64::new(0),
            journal_path: journal.as_ref().map(|journal| journal.path().to_path_buf()),
            journal_records: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            deadline,
            shutdown_report: Mutex::new(None),
        });
        if let Some(journal) = &journal {
            shared.publish_journal(journal);
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            settings,
            shared: shared.clone(),
            journal: tokio::sync::Mutex::new(journal),
        };
        let task = tokio::spawn(writer.run(receiver));
        RecorderHandle {
            shared,
            commands,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }
}

/// The request path's side of the recorder. Cheap to clone.
#[derive(Clone)]
pub struct RecorderHandle {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for RecorderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderHandle")
            .field("backlog", &self.backlog())
            .field("written", &self.written())
            .field("journal_records", &self.journal_records())
            .finish()
    }
}

enum Command {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

impl RecorderHandle {
    /// Hands over a snapshot. Never blocks on the database, never fails: it replaces the pending
    /// snapshot of the same request (unless that one is final and this one is not). A final
    /// snapshot is priced now; its cost is returned (`None` for a live one).
    pub fn record(&self, record: UsageRecord) -> Option<Cost> {
        let is_final = record.is_final;
        let cost = if is_final {
            final_cost(
                &self.shared.current_pricing(),
                record.model_name.as_deref(),
                &record.usage,
            )
        } else {
            Cost::default()
        };
        self.insert(
            Key::Text(record.request_id.clone()),
            Snapshot {
                body: Body::Ready(Box::new(record)),
                cost,
            },
        );
        is_final.then_some(cost)
    }

    /// Like [`record`](Self::record) for a snapshot whose row is built only if it is written
    /// (by the writer task, off the request path). `request` identifies the request: snapshots
    /// with the same number replace each other. Use one of the two methods per request, not both.
    /// A final snapshot is priced now ([`DeferredRecord::cost`]) and its cost returned: the one
    /// number the row stores and the cost metric counts.
    pub fn record_deferred(&self, request: u64, snapshot: Box<dyn DeferredRecord>) -> Option<Cost> {
        let is_final = snapshot.is_final();
        let cost = if is_final {
            snapshot.cost(&self.shared.current_pricing())
        } else {
            Cost::default()
        };
        self.insert(
            Key::Number(request),
            Snapshot {
                body: Body::Deferred(snapshot),
                cost,
            },
        );
        is_final.then_some(cost)
    }

    fn insert(&self, key: Key, snapshot: Snapshot) {
        let (kept, finals, over) = {
            let mut pending = lock(&self.shared.pending);
            let kept = pending.insert(key, snapshot, self.shared.max_records);
            (
                kept,
                pending.finals,
                pending.by_id.len() > self.shared.max_records,
            )
        };
        if !kept {
            self.shared.live_not_kept.fetch_add(1, Ordering::Relaxed);
        }
        if over {
            self.shared.overflow.notify_one();
        }
        if finals >= self.shared.gather {
            self.shared.wake.notify_one();
        }
    }

    /// Snapshots not yet written, in memory (pending plus the batch being written).
    pub fn backlog(&self) -> usize {
        self.shared.backlog()
    }

    /// Records waiting in the journal file (0 without a journal).
    pub fn journal_records(&self) -> u64 {
        self.shared.journal_records.load(Ordering::Relaxed)
    }

    /// Size of the journal file in bytes (0 without a journal).
    pub fn journal_bytes(&self) -> u64 {
        self.shared.journal_bytes.load(Ordering::Relaxed)
    }

    /// The journal file, when the recorder has one.
    pub fn journal_path(&self) -> Option<&std::path::Path> {
        self.shared.journal_path.as_deref()
    }

    /// Live (non-final) snapshots not kept because the in-memory backlog was full; each is
    /// superseded by its request's final outcome.
    pub fn live_not_kept(&self) -> u64 {
        self.shared.live_not_kept.load(Ordering::Relaxed)
    }

    /// The latest write failure, cleared when a write succeeds again.
    pub fn last_error(&self) -> Option<RecorderError> {
        lock(&self.shared.last_error).clone()
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records dropped because the database rejected them as invalid.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Replaces the prices used for outcomes that become final from now on (configuration
    /// reload); outcomes already handed over keep the cost they were given.
    pub fn set_pricing(&self, pricing: Pricing) {
        let mut current = self
            .shared
            .pricing
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(pricing);
    }

    /// Waits until every snapshot handed over before this call, and the journal, is written
    /// (retrying while the database is unavailable). Returns at once if the recorder has shut
    /// down.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Flush(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Writes everything pending, then stops the writer task. Waits as long as that takes
    /// (use [`RecorderHandle::shutdown_within`] to bound it).
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).is_ok() {
            let _ = done.await;
        }
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Writes everything pending for at most `limit`, then stops the writer task. What the
    /// database has not taken by then (the batch being written included) goes to the journal,
    /// logged as "N usage records journaled at shutdown: <path>", and is written at the next
    /// start; without a journal it is lost and logged as an error. The writer gets
    /// [`JOURNAL_GRACE`] more to write the journal before it is stopped.
    pub async fn shutdown_within(&self, limit: Duration) -> ShutdownReport {
        let deadline = Instant::now() + limit;
        self.shared.deadline.send_replace(Some(deadline));
        let (reply, done) = oneshot::channel();
        let give_up = deadline + JOURNAL_GRACE;
        if self.commands.send(Command::Shutdown(reply)).is_ok() {
            let _ = tokio::time::timeout_at(give_up, done).await;
        }
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout_at(give_up, &mut task).await.is_err() {
                task.abort();
                let left = self.backlog();
                tracing::error!(
                    records = left,
                    "{left} usage records lost at shutdown: the journal could not be written in time"
                );
                let mut report = lock(&self.shared.shutdown_report)
                    .clone()
                    .unwrap_or_default();
                report.lost += left;
                return report;
            }
        }
        let report = lock(&self.shared.shutdown_report).clone();
        report.unwrap_or_else(|| ShutdownReport {
            journal: self.shared.journal_path.clone(),
            ..ShutdownReport::default()
        })
    }

    /// [`RecorderHandle::shutdown_within`] that reports only the records lost (`Err(count)`);
    /// journaled records are not lost.
    pub async fn shutdown_timeout(&self, limit: Duration) -> Result<(), usize> {
        let report = self.shutdown_within(limit).await;
        if report.lost == 0 {
            Ok(())
        } else {
            Err(report.lost)
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    pending: Mutex<Pending>,
    /// [`Shared::gather`] final snapshots are waiting.
    wake: Notify,
    /// The pending map is past `max_records`: the writer moves finals to the journal.
    overflow: Notify,
    writing: AtomicUsize,
    /// Records on their way from memory to the journal (still backlog until they are in it).
    spilling: AtomicUsize,
    batch_size: usize,
    /// Finals written without waiting for the tick once this many wait ([`gather_limit`]).
    gather: usize,
    max_records: usize,
    last_error: Mutex<Option<RecorderError>>,
    pricing: RwLock<Arc<Pricing>>,
    written: AtomicU64,
    dropped: AtomicU64,
    live_not_kept: AtomicU64,
    journal_path: Option<PathBuf>,
    journal_records: AtomicU64,
    journal_bytes: AtomicU64,
    /// Set by a bounded shutdown: the writer stops writing at this instant.
    deadline: watch::Sender<Option<Instant>>,
    shutdown_report: Mutex<Option<ShutdownReport>>,
}

impl Shared {
    fn current_pricing(&self) -> Arc<Pricing> {
        self.pricing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn backlog(&self) -> usize {
        lock(&self.pending).by_id.len()
            + self.writing.load(Ordering::Acquire)
            + self.spilling.load(Ordering::Acquire)
    }

    fn publish_journal(&self, journal: &Journal) {
        self.journal_records
            .store(journal.records(), Ordering::Relaxed);
        self.journal_bytes.store(journal.bytes(), Ordering::Relaxed);
    }
}

/// Snapshots waiting to be written: the latest per request, in order of first arrival.
#[derive(Default)]
struct Pending {
    by_id: HashMap<Key, (u64, Snapshot), KeyHashing>,
    /// The key of every request in `by_id` with its sequence number, in order of first arrival,
    /// and entries marked [`TAKEN`] whose request was taken since. A queue rather than an ordered
    /// map: a new request is a push at the back and a taken one a mark (a `BTreeMap` insert and
    /// removal cost about 450 instructions a request, issue 19). Marked entries leave from the
    /// front, or all at once when they outnumber the others ([`Pending::compact`]): one left
    /// behind an older request still pending (a live one waiting for the next tick) would
    /// otherwise pile up for as long as that request stays.
    order: VecDeque<(u64, Key)>,
    /// Entries of `order` marked [`TAKEN`].
    taken_in_order: usize,
    next_seq: u64,
    /// How many of `by_id` are final.
    finals: usize,
    /// Non-final snapshots that arrived before this sequence number have waited through a tick.
    settled_before: u64,
}

/// The sequence number of an [`Pending::order`] entry whose request was taken.
const TAKEN: u64 = u64::MAX;

impl Pending {
    /// Keeps `snapshot` as its request's latest; returns false for a live snapshot of a new
    /// request that was not kept because `max_records` are pending already.
    fn insert(&mut self, key: Key, snapshot: Snapshot, max_records: usize) -> bool {
        let is_final = snapshot.is_final();
        if let Some((_, existing)) = self.by_id.get_mut(&key) {
            let was_final = existing.is_final();
            if !was_final || is_final {
                *existing = snapshot;
                if is_final && !was_final {
                    self.finals += 1;
                }
            }
            return true;
        }
        if !is_final && self.by_id.len() >= max_records {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.by_id.insert(key, (seq, snapshot));
        if is_final {
            self.finals += 1;
        }
        true
    }

    /// Takes up to `limit` of the oldest snapshots that arrived before `cutoff`, leaving the
    /// non-final ones that arrived at or after `settled_before`.
    fn take(&mut self, limit: usize, cutoff: u64, settled_before: u64) -> Vec<Snapshot> {
        let mut chosen = Vec::with_capacity(limit.min(self.by_id.len()));
        for (index, (seq, key)) in self.order.iter().enumerate() {
            if *seq == TAKEN {
                continue;
            }
            if *seq >= cutoff || chosen.len() >= limit {
                break;
            }
            let young_live = *seq >= settled_before
                && self
                    .by_id
                    .get(key)
                    .is_some_and(|(_, snapshot)| !snapshot.is_final());
            if !young_live {
                chosen.push(index);
            }
        }
        self.remove(chosen)
    }

    /// Takes up to `limit` of the oldest final snapshots.
    fn take_oldest_finals(&mut self, limit: usize) -> Vec<Snapshot> {
        let chosen: Vec<usize> = self
            .order
            .iter()
            .enumerate()
            .filter(|(_, (seq, key))| {
                *seq != TAKEN
                    && self
                        .by_id
                        .get(key)
                        .is_some_and(|(_, snapshot)| snapshot.is_final())
            })
            .take(limit)
            .map(|(index, _)| index)
            .collect();
        self.remove(chosen)
    }

    /// Takes the requests of these `order` entries, marking the entries.
    fn remove(&mut self, chosen: Vec<usize>) -> Vec<Snapshot> {
        let mut batch = Vec::with_capacity(chosen.len());
        for index in chosen {
            let Some((seq, key)) = self.order.get_mut(index) else {
                continue;
            };
            if *seq == TAKEN {
                continue;
            }
            *seq = TAKEN;
            self.taken_in_order += 1;
            if let Some((_, snapshot)) = self.by_id.remove(key) {
                if snapshot.is_final() {
                    self.finals -= 1;
                }
                batch.push(snapshot);
            }
        }
        while self.order.front().is_some_and(|(seq, _)| *seq == TAKEN) {
            self.order.pop_front();
            self.taken_in_order -= 1;
        }
        self.compact();
        batch
    }

    /// Drops the marked entries once they outnumber the others (amortised: each entry is
    /// dropped once, and at least as many were marked since the last time).
    fn compact(&mut self) {
        if self.taken_in_order > self.by_id.len().max(64) {
            self.order.retain(|(seq, _)| *seq != TAKEN);
            self.taken_in_order = 0;
        }
    }
}

struct Writer {
    store: Arc<dyn UsageStore>,
    settings: RecorderSettings,
    shared: Arc<Shared>,
    /// Only this task touches the journal; the lock is never held across a database write (a
    /// spill runs while a write waits).
    journal: tokio::sync::Mutex<Option<Journal>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Woken because [`Shared::gather`] finals wait: those, with the live snapshots that
    /// already waited through a tick.
    Gathered,
    /// The interval's tick: what arrived before now, except live snapshots younger than the
    /// previous tick.
    Tick,
    /// Everything that arrived before now (a flush).
    All,
    /// Everything, including what arrives while draining (shutdown).
    Everything,
}

/// The shutdown deadline passed: the records not known to be written.
struct Stopped(Vec<StoredRecord>);

enum WriteFailure {
    Rejected(StoreError),
    Stopped,
}

impl Writer {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut ticker = tokio::time::interval(self.settings.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A journal left by an earlier run goes first.
        let mut result = self.replay_journal().await;
        while result.is_ok() {
            result = tokio::select! {
                _ = ticker.tick() => self.drain(Drain::Tick).await,
                _ = self.shared.wake.notified() => self.drain(Drain::Gathered).await,
                _ = self.shared.overflow.notified() => {
                    self.spill_overflow().await;
                    Ok(())
                }
                command = commands.recv() => match command {
                    Some(Command::Flush(reply)) => {
                        let result = self.drain(Drain::All).await;
                        let _ = reply.send(());
                        result
                    }
                    Some(Command::Shutdown(reply)) => {
                        let result = self.drain(Drain::Everything).await;
                        self.finish(result).await;
                        let _ = reply.send(());
                        return;
                    }
                    // Every handle is gone: write what is left and stop.
                    None => {
                        let result = self.drain(Drain::Everything).await;
                        self.finish(result).await;
                        return;
                    }
                },
            };
        }
        // A bounded shutdown's deadline passed while writing.
        self.finish(result).await;
    }

    /// Ends the writer: after a deadline, everything not written goes to the journal.
    async fn finish(&self, result: Result<(), Stopped>) {
        let Err(Stopped(mut left)) = result else {
            tracing::debug!(
                written = self.shared.written.load(Ordering::Relaxed),
                "usage recorder stopped"
            );
            return;
        };
        let pending = {
            let mut pending = lock(&self.shared.pending);
            pending.take(usize::MAX, u64::MAX, u64::MAX)
        };
        left.extend(pending.into_iter().filter_map(Snapshot::into_stored));
        self.shared.writing.store(0, Ordering::Release);
        let mut report = ShutdownReport {
            journal: self.shared.journal_path.clone(),
            ..ShutdownReport::default()
        };
        let mut journal = self.journal.lock().await;
        match journal.as_mut() {
            Some(journal) => match journal.append(&left).await {
                Ok(()) => {
                    self.shared.publish_journal(journal);
                    report.journaled = left.len();
                    if !left.is_empty() {
                        tracing::warn!(
                            records = left.len(),
                            journal = %journal.path().display(),
                            "{} usage records journaled at shutdown: {}",
                            left.len(),
                            journal.path().display()
                        );
                    }
                }
                Err(error) => {
                    report.lost = left.len();
                    tracing::error!(
                        error = %error,
                        records = left.len(),
                        "{} usage records lost at shutdown: the journal could not be written",
                        left.len()
                    );
                }
            },
            None => {
                report.lost = left.len();
                if !left.is_empty() {
                    tracing::error!(
                        records = left.len(),
                        "{} usage records lost at shutdown: the database did not take them in \
                         time and there is no journal",
                        left.len()
                    );
                }
            }
        }
        *lock(&self.shared.shutdown_report) = Some(report);
    }

    async fn drain(&self, mode: Drain) -> Result<(), Stopped> {
        // The journal holds older outcomes than the memory: it goes first.
        self.replay_journal().await?;
        let (cutoff, settled_before) = {
            let mut pending = lock(&self.shared.pending);
            let now = pending.next_seq;
            match mode {
                Drain::Everything => (u64::MAX, u64::MAX),
                Drain::All => (now, u64::MAX),
                Drain::Gathered => (now, pending.settled_before),
                Drain::Tick => {
                    // Live snapshots pending now are old enough at the next tick.
                    let settled = std::mem::replace(&mut pending.settled_before, now);
                    (now, settled)
                }
            }
        };
        let batch_size = self.shared.batch_size;
        let gather = self.shared.gather;
        loop {
            self.spill_overflow().await;
            let (batch, pace) = {
                let mut pending = lock(&self.shared.pending);
                if mode == Drain::Gathered && pending.finals < gather {
                    return Ok(());
                }
                let limit = write_limit(pending.finals, batch_size);
                let pace = drain_pace(mode, pending.finals, batch_size);
                let batch = pending.take(limit, cutoff, settled_before);
                // Counted as backlog while it is being written.
                self.shared.writing.store(batch.len(), Ordering::Release);
                (batch, pace)
            };
            if batch.is_empty() {
                return Ok(());
            }
            // Caught up, this thread gives way too while it builds the rows (about 4,300
            // instructions each): a serving thread woken meanwhile runs first. At concurrency 1
            // on two cores, added p99 with usage on 310-393 → 255-351 µs in four alternated
            // pairs of runs (issue 19, part 6). A `sched_yield` in a task is a syscall's worth
            // of time when nothing else waits for the core.
            let give_way = pace == WritePace::GiveWay;
            // Sized for the whole batch up front: collected from a filter, the rows (large
            // structs) were copied again at every doubling, some 700 instructions per row.
            let mut stored = Vec::with_capacity(batch.len());
            stored.extend(
                batch
                    .into_iter()
                    .enumerate()
                    .filter_map(|(index, snapshot)| {
                        if give_way && index % ROWS_BETWEEN_YIELDS == ROWS_BETWEEN_YIELDS - 1 {
                            std::thread::yield_now();
                        }
                        snapshot.into_stored()
                    }),
            );
            // A batch of live states whose requests all ended meanwhile has nothing to write.
            if stored.is_empty() {
                self.shared.writing.store(0, Ordering::Release);
                continue;
            }
            let left = self.write(stored, pace).await;
            if !left.is_empty() {
                return Err(Stopped(left));
            }
            self.shared.writing.store(0, Ordering::Release);
        }
    }

    /// Writes the journal's records to the database in batches, in file order, and empties the
    /// file once every record in it is committed (records appended meanwhile included).
    async fn replay_journal(&self) -> Result<(), Stopped> {
        let mut offset = 0;
        let mut replayed = 0usize;
        loop {
            let batch = {
                let mut journal = self.journal.lock().await;
                let Some(journal) = journal.as_mut() else {
                    return Ok(());
                };
                if offset == 0 && journal.records() == 0 && journal.bytes() == 0 {
                    return Ok(());
                }
                let limit = catch_up_limit(self.shared.batch_size);
                let batch = match journal.read_from(offset, limit).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        // The records stay in the file; the next drain tries again.
                        tracing::error!(error = %error, "cannot read the usage journal");
                        return Ok(());
                    }
                };
                if batch.next_offset == offset {
                    // Everything up to the end of the file is committed.
                    match journal.clear().await {
                        Ok(()) => {
                            if replayed > 0 {
                                tracing::info!(
                                    records = replayed,
                                    journal = %journal.path().display(),
                                    "usage journal written to the database"
                                );
                            }
                        }
                        Err(error) => {
                            tracing::error!(error = %error, "cannot empty the usage journal")
                        }
                    }
                    self.shared.publish_journal(journal);
                    return Ok(());
                }
                batch
            };
            offset = batch.next_offset;
            let count = batch.records.len();
            if count == 0 {
                continue;
            }
            self.shared.writing.store(count, Ordering::Release);
            let left = self.write(batch.records, WritePace::CatchUp).await;
            self.shared.writing.store(0, Ordering::Release);
            if !left.is_empty() {
                // Still in the file: nothing to journal again.
                return Err(Stopped(Vec::new()));
            }
            replayed += count;
            let mut journal = self.journal.lock().await;
            if let Some(journal) = journal.as_mut() {
                journal.committed(count);
                self.shared.publish_journal(journal);
            }
        }
    }

    /// Moves final snapshots past the bound, oldest first, to the journal.
    async fn spill_overflow(&self) {
        let max_records = self.shared.max_records;
        let snapshots = {
            let mut pending = lock(&self.shared.pending);
            let over = pending.by_id.len().saturating_sub(max_records);
            if over == 0 {
                return;
            }
            let snapshots = pending.take_oldest_finals(over);
            self.shared
                .spilling
                .store(snapshots.len(), Ordering::Release);
            snapshots
        };
        // Declared before the journal lock: cleared after the new size is published.
        let _spilled = SpillDone(&self.shared.spilling);
        if snapshots.is_empty() {
            return;
        }
        let stored: Vec<StoredRecord> = snapshots
            .into_iter()
            .filter_map(Snapshot::into_stored)
            .collect();
        let mut journal = self.journal.lock().await;
        let Some(journal) = journal.as_mut() else {
            return;
        };
        match journal.append(&stored).await {
            Ok(()) => {
                self.shared.publish_journal(journal);
                tracing::debug!(
                    records = stored.len(),
                    journal_records = journal.records(),
                    "usage backlog full: final outcomes moved to the journal"
                );
            }
            Err(error) => {
                // Never lose a final outcome: keep it in memory and say so.
                tracing::error!(
                    error = %error,
                    records = stored.len(),
                    "cannot write the usage journal; keeping the records in memory"
                );
                let mut pending = lock(&self.shared.pending);
                for record in stored {
                    let (record, cost) = (record.record().clone(), *record.cost());
                    pending.insert(
                        Key::Text(record.request_id.clone()),
                        Snapshot {
                            body: Body::Ready(Box::new(record)),
                            cost,
                        },
                        usize::MAX,
                    );
                }
            }
        }
    }

    /// Runs `work`, moving overflow to the journal while it waits; `None` once a bounded
    /// shutdown's deadline has passed (`work` is dropped then).
    async fn interruptible<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut deadline = self.shared.deadline.subscribe();
        tokio::pin!(work);
        loop {
            let until = *deadline.borrow_and_update();
            let expired = async move {
                match until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                output = &mut work => return Some(output),
                () = expired => return None,
                changed = deadline.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as the writer: unreachable, but never spin.
                        return Some(work.await);
                    }
                }
                _ = self.shared.overflow.notified() => self.spill_overflow().await,
            }
        }
    }

    /// Writes one batch, retrying until it is written; only records the database rejects as
    /// invalid are ever dropped. Returns what it did not write because a bounded shutdown's
    /// deadline passed (empty otherwise).
    ///
    /// The batch is shared with the store ([`UsageStore::write_shared`]) instead of copied for
    /// each attempt; only the rare paths (a rejected batch split in two, a shutdown deadline)
    /// copy records.
    async fn write(&self, stored: Vec<StoredRecord>, pace: WritePace) -> Vec<StoredRecord> {
        let mut queue: Vec<SharedBatch> = vec![Arc::new(stored)];
        while let Some(stored) = queue.pop() {
            match self.write_with_retry(&stored, pace).await {
                Ok(()) => {}
                Err(WriteFailure::Stopped) => {
                    let mut left = stored.to_vec();
                    for rest in queue {
                        left.extend_from_slice(&rest);
                    }
                    return left;
                }
                Err(WriteFailure::Rejected(error)) if stored.len() > 1 => {
                    tracing::warn!(
                        error = %error.chain(),
                        records = stored.len(),
                        "usage batch rejected; writing its records one by one"
                    );
                    let (left, right) = split(stored);
                    queue.push(right);
                    queue.push(left);
                }
                Err(WriteFailure::Rejected(error)) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(record) = stored.first() {
                        tracing::error!(
                            error = %error.chain(),
                            request_id = %record.record().request_id,
                            "usage record rejected by the database and dropped"
                        );
                    }
                }
            }
        }
        Vec::new()
    }

    /// Retries retryable errors for ever (with backoff) or until a bounded shutdown's deadline;
    /// returns a non-retryable error at once for a batch of several (the caller splits it) and
    /// after `max_retry` immediate attempts for a single record.
    async fn write_with_retry(
        &self,
        stored: &SharedBatch,
        pace: WritePace,
    ) -> Result<(), WriteFailure> {
        let mut backoff = self.settings.initial_backoff;
        let mut invalid_attempts = 0;
        loop {
            let Some(result) = self
                .interruptible(self.store.write_shared(stored.clone(), pace))
                .await
            else {
                return Err(WriteFailure::Stopped);
            };
            match result {
                Ok(()) => {
                    self.shared
                        .written
                        .fetch_add(stored.len() as u64, Ordering::Relaxed);
                    let recovered = lock(&self.shared.last_error).take();
                    if let Some(previous) = recovered {
                        tracing::warn!(
                            failures = previous.consecutive_failures,
                            backlog = self.shared.backlog(),
                            journal_records = self.shared.journal_records.load(Ordering::Relaxed),
                            "usage database writable again; writing the backlog"
                        );
                    }
                    return Ok(());
                }
                Err(error) => {
                    let retryable = error.is_retryable();
                    let failures = self.note_error(&error, retryable);
                    let backlog = self.shared.backlog();
                    if failures == 1 || failures % 10 == 0 {
                        tracing::error!(
                            error = %error.chain(),
                            backend = self.store.backend(),
                            backlog,
                            failures,
                            retry_in_ms = backoff.as_millis() as u64,
                            "usage database write failed; keeping the records and retrying"
                        );
                    } else {
                        tracing::warn!(
                            error = %error.chain(),
                            backlog,
                            failures,
                            "usage database write failed again"
                        );
                    }
                    if !retryable {
                        // Invalid data: waiting changes nothing, so never sleep for it.
                        invalid_attempts += 1;
                        if stored.len() > 1 || invalid_attempts >= self.settings.max_retry {
                            return Err(WriteFailure::Rejected(error));
                        }
                        continue;
                    }
                    if self
                        .interruptible(tokio::time::sleep(backoff))
                        .await
                        .is_none()
                    {
                        return Err(WriteFailure::Stopped);
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    fn note_error(&self, error: &StoreError, retryable: bool) -> u64 {
        let mut last = lock(&self.shared.last_error);
        let failures = last.as_ref().map_or(0, |e| e.consecutive_failures) + 1;
        *last = Some(RecorderError {
            message: error.chain(),
            retryable,
            at: SystemTime::now(),
            consecutive_failures: failures,
        });
        failures
    }
}

/// Clears the spilling count when a spill ends (after the journal's size is published or the
/// records are back in memory).
struct SpillDone<'a>(&'a AtomicUsize);

impl Drop for SpillDone<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

fn split(stored: SharedBatch) -> (SharedBatch, SharedBatch) {
    let (left, right) = stored.split_at(stored.len() / 2);
    (Arc::new(left.to_vec()), Arc::new(right.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn finals_gather_up_to_ten_batches_and_half_the_memory_bound_but_at_least_a_batch() {
        // The defaults: batch 100, buffer 1,000.
        assert_eq!(gather_limit(100, 1_000), 500);
        // No bound (no journal): ten batches.
        assert_eq!(gather_limit(10, usize::MAX), 100);
        assert_eq!(gather_limit(5, 20), 10);
        // Never fewer than a batch, even when the batch is the whole bound.
        assert_eq!(gather_limit(100, 100), 100);
        assert_eq!(gather_limit(1, 1), 1);
    }

    #[test]
    fn pending_keys_hash_apart_and_alike() {
        use std::hash::BuildHasher;
        let hashing = KeyHashing::default();
        let hash = |key: &Key| hashing.hash_one(key);
        assert_eq!(hash(&Key::Number(7)), hash(&Key::Number(7)));
        assert_eq!(
            hash(&Key::Text("req-0123456789abcdef".into())),
            hash(&Key::Text("req-0123456789abcdef".into()))
        );
        assert_ne!(hash(&Key::Number(7)), hash(&Key::Number(8)));
        assert_ne!(
            hash(&Key::Text("ab".into())),
            hash(&Key::Text("ab\0".into()))
        );
        assert_ne!(
            hash(&Key::Text("a".into())),
            hash(&Key::Number(u64::from(b'a')))
        );
        // Sequential numbers spread over the buckets' low bits and the tags' high bits.
        let hashes: Vec<u64> = (0..4096u64).map(|n| hash(&Key::Number(n))).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 2_000, "{}", low.len());
        assert_eq!(high.len(), 128);
        // Another map has another seed.
        assert_ne!(
            KeyHashing::default().hash_one(Key::Number(7)),
            hash(&Key::Number(7))
        );
    }

    struct Live {
        id: &'static str,
        is_final: bool,
    }

    impl DeferredRecord for Live {
        fn is_final(&self) -> bool {
            self.is_final
        }

        fn to_record(&self) -> Option<UsageRecord> {
            let mut record = UsageRecord::new(self.id, UNIX_EPOCH);
            record.is_final = self.is_final;
            Some(record)
        }
    }

    fn deferred(id: &'static str, is_final: bool) -> Snapshot {
        Snapshot {
            body: Body::Deferred(Box::new(Live { id, is_final })),
            cost: Cost::default(),
        }
    }

    fn ids(batch: Vec<Snapshot>) -> Vec<String> {
        batch
            .into_iter()
            .filter_map(|snapshot| Some(snapshot.into_stored()?.into_record().request_id))
            .collect()
    }

    #[test]
    fn a_live_snapshot_waits_for_one_tick_and_a_final_one_does_not() {
        let mut pending = Pending::default();
        pending.insert(Key::Number(1), deferred("live", false), usize::MAX);
        pending.insert(Key::Number(2), deferred("done", true), usize::MAX);
        assert_eq!(pending.finals, 1);
        // Nothing has waited through a tick yet: only the final snapshot goes.
        let batch = pending.take(10, pending.next_seq, pending.settled_before);
        assert_eq!(ids(batch), ["done"]);
        assert_eq!(pending.finals, 0);
        // A tick passes: the live snapshot is old enough now.
        pending.settled_before = pending.next_seq;
        let batch = pending.take(10, pending.next_seq, pending.settled_before);
        assert_eq!(ids(batch), ["live"]);
        assert!(pending.by_id.is_empty());
    }

    #[test]
    fn the_final_state_replaces_the_live_one_and_is_counted_once() {
        let mut pending = Pending::default();
        pending.insert(Key::Number(7), deferred("a-live", false), usize::MAX);
        pending.insert(Key::Number(7), deferred("a-final", true), usize::MAX);
        pending.insert(Key::Number(7), deferred("a-late-live", false), usize::MAX);
        assert_eq!(pending.finals, 1);
        let batch = pending.take(10, u64::MAX, 0);
        assert_eq!(ids(batch), ["a-final"]);
        assert_eq!(pending.finals, 0);
    }

    #[test]
    fn a_flush_takes_young_live_snapshots_too() {
        let mut pending = Pending::default();
        pending.insert(Key::Text("req-a".into()), deferred("a", false), usize::MAX);
        let batch = pending.take(10, pending.next_seq, u64::MAX);
        assert_eq!(ids(batch), ["a"]);
    }

    /// A live request that stays pending (the database is down, the writer retries) while
    /// finals behind it are taken one by one: the queue does not keep an entry for each.
    #[test]
    fn finals_taken_behind_a_request_still_pending_leave_no_trail() {
        let mut pending = Pending::default();
        pending.insert(Key::Number(0), deferred("live", false), usize::MAX);
        for n in 1..=1_000 {
            pending.insert(Key::Number(n), deferred("final", true), usize::MAX);
            assert_eq!(ids(pending.take_oldest_finals(1)), ["final"]);
        }
        assert_eq!(pending.by_id.len(), 1);
        assert!(pending.order.len() <= 66, "{} entries", pending.order.len());
        // Order is kept: the live request is still the oldest, and those after it follow.
        pending.insert(Key::Number(2_000), deferred("later", true), usize::MAX);
        let batch = pending.take(10, u64::MAX, u64::MAX);
        assert_eq!(ids(batch), ["live", "later"]);
        assert!(pending.order.is_empty());
        assert_eq!(pending.taken_in_order, 0);
    }

    #[test]
    fn past_the_bound_a_new_live_snapshot_is_not_kept_and_a_final_one_is() {
        let mut pending = Pending::default();
        assert!(pending.insert(Key::Number(1), deferred("a", false), 2));
        assert!(pending.insert(Key::Number(2), deferred("b", true), 2));
        // Full: a new live snapshot is not kept, a final one always is.
        assert!(!pending.insert(Key::Number(3), deferred("c", false), 2));
        assert!(pending.insert(Key::Number(4), deferred("d", true), 2));
        // A known request's snapshot still replaces its earlier one.
        assert!(pending.insert(Key::Number(1), deferred("a-final", true), 2));
        assert_eq!(pending.by_id.len(), 3);
        assert_eq!(pending.finals, 3);
        // The overflow takes the oldest finals first.
        let batch = pending.take_oldest_finals(1);
        assert_eq!(ids(batch), ["a-final"]);
        assert_eq!(pending.finals, 2);
    }
}
