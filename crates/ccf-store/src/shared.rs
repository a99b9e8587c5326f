//! Settings shared by several forwarder instances through one database ([`SharedState`]).
//!
//! Operator actions (pauses, activations, priority overrides) made on one instance are written
//! here and read back by every instance using the same database. Each setting is one row keyed by
//! a scope (`group:<name>`, `endpoint:<name>`, `active`) holding a JSON state and a version
//! number; writes are compare-and-set on that version, so no update is lost and a conflicting
//! writer re-reads and retries. What the JSON means is the caller's business (`ccf-app`).

use std::time::SystemTime;

use async_trait::async_trait;

use crate::StoreError;

/// One shared setting as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSetting {
    /// What the setting is about (`group:<name>`, `endpoint:<name>`, `active`).
    pub scope: String,
    /// The state, JSON text.
    pub state: String,
    /// Incremented by every write; the first write of a scope gives 1.
    pub version: u64,
    /// Instance id of the last writer.
    pub updated_by: String,
    /// When it was last written (UTC); `None` if the database holds no readable time.
    pub updated_at: Option<SystemTime>,
}

/// A new state for one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedChange {
    /// The scope written.
    pub scope: String,
    /// The new state, JSON text.
    pub state: String,
    /// Instance id of the writer.
    pub updated_by: String,
}

/// What [`SharedState::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written; the scope now has this version.
    Applied {
        /// The new version.
        version: u64,
    },
    /// The scope's version was not the expected one (another instance wrote first): nothing was
    /// written. Re-read and retry.
    Conflict,
}

/// A table of settings shared by every instance using the same database. Only adapters meant
/// for several instances implement it (MySQL); an SQLite deployment is a single instance.
#[async_trait]
pub trait SharedState: Send + Sync {
    /// Every shared setting.
    async fn load_all(&self) -> Result<Vec<SharedSetting>, StoreError>;

    /// One setting, if it was ever written.
    async fn load(&self, scope: &str) -> Result<Option<SharedSetting>, StoreError>;

    /// Writes `change` if the scope's current version is `expected_version` (0: the scope must
    /// not exist yet). Compare-and-set: a concurrent writer gets [`ApplyOutcome::Conflict`].
    async fn apply(
        &self,
        change: &SharedChange,
        expected_version: u64,
    ) -> Result<ApplyOutcome, StoreError>;
}
