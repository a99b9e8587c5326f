//! The shared usage-store contract, run against SQLite on a temporary file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ccf_store::contract::ContractFixture;
use ccf_store::{async_trait, DayZone, UsageStore};
use ccf_store_sqlite::{SqliteOptions, SqliteStore};

struct SqliteFixture {
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl ContractFixture for SqliteFixture {
    fn store(&self) -> Arc<dyn UsageStore> {
        self.store.clone()
    }

    async fn reopen(&self, day_zone: DayZone) -> Arc<dyn UsageStore> {
        Arc::new(open(self._dir.path(), day_zone).await)
    }

    async fn teardown(self) {}
}

async fn open(dir: &std::path::Path, day_zone: DayZone) -> SqliteStore {
    let options = SqliteOptions {
        day_zone,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.join("usage.db"), options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

async fn fixture(day_zone: DayZone) -> SqliteFixture {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), day_zone).await;
    SqliteFixture {
        store: Arc::new(store),
        _dir: dir,
    }
}

ccf_store::usage_store_contract!(fixture);
