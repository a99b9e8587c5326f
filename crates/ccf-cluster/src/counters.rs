//! The link's side of the per-key counters (`keys.rs`): what the link needs from them, as the
//! [`KeyStore`] trait (a seam: the writer's tests use a fake), and the one place they are made
//! ([`key_store`]).
//!
//! The counters themselves (shared rate windows, concurrency leases, spend totals, all Lua
//! scripts on Redis) live in `keys.rs`; the link only hands them to the engine while Redis is
//! reachable (`ClusterLink::key_counters`), runs their lease refresh, and lets the writer add a
//! key's spend to the shared totals before publishing the totals instead of the local amount.

use std::sync::Arc;

use ccf_proxy::cluster::{SharedKeyCounters, SharedUpdate};
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;

use crate::keys::RedisKeyCounters;
use crate::names::Names;

/// What the link needs from the per-key counters.
pub(crate) trait KeyStore: Send + Sync {
    /// The counters the engine asks on the request path.
    fn counters(&self) -> Arc<dyn SharedKeyCounters>;

    /// Adds a `Spend` update's amount to the key's shared day and month totals (the first
    /// instance seeds them with its local totals) and returns the totals as a `Spend` to publish
    /// instead (`None`: publish the local update as it is).
    fn record_spend<'a>(
        &'a self,
        update: &'a SharedUpdate,
    ) -> BoxFuture<'a, Result<Option<SharedUpdate>, redis::RedisError>>;

    /// Starts the task that extends this instance's live concurrency leases.
    fn spawn_lease_refresh(&self) -> Option<JoinHandle<()>>;
}

/// The per-key counters (`keys::RedisKeyCounters`) on `manager` under `names`, for this
/// process (`sender`: the instance id and a per-process nonce, so that two instances
/// configured with the same id still hold distinct leases).
pub(crate) fn key_store(
    manager: &ConnectionManager,
    names: &Names,
    sender: &str,
) -> Option<Arc<dyn KeyStore>> {
    Some(Arc::new(RedisKeys(Arc::new(RedisKeyCounters::new(
        manager.clone(),
        names.prefix(),
        sender,
    )))))
}

/// [`KeyStore`] on the key counters of `keys.rs`.
struct RedisKeys(Arc<RedisKeyCounters>);

impl KeyStore for RedisKeys {
    fn counters(&self) -> Arc<dyn SharedKeyCounters> {
        Arc::clone(&self.0) as Arc<dyn SharedKeyCounters>
    }

    fn record_spend<'a>(
        &'a self,
        update: &'a SharedUpdate,
    ) -> BoxFuture<'a, Result<Option<SharedUpdate>, redis::RedisError>> {
        Box::pin(self.0.record_spend(update))
    }

    fn spawn_lease_refresh(&self) -> Option<JoinHandle<()>> {
        Some(self.0.spawn_lease_refresh())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ccf_proxy::cluster::{RateAdmission, SharedSlot, SharedUnavailable};

    use super::*;

    /// Key counters that answer nothing, and a spend ledger that counts its calls and says the
    /// day's total is 10 and the month's 100.
    #[derive(Debug, Default)]
    pub(crate) struct FakeStore {
        pub(crate) spends: AtomicUsize,
    }

    impl FakeStore {
        pub(crate) fn new() -> Arc<FakeStore> {
            Arc::new(FakeStore::default())
        }
    }

    impl SharedKeyCounters for FakeStore {
        fn admit_rate<'a>(
            &'a self,
            _key: &'a str,
            _limit: u32,
        ) -> BoxFuture<'a, Result<RateAdmission, SharedUnavailable>> {
            Box::pin(async { Err(SharedUnavailable("fake".into())) })
        }

        fn acquire_slot<'a>(
            &'a self,
            _key: &'a str,
            _limit: u32,
        ) -> BoxFuture<'a, Result<Option<SharedSlot>, SharedUnavailable>> {
            Box::pin(async { Err(SharedUnavailable("fake".into())) })
        }
    }

    impl KeyStore for FakeStore {
        fn counters(&self) -> Arc<dyn SharedKeyCounters> {
            Arc::new(FakeStore::default())
        }

        fn record_spend<'a>(
            &'a self,
            update: &'a SharedUpdate,
        ) -> BoxFuture<'a, Result<Option<SharedUpdate>, redis::RedisError>> {
            self.spends.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let SharedUpdate::Spend {
                    key,
                    at,
                    day_start,
                    month_start,
                    ..
                } = update
                else {
                    return Ok(None);
                };
                Ok(Some(SharedUpdate::Spend {
                    key: key.clone(),
                    usd: 0.0,
                    at: *at,
                    day_start: *day_start,
                    day_usd: 10.0,
                    month_start: *month_start,
                    month_usd: 100.0,
                }))
            })
        }

        fn spawn_lease_refresh(&self) -> Option<JoinHandle<()>> {
            None
        }
    }
}
