//! The recorder: a tokio task that owns the not-yet-written snapshots and writes them in batches.
//!
//! Ownership and cancellation: [`Recorder::spawn`] starts one task that owns the writing; every
//! [`RecorderHandle`] clone shares the pending map with it. The task ends on
//! [`RecorderHandle::shutdown`] (after writing everything) or when every handle is dropped (it
//! then also writes everything it holds before ending).
//!
//! Guarantees:
//! - [`RecorderHandle::record`] never blocks on the database and never fails: it replaces the
//!   pending snapshot of the same request id (intermediate updates coalesce), so memory is bounded
//!   by in-flight requests plus what is waiting to be written;
//! - a final snapshot is never replaced by a non-final one and never dropped because the database
//!   is unavailable: the batch is kept and retried with exponential backoff, loudly logged, and the
//!   backlog is visible through [`RecorderHandle::backlog`] and [`RecorderHandle::last_error`];
//! - only a record that the database rejects as invalid `max_retry` times (a non-retryable
//!   [`StoreError`]) is dropped, alone, with an error log; [`RecorderHandle::dropped`] counts them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ccf_config::UsageTrackingConfig;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::pricing::Pricing;
use crate::record::{StoredRecord, UsageRecord};
use crate::{StoreError, UsageStore};

/// How the recorder batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderSettings {
    /// Records per write (at least 1).
    pub batch_size: usize,
    /// Longest time a record waits before it is written.
    pub flush_interval: Duration,
    /// Attempts at a batch the database rejects as invalid before it is split and the offending
    /// record dropped. Retryable errors are retried for ever.
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

/// Starts recorders.
#[derive(Debug)]
pub struct Recorder;

impl Recorder {
    /// Spawns the writer task on the current tokio runtime.
    pub fn spawn(
        store: Arc<dyn UsageStore>,
        settings: RecorderSettings,
        pricing: Pricing,
    ) -> RecorderHandle {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            writing: AtomicUsize::new(0),
            batch_size: settings.batch_size.max(1),
            last_error: Mutex::new(None),
            pricing: RwLock::new(Arc::new(pricing)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            settings,
            shared: shared.clone(),
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
            .finish()
    }
}

enum Command {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

impl RecorderHandle {
    /// Hands over a snapshot. Never blocks on the database, never fails: it replaces the pending
    /// snapshot of the same request (unless that one is final and this one is not).
    pub fn record(&self, record: UsageRecord) {
        let pending_len = {
            let mut pending = lock(&self.shared.pending);
            pending.insert(record);
            pending.by_id.len()
        };
        if pending_len >= self.shared.batch_size {
            self.shared.wake.notify_one();
        }
    }

    /// Snapshots not yet written (pending plus the batch being written).
    pub fn backlog(&self) -> usize {
        lock(&self.shared.pending).by_id.len() + self.shared.writing.load(Ordering::Acquire)
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

    /// Replaces the prices used for records priced from now on (configuration reload).
    pub fn set_pricing(&self, pricing: Pricing) {
        let mut current = self
            .shared
            .pricing
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(pricing);
    }

    /// Waits until every snapshot handed over before this call is written (retrying while the
    /// database is unavailable). Returns at once if the recorder has shut down.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Flush(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Writes everything pending, then stops the writer task. Waits as long as that takes
    /// (wrap it in [`RecorderHandle::shutdown_timeout`] to bound it).
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

    /// [`RecorderHandle::shutdown`] bounded by `limit`; on timeout the writer is stopped and the
    /// number of snapshots left unwritten is returned (and logged as an error).
    pub async fn shutdown_timeout(&self, limit: Duration) -> Result<(), usize> {
        if tokio::time::timeout(limit, self.shutdown()).await.is_ok() {
            return Ok(());
        }
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        let left = self.backlog();
        tracing::error!(
            backlog = left,
            "usage recorder stopped before the database accepted every record"
        );
        Err(left)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
    writing: AtomicUsize,
    batch_size: usize,
    last_error: Mutex<Option<RecorderError>>,
    pricing: RwLock<Arc<Pricing>>,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// Snapshots waiting to be written: the latest per request id, in order of first arrival.
#[derive(Default)]
struct Pending {
    by_id: HashMap<String, (u64, UsageRecord)>,
    order: BTreeMap<u64, String>,
    next_seq: u64,
}

impl Pending {
    fn insert(&mut self, record: UsageRecord) {
        if let Some((_, existing)) = self.by_id.get_mut(&record.request_id) {
            if !existing.is_final || record.is_final {
                *existing = record;
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, record.request_id.clone());
        self.by_id.insert(record.request_id.clone(), (seq, record));
    }

    /// Takes up to `limit` of the oldest snapshots that arrived before `cutoff`.
    fn take(&mut self, limit: usize, cutoff: u64) -> Vec<UsageRecord> {
        let mut batch = Vec::with_capacity(limit.min(self.by_id.len()));
        while batch.len() < limit {
            let Some(entry) = self.order.first_entry() else {
                break;
            };
            if *entry.key() >= cutoff {
                break;
            }
            let id = entry.remove();
            if let Some((_, record)) = self.by_id.remove(&id) {
                batch.push(record);
            }
        }
        batch
    }
}

struct Writer {
    store: Arc<dyn UsageStore>,
    settings: RecorderSettings,
    shared: Arc<Shared>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Only full batches (woken because a batch filled up).
    FullBatches,
    /// Everything that arrived before now.
    All,
    /// Everything, including what arrives while draining (shutdown).
    Everything,
}

impl Writer {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut ticker = tokio::time::interval(self.settings.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.drain(Drain::All).await,
                _ = self.shared.wake.notified() => self.drain(Drain::FullBatches).await,
                command = commands.recv() => match command {
                    Some(Command::Flush(reply)) => {
                        self.drain(Drain::All).await;
                        let _ = reply.send(());
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.drain(Drain::Everything).await;
                        let _ = reply.send(());
                        break;
                    }
                    // Every handle is gone: write what is left and stop.
                    None => {
                        self.drain(Drain::Everything).await;
                        break;
                    }
                },
            }
        }
        tracing::debug!(
            written = self.shared.written.load(Ordering::Relaxed),
            "usage recorder stopped"
        );
    }

    async fn drain(&self, mode: Drain) {
        let cutoff = match mode {
            Drain::Everything => u64::MAX,
            _ => lock(&self.shared.pending).next_seq,
        };
        let batch_size = self.shared.batch_size;
        loop {
            let batch = {
                let mut pending = lock(&self.shared.pending);
                if mode == Drain::FullBatches && pending.by_id.len() < batch_size {
                    return;
                }
                let batch = pending.take(batch_size, cutoff);
                // Counted as backlog while it is being written.
                self.shared.writing.store(batch.len(), Ordering::Release);
                batch
            };
            if batch.is_empty() {
                return;
            }
            self.write(batch).await;
            self.shared.writing.store(0, Ordering::Release);
        }
    }

    /// Writes one batch, retrying until it is written; only records the database rejects as
    /// invalid are ever dropped.
    async fn write(&self, batch: Vec<UsageRecord>) {
        let pricing = self
            .shared
            .pricing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let stored: Vec<StoredRecord> = batch
            .into_iter()
            .map(|record| StoredRecord::price(record, &pricing))
            .collect();
        let mut queue = vec![stored];
        while let Some(stored) = queue.pop() {
            match self.write_with_retry(&stored).await {
                Ok(()) => {}
                Err(error) if stored.len() > 1 => {
                    tracing::warn!(
                        error = %error.chain(),
                        records = stored.len(),
                        "usage batch rejected; writing its records one by one"
                    );
                    let (left, right) = split(stored);
                    queue.push(right);
                    queue.push(left);
                }
                Err(error) => {
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
    }

    /// Retries retryable errors for ever (with backoff); returns a non-retryable error after
    /// `max_retry` attempts.
    async fn write_with_retry(&self, stored: &[StoredRecord]) -> Result<(), StoreError> {
        let mut backoff = self.settings.initial_backoff;
        let mut invalid_attempts = 0;
        loop {
            match self.store.write_batch(stored).await {
                Ok(()) => {
                    self.shared
                        .written
                        .fetch_add(stored.len() as u64, Ordering::Relaxed);
                    let recovered = lock(&self.shared.last_error).take();
                    if let Some(previous) = recovered {
                        tracing::warn!(
                            failures = previous.consecutive_failures,
                            backlog = self.backlog(),
                            "usage database writable again; writing the backlog"
                        );
                    }
                    return Ok(());
                }
                Err(error) => {
                    let retryable = error.is_retryable();
                    let failures = self.note_error(&error, retryable);
                    let backlog = self.backlog();
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
                        invalid_attempts += 1;
                        if invalid_attempts >= self.settings.max_retry {
                            return Err(error);
                        }
                    }
                    tokio::time::sleep(backoff).await;
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

    fn backlog(&self) -> usize {
        lock(&self.shared.pending).by_id.len() + self.shared.writing.load(Ordering::Acquire)
    }
}

fn split(mut stored: Vec<StoredRecord>) -> (Vec<StoredRecord>, Vec<StoredRecord>) {
    let right = stored.split_off(stored.len() / 2);
    (stored, right)
}
