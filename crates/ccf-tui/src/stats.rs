//! Live numbers the UI accumulates from request events: totals, latency, tokens, cost today,
//! requests per second, per-endpoint counts, and the list of recent requests. Pure: every time is
//! taken from the records or passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_lifecycle::{AttemptOutcome, RequestId, RequestRecord, Status};

/// Seconds of history the requests-per-second sparkline keeps.
pub const RATE_HISTORY_SECONDS: usize = 120;

/// Requests the Requests tab keeps.
pub const RECENT_REQUESTS: usize = 500;

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_secs())
}

/// Token totals by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTotals {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cache writes.
    pub cache_creation: u64,
    /// Cache reads.
    pub cache_read: u64,
}

/// Requests and failed attempts seen for one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    /// Attempts sent to it.
    pub requests: u64,
    /// Attempts that did not get a 2xx/3xx answer.
    pub failures: u64,
}

/// Totals over the finished requests seen since the UI started.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Finished requests.
    pub finished: u64,
    /// Completed ones.
    pub completed: u64,
    /// Failed ones.
    pub failed: u64,
    /// Cancelled ones.
    pub cancelled: u64,
    total_duration: Duration,
    timed: u64,
    /// Tokens by kind.
    pub tokens: TokenTotals,
    /// Cost of today's finished requests, nano-USD, as the usage store counts it (today is a day
    /// of the configured `timezone`, every forwarder writing the database included); `None`
    /// without usage tracking or before the store first answered. Set by
    /// [`crate::App::set_cost_today`], never from the requests this process saw.
    pub cost_today_nano: Option<i64>,
    /// Per endpoint, by name.
    pub endpoints: BTreeMap<String, EndpointCounts>,
    /// Arrivals per second, oldest first; the last bucket is the current second.
    rate: VecDeque<u64>,
    rate_second: u64,
}

impl Stats {
    /// Completed / finished, in percent (`None` before the first finished request).
    pub fn success_rate(&self) -> Option<f64> {
        (self.finished > 0).then(|| self.completed as f64 * 100.0 / self.finished as f64)
    }

    /// Average duration of finished requests.
    pub fn average_duration(&self) -> Option<Duration> {
        let timed = u32::try_from(self.timed).ok().filter(|timed| *timed > 0)?;
        Some(self.total_duration / timed)
    }

    /// Counts one arrival at `second` (Unix seconds).
    pub fn count_arrival(&mut self, second: u64) {
        self.advance(second);
        if second + RATE_HISTORY_SECONDS as u64 <= self.rate_second {
            return;
        }
        let back = (self.rate_second - second.min(self.rate_second)) as usize;
        let last = self.rate.len().saturating_sub(1);
        if let Some(bucket) = last
            .checked_sub(back)
            .and_then(|index| self.rate.get_mut(index))
        {
            *bucket += 1;
        }
    }

    /// Moves the current second forward to `second`, adding empty buckets.
    pub fn advance(&mut self, second: u64) {
        if self.rate.is_empty() {
            self.rate.push_back(0);
            self.rate_second = second;
            return;
        }
        if second <= self.rate_second {
            return;
        }
        let steps = (second - self.rate_second).min(RATE_HISTORY_SECONDS as u64);
        for _ in 0..steps {
            self.rate.push_back(0);
        }
        while self.rate.len() > RATE_HISTORY_SECONDS {
            self.rate.pop_front();
        }
        self.rate_second = second;
    }

    /// Requests per second, oldest first, without the current (incomplete) second.
    pub fn rate_history(&self) -> Vec<u64> {
        let complete = self.rate.len().saturating_sub(1);
        self.rate.iter().take(complete).copied().collect()
    }

    /// Arrivals in the last complete second.
    pub fn last_rate(&self) -> u64 {
        self.rate_history().last().copied().unwrap_or(0)
    }

    /// Adds a finished request.
    pub fn record_final(&mut self, record: &RequestRecord) {
        self.finished += 1;
        match record.status {
            Status::Completed => self.completed += 1,
            Status::Cancelled => self.cancelled += 1,
            _ => self.failed += 1,
        }
        if let Some(duration) = record.duration {
            self.total_duration += duration;
            self.timed += 1;
        }
        for attempt in &record.attempts {
            let counts = self.endpoints.entry(attempt.endpoint.clone()).or_default();
            counts.requests += 1;
            let succeeded =
                matches!(attempt.outcome, AttemptOutcome::Status { status } if status < 400);
            if !succeeded {
                counts.failures += 1;
            }
        }
        if let Some(usage) = &record.usage {
            self.tokens.input += usage.input_tokens;
            self.tokens.output += usage.output_tokens;
            self.tokens.cache_creation += usage.cache_creation_input_tokens;
            self.tokens.cache_read += usage.cache_read_input_tokens;
        }
    }
}

/// The most recent requests, newest first, each at its latest state.
#[derive(Debug, Clone, Default)]
pub struct RecentRequests {
    order: VecDeque<RequestId>,
    records: HashMap<RequestId, RequestRecord>,
}

impl RecentRequests {
    /// Stores the latest state of a request; returns whether it was new.
    pub fn upsert(&mut self, record: &RequestRecord) -> bool {
        if let Some(existing) = self.records.get_mut(&record.id) {
            // A late non-final snapshot never replaces a final one.
            if !existing.is_final() || record.is_final() {
                *existing = record.clone();
            }
            return false;
        }
        self.order.push_front(record.id);
        self.records.insert(record.id, record.clone());
        while self.order.len() > RECENT_REQUESTS {
            if let Some(oldest) = self.order.pop_back() {
                self.records.remove(&oldest);
            }
        }
        true
    }

    /// Requests, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &RequestRecord> {
        self.order.iter().filter_map(|id| self.records.get(id))
    }

    /// The request at `index` (newest first).
    pub fn get(&self, index: usize) -> Option<&RequestRecord> {
        self.order.get(index).and_then(|id| self.records.get(id))
    }

    /// Position of a request (newest first).
    pub fn position(&self, id: RequestId) -> Option<usize> {
        self.order.iter().position(|candidate| *candidate == id)
    }

    /// Requests kept.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Requests not finished yet.
    pub fn in_flight(&self) -> usize {
        self.records
            .values()
            .filter(|record| !record.is_final())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_history_counts_arrivals_per_second() {
        let mut stats = Stats::default();
        stats.count_arrival(100);
        stats.count_arrival(100);
        stats.count_arrival(101);
        stats.advance(103);
        // A late arrival lands in its own second.
        stats.count_arrival(102);
        assert_eq!(stats.rate_history(), [2, 1, 1]);
        assert_eq!(stats.last_rate(), 1);
        stats.advance(100_000);
        assert_eq!(stats.rate_history().len(), RATE_HISTORY_SECONDS - 1);
        assert!(stats.rate_history().iter().all(|count| *count == 0));
    }
}
