//! Process helpers shared by `cargo xtask bench` and `cargo xtask soak`: building the release
//! binaries, temporary work directories, free loopback ports, readings from `/proc`, and child
//! processes that wait until they listen and are killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// How long a started binary gets to listen on its port.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A short description of the machine.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
    })
}

/// Prints and runs `cargo <args>` in `root`; an error when it fails.
pub fn cargo_build(root: &Path, args: &[&str]) -> Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(crate::cargo_program())
        .args(args)
        .current_dir(root)
        .status()
        .context("could not start cargo build")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `CARGO_TARGET_DIR` when set (relative to the root), else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// A free loopback port (bound then released: another process could take it in between).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A number field of `/proc/<pid>/status` (`VmRSS` and `VmHWM` in kB, `Threads`).
pub fn proc_status_number(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_field(&text, field).with_context(|| format!("no {field} in {path}"))
}

/// The first number after `<field>:` in the text of a `/proc/<pid>/status` file.
pub fn parse_status_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    })
}

/// A temporary directory removed on drop.
pub struct TempDir {
    /// Where the directory is.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/<prefix>-<pid of xtask>`.
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed when dropped (every way out of the task that started it).
pub struct Proc {
    name: String,
    /// The running child (its pipes, its exit status).
    pub child: Child,
}

impl Proc {
    /// Prints the command, then starts it (see [`Proc::spawn_quiet`]).
    pub fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        println!("$ {command:?}");
        Self::spawn_quiet(name, command)
    }

    /// Starts the command in its own process group.
    pub fn spawn_quiet(name: &str, command: &mut Command) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Own process group: the terminal's Ctrl+C reaches only xtask, which then stops us.
            command.process_group(0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("could not start {name} (was it built?)"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until something accepts connections on the loopback `port`; an error when the
    /// process exits first, `stop` is set, or [`START_DEADLINE`] passes.
    pub fn wait_listening(&mut self, port: u16, stop: &AtomicBool) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before listening on {address} ({status})",
                    self.name
                );
            }
            if stop.load(Ordering::SeqCst) {
                bail!("interrupted while waiting for {}", self.name);
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen on {address} in time", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit (killed after `within`); the exit status.
    pub fn terminate(&mut self, within: Duration) -> Result<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("could not run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.to_string());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!("{} did not exit within {within:?} of SIGTERM", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
