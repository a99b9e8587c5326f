//! The fault helpers of the test kit: [`RawUpstream`] (bytes below HTTP: lying lengths, resets,
//! held connections) and the body byte counter with [`Reply::bulk_sse`] (backpressure).

use std::time::Duration;

use ccf_testkit::{MockUpstream, RawEnd, RawReply, RawUpstream, Reply, ReplyOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

async fn post(stream: &mut TcpStream, body: &str) {
    stream
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
}

async fn read_to_end(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("ends in time")?;
    Ok(received)
}

#[tokio::test]
async fn raw_replies_are_written_verbatim_and_requests_recorded() {
    let upstream = RawUpstream::start(RawReply::response(200, &["content-length: 99"], "short"))
        .await
        .expect("start");
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    post(&mut stream, "{\"a\":1}").await;
    let received = read_to_end(&mut stream).await.expect("closed cleanly");
    assert_eq!(
        received,
        b"HTTP/1.1 200 Scripted\r\ncontent-length: 99\r\n\r\nshort"
    );
    let requests = upstream.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].method(), "POST");
    assert_eq!(requests[0].target(), "/v1/messages");
    assert_eq!(requests[0].header("HOST"), Some("x"));
    assert_eq!(requests[0].body, "{\"a\":1}");
}

#[tokio::test]
async fn keep_alive_replies_serve_several_requests_and_chunked_bodies_are_decoded() {
    let upstream = RawUpstream::start(
        RawReply::response(200, &["content-length: 2"], "ok").then(RawEnd::KeepAlive),
    )
    .await
    .expect("start");
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    post(&mut stream, "one").await;
    stream
        .write_all(b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n")
        .await
        .expect("write");
    let requests = upstream.wait_for_requests(2, WAIT).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body, "two");
    assert_eq!(requests[0].connection, requests[1].connection);
    // Probes are answered and not recorded.
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0u8; 4096];
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("{\"data\":[]}") {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("in time")
            .expect("read");
        assert!(read > 0);
        received.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn a_reset_reply_resets_the_connection() {
    let upstream = RawUpstream::start(RawReply::new("HTTP/1.1 200 OK\r\n").then(RawEnd::Reset))
        .await
        .expect("start");
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    post(&mut stream, "x").await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let error = loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("in time")
        {
            Ok(0) => panic!("closed cleanly instead of a reset"),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_held_reply_keeps_the_connection_open() {
    let upstream = RawUpstream::start(RawReply::new("HTTP/1.1 200 OK\r\n").then(RawEnd::Hold))
        .await
        .expect("start");
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    post(&mut stream, "x").await;
    let mut buffer = [0u8; 64];
    let read = stream.read(&mut buffer).await.expect("read");
    assert_eq!(&buffer[..read], b"HTTP/1.1 200 OK\r\n");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer))
            .await
            .is_err(),
        "nothing more, and not closed"
    );
}

#[tokio::test]
async fn the_byte_counter_stops_when_the_reader_stops() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::bulk_sse(vec![b'x'; 64 * 1024], 1024));
    let mut stream = TcpStream::connect(upstream.addr()).await.expect("connect");
    post(&mut stream, "{}").await;
    let mut buffer = vec![0u8; 4096];
    let read = stream.read(&mut buffer).await.expect("read");
    assert!(read > 0);
    // The client reads nothing more: the counter comes to rest far below 64 MiB.
    let mut last = upstream.body_bytes_sent();
    let mut unchanged = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while unchanged < 5 {
        assert!(tokio::time::Instant::now() < deadline, "never settles");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let now = upstream.body_bytes_sent();
        if now == last {
            unchanged += 1;
        } else {
            (last, unchanged) = (now, 0);
        }
    }
    assert!(last > 0 && last < 32 * 1024 * 1024, "{last}");
    drop(stream);
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
}
