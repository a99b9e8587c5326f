//! The forwarder's event bus: one in-process broadcast channel that routing, health, suspension
//! and request changes go out on. The dashboard, the TUI and metrics subscribe; nothing on the
//! request path waits for a subscriber (a slow broadcast subscriber lags and loses old events, it
//! never blocks a request).
//!
//! Request events also have a lossless path for subscribers that must not miss an outcome:
//! [`EventBus::subscribe_requests`] gives each subscriber its own [`Coalescer`], which keeps the
//! latest state of every request with undelivered changes and never drops a final outcome. Its
//! size is bounded by the number of such requests, not by the number of events.

use std::time::Duration;

use ccf_health::HealthEvent;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ccf_lifecycle::{Coalescer, LifecycleEvent, RequestId};
use ccf_router::RouterEvent;
use tokio::sync::broadcast;
use tokio::sync::Notify;

/// Capacity of the bus; a subscriber further behind than this loses the oldest events.
const CAPACITY: usize = 4096;

/// Something observable happened.
#[derive(Debug, Clone)]
pub enum ForwarderEvent {
    /// A request started, changed or finished.
    Request(LifecycleEvent),
    /// Group or endpoint routing state changed.
    Router(RouterEvent),
    /// An endpoint's health changed.
    Health(HealthEvent),
    /// A request is being held because nothing can serve it.
    RequestSuspended {
        /// The held request.
        request_id: RequestId,
        /// Requests held now, this one included.
        held: usize,
    },
    /// A held request routes again.
    RequestResumed {
        /// The request.
        request_id: RequestId,
        /// How long it was held.
        waited: Duration,
    },
    /// A held request gave up.
    RequestSuspensionTimedOut {
        /// The request.
        request_id: RequestId,
        /// How long it was held.
        waited: Duration,
    },
    /// A configuration reload was attempted (applied or rejected).
    ConfigReloaded(crate::reload::ReloadStatus),
    /// An inbound API key reached one of its budgets (`auth.tokens[].limits`): its requests are
    /// refused until `resets_at`. Published once per key, period and budget period.
    KeyBudgetExceeded {
        /// The key's configured name (never the key itself).
        key_name: String,
        /// Which budget: daily or monthly.
        period: BudgetPeriod,
        /// The budget, USD.
        budget_usd: f64,
        /// Spent in the current period, USD.
        spent_usd: f64,
        /// When the period ends (midnight of the configured timezone).
        resets_at: std::time::SystemTime,
    },
    /// A subscription account's quota window (`anthropic-ratelimit-unified-*`) reached
    /// `routing.quota_drain_at` on an endpoint, or the account was rejected until its reset.
    /// Published when the endpoint crosses the threshold, not for every answer above it.
    QuotaLow {
        /// The endpoint.
        endpoint: String,
        /// The representative window (`five_hour`, `seven_day`, ...), as the upstream named it.
        window: String,
        /// Fraction of the window used, 0-1 (1 when rejected).
        utilization: f64,
        /// True when the upstream said `rejected`: the endpoint is blocked until `resets_at`.
        rejected: bool,
        /// When the window resets, if the upstream said.
        resets_at: Option<std::time::SystemTime>,
    },
}

/// Which budget of an inbound key ([`ForwarderEvent::KeyBudgetExceeded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// `daily_budget_usd`: resets at midnight of the configured timezone.
    Daily,
    /// `monthly_budget_usd`: resets at midnight of the first day of the next month.
    Monthly,
}

impl BudgetPeriod {
    /// `daily` or `monthly`, as in the API and webhook payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
        }
    }
}

/// The broadcast bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<ForwarderEvent>,
    /// Every event but request changes, for subscribers that never look at requests (webhooks):
    /// a request event does not wake them, so they cost the request path nothing.
    control: broadcast::Sender<ForwarderEvent>,
    request_subscribers: Arc<Mutex<Vec<Weak<RequestQueue>>>>,
    /// Live [`RequestSubscription`]s: with none, a request event takes no lock (the usual case
    /// without dashboard or TUI).
    live_request_subscribers: Arc<AtomicUsize>,
}

/// One lossless request subscriber's queue.
#[derive(Debug, Default)]
struct RequestQueue {
    coalescer: Mutex<Coalescer>,
    ready: Notify,
}

/// Request changes for one subscriber: intermediate states may be merged, final outcomes are
/// always delivered. Dropping it unsubscribes.
#[derive(Debug)]
pub struct RequestSubscription {
    queue: Arc<RequestQueue>,
    subscribers: Arc<Mutex<Vec<Weak<RequestQueue>>>>,
    live: Arc<AtomicUsize>,
}

impl Drop for RequestSubscription {
    fn drop(&mut self) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|subscriber| {
                subscriber.strong_count() > 0
                    && !Weak::ptr_eq(subscriber, &Arc::downgrade(&self.queue))
            });
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestSubscription {
    /// The next request change, oldest request first; waits while there is none.
    pub async fn recv(&mut self) -> LifecycleEvent {
        let queue = Arc::clone(&self.queue);
        loop {
            // Registered before looking, so a publish between the look and the wait wakes us.
            let notified = queue.ready.notified();
            if let Some(event) = self.try_recv() {
                return event;
            }
            notified.await;
        }
    }

    /// The next request change, if one is waiting.
    pub fn try_recv(&mut self) -> Option<LifecycleEvent> {
        self.queue
            .coalescer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        EventBus {
            sender: broadcast::Sender::new(CAPACITY),
            control: broadcast::Sender::new(CAPACITY),
            request_subscribers: Arc::new(Mutex::new(Vec::new())),
            live_request_subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Publishes an event; having no subscriber is fine (then it is dropped here).
    pub fn publish(&self, event: ForwarderEvent) {
        if let ForwarderEvent::Request(request) = &event {
            if self.live_request_subscribers.load(Ordering::Acquire) == 0 {
                let _ = self.sender.send(event);
                return;
            }
            let mut subscribers = self
                .request_subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            subscribers.retain(|subscriber| {
                let Some(queue) = subscriber.upgrade() else {
                    return false;
                };
                queue
                    .coalescer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(request.clone());
                queue.ready.notify_one();
                true
            });
        } else if self.control.receiver_count() > 0 {
            let _ = self.control.send(event.clone());
        }
        let _ = self.sender.send(event);
    }

    /// A lossless subscriber of request changes (see the module documentation).
    pub fn subscribe_requests(&self) -> RequestSubscription {
        let queue = Arc::new(RequestQueue::default());
        self.live_request_subscribers.fetch_add(1, Ordering::AcqRel);
        self.request_subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&queue));
        RequestSubscription {
            queue,
            subscribers: Arc::clone(&self.request_subscribers),
            live: Arc::clone(&self.live_request_subscribers),
        }
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ForwarderEvent> {
        self.sender.subscribe()
    }

    /// A new subscriber of every event except request changes ([`ForwarderEvent::Request`]),
    /// from now on: routing, health, suspension, reloads, budgets, quotas. Request traffic never
    /// wakes it (nor makes it lag).
    pub fn subscribe_control(&self) -> broadcast::Receiver<ForwarderEvent> {
        self.control.subscribe()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ccf_lifecycle::{Lifecycle, RequestStart};
    use std::time::SystemTime;

    /// A request of id `bits`, just started, and its `started` event.
    pub(crate) fn lifecycle(bits: u64) -> (Lifecycle, LifecycleEvent) {
        Lifecycle::start(
            RequestStart {
                id: RequestId::from_u64(bits),
                client_ip: None,
                user_agent: None,
                method: "POST".into(),
                path: "/v1/messages".into(),
                is_streaming: false,
                request_model: None,
                api_key_name: None,
            },
            SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn a_slow_request_subscriber_gets_every_final_outcome_and_only_the_latest_states() {
        let bus = EventBus::new();
        let mut subscription = bus.subscribe_requests();
        // Far more events than the broadcast channel holds, none read meanwhile.
        for bits in 0..3_000u64 {
            let (mut lifecycle, started) = lifecycle(bits);
            bus.publish(ForwarderEvent::Request(started));
            if let Ok(event) = lifecycle.forwarding("a", "g") {
                bus.publish(ForwarderEvent::Request(event));
            }
            let outcome = lifecycle.complete(SystemTime::now());
            bus.publish(ForwarderEvent::Request(outcome.event()));
        }
        let mut finals = 0;
        while let Some(event) = subscription.try_recv() {
            assert!(
                event.is_final(),
                "a waiting state was replaced by the final one"
            );
            finals += 1;
        }
        assert_eq!(finals, 3_000);
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_change_and_dropping_unsubscribes() {
        let bus = EventBus::new();
        let mut subscription = bus.subscribe_requests();
        let publisher = bus.clone();
        let task = tokio::spawn(async move {
            let (_lifecycle, started) = lifecycle(7);
            publisher.publish(ForwarderEvent::Request(started));
        });
        let event = subscription.recv().await;
        assert_eq!(event.request_id(), RequestId::from_u64(7));
        task.await.unwrap();
        drop(subscription);
        assert!(bus.request_subscribers.lock().unwrap().is_empty());
        assert_eq!(bus.live_request_subscribers.load(Ordering::Acquire), 0);
        let (_lifecycle, started) = lifecycle(8);
        bus.publish(ForwarderEvent::Request(started));
        assert!(bus.request_subscribers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_request_subscribers_request_events_still_reach_broadcast_subscribers() {
        let bus = EventBus::new();
        let mut receiver = bus.subscribe();
        let (_lifecycle, started) = lifecycle(9);
        bus.publish(ForwarderEvent::Request(started));
        match receiver.try_recv() {
            Ok(ForwarderEvent::Request(event)) => {
                assert_eq!(event.request_id(), RequestId::from_u64(9));
            }
            other => panic!("expected the request event, got {other:?}"),
        }
        assert!(bus.request_subscribers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_control_subscriber_gets_every_event_but_request_changes() {
        let bus = EventBus::new();
        let mut control = bus.subscribe_control();
        let mut all = bus.subscribe();
        for bits in 0..3u64 {
            let (_lifecycle, started) = lifecycle(bits);
            bus.publish(ForwarderEvent::Request(started));
        }
        bus.publish(ForwarderEvent::RequestSuspended {
            request_id: RequestId::from_u64(1),
            held: 1,
        });
        match control.try_recv() {
            Ok(ForwarderEvent::RequestSuspended { held: 1, .. }) => {}
            other => panic!("expected the suspension first, got {other:?}"),
        }
        assert!(matches!(
            control.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        let mut seen = 0;
        while all.try_recv().is_ok() {
            seen += 1;
        }
        assert_eq!(seen, 4, "the ordinary subscriber still sees everything");
    }
}
