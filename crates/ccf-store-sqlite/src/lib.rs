//! The usage store on SQLite: the default, embedded back-end.
//!
//! This crate owns the SQLite side of [`ccf_store::UsageStore`]: one writer connection owned by
//! a dedicated thread (every request to it travels over a channel, every batch is one
//! transaction; its WAL is checkpointed by a thread of its own, `checkpoint.rs`), a pool of
//! reader connections (up to 8 by default, opened as queries need them) so that dashboard
//! queries never wait behind writes, WAL with `synchronous=NORMAL` and a busy
//! timeout set by real PRAGMAs on every connection, and the versioned migrations embedded in the
//! binary. It opens a `usage.db` written by the Go forwarder and migrates it in place. A
//! database file replaced or deleted while open is noticed and opened again ([`reopen`]); the
//! space of deleted rows is given back with incremental auto-vacuum ([`vacuum`]). It must not be
//! used from outside a tokio runtime's async context; blocking SQLite calls run only on its own
//! threads and on `spawn_blocking`.
//!
//! Main types: [`SqliteStore`], [`SqliteOptions`].

mod checkpoint;
mod convert;
mod migrate;
mod read;
mod reopen;
mod vacuum;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use ccf_store::{
    async_trait, CleanupReport, DayZone, LegacyZone, MigrationReport, Page, RequestFilter,
    RequestQuery, RequestRow, Stats, StatsQuery, StoreError, StoredRecord, SummaryQuery,
    SummaryRow, UsageStore, WritePace,
};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;
pub use crate::checkpoint::{WAL_AUTOCHECKPOINT_PAGES, WRITER_CHECKPOINT_FACTOR};
use crate::convert::{pool_error, sqlite_error};
use crate::reopen::{file_identity, FileIdentity, ReplacementCheck, WriterFile};

/// How [`SqliteStore::open`] opens the database.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    /// Reader connections in the pool, at most (default 8): opened when concurrent queries
    /// need them, and kept.
    pub readers: u32,
    /// `PRAGMA busy_timeout` on every connection (default 5 s).
    pub busy_timeout: Duration,
    /// Zone of zone-less timestamps written by the Go forwarder (default UTC; see
    /// [`LegacyZone::from_config`]).
    pub legacy_zone: LegacyZone,
    /// Zone of the days usage is counted in (`usage_summary.date`, daily and hourly stats;
    /// default the machine's zone, the configured `timezone` in the application).
    pub day_zone: DayZone,
    /// Create the file's parent directories if missing (default true).
    pub create_dirs: bool,
    /// How often, at most, a reader checkout looks whether the file was replaced (one `stat`;
    /// default 1 s; zero: at every checkout).
    pub replacement_check_interval: Duration,
    /// WAL pages past which the checkpoint thread copies the WAL into the database file
    /// (default [`WAL_AUTOCHECKPOINT_PAGES`]); the writer checkpoints itself only past
    /// [`WRITER_CHECKPOINT_FACTOR`] times as many.
    pub wal_checkpoint_pages: i64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 8,
            busy_timeout: Duration::from_secs(5),
            legacy_zone: LegacyZone::Utc,
            day_zone: DayZone::machine(),
            create_dirs: true,
            replacement_check_interval: Duration::from_secs(1),
            wal_checkpoint_pages: WAL_AUTOCHECKPOINT_PAGES,
        }
    }
}

/// PRAGMA values read back from one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPragmas {
    /// `journal_mode` (`wal`).
    pub journal_mode: String,
    /// `synchronous` (1 = NORMAL).
    pub synchronous: i64,
    /// `busy_timeout` in milliseconds.
    pub busy_timeout_ms: i64,
    /// `foreign_keys` (1 = on).
    pub foreign_keys: i64,
    /// `wal_autocheckpoint`, in pages: [`WAL_AUTOCHECKPOINT_PAGES`] on readers (which never
    /// commit), 0 on the writer, whose WAL the checkpoint thread copies (`checkpoint`).
    pub wal_autocheckpoint: i64,
    /// `journal_size_limit`, in bytes ([`WAL_SIZE_LIMIT_BYTES`]).
    pub journal_size_limit: i64,
    /// `temp_store` (0 = SQLite's default, files; 2 = memory): memory on the writer outside
    /// migrations ([`TempStore`]), the default on readers.
    pub temp_store: i64,
}

/// What the WAL file is cut back to after a checkpoint, so the larger checkpoint interval costs
/// disk space only while writes are busy (4 MiB: about the default interval's WAL).
pub const WAL_SIZE_LIMIT_BYTES: i64 = 4 * 1024 * 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

type ReaderPool = r2d2::Pool<SqliteConnectionManager>;

/// The reader pool and the identity of the file the path named just before it was built.
#[derive(Clone)]
struct Readers {
    pool: ReaderPool,
    identity: Option<FileIdentity>,
}

/// A usage store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    readers: RwLock<Readers>,
    pool_size: u32,
    legacy_zone: LegacyZone,
    day_zone: DayZone,
    busy_timeout: Duration,
    /// Identity of the file the writer has open.
    writer_file: Arc<WriterFile>,
    /// Checkpoints the checkpoint thread completed.
    checkpoints: Arc<AtomicU64>,
    /// When the readers look for a replaced file next.
    replacement_check: ReplacementCheck,
    /// One reader-pool rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("legacy_zone", &self.legacy_zone)
            .field("day_zone", &self.day_zone)
            .finish()
    }
}

/// Where a connection keeps its temporary data (`PRAGMA temp_store`): statement journals,
/// sorts and temporary b-trees, `VACUUM`'s copy.
///
/// The writer keeps them in memory while it writes batches. Every statement of a batch
/// transaction that inserts several rows keeps a statement journal of the pages it changes, so
/// that it alone can be undone; SQLite keeps a journal in memory up to 64 KiB, and once one
/// statement of a transaction went past that, the journal became a file in `/var/tmp` written
/// page by page for every later statement. Issue 19: at concurrency 64 those writes were 26,000
/// of the writer's 29,600 `pwrite`s in 2 s. A batch statement changes a few dozen pages at most,
/// so memory bounds them. A migration's statements (a rebuild of the summary tables, the
/// `VACUUM` that switches a file to incremental vacuum) can change every page of a large file:
/// they run with files ([`with_temp_files`]), as do the readers' large sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempStore {
    /// SQLite's default: temporary files.
    Default,
    /// In memory.
    Memory,
}

fn set_temp_store(connection: &Connection, store: TempStore) -> rusqlite::Result<()> {
    let value = match store {
        TempStore::Default => "DEFAULT",
        TempStore::Memory => "MEMORY",
    };
    connection.pragma_update(None, "temp_store", value)
}

/// Opens the writer's connection: [`configure`], temporary data in memory ([`TempStore`]), and
/// its WAL checkpointed by the checkpoint thread instead of in its commits ([`checkpoint`]).
fn configure_writer(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    configure(connection, busy_timeout)?;
    checkpoint::install(connection);
    set_temp_store(connection, TempStore::Memory)
}

/// Runs `job` (a migration) on the writer with temporary data in files, then back in memory
/// ([`TempStore`]).
fn with_temp_files<R>(
    connection: &mut Connection,
    job: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    set_temp_store(connection, TempStore::Default).map_err(sqlite_error)?;
    let result = job(connection);
    let restored = set_temp_store(connection, TempStore::Memory).map_err(sqlite_error);
    // The migration's own error first: it says more than the pragma's.
    let value = result?;
    restored?;
    Ok(value)
}

fn configure(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    connection.busy_timeout(busy_timeout)?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    connection.pragma_update(None, "busy_timeout", busy_timeout.as_millis() as i64)?;
    connection.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    Ok(())
}

/// How a reader job ended on one pool ([`SqliteStore::run_on_reader`]).
enum ReaderRun<R, F> {
    /// The job ran (or the wait for a connection timed out).
    Done(Result<R, StoreError>),
    /// The file was replaced while the job waited for a connection: the job, not run.
    Replaced(F, r2d2::Error),
}

/// How long a query waits for a reader connection at most (all of them busy).
const READER_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// A query's wait for a reader connection is cut into slices of this length, between which it
/// looks whether the file was replaced ([`SqliteStore::run_on_reader`]).
const READER_WAIT_SLICE: Duration = Duration::from_secs(1);

/// Builds the reader pool on `path`, the file `identity` names.
///
/// The pool opens no connection until a query needs one and grows up to `pool_size` as
/// concurrent queries need more; a connection once opened is kept (no idle reaping, no
/// lifetime). Opening all of them at the start, with r2d2's three opener threads, cost about
/// 0.8 MB of anonymous memory at idle (issue 19) for dashboard queries that may never come.
///
/// A pool must never read another file than the one it was built for (a replaced file gets a
/// new pool, see `reopen`), so a connection opened later is checked: the path must still name
/// `identity` once the connection is open, else the open fails; the query that needed it
/// finds the file replaced and moves to a pool built on the new file
/// ([`SqliteStore::on_reader`]). The check is made after the open, so a replacement just
/// before or during it is refused too.
fn build_reader_pool(
    path: &Path,
    identity: Option<FileIdentity>,
    pool_size: u32,
    busy_timeout: Duration,
) -> Result<ReaderPool, StoreError> {
    let checked_path = path.to_path_buf();
    let manager = SqliteConnectionManager::file(path).with_init(move |connection| {
        if file_identity(&checked_path) != identity {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "{}: the usage database file was replaced since this reader pool was built",
                    checked_path.display()
                )),
            ));
        }
        configure(connection, busy_timeout)
    });
    // One thread opens the connections (r2d2's default is three, each an idle thread).
    let opener = scheduled_thread_pool::ScheduledThreadPool::builder()
        .num_threads(1)
        .thread_name_pattern("ccf-sqlite-open-{}")
        .build();
    r2d2::Pool::builder()
        .max_size(pool_size)
        .min_idle(Some(0))
        .max_lifetime(None)
        .idle_timeout(None)
        .connection_timeout(READER_WAIT_LIMIT)
        .thread_pool(Arc::new(opener))
        .build(manager)
        .map_err(pool_error)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`: the writer thread and the reader
    /// pool. Does not migrate: call [`UsageStore::migrate`].
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_path = path.clone();
        let busy_timeout = options.busy_timeout;
        let create_dirs = options.create_dirs;
        let writer_connection = tokio::task::spawn_blocking(move || {
            if create_dirs {
                if let Some(parent) = open_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::unavailable(
                            format!("cannot create directory {}", parent.display()),
                            e,
                        )
                    })?;
                }
            }
            // Name the file: "unable to open database file" alone does not say which one.
            let in_file =
                |error| sqlite_error(error).context(format_args!("{}", open_path.display()));
            let connection = Connection::open(&open_path).map_err(in_file)?;
            // SQLite quietly opens a file it may not write (file modes) read-only, and every
            // record would then fail later: refuse at the start, naming the file.
            if connection.is_readonly(rusqlite::MAIN_DB).map_err(in_file)? {
                return Err(StoreError::ReadOnly {
                    message: format!(
                        "{}: the database file cannot be written (check the permissions of the \
                         file and its folder)",
                        open_path.display()
                    ),
                    source: None,
                });
            }
            // Takes effect on a new file only; existing ones are switched by `migrate`.
            vacuum::prefer_incremental(&connection).map_err(in_file)?;
            configure_writer(&connection, busy_timeout).map_err(in_file)?;
            Ok::<_, StoreError>(connection)
        })
        .await
        .map_err(|e| StoreError::unavailable("sqlite open task failed", e))??;

        let writer_file = Arc::new(WriterFile::new(file_identity(&path)));
        let checkpoints = Arc::new(AtomicU64::new(0));
        let checkpointer = Checkpointer::spawn(
            path.clone(),
            busy_timeout,
            options.wal_checkpoint_pages,
            Arc::clone(&checkpoints),
        )
        .map_err(|e| StoreError::unavailable("cannot start the sqlite checkpoint thread", e))?;
        let (sender, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ccf-sqlite-writer".into())
            .spawn(move || {
                checkpointer.writer_thread_starts();
                let mut connection = writer_connection;
                // Ends when every sender (the store) is dropped; the checkpoint thread with it.
                for job in receiver {
                    job(&mut connection);
                    checkpointer.ask_after_commit();
                }
            })
            .map_err(|e| StoreError::unavailable("cannot start the sqlite writer thread", e))?;

        let pool_size = options.readers.max(1);
        // The identity is taken before the pool opens connections: a replacement in between is
        // seen at the next check.
        let identity = file_identity(&path);
        let pool_path = path.clone();
        let pool = tokio::task::spawn_blocking(move || {
            build_reader_pool(&pool_path, identity, pool_size, busy_timeout)
        })
        .await
        .map_err(|e| StoreError::unavailable("sqlite pool task failed", e))??;

        Ok(Self {
            path,
            writer: sender,
            readers: RwLock::new(Readers { pool, identity }),
            pool_size,
            legacy_zone: options.legacy_zone,
            day_zone: options.day_zone,
            busy_timeout,
            writer_file,
            checkpoints,
            replacement_check: ReplacementCheck::new(options.replacement_check_interval),
            rebuilding: tokio::sync::Mutex::new(()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// WAL checkpoints the checkpoint thread has completed since the store was opened.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// The zone of the days usage is counted in.
    pub fn day_zone(&self) -> DayZone {
        self.day_zone
    }

    /// The zone used for zone-less legacy timestamps.
    pub fn legacy_zone(&self) -> LegacyZone {
        self.legacy_zone
    }

    /// Runs `job` on the writer thread and waits for its answer.
    async fn on_writer<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(job(connection));
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `job` on the writer thread after making sure the writer has the file the path
    /// names open ([`WriterFile::reopen_if_replaced`]).
    async fn on_current_writer<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let path = self.path.clone();
        let busy_timeout = self.busy_timeout;
        let (zone, day_zone) = (self.legacy_zone, self.day_zone);
        let writer_file = Arc::clone(&self.writer_file);
        self.on_writer(move |connection| {
            writer_file.reopen_if_replaced(connection, &path, busy_timeout, zone, day_zone)?;
            job(connection)
        })
        .await
    }

    /// The reader pool, rebuilt first when the path names another file than the pool's, or none
    /// (checked at most once per `replacement_check_interval`). The writer reopens (and
    /// migrates) the new file, or creates a deleted one, before the readers see it.
    async fn current_readers(&self) -> Result<Readers, StoreError> {
        let current = || {
            self.readers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        if !self.replacement_check.due() {
            return Ok(current());
        }
        if file_identity(&self.path) == current().identity {
            return Ok(current());
        }
        let _one_rebuild = self.rebuilding.lock().await;
        if file_identity(&self.path) == current().identity {
            return Ok(current());
        }
        // The writer first: it opens (and migrates) the replacement, or creates the deleted
        // file afresh, so the readers never see an unmigrated file.
        self.on_current_writer(|_| Ok(())).await?;
        let identity = file_identity(&self.path);
        if identity.is_none() {
            return Ok(current());
        }
        let path = self.path.clone();
        let (pool_size, busy_timeout) = (self.pool_size, self.busy_timeout);
        let pool = tokio::task::spawn_blocking(move || {
            build_reader_pool(&path, identity, pool_size, busy_timeout)
        })
        .await
        .map_err(|e| StoreError::unavailable("sqlite pool task failed", e))??;
        tracing::warn!(
            path = %self.path.display(),
            "the usage database file was replaced; readers reopened it"
        );
        let readers = Readers { pool, identity };
        *self.readers.write().unwrap_or_else(PoisonError::into_inner) = readers.clone();
        Ok(readers)
    }

    /// Runs `job` on a pooled reader connection (on the blocking thread pool).
    ///
    /// The wait for a connection is cut into slices. When the file was replaced while the
    /// query waited (the pool may then be unable to open a connection, see
    /// [`build_reader_pool`]), the pool is rebuilt on the new file at once and the job runs
    /// there, instead of waiting the pool's whole timeout; dropping the old pool also ends its
    /// attempts to open the path.
    async fn on_reader<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, LegacyZone) -> Result<R, StoreError> + Send + 'static,
    {
        let readers = self.current_readers().await?;
        let job = match self.run_on_reader(readers, job).await? {
            ReaderRun::Done(result) => return result,
            ReaderRun::Replaced(job, _) => job,
        };
        self.replacement_check.expire();
        let readers = self.current_readers().await?;
        match self.run_on_reader(readers, job).await? {
            ReaderRun::Done(result) => result,
            ReaderRun::Replaced(_, error) => Err(StoreError::unavailable(
                format!(
                    "{}: the usage database file was replaced again while this query waited \
                     for a reader",
                    self.path.display()
                ),
                error,
            )),
        }
    }

    /// [`SqliteStore::on_reader`] on one pool: the job's result, or the job back when the file
    /// was replaced while it waited for a connection.
    async fn run_on_reader<R, F>(
        &self,
        readers: Readers,
        job: F,
    ) -> Result<ReaderRun<R, F>, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, LegacyZone) -> Result<R, StoreError> + Send + 'static,
    {
        let Readers { pool, identity } = readers;
        let zone = self.legacy_zone;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut waited = Duration::ZERO;
            loop {
                match pool.get_timeout(READER_WAIT_SLICE) {
                    Ok(connection) => return ReaderRun::Done(job(&connection, zone)),
                    Err(error) => {
                        waited += READER_WAIT_SLICE;
                        if file_identity(&path) != identity {
                            return ReaderRun::Replaced(job, error);
                        }
                        if waited >= READER_WAIT_LIMIT {
                            return ReaderRun::Done(Err(pool_error(error)));
                        }
                    }
                }
            }
        })
        .await
        .map_err(|e| StoreError::unavailable("sqlite reader task failed", e))
    }

    /// Gives the free pages (left by deleted rows) back to the file system with
    /// `PRAGMA incremental_vacuum`, one chunk per writer job so that batches are written in
    /// between. Does nothing on a database not yet switched to incremental auto-vacuum.
    async fn release_free_pages(&self) -> Result<(), StoreError> {
        let (mode, before) = self
            .on_writer(|c| Ok((vacuum::auto_vacuum_mode(c)?, vacuum::free_pages(c)?)))
            .await?;
        if mode != vacuum::INCREMENTAL || before == 0 {
            return Ok(());
        }
        let mut left = before;
        // Bounded: each step releases PAGES_PER_STEP pages, or there is nothing left to do.
        for _ in 0..=before / u64::from(vacuum::PAGES_PER_STEP) + 1 {
            left = self.on_writer(|c| vacuum::incremental_step(c)).await?;
            if left == 0 {
                break;
            }
        }
        tracing::info!(
            pages_released = before.saturating_sub(left),
            pages_free = left,
            "usage database space of deleted rows released (incremental vacuum)"
        );
        Ok(())
    }

    /// `PRAGMA auto_vacuum` of the database (0 none, 1 full, 2 incremental).
    pub async fn auto_vacuum_mode(&self) -> Result<i64, StoreError> {
        self.on_writer(|c| vacuum::auto_vacuum_mode(c)).await
    }

    /// The PRAGMAs in force on the writer connection and on a reader connection.
    pub async fn pragmas(&self) -> Result<(ConnectionPragmas, ConnectionPragmas), StoreError> {
        let writer = self.on_writer(|c| read_pragmas(c)).await?;
        let reader = self.on_reader(|c, _| read_pragmas(c)).await?;
        Ok((writer, reader))
    }
}

fn read_pragmas(connection: &Connection) -> Result<ConnectionPragmas, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> {
        connection
            .pragma_query_value(None, name, |row| row.get::<_, String>(0))
            .map_err(sqlite_error)
    };
    let number = |name: &str| -> Result<i64, StoreError> {
        connection
            .pragma_query_value(None, name, |row| row.get::<_, i64>(0))
            .map_err(sqlite_error)
    };
    Ok(ConnectionPragmas {
        journal_mode: text("journal_mode")?,
        synchronous: number("synchronous")?,
        busy_timeout_ms: number("busy_timeout")?,
        foreign_keys: number("foreign_keys")?,
        wal_autocheckpoint: number("wal_autocheckpoint")?,
        journal_size_limit: number("journal_size_limit")?,
        temp_store: number("temp_store")?,
    })
}

#[async_trait]
impl UsageStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let zone = self.legacy_zone;
        let day_zone = self.day_zone;
        self.on_current_writer(move |connection| {
            with_temp_files(connection, |connection| {
                let report = migrate::run(connection, zone, day_zone)?;
                // Documented moment of the one-time switch (docs/storage.md): right after the
                // schema migrations, before the first batch.
                vacuum::convert_to_incremental(connection);
                Ok(report)
            })
        })
        .await
    }

    async fn pending_migrations(&self) -> Result<Vec<u32>, StoreError> {
        self.on_reader(|connection, _| migrate::pending(connection))
            .await
    }

    async fn write_batch(&self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_shared(Arc::new(batch.to_vec()), WritePace::CatchUp)
            .await
    }

    /// The batch goes to the writer thread as it is shared, without a copy of its records;
    /// [`WritePace::GiveWay`] makes the writer offer its core after every multi-row insert.
    async fn write_shared(
        &self,
        batch: ccf_store::SharedBatch,
        pace: WritePace,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let zone = self.legacy_zone;
        let day_zone = self.day_zone;
        self.on_current_writer(move |connection| {
            write::write_batch(connection, &batch, zone, day_zone, pace)
        })
        .await
    }

    async fn list_requests(&self, query: &RequestQuery) -> Result<Page<RequestRow>, StoreError> {
        let query = query.clone();
        self.on_reader(move |connection, zone| read::list_requests(connection, &query, zone))
            .await
    }

    async fn get_request(&self, request_id: &str) -> Result<Option<RequestRow>, StoreError> {
        let request_id = request_id.to_string();
        self.on_reader(move |connection, zone| read::get_request(connection, &request_id, zone))
            .await
    }

    async fn scan_requests(
        &self,
        filter: &RequestFilter,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let filter = filter.clone();
        self.on_reader(move |connection, zone| {
            read::scan_requests(connection, &filter, after_id, limit, zone)
        })
        .await
    }

    async fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        let query = query.clone();
        let day_zone = self.day_zone;
        self.on_reader(move |connection, _| read::stats(connection, &query, day_zone))
            .await
    }

    async fn summary(&self, query: &SummaryQuery) -> Result<Vec<SummaryRow>, StoreError> {
        let query = query.clone();
        self.on_reader(move |connection, _| read::summary(connection, &query))
            .await
    }

    async fn cleanup(&self, older_than: SystemTime) -> Result<CleanupReport, StoreError> {
        // One chunk per writer job, so that batches are written between chunks.
        let mut report = CleanupReport::default();
        loop {
            let deleted = self
                .on_current_writer(move |connection| {
                    write::delete_requests_chunk(connection, older_than)
                })
                .await?;
            report.requests_deleted += deleted;
            if deleted < write::CLEANUP_CHUNK {
                break;
            }
        }
        let day_zone = self.day_zone;
        report.summary_rows_deleted = self
            .on_current_writer(move |connection| {
                write::delete_summary(connection, older_than, day_zone)
            })
            .await?;
        if report.requests_deleted > 0 || report.summary_rows_deleted > 0 {
            self.release_free_pages().await?;
        }
        Ok(report)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.on_writer(|connection| {
            connection
                .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .map_err(sqlite_error)
        })
        .await?;
        let tables = self
            .on_reader(|connection, _| {
                connection
                    .query_row(
                        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' \
                         AND name IN ('request_logs', 'usage_summary')",
                        [],
                        |row| row.get::<_, i64>(0),
                    )
                    .map_err(sqlite_error)
            })
            .await?;
        if tables < 2 {
            return Err(StoreError::Unavailable {
                message: "usage tables missing (not migrated)".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file at `path` whose `marker` table holds `text`.
    fn database_with_marker(path: &Path, text: &str) {
        let connection = Connection::open(path).expect("open");
        connection
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE marker (text TEXT);")
            .expect("schema");
        connection
            .execute("INSERT INTO marker (text) VALUES (?1)", [text])
            .expect("insert");
    }

    fn marker(connection: &Connection) -> String {
        connection
            .query_row("SELECT text FROM marker", [], |row| row.get(0))
            .expect("marker")
    }

    /// A database whose marker reads `text` in a temporary folder, and a pool of up to four
    /// readers on it.
    fn pool_on(text: &str) -> (tempfile::TempDir, PathBuf, ReaderPool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usage.db");
        database_with_marker(&path, text);
        let pool = build_reader_pool(&path, file_identity(&path), 4, Duration::from_secs(5))
            .expect("pool");
        (dir, path, pool)
    }

    #[test]
    fn the_reader_pool_opens_connections_only_as_queries_need_them() {
        let (_dir, _path, pool) = pool_on("first");
        assert_eq!(pool.state().connections, 0, "no connection before a query");

        let first = pool.get().expect("first reader");
        let second = pool.get().expect("second reader");
        assert_eq!(marker(&first), "first");
        assert_eq!(marker(&second), "first");
        assert_eq!(
            pool.state().connections,
            2,
            "a second one for a concurrent query"
        );
        drop((first, second));
        assert_eq!(
            pool.state().idle_connections,
            2,
            "connections once opened are kept"
        );
    }

    #[test]
    fn a_reader_opened_after_the_file_was_replaced_is_refused() {
        let (dir, path, pool) = pool_on("old");
        let held = pool
            .get()
            .expect("a reader on the file the pool was built for");
        assert_eq!(marker(&held), "old");

        let replacement = dir.path().join("replacement.db");
        database_with_marker(&replacement, "new");
        std::fs::rename(&replacement, &path).expect("replace the file");

        // The pool would have to open a second connection: on the new file, it must not.
        let error = match pool.get_timeout(Duration::from_millis(500)) {
            Ok(connection) => panic!(
                "a reader on the replacing file was handed out (it reads {:?})",
                marker(&connection)
            ),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("was replaced"), "{error}");
        assert_eq!(marker(&held), "old", "the pool keeps reading its own file");
        assert_eq!(pool.state().connections, 1);
    }

    #[tokio::test]
    async fn a_query_that_needs_a_reader_after_an_unnoticed_replacement_reads_the_new_file() {
        use ccf_store::contract::{at_ms, outcome, tokens, write};
        use ccf_store::status;

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usage.db");
        let options = SqliteOptions {
            replacement_check_interval: Duration::from_secs(3600),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&path, options.clone())
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        // The first checkout's check is spent: the next one is an hour away.
        assert!(store.replacement_check.due());

        // A backup with one row (one self-contained file: `VACUUM INTO`) is moved over the file.
        let source = dir.path().join("source.db");
        let replacement = dir.path().join("replacement.db");
        {
            let backup = SqliteStore::open(&source, options)
                .await
                .expect("open backup");
            backup.migrate().await.expect("migrate backup");
            let record = outcome(
                "req-restored",
                at_ms(1),
                status::COMPLETED,
                "claude-haiku-4-5",
                "a",
                "g",
                tokens(10, 1),
                5,
            );
            write(&backup, vec![record]).await;
            Connection::open(&source)
                .expect("open the source")
                .execute("VACUUM INTO ?1", [replacement.to_string_lossy()])
                .expect("VACUUM INTO");
        }
        std::fs::rename(&replacement, &path).expect("replace the file");

        // No reader was open yet: the query needs one, which the old pool may not open on the
        // new file. The query finds the file replaced after one wait slice and reads the new
        // file through a new pool, instead of failing or waiting the whole timeout.
        let row = store
            .get_request("req-restored")
            .await
            .expect("the query is answered from the new file");
        assert_eq!(
            row.map(|row| row.record.request_id).as_deref(),
            Some("req-restored"),
            "the new file's row is read (the old file has none)"
        );
        let readers = store.readers.read().expect("readers").identity;
        assert_eq!(readers, file_identity(&path), "the pool is on the new file");
    }
}
