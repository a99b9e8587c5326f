//! The shared per-key counters ([`ccf_cluster::RedisKeyCounters`]) against the real Redis at
//! 127.0.0.1:6379: two counters on one prefix are two instances. Each test owns a random key
//! prefix and deletes its keys at the end, whether it passed or not. Waits are for an event
//! (a slot freed, a lease extended, Redis's clock past a lease end) with a deadline that only
//! catches hangs; nothing asserts how long anything took.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use ccf_cluster::RedisKeyCounters;
use ccf_proxy::cluster::{RateAdmission, SharedKeyCounters, SharedSlot, SharedUpdate};
use futures_util::FutureExt;
use redis::aio::ConnectionManager;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Longest wait for anything in these tests: only a hang gets near it.
const DEADLINE: Duration = Duration::from_secs(20);

async fn connection() -> ConnectionManager {
    redis::Client::open(REDIS_URL)
        .expect("redis url")
        .get_connection_manager()
        .await
        .expect("the Redis server at 127.0.0.1:6379")
}

/// A prefix no other test run uses.
fn random_prefix() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("ccf-test-{:016x}", hasher.finish())
}

/// Runs `test` with a fresh prefix and a connection, then deletes every key under the prefix
/// (also when the test failed) and fails as the test did.
async fn with_prefix<F, Fut>(test: F)
where
    F: FnOnce(String, ConnectionManager) -> Fut,
    Fut: Future<Output = ()>,
{
    let prefix = random_prefix();
    let connection = connection().await;
    let outcome = AssertUnwindSafe(test(prefix.clone(), connection.clone()))
        .catch_unwind()
        .await;
    let mut cleanup = connection;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut cleanup)
        .await
        .expect("list the test's keys");
    if !keys.is_empty() {
        let _deleted: u64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut cleanup)
            .await
            .expect("delete the test's keys");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Redis's clock, unix ms (the clock the scripts count in).
async fn redis_now_ms(connection: &mut ConnectionManager) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(connection)
        .await
        .expect("TIME");
    secs * 1000 + micros / 1000
}

/// The lease end (unix ms) of the only lease in `key`'s slot set.
async fn only_lease_end(connection: &mut ConnectionManager, prefix: &str, key: &str) -> u64 {
    let leases: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:slots:{key}"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(connection)
        .await
        .expect("ZRANGE");
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases[0].1
}

/// Asks `counters` for a slot until one is given, within the deadline.
async fn wait_for_slot(counters: &RedisKeyCounters, key: &str, limit: u32) -> SharedSlot {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(slot) = counters.acquire_slot(key, limit).await.expect("redis") {
                return slot;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a slot freed before the deadline")
}

#[tokio::test]
async fn rate_limit_is_one_window_across_two_instances() {
    with_prefix(|prefix, connection| async move {
        let first = RedisKeyCounters::new(connection.clone(), &prefix, "first");
        let second = RedisKeyCounters::new(connection.clone(), &prefix, "second");
        assert_eq!(
            first.admit_rate("alice", 3).await.expect("redis"),
            RateAdmission::Admitted
        );
        assert_eq!(
            first.admit_rate("alice", 3).await.expect("redis"),
            RateAdmission::Admitted
        );
        assert_eq!(
            second.admit_rate("alice", 3).await.expect("redis"),
            RateAdmission::Admitted
        );
        match second.admit_rate("alice", 3).await.expect("redis") {
            RateAdmission::Full { retry_after } => assert!(
                retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60),
                "{retry_after:?}"
            ),
            RateAdmission::Admitted => {
                panic!("the fourth admission in a minute passed a limit of 3")
            }
        }
        assert!(matches!(
            first.admit_rate("alice", 3).await.expect("redis"),
            RateAdmission::Full { .. }
        ));
        // Another key has its own window; a refused request is not counted.
        assert_eq!(
            second.admit_rate("bob", 1).await.expect("redis"),
            RateAdmission::Admitted
        );
        let mut check = connection.clone();
        let counted: u64 = redis::cmd("ZCARD")
            .arg(format!("{prefix}:rate:alice"))
            .query_async(&mut check)
            .await
            .expect("ZCARD");
        assert_eq!(counted, 3);
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}:rate:alice"))
            .query_async(&mut check)
            .await
            .expect("PTTL");
        assert!(
            ttl_ms > 0 && ttl_ms <= 60_000,
            "the window expires: {ttl_ms}"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrency_slots_are_shared_and_a_released_slot_frees() {
    with_prefix(|prefix, connection| async move {
        let first = RedisKeyCounters::new(connection.clone(), &prefix, "first");
        let second = RedisKeyCounters::new(connection.clone(), &prefix, "second");
        let held_first = first.acquire_slot("ci", 2).await.expect("redis");
        let held_second = second.acquire_slot("ci", 2).await.expect("redis");
        assert!(held_first.is_some() && held_second.is_some());
        assert!(first.acquire_slot("ci", 2).await.expect("redis").is_none());
        assert!(second.acquire_slot("ci", 2).await.expect("redis").is_none());
        // Another key has its own slots.
        assert!(second
            .acquire_slot("bob", 1)
            .await
            .expect("redis")
            .is_some());

        drop(held_first);
        let taken = wait_for_slot(&second, "ci", 2).await;
        assert!(
            first.acquire_slot("ci", 2).await.expect("redis").is_none(),
            "the freed slot was taken once"
        );
        drop(taken);
        drop(held_second);
        let mut check = connection.clone();
        tokio::time::timeout(DEADLINE, async {
            loop {
                let held: u64 = redis::cmd("ZCARD")
                    .arg(format!("{prefix}:slots:ci"))
                    .query_async(&mut check)
                    .await
                    .expect("ZCARD");
                if held == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every released lease removed");
    })
    .await;
}

#[tokio::test]
async fn a_dead_instances_lease_lapses_and_frees_its_slot() {
    with_prefix(|prefix, connection| async move {
        let dead = RedisKeyCounters::with_lease(
            connection.clone(),
            &prefix,
            "dead",
            Duration::from_secs(2),
        );
        let alive = RedisKeyCounters::new(connection.clone(), &prefix, "alive");
        let slot = dead
            .acquire_slot("intern", 1)
            .await
            .expect("redis")
            .expect("free");
        // The instance dies holding it: no release, no refresh.
        std::mem::forget(slot);
        assert!(
            alive
                .acquire_slot("intern", 1)
                .await
                .expect("redis")
                .is_none(),
            "the dead instance's lease holds until it lapses"
        );
        let _taken = wait_for_slot(&alive, "intern", 1).await;
        assert!(alive
            .acquire_slot("intern", 1)
            .await
            .expect("redis")
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn a_live_instance_keeps_its_lease_past_the_lease_time() {
    with_prefix(|prefix, connection| async move {
        let live = RedisKeyCounters::with_lease(
            connection.clone(),
            &prefix,
            "live",
            Duration::from_millis(1200),
        );
        let refresh = live.spawn_lease_refresh();
        let other = RedisKeyCounters::new(connection.clone(), &prefix, "other");
        let slot = live
            .acquire_slot("ci", 1)
            .await
            .expect("redis")
            .expect("free");
        let mut check = connection.clone();
        let first_end = only_lease_end(&mut check, &prefix, "ci").await;
        tokio::time::timeout(DEADLINE, async {
            while only_lease_end(&mut check, &prefix, "ci").await <= first_end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the refresh task extended the lease");
        tokio::time::timeout(DEADLINE, async {
            while redis_now_ms(&mut check).await <= first_end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("Redis's clock passes the first lease end");
        assert!(
            other.acquire_slot("ci", 1).await.expect("redis").is_none(),
            "a refreshed lease is still held after its first end"
        );
        drop(slot);
        let _taken = wait_for_slot(&other, "ci", 1).await;
        assert_eq!(
            live.refresh_leases().await.expect("redis"),
            0,
            "a released lease is no longer refreshed"
        );
        refresh.abort();
    })
    .await;
}

#[tokio::test]
async fn abandoned_acquires_leave_no_lease_behind() {
    with_prefix(|prefix, connection| async move {
        let impatient = RedisKeyCounters::new(connection.clone(), &prefix, "impatient");
        // The engine drops an acquire past `cluster.redis_timeout`: the script may already
        // have run on Redis, and the lease it took must not hold the slot for its lease time.
        // Each key is given up on as early as possible (sent, then dropped at the first
        // chance); whether the script ran first varies, the slot must come free either way.
        let keys: Vec<String> = (0..20).map(|index| format!("key{index}")).collect();
        for key in &keys {
            let _given_up =
                tokio::time::timeout(Duration::ZERO, impatient.acquire_slot(key, 1)).await;
        }
        let other = RedisKeyCounters::new(connection.clone(), &prefix, "other");
        for key in &keys {
            let _taken = wait_for_slot(&other, key, 1).await;
        }
    })
    .await;
}

fn spend(
    key: &str,
    usd: f64,
    day_usd: f64,
    month_usd: f64,
    periods: (SystemTime, SystemTime),
) -> SharedUpdate {
    SharedUpdate::Spend {
        key: key.to_string(),
        usd,
        at: SystemTime::now(),
        day_start: periods.0,
        day_usd,
        month_start: periods.1,
        month_usd,
    }
}

fn totals(update: Option<SharedUpdate>) -> (f64, f64) {
    match update {
        Some(SharedUpdate::Spend {
            usd,
            day_usd,
            month_usd,
            ..
        }) => {
            assert_eq!(usd, 0.0, "the shared totals carry no amount");
            (day_usd, month_usd)
        }
        other => panic!("not a spend: {other:?}"),
    }
}

#[tokio::test]
async fn spend_is_seeded_by_the_first_instance_then_added_by_every_instance() {
    with_prefix(|prefix, connection| async move {
        let first = RedisKeyCounters::new(connection.clone(), &prefix, "first");
        let second = RedisKeyCounters::new(connection.clone(), &prefix, "second");
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_342_400);
        let month = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_996_800);
        // The first instance's store said $2 today and $10 this month; it then spent $0.50.
        let seeded = first
            .record_spend(&spend("alice", 0.5, 2.5, 10.5, (day, month)))
            .await
            .expect("redis");
        assert_eq!(totals(seeded), (2.5, 10.5));
        // The second instance's own totals are smaller (it started later): its amount adds.
        let added = second
            .record_spend(&spend("alice", 0.25, 0.25, 0.25, (day, month)))
            .await
            .expect("redis");
        assert_eq!(totals(added), (2.75, 10.75));

        // Both instances at once: every amount counted exactly once.
        let mut tasks = Vec::new();
        for counters in [first, second] {
            let counters = std::sync::Arc::new(counters);
            for _ in 0..40 {
                let counters = std::sync::Arc::clone(&counters);
                tasks.push(tokio::spawn(async move {
                    counters
                        .record_spend(&spend("alice", 0.125, 0.125, 0.125, (day, month)))
                        .await
                        .expect("redis")
                }));
            }
        }
        let mut highest = (0.0_f64, 0.0_f64);
        for task in tasks {
            let (day_usd, month_usd) = totals(task.await.expect("task"));
            highest = (highest.0.max(day_usd), highest.1.max(month_usd));
        }
        assert_eq!(highest, (2.75 + 80.0 * 0.125, 10.75 + 80.0 * 0.125));

        let mut check = connection.clone();
        let day_key = format!("{prefix}:spend:alice:day:1796342400");
        let month_key = format!("{prefix}:spend:alice:month:1795996800");
        let stored: f64 = redis::cmd("GET")
            .arg(&day_key)
            .query_async(&mut check)
            .await
            .expect("GET");
        assert_eq!(stored, 12.75);
        let day_ttl: i64 = redis::cmd("TTL")
            .arg(&day_key)
            .query_async(&mut check)
            .await
            .expect("TTL");
        let month_ttl: i64 = redis::cmd("TTL")
            .arg(&month_key)
            .query_async(&mut check)
            .await
            .expect("TTL");
        assert!(day_ttl > 86_400 && day_ttl <= 2 * 86_400, "{day_ttl}");
        assert!(
            month_ttl > 31 * 86_400 && month_ttl <= 35 * 86_400,
            "{month_ttl}"
        );
    })
    .await;
}

#[tokio::test]
async fn only_spend_updates_are_recorded() {
    with_prefix(|prefix, connection| async move {
        let counters = RedisKeyCounters::new(connection, &prefix, "only");
        let update = SharedUpdate::GroupCooldownEnded {
            group: "main".to_string(),
        };
        assert_eq!(counters.record_spend(&update).await.expect("redis"), None);
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_decision() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_millis(500)));
    let connection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_connection_manager_lazy(config)
        .expect("lazy manager");
    let counters = RedisKeyCounters::new(connection, &random_prefix(), "lonely");
    let rate = tokio::time::timeout(DEADLINE, counters.admit_rate("alice", 1))
        .await
        .expect("an answer, not a hang");
    assert!(rate.is_err(), "{rate:?}");
    let slot = tokio::time::timeout(DEADLINE, counters.acquire_slot("alice", 1))
        .await
        .expect("an answer, not a hang");
    assert!(slot.is_err(), "{slot:?}");
}
