//! Unit tests of `body.rs`, kept in their own file so the module reads as its logic.

use super::*;
use std::sync::{Arc, Mutex};

/// Records what it sees, and reads the stream with the usage tap's SSE decoder (as the
/// forwarder's observer does) to answer where the stream stands.
#[derive(Clone)]
struct Recorder {
    data: Arc<Mutex<Vec<u8>>>,
    ends: Arc<Mutex<Vec<RelayEnd>>>,
    tap: Arc<Mutex<ccf_tokens::BodyTap>>,
    backpressure: Arc<Mutex<u32>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            data: Arc::default(),
            ends: Arc::default(),
            backpressure: Arc::default(),
            tap: Arc::new(Mutex::new(ccf_tokens::BodyTap::new(
                Some("text/event-stream"),
                None,
            ))),
        }
    }
}

impl RelayObserver for Recorder {
    fn on_data(&mut self, data: &Bytes) {
        self.data.lock().unwrap().extend_from_slice(data);
        self.tap.lock().unwrap().feed(data);
    }
    fn on_end(self: Box<Self>, end: RelayEnd) {
        self.ends.lock().unwrap().push(end);
    }
    fn stream_position(&self) -> Option<StreamPosition> {
        self.tap.lock().unwrap().stream_position()
    }
    fn on_backpressure(&mut self) {
        *self.backpressure.lock().unwrap() += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn frames_that_waited_for_a_slow_client_report_backpressure_once() {
    let recorder = Recorder::default();
    let (sender, stream_body) = channel_body();
    let mut body = Box::pin(RelayBody::new(
        stream_body,
        sse_options(),
        Box::new(recorder.clone()),
    ));
    let ping = || {
        Ok(Frame::data(Bytes::from_static(
            b"event: ping\ndata: {}\n\n",
        )))
    };
    // Paced by upstream: the relay waits for each frame.
    for _ in 0..3 {
        let sender = sender.clone();
        let send_later = async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send(ping()).await.unwrap();
        };
        let (frame, ()) = tokio::join!(body.frame(), send_later);
        frame.unwrap().unwrap();
    }
    // A fast client reading a burst: frames ready, asked for at once.
    sender.send(ping()).await.unwrap();
    sender.send(ping()).await.unwrap();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(*recorder.backpressure.lock().unwrap(), 0);
    // A slow client: the frames waited while the client took 10 ms to ask.
    for _ in 0..2 {
        sender.send(ping()).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        body.frame().await.unwrap().unwrap();
    }
    assert_eq!(*recorder.backpressure.lock().unwrap(), 1, "reported once");
}

fn sse_options() -> RelayOptions {
    RelayOptions {
        sse_error_event: true,
        ..RelayOptions::default()
    }
}

/// The text of the next frame, which must be data.
async fn next_text<B>(body: &mut Pin<Box<RelayBody<B>>>) -> String
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display + Into<BoxError>,
{
    let frame = body.frame().await.expect("a frame").expect("not an error");
    String::from_utf8(frame.into_data().expect("data").to_vec()).expect("UTF-8")
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

/// A relayed channel body cut after 5 s without a frame, reporting to `recorder`.
fn idle_limited(stream_body: ChannelBody, recorder: &Recorder) -> Pin<Box<RelayBody<ChannelBody>>> {
    Box::pin(RelayBody::new(
        stream_body,
        RelayOptions {
            idle_limit: Some(IDLE_LIMIT),
            ..RelayOptions::default()
        },
        Box::new(recorder.clone()),
    ))
}

const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// The body's next frame is the idle cut, reported as the body's one end.
async fn expect_idle_cut(body: &mut Pin<Box<RelayBody<ChannelBody>>>, recorder: &Recorder) {
    let error = body.frame().await.unwrap().unwrap_err();
    assert!(error.to_string().contains("no data"));
    assert_eq!(
        *recorder.ends.lock().unwrap(),
        vec![RelayEnd::IdleTimeout(IDLE_LIMIT)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_ends_with_an_idle_error() {
    let recorder = Recorder::default();
    let (_sender, stream_body) = channel_body();
    let mut body = idle_limited(stream_body, &recorder);
    expect_idle_cut(&mut body, &recorder).await;
    assert!(body.frame().await.is_none());
}

/// Frames 3 s apart keep a body with a 5 s idle limit going well past 5 s (the idle timer, armed
/// for the start plus 5 s, is moved on when it fires, not at each frame); the silence after the
/// last frame cuts the body 5 s after that frame.
#[tokio::test(start_paused = true)]
async fn frames_keep_a_body_alive_and_the_idle_limit_counts_from_the_last_one() {
    let recorder = Recorder::default();
    let (sender, stream_body) = channel_body();
    let mut body = idle_limited(stream_body, &recorder);
    let _feeder = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sender
                .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
        }
        // Upstream stays connected and silent.
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        let frame = body.frame().await.unwrap().expect("a frame, not a cut");
        assert_eq!(frame.into_data().unwrap(), "x");
    }
    let last_frame = tokio::time::Instant::now();
    assert!(last_frame - started >= Duration::from_secs(15));
    expect_idle_cut(&mut body, &recorder).await;
    let silent = tokio::time::Instant::now() - last_frame;
    assert!(
        silent >= IDLE_LIMIT && silent < IDLE_LIMIT + Duration::from_secs(1),
        "cut after {silent:?} of silence"
    );
}

type ChannelBody = http_body_util::StreamBody<
    tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::io::Error>>,
>;

type ChannelSender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn channel_body() -> (ChannelSender, ChannelBody) {
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
    send_reset(&sender).await;
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
async fn a_blank_line_flushed_on_its_own_still_ends_the_event() {
    let recorder = Recorder::default();
    let (sender, stream_body) = channel_body();
    let mut body = Box::pin(RelayBody::new(
        stream_body,
        sse_options(),
        Box::new(recorder.clone()),
    ));
    for piece in [&b"event: ping\ndata: {}\n"[..], b"\n"] {
        sender
            .send(Ok(Frame::data(Bytes::from_static(piece))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
    }
    send_reset(&sender).await;
    let last = next_text(&mut body).await;
    assert!(last.starts_with("event: error\ndata: {"), "{last}");
    assert!(body.frame().await.is_none(), "then a clean end");
    assert!(matches!(
        recorder.ends.lock().unwrap().as_slice(),
        [RelayEnd::UpstreamError(_)]
    ));
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_before_message_stop_ends_with_an_error_event() {
    let recorder = Recorder::default();
    let (sender, stream_body) = channel_body();
    let mut body = Box::pin(RelayBody::new(
        stream_body,
        sse_options(),
        Box::new(recorder.clone()),
    ));
    sender
        .send(Ok(Frame::data(Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
        ))))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    drop(sender);
    let last = next_text(&mut body).await;
    assert!(last.starts_with("event: error\ndata: {"), "{last}");
    assert!(last.contains("message_stop"), "{last}");
    assert!(body.frame().await.is_none(), "then a clean end");
    assert_eq!(*recorder.ends.lock().unwrap(), vec![RelayEnd::EndedEarly]);
}

#[tokio::test]
async fn a_stream_of_known_length_without_message_stop_is_cut_after_its_last_frame() {
    let recorder = Recorder::default();
    let mut body = Box::pin(RelayBody::new(
        Full::new(Bytes::from_static(b"event: ping\ndata: {}\n\n")),
        sse_options(),
        Box::new(recorder.clone()),
    ));
    assert_eq!(next_text(&mut body).await, "event: ping\ndata: {}\n\n");
    assert!(!body.is_end_stream(), "the end is still to come");
    assert!(
        body.frame().await.unwrap().is_err(),
        "no bytes beyond the announced length: the body is cut"
    );
    assert!(body.frame().await.is_none());
    assert_eq!(*recorder.ends.lock().unwrap(), vec![RelayEnd::EndedEarly]);
}

#[tokio::test]
async fn a_stream_that_reaches_message_stop_ends_as_it_came() {
    let recorder = Recorder::default();
    let (sender, stream_body) = channel_body();
    let mut body = Box::pin(RelayBody::new(
        stream_body,
        sse_options(),
        Box::new(recorder.clone()),
    ));
    sender
        .send(Ok(Frame::data(Bytes::from_static(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ))))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    drop(sender);
    assert!(body.frame().await.is_none());
    assert_eq!(*recorder.ends.lock().unwrap(), vec![RelayEnd::Complete]);
}

/// An event stream relayed from a channel, whose first frame (already sent) stops in the middle
/// of an event.
async fn relay_of_half_an_event() -> (ChannelSender, Pin<Box<RelayBody<ChannelBody>>>) {
    let (sender, stream_body) = channel_body();
    let body = Box::pin(RelayBody::new(
        stream_body,
        sse_options(),
        Box::new(Recorder::default()),
    ));
    sender
        .send(Ok(Frame::data(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"ty",
        ))))
        .await
        .unwrap();
    (sender, body)
}

/// The upstream connection fails.
async fn send_reset(sender: &ChannelSender) {
    sender
        .send(Err(std::io::Error::other("connection reset")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cut_inside_an_sse_event_is_an_error_not_a_corrupted_event() {
    let (sender, mut body) = relay_of_half_an_event().await;
    body.frame().await.unwrap().unwrap();
    send_reset(&sender).await;
    assert!(body.frame().await.unwrap().is_err());
}

#[tokio::test]
async fn a_cut_right_after_frames_waits_one_poll_so_hyper_writes_them_first() {
    // Frames and the failure that follows them, all ready at once (a connection driven in the
    // request's task reads them in one go): hyper drops unwritten bytes when a body fails.
    let (sender, mut body) = relay_of_half_an_event().await;
    send_reset(&sender).await;
    let wakes = Arc::new(WakeCount::default());
    let waker = std::task::Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let first = body.as_mut().poll_frame(&mut cx);
    assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
    assert!(
        body.as_mut().poll_frame(&mut cx).is_pending(),
        "the failure waits for one poll"
    );
    assert_eq!(
        wakes.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "and asks for it at once"
    );
    assert!(!body.is_end_stream());
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(Some(Err(_)))
    ));
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
}

#[tokio::test]
async fn a_cut_after_the_relay_waited_comes_at_once() {
    let (sender, mut body) = relay_of_half_an_event().await;
    body.frame().await.unwrap().unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    // Nothing ready: hyper writes what it holds while the body waits.
    assert!(body.as_mut().poll_frame(&mut cx).is_pending());
    send_reset(&sender).await;
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(Some(Err(_)))
    ));
}

/// Counts wake-ups.
#[derive(Default)]
struct WakeCount(std::sync::atomic::AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
