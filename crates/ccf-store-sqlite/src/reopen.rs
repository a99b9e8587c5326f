//! Noticing that the database file was deleted or replaced while open, and opening it again.
//!
//! An open SQLite connection keeps the file it opened, even after the path names another one:
//! an operator restores a backup with `mv backup.db usage.db`, the Go tool replaces the file, a
//! clean-up job deletes it. Without this module the writer would write into an unlinked file
//! (lost at exit) and the readers would show the old file's rows until the pool retired them
//! (30 minutes). The path's identity — (device, inode) — is compared with the one recorded when
//! the connections were opened:
//!
//! - the writer, before every write, migration and clean-up ([`WriterFile::reopen_if_replaced`]);
//! - the reader pool, at checkout at most once per [`ReplacementCheck`] interval (one `stat`),
//!   rebuilt on a change after the writer has reopened (and migrated) the new file.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ccf_store::{DayZone, LegacyZone, StoreError};
use rusqlite::Connection;

use crate::convert::sqlite_error;
use crate::{configure_writer, migrate, with_temp_files};

/// (device, inode) of a file.
pub(crate) type FileIdentity = (u64, u64);

/// Which file a path names right now: (device, inode), `None` if there is none.
pub(crate) fn file_identity(path: &Path) -> Option<FileIdentity> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Some((0, 0))
    }
}

/// The identity of the file the writer connection has open (`None`: no file, e.g. in-memory).
#[derive(Debug)]
pub(crate) struct WriterFile {
    opened: Mutex<Option<FileIdentity>>,
}

impl WriterFile {
    /// The writer opened the file `identity` names.
    pub(crate) fn new(identity: Option<FileIdentity>) -> Self {
        Self {
            opened: Mutex::new(identity),
        }
    }

    /// The database file was deleted or replaced while open: opens the path again (creating and
    /// migrating a fresh database if it is gone, migrating the replacement if it is an older
    /// one), so every later batch lands in the file the path names. If the path cannot be
    /// opened, the error makes the recorder keep the batch and report itself unhealthy.
    pub(crate) fn reopen_if_replaced(
        &self,
        connection: &mut Connection,
        path: &Path,
        busy_timeout: Duration,
        zone: LegacyZone,
        day_zone: DayZone,
    ) -> Result<(), StoreError> {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        let now = file_identity(path);
        if opened.is_none() || now == *opened {
            return Ok(());
        }
        if now.is_none() {
            tracing::error!(
                path = %path.display(),
                "the usage database file was deleted while open; creating it again"
            );
        } else {
            tracing::warn!(
                path = %path.display(),
                "the usage database file was replaced while open; opening the new file"
            );
        }
        remove_stale_wal(path);
        let mut fresh = Connection::open(path).map_err(sqlite_error)?;
        crate::vacuum::prefer_incremental(&fresh).map_err(sqlite_error)?;
        configure_writer(&fresh, busy_timeout).map_err(sqlite_error)?;
        with_temp_files(&mut fresh, |fresh| migrate::run(fresh, zone, day_zone))?;
        *connection = fresh;
        *opened = file_identity(path);
        Ok(())
    }
}

/// Removes `<path>-wal` and `<path>-shm` after the database file was replaced or deleted: they
/// belong to the file this process had open (a replacement brings no WAL of its own — a backup
/// made with `.backup` or `VACUUM INTO` is one file), and SQLite pairs them with a database by
/// name only, so the new (or recreated) file would be read through the old file's pages. Our old connections keep the
/// unlinked files open; SQLite neither checkpoints nor deletes a moved database's WAL on close.
fn remove_stale_wal(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => tracing::info!(file = ?name, "removed the replaced database's WAL file"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(file = ?name, %error, "cannot remove the replaced database's WAL file")
            }
        }
    }
}

/// Rate limit of the readers' replacement check: at most one `stat` per interval.
#[derive(Debug)]
pub(crate) struct ReplacementCheck {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl ReplacementCheck {
    /// Checks at most once per `interval` (zero: at every checkout).
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Makes the next check due at once (a query found the file replaced).
    pub(crate) fn expire(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether a check is due now; if so, the next one is due `interval` later.
    pub(crate) fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}
