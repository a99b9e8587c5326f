//! `cluster_state` (migration 4): settings shared by several instances, compare-and-set on a
//! version so that concurrent writers never lose an update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ccf_store::{SharedState, UsageStore};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use common::{fixture, target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_compare_and_set_on_the_version() {
    let fixture = fixture(ccf_store::DayZone::Utc).await;
    let a = fixture.store.clone();
    let b = MysqlStore::connect(&target(&fixture.database), MysqlOptions::default())
        .await
        .unwrap();
    ccf_store::contract::shared_state_is_compare_and_set_on_the_version(a.clone(), Arc::new(b))
        .await;

    // Migrating again keeps the table and its rows.
    a.migrate().await.unwrap();
    assert_eq!(a.load_all().await.unwrap().len(), 2);
    common::drop_database(&fixture.database).await;
}
