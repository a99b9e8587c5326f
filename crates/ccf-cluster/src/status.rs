//! [`LinkState`]: whether this instance is linked to Redis now, since when, the last error, and
//! the link's counters; what `ClusterLink::status` reports and what the writer waits on.
//!
//! Only the connection supervisor (`subscriber.rs`) moves the link up or down, so the two log
//! lines of an outage ("unreachable", "reachable again") are written once each, never per
//! request or per failed command. Every error text that goes into the status or a log is
//! passed through [`LinkState::mask`] first: the URL's password never leaves this module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use ccf_proxy::cluster::ClusterStatus;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::wire::unix_ms;

/// The link's state and counters (shared by the link, the writer and the supervisor).
#[derive(Debug)]
pub(crate) struct LinkState {
    /// The server's address, password masked.
    address: String,
    /// The URL's password as written and percent-decoded, swept from every error text.
    secrets: Vec<String>,
    inner: Mutex<Inner>,
    /// `true` while linked; the writer waits on it.
    connected: watch::Sender<bool>,
    /// Requests that decided locally because Redis did not answer in time.
    pub(crate) fallbacks: AtomicU64,
    /// Connections made again after a loss.
    pub(crate) reconnects: AtomicU64,
    /// Updates written and published.
    pub(crate) published: AtomicU64,
    /// Other instances' updates applied here.
    pub(crate) applied: AtomicU64,
    /// Messages on the channels that could not be read (garbled, unknown kinds).
    pub(crate) ignored: AtomicU64,
    /// Until when (unix ms) requests decide locally without asking the shared counters: set by
    /// a fallback while connected (Redis answered too slowly or failed), see
    /// [`LinkState::fall_back`].
    cooling_until_ms: AtomicU64,
}

/// How long requests stop asking the shared counters after one did not get an answer in time.
/// A slow Redis then costs one `cluster.redis_timeout` wait per this period and instance, not
/// one per request; meanwhile each instance enforces the key limits alone (at most N times a
/// limit across N instances, for this long).
pub(crate) const FALLBACK_COOL_OFF: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct Inner {
    since: SystemTime,
    last_error: Option<String>,
    ever_connected: bool,
    /// The current outage was logged.
    outage_logged: bool,
}

impl LinkState {
    /// Disconnected, as of now.
    pub(crate) fn new(address: String, secrets: Vec<String>) -> LinkState {
        LinkState {
            address,
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            inner: Mutex::new(Inner {
                since: SystemTime::now(),
                last_error: None,
                ever_connected: false,
                outage_logged: false,
            }),
            connected: watch::channel(false).0,
            fallbacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            cooling_until_ms: AtomicU64::new(0),
        }
    }

    /// A request decided locally: counted, and when the link is up (so the shared counters
    /// were asked and did not answer in time) requests stop asking them for
    /// [`FALLBACK_COOL_OFF`]. A fallback during a cool-off does not extend it, so the counters
    /// are asked again when it ends.
    pub(crate) fn fall_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if !self.is_connected() {
            return;
        }
        let now = SystemTime::now();
        let until = unix_ms(now + FALLBACK_COOL_OFF);
        let now = unix_ms(now);
        let _ =
            self.cooling_until_ms
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                    (current <= now).then_some(until)
                });
    }

    /// The end of the current cool-off, unix ms (0: none yet).
    #[cfg(test)]
    pub(crate) fn cooling_until_for_tests(&self) -> u64 {
        self.cooling_until_ms.load(Ordering::Acquire)
    }

    /// Whether requests decide locally now after a recent fallback (see
    /// [`LinkState::fall_back`]).
    pub(crate) fn cooling_off(&self) -> bool {
        unix_ms(SystemTime::now()) < self.cooling_until_ms.load(Ordering::Acquire)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's address, password masked.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// `text` with the URL's password replaced by `***`.
    pub(crate) fn mask(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }

    /// Linked now.
    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Follows [`LinkState::is_connected`].
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// The link is up (connected, subscribed and reconciled).
    pub(crate) fn up(&self) {
        let mut inner = self.inner();
        if self.is_connected() {
            return;
        }
        inner.since = SystemTime::now();
        if inner.ever_connected {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            info!(address = %self.address, "cluster: Redis reachable again, sharing state");
        } else {
            info!(address = %self.address, "cluster: connected to Redis, sharing state");
        }
        inner.ever_connected = true;
        inner.outage_logged = false;
        self.connected.send_replace(true);
    }

    /// The link is down because of `error`: logged once per outage.
    pub(crate) fn down(&self, error: &str) {
        let error = self.mask(error);
        let mut inner = self.inner();
        if self.is_connected() {
            inner.since = SystemTime::now();
            self.connected.send_replace(false);
        }
        if !inner.outage_logged {
            warn!(address = %self.address, "cluster: Redis unreachable, routing on local state: {error}");
            inner.outage_logged = true;
        }
        inner.last_error = Some(error);
    }

    /// The link was closed on purpose (shutdown): down, without an outage to report.
    pub(crate) fn closed(&self) {
        let mut inner = self.inner();
        if self.is_connected() {
            inner.since = SystemTime::now();
            self.connected.send_replace(false);
            info!(address = %self.address, "cluster: link to Redis closed");
        }
    }

    /// A command failed (`error`); the supervisor decides whether the link is down.
    pub(crate) fn failed(&self, error: &str) {
        let error = self.mask(error);
        self.inner().last_error = Some(error);
    }

    /// The status the engine shows (`dropped` is the outgoing queue's, filled in by the link).
    pub(crate) fn status(&self) -> ClusterStatus {
        let inner = self.inner();
        ClusterStatus {
            backend: "redis",
            address: self.address.clone(),
            connected: self.is_connected(),
            since: Some(inner.since),
            last_error: inner.last_error.clone(),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_moves_the_state_once_and_masks_the_password() {
        let state = LinkState::new(
            "redis://default:***@127.0.0.1:1".into(),
            vec!["p%40ss-word".into(), "p@ss-word".into()],
        );
        let start = state.status();
        assert!(!start.connected);
        assert_eq!(start.backend, "redis");
        state.down("connect to redis://default:p@ss-word@127.0.0.1:1 refused");
        state.down("again p%40ss-word");
        let down = state.status();
        assert!(!down.connected);
        assert_eq!(down.last_error.as_deref(), Some("again ***"));
        assert_eq!(down.reconnects, 0);

        state.up();
        state.up();
        let up = state.status();
        assert!(up.connected);
        assert_eq!(
            up.reconnects, 0,
            "the first connection is not a reconnection"
        );
        assert!(up.since >= down.since);

        state.down("connection reset");
        assert!(!state.is_connected());
        state.up();
        assert_eq!(state.status().reconnects, 1);
        state.closed();
        let closed = state.status();
        assert!(!closed.connected);
        assert_eq!(closed.last_error.as_deref(), Some("connection reset"));
        assert_eq!(
            state.mask("x p@ss-word y"),
            "x *** y",
            "the decoded form is masked too"
        );
    }
}
