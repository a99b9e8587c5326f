//! A Messages API upstream whose answers wait at a gate the test opens: the way to hold requests
//! in flight for exactly as long as a test needs, with no timing involved.
//!
//! Each `POST …/v1/messages` gets its status line, headers and first part of the body (the SSE
//! `message_start` event, or the first half of the JSON message) at once; the rest waits until
//! [`GatedUpstream::release`]. After the release every answer goes out whole. Health probes
//! (`GET …/v1/models`) are answered at once with an empty models list. Every answer reports
//! [`INPUT_TOKENS`] and [`OUTPUT_TOKENS`] and closes its connection (`Connection: close`,
//! chunked body).
//!
//! Ownership: [`GatedUpstream::start`] spawns one accept thread and one thread per connection,
//! all blocking and detached (they end with the test process). Dropping the upstream opens the
//! gate, so no connection thread waits for ever.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// `input_tokens` of every answer.
pub const INPUT_TOKENS: i64 = 12;
/// `output_tokens` of every answer.
pub const OUTPUT_TOKENS: i64 = 6;

const MODEL: &str = "claude-sonnet-4-5-20250929";

#[derive(Default)]
struct Gate {
    /// Requests answered in part and waiting at the gate.
    held: usize,
    /// The gate is open: nothing waits any more.
    open: bool,
}

#[derive(Default)]
struct Shared {
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running upstream (see the module documentation).
pub struct GatedUpstream {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl GatedUpstream {
    /// Listens on `127.0.0.1:0`, gate closed.
    pub fn start() -> GatedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gated upstream");
        let address = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(connection) = connection else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    // A client that went away mid-answer is not this upstream's problem.
                    let _ = answer(connection, &shared);
                });
            }
        });
        GatedUpstream { address, shared }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Waits until `count` requests are held at the gate; panics after `deadline`.
    pub fn wait_for_held(&self, count: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        let mut gate = self.shared.lock();
        while gate.held < count {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {count} requests reached the gated upstream",
                gate.held
            );
            gate = self
                .shared
                .changed
                .wait_timeout(gate, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Opens the gate: held answers finish, later ones are sent whole.
    pub fn release(&self) {
        self.shared.lock().open = true;
        self.shared.changed.notify_all();
    }
}

impl Drop for GatedUpstream {
    fn drop(&mut self) {
        self.release();
    }
}

/// Reads one request and answers it.
fn answer(connection: TcpStream, shared: &Shared) -> std::io::Result<()> {
    connection.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(connection.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let mut connection = connection;
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    if request_line.starts_with("GET ") && path.ends_with("/v1/models") {
        let models = r#"{"data":[]}"#;
        return write!(
            connection,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{models}",
            models.len()
        );
    }
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|request| request.get("stream").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    let (content_type, first, rest) = if streaming {
        ("text/event-stream", sse_start(), sse_rest())
    } else {
        let (first, rest) = json_halves();
        ("application/json", first, rest)
    };
    write!(
        connection,
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n"
    )?;
    write_chunk(&mut connection, &first)?;
    connection.flush()?;
    {
        let mut gate = shared.lock();
        if !gate.open {
            gate.held += 1;
            shared.changed.notify_all();
            while !gate.open {
                gate = shared
                    .changed
                    .wait(gate)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            gate.held -= 1;
        }
    }
    write_chunk(&mut connection, &rest)?;
    connection.write_all(b"0\r\n\r\n")?;
    connection.flush()
}

fn write_chunk(connection: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(connection, "{:x}\r\n{data}\r\n", data.len())
}

fn sse_start() -> String {
    format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_gated\",\
         \"type\":\"message\",\"role\":\"assistant\",\"model\":\"{MODEL}\",\"content\":[],\
         \"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{INPUT_TOKENS},\
         \"output_tokens\":1}}}}}}\n\n"
    )
}

fn sse_rest() -> String {
    format!(
        "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\
         \"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\
         \"delta\":{{\"type\":\"text_delta\",\"text\":\"Hello\"}}}}\n\n\
         event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\
         \"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{OUTPUT_TOKENS}}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    )
}

/// The JSON message cut in two.
fn json_halves() -> (String, String) {
    let message = format!(
        "{{\"id\":\"msg_gated\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{MODEL}\",\
         \"content\":[{{\"type\":\"text\",\"text\":\"Hello\"}}],\"stop_reason\":\"end_turn\",\
         \"stop_sequence\":null,\"usage\":{{\"input_tokens\":{INPUT_TOKENS},\
         \"output_tokens\":{OUTPUT_TOKENS}}}}}"
    );
    let (first, rest) = message.split_at(message.len() / 2);
    (first.to_string(), rest.to_string())
}
