//! [`StoreError`]: what can go wrong talking to a usage database, classified so that the recorder
//! knows what to retry.

use std::error::Error as StdError;

/// A boxed underlying cause (driver error, IO error).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error from a [`UsageStore`](crate::UsageStore) or the recorder.
///
/// The variants separate conditions that go away by themselves (the database is unreachable,
/// locked, read-only or full: retry later, keep the records) from conditions that retrying cannot
/// fix (bad input, a failed migration, corrupt data).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or opened (server down, connection dropped, file missing).
    #[error("usage database unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The database is locked or busy (SQLite `SQLITE_BUSY`/`SQLITE_LOCKED`, MySQL lock wait
    /// timeout or deadlock).
    #[error("usage database locked: {message}")]
    Locked {
        /// What failed.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The database refuses writes (read-only file or file system, read-only server, disk full).
    #[error("usage database read-only or full: {message}")]
    ReadOnly {
        /// What failed.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// A value the caller gave cannot be stored or queried (bad filter, out-of-range number).
    #[error("invalid usage store input: {0}")]
    InvalidInput(String),
    /// A schema migration failed.
    #[error("usage database migration {version} ({name}) failed")]
    Migration {
        /// Migration version.
        version: u32,
        /// Migration name.
        name: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The database returned something this code cannot interpret, or rejected a statement for a
    /// reason that is not transient.
    #[error("usage database error: {message}")]
    Database {
        /// What failed.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Writing an export to its sink failed.
    #[error("usage export sink failed")]
    Sink(#[source] std::io::Error),
    /// The store has been shut down.
    #[error("usage store closed")]
    Closed,
}

impl StoreError {
    /// Whether retrying later can succeed: the database was unavailable, locked, read-only or
    /// full, or the store was being restarted.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. }
                | StoreError::Locked { .. }
                | StoreError::ReadOnly { .. }
        )
    }

    /// Prefixes the message with where it happened (e.g. the database file), keeping the kind,
    /// so an operator reading "unable to open database file" also learns which file.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        match &mut self {
            StoreError::Unavailable { message, .. }
            | StoreError::Locked { message, .. }
            | StoreError::ReadOnly { message, .. }
            | StoreError::Database { message, .. } => *message = format!("{context}: {message}"),
            StoreError::InvalidInput(message) => *message = format!("{context}: {message}"),
            StoreError::Migration { .. } | StoreError::Sink(_) | StoreError::Closed => {}
        }
        self
    }

    /// Builds [`StoreError::Unavailable`].
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds [`StoreError::Locked`].
    pub fn locked(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Locked {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds [`StoreError::ReadOnly`].
    pub fn read_only(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::ReadOnly {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds [`StoreError::Database`].
    pub fn database(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Database {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message with every source appended, for logs and `last_error`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}
