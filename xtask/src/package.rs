//! The release tarball: `cc-forwarder-<version>-<target>.tar.gz` plus its `.sha256`, built from a
//! compiled binary and the repository's files.
//!
//! Shared, through `#[path]`, by `cargo xtask dist` and the binary's `tests/dist.rs` (which
//! packages the debug binary and runs it from the unpacked tarball), so it uses only `std`,
//! `anyhow`, `flate2`, `tar` and `sha2`, and nothing else from xtask.
//!
//! Layout inside the tarball, under one `cc-forwarder-<version>-<target>/` folder:
//! `cc-forwarder`, `config/{example,demo}.yaml`, `systemd/cc-forwarder.service`,
//! `completions/{cc-forwarder.bash,_cc-forwarder,cc-forwarder.fish}`, `man/cc-forwarder.1`,
//! `README.md`, `LICENSE` (when present) and `docs/*.md` for operators. Completions and the man
//! page come from the binary itself (`cc-forwarder completions <shell>`, `cc-forwarder manpage`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// What to package.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// The workspace root (README, config/, packaging/, docs/).
    pub root: PathBuf,
    /// The compiled `cc-forwarder`.
    pub binary: PathBuf,
    /// The target triple in the file name.
    pub target: String,
    /// Where the tarball and checksum go (created when missing).
    pub out_dir: PathBuf,
    /// gzip level, 0-9 (9 for releases; tests package a large debug binary and use 1).
    pub compression: u32,
}

/// What [`write_package`] wrote.
#[derive(Debug, Clone)]
pub struct Package {
    /// `cc-forwarder-<version>-<target>`: the file stem and the folder inside the tarball.
    pub name: String,
    /// The `.tar.gz`.
    pub tarball: PathBuf,
    /// The `.tar.gz.sha256`, in `sha256sum` format.
    pub checksum: PathBuf,
    /// The hex SHA-256 of the tarball.
    pub sha256: String,
}

/// Files copied from the repository: (path in the repository, path in the tarball, required).
const REPO_FILES: &[(&str, &str, bool)] = &[
    ("config/example.yaml", "config/example.yaml", true),
    ("config/demo.yaml", "config/demo.yaml", true),
    (
        "packaging/cc-forwarder.service",
        "systemd/cc-forwarder.service",
        true,
    ),
    ("README.md", "README.md", true),
    ("LICENSE", "LICENSE", false),
    ("docs/operations.md", "docs/operations.md", false),
    (
        "docs/migrating-from-go.md",
        "docs/migrating-from-go.md",
        false,
    ),
    ("docs/configuration.md", "docs/configuration.md", false),
];

/// Completion scripts: (shell, file name in `completions/`).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "cc-forwarder.bash"),
    ("zsh", "_cc-forwarder"),
    ("fish", "cc-forwarder.fish"),
];

/// Timestamp of every entry, for reproducible tarballs: `SOURCE_DATE_EPOCH` when set.
fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the binary with `args` and returns its stdout.
fn binary_output(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(binary)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("CCF_LOG")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            binary.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// The package version: the second word of `cc-forwarder --version`.
pub fn binary_version(binary: &Path) -> Result<String> {
    let stdout = binary_output(binary, &["--version"])?;
    let text = String::from_utf8_lossy(&stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("unexpected `--version` output: {text}"))
}

/// The host target triple, from `rustc -vV` (`$RUSTC` when set).
pub fn host_target() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let output = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot run {rustc}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_string())
        .context("`rustc -vV` printed no host line")
}

fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(mtime());
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .with_context(|| format!("cannot add {path} to the tarball"))
}

/// Writes the tarball and its checksum file.
pub fn write_package(spec: &PackageSpec) -> Result<Package> {
    let version = binary_version(&spec.binary)?;
    let name = format!("cc-forwarder-{version}-{}", spec.target);
    std::fs::create_dir_all(&spec.out_dir)
        .with_context(|| format!("cannot create {}", spec.out_dir.display()))?;
    let tarball = spec.out_dir.join(format!("{name}.tar.gz"));
    let file =
        File::create(&tarball).with_context(|| format!("cannot create {}", tarball.display()))?;
    let encoder =
        flate2::write::GzEncoder::new(file, flate2::Compression::new(spec.compression.min(9)));
    let mut builder = tar::Builder::new(encoder);

    let binary = std::fs::read(&spec.binary)
        .with_context(|| format!("cannot read {}", spec.binary.display()))?;
    append(
        &mut builder,
        &format!("{name}/cc-forwarder"),
        0o755,
        &binary,
    )?;
    for (source, destination, required) in REPO_FILES {
        let path = spec.root.join(source);
        match std::fs::read(&path) {
            Ok(data) => append(&mut builder, &format!("{name}/{destination}"), 0o644, &data)?,
            Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()))
            }
        }
    }
    for (shell, file_name) in COMPLETIONS {
        let script = binary_output(&spec.binary, &["completions", shell])?;
        append(
            &mut builder,
            &format!("{name}/completions/{file_name}"),
            0o644,
            &script,
        )?;
    }
    let man = binary_output(&spec.binary, &["manpage"])?;
    append(
        &mut builder,
        &format!("{name}/man/cc-forwarder.1"),
        0o644,
        &man,
    )?;

    let encoder = builder.into_inner().context("cannot finish the tarball")?;
    let mut file = encoder.finish().context("cannot finish the gzip stream")?;
    file.flush()?;
    drop(file);

    let bytes = std::fs::read(&tarball)?;
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let checksum = spec.out_dir.join(format!("{name}.tar.gz.sha256"));
    std::fs::write(&checksum, format!("{sha256}  {name}.tar.gz\n"))
        .with_context(|| format!("cannot write {}", checksum.display()))?;
    Ok(Package {
        name,
        tarball,
        checksum,
        sha256,
    })
}
