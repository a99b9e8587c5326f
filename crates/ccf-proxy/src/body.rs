//! Response bodies: the relay body that streams upstream frames to the client untouched while
//! enforcing the stream timeouts and reporting how the stream ended, plus small helpers.
//!
//! Invariant: a frame is handed to the client in the same poll that received it from upstream;
//! nothing is buffered, re-chunked or removed. Observers see a borrowed view of each data frame
//! (the seam where usage extraction taps the stream). The one addition: a successful event
//! stream that upstream breaks off (cut, stall, or a clean end before `message_stop`) ends with
//! one well-formed `event: error` when the break falls between two events, as the observer's SSE
//! decoder knows them ([`RelayObserver::stream_position`]); otherwise the body ends with an
//! error, so a client never takes a broken stream for a whole one.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ccf_tokens::StreamPosition;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the engine produces.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How a relayed response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Upstream finished the body and the client received all of it.
    Complete,
    /// The upstream connection failed mid-body (reset, truncated chunked encoding).
    UpstreamError(String),
    /// No byte arrived for `streaming.max_idle_time`.
    IdleTimeout(Duration),
    /// The endpoint's total timeout ran out (non-streaming requests).
    DeadlineExceeded(Duration),
    /// The client went away before the body ended; the upstream request is dropped with it.
    ClientGone,
    /// Upstream ended a successful event stream cleanly before its last event (`message_stop`):
    /// the message is incomplete although no byte was lost.
    EndedEarly,
}

/// Watches a relayed body: sees every data frame and learns exactly once how it ended.
pub trait RelayObserver: Send + 'static {
    /// Called with every data frame, before it is handed to the client.
    fn on_data(&mut self, data: &Bytes);
    /// Called exactly once, when the body ends for any reason (including being dropped).
    fn on_end(self: Box<Self>, end: RelayEnd);
    /// Where the event stream stands after the frames seen so far, from the observer's SSE
    /// decoder; `None` when it cannot tell (not decoded as an event stream). The relay asks it
    /// before ending a successful event stream, to know whether an `event: error` can follow
    /// and whether the stream reached its end.
    fn stream_position(&self) -> Option<StreamPosition> {
        None
    }
    /// Called once when a frame was already waiting when the client asked for it, after the
    /// client had kept the relay waiting ([`BACKPRESSURE_GAP`] or more): from then on, when
    /// frames are read says nothing about when the upstream sent them.
    fn on_backpressure(&mut self) {}
}

/// How long after a frame the client may come back for the next one before a frame found
/// already waiting counts as held back by the client (the relay honesty check's tight gap:
/// frames held back that long can look like a burst).
pub const BACKPRESSURE_GAP: Duration = Duration::from_millis(1);

/// The error a relayed body ends with when a timeout cuts it.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No byte arrived for the idle limit.
    #[error("upstream sent no data for {0:?}")]
    Idle(Duration),
    /// The total time limit ran out.
    #[error("upstream response exceeded the {0:?} total timeout")]
    Deadline(Duration),
}

/// How a [`RelayBody`] guards and ends a response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayOptions {
    /// Cut the body when no byte arrives for this long.
    pub idle_limit: Option<Duration>,
    /// Cut the body when it is not complete after this long (from the relay's start).
    pub total_limit: Option<Duration>,
    /// The body is a successful SSE stream: it must reach its last event (`message_stop`, or an
    /// upstream `error` event), and when upstream breaks it off it ends with a well-formed
    /// `event: error` (when the break falls between events and the body is neither compressed
    /// nor of a fixed length) so clients retry, instead of an abrupt reset.
    pub sse_error_event: bool,
    /// The body carries a content coding: nothing can be appended in plain text.
    pub encoded: bool,
}

pin_project! {
    /// Streams an upstream body to the client frame by frame.
    pub struct RelayBody<B> {
        #[pin]
        inner: B,
        idle_limit: Option<Duration>,
        // A successful event stream: judged by its last event when it ends.
        event_stream: bool,
        // An `event: error` may be appended (plain body of no fixed length).
        may_append: bool,
        // What the client gets after the last upstream frame, when the stream ended early.
        tail: Option<Tail>,
        // Armed for the first moment the body may have been idle for `idle_limit`; a frame only
        // moves `last_activity`, and the timer is moved to the later moment when it fires (see
        // `idle_expired`).
        idle_timer: Option<Pin<Box<Sleep>>>,
        // When the relay started or the last frame came from upstream.
        last_activity: Instant,
        // The relay waited for upstream (a `Pending`) since the last frame.
        waited: bool,
        // A frame went out since the relay last answered `Pending`: hyper may still hold it
        // unwritten, and it drops a connection's unwritten bytes when a body fails.
        unflushed: bool,
        // When the last data frame went to the client.
        last_frame_at: Option<Instant>,
        backpressure_reported: bool,
        deadline: Option<(Duration, Pin<Box<Sleep>>)>,
        observer: Option<Box<dyn RelayObserver>>,
        finished: bool,
        empty_from_start: bool,
    }

    impl<B> PinnedDrop for RelayBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                // A body hyper never had to poll (known empty) ended normally; anything else
                // dropped before its end means the client went away.
                let end = if *this.empty_from_start {
                    RelayEnd::Complete
                } else {
                    RelayEnd::ClientGone
                };
                observer.on_end(end);
            }
        }
    }
}

/// Whether the body has been idle until `due` (the last activity plus the idle limit), polling
/// `timer` so that the task is woken then. The timer is not reset at every frame (each reset
/// re-files it in tokio's timer wheel, about 140 instructions a frame, issue 19): it stays armed
/// for an earlier moment, and when it fires before `due` it is moved to `due` and polled again.
fn idle_expired(timer: &mut Pin<Box<Sleep>>, due: Instant, cx: &mut Context<'_>) -> bool {
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        // The timer fired: its deadline passed, and `due` with it unless `due` is later.
        if timer.deadline() >= due {
            return true;
        }
        timer.as_mut().reset(due);
    }
}

/// What follows the last upstream frame of a stream that ended early.
enum Tail {
    /// One `event: error`, then a clean end.
    Event(Bytes),
    /// An error: the client sees the body cut.
    Cut(BoxError),
}

/// The body ended before its stream's last event and no `event: error` could stand on its own.
#[derive(Debug, thiserror::Error)]
#[error("the upstream ended the stream before its last event")]
struct EndedEarly;

impl<B: Body> RelayBody<B> {
    /// Wraps `inner`, guarded as `options` say, reporting to `observer`.
    pub fn new(inner: B, options: RelayOptions, observer: Box<dyn RelayObserver>) -> Self {
        let RelayOptions {
            idle_limit,
            total_limit,
            sse_error_event,
            encoded,
        } = options;
        let now = Instant::now();
        let empty_from_start = inner.is_end_stream();
        // Appending to a body of announced length would break its framing.
        let may_append = sse_error_event && !encoded && inner.size_hint().exact().is_none();
        RelayBody {
            empty_from_start,
            inner,
            idle_limit,
            event_stream: sse_error_event,
            may_append,
            tail: None,
            waited: false,
            unflushed: false,
            last_frame_at: None,
            last_activity: now,
            backpressure_reported: false,
            idle_timer: idle_limit.map(|limit| Box::pin(tokio::time::sleep_until(now + limit))),
            deadline: total_limit
                .map(|limit| (limit, Box::pin(tokio::time::sleep_until(now + limit)))),
            observer: Some(observer),
            finished: false,
        }
    }
}

/// Whether an `event: error` may follow what the observer saw: a plain event stream standing
/// between two events that has not ended yet (after `message_stop` or an upstream `error`
/// event, the client already knows how the stream went).
fn error_event_fits(may_append: bool, observer: Option<&dyn RelayObserver>) -> bool {
    may_append
        && observer
            .and_then(RelayObserver::stream_position)
            .is_some_and(|position| position.at_event_boundary && !position.ended)
}

/// How a successful event stream that upstream ended cleanly ends for the client: `None` when
/// it reached its last event (or the observer cannot tell), else what follows the last frame.
fn judge_clean_end(
    event_stream: bool,
    may_append: bool,
    observer: Option<&dyn RelayObserver>,
) -> Option<Tail> {
    if !event_stream {
        return None;
    }
    let position = observer.and_then(RelayObserver::stream_position)?;
    if position.ended {
        return None;
    }
    Some(if may_append && position.at_event_boundary {
        Tail::Event(sse_error_event(
            "api_error",
            "the upstream ended the stream before message_stop",
        ))
    } else {
        Tail::Cut(Box::new(EndedEarly))
    })
}

/// Ends a body with `error`: at once when every frame before it went out, else after one
/// `Pending` (the task woken at once, the cut kept in `tail` for the next poll), in which hyper
/// writes what it holds. hyper drops a connection's unwritten bytes when a body fails, and
/// frames that arrive together (a connection driven in the request's task reads them in one
/// go) would otherwise be lost with the response head: the client must get every byte relayed
/// before the cut.
fn fail(
    tail: &mut Option<Tail>,
    unflushed: &mut bool,
    error: BoxError,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if !*unflushed {
        return Poll::Ready(Some(Err(error)));
    }
    *tail = Some(Tail::Cut(error));
    *unflushed = false;
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// A complete SSE `error` event in the Anthropic format.
pub fn sse_error_event(error_type: &str, message: &str) -> Bytes {
    let payload = crate::error::anthropic_error_json(error_type, message);
    let mut event = Vec::with_capacity(payload.len() + 24);
    event.extend_from_slice(b"event: error\ndata: ");
    event.extend_from_slice(&payload);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

impl<B> Body for RelayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display + Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(tail) = this.tail.take() {
            *this.finished = true;
            return match tail {
                Tail::Event(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                Tail::Cut(error) => fail(this.tail, this.unflushed, error, cx),
            };
        }
        if *this.finished {
            return Poll::Ready(None);
        }
        let end = |observer: &mut Option<Box<dyn RelayObserver>>, end: RelayEnd| {
            if let Some(observer) = observer.take() {
                observer.on_end(end);
            }
        };
        let polled = this.inner.as_mut().poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            *this.unflushed = true;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                *this.last_activity = now;
                if let Some(data) = frame.data_ref() {
                    // Found ready without waiting, after the client took its time to ask: the
                    // frame waited for the client, not the client for the frame.
                    let held_back = !*this.waited
                        && this.last_frame_at.is_some_and(|at| {
                            now.saturating_duration_since(at) >= BACKPRESSURE_GAP
                        });
                    *this.waited = false;
                    *this.last_frame_at = Some(now);
                    if let Some(observer) = this.observer.as_mut() {
                        if held_back && !*this.backpressure_reported {
                            *this.backpressure_reported = true;
                            observer.on_backpressure();
                        }
                        observer.on_data(data);
                    }
                }
                if this.inner.is_end_stream() {
                    // hyper stops polling a body of known length once its last byte went out,
                    // so the end must be reported with the last frame, not on the next poll.
                    match judge_clean_end(
                        *this.event_stream,
                        *this.may_append,
                        this.observer.as_deref(),
                    ) {
                        None => {
                            *this.finished = true;
                            end(this.observer, RelayEnd::Complete);
                        }
                        Some(tail) => {
                            // The tail goes out on the next poll (`is_end_stream` says so).
                            *this.tail = Some(tail);
                            end(this.observer, RelayEnd::EndedEarly);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                *this.finished = true;
                let fits = error_event_fits(*this.may_append, this.observer.as_deref());
                end(this.observer, RelayEnd::UpstreamError(error.to_string()));
                if fits {
                    return Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                        "api_error",
                        "the upstream connection failed mid-stream",
                    )))));
                }
                fail(this.tail, this.unflushed, error.into(), cx)
            }
            Poll::Ready(None) => {
                *this.finished = true;
                match judge_clean_end(
                    *this.event_stream,
                    *this.may_append,
                    this.observer.as_deref(),
                ) {
                    None => {
                        end(this.observer, RelayEnd::Complete);
                        Poll::Ready(None)
                    }
                    Some(tail) => {
                        end(this.observer, RelayEnd::EndedEarly);
                        match tail {
                            Tail::Event(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                            Tail::Cut(error) => fail(this.tail, this.unflushed, error, cx),
                        }
                    }
                }
            }
            Poll::Pending => {
                *this.waited = true;
                if let Some((limit, timer)) = this.deadline.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        let limit = *limit;
                        *this.finished = true;
                        end(this.observer, RelayEnd::DeadlineExceeded(limit));
                        return fail(
                            this.tail,
                            this.unflushed,
                            Box::new(RelayError::Deadline(limit)),
                            cx,
                        );
                    }
                }
                if let (Some(limit), Some(timer)) = (this.idle_limit, this.idle_timer.as_mut()) {
                    if idle_expired(timer, *this.last_activity + *limit, cx) {
                        let limit = *limit;
                        *this.finished = true;
                        let fits = error_event_fits(*this.may_append, this.observer.as_deref());
                        end(this.observer, RelayEnd::IdleTimeout(limit));
                        if fits {
                            return Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                                "overloaded_error",
                                &format!("the upstream sent no data for {limit:?}"),
                            )))));
                        }
                        return fail(
                            this.tail,
                            this.unflushed,
                            Box::new(RelayError::Idle(limit)),
                            cx,
                        );
                    }
                }
                *this.unflushed = false;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tail.is_none() && (self.finished || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
