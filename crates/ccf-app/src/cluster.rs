//! Several instances, one store: operator actions shared through the MySQL `cluster_state`
//! table, or a Redis hash when Redis links instances without MySQL ([`ccf_store::SharedState`];
//! with Redis, every write is also announced so every instance reads the state at once).
//!
//! Every operator action made on this instance (pause, resume, activate, priority) is reported by
//! the engine ([`ccf_proxy::OperatorObserver`]) and written to one row per scope:
//!
//! | scope | state (JSON) |
//! |---|---|
//! | `group:<name>` | `{"paused": bool, "paused_until": "<RFC 3339 UTC>" or null}` |
//! | `endpoint:<name>` | `{"priority": n}` |
//! | `active` | `{"group": "<name>", "force": bool}` (the last operator activation) |
//!
//! Writes are compare-and-set on the row's version; a conflicting writer re-reads the version and
//! writes again (last writer wins per scope, nothing is lost). Every [`POLL_INTERVAL`] the task
//! reads the table and applies each row whose version it has not seen yet with
//! [`ccf_proxy::Forwarder::apply_remote`], which does not report the action again, so there is
//! no echo; the versions this instance wrote itself are remembered as seen. Rows are applied in
//! the order `active`, then groups, then endpoints, so an activation followed by a pause ends
//! paused. Pending writes go out before each poll, so a poll never undoes a local action whose
//! write is still waiting. Health, cooldowns and latency stay per instance.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_config::{Config, StorageTarget};
use ccf_proxy::{Forwarder, OperatorAction, OperatorObserver};
use ccf_store::time::{format_timestamp, parse_timestamp};
use ccf_store::{ApplyOutcome, LegacyZone, SharedChange, SharedSetting, SharedState};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::AppError;

/// How often the shared table is read: a remote action is obeyed within about this long.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Longest wait for the first synchronisation at start-up and the last flush at shutdown.
const EDGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Compare-and-set attempts per write before it waits for the next tick.
const MAX_CAS_ATTEMPTS: usize = 16;

/// The operator state shared by several instances (MySQL or Redis), opened but not running yet.
pub(crate) struct Cluster {
    store: Arc<dyn SharedState>,
    /// With Redis (`cluster.redis_url`), the fast path of operator actions: after this
    /// instance wrote an action it tells the others, and an instance told polls at once instead
    /// of at its next tick, so an action is obeyed everywhere within milliseconds. The table
    /// stays the record; a lost message only delays an action to the next poll.
    notifier: Option<ccf_cluster::OperatorNotifier>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// Opens the shared operator state: the MySQL `cluster_state` table when usage tracking is on
/// and stored in MySQL/MariaDB (a small pool of its own; call after the usage store migrated,
/// migration 4 creates the table), else a Redis hash when the instances are linked through
/// Redis (`cluster.redis_url`), else `None` (a single instance). With Redis, an action is
/// announced on it so every instance reads the state at once.
pub(crate) async fn open(
    config: &Config,
    redis: Option<&ccf_cluster::RedisCluster>,
) -> Result<Option<Cluster>, AppError> {
    let notifier = redis.map(ccf_cluster::RedisCluster::operator_notifier);
    let mysql = match config.usage_tracking.storage() {
        StorageTarget::Mysql(target) if config.usage_tracking.enabled => Some(target),
        _ => None,
    };
    let store: Arc<dyn SharedState> = match (mysql, redis) {
        (Some(mut target), _) => {
            target.max_open_conns = 2;
            target.max_idle_conns = 1;
            Arc::new(
                MysqlStore::connect(&target, MysqlOptions::default())
                    .await
                    .map_err(AppError::Store)?,
            )
        }
        (None, Some(redis)) => redis.shared_state(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Cluster { store, notifier }))
}

/// The running synchronisation; [`ClusterTask::stop`] flushes pending writes and ends it.
#[derive(Debug)]
pub(crate) struct ClusterTask {
    stop: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

impl ClusterTask {
    /// Stops polling, writes what is pending (bounded by a timeout) and waits for the task.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.join.await;
    }
}

impl Cluster {
    /// Hooks into the engine's operator actions, applies the shared state once (bounded by a
    /// timeout, so a slow database does not hold start-up), then keeps polling in a task.
    pub(crate) async fn start(self, forwarder: Forwarder, instance_id: String) -> ClusterTask {
        let (sender, receiver) = mpsc::unbounded_channel();
        forwarder.set_operator_observer(Arc::new(ActionSender(sender)));
        let mut sync = OperatorSync {
            store: self.store,
            forwarder,
            instance_id,
            seen: HashMap::new(),
            pending: VecDeque::new(),
            failing: false,
            notifier: self.notifier,
        };
        if tokio::time::timeout(EDGE_TIMEOUT, sync.poll())
            .await
            .is_err()
        {
            warn!("shared operator state not read at start-up (timed out); retrying in the background");
        }
        let stop = CancellationToken::new();
        let token = stop.clone();
        let join = tokio::spawn(sync.run(receiver, token));
        ClusterTask { stop, join }
    }
}

struct ActionSender(mpsc::UnboundedSender<OperatorAction>);

impl OperatorObserver for ActionSender {
    fn on_action(&self, action: &OperatorAction) {
        let _ = self.0.send(action.clone());
    }
}

struct OperatorSync {
    store: Arc<dyn SharedState>,
    forwarder: Forwarder,
    instance_id: String,
    /// Highest version of each scope applied here or written from here.
    seen: HashMap<String, u64>,
    /// Scope states waiting to be written, oldest first.
    pending: VecDeque<(String, Value)>,
    /// The last database call failed (logged once per outage).
    failing: bool,
    /// The Redis fast path, when the instances are linked through Redis.
    /// The Redis fast path, as in [`Cluster`].
    notifier: Option<ccf_cluster::OperatorNotifier>,
}

impl OperatorSync {
    async fn run(
        mut self,
        mut actions: mpsc::UnboundedReceiver<OperatorAction>,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed = self
            .notifier
            .as_ref()
            .map(ccf_cluster::OperatorNotifier::subscribe);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                action = actions.recv() => {
                    let Some(action) = action else { break };
                    self.pending.extend(changes(&action));
                    while let Ok(action) = actions.try_recv() {
                        self.pending.extend(changes(&action));
                    }
                    if self.flush().await {
                        if let Some(notifier) = &self.notifier {
                            notifier.notify();
                        }
                    }
                }
                said = wait_changed(changed.as_mut()) => {
                    if said.is_err() {
                        // The link is gone (shutting down): back to the poll interval.
                        changed = None;
                    } else if self.flush().await {
                        self.poll().await;
                    }
                }
                _ = ticker.tick() => {
                    if self.flush().await {
                        self.poll().await;
                    }
                }
            }
        }
        while let Ok(action) = actions.try_recv() {
            self.pending.extend(changes(&action));
        }
        if !self.pending.is_empty()
            && tokio::time::timeout(EDGE_TIMEOUT, self.flush())
                .await
                .is_err()
        {
            warn!(
                pending = self.pending.len(),
                "operator actions not shared before shutdown"
            );
        }
    }

    /// Writes every pending state; `true` when nothing is left.
    async fn flush(&mut self) -> bool {
        while let Some((scope, state)) = self.pending.front().cloned() {
            match self.write(&scope, &state).await {
                Ok(true) => {
                    self.pending.pop_front();
                }
                Ok(false) => return false,
                Err(error) => {
                    self.failed(&error);
                    return false;
                }
            }
        }
        true
    }

    /// One scope, compare-and-set on the version last seen, re-reading it on conflict.
    async fn write(&mut self, scope: &str, state: &Value) -> Result<bool, ccf_store::StoreError> {
        let change = SharedChange {
            scope: scope.to_string(),
            state: state.to_string(),
            updated_by: self.instance_id.clone(),
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let expected = self.seen.get(scope).copied().unwrap_or(0);
            match self.store.apply(&change, expected).await? {
                ApplyOutcome::Applied { version } => {
                    self.recovered();
                    debug!(scope, version, "operator action shared");
                    self.seen.insert(scope.to_string(), version);
                    return Ok(true);
                }
                ApplyOutcome::Conflict => {
                    // Another instance wrote first; ours is newer, so it overwrites that version.
                    let current = self.store.load(scope).await?;
                    self.seen.insert(
                        scope.to_string(),
                        current.map_or(0, |setting| setting.version),
                    );
                }
            }
        }
        warn!(
            scope,
            "shared state kept changing under this write; retrying"
        );
        Ok(false)
    }

    /// Reads the table and applies what changed elsewhere.
    async fn poll(&mut self) {
        let settings = match self.store.load_all().await {
            Ok(settings) => settings,
            Err(error) => {
                self.failed(&error);
                return;
            }
        };
        self.recovered();
        let mut fresh: Vec<SharedSetting> = settings
            .into_iter()
            .filter(|setting| {
                self.seen
                    .get(&setting.scope)
                    .is_none_or(|seen| setting.version > *seen)
            })
            .collect();
        fresh.sort_by_key(|setting| scope_rank(&setting.scope));
        for setting in fresh {
            self.seen.insert(setting.scope.clone(), setting.version);
            let Some(action) = action_of(&setting) else {
                debug!(scope = %setting.scope, "shared state not understood; ignored");
                continue;
            };
            match self.forwarder.apply_remote(&action) {
                Ok(()) => info!(
                    from = %setting.updated_by,
                    version = setting.version,
                    ?action,
                    "operator action from another instance applied"
                ),
                Err(error) => info!(
                    from = %setting.updated_by,
                    ?action,
                    "operator action from another instance not applied here: {error}"
                ),
            }
        }
    }

    fn failed(&mut self, error: &ccf_store::StoreError) {
        if !self.failing {
            warn!("shared operator state unavailable: {error}");
            self.failing = true;
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            warn!("shared operator state available again");
            self.failing = false;
        }
    }
}

/// Waits until another instance says operator state changed; never, without a Redis link.
async fn wait_changed(
    changed: Option<&mut tokio::sync::watch::Receiver<u64>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match changed {
        Some(changed) => changed.changed().await,
        None => std::future::pending().await,
    }
}

/// `active` first, then groups, then endpoints.
fn scope_rank(scope: &str) -> u8 {
    if scope == "active" {
        0
    } else if scope.starts_with("group:") {
        1
    } else {
        2
    }
}

/// The rows an action writes.
fn changes(action: &OperatorAction) -> Vec<(String, Value)> {
    match action {
        OperatorAction::Activate { group, force } => vec![
            (
                format!("group:{group}"),
                json!({"paused": false, "paused_until": null}),
            ),
            (
                "active".to_string(),
                json!({"group": group, "force": force}),
            ),
        ],
        OperatorAction::Pause { group, until } => vec![(
            format!("group:{group}"),
            json!({"paused": true, "paused_until": until.map(format_timestamp)}),
        )],
        OperatorAction::Resume { group } => vec![(
            format!("group:{group}"),
            json!({"paused": false, "paused_until": null}),
        )],
        OperatorAction::Priority { endpoint, priority } => vec![(
            format!("endpoint:{endpoint}"),
            json!({"priority": priority}),
        )],
    }
}

/// The action that brings a local router to a row's state.
fn action_of(setting: &SharedSetting) -> Option<OperatorAction> {
    let state: Value = serde_json::from_str(&setting.state).ok()?;
    if setting.scope == "active" {
        return Some(OperatorAction::Activate {
            group: state.get("group")?.as_str()?.to_string(),
            force: state.get("force").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    if let Some(group) = setting.scope.strip_prefix("group:") {
        let group = group.to_string();
        let paused = state.get("paused")?.as_bool()?;
        if !paused {
            return Some(OperatorAction::Resume { group });
        }
        let until: Option<SystemTime> = match state.get("paused_until") {
            None | Some(Value::Null) => None,
            Some(value) => Some(parse_timestamp(value.as_str()?, LegacyZone::Utc)?),
        };
        return Some(OperatorAction::Pause { group, until });
    }
    if let Some(endpoint) = setting.scope.strip_prefix("endpoint:") {
        return Some(OperatorAction::Priority {
            endpoint: endpoint.to_string(),
            priority: u32::try_from(state.get("priority")?.as_u64()?).ok()?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(scope: &str, state: &Value) -> SharedSetting {
        SharedSetting {
            scope: scope.to_string(),
            state: state.to_string(),
            version: 1,
            updated_by: "other".to_string(),
            updated_at: None,
        }
    }

    #[test]
    fn every_action_round_trips_through_its_rows() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_micros(1_760_000_000_123_456);
        let actions = [
            OperatorAction::Pause {
                group: "main".into(),
                until: Some(until),
            },
            OperatorAction::Pause {
                group: "main".into(),
                until: None,
            },
            OperatorAction::Resume {
                group: "main".into(),
            },
            OperatorAction::Priority {
                endpoint: "a".into(),
                priority: 7,
            },
        ];
        for action in actions {
            let rows = changes(&action);
            assert_eq!(rows.len(), 1);
            let (scope, state) = &rows[0];
            assert_eq!(action_of(&setting(scope, state)), Some(action.clone()));
        }
        let activate = OperatorAction::Activate {
            group: "backup".into(),
            force: true,
        };
        let rows = changes(&activate);
        assert_eq!(rows[0].0, "group:backup");
        assert_eq!(
            action_of(&setting(&rows[0].0, &rows[0].1)),
            Some(OperatorAction::Resume {
                group: "backup".into()
            })
        );
        assert_eq!(action_of(&setting(&rows[1].0, &rows[1].1)), Some(activate));
    }

    #[test]
    fn activation_is_applied_before_pauses_and_junk_is_ignored() {
        let mut scopes = vec!["endpoint:a", "group:main", "active", "group:b"];
        scopes.sort_by_key(|scope| scope_rank(scope));
        assert_eq!(scopes, ["active", "group:main", "group:b", "endpoint:a"]);
        assert_eq!(action_of(&setting("group:x", &json!("nonsense"))), None);
        assert_eq!(action_of(&setting("other", &json!({}))), None);
        assert_eq!(
            action_of(&setting("endpoint:a", &json!({"priority": -1}))),
            None
        );
    }
}
