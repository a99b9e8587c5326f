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
