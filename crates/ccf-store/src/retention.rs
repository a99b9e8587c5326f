//! Retention: `retention_days` (0 keeps everything) applied every `cleanup_interval`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_config::UsageTrackingConfig;
use tokio::task::JoinHandle;

use crate::UsageStore;

/// The retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Days of rows kept; 0 keeps everything.
    pub days: u32,
    /// Period of the clean-up.
    pub interval: Duration,
}

impl Retention {
    /// `retention_days` and `cleanup_interval` from `usage_tracking`.
    pub fn from_config(config: &UsageTrackingConfig) -> Self {
        Self {
            days: config.retention_days,
            interval: config.cleanup_interval.get(),
        }
    }

    /// The instant before which rows are deleted, or `None` to keep everything.
    pub fn cutoff(&self, now: SystemTime) -> Option<SystemTime> {
        if self.days == 0 {
            return None;
        }
        now.checked_sub(Duration::from_secs(u64::from(self.days) * 86_400))
    }

    /// Runs the clean-up every `interval` (the first one after one interval) until the handle is
    /// aborted or dropped. Does nothing when `days` is 0.
    pub fn spawn(self, store: Arc<dyn UsageStore>) -> RetentionHandle {
        let task = tokio::spawn(async move {
            if self.days == 0 || self.interval.is_zero() {
                return;
            }
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(cutoff) = self.cutoff(SystemTime::now()) else {
                    return;
                };
                match store.cleanup(cutoff).await {
                    Ok(report) => tracing::info!(
                        requests_deleted = report.requests_deleted,
                        summary_rows_deleted = report.summary_rows_deleted,
                        retention_days = self.days,
                        "usage retention clean-up done"
                    ),
                    Err(error) => {
                        tracing::warn!(error = %error.chain(), "usage retention clean-up failed")
                    }
                }
            }
        });
        RetentionHandle { task }
    }
}

/// The clean-up task; aborted when dropped.
#[derive(Debug)]
pub struct RetentionHandle {
    task: JoinHandle<()>,
}

impl Drop for RetentionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn zero_days_keeps_everything() {
        let now = UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let keep = Retention {
            days: 0,
            interval: Duration::from_secs(1),
        };
        assert_eq!(keep.cutoff(now), None);
        let ninety = Retention {
            days: 90,
            interval: Duration::from_secs(1),
        };
        assert_eq!(
            ninety.cutoff(now),
            Some(UNIX_EPOCH + Duration::from_secs(10 * 86_400))
        );
    }
}
