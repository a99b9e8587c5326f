//! Secrets in the real binary's logs: `cc-forwarder` runs with every credential the
//! configuration can hold, logging at TRACE (`CCF_LOG=trace`) to stderr and to a log file, in the
//! JSON and in the text format, while traffic exercises the paths most likely to print a
//! credential: successful JSON and streamed requests, inbound authentication failures, an
//! upstream error and an upstream that refuses the endpoint's token, admin API calls with a wrong
//! and the right token, an outbound proxy that refuses its credentials, and a MySQL login that
//! fails at start. Then stdout, stderr and every file in the log folder are searched for every
//! marker of every credential (`tests/tests/secrets/credentials.rs`, shared with the in-process
//! secrets test).
//!
//! The in-process test (`tests/tests/it/secrets.rs`) installs its own subscriber; only this one
//! checks the binary's own JSON, text and file layers.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ccf_testkit::secret_markers as credentials;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ccf_testkit::{MockUpstream, Reply};
use credentials::{
    assert_clean, DATABASE_PASSWORD, ENDPOINT_API_KEY, ENDPOINT_TOKEN, ENDPOINT_URL_PASSWORD,
    INBOUND_ALICE, INBOUND_LEGACY, PROXY_PASSWORD, PROXY_URL_PASSWORD, REJECTED_TOKEN,
    RELAY_HEADER, WEB_TOKEN, WRONG_ALICE, WRONG_LEGACY, WRONG_WEB_TOKEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");

/// Bound on anything waited for; it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(60);

/// The two line formats of `logging.format`.
#[derive(Clone, Copy, Debug)]
enum Format {
    Json,
    Text,
}

impl Format {
    fn key(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
        }
    }
}

/// `logging:` at TRACE (through `CCF_LOG`) to stderr and to `logs/app.log` in `format`.
fn logging_yaml(format: Format) -> String {
    format!(
        "logging:\n  level: debug\n  format: {}\n  file_enabled: true\n  file_path: logs/app.log\n  \
         max_file_size: 64MB\n  max_files: 3\n",
        format.key()
    )
}

/// A running `cc-forwarder` and everything it printed so far.
struct Binary {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished `cc-forwarder` left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Every file of the log folder: (name, contents).
    log_files: Vec<(String, String)>,
}

/// Copies everything `source` yields into `sink` until it closes.
fn drain(mut source: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..read]);
        }
    })
}

impl Binary {
    /// Starts `cc-forwarder --config config.yaml` in `folder`, logging at TRACE.
    fn start(folder: &Path) -> Binary {
        let mut child = Command::new(BINARY)
            .args(["--config", "config.yaml"])
            .current_dir(folder)
            .env_remove("RUST_LOG")
            .env("CCF_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            drain(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Binary {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Polls what the binary printed until `find` sees what it looks for.
    async fn wait_for<T>(&mut self, what: &str, find: impl Fn(&str, &str) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(found) = find(&self.stdout(), &self.stderr()) {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "cc-forwarder exited ({status}) before {what}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "cc-forwarder never printed {what}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The proxy's `host:port`, from the `export ANTHROPIC_BASE_URL=` line on stdout.
    async fn proxy_address(&mut self) -> String {
        self.wait_for("its export line", |stdout, _| {
            stdout.lines().find_map(|line| {
                line.strip_prefix("export ANTHROPIC_BASE_URL=http://")
                    .map(|address| address.trim().to_string())
            })
        })
        .await
    }

    /// The admin API's `host:port`, from its "listening" log line.
    async fn admin_address(&mut self) -> String {
        self.wait_for("the admin API's address", |_, stderr| {
            let line = stderr
                .lines()
                .find(|line| line.contains("admin API and dashboard listening"))?;
            let rest = &line[line.find("http://")? + "http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            Some(rest[..end].to_string())
        })
        .await
    }

    /// Sends SIGTERM (a graceful stop).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM");
    }

    /// Waits for the process to exit and for its output to be read to the end; reads the log
    /// folder `folder/logs`.
    async fn finish(mut self, folder: &Path) -> Finished {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cc-forwarder did not exit; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipes are closed once the process is gone: the readers end.
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let mut log_files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(folder.join("logs")) {
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                log_files.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        log_files.sort();
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            log_files,
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    /// The log file, which must exist and hold lines.
    fn log_file(&self) -> &str {
        let (name, text) = self
            .log_files
            .iter()
            .find(|(name, _)| name.ends_with("app.log"))
            .unwrap_or_else(|| panic!("no log file written: {:?}", self.log_files));
        assert!(!text.is_empty(), "{name} is empty");
        text
    }

    /// Checks that the binary logged `expected` in `format` to both outputs (with TRACE events
    /// when `trace_expected`), then that no marker of any credential appears in stdout, stderr or
    /// any file of the log folder.
    fn assert_logged_without_secrets(&self, format: Format, expected: &str, trace_expected: bool) {
        for (place, text) in [
            ("stderr", self.stderr.as_str()),
            ("the log file", self.log_file()),
        ] {
            assert!(
                text.contains(expected),
                "{place} lacks `{expected}`:\n{text}"
            );
            match format {
                Format::Json => {
                    let lines: Vec<serde_json::Value> = text
                        .lines()
                        .filter(|line| line.starts_with('{'))
                        .map(|line| serde_json::from_str(line).unwrap())
                        .collect();
                    assert!(!lines.is_empty(), "{place} has no JSON lines:\n{text}");
                    assert!(
                        !trace_expected || lines.iter().any(|line| line["level"] == "TRACE"),
                        "{place} has no TRACE event"
                    );
                }
                Format::Text => {
                    assert!(
                        !text.trim_start().starts_with('{'),
                        "{place} is not text:\n{text}"
                    );
                    assert!(
                        !trace_expected || text.contains(" TRACE "),
                        "{place} has no TRACE event"
                    );
                }
            }
        }
        assert_clean("the binary's stdout", &self.stdout);
        assert_clean("the binary's stderr", &self.stderr);
        for (name, text) in &self.log_files {
            assert_clean(name, text);
        }
    }
}

/// One HTTP/1.1 exchange (`Connection: close`) read to its end: the status and the whole answer.
async fn exchange(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the answer ends")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    (status, answer)
}

/// A Messages API request with `headers`; the status and the answer, checked for markers.
async fn message(address: &str, headers: &[(&str, &str)], stream: bool) -> (u16, String) {
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    let headers = [
        &[
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ],
        headers,
    ]
    .concat();
    let (status, answer) = exchange(address, "POST", "/v1/messages", &headers, &body).await;
    assert_clean("an answer of the proxy", &answer);
    (status, answer)
}

/// Successful, refused and failing traffic through a binary holding every kind of credential.
async fn traffic_leaves_no_secret_in_the_logs(format: Format) {
    let answering = MockUpstream::start().await;
    let rejecting = MockUpstream::start().await;
    rejecting.set_default(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    let rejecting_url = rejecting.url().replacen(
        "http://",
        &format!("http://relay:{ENDPOINT_URL_PASSWORD}@"),
        1,
    );
    let folder = tempfile::tempdir().unwrap();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: 20s\n\
         tui:\n  enabled: false\n{}\
         web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n  auth_token: {WEB_TOKEN}\n\
         auth:\n  enabled: true\n  token: {INBOUND_LEGACY}\n  tokens:\n    - name: alice\n      token: {INBOUND_ALICE}\n\
         retry:\n  max_attempts: 1\n\
         proxy:\n  enabled: false\n  url: http://bob:{PROXY_URL_PASSWORD}@127.0.0.1:3128\n  username: bob\n  password: {PROXY_PASSWORD}\n\
         usage_tracking:\n  enabled: true\n  flush_interval: 50ms\n  database:\n    type: sqlite\n    path: usage.db\n    password: {DATABASE_PASSWORD}\n\
         endpoints:\n\
         \x20 - name: primary\n    url: {}\n    token: {ENDPOINT_TOKEN}\n    api-key: {ENDPOINT_API_KEY}\n    group: main\n    group-priority: 1\n    headers:\n      x-relay-token: {RELAY_HEADER}\n\
         \x20 - name: rejecting\n    url: {rejecting_url}\n    token: {REJECTED_TOKEN}\n    group: spare\n    group-priority: 2\n",
        logging_yaml(format),
        answering.url(),
    );
    std::fs::write(folder.path().join("config.yaml"), config).unwrap();
    let mut binary = Binary::start(folder.path());
    let proxy = binary.proxy_address().await;
    let admin = binary.admin_address().await;

    // Successful requests, JSON and streamed, with each inbound credential form.
    let (status, _) = message(&proxy, &[("x-api-key", INBOUND_ALICE)], false).await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {INBOUND_LEGACY}");
    let (status, _) = message(&proxy, &[("authorization", &bearer)], true).await;
    assert_eq!(status, 200);
    let seen = answering.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("x-relay-token"),
        Some(RELAY_HEADER),
        "the configured credentials are in use"
    );

    // Wrong, malformed and missing inbound credentials.
    let wrong_bearer = format!("Bearer {WRONG_LEGACY}");
    let basic = format!("Basic {INBOUND_LEGACY}");
    for headers in [
        vec![("x-api-key", WRONG_ALICE)],
        vec![("authorization", wrong_bearer.as_str())],
        vec![("authorization", basic.as_str())],
        vec![],
    ] {
        let (status, _) = message(&proxy, &headers, false).await;
        assert_eq!(status, 401, "{headers:?}");
    }
    assert_eq!(
        answering.requests().len(),
        2,
        "refused requests never went upstream"
    );

    // An upstream error on the primary endpoint (the request may then fail over to the spare
    // group, whose upstream refuses its token: another error).
    answering.enqueue(Reply::error(500, "api_error", "upstream broke"));
    let (status, _) = message(&proxy, &[("x-api-key", INBOUND_ALICE)], false).await;
    assert!(
        status >= 400,
        "the upstream error reached the client: {status}"
    );
    assert_eq!(
        answering.requests().len(),
        3,
        "the primary endpoint was tried"
    );

    // The admin API: a wrong token, then the right one pauses the main group so that the
    // rejecting endpoint answers (its upstream refuses its token: 401, relayed).
    let wrong_admin = format!("Bearer {WRONG_WEB_TOKEN}");
    let (status, answer) = exchange(
        &admin,
        "GET",
        "/api/v1/config",
        &[("authorization", &wrong_admin)],
        "",
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert_clean("an admin API refusal", &answer);
    let right_admin = format!("Bearer {WEB_TOKEN}");
    let (status, answer) = exchange(
        &admin,
        "GET",
        "/api/v1/config",
        &[("authorization", &right_admin)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_clean("GET /api/v1/config", &answer);
    let (status, answer) = exchange(
        &admin,
        "POST",
        "/api/v1/groups/main/pause",
        &[
            ("authorization", &right_admin),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = message(&proxy, &[("x-api-key", INBOUND_ALICE)], false).await;
    assert_eq!(status, 401, "the rejecting upstream's answer is relayed");
    assert!(
        rejecting
            .requests()
            .iter()
            .any(|request| request.header("authorization")
                == Some(&format!("Bearer {REJECTED_TOKEN}"))),
        "the rejecting endpoint received its token"
    );

    binary.terminate();
    let finished = binary.finish(folder.path()).await;
    assert!(
        finished.status.success(),
        "{}\n{}",
        finished.status,
        finished.stderr
    );
    finished.assert_logged_without_secrets(format, "cc-forwarder stopped", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_leaves_no_secret_in_json_console_and_file_logs_at_trace() {
    traffic_leaves_no_secret_in_the_logs(Format::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_leaves_no_secret_in_text_console_and_file_logs_at_trace() {
    traffic_leaves_no_secret_in_the_logs(Format::Text).await;
}

/// An HTTP proxy that refuses every request with `407 Proxy Authentication Required`; it keeps
/// the `Proxy-Authorization` values it was sent.
async fn refusing_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                for line in head.lines() {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("proxy-authorization") {
                            keep.lock().unwrap().push(value.trim().to_string());
                        }
                    }
                }
                let _ = client
                    .write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                          Proxy-Authenticate: Basic realm=\"test\"\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (address, seen)
}

/// Upstream traffic through an outbound proxy that refuses the configured credentials.
async fn refused_outbound_proxy_leaves_no_secret_in_the_logs(format: Format) {
    let upstream = MockUpstream::start().await;
    let (proxy_address, credentials_seen) = refusing_proxy().await;
    let folder = tempfile::tempdir().unwrap();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: 20s\n\
         tui:\n  enabled: false\n{}\
         retry:\n  max_attempts: 1\n\
         proxy:\n  enabled: true\n  url: http://bob:{PROXY_URL_PASSWORD}@{proxy_address}\n  username: bob\n  password: {PROXY_PASSWORD}\n\
         usage_tracking:\n  enabled: false\n\
         endpoints:\n\
         \x20 - name: primary\n    url: {}\n    token: {ENDPOINT_TOKEN}\n",
        logging_yaml(format),
        upstream.url(),
    );
    std::fs::write(folder.path().join("config.yaml"), config).unwrap();
    let mut binary = Binary::start(folder.path());
    let proxy = binary.proxy_address().await;
    let (status, _) = message(&proxy, &[], false).await;
    assert!(
        (500..600).contains(&status),
        "a refused proxy is a server-side failure: {status}"
    );
    assert!(
        credentials_seen
            .lock()
            .unwrap()
            .iter()
            .any(|value| value.starts_with("Basic ")),
        "the forwarder presented its proxy credentials"
    );
    assert_eq!(upstream.requests().len(), 0, "nothing got past the proxy");

    binary.terminate();
    let finished = binary.finish(folder.path()).await;
    assert!(
        finished.status.success(),
        "{}\n{}",
        finished.status,
        finished.stderr
    );
    finished.assert_logged_without_secrets(format, "cc-forwarder stopped", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outbound_proxy_leaves_no_secret_in_json_logs_at_trace() {
    refused_outbound_proxy_leaves_no_secret_in_the_logs(Format::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outbound_proxy_leaves_no_secret_in_text_logs_at_trace() {
    refused_outbound_proxy_leaves_no_secret_in_the_logs(Format::Text).await;
}

/// A MySQL login that fails: the binary refuses to start (exit status 1) and says why, naming
/// the user the server refused, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mysql_login_refuses_the_start_without_printing_the_password() {
    let upstream = MockUpstream::start().await;
    for format in [Format::Json, Format::Text] {
        let folder = tempfile::tempdir().unwrap();
        let config = format!(
            "server:\n  host: 127.0.0.1\n  port: 0\n\
             tui:\n  enabled: false\n{}\
             usage_tracking:\n  enabled: true\n  database:\n    type: mysql\n    host: 127.0.0.1\n    port: 3306\n    database: test\n    username: ccf_no_such_user\n    password: {DATABASE_PASSWORD}\n\
             endpoints:\n\
             \x20 - name: primary\n    url: {}\n",
            logging_yaml(format),
            upstream.url(),
        );
        std::fs::write(folder.path().join("config.yaml"), config).unwrap();
        let binary = Binary::start(folder.path());
        let finished = binary.finish(folder.path()).await;
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{format:?}: {}",
            finished.stderr
        );
        assert!(
            !finished.stdout.contains("ANTHROPIC_BASE_URL"),
            "{format:?}: it never served"
        );
        // The process stops before any request, and the MySQL driver emits no tracing events:
        // no TRACE line to expect here (the traffic tests show that `CCF_LOG=trace` is applied).
        finished.assert_logged_without_secrets(
            format,
            "Access denied for user 'ccf_no_such_user'",
            false,
        );
        for text in [finished.stderr.as_str(), finished.log_file()] {
            assert!(
                text.contains(
                    "cannot start the forwarder: usage store: usage database unavailable"
                ),
                "{format:?}: {text}"
            );
        }
    }
}
