//! Giving the space of deleted rows back to the file system: `auto_vacuum = INCREMENTAL`.
//!
//! SQLite keeps the pages of deleted rows in the file's free list; without auto-vacuum the file
//! never shrinks after the retention clean-up. A new database is created in incremental mode;
//! an existing one (every Go-written `usage.db`, every database of an earlier version) is
//! switched by a one-time `VACUUM` at its first migration by this version (start or
//! `cc-forwarder migrate`; docs/storage.md). After a clean-up that deleted rows the free pages
//! are released with `PRAGMA incremental_vacuum`, a chunk per writer job so that batches are
//! written in between. The Go forwarder reads and writes an incremental-mode database as before
//! (the mode is a header flag every SQLite build honours).

use std::time::Instant;

use ccf_store::StoreError;
use rusqlite::Connection;

use crate::convert::sqlite_error;

/// Free pages released per writer job (2048 pages: 8 MiB at the default page size).
pub(crate) const PAGES_PER_STEP: u32 = 2048;

/// `auto_vacuum` values.
pub(crate) const INCREMENTAL: i64 = 2;

/// Asks for incremental auto-vacuum on a connection before anything is created: it takes effect
/// on a new (empty) database and does nothing on an existing one (see [`convert_to_incremental`]).
pub(crate) fn prefer_incremental(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
}

/// `PRAGMA auto_vacuum` of the open database (0 none, 1 full, 2 incremental).
pub(crate) fn auto_vacuum_mode(connection: &Connection) -> Result<i64, StoreError> {
    connection
        .pragma_query_value(None, "auto_vacuum", |row| row.get::<_, i64>(0))
        .map_err(sqlite_error)
}

/// Switches a database without incremental auto-vacuum to it with a one-time `VACUUM` (which
/// rewrites the file: it needs free disk space about the size of the database and the write
/// lock for its duration). Returns whether it converted. A failure (disk full, another process
/// holding the database) is logged and left for the next start: the database works without.
pub(crate) fn convert_to_incremental(connection: &Connection) -> bool {
    match auto_vacuum_mode(connection) {
        Ok(INCREMENTAL) => return false,
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(error = %error.chain(), "cannot read the usage database's auto_vacuum mode");
            return false;
        }
    }
    let started = Instant::now();
    tracing::info!(
        "switching the usage database to incremental auto-vacuum: a one-time VACUUM that \
         rewrites the file (needs free disk space about its size)"
    );
    let result = connection.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
    );
    match result
        .map_err(sqlite_error)
        .and_then(|()| auto_vacuum_mode(connection))
    {
        Ok(INCREMENTAL) => {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "usage database switched to incremental auto-vacuum"
            );
            true
        }
        Ok(mode) => {
            tracing::warn!(
                mode,
                "the usage database kept its auto_vacuum mode after VACUUM; space of deleted \
                 rows stays in the file"
            );
            false
        }
        Err(error) => {
            tracing::warn!(
                error = %error.chain(),
                "cannot switch the usage database to incremental auto-vacuum now (tried again \
                 at the next start); space of deleted rows stays in the file meanwhile"
            );
            false
        }
    }
}

/// Releases up to [`PAGES_PER_STEP`] free pages. Returns the free pages left (0 when done, or
/// when the database is not in incremental mode: nothing to release that way).
pub(crate) fn incremental_step(connection: &Connection) -> Result<u64, StoreError> {
    if auto_vacuum_mode(connection)? != INCREMENTAL {
        return Ok(0);
    }
    // The pragma releases one page per step (each step answers a row): run it to the end.
    let mut statement = connection
        .prepare(&format!("PRAGMA incremental_vacuum({PAGES_PER_STEP})"))
        .map_err(sqlite_error)?;
    let mut steps = statement.query([]).map_err(sqlite_error)?;
    while steps.next().map_err(sqlite_error)?.is_some() {}
    drop(steps);
    drop(statement);
    free_pages(connection)
}

/// `PRAGMA freelist_count`.
pub(crate) fn free_pages(connection: &Connection) -> Result<u64, StoreError> {
    connection
        .pragma_query_value(None, "freelist_count", |row| row.get::<_, i64>(0))
        .map(|pages| pages.max(0) as u64)
        .map_err(sqlite_error)
}
