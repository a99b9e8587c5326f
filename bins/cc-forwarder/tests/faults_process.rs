//! Fault injection, process side (issue 9): the real `cc-forwarder` binary under load, stopped
//! with SIGTERM (every in-flight request finishes, every outcome is stored, exit status 0) and
//! killed with SIGKILL (every outcome the recorder had written before the kill is still there,
//! and the database opens cleanly after: integrity check, and a restarted forwarder on the same
//! file serves and records again).
//!
//! Each test checks what the clients got, what the upstream saw, what the SQLite file holds and
//! that a forwarder started again on the same file is healthy. Nothing here depends on how fast
//! the machine is: the SIGTERM test holds every answer at a gated upstream until the forwarder is
//! draining, and the SIGKILL test defines the outcomes that must survive by a sentinel request
//! seen stored, not by a time window.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ccf_testkit::MockUpstream;

mod support;
use support::gated_upstream::{GatedUpstream, INPUT_TOKENS, OUTPUT_TOKENS};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

/// The recorder's flush interval in these tests.
const FLUSH: Duration = Duration::from_millis(200);

/// One forwarder process on a config in `folder`.
struct Process {
    child: Child,
    proxy: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn write_config(folder: &Path, upstream: &str) {
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: 20s\n\
         tui:\n  enabled: false\n\
         logging:\n  level: info\n\
         endpoints:\n  - name: mock\n    url: {upstream}\n\
         usage_tracking:\n  enabled: true\n  database_path: usage.db\n  flush_interval: {}ms\n",
        FLUSH.as_millis()
    );
    std::fs::write(folder.join("config.yaml"), config).unwrap();
}

impl Process {
    fn start(folder: &Path) -> Process {
        let mut child = Command::new(BINARY)
            .args(["--config", "config.yaml"])
            .current_dir(folder)
            .env_remove("RUST_LOG")
            .env_remove("CCF_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&kept);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let proxy = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "the forwarder did not start; stderr:\n{}",
                    kept.lock().unwrap().join("\n")
                );
            };
            if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=http://") {
                break url.trim().parse::<SocketAddr>().unwrap();
            }
        };
        Process {
            child,
            proxy,
            stderr: kept,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit; its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the forwarder did not exit; stderr:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// A normal JSON request; its status and `x-ccf-request-id`.
    fn message(&self) -> (u16, String) {
        let answer = exchange(self.proxy, false).unwrap();
        (answer.status, answer.request_id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One answer read to its end.
struct Answer {
    status: u16,
    request_id: String,
    body: String,
}

/// `POST /v1/messages` (`Connection: close`), read to the end.
fn exchange(address: SocketAddr, stream: bool) -> std::io::Result<Answer> {
    let mut connection = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    connection.set_read_timeout(Some(DEADLINE))?;
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5-20250929","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    write!(
        connection,
        "POST /v1/messages HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    connection.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no complete head: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let request_id = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-ccf-request-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Ok(Answer {
        status,
        request_id,
        body: rest.to_string(),
    })
}

/// (request id, status, input tokens, output tokens) of every row, after checking the file's
/// integrity.
fn rows(database: &Path) -> Vec<(String, String, i64, i64)> {
    let connection = rusqlite::Connection::open(database).unwrap();
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the database is intact");
    let mut statement = connection
        .prepare("SELECT request_id, status, input_tokens, output_tokens FROM request_logs")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// Starts the forwarder again on the same folder: it opens the database, serves a request and
/// records it (the row is there after a clean stop).
fn restarted_forwarder_serves_and_records(folder: &Path, database: &Path) {
    let mut again = Process::start(folder);
    let (status, id) = again.message();
    assert_eq!(status, 200, "a restarted forwarder serves");
    again.signal("TERM");
    assert!(again.wait().success(), "{}", again.logs());
    let rows = rows(database);
    assert!(
        rows.iter()
            .any(|(row_id, status, _, _)| *row_id == id && status == "completed"),
        "the restarted forwarder recorded {id}"
    );
}

fn database_path(folder: &Path) -> PathBuf {
    folder.join("usage.db")
}

/// The request ids of every final row (no integrity check: the forwarder may be writing).
fn final_ids(database: &Path) -> BTreeSet<String> {
    let connection = rusqlite::Connection::open(database).unwrap();
    connection.busy_timeout(DEADLINE).unwrap();
    let mut statement = connection
        .prepare("SELECT request_id FROM request_logs WHERE is_final = 1")
        .unwrap();
    let ids = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ids
}

/// Waits until `done` holds; panics with `what` and the forwarder's log after the deadline.
fn wait_until(process: &Process, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; stderr:\n{}",
            process.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until nothing accepts connections on `address` any more (the forwarder closed its
/// listener: the drain has begun).
fn wait_for_listener_closed(process: &Process, address: SocketAddr) {
    wait_until(process, "the listener to close", || {
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err()
    });
}

#[test]
fn sigterm_under_load_finishes_every_in_flight_request_and_stores_every_outcome() {
    const CLIENTS: usize = 12;
    let upstream = GatedUpstream::start();
    let folder = tempfile::tempdir().unwrap();
    write_config(folder.path(), &upstream.url());
    let mut process = Process::start(folder.path());
    let proxy = process.proxy;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| std::thread::spawn(move || exchange(proxy, index % 3 != 0)))
        .collect();
    // Every request is in flight, its answer begun and held at the upstream: stop the forwarder,
    // and let the answers finish only once it is draining.
    upstream.wait_for_held(CLIENTS, DEADLINE);
    process.signal("TERM");
    wait_for_listener_closed(&process, proxy);
    upstream.release();

    let mut ids = BTreeSet::new();
    for client in clients {
        let answer = client
            .join()
            .unwrap()
            .expect("every in-flight client gets its whole answer");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body.contains("message_stop")
                || answer.body.contains("\"stop_reason\":\"end_turn\""),
            "complete answer: {}",
            answer.body
        );
        ids.insert(answer.request_id);
    }
    assert_eq!(ids.len(), CLIENTS, "one request id per client");
    let status = process.wait();
    assert!(status.success(), "clean exit: {status}\n{}", process.logs());

    let database = database_path(folder.path());
    let rows = rows(&database);
    assert_eq!(rows.len(), CLIENTS, "{rows:?}");
    for (id, status, input, output) in &rows {
        assert!(ids.contains(id), "{id} is one of the clients' requests");
        assert_eq!(status, "completed");
        assert_eq!(
            (*input, *output),
            (INPUT_TOKENS, OUTPUT_TOKENS),
            "usage of {id}"
        );
    }
    restarted_forwarder_serves_and_records(folder.path(), &database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_keeps_every_flushed_outcome_and_the_database_opens_cleanly() {
    const CLIENTS: usize = 4;
    let upstream = MockUpstream::start().await;
    let folder = tempfile::tempdir().unwrap();
    write_config(folder.path(), &upstream.url());
    let database = database_path(folder.path());
    let process = Process::start(folder.path());
    let proxy = process.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // Request ids in the order their answers ended.
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let stop = Arc::clone(&stop);
            let sent = Arc::clone(&sent);
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match exchange(proxy, index % 2 == 0) {
                        Ok(answer) if answer.status == 200 => {
                            answered.lock().unwrap().push(answer.request_id);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let answered_count = || answered.lock().unwrap().len();

    // Load, then a sentinel request. A request hands its final outcome to the recorder with the
    // last frame of its answer, before the client has it all; the recorder writes outcomes in the
    // order the requests arrived. So once the sentinel's final row is stored, the final row of
    // every request answered before the sentinel was sent is stored too: that set, not "older
    // than some time", is what a SIGKILL must not lose.
    let (answered_before_sentinel, sentinel) = tokio::task::block_in_place(|| {
        wait_until(&process, "traffic to flow", || answered_count() >= 20);
        let answered_before_sentinel = answered.lock().unwrap().clone();
        let (status, sentinel) = process.message();
        assert_eq!(status, 200, "the sentinel is answered");
        wait_until(&process, "the sentinel's final row", || {
            final_ids(&database).contains(&sentinel)
        });
        // Keep the load on for a few more answers, so outcomes are waiting to be written when
        // the process dies.
        let seen = answered_count();
        wait_until(&process, "more answers", || answered_count() >= seen + 10);
        (answered_before_sentinel, sentinel)
    });
    let stored_before_kill = final_ids(&database);
    process.signal("KILL");
    let mut process = process;
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .unwrap();
    assert!(!status.success(), "killed");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
    }

    // The file is intact, and everything stored before the kill is still there.
    let rows = rows(&database);
    let stored = final_ids(&database);
    let must_be_stored: BTreeSet<&String> = answered_before_sentinel
        .iter()
        .chain([&sentinel])
        .chain(&stored_before_kill)
        .collect();
    let missing: Vec<&&String> = must_be_stored
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "outcomes stored before the kill were lost: {missing:?} ({} final rows stored)",
        stored.len()
    );
    for (id, status, input, output) in &rows {
        if status == "completed" {
            assert_eq!((*input, *output), (12, 6), "usage of {id}");
        }
    }
    let sent = sent.load(Ordering::Relaxed) + 1;
    assert!(
        rows.len() <= sent,
        "{} rows for {sent} requests",
        rows.len()
    );
    let answered = answered.lock().unwrap().len();
    eprintln!(
        "SIGKILL: {sent} sent, {answered} answered, {} final rows before the kill and {} after \
         ({} rows in all); {} had to be stored",
        stored_before_kill.len(),
        stored.len(),
        rows.len(),
        must_be_stored.len()
    );
    let folder_path = folder.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        restarted_forwarder_serves_and_records(&folder_path, &database)
    })
    .await
    .unwrap();
}
