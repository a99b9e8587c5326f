//! `cargo xtask bench-stats [--rows N] [--only sqlite|mysql]`: 30-day usage stats over a million
//! requests (issue 18, point 11).
//!
//! Runs the `stats` bench binaries of `ccf-store-sqlite` (a temporary file) and
//! `ccf-store-mysql` (a fresh database on the MariaDB at 127.0.0.1:3306, dropped afterwards),
//! release build. Each fills its store with `--rows` final requests over the last 30 days
//! through the store's own batch writes (so `usage_summary` is kept as in production), then
//! times `stats` for the last 30, 7 and 1 days (median of 9 runs) and prints one line per period.
//! The target is a median of at most 50 ms for 30 days; the figures go in `docs/benchmarks.md`.

use std::path::Path;

use anyhow::Result;

use crate::process::cargo_build;

/// `cargo xtask bench-stats` options.
#[derive(Debug, clap::Args)]
pub struct BenchStatsArgs {
    /// Requests written before timing.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Run one adapter only: `sqlite` or `mysql`.
    #[arg(long)]
    only: Option<String>,
}

/// Runs the benchmark of each selected adapter.
pub fn run(root: &Path, args: &BenchStatsArgs) -> Result<()> {
    let rows = args.rows.to_string();
    for (adapter, package) in [("sqlite", "ccf-store-sqlite"), ("mysql", "ccf-store-mysql")] {
        if args.only.as_deref().is_some_and(|only| only != adapter) {
            continue;
        }
        cargo_build(
            root,
            &["bench", "-p", package, "--bench", "stats", "--", &rows],
        )?;
    }
    Ok(())
}
