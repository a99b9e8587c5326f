//! `cargo xtask dist`: build the release binary and package it with its completions, man page,
//! configs, systemd unit and docs into `target/dist/cc-forwarder-<version>-<target>.tar.gz` (plus
//! a `.sha256`). The packaging itself is [`crate::package`], shared with the binary's dist test.
//!
//! A package always carries the real web dashboard: the dashboard is built first (`npm run
//! build`, failing on a TypeScript or vite error or a missing npm), the binary is built with
//! `CCF_REQUIRE_DASHBOARD=1` (so `crates/ccf-admin/build.rs` refuses the fallback page), and the
//! binary that gets packaged, built here or not, is checked not to contain the fallback page.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::package::{host_target, write_package, PackageSpec};

/// Options of `cargo xtask dist`.
#[derive(Debug, Args)]
pub struct DistArgs {
    /// Cargo profile to build and package (`dist`: fat LTO, stripped; `dev` or `release` for a
    /// quick try).
    #[arg(long, default_value = "dist")]
    profile: String,
    /// Do not build: package the binary that is already there.
    #[arg(long)]
    no_build: bool,
    /// Package this binary instead of the profile's `cc-forwarder` (implies `--no-build`).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Where the tarball goes (default `<target dir>/dist`).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// The `<title>` of the page `crates/ccf-admin/build.rs` embeds when the dashboard was not built.
const FALLBACK_PAGE_MARKER: &[u8] = b"<title>cc-forwarder: dashboard not built</title>";

/// The variable that makes `crates/ccf-admin/build.rs` fail instead of embedding the fallback.
const REQUIRE_DASHBOARD_VARIABLE: &str = "CCF_REQUIRE_DASHBOARD";

/// The cargo target folder: `$CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The folder cargo puts a profile's output in (`dev` builds land in `debug`).
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Builds (unless told not to) and packages.
pub fn run(root: &Path, args: &DistArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => {
            if !args.no_build {
                crate::web::build_dashboard(root)
                    .context("cargo xtask dist packages the real dashboard only")?;
                println!(
                    "$ cargo build --profile {} -p cc-forwarder --locked",
                    args.profile
                );
                let status = Command::new(crate::cargo_program())
                    .current_dir(root)
                    .args(["build", "--profile", &args.profile, "-p", "cc-forwarder"])
                    .arg("--locked")
                    .env(REQUIRE_DASHBOARD_VARIABLE, "1")
                    .status()
                    .context("cannot run cargo build")?;
                if !status.success() {
                    bail!("cargo build failed ({status})");
                }
            }
            target_dir(root)
                .join(profile_dir(&args.profile))
                .join(format!("cc-forwarder{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !binary.is_file() {
        bail!("no binary at {}", binary.display());
    }
    let contents =
        std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if embeds_fallback_page(&contents) {
        bail!(
            "{} embeds the \"dashboard not built\" page instead of the web dashboard; build the \
             dashboard (`cargo xtask web`) and the binary again",
            binary.display()
        );
    }
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| target_dir(root).join("dist"));
    let package = write_package(&PackageSpec {
        root: root.to_path_buf(),
        binary,
        target: host_target()?,
        out_dir,
        compression: 9,
    })?;
    println!("packaged {}: {}", package.name, package.tarball.display());
    println!("wrote {} ({})", package.checksum.display(), package.sha256);
    Ok(())
}

/// Whether a binary's bytes contain the page embedded when the dashboard was not built.
fn embeds_fallback_page(binary: &[u8]) -> bool {
    binary
        .windows(FALLBACK_PAGE_MARKER.len())
        .any(|window| window == FALLBACK_PAGE_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_map_to_cargo_folders() {
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("release"), "release");
        assert_eq!(profile_dir("dist"), "dist");
    }

    #[test]
    fn the_fallback_page_is_recognised_in_a_binary() {
        let mut binary = b"\x7fELF....<!doctype html><head>".to_vec();
        assert!(!embeds_fallback_page(&binary));
        binary.extend_from_slice(FALLBACK_PAGE_MARKER);
        binary.extend_from_slice(b"</head>....");
        assert!(embeds_fallback_page(&binary));
    }

    #[test]
    fn the_marker_is_the_fallback_page_title_of_the_admin_build_script() {
        let path = crate::workspace_root().join("crates/ccf-admin/build.rs");
        let build_script = std::fs::read_to_string(&path).unwrap_or_default();
        let marker = std::str::from_utf8(FALLBACK_PAGE_MARKER).unwrap_or_default();
        assert!(build_script.contains(marker), "{marker} not in build.rs");
        assert!(build_script.contains(REQUIRE_DASHBOARD_VARIABLE));
    }

    #[test]
    fn the_host_target_is_a_triple() {
        let target = host_target().unwrap_or_default();
        assert!(target.split('-').count() >= 3, "{target}");
    }
}
