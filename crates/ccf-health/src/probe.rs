//! The injected probe: one `GET` against one endpoint, and what it returned.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ccf_config::Endpoint;

/// Sends one probe request.
///
/// Implemented by the forwarding engine with its pooled client: `GET endpoint.url + path` with the
/// endpoint's credentials, custom headers and `anthropic-version`, bounded by `timeout`. This crate
/// never speaks HTTP itself, so it can be tested with a scripted prober and reused with any client.
///
/// The monitor additionally bounds every probe by `timeout` on its own side, so a prober that
/// ignores the timeout cannot stall a health round.
pub trait Prober: Send + Sync + 'static {
    /// Probes `path` on `endpoint`, giving up after `timeout`.
    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        path: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;
}

/// What one probe returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The endpoint answered with an HTTP status (any status).
    Status {
        /// The HTTP status code.
        status: u16,
        /// Time until the response head arrived.
        latency: Duration,
    },
    /// No answer: connect error, TLS error or timeout.
    Failed {
        /// What went wrong, for people (logs, admin API).
        error: String,
        /// Time until the failure was noticed.
        latency: Duration,
    },
}

impl ProbeOutcome {
    /// The measured latency, whatever the outcome.
    pub fn latency(&self) -> Duration {
        match self {
            ProbeOutcome::Status { latency, .. } | ProbeOutcome::Failed { latency, .. } => *latency,
        }
    }

    /// The HTTP status, if the endpoint answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProbeOutcome::Status { status, .. } => Some(*status),
            ProbeOutcome::Failed { .. } => None,
        }
    }

    /// The health-check rule: healthy iff the endpoint answered 2xx.
    ///
    /// 4xx is *not* healthy here: a 401 on the health path means the configured credentials are
    /// rejected, and routing real requests there would fail the same way.
    pub fn is_healthy(&self) -> bool {
        self.status()
            .is_some_and(|status| (200..300).contains(&status))
    }

    /// The fast-test rule: reachable iff the endpoint answered 2xx or 4xx (the probe path may need
    /// different auth than real requests; what matters is that the endpoint answers, and how fast).
    pub fn is_reachable(&self) -> bool {
        self.status()
            .is_some_and(|status| (200..300).contains(&status) || (400..500).contains(&status))
    }

    /// Why this outcome is not healthy, or `None` if it is.
    pub(crate) fn failure_reason(&self) -> Option<String> {
        match self {
            _ if self.is_healthy() => None,
            ProbeOutcome::Status { status, .. } => {
                Some(format!("health probe answered status {status}"))
            }
            ProbeOutcome::Failed { error, .. } => Some(error.clone()),
        }
    }
}
