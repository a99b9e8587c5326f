//! Response bodies: the relay body that streams upstream frames to the client untouched while
//! enforcing the stream timeouts and reporting how the stream ended, plus small helpers.
//!
//! Invariant: a frame is handed to the client in the same poll that received it from upstream;
//! nothing is buffered, re-chunked, added or removed. Observers see a borrowed view of each data
//! frame (the seam where usage extraction taps the stream).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
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
}

/// Watches a relayed body: sees every data frame and learns exactly once how it ended.
pub trait RelayObserver: Send + 'static {
    /// Called with every data frame, before it is handed to the client.
    fn on_data(&mut self, data: &Bytes);
    /// Called exactly once, when the body ends for any reason (including being dropped).
    fn on_end(self: Box<Self>, end: RelayEnd);
}

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
    /// The body is a successful SSE stream: when upstream fails mid-stream, end it with a
    /// well-formed `event: error` (when the cut falls between events) so clients retry, instead
    /// of an abrupt reset.
    pub sse_error_event: bool,
}

pin_project! {
    /// Streams an upstream body to the client frame by frame.
    pub struct RelayBody<B> {
        #[pin]
        inner: B,
        idle_limit: Option<Duration>,
        sse_error_event: bool,
        at_event_boundary: bool,
        idle_timer: Option<Pin<Box<Sleep>>>,
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

impl<B: Body> RelayBody<B> {
    /// Wraps `inner`, guarded as `options` say, reporting to `observer`.
    pub fn new(inner: B, options: RelayOptions, observer: Box<dyn RelayObserver>) -> Self {
        let RelayOptions {
            idle_limit,
            total_limit,
            sse_error_event,
        } = options;
        let now = Instant::now();
        let empty_from_start = inner.is_end_stream();
        RelayBody {
            empty_from_start,
            inner,
            idle_limit,
            sse_error_event,
            at_event_boundary: true,
            idle_timer: idle_limit.map(|limit| Box::pin(tokio::time::sleep_until(now + limit))),
            deadline: total_limit
                .map(|limit| (limit, Box::pin(tokio::time::sleep_until(now + limit)))),
            observer: Some(observer),
            finished: false,
        }
    }
}

/// Whether a chunk of an SSE stream ends exactly after an event (a blank line).
fn ends_an_sse_event(data: &[u8]) -> bool {
    data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n") || data.ends_with(b"\r\r")
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
        if *this.finished {
            return Poll::Ready(None);
        }
        let end = |observer: &mut Option<Box<dyn RelayObserver>>, end: RelayEnd| {
            if let Some(observer) = observer.take() {
                observer.on_end(end);
            }
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !data.is_empty() {
                        *this.at_event_boundary = ends_an_sse_event(data);
                    }
                    if let Some(observer) = this.observer.as_mut() {
                        observer.on_data(data);
                    }
                }
                if this.inner.is_end_stream() {
                    // hyper stops polling a body of known length once its last byte went out,
                    // so the end must be reported with the last frame, not on the next poll.
                    *this.finished = true;
                    end(this.observer, RelayEnd::Complete);
                } else if let (Some(limit), Some(timer)) =
                    (this.idle_limit, this.idle_timer.as_mut())
                {
                    timer.as_mut().reset(Instant::now() + *limit);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                *this.finished = true;
                end(this.observer, RelayEnd::UpstreamError(error.to_string()));
                if *this.sse_error_event && *this.at_event_boundary {
                    return Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                        "api_error",
                        "the upstream connection failed mid-stream",
                    )))));
                }
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                end(this.observer, RelayEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((limit, timer)) = this.deadline.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        let limit = *limit;
                        *this.finished = true;
                        end(this.observer, RelayEnd::DeadlineExceeded(limit));
                        return Poll::Ready(Some(Err(Box::new(RelayError::Deadline(limit)))));
                    }
                }
                if let (Some(limit), Some(timer)) = (this.idle_limit, this.idle_timer.as_mut()) {
                    if timer.as_mut().poll(cx).is_ready() {
                        let limit = *limit;
                        *this.finished = true;
                        end(this.observer, RelayEnd::IdleTimeout(limit));
                        if *this.sse_error_event && *this.at_event_boundary {
                            return Poll::Ready(Some(Ok(Frame::data(sse_error_event(
                                "overloaded_error",
                                &format!("the upstream sent no data for {limit:?}"),
                            )))));
                        }
                        return Poll::Ready(Some(Err(Box::new(RelayError::Idle(limit)))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder {
        data: Arc<Mutex<Vec<u8>>>,
        ends: Arc<Mutex<Vec<RelayEnd>>>,
    }

    impl RelayObserver for Recorder {
        fn on_data(&mut self, data: &Bytes) {
            self.data.lock().unwrap().extend_from_slice(data);
        }
        fn on_end(self: Box<Self>, end: RelayEnd) {
            self.ends.lock().unwrap().push(end);
        }
    }

    #[tokio::test]
    async fn a_body_of_known_length_reports_completion_with_its_last_frame() {
        let recorder = Recorder::default();
        let mut body = Box::pin(RelayBody::new(
            Full::new(Bytes::from_static(b"hello")),
            RelayOptions::default(),
            Box::new(recorder.clone()),
        ));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        // hyper drops a body of known length without polling for its end.
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*recorder.ends.lock().unwrap(), vec![RelayEnd::Complete]);
        assert_eq!(&*recorder.data.lock().unwrap(), b"hello");
    }

    #[tokio::test]
    async fn dropping_an_unfinished_body_reports_the_client_gone_once() {
        let recorder = Recorder::default();
        let (sender, stream_body) = channel_body();
        let mut body = Box::pin(RelayBody::new(
            stream_body,
            RelayOptions::default(),
            Box::new(recorder.clone()),
        ));
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(*recorder.ends.lock().unwrap(), vec![RelayEnd::ClientGone]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_with_an_idle_error() {
        let recorder = Recorder::default();
        let (_sender, stream_body) = channel_body();
        let mut body = Box::pin(RelayBody::new(
            stream_body,
            RelayOptions {
                idle_limit: Some(Duration::from_secs(5)),
                ..RelayOptions::default()
            },
            Box::new(recorder.clone()),
        ));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("no data"));
        assert_eq!(
            *recorder.ends.lock().unwrap(),
            vec![RelayEnd::IdleTimeout(Duration::from_secs(5))]
        );
        assert!(body.frame().await.is_none());
    }

    type ChannelBody = http_body_util::StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::io::Error>>,
    >;

    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
        ChannelBody,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        (
            sender,
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        )
    }

    #[tokio::test]
    async fn a_cut_between_sse_events_ends_with_an_error_event_and_a_clean_end() {
        let recorder = Recorder::default();
        let (sender, stream_body) = channel_body();
        let mut body = Box::pin(RelayBody::new(
            stream_body,
            RelayOptions {
                sse_error_event: true,
                ..RelayOptions::default()
            },
            Box::new(recorder.clone()),
        ));
        sender
            .send(Ok(Frame::data(Bytes::from_static(
                b"event: ping\ndata: {}\n\n",
            ))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        sender
            .send(Err(std::io::Error::other("connection reset")))
            .await
            .unwrap();
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(last.to_vec()).unwrap();
        assert!(text.starts_with("event: error\ndata: {"), "{text}");
        assert!(text.ends_with("\n\n"));
        let json: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("event: error\ndata: ").trim()).unwrap();
        assert_eq!(json["error"]["type"], "api_error");
        assert!(body.frame().await.is_none(), "then a clean end");
        assert!(matches!(
            recorder.ends.lock().unwrap().as_slice(),
            [RelayEnd::UpstreamError(_)]
        ));
    }

    #[tokio::test]
    async fn a_cut_inside_an_sse_event_is_an_error_not_a_corrupted_event() {
        let (sender, stream_body) = channel_body();
        let mut body = Box::pin(RelayBody::new(
            stream_body,
            RelayOptions {
                sse_error_event: true,
                ..RelayOptions::default()
            },
            Box::new(Recorder::default()),
        ));
        sender
            .send(Ok(Frame::data(Bytes::from_static(
                b"event: content_block_delta\ndata: {\"ty",
            ))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        sender
            .send(Err(std::io::Error::other("connection reset")))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_err());
    }
}
