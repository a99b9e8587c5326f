//! The shared usage-store contract, run against SQLite on a temporary file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ccf_store::contract::ContractFixture;
use ccf_store::{async_trait, UsageStore};
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

    async fn teardown(self) {}
}

async fn fixture() -> SqliteFixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("usage.db"), SqliteOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    SqliteFixture {
        store: Arc::new(store),
        _dir: dir,
    }
}

ccf_store::usage_store_contract!(fixture);
