//! `cluster_state` (migration 4): settings shared by several instances, compare-and-set on a
//! version so that concurrent writers never lose an update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ccf_store::{ApplyOutcome, SharedChange, SharedState, UsageStore};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use common::{fixture, target};

fn change(scope: &str, state: &str, by: &str) -> SharedChange {
    SharedChange {
        scope: scope.into(),
        state: state.into(),
        updated_by: by.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_compare_and_set_on_the_version() {
    let fixture = fixture(ccf_store::DayZone::Utc).await;
    let a = fixture.store.clone();
    let b = MysqlStore::connect(&target(&fixture.database), MysqlOptions::default())
        .await
        .unwrap();
    assert!(a.load_all().await.unwrap().is_empty());

    // Creating a scope: the first writer wins, the second conflicts.
    let first = a
        .apply(&change("group:main", r#"{"paused":true}"#, "a"), 0)
        .await
        .unwrap();
    assert_eq!(first, ApplyOutcome::Applied { version: 1 });
    let second = b
        .apply(&change("group:main", r#"{"paused":false}"#, "b"), 0)
        .await
        .unwrap();
    assert_eq!(second, ApplyOutcome::Conflict);

    // Updating: only with the current version.
    let stale = b
        .apply(&change("group:main", r#"{"paused":false}"#, "b"), 7)
        .await
        .unwrap();
    assert_eq!(stale, ApplyOutcome::Conflict);
    let current = b.load("group:main").await.unwrap().unwrap();
    assert_eq!(current.version, 1);
    assert_eq!(current.updated_by, "a");
    assert!(current.updated_at.is_some());
    let fresh = b
        .apply(&change("group:main", r#"{"paused":false}"#, "b"), 1)
        .await
        .unwrap();
    assert_eq!(fresh, ApplyOutcome::Applied { version: 2 });

    let all = a.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].scope, "group:main");
    assert_eq!(all[0].state, r#"{"paused":false}"#);
    assert_eq!(all[0].version, 2);
    assert_eq!(all[0].updated_by, "b");
    assert_eq!(a.load("nope").await.unwrap(), None);

    // Many concurrent read-modify-write increments: none is lost.
    let stores: Vec<Arc<dyn SharedState>> = vec![a.clone(), Arc::new(b)];
    let mut tasks = Vec::new();
    for (index, store) in stores.iter().enumerate() {
        for _ in 0..10 {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                loop {
                    let current = store.load("counter").await.unwrap();
                    let (count, version) = current.map_or((0, 0), |setting| {
                        (setting.state.parse::<u64>().unwrap(), setting.version)
                    });
                    let next = change("counter", &(count + 1).to_string(), &index.to_string());
                    if let ApplyOutcome::Applied { .. } = store.apply(&next, version).await.unwrap()
                    {
                        break;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counter = a.load("counter").await.unwrap().unwrap();
    assert_eq!(counter.state, "20");
    assert_eq!(counter.version, 20);

    // Migrating again keeps the table and its rows.
    a.migrate().await.unwrap();
    assert_eq!(a.load_all().await.unwrap().len(), 2);
    common::drop_database(&fixture.database).await;
}
