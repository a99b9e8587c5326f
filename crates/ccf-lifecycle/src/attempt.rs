//! [`Attempt`]: one try of a request on one endpoint.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::millis;

/// One try of a request on one endpoint: the attempt trail shown for every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Endpoint name.
    pub endpoint: String,
    /// Group of the endpoint.
    pub group: String,
    /// When the attempt was sent.
    #[serde(with = "millis::unix")]
    pub started_at: SystemTime,
    /// Time until the upstream answered (headers) or the attempt failed.
    #[serde(with = "millis::duration")]
    pub duration: Duration,
    /// What came of it.
    pub outcome: AttemptOutcome,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The upstream answered with this status.
    Status {
        /// HTTP status code.
        status: u16,
    },
    /// The connection could not be made or broke before the answer.
    ConnectError {
        /// What failed.
        message: String,
    },
    /// No response headers within the response-header timeout.
    HeaderTimeout,
}

impl Attempt {
    /// `started_at` as serialized: Unix milliseconds (0 for a time before 1970).
    pub fn started_at_millis(&self) -> u64 {
        millis::unix_millis(self.started_at)
    }

    /// `duration` as serialized: whole milliseconds, saturating.
    pub fn duration_millis(&self) -> u64 {
        millis::duration_millis(self.duration)
    }
}

impl AttemptOutcome {
    /// The `kind` tag it is serialized with.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptOutcome::Status { .. } => "status",
            AttemptOutcome::ConnectError { .. } => "connect_error",
            AttemptOutcome::HeaderTimeout => "header_timeout",
        }
    }
}
