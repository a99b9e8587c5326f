//! Several forwarder processes sharing one MariaDB store (issue 10, "Several instances, one
//! store"): two real `cc-forwarder` processes with different `instance_id`s, traffic through
//! both, a pause made on one instance's admin API obeyed by the other within two seconds, and
//! usage from both in one listing with no row lost or duplicated.
//!
//! Needs the MariaDB server at 127.0.0.1:3306 (root, empty password) and the `mysql` command-line
//! client; each run creates its own `ccf_multi_<random>` database and drops it at the end.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccf_testkit::MockUpstream;

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs SQL on the local server with the `mysql` client; tab-separated rows.
fn sql(database: Option<&str>, statement: &str) -> Vec<Vec<String>> {
    let mut command = Command::new("mysql");
    command.args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-N", "-B"]);
    if let Some(database) = database {
        command.arg(database);
    }
    let output = command
        .args(["-e", statement])
        .output()
        .expect("mysql client");
    assert!(
        output.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// Drops the test database however the test ends.
struct Database(String);

impl Database {
    fn create() -> Database {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "ccf_multi_{:x}{:x}",
            std::process::id(),
            nanos & 0xffff_ffff
        );
        sql(
            None,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        );
        Database(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("mysql")
            .args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-e"])
            .arg(format!("DROP DATABASE IF EXISTS {}", self.0))
            .output();
    }
}

/// One running forwarder process.
struct Instance {
    name: &'static str,
    child: Child,
    _folder: tempfile::TempDir,
    proxy: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    fn start(name: &'static str, database: &str, main: &str, backup: &str) -> Instance {
        let config = format!(
            "instance_id: {name}\n\
             server:\n  host: 127.0.0.1\n  port: 0\n\
             web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n\
             tui:\n  enabled: false\n\
             logging:\n  format: json\n  level: info\n\
             endpoints:\n\
             \x20 - name: main-upstream\n    url: {main}\n    group: main\n    group-priority: 1\n\
             \x20 - name: backup-upstream\n    url: {backup}\n    group: backup\n    group-priority: 2\n\
             usage_tracking:\n  enabled: true\n  flush_interval: 200ms\n  database:\n\
             \x20   type: mysql\n    host: 127.0.0.1\n    port: 3306\n    database: {database}\n\
             \x20   username: root\n"
        );
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("config.yaml"), config).unwrap();
        let mut child = Command::new(BINARY)
            .args(["--config", "config.yaml"])
            .current_dir(folder.path())
            .env_remove("RUST_LOG")
            .env_remove("CCF_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel::<(bool, String)>();
        let stdout = child.stdout.take().unwrap();
        let out_sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_sender.send((true, line));
            }
        });
        let stderr = child.stderr.take().unwrap();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&kept);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = sender.send((false, line));
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((is_stdout, line)) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "{name} did not start; stderr:\n{}",
                    kept.lock().unwrap().join("\n")
                );
            };
            if is_stdout {
                if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=http://") {
                    proxy = Some(url.trim().parse::<SocketAddr>().unwrap());
                }
            } else if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let dashboard = event
                    .get("dashboard")
                    .or_else(|| event.get("fields").and_then(|f| f.get("dashboard")))
                    .and_then(serde_json::Value::as_str);
                if let Some(url) = dashboard {
                    let address = url.trim_start_matches("http://").trim_end_matches('/');
                    admin = Some(address.parse::<SocketAddr>().unwrap());
                }
            }
        }
        Instance {
            name,
            child,
            _folder: folder,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            stderr: kept,
        }
    }

    /// One `/v1/messages` request; the answer's status and `x-ccf-request-id`.
    fn message(&self) -> (u16, String) {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
        let (status, headers, _) = http(self.proxy, "POST", "/v1/messages", Some(body));
        let id = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-ccf-request-id")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        (status, id)
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not stop", self.name);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 exchange (`Connection: close`): status, raw headers, body.
fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nx-api-key: client-key\r\n\
         anthropic-version: 2023-06-01\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), rest.to_string())
}

/// The JSON body of an admin API GET (chunked encoding tolerated: the JSON object is cut out).
fn admin_json(instance: &Instance, path: &str) -> serde_json::Value {
    let (status, _, body) = http(instance.admin, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

/// `/v1/messages` requests an upstream received (health probes left out).
fn messages(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_operator_actions_and_usage() {
    let database = Database::create();
    let main = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let alpha = Instance::start("alpha", &database.0, &main.url(), &backup.url());
    let beta = Instance::start("beta", &database.0, &main.url(), &backup.url());

    let mut sent: Vec<(&str, String)> = Vec::new();
    let mut send = |instance: &Instance| {
        let (status, id) = instance.message();
        assert_eq!(status, 200, "{}:\n{}", instance.name, instance.logs());
        assert!(!id.is_empty());
        sent.push((instance.name, id));
    };

    // Traffic through both: the preferred group `main` serves it.
    for _ in 0..5 {
        send(&alpha);
        send(&beta);
    }
    assert_eq!(messages(&main), 10);
    assert_eq!(messages(&backup), 0);

    // Pause `main` on alpha only.
    let (status, _, body) = http(alpha.admin, "POST", "/api/v1/groups/main/pause", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let paused_at = Instant::now();
    send(&alpha);
    assert_eq!(messages(&backup), 1, "alpha obeys its own pause at once");

    // Beta obeys within two seconds: its next requests go to the other group.
    loop {
        let before = messages(&backup);
        send(&beta);
        if messages(&backup) > before {
            break;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(2),
            "beta still routes to the paused group after {:?}:\n{}",
            paused_at.elapsed(),
            beta.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let obeyed_after = paused_at.elapsed();
    assert!(obeyed_after < Duration::from_secs(2), "{obeyed_after:?}");
    eprintln!("beta obeyed the pause after {obeyed_after:?}");
    let main_before = messages(&main);
    for _ in 0..3 {
        send(&alpha);
        send(&beta);
    }
    assert_eq!(messages(&main), main_before, "nobody uses the paused group");

    // Both dashboards show the group paused.
    for instance in [&alpha, &beta] {
        let groups = admin_json(instance, "/api/v1/groups");
        let text = groups.to_string();
        assert!(
            text.contains("\"manually_paused\":true"),
            "{}: {text}",
            instance.name
        );
    }
    let state = sql(
        Some(&database.0),
        "SELECT scope, version, updated_by FROM cluster_state ORDER BY scope",
    );
    assert_eq!(
        state,
        vec![vec!["group:main".to_string(), "1".into(), "alpha".into()]]
    );

    // Resume on beta: alpha follows.
    let (status, _, body) = http(beta.admin, "POST", "/api/v1/groups/main/resume", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let resumed_at = Instant::now();
    loop {
        let before = messages(&main);
        send(&alpha);
        if messages(&main) > before {
            break;
        }
        assert!(
            resumed_at.elapsed() < Duration::from_secs(2),
            "alpha still avoids the resumed group:\n{}",
            alpha.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every request is one final row, written by the instance that served it.
    let expected: BTreeSet<(String, String)> = sent
        .iter()
        .map(|(name, id)| (name.to_string(), id.clone()))
        .collect();
    assert_eq!(expected.len(), sent.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows: Vec<(String, String)> = sql(
            Some(&database.0),
            "SELECT instance_id, request_id FROM request_logs WHERE is_final = 1",
        )
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
        if rows.len() >= sent.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total: Vec<Vec<String>> = sql(Some(&database.0), "SELECT COUNT(*) FROM request_logs");
    assert_eq!(total[0][0], sent.len().to_string(), "no extra row");
    assert_eq!(rows.len(), sent.len(), "no row lost or duplicated");
    let stored: BTreeSet<(String, String)> = rows.into_iter().collect();
    assert_eq!(stored, expected);

    // One listing across both instances, from either admin API, filterable by instance.
    for instance in [&alpha, &beta] {
        let listing = admin_json(instance, "/api/v1/usage/requests?limit=1000");
        assert_eq!(
            listing["total"].as_u64(),
            Some(sent.len() as u64),
            "{}: {listing}",
            instance.name
        );
    }
    let alpha_count = sent.iter().filter(|(name, _)| *name == "alpha").count();
    let only_alpha = admin_json(&beta, "/api/v1/usage/requests?limit=1000&instance=alpha");
    assert_eq!(only_alpha["total"].as_u64(), Some(alpha_count as u64));
    let items = only_alpha["data"].as_array().unwrap();
    assert!(items.iter().all(|row| row["instance_id"] == "alpha"));

    alpha.stop();
    beta.stop();
    drop(database);
}
