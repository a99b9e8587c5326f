//! The usage store on MySQL or MariaDB, for deployments where several forwarders share one
//! database.
//!
//! This crate owns the MySQL side of [`ccf_store::UsageStore`] on `mysql_async`: a connection
//! pool sized from `usage_tracking.database`, sessions in UTC (`time_zone = '+00:00'`, so
//! `DATETIME(6)` values are UTC), READ COMMITTED write transactions that lock the batch's rows
//! (`SELECT … FOR UPDATE`) so that concurrent forwarders keep `usage_summary` exact, and the
//! embedded migrations in the MySQL dialect, compatible with the Go forwarder's schema. It also
//! implements [`ccf_store::SharedState`] on the `cluster_state` table, through which several
//! instances share operator actions.
//!
//! Main types: [`MysqlStore`], [`MysqlOptions`].

mod convert;
mod migrate;
mod read;
mod shared;
mod write;

use std::time::{Duration, SystemTime};

use ccf_config::MysqlTarget;
use ccf_store::{
    async_trait, ApplyOutcome, CleanupReport, DayZone, LegacyZone, MigrationReport, Page,
    RequestFilter, RequestQuery, RequestRow, SharedChange, SharedSetting, SharedState, Stats,
    StatsQuery, StoreError, StoredRecord, SummaryQuery, SummaryRow, UsageStore,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use crate::convert::mysql_error;

/// How [`MysqlStore::connect`] connects, beyond the target's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MysqlOptions {
    /// Zone in which the Go forwarder wrote its `DATETIME` values (its `database.timezone`, else
    /// the global `timezone`, else `Asia/Shanghai`); existing rows are converted from it to UTC
    /// by the migration. Default UTC.
    pub legacy_zone: LegacyZone,
    /// Zone of the days usage is counted in (`usage_summary.date`, daily and hourly stats;
    /// default the machine's zone, the configured `timezone` in the application).
    pub day_zone: DayZone,
}

/// A usage store in a MySQL or MariaDB database.
pub struct MysqlStore {
    pool: Pool,
    database: String,
    legacy_zone: LegacyZone,
    day_zone: DayZone,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("database", &self.database)
            .field("legacy_zone", &self.legacy_zone)
            .field("day_zone", &self.day_zone)
            .finish()
    }
}

impl MysqlStore {
    /// Builds the pool for `target` and checks that one connection can be opened. Does not
    /// migrate: call [`UsageStore::migrate`].
    pub async fn connect(target: &MysqlTarget, options: MysqlOptions) -> Result<Self, StoreError> {
        let charset = if target
            .charset
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !target.charset.is_empty()
        {
            target.charset.clone()
        } else {
            return Err(StoreError::InvalidInput(format!(
                "invalid database.charset `{}`",
                target.charset
            )));
        };
        let max = usize::try_from(target.max_open_conns.max(1)).unwrap_or(10);
        let min = usize::try_from(target.max_idle_conns).unwrap_or(0).min(max);
        let constraints = PoolConstraints::new(min, max).ok_or_else(|| {
            StoreError::InvalidInput("database.max_idle_conns exceeds max_open_conns".into())
        })?;
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            // Session settings are made once per connection (below), so keep them on return.
            .with_reset_connection(false)
            .with_inactive_connection_ttl(target.conn_max_idle_time)
            .with_abs_conn_ttl(Some(target.conn_max_lifetime).filter(|ttl| !ttl.is_zero()));
        let opts = OptsBuilder::default()
            .ip_or_hostname(target.host.clone())
            .tcp_port(target.port)
            .user(target.username.clone())
            .pass(target.password.as_ref().map(|secret| secret.expose().to_string()))
            .db_name(Some(target.database.clone()))
            .prefer_socket(false)
            .init(vec![
                format!("SET NAMES {charset}"),
                "SET time_zone = '+00:00'".to_string(),
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
                "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'"
                    .to_string(),
            ])
            .pool_opts(pool_opts);
        let pool = Pool::new(opts);
        let store = Self {
            pool,
            database: target.database.clone(),
            legacy_zone: options.legacy_zone,
            day_zone: options.day_zone,
        };
        let mut conn = store.conn().await?;
        conn.query_drop("SELECT 1").await.map_err(mysql_error)?;
        Ok(store)
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        tokio::time::timeout(Duration::from_secs(30), self.pool.get_conn())
            .await
            .map_err(|_| StoreError::Unavailable {
                message: "timed out waiting for a mysql connection".into(),
                source: None,
            })?
            .map_err(mysql_error)
    }

    /// Closes the pool's connections.
    pub async fn close(self) -> Result<(), StoreError> {
        self.pool.disconnect().await.map_err(mysql_error)
    }
}

/// Zone of every `DATETIME` once migrated: the sessions run in UTC and v3 converted the legacy
/// values, so the legacy zone only matters to the migration.
const STORED_ZONE: LegacyZone = LegacyZone::Utc;

/// Drops a connection that saw an error instead of returning it to the pool: its session may
/// be unusable (no database selected after a DROP, killed, mid-transaction).
async fn discard(conn: Conn) {
    let _ = conn.disconnect().await;
}

#[async_trait]
impl UsageStore for MysqlStore {
    fn backend(&self) -> &'static str {
        "mysql"
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut conn = self.conn().await?;
        let result = migrate::run(&mut conn, self.legacy_zone, self.day_zone).await;
        if result.is_err() {
            discard(conn).await;
        }
        result
    }

    async fn pending_migrations(&self) -> Result<Vec<u32>, StoreError> {
        let mut conn = self.conn().await?;
        migrate::pending(&mut conn).await
    }

    async fn write_batch(&self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let result = write::write_batch(&mut conn, batch, STORED_ZONE, self.day_zone).await;
        if result.is_err() {
            discard(conn).await;
        }
        result
    }

    async fn list_requests(&self, query: &RequestQuery) -> Result<Page<RequestRow>, StoreError> {
        let mut conn = self.conn().await?;
        read::list_requests(&mut conn, query, STORED_ZONE).await
    }

    async fn get_request(&self, request_id: &str) -> Result<Option<RequestRow>, StoreError> {
        let mut conn = self.conn().await?;
        read::get_request(&mut conn, request_id, STORED_ZONE).await
    }

    async fn scan_requests(
        &self,
        filter: &RequestFilter,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let mut conn = self.conn().await?;
        read::scan_requests(&mut conn, filter, after_id, limit, STORED_ZONE).await
    }

    async fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        let mut conn = self.conn().await?;
        read::stats(&mut conn, query, self.day_zone).await
    }

    async fn summary(&self, query: &SummaryQuery) -> Result<Vec<SummaryRow>, StoreError> {
        let mut conn = self.conn().await?;
        read::summary(&mut conn, query).await
    }

    async fn cleanup(&self, older_than: SystemTime) -> Result<CleanupReport, StoreError> {
        let mut conn = self.conn().await?;
        write::cleanup(&mut conn, older_than, self.day_zone).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tables: Option<i64> = conn
            .query_first(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
                 AND table_name IN ('request_logs', 'usage_summary')",
            )
            .await
            .map_err(mysql_error)?;
        if tables.unwrap_or(0) < 2 {
            return Err(StoreError::Unavailable {
                message: "usage tables missing (not migrated)".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SharedState for MysqlStore {
    async fn load_all(&self) -> Result<Vec<SharedSetting>, StoreError> {
        let mut conn = self.conn().await?;
        let result = shared::load_all(&mut conn).await;
        if result.is_err() {
            discard(conn).await;
        }
        result
    }

    async fn load(&self, scope: &str) -> Result<Option<SharedSetting>, StoreError> {
        let mut conn = self.conn().await?;
        let result = shared::load(&mut conn, scope).await;
        if result.is_err() {
            discard(conn).await;
        }
        result
    }

    async fn apply(
        &self,
        change: &SharedChange,
        expected_version: u64,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let result = shared::apply(&mut conn, change, expected_version).await;
        if result.is_err() {
            discard(conn).await;
        }
        result
    }
}
