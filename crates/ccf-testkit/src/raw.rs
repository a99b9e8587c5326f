//! [`RawUpstream`]: a scripted upstream below HTTP, for faults hyper would never produce on
//! purpose — a `content-length` that lies, a connection reset (RST) in the middle of a body, a
//! connection that stays open after a partial answer.
//!
//! Ownership: [`RawUpstream::start`] spawns one accept task owning a `JoinSet` of connection
//! tasks; dropping the last handle aborts the accept task, which aborts every connection (their
//! sockets close). Each connection reads requests one after the other (keep-alive), records
//! them, and writes the next scripted [`RawReply`] byte for byte. Health probes
//! (`GET …/v1/models`) get a small models list and are not recorded, so a forwarder's
//! background checks never take a scripted reply.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The answer to health probes.
const PROBE_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"data\":[]}";

/// Largest request head accepted; a longer one closes the connection.
const MAX_HEAD: usize = 64 * 1024;

/// What happens after a [`RawReply`]'s bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEnd {
    /// Wait for the next request on the same connection (the bytes were a complete answer).
    KeepAlive,
    /// Close the connection normally (FIN).
    Close,
    /// Reset the connection (RST, `SO_LINGER` 0): what a crashed upstream or a middlebox looks
    /// like.
    Reset,
    /// Keep the connection open without sending another byte until the peer closes it.
    Hold,
}

/// Exactly which bytes to answer one request with, and how the connection ends.
#[derive(Clone, Debug)]
pub struct RawReply {
    bytes: Bytes,
    end: RawEnd,
}

impl RawReply {
    /// Write `bytes` verbatim (status line, headers and body), then close the connection.
    pub fn new(bytes: impl Into<Bytes>) -> RawReply {
        RawReply {
            bytes: bytes.into(),
            end: RawEnd::Close,
        }
    }

    /// A response with `status`, `headers` (`name: value` lines, no CRLF) and `body`, written
    /// as given: nothing is added, so a `content-length` header may lie.
    pub fn response(status: u16, headers: &[&str], body: impl AsRef<[u8]>) -> RawReply {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(format!("HTTP/1.1 {status} Scripted\r\n").as_bytes());
        for header in headers {
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body.as_ref());
        RawReply::new(bytes.freeze())
    }

    /// Then do this instead of closing.
    pub fn then(mut self, end: RawEnd) -> RawReply {
        self.end = end;
        self
    }
}

/// One request a [`RawUpstream`] received.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Which connection carried it (numbered from 1 in accept order).
    pub connection: u64,
    /// The request line and headers, as text (lossy), without the blank line.
    pub head: String,
    /// The body (de-chunked when it came chunked).
    pub body: Bytes,
}

impl RawRequest {
    /// The method of the request line.
    pub fn method(&self) -> &str {
        self.head.split_whitespace().next().unwrap_or_default()
    }

    /// The target of the request line (path and query).
    pub fn target(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or_default()
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }
}

struct RawShared {
    state: Mutex<RawState>,
    changed: watch::Sender<()>,
    connections: AtomicU64,
}

struct RawState {
    queue: VecDeque<RawReply>,
    default_reply: RawReply,
    requests: Vec<RawRequest>,
}

impl RawShared {
    fn lock(&self) -> MutexGuard<'_, RawState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Aborts the accept task (and with it every connection) when the last handle goes.
struct RawTask(JoinHandle<()>);

impl Drop for RawTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A scripted upstream that writes raw bytes (see the module docs). Clones share one server.
#[derive(Clone)]
pub struct RawUpstream {
    shared: Arc<RawShared>,
    addr: SocketAddr,
    _task: Arc<RawTask>,
}

impl std::fmt::Debug for RawUpstream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RawUpstream {
    /// Listen on `127.0.0.1:0`, answering every request with `default_reply` unless replies are
    /// queued. Must be called inside a Tokio runtime.
    pub async fn start(default_reply: RawReply) -> io::Result<RawUpstream> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(RawShared {
            state: Mutex::new(RawState {
                queue: VecDeque::new(),
                default_reply,
                requests: Vec::new(),
            }),
            changed,
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(RawUpstream {
            shared,
            addr,
            _task: Arc::new(RawTask(task)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer the next request with `reply` (FIFO, before the default).
    pub fn enqueue(&self, reply: RawReply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// The reply once the queue is empty.
    pub fn set_default(&self, reply: RawReply) {
        self.shared.lock().default_reply = reply;
    }

    /// Requests received so far (probes excluded), in arrival order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared.lock().requests.clone()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Wait until `count` requests arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RawRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            {
                let state = self.shared.lock();
                if state.requests.len() >= count {
                    return state.requests.clone();
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.requests(),
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<RawShared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let number = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    connections.spawn(serve(stream, Arc::clone(&shared), number));
                }
                Err(problem) => {
                    tracing::debug!(error = %problem, "raw upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<RawShared>, connection: u64) {
    let _ = stream.set_nodelay(true);
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    loop {
        let Ok(Some((head, body))) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let probe = head.starts_with("GET ")
            && head.split_whitespace().nth(1).is_some_and(|target| {
                target
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .ends_with("/v1/models")
            });
        if probe {
            if stream.write_all(PROBE_ANSWER).await.is_err() {
                return;
            }
            continue;
        }
        let reply = {
            let mut state = shared.lock();
            state.requests.push(RawRequest {
                connection,
                head,
                body,
            });
            match state.queue.pop_front() {
                Some(reply) => reply,
                None => state.default_reply.clone(),
            }
        };
        shared.changed.send_replace(());
        if stream.write_all(&reply.bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        match reply.end {
            RawEnd::KeepAlive => {}
            RawEnd::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            RawEnd::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            RawEnd::Hold => {
                // Until the peer closes: discard whatever it sends.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                return;
            }
        }
    }
}

/// Reads one request: its head (text, without the blank line) and its body. `None` at a clean
/// end of the connection; an error for anything unreadable.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
) -> io::Result<Option<(String, Bytes)>> {
    let head_end = loop {
        if let Some(position) = find(buffer, b"\r\n\r\n") {
            break position;
        }
        if buffer.len() > MAX_HEAD {
            return Err(io::Error::other("request head too long"));
        }
        if stream.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let _ = buffer.split_to(head_end + 4);
    let chunked = header_value(&head, "transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(stream, buffer).await?
    } else {
        let length = header_value(&head, "content-length")
            .and_then(|value| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        fill(stream, buffer, length).await?;
        buffer.split_to(length).freeze()
    };
    Ok(Some((head, body)))
}

async fn read_chunked(stream: &mut TcpStream, buffer: &mut BytesMut) -> io::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let line_end = loop {
            if let Some(position) = find(buffer, b"\r\n") {
                break position;
            }
            if stream.read_buf(buffer).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let _ = buffer.split_to(line_end + 2);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
        // The chunk and its CRLF (for the last chunk: the empty trailer's CRLF).
        fill(stream, buffer, size + 2).await?;
        body.extend_from_slice(&buffer[..size]);
        let _ = buffer.split_to(size + 2);
        if size == 0 {
            return Ok(body.freeze());
        }
    }
}

async fn fill(stream: &mut TcpStream, buffer: &mut BytesMut, length: usize) -> io::Result<()> {
    while buffer.len() < length {
        if stream.read_buf(buffer).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}
