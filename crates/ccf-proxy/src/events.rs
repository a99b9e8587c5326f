//! The forwarder's event bus: one in-process broadcast channel that routing, health and
//! suspension changes go out on. The dashboard, the TUI and metrics subscribe; nothing on the
//! request path waits for a subscriber (a slow subscriber lags and loses old events, it never
//! blocks a request).

use std::time::Duration;

use ccf_health::HealthEvent;
use ccf_lifecycle::{LifecycleEvent, RequestId};
use ccf_router::RouterEvent;
use tokio::sync::broadcast;

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
}

/// The broadcast bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<ForwarderEvent>,
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
        }
    }

    /// Publishes an event; having no subscriber is fine.
    pub fn publish(&self, event: ForwarderEvent) {
        let _ = self.sender.send(event);
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ForwarderEvent> {
        self.sender.subscribe()
    }
}
