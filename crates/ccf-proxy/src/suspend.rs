//! Holding requests while nothing can serve them (`request_suspend.*`).
//!
//! A request that found no available endpoint is held instead of failing, at most
//! `max_suspended_requests` at once (enforced atomically: over the cap it fails at once), for at
//! most `request_suspend.timeout`. Anything that may make an endpoint available (an operator
//! action, a health probe passing, a sibling request succeeding) calls [`Suspension::wake`];
//! held requests then route again from scratch. They also route again on their own at a bounded
//! interval (the request path decides it), because only real traffic shows that an overloaded
//! upstream serves again and nothing may signal it.
//!
//! No lost wakes: a request notes the wake generation ([`Suspension::subscribe`]) before its
//! routing round, and [`Suspension::wake`] always bumps it, even while nothing is held yet, so a
//! wake between "nothing could serve it" and taking a hold slot is seen by the wait that follows
//! ([`Suspension::changed`]).
//!
//! Nothing shared is locked per request (issue 19): every request notes the generation and every
//! success wakes, so both are one atomic operation; only while a request waits does a wake also
//! notify (a `tokio::sync::Notify`). Before, each request subscribed to a `watch` channel and each
//! success sent on it: the channel's lock and its eight notifier shards' mutexes, taken by both
//! serving threads, on every request.
//! Cancellation: a held request is a future; when the client disconnects hyper drops it, its
//! [`HoldPermit`] is dropped and the slot is freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ccf_lifecycle::RequestId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The shared suspension state of one forwarder.
#[derive(Debug)]
pub struct Suspension {
    /// `request_suspend.*`, replaced by a configuration reload; held requests keep their slots.
    settings: Mutex<SuspendSettings>,
    held: AtomicUsize,
    since: Mutex<HashMap<RequestId, Instant>>,
    /// Bumped by every [`Suspension::wake`].
    generation: AtomicU64,
    /// Requests inside [`Suspension::changed`]: a wake notifies only while there are some.
    waiting: AtomicUsize,
    notify: Notify,
}

/// The wake generation a request has seen ([`Suspension::subscribe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wakes {
    seen: u64,
}

/// Counts a request among the waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A held request's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HoldPermit {
    suspension: Arc<Suspension>,
    request_id: RequestId,
    since: Instant,
}

impl HoldPermit {
    /// How long the request has been held.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for HoldPermit {
    fn drop(&mut self) {
        self.suspension.held.fetch_sub(1, Ordering::AcqRel);
        self.suspension
            .since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.request_id);
    }
}

/// `request_suspend.*` as the engine uses it.
#[derive(Debug, Clone, Copy)]
struct SuspendSettings {
    enabled: bool,
    timeout: Duration,
    capacity: usize,
}

impl Suspension {
    /// Suspension as configured; `enabled: false` never holds anything.
    pub fn new(enabled: bool, timeout: Duration, capacity: usize) -> Self {
        Suspension {
            settings: Mutex::new(SuspendSettings {
                enabled,
                timeout,
                capacity,
            }),
            held: AtomicUsize::new(0),
            since: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    fn settings(&self) -> SuspendSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hot reload: new settings for the next holds and waits. Requests already held keep their
    /// slots (a lower cap only refuses new ones) and wake up to route again under the new
    /// configuration; their deadline is computed from the new timeout.
    pub fn reconfigure(&self, enabled: bool, timeout: Duration, capacity: usize) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = SuspendSettings {
            enabled,
            timeout,
            capacity,
        };
        self.wake();
    }

    /// The longest time a request is held.
    pub fn timeout(&self) -> Duration {
        self.settings().timeout
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Held requests and how long each has waited, oldest first.
    pub fn held_requests(&self) -> Vec<(RequestId, Duration)> {
        let mut held: Vec<(RequestId, Duration)> = self
            .since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, since)| (*id, since.elapsed()))
            .collect();
        held.sort_by_key(|(_, waited)| std::cmp::Reverse(*waited));
        held
    }

    /// Takes a slot, or `None` when suspension is off or the cap is reached.
    pub fn try_hold(self: &Arc<Self>, request_id: RequestId) -> Option<HoldPermit> {
        let settings = self.settings();
        if !settings.enabled {
            return None;
        }
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < settings.capacity).then_some(held + 1)
            })
            .ok()?;
        let since = Instant::now();
        self.since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id, since);
        Some(HoldPermit {
            suspension: Arc::clone(self),
            request_id,
            since,
        })
    }

    /// Something may have become available: every held request looks again.
    ///
    /// Always bumps the generation, also while nothing is held: a request between its failed
    /// round and taking a slot has subscribed already and must see this wake (a `held() > 0`
    /// shortcut here lost it). Notifies only while a request waits.
    pub fn wake(&self) {
        // Sequentially consistent, with `changed`'s count and read: either this load sees the
        // waiter counted, or the waiter's read sees the new generation.
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The generation now; take it *before* checking availability so a wake between the check
    /// and the wait is not lost ([`Suspension::changed`]).
    pub fn subscribe(&self) -> Wakes {
        Wakes {
            seen: self.generation.load(Ordering::SeqCst),
        }
    }

    /// Whether a wake came since `wakes` was taken or last changed.
    #[cfg(test)]
    fn has_woken(&self, wakes: &Wakes) -> bool {
        self.generation.load(Ordering::SeqCst) != wakes.seen
    }

    /// Waits for a wake after the one `wakes` has seen (at once when one came already), and
    /// notes it in `wakes`. Cancel-safe: dropping the future only stops the wait.
    pub async fn changed(&self, wakes: &mut Wakes) {
        let _waiting = Waiting::new(&self.waiting);
        loop {
            // Created before the read: a wake after the read notifies this future.
            let notified = self.notify.notified();
            let now = self.generation.load(Ordering::SeqCst);
            if now != wakes.seen {
                wakes.seen = now;
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_is_enforced_and_slots_are_freed_on_drop() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 2));
        let first = suspension.try_hold(RequestId::from_u64(1)).unwrap();
        let _second = suspension.try_hold(RequestId::from_u64(2)).unwrap();
        assert!(suspension.try_hold(RequestId::from_u64(3)).is_none());
        assert_eq!(suspension.held(), 2);
        assert_eq!(suspension.held_requests().len(), 2);
        drop(first);
        assert_eq!(suspension.held(), 1);
        assert!(suspension.try_hold(RequestId::from_u64(4)).is_some());
    }

    #[tokio::test]
    async fn disabled_suspension_holds_nothing() {
        let suspension = Arc::new(Suspension::new(false, Duration::from_secs(1), 10));
        assert!(suspension.try_hold(RequestId::from_u64(1)).is_none());
    }

    #[tokio::test]
    async fn concurrent_holds_never_exceed_the_cap() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 5));
        let mut tasks = Vec::new();
        for n in 0..64 {
            let suspension = Arc::clone(&suspension);
            tasks.push(tokio::spawn(async move {
                suspension.try_hold(RequestId::from_u64(n))
            }));
        }
        let mut permits = Vec::new();
        for task in tasks {
            if let Some(permit) = task.await.unwrap() {
                permits.push(permit);
            }
        }
        assert_eq!(permits.len(), 5);
        assert_eq!(suspension.held(), 5);
    }

    #[tokio::test]
    async fn reconfigure_changes_the_cap_and_wakes_held_requests() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 1));
        let wakes = suspension.subscribe();
        let _held = suspension
            .try_hold(RequestId::from_u64(1))
            .expect("a free slot");
        assert!(suspension.try_hold(RequestId::from_u64(2)).is_none());
        suspension.reconfigure(true, Duration::from_secs(5), 2);
        assert!(suspension.has_woken(&wakes));
        assert_eq!(suspension.timeout(), Duration::from_secs(5));
        assert!(suspension.try_hold(RequestId::from_u64(2)).is_some());
        suspension.reconfigure(false, Duration::from_secs(5), 2);
        assert!(suspension.try_hold(RequestId::from_u64(3)).is_none());
    }

    #[tokio::test]
    async fn a_wake_before_the_hold_slot_is_taken_is_not_lost() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 5));
        // The request subscribes before its round; its round fails; a sibling succeeds and
        // wakes before the request takes its slot.
        let mut wakes = suspension.subscribe();
        suspension.wake();
        let _permit = suspension.try_hold(RequestId::from_u64(1)).unwrap();
        assert!(suspension.has_woken(&wakes), "the early wake is seen");
        suspension.changed(&mut wakes).await;
        assert!(!suspension.has_woken(&wakes));
        suspension.wake();
        assert!(suspension.has_woken(&wakes));
    }

    /// A request waiting in `changed` is woken by a wake from another task; without one it
    /// keeps waiting.
    #[tokio::test]
    async fn a_waiting_request_is_woken_and_only_by_a_wake() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 5));
        let mut wakes = suspension.subscribe();
        let waiter = {
            let suspension = Arc::clone(&suspension);
            tokio::spawn(async move {
                suspension.changed(&mut wakes).await;
            })
        };
        // Let it reach its wait; nothing wakes it meanwhile.
        while suspension.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no wake, no return");
        suspension.wake();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the wake ends the wait")
            .expect("the waiter ran");
        assert_eq!(suspension.waiting.load(Ordering::SeqCst), 0);
    }

    /// Many wakers and waiters on a multi-threaded runtime: every waiter that took its
    /// generation before a wake returns (no lost wake between its read and its wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_between_a_read_and_a_wait() {
        let suspension = Arc::new(Suspension::new(true, Duration::from_secs(1), 5));
        for _ in 0..200 {
            let mut wakes = suspension.subscribe();
            let waiter = {
                let suspension = Arc::clone(&suspension);
                tokio::spawn(async move { suspension.changed(&mut wakes).await })
            };
            let waker = {
                let suspension = Arc::clone(&suspension);
                tokio::spawn(async move { suspension.wake() })
            };
            waker.await.expect("the waker ran");
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a wake after the generation was read ends the wait")
                .expect("the waiter ran");
        }
    }
}
