//! WAL checkpoints on a thread of their own, so the writer never stops writing rows to copy the
//! WAL into the database file.
//!
//! SQLite's automatic checkpoint runs on the connection that committed, inside its commit: with
//! `wal_autocheckpoint` at [`WAL_AUTOCHECKPOINT_PAGES`], every so often one batch's commit copied
//! some 6,000 pages from the WAL into the database file and synced it. At concurrency 64 the
//! writer stood still for that long, the recorder's backlog went past `buffer_size`, and
//! 1,000-2,000 records moved to the journal every second or two: serialised to JSON, synced,
//! read back and parsed before they were written, work that cost 2-6 µs of CPU per request on
//! the two cores the requests need (issue 19, part 11).
//!
//! Here the writer connection's commit hook ([`install`]) only notes how many pages the WAL
//! holds; past [`SqliteOptions::wal_checkpoint_pages`](crate::SqliteOptions) the writer thread
//! asks the checkpoint thread ([`Checkpointer`]), which runs a `PASSIVE` checkpoint on a
//! connection of its own. A passive checkpoint takes no lock a writer needs: the writer goes on
//! committing batches meanwhile, and each later request copies only the frames committed since.
//! Once a checkpoint has copied the whole WAL, the writer's next transaction starts the WAL over
//! from its beginning, as after SQLite's own checkpoints.
//!
//! The writer still checkpoints itself when the WAL holds [`WRITER_CHECKPOINT_FACTOR`] times the
//! interval (the checkpoint thread could not keep up, or could not open the file): the WAL stays
//! bounded whatever happens to the thread.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::hooks::{CheckpointMode, Wal};
use rusqlite::{Connection, OpenFlags};

use crate::reopen::{file_identity, FileIdentity};

/// WAL pages past which the checkpoint thread copies the WAL into the database (SQLite's default
/// automatic interval: 1,000).
///
/// While request ids were random, a usage row dirtied a random leaf of the `request_id` index,
/// so with the default the writer checkpointed after every transaction or two under load and
/// copied the same index pages again each time, and at concurrency 64 the recorder fell behind
/// the proxy (ids now count up per thread, `RequestId::generate`; the interval was measured
/// before that). Issue 19, 15-20 s runs at 9,000-13,000 requests/s (noisy: the rate differs run
/// to run): the most records behind during a run was 11,889-50,633 with the default and
/// 5,286-24,299 with 10,000 pages.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// The writer checkpoints itself once the WAL holds this many times the interval.
pub const WRITER_CHECKPOINT_FACTOR: i64 = 4;

thread_local! {
    /// Pages in the WAL after this thread's connection's latest commit (0: no commit since the
    /// writer last looked).
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
    /// WAL pages at which the commit hook checkpoints on the committing connection itself.
    static WRITER_CHECKPOINT_AT: Cell<c_int> = const { Cell::new(c_int::MAX) };
}

/// Replaces SQLite's automatic checkpoint on the writer connection by a commit hook that notes
/// the WAL's size for the writer thread ([`Checkpointer::ask_after_commit`]).
/// `PRAGMA wal_autocheckpoint` then reads 0 on the writer.
pub(crate) fn install(connection: &Connection) {
    connection.wal_hook(Some(note_commit));
}

/// The commit hook: notes the WAL's size; checkpoints here only when the WAL is far past the
/// interval. Always `Ok`: the transaction is committed whatever a checkpoint does, and an error
/// here would be reported as the commit's.
fn note_commit(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    if pages >= WRITER_CHECKPOINT_AT.get() {
        match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
            Ok((log, copied)) => tracing::debug!(
                log,
                copied,
                "the WAL outgrew the checkpoint thread: checkpointed on the writer"
            ),
            Err(error) => tracing::debug!(%error, "checkpoint on the writer failed"),
        }
    }
    Ok(())
}

/// The handle of the checkpoint thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    asks: mpsc::SyncSender<()>,
    /// WAL pages past which a checkpoint is asked for.
    interval: i64,
}

impl Checkpointer {
    /// Starts the thread (`ccf-sqlite-checkpoint`). It opens its connection at the first
    /// checkpoint, and again when the path names another file (the writer reopens a replaced
    /// file, `reopen`). A checkpoint is asked for past `interval` WAL pages; completed ones are
    /// counted in `done`.
    pub(crate) fn spawn(
        path: PathBuf,
        busy_timeout: Duration,
        interval: i64,
        done: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        // One ask waiting is enough: a checkpoint copies whatever the WAL holds when it starts.
        let (asks, asked) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("ccf-sqlite-checkpoint".into())
            .spawn(move || {
                let mut connection = None;
                while asked.recv().is_ok() {
                    if checkpoint(&path, busy_timeout, &mut connection) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(Self {
            asks,
            interval: interval.max(1),
        })
    }

    /// Sets up the writer thread: past the interval ([`Self::ask_after_commit`]) the checkpoint
    /// thread is asked; past [`WRITER_CHECKPOINT_FACTOR`] times as many the writer checkpoints
    /// itself.
    pub(crate) fn writer_thread_starts(&self) {
        let at = self.interval.saturating_mul(WRITER_CHECKPOINT_FACTOR);
        WRITER_CHECKPOINT_AT.set(c_int::try_from(at).unwrap_or(c_int::MAX));
    }

    /// After a writer job: asks for a checkpoint, unless one is already asked for, when a commit
    /// of the job left at least the interval's pages in the WAL.
    pub(crate) fn ask_after_commit(&self) {
        let pages = WAL_PAGES.take();
        if pages > 0 && i64::from(pages) >= self.interval {
            let _ = self.asks.try_send(());
        }
    }
}

/// One passive checkpoint on `connection`, opened first if there is none or the path names
/// another file. Whether it ran; a failure is logged (the writer's own checkpoint is the
/// fallback).
fn checkpoint(
    path: &Path,
    busy_timeout: Duration,
    connection: &mut Option<(Connection, FileIdentity)>,
) -> bool {
    let Some(identity) = file_identity(path) else {
        // Deleted: the writer creates it again; never create it here.
        return false;
    };
    // A connection to a file the path no longer names is closed first.
    let kept = connection.take().filter(|(_, opened)| *opened == identity);
    let (connection, _) = match kept {
        Some(kept) => connection.insert(kept),
        None => match open(path, busy_timeout) {
            Ok(opened) => connection.insert((opened, identity)),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot open the usage database to checkpoint its WAL");
                return false;
            }
        },
    };
    match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    }) {
        Ok((log, copied)) => {
            tracing::trace!(log, copied, "WAL checkpointed");
            true
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "WAL checkpoint failed");
            false
        }
    }
}

/// The checkpoint thread's connection: the file must exist (never created here).
fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    crate::configure(&connection, busy_timeout)?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages the WAL file holds (its header aside), read from its size.
    fn wal_pages(database: &Path, page_size: u64) -> u64 {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let bytes = std::fs::metadata(PathBuf::from(wal)).map_or(0, |meta| meta.len());
        // Each frame is a 24-byte header and a page.
        bytes.saturating_sub(32) / (page_size + 24)
    }

    /// The checkpoint thread is never asked (as when it cannot keep up or open the file): the
    /// writer's commit hook copies the WAL into the file itself once it holds four times the
    /// interval, so the WAL stays bounded.
    #[test]
    fn the_writer_checkpoints_itself_when_the_wal_outgrows_four_intervals() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("usage.db");
        let interval = 8;
        let done = Arc::new(AtomicU64::new(0));
        let checkpointer =
            Checkpointer::spawn(path.clone(), Duration::from_secs(1), interval, done.clone())
                .expect("checkpoint thread");
        let connection = Connection::open(&path).expect("open");
        crate::configure(&connection, Duration::from_secs(1)).expect("configure");
        install(&connection);
        checkpointer.writer_thread_starts();
        connection
            .execute_batch("CREATE TABLE rows (body BLOB)")
            .expect("table");
        let page_size: i64 = connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .expect("page size");
        let file_before = std::fs::metadata(&path).expect("file").len();
        let mut most_pages = 0;
        for _ in 0..200 {
            // One transaction per row, each a page or more.
            connection
                .execute("INSERT INTO rows VALUES (zeroblob(?1))", [page_size])
                .expect("insert");
            most_pages = most_pages.max(wal_pages(&path, page_size as u64));
        }
        assert_eq!(
            done.load(Ordering::Relaxed),
            0,
            "the thread was never asked"
        );
        let file_after = std::fs::metadata(&path).expect("file").len();
        assert!(
            file_after >= file_before + 100 * page_size as u64,
            "the rows were copied into the file: {file_before} -> {file_after} bytes"
        );
        let bound = u64::try_from(interval * WRITER_CHECKPOINT_FACTOR).unwrap_or(u64::MAX) + 8;
        assert!(
            most_pages <= bound,
            "the WAL stayed bounded: {most_pages} pages at most, against {bound}"
        );
    }
}
