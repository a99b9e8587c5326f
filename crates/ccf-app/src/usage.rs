//! Usage tracking: the store adapter chosen by `usage_tracking.database`, the recorder task
//! writing outcomes in batches, and the observer that turns request lifecycles into rows.

use std::sync::Arc;
use std::time::Duration;

use ccf_config::{Config, StorageTarget};
use ccf_lifecycle::{LifecycleEvent, Outcome};
use ccf_proxy::{LiveRequest, RequestObserver};
use ccf_store::{
    BacklogSettings, Cost, DayZone, DeferredRecord, LegacyZone, Pricing, Recorder, RecorderHandle,
    RecorderSettings, UsageStore,
};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};
use tracing::{info, warn};

use crate::AppError;

/// An open store and the recorder writing into it.
#[derive(Clone)]
pub struct UsageTracking {
    /// The database.
    pub store: Arc<dyn UsageStore>,
    /// The batching writer.
    pub recorder: RecorderHandle,
}

impl std::fmt::Debug for UsageTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTracking")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

/// Opens the configured store and applies its migrations, without starting anything (the
/// `migrate` command). Works whether or not `usage_tracking.enabled` is set.
pub async fn migrate(config: &Config) -> Result<ccf_store::MigrationReport, AppError> {
    let store = open_store(config).await?;
    store.migrate().await.map_err(AppError::Store)
}

/// Opens and migrates the configured store and starts the recorder; `None` when usage tracking
/// is off.
pub(crate) async fn open(config: &Config) -> Result<Option<UsageTracking>, AppError> {
    let tracking = &config.usage_tracking;
    if !tracking.enabled {
        return Ok(None);
    }
    let store = open_store(config).await?;
    let report = store.migrate().await.map_err(AppError::Store)?;
    info!(?report, "usage store ready");
    let backlog = BacklogSettings::from_config(tracking);
    info!(
        journal = %backlog.journal.display(),
        buffer_size = backlog.max_records,
        "usage records past buffer_size wait in the journal while the database is unavailable"
    );
    let recorder = Recorder::spawn_with_journal(
        Arc::clone(&store),
        RecorderSettings::from_config(tracking),
        Pricing::from_config(tracking),
        backlog,
    )
    .await
    .map_err(AppError::Journal)?;
    Ok(Some(UsageTracking { store, recorder }))
}

/// Opens the store adapter `usage_tracking.database` selects, without migrating it or starting
/// anything (operator commands such as `export`). Works whether or not `usage_tracking.enabled`
/// is set.
pub async fn open_store(config: &Config) -> Result<Arc<dyn UsageStore>, AppError> {
    let tracking = &config.usage_tracking;
    let database_timezone = tracking
        .database
        .as_ref()
        .and_then(|database| database.timezone.as_deref());
    let legacy_zone = LegacyZone::from_config(database_timezone, config.timezone.as_deref());
    // Usage days ("today", summary rows, daily stats) are days of the configured `timezone`,
    // else the machine's; the legacy zone above only reads what the Go forwarder wrote.
    let day_zone = DayZone::from_config(config.timezone.as_deref());
    let store: Arc<dyn UsageStore> = match tracking.storage() {
        StorageTarget::Sqlite { path } => {
            info!(path = %path.display(), "usage tracking in SQLite");
            let options = SqliteOptions {
                legacy_zone,
                day_zone,
                ..SqliteOptions::default()
            };
            Arc::new(
                SqliteStore::open(&path, options)
                    .await
                    .map_err(AppError::Store)?,
            )
        }
        StorageTarget::Mysql(target) => {
            info!(host = %target.host, database = %target.database, "usage tracking in MySQL");
            let options = MysqlOptions {
                legacy_zone,
                day_zone,
            };
            Arc::new(
                MysqlStore::connect(&target, options)
                    .await
                    .map_err(AppError::Store)?,
            )
        }
    };
    Ok(store)
}

/// Deletes rows older than `retention_days` every `cleanup_interval`; runs until aborted.
pub(crate) async fn retention_loop(
    store: Arc<dyn UsageStore>,
    retention_days: u32,
    interval: Duration,
) {
    if retention_days == 0 {
        return;
    }
    let keep = Duration::from_secs(u64::from(retention_days) * 86_400);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_secs(60)));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(std::time::UNIX_EPOCH);
        match store.cleanup(cutoff).await {
            Ok(report) => info!(?report, "retention clean-up done"),
            Err(error) => warn!("retention clean-up failed: {error}"),
        }
    }
}

/// Writes every request's changes (coalesced by the recorder) and its final outcome, and returns
/// the outcome's cost for `ccf_cost_usd_total` and the per-key spend.
///
/// The request path hands the recorder a running request's live view once (and again only
/// after the recorder has read it), and the final outcome's shared record once; the row is built
/// by the writer task, and only for the state that is written. The final outcome is priced once,
/// by the recorder when it is handed over; the engine counts that same cost in its metrics.
pub(crate) struct StoreObserver {
    pub(crate) recorder: RecorderHandle,
    /// Shared with every pending state: each hand-over copied a `String` before.
    pub(crate) instance_id: Arc<str>,
}

/// A running request waiting in the recorder: its row is made from the state it has when the
/// recorder writes it, not from a copy taken at a change.
struct LiveState {
    request: Arc<LiveRequest>,
    instance_id: Arc<str>,
}

impl DeferredRecord for LiveState {
    fn is_final(&self) -> bool {
        false
    }

    fn to_record(&self) -> Option<ccf_store::UsageRecord> {
        self.request
            .read(|record| ccf_store::UsageRecord::from_request(record, Some(&self.instance_id)))
    }
}

/// A request's final state waiting in the recorder; becomes a row only if it is written.
struct FinalState {
    event: LifecycleEvent,
    instance_id: Arc<str>,
}

impl DeferredRecord for FinalState {
    fn is_final(&self) -> bool {
        true
    }

    fn to_record(&self) -> Option<ccf_store::UsageRecord> {
        Some(ccf_store::UsageRecord::from_request(
            self.event.record(),
            Some(&self.instance_id),
        ))
    }

    /// The record's texts are moved into the row when nothing else holds the record any more
    /// (by the time the writer gets to it, the request's tracker and the event's listeners are
    /// done with it), else copied.
    fn into_record(self: Box<Self>) -> Option<ccf_store::UsageRecord> {
        let FinalState { event, instance_id } = *self;
        Some(match Arc::try_unwrap(event.into_record()) {
            Ok(record) => ccf_store::UsageRecord::from_final_request(record, Some(&instance_id)),
            Err(shared) => ccf_store::UsageRecord::from_request(&shared, Some(&instance_id)),
        })
    }

    /// Priced from the lifecycle record's own fields, as `to_record` would store them (the
    /// model by `RequestRecord::model`, the usage or none), without building the row.
    fn cost(&self, pricing: &Pricing) -> Cost {
        let record = self.event.record();
        match &record.usage {
            Some(usage) => ccf_store::final_cost(pricing, record.model(), usage),
            None => Cost::default(),
        }
    }
}

impl RequestObserver for StoreObserver {
    fn on_live(&self, request: &Arc<LiveRequest>) {
        self.recorder.record_deferred(
            request.id().as_u64(),
            Box::new(LiveState {
                request: Arc::clone(request),
                instance_id: Arc::clone(&self.instance_id),
            }),
        );
    }

    fn on_outcome(&self, outcome: &Outcome) -> Option<f64> {
        let event = outcome.event();
        self.recorder
            .record_deferred(
                event.request_id().as_u64(),
                Box::new(FinalState {
                    event,
                    instance_id: Arc::clone(&self.instance_id),
                }),
            )
            .map(|cost| cost.total_usd())
    }
}

/// Several observers as one.
pub(crate) struct Observers(pub(crate) Vec<Arc<dyn RequestObserver>>);

impl RequestObserver for Observers {
    fn on_event(&self, event: &LifecycleEvent) {
        for observer in &self.0 {
            observer.on_event(event);
        }
    }

    fn on_live(&self, request: &Arc<LiveRequest>) {
        for observer in &self.0 {
            observer.on_live(request);
        }
    }

    /// Every observer is told; the first price given is the outcome's (only the usage recorder
    /// prices).
    fn on_outcome(&self, outcome: &Outcome) -> Option<f64> {
        self.0.iter().fold(None, |priced, observer| {
            let own = observer.on_outcome(outcome);
            priced.or(own)
        })
    }
}

/// `instance_id` from the config, else `<host name>:<port>`.
pub(crate) fn instance_id(config: &Config, port: u16) -> String {
    if let Some(id) = config
        .instance_id
        .as_ref()
        .filter(|id| !id.trim().is_empty())
    {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{port}")
}
