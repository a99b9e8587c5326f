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
//! No lost wakes: a request subscribes ([`Suspension::subscribe`]) before its routing round, and
//! [`Suspension::wake`] always bumps the generation, even while nothing is held yet, so a wake
//! between "nothing could serve it" and taking a hold slot is seen by the wait that follows.
//! Cancellation: a held request is a future; when the client disconnects hyper drops it, its
//! [`HoldPermit`] is dropped and the slot is freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ccf_lifecycle::RequestId;
use tokio::sync::watch;
use tokio::time::Instant;

/// The shared suspension state of one forwarder.
#[derive(Debug)]
pub struct Suspension {
    /// `request_suspend.*`, replaced by a configuration reload; held requests keep their slots.
    settings: Mutex<SuspendSettings>,
    held: AtomicUsize,
    since: Mutex<HashMap<RequestId, Instant>>,
    generation: watch::Sender<u64>,
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
            generation: watch::Sender::new(0),
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
    /// shortcut here lost it). Cheap: no receiver runs until it waits.
    pub fn wake(&self) {
        self.generation
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver that changes on every [`Suspension::wake`]; take it *before* checking
    /// availability so a wake between the check and the wait is not lost.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
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
        let receiver = suspension.subscribe();
        let _held = suspension
            .try_hold(RequestId::from_u64(1))
            .expect("a free slot");
        assert!(suspension.try_hold(RequestId::from_u64(2)).is_none());
        suspension.reconfigure(true, Duration::from_secs(5), 2);
        assert!(receiver.has_changed().expect("sender alive"));
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
        let mut receiver = suspension.subscribe();
        suspension.wake();
        let _permit = suspension.try_hold(RequestId::from_u64(1)).unwrap();
        assert!(receiver.has_changed().unwrap(), "the early wake is seen");
        receiver.changed().await.unwrap();
        suspension.wake();
        assert!(receiver.has_changed().unwrap());
    }
}
