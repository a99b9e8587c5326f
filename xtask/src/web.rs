//! `cargo xtask web [--test]`: build the web dashboard (`npm ci` + `npm run build` in `web/`),
//! which `crates/ccf-admin/build.rs` then embeds into the binary; with `--test`, also run the
//! browser tests (the `dashboard` end-to-end test: the forwarder and the mock upstream on
//! loopback, driven by `web/tests/dashboard.mjs` through playwright-core and `/usr/bin/chromium`).

use std::path::Path;
use std::process::Command;

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
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let version = Command::new(npm)
        .arg("--version")
        .output()
        .context("npm is not installed: install Node.js 20+ with npm to build the dashboard")?;
    if !version.status.success() {
        bail!("`npm --version` failed: is Node.js installed?");
    }
    let verb = if web.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    step(
        Command::new(npm)
            .args([verb, "--no-audit", "--no-fund"])
            .current_dir(&web),
    )?;
    step(Command::new(npm).args(["run", "build"]).current_dir(&web))?;
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
                    "dashboard",
                    "--",
                    "--nocapture",
                ])
                .current_dir(root),
        )?;
    }
    Ok(())
}

fn step(command: &mut Command) -> Result<()> {
    println!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
