//! A key's rate, concurrency and spend counted once for every instance (issue #21: "per-key
//! rate / concurrency / budget counters, atomic, so N instances enforce one budget"), as Lua
//! scripts on Redis: [`RedisKeyCounters`] is the engine's
//! [`SharedKeyCounters`](ccf_proxy::cluster::SharedKeyCounters).
//!
//! - Rate: a sorted set per key ([`Names::rate`]) of the admissions of the last minute (score:
//!   admission time, unix ms; member: unique per admission). The script drops what left the
//!   window, counts, and adds one when under the limit, else says when the oldest leaves.
//! - Concurrency: a sorted set per key ([`Names::slots`]) of leases (score: lease end, unix ms;
//!   member: `<instance>:<counter>`). The script drops lapsed leases and adds one when fewer
//!   than the limit are held. Dropping the [`SharedSlot`] removes the lease (in the background);
//!   the lease refresh task ([`RedisKeyCounters::spawn_lease_refresh`]) extends this instance's
//!   live leases, so a lease only lapses when its instance died (or lost Redis for a lease).
//! - Spend: a float per key and budget period ([`Names::spend_day`], [`Names::spend_month`]),
//!   seeded by the first instance that writes it with its local total (store-seeded at start),
//!   then incremented by each instance's amounts ([`RedisKeyCounters::record_spend`]).
//!
//! Every time is Redis's own clock (`TIME` inside the scripts), so instances with skewed clocks
//! still count one window. Every script is one atomic step on the server; nothing here waits
//! for Redis longer than the caller lets it (the engine bounds each call by
//! `cluster.redis_timeout` and drops the future past it). It must not decide what a refusal
//! means for a request: that is the engine's (`ccf_proxy::key_limits`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_proxy::cluster::{
    RateAdmission, SharedKeyCounters, SharedSlot, SharedUnavailable, SharedUpdate,
};
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::names::Names;
use crate::wire::ttl_millis;

/// The rolling window `requests_per_minute` counts in.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How long a concurrency lease lasts without a refresh: longer than any pause of a live
/// instance's refresh task, short enough that a dead instance's slots come back soon.
const LEASE: Duration = Duration::from_secs(30);

/// How long a day's spend total is kept (the day, plus a day for late outcomes and zones).
const SPEND_DAY_TTL: Duration = Duration::from_secs(2 * 86_400);

/// How long a month's spend total is kept (the longest month, plus a few days).
const SPEND_MONTH_TTL: Duration = Duration::from_secs(35 * 86_400);

/// Longest wait for the removal of a released lease (in a background task; past it the lease
/// lapses on its own).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// `KEYS[1]` the rate set; `ARGV` limit, member, window (ms). Returns `{1, 0}` when counted,
/// `{0, ms until the oldest admission leaves}` when full.
const RATE_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local frees_in = tonumber(oldest[2]) + window - now
if frees_in < 1 then frees_in = 1 end
return {0, frees_in}
";

/// `KEYS[1]` the slot set; `ARGV` limit, member, lease (ms). Returns 1 when the lease was
/// taken, 0 when `limit` live leases are held. The set expires with its last lease.
const ACQUIRE_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
return 1
";

/// `KEYS[1]` the slot set; `ARGV` lease (ms), then the members to extend. Only leases still
/// held are extended (`XX`): a lease that lapsed while Redis was away stays gone, so the
/// limit is never exceeded by a refresh. Returns how many were extended.
const REFRESH_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_end = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local extended = 0
for i = 2, #ARGV do
  extended = extended + redis.call('ZADD', KEYS[1], 'XX', 'CH', lease_end, ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]))
end
return extended
";

/// `KEYS` the day total, the month total; `ARGV` amount, local day total, local month total,
/// day TTL (s), month TTL (s). A total that does not exist yet is set to the local total
/// (which includes the amount), else incremented by the amount. Returns both totals.
const SPEND_SCRIPT: &str = r"
local function add(key, amount, local_total, ttl)
  local total
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, local_total)
    total = local_total
  else
    total = redis.call('INCRBYFLOAT', key, amount)
  end
  redis.call('EXPIRE', key, ttl)
  return total
end
local day = add(KEYS[1], ARGV[1], ARGV[2], ARGV[4])
local month = add(KEYS[2], ARGV[1], ARGV[3], ARGV[5])
return {day, month}
";

/// The shared per-key counters of one instance on Redis (see the module doc). Cheap to share
/// behind an `Arc`; the lease refresh task holds only a weak reference.
pub struct RedisKeyCounters {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisKeyCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeyCounters")
            .field("prefix", &self.inner.names.prefix())
            .field("instance", &self.inner.instance)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// What the counters, their released slots and the refresh task share.
struct Inner {
    connection: ConnectionManager,
    names: Names,
    instance: String,
    lease: Duration,
    /// Makes every member this instance writes unique.
    next_member: AtomicU64,
    /// This instance's live leases: member -> slot set key (what the refresh extends).
    leases: Mutex<HashMap<String, String>>,
    rate: Script,
    acquire: Script,
    refresh: Script,
    spend: Script,
}

impl RedisKeyCounters {
    /// Counters under the key prefix `prefix` (`cluster.redis_prefix`) for the instance named
    /// `instance` (unique among the instances sharing the prefix), on `connection`, with
    /// 30-second concurrency leases.
    pub fn new(connection: ConnectionManager, prefix: &str, instance: &str) -> RedisKeyCounters {
        RedisKeyCounters::with_lease(connection, prefix, instance, LEASE)
    }

    /// The same with concurrency leases of `lease` (refreshed every third of it); tests use a
    /// short one to see a dead instance's leases lapse.
    pub fn with_lease(
        connection: ConnectionManager,
        prefix: &str,
        instance: &str,
        lease: Duration,
    ) -> RedisKeyCounters {
        RedisKeyCounters {
            inner: Arc::new(Inner {
                connection,
                names: Names::new(prefix),
                instance: instance.to_string(),
                lease: lease.max(Duration::from_millis(3)),
                next_member: AtomicU64::new(0),
                leases: Mutex::new(HashMap::new()),
                rate: Script::new(RATE_SCRIPT),
                acquire: Script::new(ACQUIRE_SCRIPT),
                refresh: Script::new(REFRESH_SCRIPT),
                spend: Script::new(SPEND_SCRIPT),
            }),
        }
    }

    /// Starts the task that extends this instance's live concurrency leases every third of
    /// the lease (10 s by default). It ends by itself when the counters are dropped; abort the
    /// handle to stop it sooner. A failed round is logged at debug and tried again next time:
    /// a lease lapses only when no round reaches Redis for a whole lease.
    pub fn spawn_lease_refresh(&self) -> JoinHandle<()> {
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.lease / 3;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                // A round that hangs (Redis unreachable) is given up at the next tick's time.
                match tokio::time::timeout(every, inner.refresh_leases()).await {
                    Ok(Ok(_extended)) => {}
                    Ok(Err(error)) => {
                        debug!(%error, "shared concurrency leases not refreshed; next round retries");
                    }
                    Err(_) => {
                        debug!("shared concurrency lease refresh timed out; next round retries")
                    }
                }
            }
        })
    }

    /// Extends every live lease of this instance now (what each round of the refresh task
    /// does); returns how many were extended.
    pub async fn refresh_leases(&self) -> Result<u64, RedisError> {
        self.inner.refresh_leases().await
    }

    /// Adds a key's spend ([`SharedUpdate::Spend`]) to the shared day and month totals and
    /// returns them as a `Spend` with `usd` 0, for every instance to apply as a maximum.
    /// The first instance to write a period's total seeds it with its own total (which
    /// includes this amount); later ones add the amount. `None` for any other update.
    pub async fn record_spend(
        &self,
        update: &SharedUpdate,
    ) -> Result<Option<SharedUpdate>, RedisError> {
        let SharedUpdate::Spend {
            key,
            usd,
            at,
            day_start,
            day_usd,
            month_start,
            month_usd,
        } = update
        else {
            return Ok(None);
        };
        let inner = &self.inner;
        let mut connection = inner.connection.clone();
        let (day_total, month_total): (f64, f64) = inner
            .spend
            .key(inner.names.spend_day(key, unix_secs(*day_start)))
            .key(inner.names.spend_month(key, unix_secs(*month_start)))
            .arg(usd.to_string())
            .arg(day_usd.to_string())
            .arg(month_usd.to_string())
            .arg(SPEND_DAY_TTL.as_secs())
            .arg(SPEND_MONTH_TTL.as_secs())
            .invoke_async(&mut connection)
            .await?;
        Ok(Some(SharedUpdate::Spend {
            key: key.clone(),
            usd: 0.0,
            at: *at,
            day_start: *day_start,
            day_usd: day_total,
            month_start: *month_start,
            month_usd: month_total,
        }))
    }
}

impl Inner {
    fn leases(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A member no other admission or lease (of any instance) has.
    fn member(&self) -> String {
        let counter = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!("{}:{counter}", self.instance)
    }

    async fn admit_rate(&self, key: &str, limit: u32) -> Result<RateAdmission, RedisError> {
        let mut connection = self.connection.clone();
        let (admitted, frees_in_ms): (u8, u64) = self
            .rate
            .key(self.names.rate(key))
            .arg(limit)
            .arg(self.member())
            .arg(ttl_millis(RATE_WINDOW))
            .invoke_async(&mut connection)
            .await?;
        Ok(if admitted == 1 {
            RateAdmission::Admitted
        } else {
            RateAdmission::Full {
                retry_after: Duration::from_millis(frees_in_ms),
            }
        })
    }

    async fn acquire_slot(
        self: &Arc<Self>,
        key: &str,
        limit: u32,
    ) -> Result<Option<SharedSlot>, RedisError> {
        let set = self.names.slots(key);
        let member = self.member();
        // Until the answer is read the lease may exist on the server: if this future is
        // dropped (the engine's timeout) or fails, the guard removes it again.
        let mut pending = Lease::new(self, set.clone(), member.clone());
        let mut connection = self.connection.clone();
        let taken: u8 = self
            .acquire
            .key(&set)
            .arg(limit)
            .arg(&member)
            .arg(ttl_millis(self.lease))
            .invoke_async(&mut connection)
            .await?;
        if taken != 1 {
            pending.disarm();
            return Ok(None);
        }
        self.leases().insert(member, set);
        Ok(Some(SharedSlot::new(move || drop(pending))))
    }

    async fn refresh_leases(&self) -> Result<u64, RedisError> {
        let mut by_set: HashMap<String, Vec<String>> = HashMap::new();
        for (member, set) in self.leases().iter() {
            by_set.entry(set.clone()).or_default().push(member.clone());
        }
        let mut extended = 0;
        for (set, members) in by_set {
            let mut connection = self.connection.clone();
            let mut invocation = self.refresh.key(&set);
            invocation.arg(ttl_millis(self.lease));
            for member in &members {
                invocation.arg(member);
            }
            let count: u64 = invocation.invoke_async(&mut connection).await?;
            extended += count;
        }
        Ok(extended)
    }
}

/// A lease this instance may hold: removed from Redis (in the background) and from the
/// refresh list when dropped, unless disarmed.
struct Lease {
    inner: Weak<Inner>,
    runtime: Option<Handle>,
    set: String,
    member: String,
    armed: bool,
}

impl Lease {
    fn new(inner: &Arc<Inner>, set: String, member: String) -> Lease {
        Lease {
            inner: Arc::downgrade(inner),
            runtime: Handle::try_current().ok(),
            set,
            member,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        inner.leases().remove(&self.member);
        let Some(runtime) = &self.runtime else {
            return;
        };
        let mut connection = inner.connection.clone();
        let set = std::mem::take(&mut self.set);
        let member = std::mem::take(&mut self.member);
        runtime.spawn(async move {
            let mut command = redis::cmd("ZREM");
            command.arg(&set).arg(&member);
            let removal = command.query_async::<u64>(&mut connection);
            match tokio::time::timeout(RELEASE_TIMEOUT, removal).await {
                Ok(Ok(_removed)) => {}
                Ok(Err(error)) => {
                    debug!(%error, "shared concurrency lease not released; it lapses by itself");
                }
                Err(_) => debug!("shared concurrency lease release timed out; it lapses by itself"),
            }
        });
    }
}

impl SharedKeyCounters for RedisKeyCounters {
    fn admit_rate<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<RateAdmission, SharedUnavailable>> {
        Box::pin(async move { self.inner.admit_rate(key, limit).await.map_err(unavailable) })
    }

    fn acquire_slot<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Option<SharedSlot>, SharedUnavailable>> {
        Box::pin(async move {
            self.inner
                .acquire_slot(key, limit)
                .await
                .map_err(unavailable)
        })
    }
}

/// The engine's "decide locally" error for a Redis error (Redis errors carry no URL, so no
/// credentials).
fn unavailable(error: RedisError) -> SharedUnavailable {
    SharedUnavailable(error.to_string())
}

/// `time` as whole seconds since the Unix epoch (0 before it).
fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
