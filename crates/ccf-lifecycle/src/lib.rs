//! The request lifecycle of cc-forwarder.
//!
//! This crate owns the identity of a request ([`RequestId`]: `req-` + 16 lowercase hex digits,
//! counting up per thread from a random 64-bit start, so ids do not collide the way the Go
//! original's 32-bit random ids did and land next to each other in the usage store's index)
//! and its state machine: a [`Lifecycle`] takes one request from `pending` through
//! `forwarding` (once per attempted endpoint) and `processing` to exactly one [`Outcome`]
//! (`completed`, `failed` or `cancelled`), carrying the [`RequestRecord`] that the store writes
//! and the UIs show, with its [`Attempt`] trail, model and the token
//! [`Usage`](ccf_types::Usage) actually consumed. Each change yields a [`LifecycleEvent`]; a
//! [`Coalescer`] lets slow subscribers skip intermediate events without losing final ones.
//!
//! It is pure: no IO, no tokio, no HTTP, no clock reads (times are passed in), no panics. It does
//! not know how errors are classified, how usage is parsed or where records are stored; the engine
//! drives it and the store, metrics and UIs observe it.

mod attempt;
mod event;
mod id;
mod machine;
mod millis;
mod record;
mod vocabulary;

pub use attempt::{Attempt, AttemptOutcome};
pub use event::{ChangeType, Coalescer, LifecycleEvent};
pub use id::{InvalidRequestId, RequestId, RequestIdText};
pub use machine::{Lifecycle, Outcome, Transition, TransitionError};
pub use record::{models_match, RequestRecord, RequestStart};
pub use vocabulary::{ErrorState, FailureReason, Status, UnknownWord};

#[cfg(test)]
mod tests;
