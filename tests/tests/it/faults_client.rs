//! Fault injection, client side: clients that leave before, during and after the upstream
//! answered, read very slowly, send oversized, truncated or malformed requests, invalid headers,
//! thousands of connections at once, or hold connections open without sending (slowloris).
//! Every scenario checks what the client got, what upstream saw, what the database holds, and
//! that the forwarder still serves a normal request afterwards.

use crate::faults_common;
use crate::support;

use std::time::Duration;

use ccf_store::status;
use ccf_testkit::{MockUpstream, Reply, ReplyOutcome};
use faults_common::{message, request_id, Rig};
use support::{messages_sent, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The forwarder's `host:port`.
fn address(rig: &Rig) -> String {
    rig.forwarder.base.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes or `WAIT` passes; returns what arrived and whether it closed.
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return (received, false),
        }
    }
}

/// Reads until `needle` arrived (or panics at the deadline).
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !received
        .windows(needle.len())
        .any(|window| window == needle)
    {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("bytes arrive in time")
            .expect("read");
        assert!(
            read > 0,
            "closed before {:?}",
            String::from_utf8_lossy(needle)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    received
}

/// Stops the rig and returns the request id of every row it wrote, oldest first. The list is
/// final (every request ended, every row written, see [`Rig::stop_settled`]), so a row that is
/// missing from it will never appear.
async fn row_ids_after_stop(rig: Rig) -> Vec<String> {
    rig.stop_settled()
        .await
        .into_iter()
        .map(|row| row.record.request_id)
        .collect()
}

#[tokio::test]
async fn a_client_leaving_before_the_upstream_answered_cancels_and_is_recorded() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::hang());
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let raw = rig.forwarder.raw_request(&message(false).to_string()).await;
    upstream.wait_for_requests(1, WAIT).await;
    drop(raw);
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone),
        "the upstream request is dropped with the client"
    );
    let row = rig.only_row().await;
    assert_eq!(row.record.status, status::CANCELLED, "{:?}", row.record);
    assert!(row.record.cancel_reason.is_some(), "{:?}", row.record);
    let normal = rig.serves_normally().await;
    assert_eq!(messages_sent(&upstream), 2);
    assert_eq!(
        row_ids_after_stop(rig).await,
        [row.record.request_id, normal.record.request_id]
    );
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_keeping_the_tokens_seen() {
    let upstream = MockUpstream::start().await;
    upstream.enqueue(
        Reply::sse()
            .deltas(500)
            .chunk_delay(Duration::from_millis(10)),
    );
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let mut raw = rig.forwarder.raw_request(&message(true).to_string()).await;
    let head = read_until(&mut raw, b"content_block_delta").await;
    assert!(head.starts_with(b"HTTP/1.1 200"));
    drop(raw);
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    let row = rig.only_row().await;
    assert_eq!(row.record.status, status::CANCELLED, "{:?}", row.record);
    assert_eq!(row.record.usage.input_tokens, 12, "message_start was seen");
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [row.record.request_id, normal.record.request_id]
    );
}

#[tokio::test]
async fn a_client_leaving_after_the_upstream_answered_still_bills_the_answer() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let raw = rig.forwarder.raw_request(&message(false).to_string()).await;
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::Completed)
    );
    // The mock has written its answer; the forwarder (on its own per-core thread) has received
    // it once its first bytes reach the client's socket. Peeking does not read them.
    let mut first_byte = [0u8; 1];
    let peeked = tokio::time::timeout(WAIT, raw.peek(&mut first_byte))
        .await
        .expect("the answer reaches the client's socket in time")
        .expect("peek");
    assert_eq!((peeked, &first_byte), (1, b"H"));
    // The client never reads its answer.
    drop(raw);
    let row = rig.only_row().await;
    assert!(status::is_terminal(&row.record.status), "{:?}", row.record);
    assert_eq!(row.record.usage.input_tokens, 12, "{:?}", row.record);
    assert_eq!(row.record.usage.output_tokens, 6, "{:?}", row.record);
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [row.record.request_id, normal.record.request_id]
    );
}

#[tokio::test]
async fn a_slow_reader_holds_the_upstream_back_and_memory_stays_bounded() {
    // 256 MiB of 64 KiB events: far more than any buffer between the two sockets.
    const EVENT: usize = 64 * 1024;
    const EVENTS: usize = 4096;
    /// Kernel socket buffers (both sockets, both sides) plus hyper's: generously bounded.
    const IN_FLIGHT_BOUND: u64 = 40 * 1024 * 1024;
    let mut event = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"".to_vec();
    event.resize(EVENT - 6, b'z');
    event.extend_from_slice(b"\"}}\n\n");
    let upstream = MockUpstream::start().await;
    upstream.enqueue(Reply::bulk_sse(event, EVENTS));
    let rig = Rig::in_front_of(&upstream.url(), "streaming:\n  max_idle_time: 1h\n", "").await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("small buffer");
    let mut client = socket
        .connect(address(&rig).parse().expect("address"))
        .await
        .expect("connect");
    let body = message(true).to_string();
    client
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");

    let mut read_total: u64 = 0;
    let mut buffer = vec![0u8; 16 * 1024];
    let mut plateaus = Vec::new();
    for round in 0..2 {
        read_total = read_more(&mut client, &mut buffer, read_total, 4 * 1024 * 1024).await;
        let read = read_total;
        // The client pauses: the upstream must come to a stop shortly after.
        let plateau = settle(&upstream).await;
        assert!(
            plateau > read,
            "round {round}: upstream got ahead of the client a little ({plateau} vs {read})"
        );
        assert!(
            plateau - read < IN_FLIGHT_BOUND,
            "round {round}: upstream wrote {plateau} bytes while the client read {read}: not bounded"
        );
        eprintln!("slow reader, round {round}: client read {read} bytes, upstream wrote {plateau}");
        plateaus.push(plateau);
    }
    assert!(
        plateaus[1] > plateaus[0],
        "upstream is read as the client drains: {plateaus:?}"
    );
    assert!(plateaus[1] < (EVENT * EVENTS) as u64 / 2);
    drop(client);
    assert_eq!(
        upstream.wait_for_outcome(0, WAIT).await,
        Some(ReplyOutcome::ClientGone)
    );
    let row = rig.only_row().await;
    assert_eq!(row.record.status, status::CANCELLED, "{:?}", row.record);
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [row.record.request_id, normal.record.request_id]
    );
}

/// Reads `amount` more bytes; returns the new total.
async fn read_more(client: &mut TcpStream, buffer: &mut [u8], mut total: u64, amount: u64) -> u64 {
    let target = total + amount;
    while total < target {
        let read = tokio::time::timeout(WAIT, client.read(buffer))
            .await
            .expect("data keeps coming")
            .expect("read");
        assert!(read > 0, "stream ended early");
        total += read as u64;
    }
    total
}

/// Waits until the mock's body byte count stops growing (unchanged over 300 ms) and returns it.
async fn settle(upstream: &MockUpstream) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = upstream.body_bytes_sent();
    let mut unchanged = 0;
    while unchanged < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never stopped: the forwarder is not applying backpressure ({last} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = upstream.body_bytes_sent();
        if now == last {
            unchanged += 1;
        } else {
            unchanged = 0;
            last = now;
        }
    }
    last
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_never_reaches_upstream_or_the_database() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(
        &upstream.url(),
        "server:\n  max_request_body_size: 1KB\n",
        "",
    )
    .await;
    let mut body = message(false);
    body["messages"][0]["content"] = "x".repeat(4096).into();
    let answer = rig.forwarder.messages(body, &[]).await;
    answer.assert_anthropic_error(413, "request_too_large");
    // Refused before it became a request: nothing to bill, no row. Once the app has stopped
    // after a normal request, that request's row is the only one, and upstream saw it alone.
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [normal.record.request_id],
        "the refused request left no row"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the normal request reached upstream"
    );
}

#[tokio::test]
async fn a_truncated_body_is_refused_and_never_reaches_upstream() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let mut stream = TcpStream::connect(address(&rig)).await.expect("connect");
    let body = message(false).to_string();
    stream
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                body.len() + 500,
                body
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let (answer, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the forwarder closes the connection");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [normal.record.request_id],
        "the truncated request left no row"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "a truncated request is never forwarded as if it were whole"
    );
}

#[tokio::test]
async fn malformed_json_gets_an_anthropic_400_and_a_failed_row() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let answer = rig
        .forwarder
        .send(
            hyper::Method::POST,
            "/v1/messages",
            &[("content-type", "application/json")],
            "{\"model\": \"claude-sonnet-4-5\", \"messages\": [",
        )
        .await;
    answer.assert_anthropic_error(400, "invalid_request_error");
    // A transparent proxy: the body is forwarded verbatim and upstream's verdict relayed.
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body_text(),
        "{\"model\": \"claude-sonnet-4-5\", \"messages\": ["
    );
    let row = rig.row(&request_id(&answer)).await;
    assert_eq!(row.record.http_status_code, Some(400));
    faults_common::assert_failed(&row, "HTTP 400: invalid_request_error");
    rig.serves_normally().await;
}

#[tokio::test]
async fn invalid_headers_get_400_and_never_reach_upstream() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    let body = message(false).to_string();
    for bad in [
        "a header line without a colon\r\n",
        "bad name: value\r\n",
        "x-control: a\x01b\r\n",
        "content-length: 5\r\ncontent-length: 6\r\n",
    ] {
        let mut stream = TcpStream::connect(address(&rig)).await.expect("connect");
        let length = if bad.starts_with("content-length") {
            String::new()
        } else {
            format!("content-length: {}\r\n", body.len())
        };
        stream
            .write_all(
                format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\n{bad}{length}\r\n{body}")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let (answer, closed) = read_to_close(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(closed, "{bad:?}: the connection is closed");
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?}: {answer}");
    }
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [normal.record.request_id],
        "no invalid request left a row"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the normal request reached upstream"
    );
}

/// The (soft, hard) limits on open files of this process, from `/proc/self/limits`.
fn open_file_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|word| word.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// Raises the soft limit on open files to `needed` (at most the hard limit) with `prlimit`
/// (the workspace forbids the unsafe `setrlimit` call); panics with the reason if that is not
/// enough.
fn ensure_open_files(needed: u64) {
    let Some((soft, hard)) = open_file_limits() else {
        return; // Not Linux: trust the platform's defaults.
    };
    if soft >= needed {
        return;
    }
    let raised = needed.min(hard);
    let _ = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={raised}:{hard}"))
        .status();
    let soft = open_file_limits().map_or(soft, |(soft, _)| soft);
    assert!(
        soft >= needed,
        "this test needs {needed} open files; the soft limit is {soft} (hard {hard}): raise it with `ulimit -n`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_are_all_answered_and_recorded() {
    const CONNECTIONS: usize = 2000;
    // Client, forwarder and mock all live in this process: a client socket, the forwarder's
    // two, and the mock's one per request, plus the other tests running alongside.
    ensure_open_files(CONNECTIONS as u64 * 4 + 2048);
    let upstream = MockUpstream::start().await;
    // Slow enough answers that requests pile up past the in-flight limit.
    upstream.set_default(Reply::auto().header_delay(Duration::from_millis(100)));
    let rig = Rig::in_front_of(
        &upstream.url(),
        "server:\n  max_in_flight: 300\n  max_connections: 4096\n",
        "",
    )
    .await;
    let started = std::time::Instant::now();
    let address = address(&rig);
    let body = message(false).to_string();
    // Connections are opened at most 256 at a time (all of them stay open together): a burst
    // of 2,000 simultaneous handshakes would overflow the listen backlog (1,024), and the
    // kernel would delay the excess by SYN-ACK retransmits of seconds each.
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let clients = (0..CONNECTIONS).map(|_| {
        let address = address.clone();
        let body = body.clone();
        let handshakes = std::sync::Arc::clone(&handshakes);
        tokio::spawn(async move {
            let permit = handshakes.acquire_owned().await.map_err(std::io::Error::other)?;
            let mut stream = TcpStream::connect(&address).await?;
            drop(permit);
            stream
                .write_all(
                    format!(
                        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await?;
            let mut answer = Vec::new();
            match tokio::time::timeout(WAIT * 6, stream.read_to_end(&mut answer)).await {
                Ok(result) => {
                    result?;
                }
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "no complete answer in time; got {:?}",
                        String::from_utf8_lossy(&answer)
                    )))
                }
            }
            Ok::<_, std::io::Error>(answer)
        })
    });
    let answers = futures_util::future::join_all(clients).await;
    let mut ok = 0;
    let mut overloaded = 0;
    for answer in answers {
        let answer = answer
            .expect("client task")
            .expect("every connection is answered");
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else if text.starts_with("HTTP/1.1 529") && text.contains("overloaded_error") {
            overloaded += 1;
        } else {
            panic!("neither answered nor clearly refused: {text}");
        }
    }
    eprintln!(
        "{CONNECTIONS} concurrent connections: {ok} answered, {overloaded} refused with 529 in {:?}",
        started.elapsed()
    );
    assert_eq!(ok + overloaded, CONNECTIONS);
    assert!(
        ok >= 300,
        "the in-flight limit still lets its share through"
    );
    assert_eq!(
        messages_sent(&upstream),
        ok,
        "upstream saw each answered request once"
    );
    let rows = rig.final_rows(ok).await;
    let completed = rows
        .iter()
        .filter(|row| row.record.status == status::COMPLETED)
        .count();
    assert_eq!(completed, ok, "every answered request is in the database");
    rig.serves_normally().await;
    // Once the app has stopped every row is written: the answered requests and the normal one.
    let rows = rig.stop_settled().await;
    assert_eq!(
        rows.len(),
        ok + 1,
        "a request refused with 529 never became a row"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(
        &upstream.url(),
        "server:\n  header_read_timeout: 300ms\n",
        "",
    )
    .await;
    // Slowloris: a partial head, then silence.
    let mut slow = TcpStream::connect(address(&rig)).await.expect("connect");
    slow.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let (answer, closed) = read_to_close(&mut slow).await;
    assert!(
        closed,
        "the forwarder closes a connection stuck in its headers"
    );
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // An idle connection that never sends a byte is closed too.
    let mut idle = TcpStream::connect(address(&rig)).await.expect("connect");
    let (_, closed) = read_to_close(&mut idle).await;
    assert!(closed, "an idle connection without a request is closed");
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [normal.record.request_id],
        "neither connection left a row"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the normal request reached upstream"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(
        &upstream.url(),
        "server:\n  header_read_timeout: 300ms\n",
        "",
    )
    .await;
    let mut stream = rig.forwarder.raw_request(&message(false).to_string()).await;
    let answer = read_until(&mut stream, b"\"output_tokens\"").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // The connection stays open for keep-alive; idle, it must not stay open for ever.
    let (rest, closed) = read_to_close(&mut stream).await;
    assert!(closed, "an idle keep-alive connection is closed");
    let _ = rest;
    assert_eq!(messages_sent(&upstream), 1);
    let row = rig.only_row().await;
    assert_eq!(row.record.status, status::COMPLETED);
    let normal = rig.serves_normally().await;
    assert_eq!(
        row_ids_after_stop(rig).await,
        [row.record.request_id, normal.record.request_id]
    );
}
