//! Build script: stamps the version string with the git commit and its date.
//!
//! `CC_FORWARDER_GIT_COMMIT` / `CC_FORWARDER_COMMIT_DATE` in the build environment win (release
//! pipelines set them); otherwise they are read from git when the source is a checkout, and left
//! out when it is not. None of these names start with `CCF_`: cargo passes `rustc-env` values on
//! to `cargo run`/`cargo test` processes, and `CCF_*` variables are configuration overrides.
//! Only git's HEAD and refs are watched, so ordinary edits do not re-run this script.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC_FORWARDER_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=CC_FORWARDER_COMMIT_DATE");

    let commit =
        from_env("CC_FORWARDER_GIT_COMMIT").or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    let date = from_env("CC_FORWARDER_COMMIT_DATE").or_else(|| git(&["log", "-1", "--format=%cs"]));
    let version = env!("CARGO_PKG_VERSION");
    let line = match (commit, date) {
        (Some(commit), Some(date)) => format!("{version} (commit {commit}, {date})"),
        (Some(commit), None) => format!("{version} (commit {commit})"),
        _ => version.to_string(),
    };
    println!("cargo:rustc-env=CC_FORWARDER_VERSION={line}");

    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        watch_git(&git_dir);
    }
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Re-run when HEAD moves. Only existing paths are watched: cargo re-runs the script on every
/// build when a watched path is missing.
fn watch_git(git_dir: &Path) {
    let head = git_dir.join("HEAD");
    let mut watched = vec![head.clone(), git_dir.join("packed-refs")];
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(reference) = text.trim().strip_prefix("ref: ") {
            // The ref's folder rather than the ref: the file does not exist before the first commit.
            if let Some(folder) = git_dir.join(reference).parent() {
                watched.push(folder.to_path_buf());
            }
        }
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
