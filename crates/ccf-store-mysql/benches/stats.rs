//! 30-day stats over 1,000,000 requests in MariaDB (127.0.0.1:3306), served from
//! `usage_summary` (issue 18).
//!
//! `cargo xtask bench-stats` (or `cargo bench -p ccf-store-mysql --bench stats -- [rows]`)
//!
//! Fills a fresh database through `write_batch` (the summary kept as in production), then
//! times `stats` for the last 30, 7 and 1 days, median of several runs, prints one line per
//! period (`mysql <days>d median_ms=<…> min_ms=<…> max_ms=<…> requests=<…>`) and drops the
//! database. `BENCH_STATS_DATABASE=<name>` uses (and keeps) that database instead, filling it
//! only when it holds no requests (for iterating on the read side).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, SystemTime};

use ccf_config::MysqlTarget;
use ccf_store::contract::{fill_for_stats_bench, time_stats};
use ccf_store::{DayZone, UsageStore};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use mysql_async::prelude::Queryable;

const RUNS: usize = 9;

fn target(database: &str) -> MysqlTarget {
    MysqlTarget {
        host: "127.0.0.1".into(),
        port: 3306,
        database: database.into(),
        username: Some("root".into()),
        password: None,
        charset: "utf8mb4".into(),
        timezone: None,
        max_open_conns: 10,
        max_idle_conns: 2,
        conn_max_lifetime: Duration::from_secs(3600),
        conn_max_idle_time: Duration::from_secs(600),
    }
}

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
        let kept = std::env::var("BENCH_STATS_DATABASE").ok();
        let database = kept
            .clone()
            .unwrap_or_else(|| format!("ccf_bench_stats_{:016x}", rand::random::<u64>()));
        let mut admin = mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/test")
            .await
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE IF NOT EXISTS {database}"))
            .await
            .unwrap();
        let options = MysqlOptions {
            day_zone: DayZone::parse("Asia/Shanghai").unwrap(),
            ..MysqlOptions::default()
        };
        let store = MysqlStore::connect(&target(&database), options)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let now = SystemTime::now();
        let filled: Option<u64> = admin
            .query_first(format!("SELECT COUNT(*) FROM {database}.request_logs"))
            .await
            .unwrap();
        if kept.is_some() && filled.unwrap_or(0) > 0 {
            println!("mysql reusing {database}");
            report(&store, now).await;
            store.close().await.unwrap();
            return;
        }
        let fill = fill_for_stats_bench(&store, rows, 5_000, now).await;
        println!(
            "mysql fill rows={rows} seconds={:.1} rows_per_s={:.0}",
            fill.as_secs_f64(),
            rows as f64 / fill.as_secs_f64()
        );
        report(&store, now).await;
        store.close().await.unwrap();
        if kept.is_some() {
            return;
        }
        admin
            .query_drop(format!("DROP DATABASE {database}"))
            .await
            .unwrap();
    });
}

async fn report(store: &dyn UsageStore, now: SystemTime) {
    for days in [30, 7, 1] {
        let (times, requests) = time_stats(store, days, RUNS, now).await;
        let ms = |index: usize| times[index].as_secs_f64() * 1000.0;
        println!(
            "mysql {days}d median_ms={:.1} min_ms={:.1} max_ms={:.1} requests={requests}",
            ms(times.len() / 2),
            ms(0),
            ms(times.len() - 1)
        );
    }
}
