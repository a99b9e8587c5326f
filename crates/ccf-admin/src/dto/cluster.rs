//! `GET /api/v1/status`'s `cluster` field (and the live stream's `status` event): how this
//! instance's link to the state it shares with the other instances is doing (issue 21,
//! `cluster.redis_url`), from ccf-proxy's `ClusterStatus`. The field is `null` without a link.
//! The address and the last error arrive masked from the link; the address is masked again
//! here, so a password can never reach the wire through it.

use ccf_proxy::cluster::ClusterStatus;
use ccf_proxy::monitoring::rfc3339;
use serde::Serialize;

/// The link to the other instances.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterDto {
    /// What the state is shared through (`redis`).
    backend: &'static str,
    /// The shared store's address, password masked.
    address: String,
    /// Connected now; `false` while the instance routes on its local state.
    connected: bool,
    /// Since when `connected` has its value (RFC 3339, UTC), null when unknown.
    since: Option<String>,
    /// The last error (masked), null when none.
    last_error: Option<String>,
    /// Requests that decided locally because the shared store did not answer in time.
    fallbacks: u64,
    /// Times the connection was made again after a loss.
    reconnects: u64,
    /// Updates sent to the other instances.
    published: u64,
    /// Updates from other instances applied here.
    applied: u64,
    /// Updates dropped while disconnected (outgoing queue full).
    dropped: u64,
}

impl From<&ClusterStatus> for ClusterDto {
    fn from(status: &ClusterStatus) -> Self {
        ClusterDto {
            backend: status.backend,
            address: ccf_config::mask_url_password(&status.address),
            connected: status.connected,
            since: status.since.map(rfc3339),
            last_error: status.last_error.clone(),
            fallbacks: status.fallbacks,
            reconnects: status.reconnects,
            published: status.published,
            applied: status.applied,
            dropped: status.dropped,
        }
    }
}
