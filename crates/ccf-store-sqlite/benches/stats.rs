//! 30-day stats over 1,000,000 requests in SQLite, served from `usage_summary` (issue 18).
//!
//! `cargo xtask bench-stats` (or `cargo bench -p ccf-store-sqlite --bench stats -- [rows]`)
//!
//! Fills a temporary database through `write_batch` (the summary kept as in production), then
//! times `stats` for the last 30, 7 and 1 days, median of several runs, and prints one line per
//! period: `sqlite <days>d median_ms=<…> min_ms=<…> max_ms=<…> requests=<…>`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::SystemTime;

use ccf_store::contract::{fill_for_stats_bench, time_stats};
use ccf_store::{DayZone, UsageStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};

const RUNS: usize = 9;

fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // `BENCH_STATS_DB=<path>`: keep the filled database there and reuse it when it exists
        // (for iterating on the read side without refilling).
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("BENCH_STATS_DB")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.path().join("usage.db"));
        let reuse = path.exists();
        let options = SqliteOptions {
            day_zone: DayZone::parse("Asia/Shanghai").unwrap(),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&path, options).await.unwrap();
        store.migrate().await.unwrap();
        let now = SystemTime::now();
        if reuse {
            println!("sqlite reusing {}", path.display());
            report(&store, now).await;
            return;
        }
        let fill = fill_for_stats_bench(&store, rows, 5_000, now).await;
        println!(
            "sqlite fill rows={rows} seconds={:.1} rows_per_s={:.0}",
            fill.as_secs_f64(),
            rows as f64 / fill.as_secs_f64()
        );
        report(&store, now).await;
    });
}

async fn report(store: &dyn UsageStore, now: SystemTime) {
    for days in [30, 7, 1] {
        let (times, requests) = time_stats(store, days, RUNS, now).await;
        let ms = |index: usize| times[index].as_secs_f64() * 1000.0;
        println!(
            "sqlite {days}d median_ms={:.1} min_ms={:.1} max_ms={:.1} requests={requests}",
            ms(times.len() / 2),
            ms(0),
            ms(times.len() - 1)
        );
    }
}
