//! The response body: hands prepared frames to hyper, with optional delays, stalls and aborts,
//! and records how the reply ended.
//!
//! Ownership: hyper owns the body and drops it when the response is done, when the peer goes
//! away, or when the connection task is aborted at shutdown. The drop is where the outcome is
//! decided, so every way a reply can end is seen in one place.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::reply::{End, ReplyOutcome};
use crate::server::Shared;

/// Records the outcome of one recorded request exactly once: explicitly through [`Tracker::finish`]
/// or, if the future or body holding it is dropped first, as `ClientGone` (`Aborted` during
/// shutdown).
pub(crate) struct Tracker {
    shared: Arc<Shared>,
    index: usize,
    finished: bool,
}

impl Tracker {
    pub(crate) fn new(shared: Arc<Shared>, index: usize) -> Tracker {
        Tracker {
            shared,
            index,
            finished: false,
        }
    }

    pub(crate) fn finish(&mut self, status: Option<u16>, outcome: ReplyOutcome, sent_body: Bytes) {
        if !self.finished {
            self.finished = true;
            self.shared.finish(self.index, status, outcome, sent_body);
        }
    }

    /// What an unexpected drop means right now.
    fn interrupted_outcome(&self) -> ReplyOutcome {
        if self.shared.is_shutting_down() {
            ReplyOutcome::Aborted
        } else {
            ReplyOutcome::ClientGone
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let outcome = self.interrupted_outcome();
        self.finish(None, outcome, Bytes::new());
    }
}

/// The error a body yields to make hyper cut the connection ([`End::DropAfter`]).
#[derive(Debug)]
pub(crate) struct MockAbort;

impl fmt::Display for MockAbort {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("mock upstream dropped the connection on purpose")
    }
}

impl std::error::Error for MockAbort {}

/// A response body made of prepared frames.
pub(crate) struct MockBody {
    frames: Vec<Bytes>,
    /// Frames handed to hyper so far.
    sent: usize,
    /// Frames to send before `end` applies.
    stop_at: usize,
    end: End,
    /// Announce the exact length (non-streaming bodies that end normally).
    exact_length: Option<u64>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The abort was announced by one `Pending`, so hyper flushed what was sent before it.
    abort_armed: bool,
    /// The abort error was yielded.
    aborted: bool,
    status: u16,
    tracker: Option<Tracker>,
    /// Counts the bytes handed to hyper ([`crate::MockUpstream::body_bytes_sent`]).
    shared: Arc<Shared>,
}

impl MockBody {
    pub(crate) fn new(
        frames: Vec<Bytes>,
        end: End,
        stream: bool,
        delay: Option<Duration>,
        status: u16,
        tracker: Option<Tracker>,
        shared: Arc<Shared>,
    ) -> MockBody {
        let stop_at = match end {
            End::Complete => frames.len(),
            End::StallAfter(events) | End::DropAfter(events) => events.min(frames.len()),
        };
        let exact_length = (!stream && end == End::Complete)
            .then(|| frames.iter().map(|frame| frame.len() as u64).sum());
        MockBody {
            frames,
            sent: 0,
            stop_at,
            end,
            exact_length,
            delay,
            sleep: None,
            abort_armed: false,
            aborted: false,
            status,
            tracker,
            shared,
        }
    }

    fn all_sent(&self) -> bool {
        self.end == End::Complete && self.sent >= self.frames.len()
    }

    /// The bytes handed to hyper so far, as one buffer.
    fn sent_bytes(&self) -> Bytes {
        match &self.frames[..self.sent] {
            [] => Bytes::new(),
            [only] => only.clone(),
            many => {
                let length = many.iter().map(Bytes::len).sum();
                let mut joined = BytesMut::with_capacity(length);
                for frame in many {
                    joined.extend_from_slice(frame);
                }
                joined.freeze()
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = MockAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockAbort>>> {
        let this = self.get_mut();
        if this.sent >= this.stop_at {
            return match this.end {
                End::Complete => Poll::Ready(None),
                // Never woken: the body lives until hyper drops it with the connection.
                End::StallAfter(_) => Poll::Pending,
                // hyper drops its unflushed write buffer when a body fails, so yield once first:
                // it flushes the head and the frames sent so far while this body is pending.
                End::DropAfter(_) if !this.abort_armed => {
                    this.abort_armed = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                End::DropAfter(_) => {
                    this.aborted = true;
                    Poll::Ready(Some(Err(MockAbort)))
                }
            };
        }
        if let (Some(delay), true) = (this.delay, this.sent > 0) {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let frame = this.frames[this.sent].clone();
        this.sent += 1;
        this.shared.add_body_bytes(frame.len());
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.all_sent()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        let outcome = if self.all_sent() {
            ReplyOutcome::Completed
        } else if self.aborted {
            ReplyOutcome::Aborted
        } else {
            match &self.tracker {
                Some(tracker) => tracker.interrupted_outcome(),
                None => return,
            }
        };
        if self.tracker.is_some() {
            let sent_body = self.sent_bytes();
            if let Some(tracker) = self.tracker.as_mut() {
                tracker.finish(Some(self.status), outcome, sent_body);
            }
        }
    }
}

impl fmt::Debug for MockBody {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MockBody")
            .field("frames", &self.frames.len())
            .field("sent", &self.sent)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}
