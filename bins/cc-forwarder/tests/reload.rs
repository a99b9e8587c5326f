//! Hot reload in the real binary: `SIGHUP` reloads instead of ending the process, and an edit of
//! the configuration file is applied with the command-line layers (`-p`) still on top.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccf_testkit::MockUpstream;

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

/// The running binary, its proxy address and every stderr line so far (JSON logs).
struct Running {
    child: Child,
    proxy: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(folder: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(BINARY)
            .args(["--config", "config.yaml"])
            .args(args)
            .current_dir(folder)
            .env_remove("RUST_LOG")
            .env_remove("CCF_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let proxy = Arc::new(Mutex::new(None::<SocketAddr>));
        let found = Arc::clone(&proxy);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=http://") {
                    *found.lock().unwrap() = url.trim().parse().ok();
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        let mut running = Running {
            child,
            proxy: "127.0.0.1:0".parse().unwrap(),
            stderr: lines,
        };
        // Reload triggers are installed once the file is watched.
        running.wait_for_log("the app to watch its file", |line| {
            line.contains("watching the configuration file for changes")
        });
        running.proxy = proxy.lock().unwrap().expect("the export line was printed");
        running
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line satisfies `check`; panics with the log otherwise.
    fn wait_for_log(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.stderr.lock().unwrap().iter().any(|line| check(line)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "exited ({status}) waiting for {what}; stderr:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn message(&self) -> u16 {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut stream = TcpStream::connect_timeout(&self.proxy, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.proxy,
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "exited with {status}:\n{}", self.logs());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("did not stop:\n{}", self.logs());
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

fn messages(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .count()
}

fn config(endpoints: &[(&str, &MockUpstream, u32)]) -> String {
    let mut yaml = "server:\n  host: 127.0.0.1\n  port: 0\n\
                    tui:\n  enabled: false\n\
                    logging:\n  format: json\n  level: info\n\
                    usage_tracking:\n  enabled: false\n\
                    routing:\n  session_affinity: off\n\
                    endpoints:\n"
        .to_string();
    for (name, upstream, priority) in endpoints {
        yaml.push_str(&format!(
            "  - name: {name}\n    url: {}\n    priority: {priority}\n",
            upstream.url()
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_edits_reload_the_running_binary_keeping_the_primary_endpoint() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let c = MockUpstream::start().await;
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("config.yaml");
    std::fs::write(&path, config(&[("a", &a, 1), ("b", &b, 2)])).unwrap();
    let mut running = Running::start(folder.path(), &["--primary-endpoint", "b"]);
    let blocking = tokio::task::block_in_place(|| running.message());
    assert_eq!(blocking, 200);
    assert_eq!(messages(&b), 1, "-p b wins");

    // SIGHUP reloads (nothing changed) and the process keeps running.
    running.signal("HUP");
    running.wait_for_log("the SIGHUP reload", |line| {
        line.contains("configuration reloaded") && line.contains("sighup")
    });
    assert_eq!(tokio::task::block_in_place(|| running.message()), 200);
    assert_eq!(messages(&b), 2);

    // An edit adds `c` with the best priority in the file; `-p b` still wins.
    let temporary = folder.path().join("config.yaml.tmp");
    std::fs::write(
        &temporary,
        config(&[("a", &a, 1), ("b", &b, 2), ("c", &c, 0)]),
    )
    .unwrap();
    std::fs::rename(&temporary, &path).unwrap();
    running.wait_for_log("the file reload", |line| {
        line.contains("configuration change applied") && line.contains("endpoint `c` added")
    });
    assert_eq!(tokio::task::block_in_place(|| running.message()), 200);
    assert_eq!(messages(&b), 3, "-p b survived the reload");
    assert_eq!(messages(&a) + messages(&c), 0);

    // A broken file is rejected and logged; the old configuration keeps serving.
    std::fs::write(&path, "endpoints: [").unwrap();
    running.wait_for_log("the rejected reload", |line| {
        line.contains("configuration reload rejected")
    });
    assert_eq!(tokio::task::block_in_place(|| running.message()), 200);
    assert_eq!(messages(&b), 4);
    running.stop();
}
