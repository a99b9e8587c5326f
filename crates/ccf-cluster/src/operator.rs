//! Operator actions through Redis: [`RedisSharedState`], the `ccf_store::SharedState` the
//! application's operator-state poller (ccf-app `cluster.rs`) uses when no MySQL store holds
//! `cluster_state`, and [`OperatorNotifier`], which turns that poller's 500 ms period into
//! milliseconds: the instance that wrote an action says so on the operator channel, and every
//! other instance's poller is woken to read it now.
//!
//! The state is one hash (`Names::operator_state`): field = scope (`group:<name>`,
//! `endpoint:<name>`, `active`), value = `<version>\n<JSON>` with the JSON holding the state,
//! the writer and the time. Writes are compare-and-set on the version in one Lua script, the same
//! contract as the MySQL table (`ccf-store-mysql`'s `shared.rs`): a stale writer gets
//! `Conflict`, re-reads and retries, and no write is lost. Nothing here expires: operator
//! actions are durable until changed.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ccf_store::{ApplyOutcome, SharedChange, SharedSetting, SharedState, StoreError};
use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::link::Link;
use crate::outbox::Outgoing;
use crate::wire::{from_unix_ms, unix_ms};

/// Longest wait for one operator-state command (the poller runs off the request path).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-set of one scope: KEYS[1] the hash, ARGV[1] the scope, ARGV[2] the expected
/// version (0: must not exist), ARGV[3] the JSON to store. Returns the new version, or -1 on a
/// version mismatch.
static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local current = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if current then version = tonumber(string.match(current, '^(%d+)')) or 0 end
if version ~= tonumber(ARGV[2]) then return -1 end
local next_version = version + 1
redis.call('HSET', KEYS[1], ARGV[1], next_version .. '\n' .. ARGV[3])
return next_version",
    )
});

/// The JSON part of a stored scope.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSetting {
    state: String,
    updated_by: String,
    updated_at_ms: u64,
}

/// The operator state on Redis (see the module docs).
pub struct RedisSharedState {
    manager: ConnectionManager,
    link: Arc<Link>,
}

impl std::fmt::Debug for RedisSharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSharedState")
            .field("address", &self.link.state.address())
            .finish_non_exhaustive()
    }
}

impl RedisSharedState {
    pub(crate) fn new(manager: ConnectionManager, link: Arc<Link>) -> RedisSharedState {
        RedisSharedState { manager, link }
    }

    /// Runs `command`, bounded; Redis errors become `StoreError::Unavailable`, password masked.
    async fn query<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, StoreError> {
        let mut manager = self.manager.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, command.query_async::<T>(&mut manager)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.unavailable(&error.to_string())),
            Err(_) => {
                Err(self.unavailable(&format!("no answer from Redis within {COMMAND_TIMEOUT:?}")))
            }
        }
    }

    fn unavailable(&self, message: &str) -> StoreError {
        StoreError::Unavailable {
            message: format!(
                "operator state on Redis ({}): {}",
                self.link.state.address(),
                self.link.state.mask(message)
            ),
            source: None,
        }
    }
}

/// A stored value as a setting; `None` when it is not one (written by something else).
fn setting(scope: String, value: &str) -> Option<SharedSetting> {
    let (version, json) = value.split_once('\n')?;
    let stored: StoredSetting = serde_json::from_str(json).ok()?;
    Some(SharedSetting {
        scope,
        state: stored.state,
        version: version.parse().ok()?,
        updated_by: stored.updated_by,
        updated_at: Some(from_unix_ms(stored.updated_at_ms)),
    })
}

#[async_trait]
impl SharedState for RedisSharedState {
    async fn load_all(&self) -> Result<Vec<SharedSetting>, StoreError> {
        let mut command = redis::cmd("HGETALL");
        command.arg(self.link.names.operator_state());
        let pairs: Vec<(String, String)> = self.query(command).await?;
        let mut settings: Vec<SharedSetting> = pairs
            .into_iter()
            .filter_map(|(scope, value)| setting(scope, &value))
            .collect();
        // As the MySQL table: oldest write first.
        settings.sort_by(|a, b| {
            (a.updated_at, a.scope.as_str()).cmp(&(b.updated_at, b.scope.as_str()))
        });
        Ok(settings)
    }

    async fn load(&self, scope: &str) -> Result<Option<SharedSetting>, StoreError> {
        let mut command = redis::cmd("HGET");
        command.arg(self.link.names.operator_state()).arg(scope);
        let value: Option<String> = self.query(command).await?;
        Ok(value.and_then(|value| setting(scope.to_string(), &value)))
    }

    async fn apply(
        &self,
        change: &SharedChange,
        expected_version: u64,
    ) -> Result<ApplyOutcome, StoreError> {
        let stored = StoredSetting {
            state: change.state.clone(),
            updated_by: change.updated_by.clone(),
            updated_at_ms: unix_ms(SystemTime::now()),
        };
        let json = serde_json::to_string(&stored)
            .map_err(|error| StoreError::InvalidInput(error.to_string()))?;
        let mut invocation = COMPARE_AND_SET.key(self.link.names.operator_state());
        invocation
            .arg(&change.scope)
            .arg(expected_version)
            .arg(json);
        let mut manager = self.manager.clone();
        let result: i64 = match tokio::time::timeout(
            COMMAND_TIMEOUT,
            invocation.invoke_async(&mut manager),
        )
        .await
        {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => return Err(self.unavailable(&error.to_string())),
            Err(_) => {
                return Err(
                    self.unavailable(&format!("no answer from Redis within {COMMAND_TIMEOUT:?}"))
                )
            }
        };
        Ok(match u64::try_from(result) {
            Ok(version) => ApplyOutcome::Applied { version },
            Err(_) => ApplyOutcome::Conflict,
        })
    }
}

/// Says "operator state changed" to the other instances, and hears them say it.
#[derive(Debug, Clone)]
pub struct OperatorNotifier {
    link: Arc<Link>,
}

impl OperatorNotifier {
    pub(crate) fn new(link: Arc<Link>) -> OperatorNotifier {
        OperatorNotifier { link }
    }

    /// Tells every other instance to read the operator state now; call after writing it.
    /// Never waits: the message goes out with the writer's next batch (after the link is back
    /// when Redis is down).
    pub fn notify(&self) {
        self.link.outbox.push(Outgoing::OperatorChanged);
    }

    /// A receiver whose value changes whenever another instance said the operator state
    /// changed, and after every (re)connection to Redis (a message may have been missed):
    /// wait on `changed()` next to the poll interval.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.link.operator_changes.subscribe()
    }
}
