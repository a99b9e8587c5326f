//! Several forwarder processes sharing one MariaDB store (issue 10, "Several instances, one
//! store") and, from issue 21, one Redis for the hot routing state (the tests at the end): real
//! `cc-forwarder` processes with different `instance_id`s and one shared `cluster_state` table. Every operator action the docs call shared is made on one instance's
//! admin API and obeyed by the other: a group pause and resume, a group activation, an endpoint
//! priority change. Usage from both instances lands in one listing with no row lost or
//! duplicated.
//!
//! No test measures how fast the other instance follows (speed belongs in benchmarks): each waits
//! until the other instance's admin API shows the new state, with a deadline that only catches a
//! hang, then proves the routing by which mock upstream receives that instance's next request.
//!
//! Needs the MariaDB server at 127.0.0.1:3306 (root, empty password) and the `mysql` command-line
//! client; each test creates its own `ccf_multi_<random>` database and drops it at the end.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccf_testkit::{MockUpstream, MockUsage, RedisKeyPrefix, Reply, TcpProxy, LOCAL_REDIS_URL};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");

/// Longest wait for anything: only a hang gets near it.
const DEADLINE: Duration = Duration::from_secs(30);

/// Pause between two looks at a state that is not there yet (polling pace, not synchronisation).
const POLL: Duration = Duration::from_millis(50);

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
        // Tests of this file run in parallel in one process: the counter keeps names apart.
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "ccf_multi_{:x}_{}_{:x}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff_ffff
        );
        sql(
            None,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        );
        Database(name)
    }

    /// `cluster_state` as (scope, parsed state, version, updated_by), ordered by scope.
    fn cluster_state(&self) -> Vec<(String, Value, u64, String)> {
        sql(
            Some(&self.0),
            "SELECT scope, state, version, updated_by FROM cluster_state ORDER BY scope",
        )
        .into_iter()
        .map(|row| {
            let state = serde_json::from_str(&row[1])
                .unwrap_or_else(|error| panic!("state of {} is not JSON ({error})", row[0]));
            (
                row[0].clone(),
                state,
                row[2].parse().unwrap(),
                row[3].clone(),
            )
        })
        .collect()
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

/// Two groups, one endpoint each: `main` (preferred) and `backup`.
fn two_groups(main: &MockUpstream, backup: &MockUpstream) -> String {
    format!(
        "endpoints:\n\
         \x20 - name: main-upstream\n    url: {}\n    group: main\n    group-priority: 1\n\
         \x20 - name: backup-upstream\n    url: {}\n    group: backup\n    group-priority: 2\n",
        main.url(),
        backup.url()
    )
}

/// The `usage_tracking:` section of an instance storing its rows in MariaDB database
/// `database`.
fn mysql_usage(database: &str) -> String {
    format!(
        "usage_tracking:\n  enabled: true\n  flush_interval: 200ms\n  database:\n\
         \x20   type: mysql\n    host: 127.0.0.1\n    port: 3306\n    database: {database}\n\
         \x20   username: root\n"
    )
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
    /// Starts `cc-forwarder` as instance `name` on the shared `database`, with `routing` (the
    /// `endpoints:` and any other top-level keys) appended to the common configuration.
    fn start(name: &'static str, database: &str, routing: &str) -> Instance {
        Instance::start_with(name, &mysql_usage(database), routing)
    }

    /// Starts `cc-forwarder` as instance `name` with `usage` (the `usage_tracking:` section)
    /// and `routing` (the `endpoints:` and any other top-level keys).
    fn start_with(name: &'static str, usage: &str, routing: &str) -> Instance {
        let config = format!(
            "instance_id: {name}\n\
             server:\n  host: 127.0.0.1\n  port: 0\n\
             web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n\
             tui:\n  enabled: false\n\
             logging:\n  format: json\n  level: info\n\
             {usage}\
             {routing}"
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
            } else if let Ok(event) = serde_json::from_str::<Value>(&line) {
                let dashboard = event
                    .get("dashboard")
                    .or_else(|| event.get("fields").and_then(|f| f.get("dashboard")))
                    .and_then(Value::as_str);
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

    /// One `/v1/messages` request with these headers: status, raw headers and body.
    fn try_message_with(&self, headers: &[(&str, &str)]) -> (u16, String, String) {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
        http_with(self.proxy, "POST", "/v1/messages", Some(body), headers)
    }

    /// One `/v1/messages` request with these headers that must succeed; its `x-ccf-request-id`.
    fn message_with(&self, headers: &[(&str, &str)]) -> String {
        let (status, headers, body) = self.try_message_with(headers);
        assert_eq!(status, 200, "{}: {body}\n{}", self.name, self.logs());
        let id = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-ccf-request-id")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        assert!(!id.is_empty(), "{}: no request id in {headers}", self.name);
        id
    }

    /// An admin API `POST` that must succeed.
    fn post(&self, path: &str, body: &str) {
        let (status, _, answer) = http(self.admin, "POST", path, Some(body));
        assert_eq!(status, 200, "{} {path}: {answer}", self.name);
    }

    /// The JSON body of an admin API `GET` (chunked encoding tolerated: the object is cut out).
    fn admin_json(&self, path: &str) -> Value {
        let (status, _, body) = http(self.admin, "GET", path, None);
        assert_eq!(status, 200, "{} {path}: {body}", self.name);
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    }

    /// Polls `GET path` until `expected` holds for its body; the body that satisfied it. The
    /// deadline only catches an instance that never follows.
    fn wait_for(&self, what: &str, path: &str, expected: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_every(POLL, what, path, expected)
    }

    /// [`Instance::wait_for`], looking every `every` (a short pace where the test reports how
    /// long the state took to arrive).
    fn wait_for_every(
        &self,
        every: Duration,
        what: &str,
        path: &str,
        expected: impl Fn(&Value) -> bool,
    ) -> Value {
        self.poll(
            every,
            &format!("{what} at {path}"),
            |instance| instance.admin_json(path),
            expected,
        )
    }

    /// Reads `read` every `every` until `done` holds for what it read; that value. The deadline
    /// only catches an instance that never gets there.
    fn poll<T: std::fmt::Debug>(
        &self,
        every: Duration,
        what: &str,
        read: impl Fn(&Instance) -> T,
        done: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = read(self);
            if done(&last) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{} never showed {what}; last: {last:?}\nlog:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(every);
        }
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
    http_with(address, method, path, body, &[("x-api-key", "client-key")])
}

/// [`http`] with these request headers (besides `Host`, `Connection`, `Content-Type`,
/// `anthropic-version` and `Content-Length`).
fn http_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{extra}\
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

/// `/v1/messages` requests an upstream received (health probes left out).
fn messages(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|request| request.path == "/v1/messages")
        .count()
}

/// The mock upstreams of a test, by the name the assertions use.
struct Upstreams<'a>(Vec<(&'static str, &'a MockUpstream)>);

impl Upstreams<'_> {
    /// Sends one request through `instance` and asserts that exactly the upstream `expected`
    /// received it; the request id.
    fn send_expecting(&self, instance: &Instance, expected: &str) -> String {
        self.send_expecting_with(instance, expected, &[("x-api-key", "client-key")])
    }

    /// [`Upstreams::send_expecting`] with these request headers.
    fn send_expecting_with(
        &self,
        instance: &Instance,
        expected: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let before: Vec<usize> = self
            .0
            .iter()
            .map(|(_, upstream)| messages(upstream))
            .collect();
        let id = instance.message_with(headers);
        let received: Vec<&str> = self
            .0
            .iter()
            .zip(&before)
            .filter(|((_, upstream), before)| messages(upstream) > **before)
            .map(|((name, _), _)| *name)
            .collect();
        assert_eq!(
            received,
            [expected],
            "{}'s request {id} went to the wrong upstream:\n{}",
            instance.name,
            instance.logs()
        );
        id
    }
}

/// The group `/api/v1/groups` lists as `name`.
fn group<'a>(groups: &'a Value, name: &str) -> &'a Value {
    groups["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|group| group["name"] == name))
        .unwrap_or_else(|| panic!("no group {name} in {groups}"))
}

/// The routing priority `/api/v1/endpoints` shows for `name`.
fn priority(endpoints: &Value, name: &str) -> Option<u64> {
    endpoints["endpoints"]
        .as_array()?
        .iter()
        .find(|endpoint| endpoint["name"] == name)?["priority"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_operator_actions_and_usage() {
    let database = Database::create();
    let main = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("main", &main), ("backup", &backup)]);
    let alpha = Instance::start("alpha", &database.0, &two_groups(&main, &backup));
    let beta = Instance::start("beta", &database.0, &two_groups(&main, &backup));

    let mut sent: Vec<(&str, String)> = Vec::new();

    // Traffic through both: the preferred group `main` serves it.
    for _ in 0..5 {
        for instance in [&alpha, &beta] {
            sent.push((instance.name, upstreams.send_expecting(instance, "main")));
        }
    }

    // Pause `main` on alpha only: alpha obeys at once.
    alpha.post("/api/v1/groups/main/pause", "{}");
    sent.push(("alpha", upstreams.send_expecting(&alpha, "backup")));

    // Beta follows: its dashboard shows the pause, and its next requests go to the other group.
    let paused_at = Instant::now();
    beta.wait_for("`main` paused", "/api/v1/groups", |groups| {
        group(groups, "main")["manually_paused"] == true
    });
    eprintln!("beta showed the pause after {:?}", paused_at.elapsed());
    for _ in 0..3 {
        for instance in [&alpha, &beta] {
            sent.push((instance.name, upstreams.send_expecting(instance, "backup")));
        }
    }
    let groups = alpha.admin_json("/api/v1/groups");
    assert_eq!(group(&groups, "main")["manually_paused"], true, "{groups}");
    assert_eq!(
        database.cluster_state(),
        [(
            "group:main".to_string(),
            json!({"paused": true, "paused_until": null}),
            1,
            "alpha".to_string()
        )]
    );

    // Resume on beta: alpha follows.
    beta.post("/api/v1/groups/main/resume", "{}");
    sent.push(("beta", upstreams.send_expecting(&beta, "main")));
    alpha.wait_for("`main` resumed and active", "/api/v1/groups", |groups| {
        let main = group(groups, "main");
        main["manually_paused"] == false && main["is_active"] == true
    });
    sent.push(("alpha", upstreams.send_expecting(&alpha, "main")));
    assert_eq!(
        database.cluster_state(),
        [(
            "group:main".to_string(),
            json!({"paused": false, "paused_until": null}),
            2,
            "beta".to_string()
        )]
    );

    // Every request is one final row, written by the instance that served it. The recorders
    // flush on their own: wait until every row is there, then check nothing else is.
    let expected: BTreeSet<(String, String)> = sent
        .iter()
        .map(|(name, id)| (name.to_string(), id.clone()))
        .collect();
    assert_eq!(expected.len(), sent.len(), "request ids are unique");
    let final_rows = || -> Vec<(String, String)> {
        sql(
            Some(&database.0),
            "SELECT instance_id, request_id FROM request_logs WHERE is_final = 1",
        )
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    while final_rows().len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} final rows were written",
            final_rows().len(),
            sent.len()
        );
        tokio::time::sleep(POLL).await;
    }
    let rows = final_rows();
    assert_eq!(rows.len(), sent.len(), "no row duplicated");
    let total = sql(Some(&database.0), "SELECT COUNT(*) FROM request_logs");
    assert_eq!(total[0][0], sent.len().to_string(), "no extra row");
    let stored: BTreeSet<(String, String)> = rows.into_iter().collect();
    assert_eq!(stored, expected);

    // One listing across both instances, from either admin API, filterable by instance.
    for instance in [&alpha, &beta] {
        let listing = instance.admin_json("/api/v1/usage/requests?limit=1000");
        assert_eq!(
            listing["total"].as_u64(),
            Some(sent.len() as u64),
            "{}: {listing}",
            instance.name
        );
    }
    let alpha_count = sent.iter().filter(|(name, _)| *name == "alpha").count();
    let only_alpha = beta.admin_json("/api/v1/usage/requests?limit=1000&instance=alpha");
    assert_eq!(only_alpha["total"].as_u64(), Some(alpha_count as u64));
    let items = only_alpha["data"].as_array().unwrap();
    assert_eq!(items.len(), alpha_count);
    assert!(items.iter().all(|row| row["instance_id"] == "alpha"));

    alpha.stop();
    beta.stop();
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_activated_on_one_instance_is_routed_to_by_the_other() {
    let database = Database::create();
    let main = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("main", &main), ("backup", &backup)]);
    let alpha = Instance::start("alpha", &database.0, &two_groups(&main, &backup));
    let beta = Instance::start("beta", &database.0, &two_groups(&main, &backup));
    for instance in [&alpha, &beta] {
        upstreams.send_expecting(instance, "main");
    }

    // Activate `backup` on alpha: alpha routes there at once, beta once it shows it active.
    alpha.post("/api/v1/groups/backup/activate", "{}");
    upstreams.send_expecting(&alpha, "backup");
    let activated_at = Instant::now();
    let groups = beta.wait_for("`backup` active", "/api/v1/groups", |groups| {
        groups["active_group"] == "backup"
    });
    eprintln!(
        "beta showed the activation after {:?}",
        activated_at.elapsed()
    );
    assert_eq!(group(&groups, "main")["is_active"], false, "{groups}");
    for _ in 0..3 {
        upstreams.send_expecting(&beta, "backup");
        upstreams.send_expecting(&alpha, "backup");
    }
    // The activation is stored as the last activation plus its group, not paused.
    assert_eq!(
        database.cluster_state(),
        [
            (
                "active".to_string(),
                json!({"group": "backup", "force": false}),
                1,
                "alpha".to_string()
            ),
            (
                "group:backup".to_string(),
                json!({"paused": false, "paused_until": null}),
                1,
                "alpha".to_string()
            ),
        ]
    );

    // And back the other way: `main` activated on beta, alpha follows.
    beta.post("/api/v1/groups/main/activate", "{}");
    upstreams.send_expecting(&beta, "main");
    alpha.wait_for("`main` active", "/api/v1/groups", |groups| {
        groups["active_group"] == "main"
    });
    for _ in 0..3 {
        upstreams.send_expecting(&alpha, "main");
        upstreams.send_expecting(&beta, "main");
    }
    assert_eq!(
        database.cluster_state(),
        [
            (
                "active".to_string(),
                json!({"group": "main", "force": false}),
                2,
                "beta".to_string()
            ),
            (
                "group:backup".to_string(),
                json!({"paused": false, "paused_until": null}),
                1,
                "alpha".to_string()
            ),
            (
                "group:main".to_string(),
                json!({"paused": false, "paused_until": null}),
                1,
                "beta".to_string()
            ),
        ]
    );

    alpha.stop();
    beta.stop();
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_priority_changed_on_one_instance_reorders_the_other() {
    let database = Database::create();
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("first", &first), ("second", &second)]);
    // One group, two endpoints ordered by priority. Session affinity is off: with it on, the
    // conversation bound to `first` would rightly stay there (a priority edit only steers new
    // sessions), and this test is about the shared priority, not about affinity.
    let routing = format!(
        "routing:\n  session_affinity: off\n\
         endpoints:\n\
         \x20 - name: first\n    url: {}\n    group: main\n    priority: 1\n\
         \x20 - name: second\n    url: {}\n    group: main\n    priority: 2\n",
        first.url(),
        second.url()
    );
    let alpha = Instance::start("alpha", &database.0, &routing);
    let beta = Instance::start("beta", &database.0, &routing);
    for instance in [&alpha, &beta] {
        upstreams.send_expecting(instance, "first");
    }

    // `first` moved behind `second` on alpha: alpha reorders at once, beta once it shows it.
    alpha.post("/api/v1/endpoints/first/priority", r#"{"priority": 3}"#);
    upstreams.send_expecting(&alpha, "second");
    let changed_at = Instant::now();
    let endpoints = beta.wait_for("`first` at priority 3", "/api/v1/endpoints", |endpoints| {
        priority(endpoints, "first") == Some(3)
    });
    eprintln!("beta showed the priority after {:?}", changed_at.elapsed());
    assert_eq!(priority(&endpoints, "second"), Some(2), "{endpoints}");
    for _ in 0..3 {
        upstreams.send_expecting(&beta, "second");
        upstreams.send_expecting(&alpha, "second");
    }
    assert_eq!(
        database.cluster_state(),
        [(
            "endpoint:first".to_string(),
            json!({"priority": 3}),
            1,
            "alpha".to_string()
        )]
    );

    // And back the other way: `second` moved behind `first` on beta, alpha follows.
    beta.post("/api/v1/endpoints/second/priority", r#"{"priority": 5}"#);
    upstreams.send_expecting(&beta, "first");
    alpha.wait_for("`second` at priority 5", "/api/v1/endpoints", |endpoints| {
        priority(endpoints, "second") == Some(5)
    });
    for _ in 0..3 {
        upstreams.send_expecting(&alpha, "first");
        upstreams.send_expecting(&beta, "first");
    }
    let endpoints = alpha.admin_json("/api/v1/endpoints");
    assert_eq!(priority(&endpoints, "first"), Some(3), "{endpoints}");
    assert_eq!(
        database.cluster_state(),
        [
            (
                "endpoint:first".to_string(),
                json!({"priority": 3}),
                1,
                "alpha".to_string()
            ),
            (
                "endpoint:second".to_string(),
                json!({"priority": 5}),
                1,
                "beta".to_string()
            ),
        ]
    );

    alpha.stop();
    beta.stop();
    drop(database);
}

// ---------------------------------------------------------------------------------------------
// Issue 21: hot routing state shared through Redis (`cluster.redis_url`).
//
// Needs the Redis server at 127.0.0.1:6379 and the `redis-cli` client; each test uses its own
// key prefix and deletes its keys at the end. The instances also share a MariaDB database
// (usage rows, and the operator actions' durable record), except where a test says SQLite.
// ---------------------------------------------------------------------------------------------

/// The `cluster:` section of an instance sharing `prefix` on Redis at `url`.
fn cluster_section(prefix: &RedisKeyPrefix, url: &str) -> String {
    format!(
        "cluster:\n  redis_url: {url}\n  redis_prefix: {}\n  redis_timeout: 200ms\n",
        prefix.as_str()
    )
}

/// Two endpoints in one group, `first` preferred (priority 1) over `second`; one attempt per
/// endpoint, so an error moves a request on at once.
fn first_and_second(first: &MockUpstream, second: &MockUpstream) -> String {
    format!(
        "retry:\n  max_attempts: 1\n\
         endpoints:\n\
         \x20 - name: first\n    url: {}\n    group: main\n    priority: 1\n\
         \x20 - name: second\n    url: {}\n    group: main\n    priority: 2\n",
        first.url(),
        second.url()
    )
}

/// The endpoint `/api/v1/endpoints` lists as `name`.
fn endpoint<'a>(endpoints: &'a Value, name: &str) -> &'a Value {
    endpoints["endpoints"]
        .as_array()
        .and_then(|endpoints| endpoints.iter().find(|endpoint| endpoint["name"] == name))
        .unwrap_or_else(|| panic!("no endpoint {name} in {endpoints}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_redis_obey_a_pause_made_on_one() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let main = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("main", &main), ("backup", &backup)]);
    let routing = format!(
        "{}{}",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        two_groups(&main, &backup)
    );
    let alpha = Instance::start("alpha", &database.0, &routing);
    let beta = Instance::start("beta", &database.0, &routing);
    let gamma = Instance::start("gamma", &database.0, &routing);
    for instance in [&alpha, &beta, &gamma] {
        upstreams.send_expecting(instance, "main");
    }

    // Pause `main` on alpha; beta and gamma obey. The time each took is printed (it goes into
    // docs/benchmarks.md), never asserted.
    alpha.post("/api/v1/groups/main/pause", "{}");
    let paused_at = Instant::now();
    for instance in [&beta, &gamma] {
        let every = Duration::from_millis(2);
        instance.wait_for_every(every, "`main` paused", "/api/v1/groups", |groups| {
            group(groups, "main")["manually_paused"] == true
        });
        eprintln!(
            "{} showed the pause after {:?} (Redis)",
            instance.name,
            paused_at.elapsed()
        );
    }
    for instance in [&alpha, &beta, &gamma] {
        upstreams.send_expecting(instance, "backup");
    }
    // Resumed on gamma: the other two follow.
    gamma.post("/api/v1/groups/main/resume", "{}");
    for instance in [&alpha, &beta] {
        instance.wait_for("`main` resumed", "/api/v1/groups", |groups| {
            group(groups, "main")["manually_paused"] == false
                && group(groups, "main")["is_active"] == true
        });
        upstreams.send_expecting(instance, "main");
    }
    // MySQL keeps the durable record, written once per action.
    let state = database.cluster_state();
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0].0, "group:main");
    assert_eq!(state[0].2, 2, "two writes: the pause and the resume");
    for instance in [alpha, beta, gamma] {
        instance.stop();
    }
    drop(prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_sqlite_share_operator_actions_through_redis_alone() {
    let prefix = RedisKeyPrefix::new("multi");
    let main = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("main", &main), ("backup", &backup)]);
    let routing = format!(
        "{}{}",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        two_groups(&main, &backup)
    );
    // Each instance has its own SQLite file (in its own folder): only Redis is shared.
    let sqlite = "usage_tracking:\n  enabled: true\n  database_path: usage.db\n";
    let alpha = Instance::start_with("alpha", sqlite, &routing);
    let beta = Instance::start_with("beta", sqlite, &routing);
    upstreams.send_expecting(&beta, "main");

    alpha.post("/api/v1/groups/main/pause", "{}");
    beta.wait_for("`main` paused", "/api/v1/groups", |groups| {
        group(groups, "main")["manually_paused"] == true
    });
    upstreams.send_expecting(&beta, "backup");

    // A third instance started now reads the pause from Redis before it serves.
    let gamma = Instance::start_with("gamma", sqlite, &routing);
    gamma.wait_for("`main` paused", "/api/v1/groups", |groups| {
        group(groups, "main")["manually_paused"] == true
    });
    upstreams.send_expecting(&gamma, "backup");
    assert!(
        prefix.keys().iter().any(|key| key.contains(":operator")),
        "the operator state is kept in Redis: {:?}",
        prefix.keys()
    );
    for instance in [alpha, beta, gamma] {
        instance.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_next_turn_through_another_instance_stays_on_its_endpoint() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("first", &first), ("second", &second)]);
    let routing = format!(
        "{}{}",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        first_and_second(&first, &second)
    );
    let alpha = Instance::start("alpha", &database.0, &routing);
    let beta = Instance::start("beta", &database.0, &routing);
    let conversation = [
        ("x-api-key", "client-key"),
        ("x-session-id", "conversation-1"),
    ];

    // Turn one through alpha: `first` fails it (one server error: still healthy), `second`
    // answers, and the conversation is bound to `second`.
    first.enqueue(Reply::error(500, "api_error", "one bad moment"));
    let id = alpha.message_with(&conversation);
    assert_eq!(messages(&second), 1, "turn one ({id}) answered by second");

    // Beta learns the binding, and the next turn through beta stays on `second` although
    // `first` comes first by priority (and is healthy).
    let bound_at = Instant::now();
    beta.wait_for(
        "the conversation bound to second",
        "/api/v1/routing/affinity",
        |view| {
            view["sessions"].as_array().is_some_and(|sessions| {
                sessions
                    .iter()
                    .any(|session| session["endpoint"] == "second")
            })
        },
    );
    eprintln!("beta showed the binding after {:?}", bound_at.elapsed());
    upstreams.send_expecting_with(&beta, "second", &conversation);
    upstreams.send_expecting_with(&beta, "second", &conversation);
    // Another conversation through beta starts on `first`: the binding, not a changed
    // priority, kept turn two on `second`.
    upstreams.send_expecting_with(
        &beta,
        "first",
        &[
            ("x-api-key", "client-key"),
            ("x-session-id", "conversation-2"),
        ],
    );
    assert!(
        prefix.keys().iter().any(|key| key.contains(":session:")),
        "bindings live in Redis with their TTL: {:?}",
        prefix.keys()
    );
    alpha.stop();
    beta.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_blocked_by_a_429_on_one_instance_is_skipped_by_the_others_until_its_reset() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("first", &first), ("second", &second)]);
    let routing = format!(
        "{}routing:\n  session_affinity: off\n{}",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        first_and_second(&first, &second)
    );
    let alpha = Instance::start("alpha", &database.0, &routing);
    let beta = Instance::start("beta", &database.0, &routing);
    let gamma = Instance::start("gamma", &database.0, &routing);

    // `first` answers alpha with a 429 asking for 8 s: alpha skips it until then.
    first.enqueue(Reply::rate_limited(8));
    let id = alpha.message_with(&[("x-api-key", "client-key")]);
    assert_eq!(messages(&first), 1, "{id}: the 429 itself");
    assert_eq!(messages(&second), 1, "{id}: answered by the next endpoint");

    // Beta and gamma learn the block and send nothing to `first` meanwhile.
    for instance in [&beta, &gamma] {
        instance.wait_for("`first` rate limited", "/api/v1/endpoints", |endpoints| {
            endpoint(endpoints, "first")["rate_limited"] == true
        });
        upstreams.send_expecting(instance, "second");
        upstreams.send_expecting(instance, "second");
    }
    assert_eq!(
        messages(&first),
        1,
        "no request reached `first` during its block"
    );

    // At its reset every instance goes back to `first`.
    for instance in [&alpha, &beta, &gamma] {
        instance.wait_for(
            "`first` no longer limited",
            "/api/v1/endpoints",
            |endpoints| endpoint(endpoints, "first")["rate_limited"] == false,
        );
        upstreams.send_expecting(instance, "first");
    }
    for instance in [alpha, beta, gamma] {
        instance.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_budget_and_rate_are_one_across_instances() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let upstream = MockUpstream::start().await;
    // 10,000 tokens in and 1,000 out of Sonnet at $3 / $15 per million: $0.045 a request.
    upstream.set_default(Reply::json().usage(MockUsage {
        input: 10_000,
        output: 1_000,
        cache_creation: 0,
        cache_read: 0,
    }));
    let usage = format!(
        "{}  model_pricing:\n    claude-sonnet-4-5:\n      input: 3.00\n      output: 15.00\n",
        mysql_usage(&database.0)
    );
    let routing = format!(
        "{}auth:\n  enabled: true\n  tokens:\n\
         \x20   - name: alice\n      token: alice-token-0001\n      limits:\n        daily_budget_usd: 0.08\n\
         \x20   - name: bob\n      token: bob-token-0001\n      limits:\n        requests_per_minute: 3\n\
         endpoints:\n  - name: mock\n    url: {}\n",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        upstream.url()
    );
    let alpha = Instance::start_with("alpha", &usage, &routing);
    let beta = Instance::start_with("beta", &usage, &routing);
    let alice = [("x-api-key", "alice-token-0001")];
    let bob = [("x-api-key", "bob-token-0001")];

    // Alice spends $0.045 on each instance: $0.09, over her $0.08 although each instance
    // alone served only $0.045.
    alpha.message_with(&alice);
    beta.message_with(&alice);
    for instance in [&alpha, &beta] {
        instance.wait_for("alice's spend of both instances", "/api/v1/keys", |keys| {
            keys["keys"][0]["spent_today_usd"]
                .as_f64()
                .is_some_and(|spent| (spent - 0.09).abs() < 1e-9)
        });
        let (status, _, body) = instance.try_message_with(&alice);
        assert_eq!(status, 429, "{}: {body}", instance.name);
        assert!(body.contains("daily budget of $0.08"), "{body}");
    }

    // Bob's 3 requests a minute are 3 across both instances: the fourth is refused wherever
    // it goes (the counter is one atomic Redis counter, nothing to wait for).
    alpha.message_with(&bob);
    beta.message_with(&bob);
    alpha.message_with(&bob);
    for instance in [&beta, &alpha] {
        let (status, headers, body) = instance.try_message_with(&bob);
        assert_eq!(status, 429, "{}: {body}", instance.name);
        assert!(body.contains("requests per minute"), "{body}");
        assert!(
            headers.to_ascii_lowercase().contains("retry-after:"),
            "{headers}"
        );
    }
    assert_eq!(
        messages(&upstream),
        5,
        "refused requests never reached the upstream"
    );
    alpha.stop();
    beta.stop();
}

/// `GET /health/detailed` on an instance's proxy port (with `key`): status and body.
fn detailed_health(instance: &Instance, key: &str) -> (u16, Value) {
    let (status, _, body) = http_with(
        instance.proxy,
        "GET",
        "/health/detailed",
        None,
        &[("x-api-key", key)],
    );
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |end| end + 1);
    (
        status,
        serde_json::from_str(&body[start..end]).unwrap_or(Value::Null),
    )
}

/// Waits until `instance`'s `/health/detailed` satisfies `expected`; its last body.
fn wait_for_health(
    instance: &Instance,
    key: &str,
    what: &str,
    expected: impl Fn(u16, &Value) -> bool,
) -> Value {
    let (_, body) = instance.poll(
        POLL,
        what,
        |instance| detailed_health(instance, key),
        |(status, body)| expected(*status, body),
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_under_load_fails_no_request_and_both_instances_catch_up() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    // Redis behind a relay the test cuts and restores, as a Redis restart or a network outage.
    let mut relay = TcpProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:6379".parse().unwrap(),
    )
    .await;
    // A rate and a concurrency limit, so every request asks the shared counters.
    let routing = format!(
        "{}auth:\n  enabled: true\n  tokens:\n\
         \x20   - name: alice\n      token: alice-token-0001\n      limits:\n\
         \x20       requests_per_minute: 100000\n        concurrency: 64\n{}",
        cluster_section(&prefix, &format!("redis://{}", relay.addr())),
        first_and_second(&first, &second)
    );
    let alpha = Arc::new(Instance::start("alpha", &database.0, &routing));
    let beta = Arc::new(Instance::start("beta", &database.0, &routing));
    let key = "alice-token-0001";
    for instance in [&alpha, &beta] {
        wait_for_health(instance, key, "Redis connected", |status, body| {
            status == 200 && body["cluster"]["connected"] == true
        });
    }

    // Four clients, each a conversation, alternating between the instances until told to stop.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (alpha, beta) = (Arc::clone(&alpha), Arc::clone(&beta));
            let (running, answered) = (Arc::clone(&running), Arc::clone(&answered));
            std::thread::spawn(move || {
                let session = format!("load-{client}");
                let headers = [("x-api-key", key), ("x-session-id", session.as_str())];
                let mut failures = Vec::new();
                let mut turn = 0_u32;
                while running.load(Ordering::Acquire) {
                    let instance = if turn.is_multiple_of(2) {
                        &alpha
                    } else {
                        &beta
                    };
                    let (status, _, body) = instance.try_message_with(&headers);
                    if status != 200 {
                        failures.push(format!("{} {status}: {body}", instance.name));
                    }
                    answered.fetch_add(1, Ordering::AcqRel);
                    turn += 1;
                }
                failures
            })
        })
        .collect();
    let more_answers = |what: &str| {
        let from = answered.load(Ordering::Acquire);
        let deadline = Instant::now() + DEADLINE;
        while answered.load(Ordering::Acquire) < from + 20 {
            assert!(Instant::now() < deadline, "no traffic {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    more_answers("before the outage");

    relay.interrupt().await;
    for instance in [&alpha, &beta] {
        let body = wait_for_health(instance, key, "Redis lost", |status, body| {
            status == 200 && body["cluster"]["connected"] == false
        });
        assert_eq!(body["status"], "degraded", "{body}");
        assert!(
            !body.to_string().contains("127.0.0.1:6379"),
            "the relay's address is what the instance knows: {body}"
        );
    }
    more_answers("during the outage");

    relay.resume().await.unwrap();
    for instance in [&alpha, &beta] {
        let body = wait_for_health(instance, key, "Redis back", |status, body| {
            status == 200 && body["cluster"]["connected"] == true
        });
        assert!(body["cluster"]["reconnects"].as_u64() >= Some(1), "{body}");
    }
    more_answers("after the outage");
    running.store(false, Ordering::Release);
    for client in clients {
        let failures = client.join().unwrap();
        assert!(failures.is_empty(), "requests failed: {failures:?}");
    }

    // Shared again: a 429 on alpha now is obeyed by beta.
    first.enqueue(Reply::rate_limited(30));
    let before_first = messages(&first);
    let conversation = [("x-api-key", key), ("x-session-id", "after-the-outage")];
    alpha.message_with(&conversation);
    assert_eq!(messages(&first), before_first + 1, "the 429");
    beta.wait_for("`first` rate limited", "/api/v1/endpoints", |endpoints| {
        endpoint(endpoints, "first")["rate_limited"] == true
    });
    beta.message_with(&[("x-api-key", key), ("x-session-id", "new-one")]);
    assert_eq!(messages(&first), before_first + 1, "beta skipped `first`");

    for instance in [alpha, beta] {
        Arc::into_inner(instance).unwrap().stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_account_rejected_on_one_instance_is_skipped_by_the_others() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let upstreams = Upstreams(vec![("first", &first), ("second", &second)]);
    let routing = format!(
        "{}routing:\n  session_affinity: off\n{}",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        first_and_second(&first, &second)
    );
    let alpha = Instance::start("alpha", &database.0, &routing);
    let beta = Instance::start("beta", &database.0, &routing);

    // `first` is a subscription account that is spent for the next 10 minutes: a 429 whose
    // unified headers say `rejected` (with a short retry-after, which alone would be waited
    // out on the same endpoint).
    let reset = (SystemTime::now() + Duration::from_secs(600))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    first.enqueue(
        Reply::error(
            429,
            "rate_limit_error",
            "This request would exceed your account's rate limit.",
        )
        .header("anthropic-ratelimit-unified-status", "rejected")
        .header("anthropic-ratelimit-unified-reset", &reset)
        .header(
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour",
        )
        .header("anthropic-ratelimit-unified-5h-utilization", "1.0")
        .header("anthropic-ratelimit-unified-5h-reset", &reset)
        .header("retry-after", "2"),
    );
    let id = alpha.message_with(&[("x-api-key", "client-key")]);
    assert_eq!(
        messages(&first),
        1,
        "{id}: one request to the rejected account"
    );

    // Beta reads the same headers as if it had received them: the account is rejected there
    // too, and beta sends it nothing until the reset.
    beta.wait_for("`first` rejected", "/api/v1/routing/quota", |quota| {
        quota["endpoints"].as_array().is_some_and(|endpoints| {
            endpoints.iter().any(|endpoint| {
                endpoint["endpoint"] == "first" && endpoint["subscription"]["rejected"] == true
            })
        })
    });
    for _ in 0..3 {
        upstreams.send_expecting(&beta, "second");
    }
    assert_eq!(messages(&first), 1, "beta never tried the rejected account");
    alpha.stop();
    beta.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_concurrency_is_one_across_instances_while_a_generation_runs() {
    let database = Database::create();
    let prefix = RedisKeyPrefix::new("multi");
    let upstream = MockUpstream::start().await;
    // A non-streaming generation that takes 2 s before its headers, as a real one does.
    upstream.enqueue(Reply::json().header_delay(Duration::from_secs(2)));
    let routing = format!(
        "{}auth:\n  enabled: true\n  queue_timeout: 300ms\n  tokens:\n\
         \x20   - name: alice\n      token: alice-token-0001\n      limits:\n        concurrency: 1\n\
         endpoints:\n  - name: mock\n    url: {}\n",
        cluster_section(&prefix, LOCAL_REDIS_URL),
        upstream.url()
    );
    let alpha = Arc::new(Instance::start("alpha", &database.0, &routing));
    let beta = Instance::start("beta", &database.0, &routing);
    let alice = [("x-api-key", "alice-token-0001")];

    // Alice's one place is taken on alpha by the slow generation...
    let generating = {
        let alpha = Arc::clone(&alpha);
        std::thread::spawn(move || alpha.try_message_with(&alice).0)
    };
    let deadline = Instant::now() + DEADLINE;
    while messages(&upstream) == 0 {
        assert!(
            Instant::now() < deadline,
            "the generation never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // ...so beta queues her next request for auth.queue_timeout and refuses it, although beta
    // itself has nothing in flight for her.
    let (status, _, body) = beta.try_message_with(&alice);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("requests in flight"), "{body}");
    assert_eq!(
        messages(&upstream),
        1,
        "the refused request never reached the upstream"
    );

    // Once the generation ends the place is free for either instance.
    assert_eq!(generating.join().unwrap(), 200);
    beta.message_with(&alice);
    assert_eq!(messages(&upstream), 2);
    Arc::into_inner(alpha).unwrap().stop();
    beta.stop();
}
