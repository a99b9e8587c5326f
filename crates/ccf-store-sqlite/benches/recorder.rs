//! Completed requests per second the recorder sustains into SQLite, none lost.
//!
//! `cargo bench -p ccf-store-sqlite --bench recorder`
//!
//! Each sample hands the recorder `REQUESTS` requests (a `pending` snapshot and a final
//! `completed` one each, from 4 tasks), then shuts it down (everything flushed) and checks that
//! every request is in the database as completed. Criterion's throughput is completed requests/s.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccf_store::contract::{at_ms, outcome, pricing, snapshot, tokens};
use ccf_store::{status, Recorder, RecorderSettings, RequestFilter, UsageStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const REQUESTS: u64 = 20_000;
const TASKS: u64 = 4;

async fn run(batch_size: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("usage.db"), SqliteOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store = Arc::new(store);
    let settings = RecorderSettings {
        batch_size,
        flush_interval: Duration::from_secs(1),
        ..RecorderSettings::default()
    };
    let started = Instant::now();
    let recorder = Recorder::spawn(store.clone(), settings, pricing());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..REQUESTS / TASKS {
                let id = format!("req-{task}-{i:08}");
                let start = at_ms(i);
                recorder.record(snapshot(&id, start, status::PENDING));
                recorder.record(outcome(
                    &id,
                    start,
                    status::COMPLETED,
                    "claude-sonnet-4-5-20250929",
                    "primary",
                    "main",
                    tokens(1000 + i, 200),
                    1200,
                ));
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    recorder.shutdown().await;
    let elapsed = started.elapsed();
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.success_count, REQUESTS, "none lost");
    assert_eq!(recorder.dropped(), 0);
    elapsed
}

fn recorder_into_sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("recorder_sqlite");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REQUESTS));
    for batch_size in [100usize, 500] {
        group.bench_function(format!("completed_requests_batch_{batch_size}"), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += runtime.block_on(run(batch_size));
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, recorder_into_sqlite);
criterion_main!(benches);
