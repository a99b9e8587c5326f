//! The release tarball, end to end: package the binary under test with the same code as
//! `cargo xtask dist` (`xtask/src/package.rs`), unpack it, start the unpacked binary with the
//! unpacked `config/demo.yaml` in front of a mock upstream, and send it a request.
//!
//! The debug binary is packaged (not a `--profile dist` build, which takes too long for CI); the
//! packaging code is the same either way.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../../../xtask/src/package.rs"]
mod package;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");
const DEADLINE: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The binary under test without its debug info (a tenth of the size), so that gzip and SHA-256,
/// unoptimised in a test build, take seconds; the binary itself when `strip` is missing.
fn small_binary(folder: &Path) -> PathBuf {
    let stripped = folder.join("cc-forwarder");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(BINARY)
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => stripped,
        _ => PathBuf::from(BINARY),
    }
}

/// Kills the forwarder if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn post_message(address: SocketAddr) -> String {
    let body = r#"{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nx-api-key: anything\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn the_unpacked_tarball_serves_the_demo_config() {
    let root = workspace_root();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("dist");
    let built = package::write_package(&package::PackageSpec {
        root: root.clone(),
        binary: small_binary(work.path()),
        target: package::host_target().unwrap(),
        out_dir: out_dir.clone(),
        compression: 1,
    })
    .unwrap();
    assert!(built
        .name
        .starts_with(&format!("cc-forwarder-{}-", env!("CARGO_PKG_VERSION"))));
    assert_eq!(
        built.tarball,
        out_dir.join(format!("{}.tar.gz", built.name))
    );

    // The checksum file is in `sha256sum -c` format and matches the tarball.
    let bytes = std::fs::read(&built.tarball).unwrap();
    assert_eq!(
        std::fs::read_to_string(&built.checksum).unwrap(),
        format!("{}  {}.tar.gz\n", built.sha256, built.name)
    );
    let check = Command::new("sha256sum")
        .current_dir(&out_dir)
        .args(["-c", "--strict"])
        .arg(built.checksum.file_name().unwrap())
        .output();
    match check {
        Ok(output) => assert!(output.status.success(), "{output:?}"),
        // No coreutils: hash here instead.
        Err(_) => {
            let digest: String = Sha256::digest(&bytes)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert_eq!(digest, built.sha256);
        }
    }

    // Unpack and check the layout.
    let unpacked = work.path().join("unpacked");
    tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()))
        .unpack(&unpacked)
        .unwrap();
    let folder = unpacked.join(&built.name);
    for file in [
        "cc-forwarder",
        "config/example.yaml",
        "config/demo.yaml",
        "systemd/cc-forwarder.service",
        "completions/cc-forwarder.bash",
        "completions/_cc-forwarder",
        "completions/cc-forwarder.fish",
        "man/cc-forwarder.1",
        "README.md",
    ] {
        assert!(folder.join(file).is_file(), "{file} is missing");
    }
    let mode = std::fs::metadata(folder.join("cc-forwarder"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the binary is executable");
    let unit = std::fs::read_to_string(folder.join("systemd/cc-forwarder.service")).unwrap();
    assert!(unit.contains("ProtectSystem=strict"), "{unit}");
    let man = std::fs::read_to_string(folder.join("man/cc-forwarder.1")).unwrap();
    assert!(man.contains(".TH cc-forwarder 1"));

    // Point the demo config at a mock upstream and run the unpacked binary on free ports.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(ccf_testkit::MockUpstream::start());
    let demo = folder.join("config/demo.yaml");
    let yaml = std::fs::read_to_string(&demo).unwrap();
    assert!(yaml.contains("http://127.0.0.1:8099"), "{yaml}");
    std::fs::write(
        &demo,
        yaml.replace("http://127.0.0.1:8099", &upstream.url()),
    )
    .unwrap();

    let mut child = Command::new(folder.join("cc-forwarder"))
        .current_dir(&folder)
        .args(["--config", "config/demo.yaml", "--no-tui", "--port", "0"])
        .args(["--web-port", "0"])
        .env_remove("RUST_LOG")
        .env_remove("CCF_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
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
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the forwarder prints its export line");
        if let Some(url) = line.strip_prefix("export ANTHROPIC_BASE_URL=") {
            break url.to_string();
        }
    };
    let address: SocketAddr = base_url.strip_prefix("http://").unwrap().parse().unwrap();

    let response = post_message(address);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"type\":\"message\""), "{response}");
    let forwarded = runtime.block_on(upstream.wait_for_requests(1, DEADLINE));
    assert_eq!(forwarded.len(), 1);
    // The demo's first endpoint, with its own credentials.
    let auth = forwarded[0]
        .header("x-api-key")
        .or(forwarded[0].header("authorization"))
        .unwrap_or_default()
        .to_string();
    assert!(auth.contains("demo-token-a"), "{auth}");

    // A clean stop flushes the usage row, which the unpacked binary's `export` reads back.
    let mut running = running;
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
    let export = Command::new(folder.join("cc-forwarder"))
        .current_dir(&folder)
        .args(["export", "--config", "config/demo.yaml", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], "completed");
    assert_eq!(rows[0]["endpoint_name"], "mock-a");
}
