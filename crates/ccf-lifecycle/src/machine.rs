//! The state machine: [`Lifecycle`] drives one request's [`RequestRecord`] from `pending` to
//! exactly one [`Outcome`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_types::Usage;

use crate::record::models_match;
use crate::{
    Attempt, ChangeType, ErrorState, FailureReason, LifecycleEvent, RequestRecord, RequestStart,
    Status,
};

/// A state change the machine can be asked for that does not finish the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// [`Lifecycle::forwarding`].
    Forward,
    /// [`Lifecycle::retrying`].
    Retry,
    /// [`Lifecycle::suspended`].
    Suspend,
    /// [`Lifecycle::resumed`].
    Resume,
    /// [`Lifecycle::processing`].
    Process,
}

impl Transition {
    /// The verb used in error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transition::Forward => "forward",
            Transition::Retry => "retry",
            Transition::Suspend => "suspend",
            Transition::Resume => "resume",
            Transition::Process => "start processing",
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the current state forbids. The lifecycle is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The business status forbids it: processing twice or before forwarding, forwarding,
    /// retrying or suspending once the response has started.
    #[error("cannot {transition} a request that is {status}")]
    Status {
        /// What was asked.
        transition: Transition,
        /// The status it was asked in.
        status: Status,
    },
    /// The request is suspended: it must be resumed or forwarded first.
    #[error("cannot {transition} a suspended request")]
    Suspended {
        /// What was asked.
        transition: Transition,
    },
    /// [`Lifecycle::resumed`] on a request that is not suspended.
    #[error("cannot resume a request that is not suspended")]
    NotSuspended,
}

/// The running state machine of one request; it owns the request's [`RequestRecord`].
///
/// Business status: `pending -> forwarding -> (forwarding again on retry or failover) ->
/// processing`, then exactly one of [`complete`](Self::complete), [`fail`](Self::fail) or
/// [`cancel`](Self::cancel), which consume the lifecycle and return the request's only
/// [`Outcome`]. A live lifecycle is never in a final status. Error dimension: `retry` / `suspended`,
/// set by [`retrying`](Self::retrying) / [`suspended`](Self::suspended), cleared by
/// [`forwarding`](Self::forwarding), [`resumed`](Self::resumed), [`processing`](Self::processing)
/// and by finishing.
///
/// | call | allowed from | otherwise |
/// |---|---|---|
/// | `forwarding` | pending, forwarding (also suspended: it resumes) | [`TransitionError::Status`] |
/// | `retrying`, `suspended` | pending, forwarding, not suspended | `Status` / `Suspended` |
/// | `resumed` | suspended | [`TransitionError::NotSuspended`] |
/// | `processing` | forwarding, not suspended | `Status` / `Suspended` |
/// | `complete` | processing | records a failure (`unknown_error`) instead |
/// | `fail`, `cancel` | any | (always allowed) |
///
/// Times are passed in; the crate never reads a clock. Dropping a lifecycle unfinished produces no
/// outcome, so its owner (the engine's response-body guard) must cancel it on drop.
///
/// Finishing twice does not compile:
///
/// ```compile_fail,E0382
/// # use std::time::SystemTime;
/// # use ccf_lifecycle::*;
/// # let start = RequestStart { id: RequestId::generate(), client_ip: None, user_agent: None,
/// #     method: "POST".into(), path: "/v1/messages".into(), is_streaming: false, request_model: None,
/// #     api_key_name: None };
/// let (lifecycle, _started) = Lifecycle::start(start, SystemTime::now());
/// let first = lifecycle.cancel("client went away", SystemTime::now());
/// let second = lifecycle.cancel("again", SystemTime::now());
/// ```
#[derive(Debug)]
#[must_use = "a request must end in exactly one outcome: complete, fail or cancel it"]
pub struct Lifecycle {
    /// Invariant: `record.status` is `Pending`, `Forwarding` or `Processing`.
    ///
    /// Shared with the events made from it and copied on the next change only while one of them
    /// is still held ([`Arc::make_mut`]): an event nobody keeps costs no copy of the record.
    record: Arc<RequestRecord>,
}

impl Lifecycle {
    /// A request arrived: status `pending`, started at `now`.
    pub fn start(start: RequestStart, now: SystemTime) -> (Lifecycle, LifecycleEvent) {
        let lifecycle = Lifecycle {
            record: Arc::new(RequestRecord::new(start, now)),
        };
        let event = lifecycle.event(ChangeType::Started);
        (lifecycle, event)
    }

    /// The current state (never final).
    pub fn record(&self) -> &RequestRecord {
        &self.record
    }

    /// A "flexible update" snapshot of the current state, for changes that are not transitions
    /// (usage or model seen mid-stream).
    pub fn snapshot(&self) -> LifecycleEvent {
        self.event(ChangeType::StatusChanged)
    }

    /// The request is being sent to `endpoint` of `group` (again on a retry or failover). Clears
    /// the error dimension, a suspension included.
    pub fn forwarding(
        &mut self,
        endpoint: &str,
        group: &str,
    ) -> Result<LifecycleEvent, TransitionError> {
        self.check(Transition::Forward)?;
        self.record_mut().status = Status::Forwarding;
        self.record_mut().error_state = None;
        self.record_mut().endpoint = Some(endpoint.to_string());
        self.record_mut().group = Some(group.to_string());
        Ok(self.event(ChangeType::StatusChanged))
    }

    /// An attempt ended (whatever its result): appended to the trail; `retry_count` is the
    /// number of attempts beyond the first.
    pub fn attempt_finished(&mut self, attempt: Attempt) {
        self.record_mut().attempts.push(attempt);
        self.record_mut().retry_count =
            u32::try_from(self.record.attempts.len().saturating_sub(1)).unwrap_or(u32::MAX);
    }

    /// An attempt failed for `reason` and the request will be tried again. Sets the error state
    /// `retry`, `failure_reason` and `last_failure_reason` (`detail`, `None` when empty). The
    /// status does not change.
    pub fn retrying(
        &mut self,
        reason: FailureReason,
        detail: &str,
    ) -> Result<LifecycleEvent, TransitionError> {
        self.check(Transition::Retry)?;
        self.record_mut().error_state = Some(ErrorState::Retry);
        self.set_failure(reason, detail);
        Ok(self.event(ChangeType::RetryAttempt))
    }

    /// The request is held until an endpoint becomes available.
    pub fn suspended(&mut self) -> Result<LifecycleEvent, TransitionError> {
        self.check(Transition::Suspend)?;
        self.record_mut().error_state = Some(ErrorState::Suspended);
        Ok(self.event(ChangeType::SuspendedChange))
    }

    /// A held request routes again; [`forwarding`](Self::forwarding) follows.
    pub fn resumed(&mut self) -> Result<LifecycleEvent, TransitionError> {
        self.check(Transition::Resume)?;
        self.record_mut().error_state = None;
        Ok(self.event(ChangeType::SuspendedChange))
    }

    /// The upstream accepted the request with `http_status` (normally 2xx) and its response
    /// began `time_to_first_byte` after the request arrived. Clears the error dimension.
    pub fn processing(
        &mut self,
        http_status: u16,
        time_to_first_byte: Duration,
    ) -> Result<LifecycleEvent, TransitionError> {
        self.check(Transition::Process)?;
        self.record_mut().status = Status::Processing;
        self.record_mut().error_state = None;
        self.record_mut().http_status = Some(http_status);
        self.record_mut().time_to_first_byte = Some(time_to_first_byte);
        Ok(self.event(ChangeType::StatusChanged))
    }

    /// The upstream reported `model`. It becomes the record's model (it wins for billing);
    /// returns true, and sets `model_mismatch`, when it is not the model sent to that endpoint
    /// (the `model_map`'s name, else the one asked for; see [`models_match`]). An empty name is
    /// ignored. Without a request model nothing mismatches.
    pub fn observe_response_model(&mut self, model: &str) -> bool {
        if model.is_empty() {
            return false;
        }
        let mismatch = self
            .record
            .sent_model
            .as_deref()
            .or(self.record.request_model.as_deref())
            .is_some_and(|sent| !models_match(sent, model));
        self.record_mut().response_model = Some(model.to_string());
        self.record_mut().model_mismatch = mismatch;
        mismatch
    }

    /// The attempt about to be sent rewrites the request's model to `model` (an endpoint's
    /// `model_map`), or sends it unchanged (`None`); see [`RequestRecord::sent_model`].
    pub fn model_sent(&mut self, model: Option<&str>) {
        self.record_mut().sent_model = model.map(str::to_string);
    }

    /// The conversation this request belongs to (a hashed session key; see
    /// [`RequestRecord::session_id`]).
    pub fn set_session(&mut self, session_id: impl Into<String>) {
        self.record_mut().session_id = Some(session_id.into());
    }

    /// Session affinity moved the conversation here from `from` (see
    /// [`RequestRecord::affinity_moved_from`]).
    pub fn affinity_moved(&mut self, from: &str) {
        self.record_mut().affinity_moved_from = Some(from.to_string());
    }

    /// The latest known usage (`message_start`'s, then the final one), replacing the previous;
    /// `partial` when more may have been consumed than it says.
    pub fn set_usage(&mut self, usage: Usage, partial: bool) {
        self.record_mut().usage = Some(usage);
        self.record_mut().partial = partial;
    }

    /// The response reached its end: status `completed`, HTTP status the upstream's.
    ///
    /// Called before [`processing`](Self::processing) it cannot be a success (nothing was
    /// accepted), so the request is failed instead with `unknown_error`, keeping the promise of
    /// exactly one outcome; the detail says so.
    pub fn complete(self, now: SystemTime) -> Outcome {
        if self.record.status != Status::Processing {
            return self.fail(
                FailureReason::UnknownError,
                "completed before the upstream accepted the request",
                None,
                now,
            );
        }
        self.finish(Status::Completed, now)
    }

    /// The request failed for `reason` (`detail` becomes `last_failure_reason`, `None` when
    /// empty). `http_status` is what the client got; without one the status already recorded is
    /// kept, so a stream that failed after it started stays 200 with status `failed`. Usage
    /// consumed so far is kept.
    ///
    /// `reason` [`FailureReason::ClientCancelled`] is a cancellation: it finishes as
    /// [`cancel`](Self::cancel) with `detail` as the reason.
    pub fn fail(
        mut self,
        reason: FailureReason,
        detail: &str,
        http_status: Option<u16>,
        now: SystemTime,
    ) -> Outcome {
        if reason == FailureReason::ClientCancelled {
            return self.cancel(detail, now);
        }
        self.set_failure(reason, detail);
        if http_status.is_some() {
            self.record_mut().http_status = http_status;
        }
        self.finish(Status::Failed, now)
    }

    /// The client went away: status `cancelled`, HTTP 499, `cancel_reason` = `reason`
    /// (`client_cancelled` when empty). Usage consumed so far is kept; `failure_reason` keeps the
    /// last failure, if any (why the request was retrying when the client gave up).
    pub fn cancel(mut self, reason: &str, now: SystemTime) -> Outcome {
        let reason = if reason.is_empty() {
            FailureReason::ClientCancelled.as_str()
        } else {
            reason
        };
        self.record_mut().cancel_reason = Some(reason.to_string());
        self.record_mut().http_status = Some(499);
        self.finish(Status::Cancelled, now)
    }

    fn finish(mut self, status: Status, now: SystemTime) -> Outcome {
        self.record_mut().status = status;
        self.record_mut().error_state = None;
        self.record_mut().ended_at = Some(now);
        self.record_mut().duration = Some(
            now.duration_since(self.record.started_at)
                .unwrap_or(Duration::ZERO),
        );
        Outcome {
            record: self.record,
        }
    }

    fn set_failure(&mut self, reason: FailureReason, detail: &str) {
        self.record_mut().failure_reason = Some(reason);
        self.record_mut().last_failure_reason = (!detail.is_empty()).then(|| detail.to_string());
    }

    fn check(&self, transition: Transition) -> Result<(), TransitionError> {
        let status = self.record.status;
        let suspended = self.record.error_state == Some(ErrorState::Suspended);
        let status_allows = match transition {
            Transition::Forward | Transition::Retry | Transition::Suspend => {
                matches!(status, Status::Pending | Status::Forwarding)
            }
            Transition::Resume => true,
            Transition::Process => status == Status::Forwarding,
        };
        if !status_allows {
            return Err(TransitionError::Status { transition, status });
        }
        match transition {
            Transition::Forward => Ok(()),
            Transition::Resume if suspended => Ok(()),
            Transition::Resume => Err(TransitionError::NotSuspended),
            Transition::Retry | Transition::Suspend | Transition::Process if suspended => {
                Err(TransitionError::Suspended { transition })
            }
            Transition::Retry | Transition::Suspend | Transition::Process => Ok(()),
        }
    }

    fn event(&self, change_type: ChangeType) -> LifecycleEvent {
        LifecycleEvent::new(change_type, Arc::clone(&self.record))
    }

    /// The record to change: copied first when an event still shares it.
    fn record_mut(&mut self) -> &mut RequestRecord {
        Arc::make_mut(&mut self.record)
    }
}

/// The final state of one request: the only way to get a final [`RequestRecord`].
///
/// Made only by [`Lifecycle::complete`], [`Lifecycle::fail`] and [`Lifecycle::cancel`], which
/// consume the lifecycle, so there is exactly one per request. It is not `Clone`: the recorder
/// takes it by value through the lossless path and bills it once; [`event`](Self::event) makes
/// the copies the lossy UI bus may carry.
///
/// It cannot be built outside this crate:
///
/// ```compile_fail,E0451
/// # use ccf_lifecycle::*;
/// fn forge(record: RequestRecord) -> Outcome {
///     Outcome { record: std::sync::Arc::new(record) }
/// }
/// ```
#[derive(Debug)]
#[must_use = "an outcome is the request's only final record: hand it to the recorder"]
pub struct Outcome {
    /// Invariant: `record.is_final()`.
    record: Arc<RequestRecord>,
}

impl Outcome {
    /// The final record (`is_final()` holds).
    pub fn record(&self) -> &RequestRecord {
        &self.record
    }

    /// The final record, by value.
    pub fn into_record(self) -> RequestRecord {
        Arc::unwrap_or_clone(self.record)
    }

    /// The event announcing this outcome (`request_completed`, `request_failed` or
    /// `request_cancelled`), for the UI bus. Cheap: it shares the record.
    pub fn event(&self) -> LifecycleEvent {
        let change_type = match self.record.status {
            Status::Completed => ChangeType::Completed,
            Status::Cancelled => ChangeType::Cancelled,
            _ => ChangeType::Failed,
        };
        LifecycleEvent::new(change_type, Arc::clone(&self.record))
    }
}
