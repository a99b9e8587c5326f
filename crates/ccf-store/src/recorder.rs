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
//! - [`RecorderHandle::record_deferred`] does the same with a snapshot whose row is built only if
//!   it is written, by the writer task: the request path pays one small allocation per change
//!   instead of a row's worth of strings;
//! - a final snapshot is written at the next full batch or tick; a non-final (live) one only once
//!   it has waited through one tick of `flush_interval` (or on [`RecorderHandle::flush`] and at
//!   shutdown), so a request that ends within about one interval costs one row write, not two,
//!   and a long one still shows up live within two intervals;
//! - a final snapshot is never replaced by a non-final one and never dropped because the database
//!   is unavailable: the batch is kept and retried with exponential backoff, loudly logged, and the
//!   backlog is visible through [`RecorderHandle::backlog`] and [`RecorderHandle::last_error`];
//! - only a record that the database rejects as invalid `max_retry` times (a non-retryable
//!   [`StoreError`]) is dropped, alone, with an error log; [`RecorderHandle::dropped`] counts them.
//!   A rejected batch is split at once and a rejected record retried without waiting: invalid data
//!   fails the same way every time, so only unavailable, locked or read-only databases are waited
//!   for, and a bad row costs the writer the split and its own attempts, never a backoff.

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

/// A request's state, turned into a [`UsageRecord`] only when the recorder writes it (see
/// [`RecorderHandle::record_deferred`]).
pub trait DeferredRecord: Send + 'static {
    /// Whether it is the request's final state.
    fn is_final(&self) -> bool;
    /// The row to write.
    fn to_record(&self) -> UsageRecord;
}

/// One pending snapshot: a row, or what a row is made from.
enum Snapshot {
    Ready(Box<UsageRecord>),
    Deferred(Box<dyn DeferredRecord>),
}

impl Snapshot {
    fn is_final(&self) -> bool {
        match self {
            Snapshot::Ready(record) => record.is_final,
            Snapshot::Deferred(deferred) => deferred.is_final(),
        }
    }

    fn into_record(self) -> UsageRecord {
        match self {
            Snapshot::Ready(record) => *record,
            Snapshot::Deferred(deferred) => deferred.to_record(),
        }
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
        self.insert(
            Key::Text(record.request_id.clone()),
            Snapshot::Ready(Box::new(record)),
        );
    }

    /// Like [`record`](Self::record) for a snapshot whose row is built only if it is written
    /// (by the writer task, off the request path). `request` identifies the request: snapshots
    /// with the same number replace each other. Use one of the two methods per request, not both.
    pub fn record_deferred(&self, request: u64, snapshot: Box<dyn DeferredRecord>) {
        self.insert(Key::Number(request), Snapshot::Deferred(snapshot));
    }

    fn insert(&self, key: Key, snapshot: Snapshot) {
        let finals = {
            let mut pending = lock(&self.shared.pending);
            pending.insert(key, snapshot);
            pending.finals
        };
        if finals >= self.shared.batch_size {
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

/// Snapshots waiting to be written: the latest per request, in order of first arrival.
#[derive(Default)]
struct Pending {
    by_id: HashMap<Key, (u64, Snapshot)>,
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    /// How many of `by_id` are final.
    finals: usize,
    /// Non-final snapshots that arrived before this sequence number have waited through a tick.
    settled_before: u64,
}

impl Pending {
    fn insert(&mut self, key: Key, snapshot: Snapshot) {
        let is_final = snapshot.is_final();
        if let Some((_, existing)) = self.by_id.get_mut(&key) {
            let was_final = existing.is_final();
            if !was_final || is_final {
                *existing = snapshot;
                if is_final && !was_final {
                    self.finals += 1;
                }
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.by_id.insert(key, (seq, snapshot));
        if is_final {
            self.finals += 1;
        }
    }

    /// Takes up to `limit` of the oldest snapshots that arrived before `cutoff`, leaving the
    /// non-final ones that arrived at or after `settled_before`.
    fn take(&mut self, limit: usize, cutoff: u64, settled_before: u64) -> Vec<Snapshot> {
        let mut chosen = Vec::with_capacity(limit.min(self.by_id.len()));
        for (&seq, key) in self.order.range(..cutoff) {
            if chosen.len() >= limit {
                break;
            }
            let young_live = seq >= settled_before
                && self
                    .by_id
                    .get(key)
                    .is_some_and(|(_, snapshot)| !snapshot.is_final());
            if !young_live {
                chosen.push(seq);
            }
        }
        let mut batch = Vec::with_capacity(chosen.len());
        for seq in chosen {
            let Some(key) = self.order.remove(&seq) else {
                continue;
            };
            if let Some((_, snapshot)) = self.by_id.remove(&key) {
                if snapshot.is_final() {
                    self.finals -= 1;
                }
                batch.push(snapshot);
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
    /// Only full batches of final snapshots (woken because one filled up), with the live
    /// snapshots that already waited through a tick.
    FullBatches,
    /// The interval's tick: what arrived before now, except live snapshots younger than the
    /// previous tick.
    Tick,
    /// Everything that arrived before now (a flush).
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
                _ = ticker.tick() => self.drain(Drain::Tick).await,
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
        let (cutoff, settled_before) = {
            let mut pending = lock(&self.shared.pending);
            let now = pending.next_seq;
            match mode {
                Drain::Everything => (u64::MAX, u64::MAX),
                Drain::All => (now, u64::MAX),
                Drain::FullBatches => (now, pending.settled_before),
                Drain::Tick => {
                    // Live snapshots pending now are old enough at the next tick.
                    let settled = std::mem::replace(&mut pending.settled_before, now);
                    (now, settled)
                }
            }
        };
        let batch_size = self.shared.batch_size;
        loop {
            let batch = {
                let mut pending = lock(&self.shared.pending);
                if mode == Drain::FullBatches && pending.finals < batch_size {
                    return;
                }
                let batch = pending.take(batch_size, cutoff, settled_before);
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
    async fn write(&self, batch: Vec<Snapshot>) {
        let pricing = self
            .shared
            .pricing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let stored: Vec<StoredRecord> = batch
            .into_iter()
            .map(|snapshot| StoredRecord::price(snapshot.into_record(), &pricing))
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

    /// Retries retryable errors for ever (with backoff); returns a non-retryable error at once
    /// for a batch of several (the caller splits it) and after `max_retry` immediate attempts for
    /// a single record.
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
                        // Invalid data: waiting changes nothing, so never sleep for it.
                        invalid_attempts += 1;
                        if stored.len() > 1 || invalid_attempts >= self.settings.max_retry {
                            return Err(error);
                        }
                        continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    struct Live {
        id: &'static str,
        is_final: bool,
    }

    impl DeferredRecord for Live {
        fn is_final(&self) -> bool {
            self.is_final
        }

        fn to_record(&self) -> UsageRecord {
            let mut record = UsageRecord::new(self.id, UNIX_EPOCH);
            record.is_final = self.is_final;
            record
        }
    }

    fn deferred(id: &'static str, is_final: bool) -> Snapshot {
        Snapshot::Deferred(Box::new(Live { id, is_final }))
    }

    fn ids(batch: Vec<Snapshot>) -> Vec<String> {
        batch
            .into_iter()
            .map(|snapshot| snapshot.into_record().request_id)
            .collect()
    }

    #[test]
    fn a_live_snapshot_waits_for_one_tick_and_a_final_one_does_not() {
        let mut pending = Pending::default();
        pending.insert(Key::Number(1), deferred("live", false));
        pending.insert(Key::Number(2), deferred("done", true));
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
        pending.insert(Key::Number(7), deferred("a-live", false));
        pending.insert(Key::Number(7), deferred("a-final", true));
        pending.insert(Key::Number(7), deferred("a-late-live", false));
        assert_eq!(pending.finals, 1);
        let batch = pending.take(10, u64::MAX, 0);
        assert_eq!(ids(batch), ["a-final"]);
        assert_eq!(pending.finals, 0);
    }

    #[test]
    fn a_flush_takes_young_live_snapshots_too() {
        let mut pending = Pending::default();
        pending.insert(Key::Text("req-a".into()), deferred("a", false));
        let batch = pending.take(10, pending.next_seq, u64::MAX);
        assert_eq!(ids(batch), ["a"]);
    }
}
