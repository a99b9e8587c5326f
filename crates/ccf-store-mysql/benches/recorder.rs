//! Completed requests per second the recorder sustains into MariaDB (127.0.0.1:3306), none lost.
//!
//! `cargo bench -p ccf-store-mysql --bench recorder`
//!
//! Each sample uses a fresh database, hands the recorder `REQUESTS` requests (a `pending` and a
//! final `completed` snapshot each, from 4 tasks), shuts it down (everything flushed) and checks
//! that every request is stored as completed. Criterion's throughput is completed requests/s.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use ccf_config::MysqlTarget;
use ccf_store::contract::recorder_workload;
use ccf_store::UsageStore;
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mysql_async::prelude::Queryable;

const REQUESTS: u64 = 10_000;
const TASKS: u64 = 4;

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

async fn run(batch_size: usize) -> Duration {
    let database = format!("ccf_bench_{:016x}", rand::random::<u64>());
    let mut admin = mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/test")
        .await
        .unwrap();
    admin
        .query_drop(format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let store = MysqlStore::connect(&target(&database), MysqlOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let elapsed = recorder_workload(Arc::new(store), REQUESTS, TASKS, batch_size).await;
    admin
        .query_drop(format!("DROP DATABASE {database}"))
        .await
        .unwrap();
    elapsed
}

fn recorder_into_mariadb(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("recorder_mariadb");
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

criterion_group!(benches, recorder_into_mariadb);
criterion_main!(benches);
