//! `cargo xtask clients`: the client-compatibility smoke test.
//!
//! Runs `tests/clients/run.sh`, which puts the forwarder in front of the mock upstream and drives
//! the official `anthropic` Python SDK and Claude Code (`claude -p`) through it. The script needs
//! bash, python3 and node/npm; see `tests/clients/README.md`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `bash tests/clients/run.sh` from the workspace root; fails when the script does.
pub fn run(root: &Path) -> Result<()> {
    let script = root.join("tests").join("clients").join("run.sh");
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run bash {}", script.display()))?;
    if !status.success() {
        bail!("client smoke test failed ({status})");
    }
    Ok(())
}
