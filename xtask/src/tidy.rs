//! Repository invariants checked as ordinary tests (rust-analyzer's `xtask/src/tidy.rs` idea).
//!
//! The rules come from `docs/ARCHITECTURE.md`: package metadata, the layering of dependencies, and
//! which crates may use the binary-only libraries. Manifests are read with a small line scanner
//! (no TOML dependency) that understands the forms this workspace uses.

use std::fs;
use std::path::{Path, PathBuf};

/// A workspace package's manifest.
struct Manifest {
    /// Folder relative to the root, e.g. `crates/ccf-proxy`.
    folder: String,
    /// `name` from `[package]`.
    name: String,
    /// The whole text.
    text: String,
}

impl Manifest {
    /// Names in `[dependencies]` (including target-specific ones), not dev- or build-dependencies.
    fn normal_dependencies(&self) -> Vec<String> {
        dependencies_in(&self.text, "dependencies")
    }
}

/// Dependency names listed in sections whose last header part is `kind` (`dependencies`,
/// `dev-dependencies`, ...), in both the inline (`foo = ..`) and table (`[dependencies.foo]`) forms.
fn dependencies_in(text: &str, kind: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']');
            let parts: Vec<&str> = header.split('.').collect();
            in_section = parts.last() == Some(&kind);
            // `[dependencies.foo]`, `[target.'cfg(unix)'.dependencies.foo]`
            if parts.len() >= 2 && parts[parts.len() - 2] == kind {
                names.push(parts[parts.len() - 1].to_string());
            }
            continue;
        }
        if in_section {
            if let Some(key) = line.split(['=', '.']).next() {
                names.push(key.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

fn root() -> PathBuf {
    crate::workspace_root()
}

/// Every workspace member: `crates/*`, `bins/*`, `tests`, `xtask`.
fn manifests() -> Vec<Manifest> {
    let root = root();
    let mut folders = Vec::new();
    for group in ["crates", "bins"] {
        if let Ok(entries) = fs::read_dir(root.join(group)) {
            for entry in entries.flatten() {
                folders.push(format!("{group}/{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    folders.push("tests".into());
    folders.push("xtask".into());
    folders.sort();
    folders
        .into_iter()
        .filter_map(|folder| {
            let text = fs::read_to_string(root.join(&folder).join("Cargo.toml")).ok()?;
            let name = package_name(&text)?;
            Some(Manifest { folder, name, text })
        })
        .collect()
}

fn package_name(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("name"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
}

fn has_key(text: &str, key: &str) -> bool {
    text.lines().map(str::trim).any(|line| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

#[test]
fn manifest_scanner_reads_the_forms_in_use() {
    let text = r#"
[package]
name = "demo"

[dependencies]
ccf-config.workspace = true
tokio = { workspace = true }
"serde" = "1"

[dependencies.hyper]
workspace = true

[target.'cfg(unix)'.dependencies]
nix = "0.29"

[dev-dependencies]
tempfile.workspace = true
"#;
    assert_eq!(package_name(text).as_deref(), Some("demo"));
    assert_eq!(
        dependencies_in(text, "dependencies"),
        ["ccf-config", "tokio", "serde", "hyper", "nix"]
    );
    assert_eq!(dependencies_in(text, "dev-dependencies"), ["tempfile"]);
}

#[test]
fn every_package_has_a_description_and_uses_workspace_lints() {
    let manifests = manifests();
    assert!(
        manifests.iter().any(|m| m.name == "cc-forwarder"),
        "workspace scan found no cc-forwarder package"
    );
    let mut problems = Vec::new();
    for manifest in &manifests {
        if !has_key(&manifest.text, "description") {
            problems.push(format!("{}: no `description`", manifest.folder));
        }
        let lints = manifest.text.contains("[lints]") && has_key(&manifest.text, "workspace");
        if !lints {
            problems.push(format!(
                "{}: no `[lints] workspace = true`",
                manifest.folder
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_binaries_and_xtask_use_anyhow_and_tracing_subscriber() {
    let mut problems = Vec::new();
    for manifest in manifests() {
        if !manifest.folder.starts_with("crates/") {
            continue;
        }
        for dependency in manifest.normal_dependencies() {
            if ["anyhow", "tracing-subscriber"].contains(&dependency.as_str()) {
                problems.push(format!(
                    "{} depends on {dependency}; libraries return typed errors and emit \
                     tracing events, only bins/ and xtask set up subscribers",
                    manifest.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn layering_rules_hold() {
    // (crate, dependencies it must not have, why)
    let store_adapters = ["ccf-store-sqlite", "ccf-store-mysql"];
    let io = ["tokio", "hyper", "hyper-util", "mysql_async", "rusqlite"];
    let rules: &[(&str, &[&str], &str)] = &[
        (
            "ccf-proxy",
            &store_adapters,
            "it sees only `dyn UsageStore`",
        ),
        (
            "ccf-admin",
            &store_adapters,
            "it sees only `dyn UsageStore`",
        ),
        ("ccf-tui", &store_adapters, "it sees only `dyn UsageStore`"),
        (
            "ccf-webhooks",
            &[
                "ccf-store-sqlite",
                "ccf-store-mysql",
                "ccf-admin",
                "ccf-app",
            ],
            "it sits below the admin API and the composition root",
        ),
        (
            "ccf-cluster",
            &[
                "ccf-store-sqlite",
                "ccf-store-mysql",
                "ccf-admin",
                "ccf-app",
            ],
            "it sits below the admin API and the composition root, and sees only `dyn SharedState`",
        ),
        (
            "ccf-proxy",
            &["redis"],
            "the engine knows only its ClusterLink trait; Redis lives in ccf-cluster",
        ),
        ("ccf-tokens", &io, "it is pure: no IO, spawns nothing"),
        ("ccf-lifecycle", &io, "it is pure: no IO, spawns nothing"),
        ("ccf-router", &io, "it is pure: no IO, spawns nothing"),
        ("ccf-types", &io, "it is vocabulary only"),
        ("ccf-config", &io, "it does no network IO"),
        (
            "ccf-testkit",
            &["ccf-types", "ccf-config", "ccf-proxy", "ccf-app"],
            "project crates dev-depend on it, so it must not depend on them",
        ),
    ];
    let manifests = manifests();
    let mut problems = Vec::new();
    for (name, forbidden, why) in rules {
        let Some(manifest) = manifests.iter().find(|m| m.name == *name) else {
            continue;
        };
        for dependency in manifest.normal_dependencies() {
            if forbidden.contains(&dependency.as_str()) {
                problems.push(format!("{name} depends on {dependency}, but {why}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn xtask_depends_on_no_workspace_crate() {
    let manifests = manifests();
    let names: Vec<&str> = manifests.iter().map(|m| m.name.as_str()).collect();
    let xtask = manifests
        .iter()
        .find(|m| m.name == "xtask")
        .expect("xtask manifest");
    for dependency in xtask.normal_dependencies() {
        assert!(
            !names.contains(&dependency.as_str()),
            "xtask depends on workspace crate {dependency}; it must build when they do not"
        );
    }
}

#[test]
fn every_library_opens_with_a_crate_doc_comment() {
    let root = root();
    let mut problems = Vec::new();
    for manifest in manifests() {
        let lib = root.join(&manifest.folder).join("src/lib.rs");
        let Ok(text) = fs::read_to_string(&lib) else {
            continue;
        };
        let first = text.lines().map(str::trim).find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            problems.push(display(&lib, &root));
        }
    }
    assert!(
        problems.is_empty(),
        "these lib.rs files do not open with a `//!` paragraph:\n{}",
        problems.join("\n")
    );
}

fn display(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
