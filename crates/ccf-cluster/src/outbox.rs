//! [`Outbox`]: the bounded queue between the request path and the writer task.
//!
//! `ClusterLink::publish` runs on the request path, so pushing never waits: a short critical
//! section on a `std` mutex, then a wake-up. When the queue is full (Redis down for long under
//! traffic) the oldest entry is dropped and counted: the newest state is the one worth sharing
//! when the link comes back, and the bound keeps memory flat through any outage.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ccf_proxy::cluster::SharedUpdate;
use tokio::sync::Notify;

/// Default bound of the queue.
pub(crate) const OUTBOX_CAPACITY: usize = 10_000;

/// One thing for the writer to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    /// A local change to write and publish.
    Update(SharedUpdate),
    /// A key's spend already added to the shared totals (the totals, as a `Spend`): publish
    /// only, never add again (a batch that failed after its spend was recorded is retried with
    /// this).
    SpendTotals(SharedUpdate),
    /// The operator state changed here: tell the other instances to read it now.
    OperatorChanged,
}

/// What a reconcile must leave alone (see [`Outbox::pending`]). Blocks and cooldowns need no
/// such care: applying them only ever extends.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Sessions bound here since the link was lost.
    pub(crate) sessions: HashSet<u64>,
    /// Endpoints whose rate-limit headers were read here since the link was lost.
    pub(crate) quota: HashSet<String>,
}

impl Pending {
    /// Whether `update` (read from Redis) is older than a local change waiting to be sent.
    pub(crate) fn supersedes(&self, update: &SharedUpdate) -> bool {
        match update {
            SharedUpdate::SessionBound { session, .. } => self.sessions.contains(session),
            SharedUpdate::QuotaHeaders { endpoint, .. } => self.quota.contains(endpoint),
            _ => false,
        }
    }
}

/// The bounded queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    items: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    ready: Notify,
    dropped: AtomicU64,
}

impl Outbox {
    /// An empty queue of at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` (dropping the oldest when full) and wakes the writer. Never waits.
    pub(crate) fn push(&self, item: Outgoing) {
        {
            let mut items = self.items();
            if items.len() >= self.capacity {
                items.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            items.push_back(item);
        }
        self.ready.notify_one();
    }

    /// Puts a batch that could not be sent back at the front, in order; what no longer fits
    /// (newer entries arrived meanwhile) is dropped and counted, oldest first.
    pub(crate) fn requeue(&self, batch: Vec<Outgoing>) {
        let mut items = self.items();
        let room = self.capacity.saturating_sub(items.len());
        let skip = batch.len().saturating_sub(room);
        self.dropped
            .fetch_add(u64::try_from(skip).unwrap_or(u64::MAX), Ordering::Relaxed);
        for item in batch.into_iter().skip(skip).rev() {
            items.push_front(item);
        }
    }

    /// Takes up to `max` entries, oldest first.
    pub(crate) fn take(&self, max: usize) -> Vec<Outgoing> {
        let mut items = self.items();
        let count = items.len().min(max);
        items.drain(..count).collect()
    }

    /// The sessions and quota endpoints whose local state waits here: newer than what Redis
    /// holds for them, so a reconcile must not apply Redis's over it.
    pub(crate) fn pending(&self) -> Pending {
        let mut pending = Pending::default();
        for item in self.items().iter() {
            match item {
                Outgoing::Update(SharedUpdate::SessionBound { session, .. }) => {
                    pending.sessions.insert(*session);
                }
                Outgoing::Update(SharedUpdate::QuotaHeaders { endpoint, .. }) => {
                    pending.quota.insert(endpoint.clone());
                }
                _ => {}
            }
        }
        pending
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.items().len()
    }

    /// Waits until something may have been pushed since the last wake-up.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Counts `count` entries dropped elsewhere (a batch Redis refused for good).
    pub(crate) fn count_dropped(&self, count: usize) {
        self.dropped
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Entries dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> Outgoing {
        Outgoing::Update(SharedUpdate::GroupCooldownEnded { group: name.into() })
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let outbox = Outbox::new(3);
        for name in ["a", "b", "c", "d"] {
            outbox.push(group(name));
        }
        assert_eq!(outbox.dropped(), 1);
        assert_eq!(outbox.take(2), vec![group("b"), group("c")]);
        assert_eq!(outbox.len(), 1);

        // A failed batch goes back in front; what does not fit is dropped, oldest first.
        outbox.push(group("e"));
        outbox.requeue(vec![group("b"), group("c")]);
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(outbox.take(10), vec![group("c"), group("d"), group("e")]);
        assert!(outbox.take(10).is_empty());
    }

    #[test]
    fn what_waits_to_be_sent_is_not_overwritten_by_a_reconcile() {
        let outbox = Outbox::new(10);
        outbox.push(Outgoing::Update(SharedUpdate::SessionBound {
            session: 7,
            source: ccf_router::SessionSource::Header,
            long_ttl: false,
            endpoint: "b".into(),
        }));
        outbox.push(Outgoing::Update(SharedUpdate::QuotaHeaders {
            endpoint: "a".into(),
            headers: Vec::new(),
            seen_at: std::time::SystemTime::UNIX_EPOCH,
        }));
        let pending = outbox.pending();
        let bound = |session| SharedUpdate::SessionBound {
            session,
            source: ccf_router::SessionSource::Header,
            long_ttl: false,
            endpoint: "a".into(),
        };
        assert!(pending.supersedes(&bound(7)));
        assert!(!pending.supersedes(&bound(8)));
        assert!(pending.supersedes(&SharedUpdate::QuotaHeaders {
            endpoint: "a".into(),
            headers: Vec::new(),
            seen_at: std::time::SystemTime::UNIX_EPOCH,
        }));
        assert!(!pending.supersedes(&SharedUpdate::EndpointBlocked {
            endpoint: "a".into(),
            until: std::time::SystemTime::UNIX_EPOCH,
        }));
    }

    #[tokio::test]
    async fn a_push_wakes_the_writer_even_before_it_waits() {
        let outbox = Outbox::new(10);
        outbox.push(Outgoing::OperatorChanged);
        // The permit is kept: this returns at once instead of hanging.
        tokio::time::timeout(std::time::Duration::from_secs(10), outbox.ready())
            .await
            .unwrap();
    }
}
