//! `cargo xtask demo`: the forwarder in front of the mock upstream, with a little traffic.
//!
//! Ownership of the child processes: each is held by a [`ChildProcess`] whose `Drop` kills it, so
//! every way out of [`run`] (success, error, panic) stops both. Ctrl+C (and SIGTERM/SIGHUP) is
//! caught so that the same path runs; the children are put in their own process group so that the
//! terminal's Ctrl+C reaches only us, and the forwarder is then sent exactly one SIGTERM (a second
//! one would make it skip its graceful drain).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http;
use crate::summary;

/// The forwarder's listen port in the demo.
const FORWARDER_PORT: u16 = 8087;
/// The mock upstream's port; `config/demo.yaml` points its endpoints here.
const MOCK_PORT: u16 = 8099;
/// The dashboard port (`web.port` default).
const WEB_PORT: u16 = 8088;
/// The demo configuration, relative to the workspace root.
const DEMO_CONFIG: &str = "config/demo.yaml";
/// How long the processes get to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one demo request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `cargo xtask demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Build and run debug binaries instead of release ones.
    #[arg(long)]
    debug: bool,
    /// Send the traffic, then stop (exit status non-zero if a request failed).
    #[arg(long)]
    once: bool,
}

/// Builds, starts both processes, sends traffic, and waits for Ctrl+C (or stops, with `--once`).
pub fn run(root: &Path, args: &DemoArgs) -> Result<()> {
    let (stop_sender, stop_receiver) = mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = stop_sender.send(());
    })
    .context("installing the Ctrl+C handler")?;

    let config = root.join(DEMO_CONFIG);
    if !config.is_file() {
        bail!("{} does not exist", config.display());
    }
    build(root, args.debug)?;
    let bin_dir =
        crate::process::target_dir(root).join(if args.debug { "debug" } else { "release" });

    let mut mock = ChildProcess::spawn(
        "ccf-mock-upstream",
        Command::new(bin_dir.join("ccf-mock-upstream"))
            .args(["--port", &MOCK_PORT.to_string()])
            .current_dir(root),
    )?;
    let mut forwarder = ChildProcess::spawn(
        "cc-forwarder",
        Command::new(bin_dir.join("cc-forwarder"))
            .args(["--config", DEMO_CONFIG, "--no-tui"])
            .args(["--host", "127.0.0.1", "--port", &FORWARDER_PORT.to_string()])
            .current_dir(root),
    )?;
    let mock_address = SocketAddr::from(([127, 0, 0, 1], MOCK_PORT));
    let forwarder_address = SocketAddr::from(([127, 0, 0, 1], FORWARDER_PORT));
    wait_until_listening(&mut mock, mock_address, &stop_receiver)?;
    wait_until_listening(&mut forwarder, forwarder_address, &stop_receiver)?;

    println!("\n==> sending demo traffic to http://{forwarder_address}");
    let failures = send_traffic(forwarder_address);

    let base_url = format!("http://{forwarder_address}");
    println!("\n==> the forwarder is running");
    println!(
        "Point Claude Code at it (the mock upstream accepts any token):\n    \
         ANTHROPIC_BASE_URL={base_url} ANTHROPIC_AUTH_TOKEN=anything claude"
    );
    let web_address = SocketAddr::from(([127, 0, 0, 1], WEB_PORT));
    if TcpStream::connect_timeout(&web_address, Duration::from_millis(300)).is_ok() {
        println!("Dashboard: http://{web_address}/");
    } else {
        println!(
            "Dashboard: http://{web_address}/ (not listening: this build has no dashboard yet)"
        );
    }

    if args.once {
        let forwarder_status = forwarder.stop()?;
        mock.stop()?;
        if failures > 0 {
            bail!("{failures} demo request(s) failed");
        }
        if !forwarder_status.success() {
            bail!("cc-forwarder exited with {forwarder_status} after SIGTERM");
        }
        println!("\ndemo: every request succeeded; cc-forwarder shut down cleanly");
        return Ok(());
    }

    println!("\nPress Ctrl+C to stop both processes.");
    loop {
        match stop_receiver.recv_timeout(Duration::from_millis(250)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        for child in [&mut mock, &mut forwarder] {
            if let Some(status) = child.exited()? {
                bail!("{} exited unexpectedly ({status})", child.name);
            }
        }
    }
    println!("\nstopping");
    forwarder.stop()?;
    mock.stop()?;
    Ok(())
}

/// `cargo build [--release] -p cc-forwarder -p ccf-testkit --bins`.
fn build(root: &Path, debug: bool) -> Result<()> {
    let mut args = vec!["build"];
    if !debug {
        args.push("--release");
    }
    args.extend(["-p", "cc-forwarder", "-p", "ccf-testkit", "--bins"]);
    crate::process::cargo_build(root, &args)
}

/// Polls until `address` accepts a connection, the child exits, Ctrl+C, or the deadline.
fn wait_until_listening(
    child: &mut ChildProcess,
    address: SocketAddr,
    stop: &mpsc::Receiver<()>,
) -> Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            println!("{} is listening on {address}", child.name);
            return Ok(());
        }
        if let Some(status) = child.exited()? {
            bail!(
                "{} exited before listening on {address} ({status})",
                child.name
            );
        }
        if stop.try_recv().is_ok() {
            bail!("interrupted while waiting for {}", child.name);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on {address} within {}s",
                child.name,
                START_DEADLINE.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// One demo request.
struct DemoRequest {
    label: &'static str,
    path: &'static str,
    body: &'static str,
    streaming: bool,
}

const DEMO_REQUESTS: &[DemoRequest] = &[
    DemoRequest {
        label: "messages",
        path: "/v1/messages",
        body: r#"{"model":"claude-sonnet-4-20250514","max_tokens":64,"messages":[{"role":"user","content":"Say hello from the cc-forwarder demo."}]}"#,
        streaming: false,
    },
    DemoRequest {
        label: "messages (stream)",
        path: "/v1/messages",
        body: r#"{"model":"claude-sonnet-4-20250514","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Stream a short greeting."}]}"#,
        streaming: true,
    },
    DemoRequest {
        label: "count_tokens",
        path: "/v1/messages/count_tokens",
        body: r#"{"model":"claude-sonnet-4-20250514","messages":[{"role":"user","content":"How many tokens is this?"}]}"#,
        streaming: false,
    },
];

/// Sends the demo requests, printing one line each; returns how many failed.
fn send_traffic(address: SocketAddr) -> usize {
    let headers = [("anthropic-version", "2023-06-01")];
    let mut failures = 0;
    for request in DEMO_REQUESTS {
        let started = Instant::now();
        let result = http::post_json(
            address,
            request.path,
            &headers,
            request.body,
            REQUEST_TIMEOUT,
        );
        let elapsed = started.elapsed().as_millis();
        match result {
            Ok(response) => {
                let summary = if request.streaming && response.status == 200 {
                    summary::summarize_sse(&response.body)
                } else {
                    summary::summarize_json(&response.body)
                };
                let ok = (200..300).contains(&response.status);
                if !ok {
                    failures += 1;
                }
                println!(
                    "{} POST {:<27} {} {} ({elapsed} ms) {summary}",
                    if ok { "ok  " } else { "FAIL" },
                    request.path,
                    response.status,
                    response.reason,
                );
            }
            Err(error) => {
                failures += 1;
                println!(
                    "FAIL POST {:<27} {} ({elapsed} ms): {error:#}",
                    request.path, request.label
                );
            }
        }
    }
    failures
}

/// A child process that is killed when dropped.
struct ChildProcess {
    name: &'static str,
    child: Child,
}

impl ChildProcess {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Own process group: the terminal's Ctrl+C reaches only xtask, which then stops us.
            command.process_group(0);
        }
        println!("$ {command:?}");
        let child = command
            .spawn()
            .with_context(|| format!("could not start {name} (was it built?)"))?;
        Ok(Self { name, child })
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))
    }

    /// SIGTERM, then up to [`STOP_GRACE`] for it to exit, then SIGKILL.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        send_sigterm(self.child.id());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                println!("{} exited ({status})", self.name);
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        println!(
            "{} did not exit within {}s of SIGTERM; killing it",
            self.name,
            STOP_GRACE.as_secs()
        );
        self.child.kill().ok();
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGTERM through `kill(1)` (the workspace forbids `unsafe`, so no direct `libc::kill`).
fn send_sigterm(pid: u32) {
    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
    }
}
