//! A fresh MariaDB database per test on the local server (127.0.0.1:3306, root, no password).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ccf_config::MysqlTarget;
use ccf_store::contract::ContractFixture;
use ccf_store::{async_trait, DayZone, UsageStore};
use ccf_store_mysql::{MysqlOptions, MysqlStore};
use mysql_async::prelude::Queryable;

/// The server's admin connection (database `test`).
pub async fn admin() -> mysql_async::Conn {
    mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB at 127.0.0.1:3306 (root, empty password)")
}

/// A target for `database` on the local server.
pub fn target(database: &str) -> MysqlTarget {
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

/// Creates an empty database with a random name.
pub async fn create_database() -> String {
    let name = format!("ccf_test_{:016x}", rand::random::<u64>());
    admin()
        .await
        .query_drop(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .await
        .unwrap();
    name
}

/// Drops a test database.
pub async fn drop_database(name: &str) {
    let _ = admin()
        .await
        .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
        .await;
}

/// Runs `test` against a fresh database and drops the database afterwards, also when `test`
/// panics (the panic is then resumed, so the test still fails with its own message).
pub async fn with_database<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let database = create_database().await;
    let outcome = tokio::spawn(test(database.clone())).await;
    drop_database(&database).await;
    if let Err(error) = outcome {
        if error.is_panic() {
            std::panic::resume_unwind(error.into_panic());
        }
        panic!("test task did not finish: {error}");
    }
}

/// A migrated store in a fresh database, dropped on teardown.
pub struct MysqlFixture {
    /// The store.
    pub store: Arc<MysqlStore>,
    /// Its database.
    pub database: String,
}

#[async_trait]
impl ContractFixture for MysqlFixture {
    fn store(&self) -> Arc<dyn UsageStore> {
        self.store.clone()
    }

    async fn reopen(&self, day_zone: DayZone) -> Arc<dyn UsageStore> {
        Arc::new(open(&self.database, day_zone).await)
    }

    async fn teardown(self) {
        drop_database(&self.database).await;
    }
}

/// A store on `database` counting days in `day_zone`, migrated.
pub async fn open(database: &str, day_zone: DayZone) -> MysqlStore {
    let options = MysqlOptions {
        day_zone,
        ..MysqlOptions::default()
    };
    let store = MysqlStore::connect(&target(database), options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A migrated store in a fresh database, counting days in `day_zone`.
pub async fn fixture(day_zone: DayZone) -> MysqlFixture {
    let database = create_database().await;
    let store = open(&database, day_zone).await;
    MysqlFixture {
        store: Arc::new(store),
        database,
    }
}
