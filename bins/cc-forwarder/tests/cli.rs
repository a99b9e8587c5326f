//! The real `cc-forwarder` binary: flags, exit statuses, startup output, logging and signals.
//!
//! Each test writes its own configuration into a temporary folder, runs the binary there (so
//! relative paths such as log files stay inside it) on `127.0.0.1:0`, and waits with deadlines.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;
use support::gated_upstream::GatedUpstream;

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

/// A config that starts without touching the network or the disk beyond the temp folder.
fn config_yaml(extra: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n\
         endpoints:\n  - name: main\n    url: http://127.0.0.1:9\n    group: main\n    group-priority: 1\n\
         \x20 - name: backup\n    url: http://127.0.0.1:9\n    group: backup\n    group-priority: 2\n\
         usage_tracking:\n  enabled: false\n\
         tui:\n  enabled: false\n\
         {extra}"
    )
}

struct Fixture {
    folder: tempfile::TempDir,
}

impl Fixture {
    fn new(config: &str) -> Self {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("config.yaml"), config).unwrap();
        Fixture { folder }
    }

    fn path(&self) -> &Path {
        self.folder.path()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .env_remove("CCF_LOG")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_flag_prints_the_version_in_both_spellings() {
    let fixture = Fixture::new("");
    for flag in ["--version", "-version", "-V"] {
        let output = fixture.run(&[flag]);
        assert!(output.status.success(), "{flag}: {output:?}");
        let stdout = text(&output.stdout);
        assert!(
            stdout.starts_with(&format!("cc-forwarder {}", env!("CARGO_PKG_VERSION"))),
            "{flag}: {stdout}"
        );
    }
}

/// The default build allocates with mimalloc through its `override` feature (the C library's
/// `malloc` and `free` replaced, Rust's allocations going through them): the allocator starts
/// and says so when asked. Fails when the override's object is left out of the link, which
/// would silently leave every allocation to glibc.
#[cfg(feature = "mimalloc")]
#[test]
fn the_default_build_allocates_with_mimalloc() {
    let fixture = Fixture::new("");
    let output = fixture
        .command()
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("mimalloc: v3"), "{stderr}");
}
#[test]
fn usage_errors_exit_with_status_2() {
    let fixture = Fixture::new(&config_yaml(""));
    let output = fixture.run(&["--tui", "--no-tui"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = fixture.run(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn missing_config_file_exits_2_and_names_the_file() {
    let fixture = Fixture::new("");
    let output = fixture.run(&["--config", "nope.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("nope.yaml"), "{output:?}");
}

#[test]
fn default_config_path_is_config_example_yaml() {
    let fixture = Fixture::new("");
    let output = fixture.run(&["check-config"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        text(&output.stderr).contains("config/example.yaml"),
        "{output:?}"
    );
}

#[test]
fn invalid_config_exits_2_naming_file_and_key() {
    let fixture = Fixture::new(&config_yaml("web:\n  port: not-a-port\n"));
    let output = fixture.run(&["-config", "config.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("config.yaml"), "{stderr}");
    assert!(stderr.contains("web.port"), "{stderr}");
}

#[test]
fn unknown_primary_endpoint_exits_2_listing_known_ones() {
    let fixture = Fixture::new(&config_yaml(""));
    let output = fixture.run(&["-config=config.yaml", "-p", "nope"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(stderr.contains("`main`"), "{stderr}");
}

#[test]
fn check_config_prints_a_summary_and_unknown_key_warnings() {
    let fixture = Fixture::new(&config_yaml("servr:\n  port: 1\n"));
    let output = fixture.run(&["check-config", "-config", "config.yaml", "-p", "backup"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("config.yaml: valid (1 warning)"),
        "{stdout}"
    );
    assert!(stdout.contains("127.0.0.1:0"), "{stdout}");
    assert!(stdout.contains("main (priority 1): main"), "{stdout}");
    assert!(text(&output.stderr).contains("servr"), "{output:?}");
}

#[test]
fn check_config_applies_command_line_overrides() {
    let fixture = Fixture::new(&config_yaml(""));
    let output = fixture.run(&[
        "--host",
        "0.0.0.0",
        "--port",
        "9999",
        "check-config",
        "--config",
        "config.yaml",
    ]);
    // `--host 0.0.0.0` without auth is refused, like start refuses it.
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        text(&output.stderr)
            .contains("error: refusing to start: auth.enabled: server.host `0.0.0.0`"),
        "exposure refusal: {output:?}"
    );
    let output = fixture.run(&["--port", "9999", "check-config", "--config", "config.yaml"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        text(&output.stdout).contains("listen:    127.0.0.1:9999"),
        "{output:?}"
    );
}

/// The `cc-forwarder: error:` lines of a run's stderr.
fn error_lines(output: &Output) -> Vec<String> {
    text(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("cc-forwarder: error:"))
        .map(str::to_string)
        .collect()
}

/// `check-config` exits 2 for every configuration start refuses (a public proxy without auth, a
/// public admin API without a token), with the very words start prints; start exits 2 as well,
/// so a systemd `ExecStartPre=cc-forwarder check-config` stops the unit instead of a crash loop.
#[test]
fn check_config_refuses_exactly_what_start_refuses() {
    for extra in [
        "web:\n  enabled: false\n",
        "web:\n  enabled: true\n  host: 0.0.0.0\n  port: 0\n",
    ] {
        let public_proxy = extra.contains("enabled: false");
        let config = config_yaml(extra);
        let config = if public_proxy {
            config.replace("host: 127.0.0.1", "host: 0.0.0.0")
        } else {
            config
        };
        let fixture = Fixture::new(&config);
        let checked = fixture.run(&["check-config", "--config", "config.yaml"]);
        assert_eq!(checked.status.code(), Some(2), "{extra}: {checked:?}");
        let started = fixture.run(&["--config", "config.yaml"]);
        assert_eq!(started.status.code(), Some(2), "{extra}: {started:?}");
        let refusal = error_lines(&checked);
        assert!(!refusal.is_empty(), "{extra}: {checked:?}");
        assert_eq!(refusal, error_lines(&started), "{extra}");
        let expected_key = if public_proxy {
            "auth.enabled"
        } else {
            "web.auth_token"
        };
        assert!(refusal[0].contains(expected_key), "{refusal:?}");
    }
}

/// `check-config --print`: the effective configuration as YAML (defaults filled, command-line
/// overrides and the environment applied), every secret masked.
#[test]
fn check_config_print_shows_the_effective_configuration_with_secrets_masked() {
    let fixture = Fixture::new(&config_yaml(
        "auth:\n  enabled: true\n  tokens:\n    - name: alice\n      token: alice-TOKEN-MARKER-1234567\n\
         web:\n  enabled: true\n  port: 0\n  auth_token: web-TOKEN-MARKER-7654321\n",
    ));
    let output = fixture
        .command()
        .env("CCF_RETRY__MAX_ATTEMPTS", "7")
        .args([
            "--port",
            "9999",
            "check-config",
            "--print",
            "--config",
            "config.yaml",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(
        !stdout.contains("TOKEN-MARKER"),
        "a secret is shown:\n{stdout}"
    );
    let printed: serde_yaml::Value = serde_yaml::from_str(&stdout).unwrap();
    assert_eq!(printed["auth"]["tokens"][0]["name"], "alice", "{stdout}");
    assert_eq!(printed["auth"]["tokens"][0]["token"], "alic***", "{stdout}");
    assert_eq!(printed["web"]["auth_token"], "web-***", "{stdout}");
    // The command line, and defaults of keys the file never mentions.
    assert_eq!(printed["server"]["port"], 9999, "{stdout}");
    assert!(!printed["health"]["check_interval"].is_null(), "{stdout}");
    assert_eq!(printed["retry"]["max_attempts"], 7, "environment: {stdout}");
    assert_eq!(printed["endpoints"][1]["name"], "backup", "{stdout}");
    assert_eq!(
        printed["request_suspend"]["max_suspended_requests"], 100,
        "{stdout}"
    );
}

/// A running forwarder whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(fixture: &Fixture, args: &[&str]) -> Running {
        let mut child = fixture
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, stdout_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdout_lines,
        }
    }

    /// The base URL from the `export ANTHROPIC_BASE_URL=` line.
    fn base_url(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=") {
                        return url.to_string();
                    }
                }
                Err(error) => {
                    let stderr = self.stop_and_collect_stderr();
                    panic!("no export line ({error}); stderr:\n{stderr}");
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the forwarder did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_and_collect_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr()
    }

    fn stderr(&mut self) -> String {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn address_of(base_url: &str) -> SocketAddr {
    base_url.strip_prefix("http://").unwrap().parse().unwrap()
}

fn serves_then_exits_cleanly_on(signal: &str) {
    let fixture = Fixture::new(&config_yaml(""));
    let mut running = Running::start(&fixture, &["-config", "config.yaml", "-no-tui"]);
    let base_url = running.base_url();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
    TcpStream::connect_timeout(&address_of(&base_url), Duration::from_secs(5))
        .expect("the proxy port accepts connections");
    running.signal(signal);
    let status = running.wait();
    let stderr = running.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains(signal), "the signal is logged:\n{stderr}");
}

#[test]
fn serves_then_exits_cleanly_on_sigterm() {
    serves_then_exits_cleanly_on("TERM");
}

#[test]
fn serves_then_exits_cleanly_on_sigint() {
    serves_then_exits_cleanly_on("INT");
}

#[test]
fn json_logs_go_to_stderr_and_the_rotating_file_is_flushed_on_exit() {
    let fixture = Fixture::new(&config_yaml(
        "logging:\n  format: json\n  file_enabled: true\n  file_path: logs/forwarder.log\n",
    ));
    let mut running = Running::start(&fixture, &["--config", "config.yaml"]);
    running.base_url();
    running.signal("TERM");
    assert_eq!(running.wait().code(), Some(0));
    let stderr = running.stderr();
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        messages.push(value["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "cc-forwarder started"),
        "{stderr}"
    );
    let file: PathBuf = fixture.path().join("logs/forwarder.log");
    let logged = std::fs::read_to_string(&file).unwrap();
    assert!(logged.contains("cc-forwarder started"), "{logged}");
    assert!(
        logged.contains("cc-forwarder stopped"),
        "flushed at exit: {logged}"
    );
}

#[test]
fn port_in_use_exits_with_status_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let fixture = Fixture::new(&config_yaml(""));
    let output = fixture.run(&["--config", "config.yaml", "--port", &port]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stderr).contains(&port), "{output:?}");
}

#[test]
fn ccf_environment_overrides_apply_but_ccf_log_is_not_a_config_key() {
    let fixture = Fixture::new(&config_yaml(""));
    let output = fixture
        .command()
        .args(["check-config", "--config", "config.yaml"])
        .env("CCF_SERVER__PORT", "9123")
        .env("CCF_LOG", "debug")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with("config.yaml: valid\n"),
        "no warnings: {output:?}"
    );
    assert!(stdout.contains("listen:    127.0.0.1:9123"), "{stdout}");
}

/// A config whose only endpoint is `upstream`; a stop waits at most `shutdown_timeout` for
/// requests in flight.
fn config_for_upstream(upstream: &str, shutdown_timeout: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  shutdown_timeout: {shutdown_timeout}\n\
         endpoints:\n  - name: mock\n    url: {upstream}\n    token: test-token\n\
         usage_tracking:\n  enabled: false\n"
    )
}

const STREAM_REQUEST_BODY: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Sends a streaming `POST /v1/messages` and returns the connection once the first event arrived,
/// with what was read so far.
fn start_stream(address: SocketAddr) -> (TcpStream, Vec<u8>) {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        STREAM_REQUEST_BODY.len(),
        STREAM_REQUEST_BODY
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("event: message_start") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed early: {}", text(&received));
        received.extend_from_slice(&buffer[..read]);
    }
    (stream, received)
}

/// Waits until nothing accepts connections on `address` any more: the forwarder closed its
/// listener, so it has begun to stop.
fn wait_for_listener_closed(address: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drains_an_in_flight_stream_before_exiting_on_sigterm() {
    let upstream = GatedUpstream::start();
    let fixture = Fixture::new(&config_for_upstream(&upstream.url(), "30s"));
    let mut running = Running::start(&fixture, &["--config", "config.yaml"]);
    let address = address_of(&running.base_url());
    let (mut stream, mut received) = start_stream(address);
    upstream.wait_for_held(1, DEADLINE);

    // The rest of the stream is held at the upstream until the forwarder is stopping.
    running.signal("TERM");
    wait_for_listener_closed(address);
    upstream.release();
    stream.read_to_end(&mut received).unwrap();
    let body = text(&received);
    assert!(
        body.contains("event: message_stop"),
        "the stream finished: {body}"
    );
    assert_eq!(running.wait().code(), Some(0), "{}", running.stderr());
    // The listener is gone.
    assert!(TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err());
}

#[test]
fn second_signal_exits_at_once_with_status_1() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(ccf_testkit::MockUpstream::start());
    upstream.set_default(ccf_testkit::Reply::sse().stall_after_events(1));
    // The stream never ends and the drain would wait an hour: only the second signal can end
    // the process within the deadline of `wait`.
    let fixture = Fixture::new(&config_for_upstream(&upstream.url(), "1h"));
    let mut running = Running::start(&fixture, &["--config", "config.yaml"]);
    let address = address_of(&running.base_url());
    let (_stream, _) = start_stream(address);

    running.signal("TERM");
    // Let the first signal be handled before the second one arrives.
    wait_for_listener_closed(address);
    running.signal("INT");
    let status = running.wait();
    let stderr = running.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("again"), "{stderr}");
}

#[test]
fn migrate_creates_the_usage_schema_and_is_idempotent() {
    // `usage_tracking.enabled: false` in the fixture: migrate works on the configured database
    // whatever the switch says, so an operator can prepare it before turning tracking on.
    let fixture = Fixture::new(&config_yaml(""));
    let config = fixture.path().join("config.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        "usage_tracking:\n  enabled: false\n",
        "usage_tracking:\n  enabled: false\n  database_path: data/usage.db\n",
    );
    std::fs::write(&config, yaml).unwrap();
    let first = fixture.run(&["migrate", "--config", "config.yaml"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(stdout.contains("schema version"), "{stdout}");
    assert!(fixture.path().join("data/usage.db").exists());
    let second = fixture.run(&["-config", "config.yaml", "migrate"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("applied now: none"),
        "{}",
        text(&second.stdout)
    );
}
