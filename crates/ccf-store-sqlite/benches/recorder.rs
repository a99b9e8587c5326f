//! Completed requests per second the recorder sustains into SQLite, none lost.
//!
//! `cargo bench -p ccf-store-sqlite --bench recorder`
//!
//! Each sample hands the recorder `REQUESTS` requests (a `pending` snapshot and a final
//! `completed` one each, from 4 tasks), then shuts it down (everything flushed) and checks that
//! every request is in the database as completed. Criterion's throughput is completed requests/s.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use ccf_store::contract::recorder_workload;
use ccf_store::UsageStore;
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
    recorder_workload(Arc::new(store), REQUESTS, TASKS, batch_size).await
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
