//! The recorder against a scripted in-memory store: coalescing, batching, outages and rejects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccf_store::{
    async_trait, status, BacklogSettings, CleanupReport, MigrationReport, Page, Pricing, Recorder,
    RecorderHandle, RecorderSettings, RequestFilter, RequestQuery, RequestRow, Stats, StatsQuery,
    StoreError, StoredRecord, SummaryQuery, SummaryRow, UsageRecord, UsageStore, WritePace,
};

#[derive(Default)]
struct ScriptedStore {
    rows: Mutex<HashMap<String, StoredRecord>>,
    batches: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
    /// The pace the recorder asked for, per call of `write_shared`.
    paces: Mutex<Vec<WritePace>>,
    writes_per_id: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
    reject: Mutex<Option<String>>,
}

#[async_trait]
impl UsageStore for ScriptedStore {
    fn backend(&self) -> &'static str {
        "scripted"
    }
    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        Ok(MigrationReport::default())
    }
    async fn write_shared(
        &self,
        batch: ccf_store::SharedBatch,
        pace: WritePace,
    ) -> Result<(), StoreError> {
        self.paces.lock().unwrap().push(pace);
        self.write_batch(&batch).await
    }
    async fn write_batch(&self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                message: "scripted outage".into(),
                source: None,
            });
        }
        if let Some(bad) = self.reject.lock().unwrap().as_deref() {
            if batch.iter().any(|s| s.record().request_id == bad) {
                return Err(StoreError::InvalidInput("scripted reject".into()));
            }
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batch_sizes.lock().unwrap().push(batch.len());
        let mut rows = self.rows.lock().unwrap();
        let mut writes = self.writes_per_id.lock().unwrap();
        for stored in batch {
            let id = stored.record().request_id.clone();
            *writes.entry(id.clone()).or_default() += 1;
            let keep = rows
                .get(&id)
                .is_some_and(|old| old.record().is_final && !stored.record().is_final);
            if !keep {
                rows.insert(id, stored.clone());
            }
        }
        Ok(())
    }
    async fn list_requests(&self, _: &RequestQuery) -> Result<Page<RequestRow>, StoreError> {
        Err(StoreError::Closed)
    }
    async fn get_request(&self, _: &str) -> Result<Option<RequestRow>, StoreError> {
        Err(StoreError::Closed)
    }
    async fn scan_requests(
        &self,
        _: &RequestFilter,
        _: i64,
        _: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        Err(StoreError::Closed)
    }
    async fn stats(&self, _: &StatsQuery) -> Result<Stats, StoreError> {
        Err(StoreError::Closed)
    }
    async fn summary(&self, _: &SummaryQuery) -> Result<Vec<SummaryRow>, StoreError> {
        Err(StoreError::Closed)
    }
    async fn cleanup(&self, _: SystemTime) -> Result<CleanupReport, StoreError> {
        Err(StoreError::Closed)
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn settings(batch_size: usize, flush_interval: Duration) -> RecorderSettings {
    RecorderSettings {
        batch_size,
        flush_interval,
        max_retry: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn record(id: &str, status_value: &str, is_final: bool) -> UsageRecord {
    let mut record = UsageRecord::new(id, UNIX_EPOCH);
    record.status = status_value.into();
    record.is_final = is_final;
    record.usage.input_tokens = 1000;
    record
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn coalesces_intermediate_snapshots_and_prices_the_final_one() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(100, Duration::from_secs(3600)),
        Pricing::default(),
    );
    for step in [status::PENDING, status::FORWARDING, status::PROCESSING] {
        recorder.record(record("req-a", step, false));
    }
    recorder.record(record("req-a", status::COMPLETED, true));
    recorder.flush().await;
    assert_eq!(
        store.writes_per_id.lock().unwrap()["req-a"],
        1,
        "one write for four snapshots"
    );
    let rows = store.rows.lock().unwrap();
    let stored = &rows["req-a"];
    assert_eq!(stored.record().status, status::COMPLETED);
    assert_eq!(
        stored.cost().total,
        1000 * 3000,
        "priced by the recorder, default pricing"
    );
}

#[tokio::test]
async fn a_final_snapshot_is_never_replaced_by_a_later_non_final_one() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(100, Duration::from_secs(3600)),
        Pricing::default(),
    );
    recorder.record(record("req-a", status::FAILED, true));
    recorder.record(record("req-a", status::PROCESSING, false));
    recorder.flush().await;
    assert_eq!(
        store.rows.lock().unwrap()["req-a"].record().status,
        status::FAILED
    );
}

#[tokio::test]
async fn gathered_finals_are_written_without_waiting_for_the_interval() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(10, Duration::from_secs(3600)),
        Pricing::default(),
    );
    // Let the interval's immediate first tick pass.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Ten batches gather (no memory bound without a journal): a full batch alone waits, and
    // the tenth brings all of them in one write.
    for chunk in 0..10 {
        for i in 0..10 {
            recorder.record(record(&format!("req-{chunk}-{i}"), status::COMPLETED, true));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if chunk < 9 {
            assert!(
                store.rows.lock().unwrap().is_empty(),
                "{} finals written before ten batches gathered",
                store.rows.lock().unwrap().len()
            );
        }
    }
    eventually("the gathered batches", || {
        store.rows.lock().unwrap().len() == 100
    })
    .await;
    assert_eq!(*store.batch_sizes.lock().unwrap(), vec![100]);
    assert_eq!(
        *store.paces.lock().unwrap(),
        vec![WritePace::CatchUp],
        "more than a batch waited: written without pausing"
    );
    assert_eq!(recorder.backlog(), 0);
}

#[tokio::test]
async fn a_backlog_of_several_batches_is_written_ten_batches_at_a_time() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(10, Duration::from_secs(3600)),
        Pricing::default(),
    );
    // 35 batches' worth arrive before the writer task first runs (this test's runtime has
    // one thread): the database is behind by that much.
    for i in 0..350 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    recorder.flush().await;
    assert_eq!(store.rows.lock().unwrap().len(), 350);
    assert_eq!(
        *store.batch_sizes.lock().unwrap(),
        vec![100, 100, 100, 50],
        "writes of up to ten batches while more than one batch waits"
    );
    // Caught up: the next outcomes are written once ten batches gathered.
    for i in 0..100 {
        recorder.record(record(&format!("req-next-{i}"), status::COMPLETED, true));
    }
    eventually("the gathered batches", || {
        store.rows.lock().unwrap().len() == 450
    })
    .await;
    assert_eq!(store.batch_sizes.lock().unwrap().last(), Some(&100));
}

#[tokio::test]
async fn writes_give_way_only_while_the_recorder_is_caught_up_and_nobody_waits() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(10, Duration::from_millis(50)),
        Pricing::default(),
    );
    // 35 finals before the writer first runs (one-thread runtime): behind.
    for i in 0..35 {
        recorder.record(record(&format!("req-behind-{i}"), status::COMPLETED, true));
    }
    eventually("the backlog", || store.rows.lock().unwrap().len() == 35).await;
    assert_eq!(*store.paces.lock().unwrap(), vec![WritePace::CatchUp]);
    // Caught up: a batch, then a partial one, each at the interval's tick (fewer than the
    // hundred it lets gather).
    for i in 0..10 {
        recorder.record(record(&format!("req-full-{i}"), status::COMPLETED, true));
    }
    eventually("the full batch", || store.rows.lock().unwrap().len() == 45).await;
    for i in 0..3 {
        recorder.record(record(&format!("req-partial-{i}"), status::COMPLETED, true));
    }
    eventually("the partial batch", || {
        store.rows.lock().unwrap().len() == 48
    })
    .await;
    assert_eq!(
        store.paces.lock().unwrap()[1..],
        [WritePace::GiveWay, WritePace::GiveWay]
    );
    // A flush is waited for: no pausing.
    recorder.record(record("req-flushed", status::COMPLETED, true));
    recorder.flush().await;
    assert_eq!(
        store.paces.lock().unwrap().last(),
        Some(&WritePace::CatchUp)
    );
    assert_eq!(store.rows.lock().unwrap().len(), 49);
}

#[tokio::test]
async fn the_interval_writes_partial_batches() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(1000, Duration::from_millis(20)),
        Pricing::default(),
    );
    recorder.record(record("req-a", status::PENDING, false));
    eventually("the interval flush", || {
        store.rows.lock().unwrap().len() == 1
    })
    .await;
}

#[tokio::test]
async fn keeps_everything_while_the_store_is_down_and_writes_it_when_it_returns() {
    let store = Arc::new(ScriptedStore::default());
    store.down.store(true, Ordering::SeqCst);
    let recorder = Recorder::spawn(
        store.clone(),
        settings(20, Duration::from_millis(10)),
        Pricing::default(),
    );
    let started = Instant::now();
    for i in 0..1000 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "record() never waits for the store"
    );
    eventually("the failure to show", || recorder.last_error().is_some()).await;
    let error = recorder.last_error().unwrap();
    assert!(error.retryable);
    assert!(error.message.contains("scripted outage"));
    assert_eq!(recorder.backlog(), 1000);
    store.down.store(false, Ordering::SeqCst);
    recorder.flush().await;
    assert_eq!(recorder.backlog(), 0);
    assert!(recorder.last_error().is_none());
    assert_eq!(store.rows.lock().unwrap().len(), 1000);
    assert_eq!(recorder.written(), 1000);
}

#[tokio::test]
async fn a_record_the_database_rejects_is_dropped_alone() {
    let store = Arc::new(ScriptedStore::default());
    *store.reject.lock().unwrap() = Some("req-bad".into());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(100, Duration::from_secs(3600)),
        Pricing::default(),
    );
    for i in 0..50 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    recorder.record(record("req-bad", status::COMPLETED, true));
    recorder.shutdown().await;
    assert_eq!(recorder.dropped(), 1);
    let rows = store.rows.lock().unwrap();
    assert_eq!(rows.len(), 50);
    assert!(!rows.contains_key("req-bad"));
}

/// Invalid data fails the same way every time: the batch is split and the bad record dropped
/// without waiting, even with an hour of backoff configured (only outages are waited for).
#[tokio::test]
async fn a_rejected_record_costs_no_backoff() {
    let store = Arc::new(ScriptedStore::default());
    *store.reject.lock().unwrap() = Some("req-bad".into());
    let hour = Duration::from_secs(3600);
    let recorder = Recorder::spawn(
        store.clone(),
        RecorderSettings {
            initial_backoff: hour,
            max_backoff: hour,
            ..settings(100, hour)
        },
        Pricing::default(),
    );
    for i in 0..20 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    recorder.record(record("req-bad", status::COMPLETED, true));
    // A deadline that only catches the hang of an hour's sleep.
    tokio::time::timeout(Duration::from_secs(60), recorder.shutdown())
        .await
        .expect("the writer slept on a data error");
    assert_eq!(recorder.dropped(), 1);
    assert_eq!(store.rows.lock().unwrap().len(), 20);
}

#[tokio::test]
async fn shutdown_writes_everything_and_a_bounded_shutdown_reports_what_is_left() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(7, Duration::from_secs(3600)),
        Pricing::default(),
    );
    for i in 0..100 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    recorder.shutdown().await;
    assert_eq!(store.rows.lock().unwrap().len(), 100);

    let down = Arc::new(ScriptedStore::default());
    down.down.store(true, Ordering::SeqCst);
    let recorder = Recorder::spawn(
        down,
        settings(7, Duration::from_secs(3600)),
        Pricing::default(),
    );
    recorder.record(record("req-stuck", status::COMPLETED, true));
    assert_eq!(
        recorder.shutdown_timeout(Duration::from_millis(100)).await,
        Err(1)
    );
}

/// Pricing with one default price: `input` USD per million input tokens.
fn input_price(input: f64) -> Pricing {
    let mut config = ccf_config::UsageTrackingConfig::default();
    config.default_pricing.input = input;
    Pricing::from_config(&config)
}

async fn journaled(
    store: Arc<ScriptedStore>,
    max_records: usize,
    journal: &std::path::Path,
    pricing: Pricing,
) -> RecorderHandle {
    Recorder::spawn_with_journal(
        store,
        settings(5, Duration::from_millis(10)),
        pricing,
        BacklogSettings {
            max_records,
            journal: journal.to_path_buf(),
        },
    )
    .await
    .expect("journal opens")
}

#[tokio::test]
async fn past_buffer_size_final_outcomes_go_to_the_journal_and_all_are_written_once_when_the_store_returns(
) {
    let folder = tempfile::tempdir().unwrap();
    let journal = folder.path().join("usage.db.recorder-journal.jsonl");
    let store = Arc::new(ScriptedStore::default());
    store.down.store(true, Ordering::SeqCst);
    let recorder = journaled(store.clone(), 20, &journal, Pricing::default()).await;
    for i in 0..500 {
        recorder.record(record(&format!("req-live-{i}"), status::PROCESSING, false));
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    // Memory holds at most the bound plus the batch being retried (up to ten batches of 5,
    // taken while the backlog was long).
    eventually("the backlog to fit its bound", || {
        recorder.backlog() <= 20 + 50
    })
    .await;
    assert!(recorder.journal_records() >= 500 - 20 - 50, "{recorder:?}");
    assert_eq!(
        recorder.journal_bytes(),
        std::fs::metadata(&journal).unwrap().len()
    );
    assert!(recorder.live_not_kept() > 0);
    assert!(store.rows.lock().unwrap().is_empty());

    store.down.store(false, Ordering::SeqCst);
    recorder.flush().await;
    assert_eq!((recorder.backlog(), recorder.journal_records()), (0, 0));
    assert_eq!(recorder.journal_bytes(), 0);
    assert!(!journal.exists(), "the journal is emptied once written");
    let rows = store.rows.lock().unwrap();
    let writes = store.writes_per_id.lock().unwrap();
    for i in 0..500 {
        let id = format!("req-{i}");
        let row = rows.get(&id).unwrap_or_else(|| panic!("{id} lost"));
        assert!(row.record().is_final);
        assert_eq!(
            row.cost(),
            &Pricing::default().cost(None, &row.record().usage)
        );
        assert_eq!(writes.get(&id), Some(&1), "{id} written once");
    }
}

#[tokio::test]
async fn an_outcome_keeps_the_price_it_had_when_it_became_final() {
    let folder = tempfile::tempdir().unwrap();
    let journal = folder.path().join("j.jsonl");
    let store = Arc::new(ScriptedStore::default());
    store.down.store(true, Ordering::SeqCst);
    // Bound 1: the second outcome goes to the journal, the first stays in memory.
    let recorder = journaled(store.clone(), 1, &journal, input_price(3.0)).await;
    let first = recorder.record(record("req-a", status::COMPLETED, true));
    let second = recorder.record(record("req-b", status::COMPLETED, true));
    // 1000 input tokens at 3 USD per million: 3000 nano-USD.
    assert_eq!(first.map(|cost| cost.total), Some(3_000_000));
    assert_eq!(second, first);
    assert_eq!(
        recorder.record(record("req-c", status::PENDING, false)),
        None
    );
    eventually("the overflow to reach the journal", || {
        recorder.journal_records() >= 1
    })
    .await;
    recorder.set_pricing(input_price(30.0));
    store.down.store(false, Ordering::SeqCst);
    recorder.flush().await;
    let later = recorder.record(record("req-d", status::COMPLETED, true));
    recorder.flush().await;
    let rows = store.rows.lock().unwrap();
    let cost = |id: &str| rows.get(id).map(|row| row.cost().total);
    assert_eq!(cost("req-a"), Some(3_000_000));
    assert_eq!(cost("req-b"), Some(3_000_000));
    assert_eq!(cost("req-d"), Some(30_000_000));
    assert_eq!(later.map(|cost| cost.total), Some(30_000_000));
    // Past the bound, a live snapshot of a new request is not kept (its final one would be).
    assert_eq!(cost("req-c"), None);
    assert_eq!(recorder.live_not_kept(), 1);
}

#[tokio::test]
async fn a_bounded_shutdown_journals_what_the_store_did_not_take_and_the_next_start_writes_it() {
    let folder = tempfile::tempdir().unwrap();
    let journal = folder.path().join("j.jsonl");
    let down = Arc::new(ScriptedStore::default());
    down.down.store(true, Ordering::SeqCst);
    let recorder = journaled(down, 1000, &journal, input_price(3.0)).await;
    for i in 0..12 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    recorder.record(record("req-live", status::PROCESSING, false));
    eventually("the writer to be retrying", || {
        recorder.last_error().is_some()
    })
    .await;
    let report = recorder.shutdown_within(Duration::from_millis(50)).await;
    assert_eq!(report.journaled, 13);
    assert_eq!(report.lost, 0);
    assert_eq!(report.journal.as_deref(), Some(journal.as_path()));
    assert_eq!(recorder.journal_records(), 13);

    // The next start writes the journal first, with the prices it had.
    let store = Arc::new(ScriptedStore::default());
    let recorder = journaled(store.clone(), 1000, &journal, input_price(30.0)).await;
    assert_eq!(recorder.journal_records(), 13);
    recorder.flush().await;
    assert_eq!(recorder.journal_records(), 0);
    assert!(!journal.exists());
    let rows = store.rows.lock().unwrap();
    assert_eq!(rows.len(), 13);
    for i in 0..12 {
        assert_eq!(rows[&format!("req-{i}")].cost().total, 3_000_000);
    }
    assert!(!rows["req-live"].record().is_final);
}

#[tokio::test]
async fn a_bounded_shutdown_that_writes_everything_journals_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let journal = folder.path().join("j.jsonl");
    let store = Arc::new(ScriptedStore::default());
    let recorder = journaled(store.clone(), 1000, &journal, Pricing::default()).await;
    for i in 0..30 {
        recorder.record(record(&format!("req-{i}"), status::COMPLETED, true));
    }
    let report = recorder.shutdown_within(Duration::from_secs(60)).await;
    assert_eq!((report.journaled, report.lost), (0, 0));
    assert_eq!(store.rows.lock().unwrap().len(), 30);
    assert!(!journal.exists());
}

/// A running request's state as an observer holding a live view sees it: `None` once ended.
struct LiveView(Arc<Mutex<Option<&'static str>>>);

impl ccf_store::DeferredRecord for LiveView {
    fn is_final(&self) -> bool {
        false
    }

    fn to_record(&self) -> Option<UsageRecord> {
        let status_value = (*self.0.lock().unwrap())?;
        Some(record("req-live", status_value, false))
    }
}

#[tokio::test]
async fn a_live_state_is_read_when_written_and_one_that_ended_writes_nothing() {
    let store = Arc::new(ScriptedStore::default());
    let recorder = Recorder::spawn(
        store.clone(),
        settings(10, Duration::from_secs(3600)),
        Pricing::default(),
    );
    let state = Arc::new(Mutex::new(Some(status::PENDING)));
    recorder.record_deferred(1, Box::new(LiveView(Arc::clone(&state))));
    // Changed after the hand-over, not handed over again: the write shows it.
    *state.lock().unwrap() = Some(status::PROCESSING);
    recorder.flush().await;
    let rows = store.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows["req-live"].record().status, status::PROCESSING);
    store.rows.lock().unwrap().clear();

    // The request ended before the write: nothing is written for it, not even an empty batch.
    let batches = store.batches.load(Ordering::SeqCst);
    recorder.record_deferred(1, Box::new(LiveView(Arc::clone(&state))));
    *state.lock().unwrap() = None;
    recorder.flush().await;
    assert!(store.rows.lock().unwrap().is_empty());
    assert_eq!(store.batches.load(Ordering::SeqCst), batches);
    assert_eq!(recorder.backlog(), 0);
}
