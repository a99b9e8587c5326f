//! The terminal UI end to end, in a real pseudo-terminal: the binary runs with `--tui` inside a
//! private tmux server, a request goes through it to a `MockUpstream` of this process, the
//! Requests tab shows it (read back with `tmux capture-pane`), and `q` shuts the forwarder down
//! gracefully with exit status 0 and the terminal restored.
//!
//! Needs tmux (`.ci/run` installs it): without it the test fails under CI and is a counted skip
//! otherwise (`ccf_testkit::skip_unless_ci`, listed by `cargo xtask ci`).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ccf_testkit::MockUpstream;

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

/// A tmux server of its own (`-L`), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn command(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn capture(&self) -> String {
        let output = self.command(&["capture-pane", "-p", "-t", "tui"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls the screen until `check` accepts it.
    fn wait_for_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.capture();
            if check(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "timed out waiting for {what}; the screen shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send_keys(&self, keys: &str) {
        let output = self.command(&["send-keys", "-t", "tui", keys]);
        assert!(output.status.success(), "{output:?}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The port in the header's base URL (`│ http://127.0.0.1:PORT │`).
fn base_url_port(screen: &str) -> Option<u16> {
    let start = screen.find("http://127.0.0.1:")? + "http://127.0.0.1:".len();
    let digits: String = screen[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One HTTP/1.1 request on a fresh connection; returns the status line and the body.
fn post_message(port: u16, model: &str) -> String {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn wait_for_file(path: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.contains('\n') {
                return text;
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn tui_shows_a_forwarded_request_and_q_shuts_down_cleanly() {
    if !tmux_available() {
        ccf_testkit::skip_unless_ci(
            "tui_shows_a_forwarded_request_and_q_shuts_down_cleanly",
            "tmux is not installed (.ci/run installs it)",
        );
        return;
    }
    // The mock upstream runs on this runtime's worker threads while the test blocks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = runtime.block_on(MockUpstream::start());

    let folder = tempfile::tempdir().unwrap();
    let config = format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n\
         usage_tracking:\n  enabled: false\n\
         health:\n  check_interval: 1h\n\
         tui:\n  enabled: false\n  update_interval: 200ms\n\
         endpoints:\n  - name: mock-main\n    url: {}\n    group: main\n    token: sk-ant-tui-test-0123456789\n",
        mock.url()
    );
    std::fs::write(folder.path().join("config.yaml"), config).unwrap();
    let exit_file: PathBuf = folder.path().join("exit.txt");
    // `--tui` wins over `tui.enabled: false`. The pane stays open after the exit so the restored
    // screen can be read.
    let script = format!(
        "cd {dir} && env -u RUST_LOG -u CCF_LOG {binary} --config config.yaml --tui; \
         echo EXIT=$? > {exit}; sleep 60",
        dir = shell_quote(folder.path()),
        binary = shell_quote(Path::new(BINARY)),
        exit = shell_quote(&exit_file),
    );
    let tmux = Tmux {
        socket: format!("ccf-tui-test-{}", std::process::id()),
    };
    let started = tmux.command(&[
        "new-session",
        "-d",
        "-s",
        "tui",
        "-x",
        "160",
        "-y",
        "40",
        &script,
    ]);
    assert!(started.status.success(), "{started:?}");

    let screen = tmux.wait_for_screen("the UI with its base URL", |screen| {
        screen.contains("1 Overview") && base_url_port(screen).is_some()
    });
    let port = base_url_port(&screen).unwrap();
    assert!(screen.contains("active group: main"), "{screen}");

    let answer = post_message(port, "claude-tui-e2e-model");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    tmux.send_keys("4");
    let screen = tmux.wait_for_screen("the request on the Requests tab", |screen| {
        screen.contains("claude-tui-e2e-model") && screen.contains("completed 200")
    });
    assert!(screen.contains("mock-main"), "{screen}");
    assert!(
        screen.contains("Requests (newest first, 1 kept)"),
        "{screen}"
    );

    // The log panel got the request's log lines (not written over the screen).
    tmux.send_keys("5");
    tmux.wait_for_screen("the request in the log panel", |screen| {
        screen.contains("request finished")
    });

    tmux.send_keys("q");
    let exit = wait_for_file(&exit_file);
    assert_eq!(exit.trim(), "EXIT=0");
    // The terminal is back to normal: the alternate screen is gone and the last log lines,
    // written after the UI let go, are on the ordinary screen.
    let screen = tmux.wait_for_screen("the restored screen", |screen| {
        screen.contains("cc-forwarder stopped")
    });
    assert!(!screen.contains("1 Overview"), "{screen}");
    assert_eq!(mock.requests().len(), 1, "probes are recorded apart");
    drop(tmux);
    runtime.block_on(mock.shutdown());
}
