//! `cargo xtask dist`: build the release binary and package it with its completions, man page,
//! configs, systemd unit and docs into `target/dist/cc-forwarder-<version>-<target>.tar.gz` (plus
//! a `.sha256`). The packaging itself is [`crate::package`], shared with the binary's dist test.

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

/// The cargo target folder: `$CARGO_TARGET_DIR`, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
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
                println!(
                    "$ cargo build --profile {} -p cc-forwarder --locked",
                    args.profile
                );
                let status = Command::new(crate::cargo_program())
                    .current_dir(root)
                    .args(["build", "--profile", &args.profile, "-p", "cc-forwarder"])
                    .arg("--locked")
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
    fn the_host_target_is_a_triple() {
        let target = host_target().unwrap_or_default();
        assert!(target.split('-').count() >= 3, "{target}");
    }
}
