//! Following every request to exactly one outcome.
//!
//! Each tracked request owns a [`Tracker`] holding its [`Lifecycle`]. Intermediate changes go out
//! as [`LifecycleEvent`]s on the (lossy) event bus and to the [`RequestObserver`]; the final
//! [`Outcome`] is handed to the observer (the usage recorder) synchronously, exactly once, so it
//! is never lost to a slow subscriber. Ownership: the request future owns the tracker until an
//! answer is relayed, then the response body's observer owns it. Whoever drops it unfinished
//! (the client went away) records the request as cancelled, from `Drop`.

use std::sync::Arc;
use std::time::SystemTime;

use ccf_lifecycle::{Lifecycle, LifecycleEvent, Outcome, TransitionError};
use ccf_types::Usage;
use tracing::{info, warn};

use crate::events::{EventBus, ForwarderEvent};
use crate::monitoring::Metrics;

/// Receives what happens to requests: the storage recorder implements it.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request started or changed (may be coalesced or dropped by slow consumers).
    fn on_event(&self, event: &LifecycleEvent);
    /// A request's one final outcome; called exactly once per tracked request.
    fn on_outcome(&self, outcome: &Outcome);
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

    fn finish(&self, outcome: Outcome) {
        let record = outcome.record();
        let usage = record.usage.clone().unwrap_or_default();
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
        self.metrics.record_finished(record);
        if let Some(observer) = &self.observer {
            observer.on_outcome(&outcome);
        }
        self.events
            .publish(ForwarderEvent::Request(outcome.event()));
    }
}

/// One request's lifecycle, finished exactly once (cancelled when dropped unfinished).
pub(crate) struct Tracker {
    lifecycle: Option<Lifecycle>,
    hub: Arc<TrackingHub>,
}

impl Tracker {
    /// Starts tracking; publishes the `started` event.
    pub(crate) fn start(
        hub: Arc<TrackingHub>,
        lifecycle: Lifecycle,
        started: LifecycleEvent,
    ) -> Self {
        hub.publish(started);
        Tracker {
            lifecycle: Some(lifecycle),
            hub,
        }
    }

    /// Applies a transition and publishes its event; a rejected transition is logged (it means a
    /// bug in the engine, never in the input) and changes nothing.
    pub(crate) fn transition(
        &mut self,
        change: impl FnOnce(&mut Lifecycle) -> Result<LifecycleEvent, TransitionError>,
    ) {
        if let Some(lifecycle) = self.lifecycle.as_mut() {
            match change(lifecycle) {
                Ok(event) => self.hub.publish(event),
                Err(error) => warn!("lifecycle transition rejected: {error}"),
            }
        }
    }

    /// Changes the record without a state transition (attempts, usage, model).
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut Lifecycle)) {
        if let Some(lifecycle) = self.lifecycle.as_mut() {
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
        if let Some(lifecycle) = self.lifecycle.take() {
            self.hub.finish(end(lifecycle, SystemTime::now()));
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(lifecycle) = self.lifecycle.take() {
            info!("client disconnected: request cancelled");
            self.hub
                .finish(lifecycle.cancel("client disconnected", SystemTime::now()));
        }
    }
}
