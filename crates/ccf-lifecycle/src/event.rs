//! [`LifecycleEvent`]s (snapshots of a request at each change) and the [`Coalescer`] that lets a
//! slow subscriber skip intermediate snapshots without ever missing a final one.
//!
//! Delivery has two paths, by design:
//! - the [`Outcome`](crate::Outcome) of each request is moved, not copied, to the usage recorder
//!   through a lossless path; it is the only thing that is billed, so nothing is billed twice and
//!   nothing is lost when a UI is slow;
//! - events (including [`Outcome::event`](crate::Outcome::event)) go to the UIs. A plain
//!   broadcast channel drops the oldest events for a subscriber that lags, finals included; a
//!   publisher that must not lose a request's last state feeds one [`Coalescer`] per subscriber
//!   instead, which is bounded by the number of requests with undelivered changes, not by the
//!   number of events.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::{RequestId, RequestRecord};

/// What kind of change an event announces, in the reference's `change_type` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// The request arrived (`pending`).
    Started,
    /// Forwarding, processing, or a "flexible update" (usage, model).
    StatusChanged,
    /// An attempt failed and will be retried.
    RetryAttempt,
    /// The request was suspended or resumed.
    SuspendedChange,
    /// Final: completed.
    Completed,
    /// Final: failed.
    Failed,
    /// Final: cancelled.
    Cancelled,
}

impl ChangeType {
    /// The reference's word for it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeType::Started => "request_started",
            ChangeType::StatusChanged => "status_changed",
            ChangeType::RetryAttempt => "retry_attempt",
            ChangeType::SuspendedChange => "suspended_change",
            ChangeType::Completed => "request_completed",
            ChangeType::Failed => "request_failed",
            ChangeType::Cancelled => "request_cancelled",
        }
    }

    /// Whether it announces a final outcome.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            ChangeType::Completed | ChangeType::Failed | ChangeType::Cancelled
        )
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChangeType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A snapshot of one request after a change. Cheap to clone (the record is shared), so it fits a
/// broadcast channel.
///
/// Only this crate makes events, so `change_type().is_final()` holds exactly when
/// `record().is_final()` does. Serialized as `{"change_type": "...", "request": {record}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    change_type: ChangeType,
    record: Arc<RequestRecord>,
}

impl LifecycleEvent {
    pub(crate) fn new(change_type: ChangeType, record: Arc<RequestRecord>) -> Self {
        LifecycleEvent {
            change_type,
            record,
        }
    }

    /// What changed.
    pub fn change_type(&self) -> ChangeType {
        self.change_type
    }

    /// The request as it is after the change.
    pub fn record(&self) -> &RequestRecord {
        &self.record
    }

    /// The record, shared with whoever else holds this change (and with the lifecycle while
    /// it goes on).
    pub fn into_record(self) -> Arc<RequestRecord> {
        self.record
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.record.id
    }

    /// Whether this announces the request's final outcome.
    pub fn is_final(&self) -> bool {
        self.change_type.is_final()
    }
}

impl Serialize for LifecycleEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            change_type: ChangeType,
            request: &'a RequestRecord,
        }
        Wire {
            change_type: self.change_type,
            request: &self.record,
        }
        .serialize(serializer)
    }
}

/// A per-subscriber queue that keeps only the latest event of each request, never replacing a
/// final one.
///
/// Rules for an event of a request that already has one waiting:
/// - a waiting final event stays (anything after it is stale);
/// - a final event replaces whatever waits;
/// - a waiting `Started` stays `Started` but takes the newer snapshot, so the subscriber still
///   learns the request is new;
/// - otherwise the newer event replaces the older.
///
/// Requests come out in the order their first waiting event went in. The queue holds at most one
/// event per request; subscribers must accept a final event for a request they never saw start.
/// Pure: the publisher wraps it in a mutex and wakes the subscriber.
#[derive(Debug, Default)]
pub struct Coalescer {
    waiting: HashMap<RequestId, LifecycleEvent>,
    /// Invariant: holds exactly the keys of `waiting`, each once.
    order: VecDeque<RequestId>,
}

impl Coalescer {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event, merging it with the request's waiting one.
    pub fn push(&mut self, event: LifecycleEvent) {
        let id = event.request_id();
        let Some(waiting) = self.waiting.get_mut(&id) else {
            self.order.push_back(id);
            self.waiting.insert(id, event);
            return;
        };
        if waiting.is_final() {
            return;
        }
        if waiting.change_type == ChangeType::Started && !event.is_final() {
            waiting.record = event.record;
        } else {
            *waiting = event;
        }
    }

    /// The next event, oldest request first.
    pub fn pop(&mut self) -> Option<LifecycleEvent> {
        while let Some(id) = self.order.pop_front() {
            if let Some(event) = self.waiting.remove(&id) {
                return Some(event);
            }
        }
        None
    }

    /// Every waiting event, oldest request first.
    pub fn drain(&mut self) -> Vec<LifecycleEvent> {
        let mut events = Vec::with_capacity(self.waiting.len());
        while let Some(event) = self.pop() {
            events.push(event);
        }
        events
    }

    /// How many requests have an event waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}
