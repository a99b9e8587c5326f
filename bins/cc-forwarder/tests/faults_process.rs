//! Fault injection, process side (issue 9): the real `cc-forwarder` binary under load, stopped
//! with SIGTERM (every in-flight request finishes, every outcome is stored, exit status 0) and
//! killed with SIGKILL (at most the last flush interval of outcomes is missing, and the database
//! opens cleanly after: integrity check, and a restarted forwarder on the same file serves and
//! records again).
//!
//! Each test checks what the clients got, what the mock upstream saw, what the SQLite file holds
//! and that a forwarder started again on the same file is healthy.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ccf_testkit::{MockUpstream, Reply};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_every_in_flight_request_and_stores_every_outcome() {
    const CLIENTS: usize = 12;
    let upstream = MockUpstream::start().await;
    upstream.set_default(
        Reply::auto()
            .deltas(20)
            .chunk_delay(Duration::from_millis(25)),
    );
    let folder = tempfile::tempdir().unwrap();
    write_config(folder.path(), &upstream.url());
    let mut process = Process::start(folder.path());
    let proxy = process.proxy;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| std::thread::spawn(move || exchange(proxy, index % 3 != 0)))
        .collect();
    // Every request is in flight at the upstream: now stop the forwarder.
    let seen = upstream.wait_for_requests(CLIENTS, DEADLINE).await;
    assert_eq!(seen.len(), CLIENTS);
    assert!(upstream
        .outcomes()
        .iter()
        .any(|outcome| !outcome.is_finished()));
    process.signal("TERM");

    let mut ids = BTreeSet::new();
    for client in clients {
        let answer = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap()
            .expect("every in-flight client gets its whole answer");
        assert_eq!(answer.status, 200);
        assert!(
            answer.body.contains("message_stop")
                || answer.body.contains("\"stop_reason\":\"end_turn\""),
            "complete answer: {}",
            answer.body
        );
        ids.insert(answer.request_id);
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = process.wait();
        (status, process.logs())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "clean exit: {}\n{}", status.0, status.1);
    assert!(upstream
        .outcomes()
        .iter()
        .all(|outcome| *outcome == ccf_testkit::ReplyOutcome::Completed));

    let database = database_path(folder.path());
    let rows = rows(&database);
    assert_eq!(rows.len(), CLIENTS, "{rows:?}");
    for (id, status, input, output) in &rows {
        assert!(ids.contains(id), "{id} is one of the clients' requests");
        assert_eq!(status, "completed");
        assert_eq!((*input, *output), (12, 6), "usage of {id}");
    }
    let folder_path = folder.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        restarted_forwarder_serves_and_records(&folder_path, &database)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_last_flush_interval_and_the_database_opens_cleanly() {
    const CLIENTS: usize = 4;
    /// Writing a batch on a busy machine; outcomes older than FLUSH + this must be stored.
    const WRITE_SLACK: Duration = Duration::from_millis(800);
    let upstream = MockUpstream::start().await;
    let folder = tempfile::tempdir().unwrap();
    write_config(folder.path(), &upstream.url());
    let process = Process::start(folder.path());
    let proxy = process.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let stop = Arc::clone(&stop);
            let completed = Arc::clone(&completed);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match exchange(proxy, index % 2 == 0) {
                        Ok(answer) if answer.status == 200 => completed
                            .lock()
                            .unwrap()
                            .push((Instant::now(), answer.request_id)),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Load for a while (more than a few flush intervals), then kill.
    let started = Instant::now();
    let deadline = started + DEADLINE;
    while completed.lock().unwrap().len() < 60 || started.elapsed() < FLUSH * 5 + WRITE_SLACK {
        assert!(Instant::now() < deadline, "traffic does not flow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
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

    let database = database_path(folder.path());
    let rows = rows(&database);
    let stored: BTreeSet<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    let completed = completed.lock().unwrap().clone();
    let old_enough: Vec<&String> = completed
        .iter()
        .filter(|(at, _)| *at + FLUSH + WRITE_SLACK < killed_at)
        .map(|(_, id)| id)
        .collect();
    assert!(!old_enough.is_empty());
    let missing: Vec<&&String> = old_enough
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "outcomes older than the flush interval were lost: {missing:?} ({} stored, {} answered)",
        rows.len(),
        completed.len()
    );
    for (id, status, input, output) in &rows {
        if status == "completed" {
            assert_eq!((*input, *output), (12, 6), "usage of {id}");
        }
    }
    assert!(upstream.request_count() as usize >= completed.len());
    eprintln!(
        "SIGKILL: {} answered, {} rows stored, {} answered within the last flush window",
        completed.len(),
        rows.len(),
        completed.len() - old_enough.len()
    );
    let folder_path = folder.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        restarted_forwarder_serves_and_records(&folder_path, &database)
    })
    .await
    .unwrap();
}
