//! The container image's start, without a container engine (none runs on this machine, and its
//! base images could not be pulled): the binary under test is run the way the `Dockerfile`'s
//! runtime stage runs it. The test reads that stage's `COPY`, `ENV`, `WORKDIR` and `CMD` lines,
//! lays the copied files out under a temporary root (`/etc/cc-forwarder/config.yaml` becomes
//! `<root>/etc/cc-forwarder/config.yaml`), starts `CMD` with the paths in its arguments mapped the
//! same way, in `WORKDIR`, with the image's environment only plus what `docker run -e` would add.
//! So a change to the Dockerfile or to `config/docker.yaml` is tested as shipped.
//!
//! The one difference from the image: the ports. The image listens on 8087/8088, which other
//! tests on this machine may hold, so `CCF_SERVER__PORT=0` and `CCF_WEB__PORT=0` are given the way
//! an operator would give them (`-e`), and the port is read from the startup line.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);
/// The client token the test passes as `-e FORWARDER_CLIENT_TOKEN=...`.
const CLIENT_TOKEN: &str = "image-client-token-0123456789abcdef";
/// The upstream key the test passes as `-e ANTHROPIC_API_KEY=...`.
const UPSTREAM_KEY: &str = "sk-ant-image-upstream-key";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The runtime stage of the Dockerfile, as the test uses it.
#[derive(Debug, Default)]
struct RuntimeStage {
    /// `COPY <source> <destination>` from the build context (not `--from=` another stage).
    copies: Vec<(String, String)>,
    /// `ENV` variables.
    env: BTreeMap<String, String>,
    /// The last `WORKDIR`.
    workdir: String,
    /// `CMD` in exec form.
    cmd: Vec<String>,
}

/// The Dockerfile's instructions with continuation lines joined and comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        joined.push(std::mem::take(&mut current));
    }
    joined
}

/// Reads the last stage (after the last `FROM`) of `dockerfile`.
fn runtime_stage(dockerfile: &str) -> RuntimeStage {
    let all = instructions(dockerfile);
    let start = all
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("the Dockerfile has a FROM line");
    let mut stage = RuntimeStage::default();
    for line in &all[start + 1..] {
        let (keyword, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match keyword {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.iter().any(|word| word.starts_with("--from=")) {
                    continue;
                }
                assert_eq!(words.len(), 2, "COPY with one source: {line}");
                stage.copies.push((words[0].into(), words[1].into()));
            }
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (name, value) = pair.split_once('=').expect("ENV NAME=value");
                    stage
                        .env
                        .insert(name.into(), value.trim_matches('"').into());
                }
            }
            "WORKDIR" => stage.workdir = rest.trim().into(),
            "CMD" => {
                stage.cmd = serde_json::from_str(rest.trim()).expect("CMD in exec form");
            }
            _ => {}
        }
    }
    assert!(!stage.cmd.is_empty(), "the runtime stage has a CMD");
    assert!(!stage.workdir.is_empty(), "the runtime stage has a WORKDIR");
    stage
}

/// A container's file system under a temporary folder.
struct Image {
    root: tempfile::TempDir,
    stage: RuntimeStage,
}

impl Image {
    fn lay_out() -> Image {
        let workspace = workspace_root();
        let dockerfile = std::fs::read_to_string(workspace.join("Dockerfile")).unwrap();
        let stage = runtime_stage(&dockerfile);
        let root = tempfile::tempdir().unwrap();
        let image = Image { root, stage };
        for (source, destination) in &image.stage.copies {
            let target = image.inside(destination);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(workspace.join(source), &target)
                .unwrap_or_else(|e| panic!("COPY {source} {destination}: {e}"));
        }
        std::fs::create_dir_all(image.inside(&image.stage.workdir)).unwrap();
        image
    }

    /// A path of the container under the temporary root.
    fn inside(&self, container_path: &str) -> PathBuf {
        self.root
            .path()
            .join(container_path.trim_start_matches('/'))
    }

    /// `CMD` with the image's environment and `run_env` (what `docker run -e` adds) only.
    fn command(&self, run_env: &[(&str, &str)]) -> Command {
        let (program, args) = self.stage.cmd.split_first().unwrap();
        assert_eq!(program, "cc-forwarder", "CMD runs the binary");
        let mut command = Command::new(BINARY);
        for arg in args {
            if arg.starts_with('/') {
                command.arg(self.inside(arg));
            } else {
                command.arg(arg);
            }
        }
        command
            .current_dir(self.inside(&self.stage.workdir))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.inside(&self.stage.workdir))
            .envs(&self.stage.env)
            .envs(run_env.iter().copied())
            .stdin(Stdio::null());
        command
    }
}

/// Kills the forwarder if the test fails before it stops.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One HTTP/1.1 request; the whole answer as text.
fn http(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let body = if method == "POST" {
        r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        ""
    };
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn run_env(upstream_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FORWARDER_CLIENT_TOKEN", CLIENT_TOKEN.to_string()),
        ("ANTHROPIC_API_KEY", UPSTREAM_KEY.to_string()),
        ("FORWARDER_UPSTREAM_URL", upstream_url.to_string()),
        ("CCF_SERVER__PORT", "0".to_string()),
        ("CCF_WEB__PORT", "0".to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

#[test]
fn the_dockerfile_runs_the_binary_with_the_image_config() {
    let stage =
        runtime_stage(&std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap());
    assert_eq!(
        stage.copies,
        vec![(
            "config/docker.yaml".to_string(),
            "/etc/cc-forwarder/config.yaml".to_string()
        )]
    );
    assert_eq!(stage.workdir, "/data");
    assert_eq!(
        stage.env.get("CCF_SERVER__HOST").map(String::as_str),
        Some("0.0.0.0")
    );
    assert_eq!(
        stage.cmd,
        [
            "cc-forwarder",
            "--config",
            "/etc/cc-forwarder/config.yaml",
            "--no-tui"
        ]
    );
}

#[test]
fn the_image_starts_answers_health_and_forwards_only_with_the_client_token() {
    let image = Image::lay_out();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(ccf_testkit::MockUpstream::start());
    let env = run_env(&upstream.url());
    let mut child = image
        .command(&borrowed(&env))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(child);
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let base_url = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=") {
                    break url.to_string();
                }
            }
            Err(error) => {
                let _ = running.0.kill();
                let mut stderr = String::new();
                if let Some(mut pipe) = running.0.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("the image's forwarder did not start ({error}):\n{stderr}");
            }
        }
    };
    // The proxy listens on every interface (0.0.0.0): the startup line names loopback.
    let address: SocketAddr = base_url.strip_prefix("http://").unwrap().parse().unwrap();

    let health = http(address, "GET", "/health", &[]);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let refused = http(address, "POST", "/v1/messages", &[]);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let wrong = http(
        address,
        "POST",
        "/v1/messages",
        &[("authorization", "Bearer not-the-token")],
    );
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");

    let bearer = format!("Bearer {CLIENT_TOKEN}");
    let answered = http(
        address,
        "POST",
        "/v1/messages",
        &[("authorization", bearer.as_str())],
    );
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(answered.contains("\"type\":\"message\""), "{answered}");
    let forwarded = runtime.block_on(upstream.wait_for_requests(1, DEADLINE));
    assert_eq!(
        forwarded.len(),
        1,
        "only the authorised request went upstream"
    );
    assert_eq!(forwarded[0].header("x-api-key"), Some(UPSTREAM_KEY));
    assert!(
        !format!("{:?}", forwarded[0]).contains(CLIENT_TOKEN),
        "the client token is not sent upstream"
    );

    // The usage database is in the image's volume (WORKDIR /data).
    let status = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = running.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the forwarder did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
    let database = image.inside("/data/data/usage.db");
    let count: i64 = rusqlite::Connection::open(&database)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM request_logs WHERE status = 'completed'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(count, 1, "{}", database.display());
}

fn refused(image: &Image, env: &[(&str, &str)]) -> (Output, String) {
    let output = image.command(env).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

#[test]
fn the_image_refuses_to_start_without_its_variables_and_names_them() {
    let image = Image::lay_out();
    let env = run_env("http://127.0.0.1:9");
    let without = |name: &str| -> Vec<(&'static str, &str)> {
        borrowed(&env)
            .into_iter()
            .filter(|(key, _)| *key != name)
            .collect()
    };

    let (output, stderr) = refused(&image, &without("FORWARDER_CLIENT_TOKEN"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.token: environment variable `FORWARDER_CLIENT_TOKEN` is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("config.yaml"), "names the file: {stderr}");

    let (output, stderr) = refused(&image, &without("ANTHROPIC_API_KEY"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("environment variable `ANTHROPIC_API_KEY` is not set"),
        "{stderr}"
    );

    // An empty token is no token.
    let mut empty = without("FORWARDER_CLIENT_TOKEN");
    empty.push(("FORWARDER_CLIENT_TOKEN", ""));
    let (output, stderr) = refused(&image, &empty);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth.token: required"), "{stderr}");

    // Turning auth off on the published address is refused as well: the image never starts
    // an open proxy.
    let mut open = borrowed(&env);
    open.push(("CCF_AUTH__ENABLED", "false"));
    let (output, stderr) = refused(&image, &open);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}
