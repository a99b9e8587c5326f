//! `cargo xtask web [--test]`: build the web dashboard (`npm ci` + `npm run build` in `web/`),
//! which `crates/ccf-admin/build.rs` then embeds into the binary; with `--test`, also run the
//! browser tests (the `dashboard` end-to-end test: the forwarder and the mock upstream on
//! loopback, driven by `web/tests/dashboard.mjs` through playwright-core and `/usr/bin/chromium`).
//!
//! It also owns the npm helpers `cargo xtask ci` (the vitest step) and `cargo xtask dist` (which
//! builds the dashboard before the binary, so a broken dashboard fails the package) share.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Options of `cargo xtask web`.
#[derive(Debug, Args)]
pub struct WebArgs {
    /// After building, run the browser tests (needs Chromium at /usr/bin/chromium).
    #[arg(long)]
    pub test: bool,
}

/// Builds the dashboard, then optionally runs its browser tests.
pub fn run(root: &Path, args: &WebArgs) -> Result<()> {
    let web = root.join("web");
    let npm = require_npm()?;
    // An explicit `cargo xtask web` always reinstalls, so a damaged node_modules is repaired.
    install(&web)?;
    build(&web)?;
    step(
        Command::new(npm)
            .args(["run", "test:unit"])
            .current_dir(&web),
    )?;
    println!("web: built {}", web.join("dist").display());
    if args.test {
        step(
            Command::new(crate::cargo_program())
                .args([
                    "test",
                    "-p",
                    "ccf-e2e-tests",
                    "--test",
                    "it",
                    "--",
                    "dashboard::",
                    "--nocapture",
                ])
                .current_dir(root),
        )?;
    }
    Ok(())
}

/// The npm program of this platform.
pub fn npm_program() -> &'static str {
    if cfg!(windows) {
        "npm.cmd"
    } else {
        "npm"
    }
}

/// npm's version, or `None` when npm (or the Node.js under it) cannot run.
pub fn npm_version() -> Option<String> {
    let output = Command::new(npm_program()).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The npm program, or an error saying how to install it.
pub fn require_npm() -> Result<&'static str> {
    match npm_version() {
        Some(_) => Ok(npm_program()),
        None => bail!("npm is not installed: install Node.js 20+ with npm to build the dashboard"),
    }
}

/// Builds the dashboard into `web/dist` (installing its packages first when they are missing or
/// older than the lockfile) and checks that `web/dist/index.html` exists afterwards.
pub fn build_dashboard(root: &Path) -> Result<()> {
    let web = root.join("web");
    require_npm()?;
    ensure_node_modules(&web)?;
    build(&web)?;
    let index = web.join("dist").join("index.html");
    if !index.is_file() {
        bail!("`npm run build` succeeded but wrote no {}", index.display());
    }
    Ok(())
}

/// `npm ci` in `web` when `node_modules` is missing or older than `package-lock.json` (the same
/// rule as `crates/ccf-admin/build.rs`).
pub fn ensure_node_modules(web: &Path) -> Result<()> {
    let installed = modified(&web.join("node_modules/.package-lock.json"));
    let lock = modified(&web.join("package-lock.json"));
    let needed = match (installed, lock) {
        (None, _) => true,
        (Some(installed), Some(lock)) => installed < lock,
        (Some(_), None) => false,
    };
    if needed {
        install(web)?;
    }
    Ok(())
}

/// `npm ci` (or `npm install` without a lockfile).
fn install(web: &Path) -> Result<()> {
    let verb = if web.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    step(
        Command::new(npm_program())
            .args([verb, "--no-audit", "--no-fund"])
            .current_dir(web),
    )
}

/// `npm run build`: `tsc --noEmit && vite build`.
fn build(web: &Path) -> Result<()> {
    step(
        Command::new(npm_program())
            .args(["run", "build"])
            .current_dir(web),
    )
    .context("the web dashboard does not build (TypeScript or vite error above)")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs `command` with its output passed through, failing unless it exits successfully.
pub fn step(command: &mut Command) -> Result<()> {
    println!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
