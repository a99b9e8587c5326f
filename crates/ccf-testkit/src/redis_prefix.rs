//! [`RedisKeyPrefix`]: the Redis key prefix one test owns on the local Redis server
//! (127.0.0.1:6379), unique per process and test, whose keys are deleted when it is dropped
//! (however the test ends). It uses the `redis-cli` client, so the test kit needs no Redis crate.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The local Redis server the tests use.
pub const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A key prefix owned by one test (`ccf-test-<label>-<pid>-<n>-<time>`).
#[derive(Debug)]
pub struct RedisKeyPrefix(String);

impl RedisKeyPrefix {
    /// A fresh prefix; `label` says which test or file it belongs to.
    pub fn new(label: &str) -> RedisKeyPrefix {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        RedisKeyPrefix(format!(
            "ccf-test-{label}-{:x}-{}-{:x}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff_ffff
        ))
    }

    /// The prefix itself (`cluster.redis_prefix`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix's keys now (empty when `redis-cli` cannot run).
    pub fn keys(&self) -> Vec<String> {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "--scan", "--pattern"])
            .arg(format!("{}:*", self.0))
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for RedisKeyPrefix {
    fn drop(&mut self) {
        for key in self.keys() {
            let _ = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", "6379", "DEL", &key])
                .output();
        }
    }
}
