//! `cargo xtask migrate [--config FILE]`: apply the usage store's migrations through the real
//! binary (`cc-forwarder migrate`), so xtask needs no database code of its own.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Runs `cc-forwarder migrate --config <config>` from the workspace root.
pub fn run(root: &Path, config: &Path) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--package",
            "cc-forwarder",
            "--",
            "migrate",
            "--config",
        ])
        .arg(config)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("migrate failed ({status})");
    }
    Ok(())
}
