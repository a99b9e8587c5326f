//! cc-forwarder's task runner (`cargo xtask <task>`, an alias in `.cargo/config.toml`).
//!
//! Everything repeatable about working on the repository is a task here, so that a developer, CI
//! (`.ci/run` runs `cargo xtask ci`) and the docs all use the same commands. It depends on no
//! workspace crate: it drives `cargo` and the built binaries as child processes, which keeps it
//! building even when the workspace does not.
//!
//! Tasks: `ci` (format check, cargo deny, clippy, tests, web unit tests), `demo` (the forwarder
//! in front of the mock upstream, with a little traffic) and `clients` (the anthropic Python SDK
//! and Claude Code driven through the forwarder), `cluster` (three instances behind a load
//! balancer, one stopped and one killed mid-run, every request accounted for). The `tidy` test module checks repository invariants from
//! `docs/ARCHITECTURE.md` as ordinary `#[test]`s.

mod bench;
mod bench_stats;
mod brownout;
mod callgrind;
mod ci;
mod clients;
mod cluster;
mod demo;
mod dist;
mod fuzz;
mod http;
mod migrate;
mod package;
mod process;
mod soak;
mod summary;
#[cfg(test)]
mod tidy;
mod web;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `cargo xtask`: repository tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "cc-forwarder's task runner")]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Debug, Subcommand)]
enum Task {
    /// What CI runs: format check, cargo deny, clippy with warnings denied, every test and doc
    /// test, the web unit tests; ends with `ci: N passed, M failed, K skipped`.
    Ci,
    /// Run the forwarder in front of the mock upstream and send it a little traffic.
    Demo(demo::DemoArgs),
    /// Drive the anthropic Python SDK and Claude Code through the forwarder (tests/clients).
    Clients,
    /// Apply the usage store's migrations for a configuration (SQLite or MySQL).
    Migrate {
        /// The configuration whose `usage_tracking` names the database.
        #[arg(long, default_value = "config/example.yaml")]
        config: PathBuf,
    },
    /// Build the web dashboard (npm ci + build in web/); `--test` also runs its browser tests.
    Web(web::WebArgs),
    /// Build the release binary and package it into target/dist/ (tarball + SHA-256).
    Dist(dist::DistArgs),
    /// Benchmark the forwarder against the mock upstream (release build); `--quick` for a short run.
    Bench(bench::BenchArgs),
    /// Instructions per request under callgrind (JSON usage off/on, SSE usage on): the
    /// repeatable cost figure of docs/benchmarks.md.
    Callgrind(callgrind::CallgrindArgs),
    /// Usage stats over 1,000,000 requests in SQLite and MariaDB: 30-, 7- and 1-day `stats`
    /// timings (median of 9), served from `usage_summary`.
    BenchStats(bench_stats::BenchStatsArgs),
    /// The brown-out scenario (issue #17): a 529 storm on group 1 of two realistic upstreams,
    /// 50 clients; attempts per request, failover, cooldown returns, recovery, 5xx.
    Brownout(brownout::BrownoutArgs),
    /// Build the cargo-fuzz targets (nightly) and run each for a bounded time; crash inputs
    /// are kept in fuzz/regressions/.
    Fuzz(fuzz::FuzzArgs),
    /// Three instances behind a local load balancer (nginx or HAProxy) sharing MariaDB and
    /// Redis: mixed traffic, one instance stopped (SIGTERM) and one killed (SIGKILL) mid-run;
    /// requests sent, answered, retried and rows stored per instance, checked.
    Cluster(cluster::ClusterArgs),
    /// Steady mixed traffic through the forwarder for N minutes (release build); reports RSS,
    /// file descriptors, threads and outcomes versus requests.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Ci => ci::run(&root),
        Task::Demo(args) => demo::run(&root, &args),
        Task::Clients => clients::run(&root),
        Task::Migrate { config } => migrate::run(&root, &config),
        Task::Web(args) => web::run(&root, &args),
        Task::Dist(args) => dist::run(&root, &args),
        Task::Bench(args) => bench::run(&root, &args),
        Task::Callgrind(args) => callgrind::run(&root, &args),
        Task::BenchStats(args) => bench_stats::run(&root, &args),
        Task::Brownout(args) => brownout::run(&root, &args),
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::Soak(args) => soak::run(&root, &args),
        Task::Cluster(args) => cluster::run(&root, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this package's folder.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// The `cargo` to run: the one that started us when there is one, so toolchain overrides hold.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
