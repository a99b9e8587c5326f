//! Following every request to exactly one outcome.
//!
//! Each tracked request owns a [`Tracker`] holding its [`Lifecycle`] inside a [`LiveRequest`].
//! Intermediate changes go out as [`LifecycleEvent`]s on the (lossy) event bus and to the
//! [`RequestObserver`]; an observer that only needs the latest state now and then (the usage
//! recorder) is handed the [`LiveRequest`] instead and reads it when it likes. The final
//! [`Outcome`] is handed to the observer synchronously, exactly once, so it is never lost to a
//! slow subscriber. Ownership: the request future owns the tracker until an answer is relayed,
//! then the response body's observer owns it. Whoever drops it unfinished (the client went away)
//! records the request as cancelled, from `Drop`.
//!
//! Why a live view rather than events for the recorder: an event shares the lifecycle's record,
//! so an observer that keeps one makes the next change copy the whole record (`Arc::make_mut`).
//! The recorder kept every event until it wrote or replaced it, which cost about three record
//! copies and three hand-overs per request on the serving threads (issue 19, part 10).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use ccf_lifecycle::{
    Lifecycle, LifecycleEvent, Outcome, RequestId, RequestRecord, TransitionError,
};
use ccf_types::Usage;
use tracing::{info, warn};

use crate::events::{EventBus, ForwarderEvent};
use crate::monitoring::Metrics;

/// Receives what happens to requests: the storage recorder implements it.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request started or changed (may be coalesced or dropped by slow consumers). An
    /// observer that keeps `event` makes the request's next change copy its record; one that
    /// only needs the latest state takes [`on_live`](Self::on_live) instead. Ignored by default.
    fn on_event(&self, event: &LifecycleEvent) {
        let _ = event;
    }

    /// A request started, or changed after its live state was last [read](LiveRequest::read):
    /// `request` shows the current state whenever it is read, until the request ends. Keeping it
    /// costs the request nothing. Ignored by default.
    fn on_live(&self, request: &Arc<LiveRequest>) {
        let _ = request;
    }

    /// A request's one final outcome; called exactly once per tracked request. Returns the
    /// outcome's cost in USD when this observer priced it (the usage recorder prices each final
    /// outcome once, for its row): `ccf_cost_usd` and the per-key spend then count that same
    /// number, so the metric, the budgets and the stored rows agree. `None` leaves the pricing to
    /// the engine's own [`CostModel`](crate::monitoring::CostModel), if one is installed.
    fn on_outcome(&self, outcome: &Outcome) -> Option<f64>;
}

/// A running request's state, readable from any thread while it runs.
///
/// Observers are told of it at the start and again at a state change that follows a read, so
/// one that keeps every handle it is given until it reads it never misses the latest state:
/// whatever changes while a handle waits is seen by its read.
#[derive(Debug)]
pub struct LiveRequest {
    id: RequestId,
    state: Mutex<LiveState>,
}

#[derive(Debug)]
struct LiveState {
    /// `None` once the request has ended (its outcome is on its way to the observers).
    lifecycle: Option<Lifecycle>,
    /// Observers were told of a change nobody has read yet: a further change need not tell them.
    unread: bool,
}

impl LiveRequest {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Reads the request's current state (never final); `None` once it has ended, when its
    /// [`Outcome`] is on its way to [`RequestObserver::on_outcome`].
    pub fn read<R>(&self, read: impl FnOnce(&RequestRecord) -> R) -> Option<R> {
        let mut state = self.lock();
        state.unread = false;
        state
            .lifecycle
            .as_ref()
            .map(|lifecycle| read(lifecycle.record()))
    }

    fn lock(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where tracked requests report to.
pub(crate) struct TrackingHub {
    pub(crate) events: EventBus,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) observer: Option<Arc<dyn RequestObserver>>,
}

impl TrackingHub {
    fn publish(&self, event: LifecycleEvent) {
        if let Some(observer) = &self.observer {
            observer.on_event(&event);
        }
        self.events.publish(ForwarderEvent::Request(event));
    }

    fn tell_live(&self, request: &Arc<LiveRequest>) {
        if let Some(observer) = &self.observer {
            observer.on_live(request);
        }
    }

    fn finish(&self, outcome: Outcome) {
        let record = outcome.record();
        // Borrowed: the line below is usually filtered out, and its fields are only read then.
        let default_usage = Usage::default();
        let usage = record.usage.as_ref().unwrap_or(&default_usage);
        info!(
            endpoint = record.endpoint.as_deref().unwrap_or("-"),
            group = record.group.as_deref().unwrap_or("-"),
            model = record.model().unwrap_or("unknown"),
            status = record.status.as_str(),
            http_status = record.http_status.unwrap_or(0),
            failure_reason = record
                .failure_reason
                .map(|reason| reason.as_str())
                .unwrap_or("-"),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cache_creation_input_tokens = usage.cache_creation_input_tokens,
            cache_read_input_tokens = usage.cache_read_input_tokens,
            attempts = record.attempts.len(),
            duration_ms = record.duration.map_or(0, |d| d.as_millis()),
            "request finished"
        );
        if record.model_mismatch {
            warn!(
                requested = record.request_model.as_deref().unwrap_or("-"),
                sent = record.sent_model.as_deref(),
                answered = record.response_model.as_deref().unwrap_or("-"),
                "the upstream answered with another model than the one sent"
            );
        }
        // The observer first: the cost it priced is the one the metrics count.
        let priced_usd = self
            .observer
            .as_ref()
            .and_then(|observer| observer.on_outcome(&outcome));
        self.metrics.record_finished(record, priced_usd);
        self.events
            .publish(ForwarderEvent::Request(outcome.event()));
    }
}

/// One request's lifecycle, finished exactly once (cancelled when dropped unfinished).
pub(crate) struct Tracker {
    live: Arc<LiveRequest>,
    hub: Arc<TrackingHub>,
}

impl Tracker {
    /// Starts tracking; publishes the `started` event and tells observers of the live request.
    pub(crate) fn start(
        hub: Arc<TrackingHub>,
        lifecycle: Lifecycle,
        started: LifecycleEvent,
    ) -> Self {
        let live = Arc::new(LiveRequest {
            id: started.request_id(),
            state: Mutex::new(LiveState {
                lifecycle: Some(lifecycle),
                unread: true,
            }),
        });
        hub.publish(started);
        hub.tell_live(&live);
        Tracker { live, hub }
    }

    /// Applies a transition and publishes its event; a rejected transition is logged (it means a
    /// bug in the engine, never in the input) and changes nothing.
    pub(crate) fn transition(
        &mut self,
        change: impl FnOnce(&mut Lifecycle) -> Result<LifecycleEvent, TransitionError>,
    ) {
        let (event, tell) = {
            let mut state = self.live.lock();
            let Some(lifecycle) = state.lifecycle.as_mut() else {
                return;
            };
            match change(lifecycle) {
                Ok(event) => (event, !std::mem::replace(&mut state.unread, true)),
                Err(error) => {
                    drop(state);
                    warn!("lifecycle transition rejected: {error}");
                    return;
                }
            }
        };
        self.hub.publish(event);
        if tell {
            self.hub.tell_live(&self.live);
        }
    }

    /// Changes the record without a state transition (attempts, usage, model): no event, and
    /// observers are not told again (a live request they hold shows it when read).
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut Lifecycle)) {
        if let Some(lifecycle) = self.live.lock().lifecycle.as_mut() {
            change(lifecycle);
        }
    }

    /// Records the usage and model read from a response.
    pub(crate) fn observe(&mut self, model: Option<&str>, usage: Option<Usage>, partial: bool) {
        self.update(|lifecycle| {
            if let Some(model) = model {
                lifecycle.observe_response_model(model);
            }
            if let Some(usage) = usage {
                lifecycle.set_usage(usage, partial);
            }
        });
    }

    /// Ends the request.
    pub(crate) fn finish(&mut self, end: impl FnOnce(Lifecycle, SystemTime) -> Outcome) {
        let lifecycle = self.live.lock().lifecycle.take();
        if let Some(lifecycle) = lifecycle {
            self.hub.finish(end(lifecycle, SystemTime::now()));
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let lifecycle = self.live.lock().lifecycle.take();
        if let Some(lifecycle) = lifecycle {
            info!("client disconnected: request cancelled");
            self.hub
                .finish(lifecycle.cancel("client disconnected", SystemTime::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_lifecycle::Status;

    /// Keeps every live request it is told of, as the usage recorder does until it writes.
    #[derive(Default)]
    struct Keeper {
        told: Mutex<Vec<Arc<LiveRequest>>>,
        outcomes: Mutex<Vec<Status>>,
    }

    impl RequestObserver for Keeper {
        fn on_live(&self, request: &Arc<LiveRequest>) {
            self.told.lock().unwrap().push(Arc::clone(request));
        }

        fn on_outcome(&self, outcome: &Outcome) -> Option<f64> {
            self.outcomes.lock().unwrap().push(outcome.record().status);
            None
        }
    }

    impl Keeper {
        fn told(&self) -> usize {
            self.told.lock().unwrap().len()
        }

        fn status(&self) -> Option<Status> {
            let told = self.told.lock().unwrap();
            told.last()?.read(|record| record.status)
        }
    }

    fn tracker() -> (Tracker, Arc<Keeper>) {
        let keeper = Arc::new(Keeper::default());
        let hub = Arc::new(TrackingHub {
            events: EventBus::new(),
            metrics: Arc::new(Metrics::new()),
            observer: Some(Arc::clone(&keeper) as Arc<dyn RequestObserver>),
        });
        let (lifecycle, started) = crate::events::tests::lifecycle(5);
        (Tracker::start(hub, lifecycle, started), keeper)
    }

    #[test]
    fn a_live_request_is_told_again_only_after_it_was_read_and_reads_none_once_ended() {
        let (mut tracker, keeper) = tracker();
        assert_eq!(keeper.told(), 1, "told at the start");
        // Not read yet: the change is seen through the handle already held.
        tracker.transition(|lifecycle| lifecycle.forwarding("a", "g"));
        assert_eq!(keeper.told(), 1);
        assert_eq!(keeper.status(), Some(Status::Forwarding));
        // Read (by `status` above): the next transition tells again, a plain update does not.
        tracker.update(|lifecycle| lifecycle.set_session("s"));
        assert_eq!(keeper.told(), 1);
        tracker.transition(|lifecycle| lifecycle.processing(200, std::time::Duration::ZERO));
        assert_eq!(keeper.told(), 2);
        assert_eq!(keeper.status(), Some(Status::Processing));
        let first = Arc::clone(&keeper.told.lock().unwrap()[0]);
        assert_eq!(first.id(), RequestId::from_u64(5));

        tracker.finish(|lifecycle, now| lifecycle.complete(now));
        assert_eq!(keeper.status(), None, "an ended request has no live state");
        assert_eq!(first.read(|_| ()), None);
        assert_eq!(*keeper.outcomes.lock().unwrap(), vec![Status::Completed]);
        drop(tracker);
        assert_eq!(keeper.outcomes.lock().unwrap().len(), 1, "one outcome");
    }
}
