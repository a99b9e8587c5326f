//! Embeds the web dashboard (`web/dist`) into the admin crate.
//!
//! When `web/dist/index.html` is missing or older than the dashboard's sources and `npm` is on
//! the `PATH`, this runs `npm ci` (or `npm install` without a lockfile) when `node_modules` is
//! missing or stale, then `npm run build` in `web/`. Outside CI, whatever happens with npm the
//! Rust build goes on: without a built dashboard a small page explaining how to build it
//! (`cargo xtask web`) is embedded instead, with a cargo warning. Under CI (`CI` set to anything
//! but empty, `0` or `false`) or with `CCF_REQUIRE_DASHBOARD=1` (set by `cargo xtask dist`) the
//! real dashboard is required: a failed dashboard build (a TypeScript or vite error, npm missing)
//! or a missing `web/dist` fails the Rust build with npm's output, so a green CI never embeds the
//! fallback page. Set `CCF_WEB_NO_NPM=1` to never run npm here.
//!
//! The result is `$OUT_DIR/web_assets.rs`: a table of `(path, bytes, content type)` built with
//! `include_bytes!`, so the crate recompiles whenever an embedded file changes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The page embedded when the dashboard has not been built.
const FALLBACK: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cc-forwarder: dashboard not built</title>
<style>body{font-family:system-ui,sans-serif;max-width:680px;margin:48px auto;padding:0 16px;line-height:1.55;color:#1c2230}
code,pre{background:#eef1f6;border-radius:6px;padding:2px 6px}pre{padding:12px}</style></head>
<body><h1>cc-forwarder</h1>
<p>The web dashboard is not built into this binary (Node.js and npm were not available, or the
dashboard build failed, when it was compiled).</p>
<p>To build it, install Node.js 20+ with npm, then from the repository root run:</p>
<pre>cargo xtask web
cargo build --release</pre>
<p>The admin API works without it: <a href="/api/v1/status">/api/v1/status</a>,
described at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
<p lang="zh-CN">此二进制文件未包含 Web 控制台。请安装 Node.js 20+ 和 npm，然后在仓库根目录运行 <code>cargo xtask web</code> 并重新构建。</p>
</body></html>
"#;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let web = manifest_dir.join("../../web");
    let web = web.canonicalize().unwrap_or(web);

    for input in [
        "src",
        "package.json",
        "package-lock.json",
        "index.html",
        "vite.config.ts",
        "tsconfig.json",
        "dist/index.html",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=CCF_WEB_NO_NPM");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed={REQUIRE_VARIABLE}");
    let required = dashboard_required();

    let dist = web.join("dist");
    let index = dist.join("index.html");
    let sources_newest = newest_source(&web);
    let built = modified(&index);
    let stale = match (built, sources_newest) {
        (None, _) => true,
        (Some(built), Some(newest)) => built < newest,
        (Some(_), None) => false,
    };
    let npm_allowed = std::env::var_os("CCF_WEB_NO_NPM").is_none_or(|v| v.is_empty() || v == "0");
    if stale && web.join("package.json").is_file() && npm_allowed {
        if let Err(failure) = build_dashboard(&web) {
            if required {
                panic!(
                    "\n{output}\nthe web dashboard does not build: {what}.\n\
                     {why_required}, so the \"dashboard not built\" page is not embedded in its \
                     place. Fix the error above (npm's output), or install Node.js 20+ with npm, \
                     then check with `cargo xtask web`.",
                    output = failure.output,
                    what = failure.what,
                    why_required = why_required(),
                );
            }
            eprintln!("{}", failure.output);
            println!(
                "cargo:warning=web dashboard not rebuilt ({}); run `cargo xtask web`",
                failure.what
            );
        }
    }
    if required && !index.is_file() {
        panic!(
            "{} is missing and was not built (is npm disabled with CCF_WEB_NO_NPM?). {}, so the \
             \"dashboard not built\" page is not embedded in its place; run `cargo xtask web`.",
            index.display(),
            why_required()
        );
    }

    let table = if index.is_file() {
        if modified(&index) < sources_newest {
            println!(
                "cargo:warning=embedding an outdated web/dist; run `cargo xtask web` to rebuild it"
            );
        }
        let mut files = Vec::new();
        collect_files(&dist, &mut files);
        files.sort();
        files
            .into_iter()
            .filter_map(|file| {
                let relative = file.strip_prefix(&dist).ok()?;
                let url = format!(
                    "/{}",
                    relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                );
                Some((url, file))
            })
            .collect::<Vec<_>>()
    } else {
        let fallback = out_dir.join("fallback-index.html");
        if let Err(error) = fs::write(&fallback, FALLBACK) {
            panic!("cannot write {}: {error}", fallback.display());
        }
        vec![("/index.html".to_string(), fallback)]
    };

    let mut code = String::from(
        "/// Every embedded file: URL path, bytes, content type.\n\
         static FILES: &[(&str, &[u8], &str)] = &[\n",
    );
    for (url, file) in &table {
        let _ = writeln!(
            code,
            "    ({url:?}, include_bytes!({path:?}), {ctype:?}),",
            path = file.display().to_string(),
            ctype = content_type(file),
        );
    }
    code.push_str("];\n");
    let _ = writeln!(
        code,
        "/// Whether the real dashboard (not the fallback page) is embedded.\n\
         pub const DASHBOARD_BUILT: bool = {};",
        index.is_file()
    );
    let target = out_dir.join("web_assets.rs");
    if let Err(error) = fs::write(&target, code) {
        panic!("cannot write {}: {error}", target.display());
    }
}

/// The variable that requires the real dashboard outside CI (`cargo xtask dist` sets it).
const REQUIRE_VARIABLE: &str = "CCF_REQUIRE_DASHBOARD";

/// Whether a failed dashboard build must fail the Rust build: under CI (`CI` set to anything but
/// empty, `0` or `false`, the rule of `ccf_testkit::in_ci`) or with `CCF_REQUIRE_DASHBOARD` set
/// the same way.
fn dashboard_required() -> bool {
    ["CI", REQUIRE_VARIABLE].into_iter().any(|name| {
        std::env::var(name).is_ok_and(|value| {
            let value = value.trim();
            !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
        })
    })
}

/// Which variable made the dashboard required, for the failure message.
fn why_required() -> String {
    if std::env::var_os(REQUIRE_VARIABLE).is_some() {
        format!("{REQUIRE_VARIABLE} is set (cargo xtask dist)")
    } else {
        "CI is set".to_string()
    }
}

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) => value,
        Err(_) => panic!("cargo did not set {name}"),
    }
}

/// Why the dashboard was not built: a one-line summary and npm's output (empty when npm did not
/// run).
struct BuildFailure {
    what: String,
    output: String,
}

impl BuildFailure {
    fn without_output(what: impl Into<String>) -> Self {
        BuildFailure {
            what: what.into(),
            output: String::new(),
        }
    }
}

/// `npm ci`/`npm install` when needed, then `npm run build`.
fn build_dashboard(web: &Path) -> Result<(), BuildFailure> {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    match Command::new(npm).arg("--version").output() {
        Ok(output) if output.status.success() => {}
        _ => return Err(BuildFailure::without_output("npm is not installed")),
    }
    let lock = web.join("package-lock.json");
    let installed = web.join("node_modules/.package-lock.json");
    let install_needed = match (modified(&installed), modified(&lock)) {
        (None, _) => true,
        (Some(installed), Some(lock)) => installed < lock,
        (Some(_), None) => false,
    };
    if install_needed {
        let verb = if lock.is_file() { "ci" } else { "install" };
        run(Command::new(npm)
            .args([verb, "--no-audit", "--no-fund"])
            .current_dir(web))?;
    }
    run(Command::new(npm).args(["run", "build"]).current_dir(web))
}

fn run(command: &mut Command) -> Result<(), BuildFailure> {
    let shown = format!("{command:?}");
    // npm's output is kept for the failure: in the panic when the dashboard is required, else in
    // cargo's build log (shown with -vv).
    match command.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout).trim_end(),
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
            Err(BuildFailure {
                what: format!("{shown} failed with {}", output.status),
                output: text,
            })
        }
        Err(error) => Err(BuildFailure::without_output(format!(
            "cannot run {shown}: {error}"
        ))),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the dashboard's sources.
fn newest_source(web: &Path) -> Option<SystemTime> {
    let mut files = Vec::new();
    collect_files(&web.join("src"), &mut files);
    for name in [
        "package.json",
        "package-lock.json",
        "index.html",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        files.push(web.join(name));
    }
    files.iter().filter_map(|file| modified(file)).max()
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else if path.is_file() {
            files.push(path);
        }
    }
}

fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}
