//! The connection supervisor: the one task that decides whether the link is up. It keeps a
//! pub/sub connection subscribed to the updates and operator channels, applies what other
//! instances publish, and watches the link's health.
//!
//! One connection's life ([`Supervisor::session`]): connect and subscribe, reconcile (read the
//! shared state keys, `reconcile.rs`), then mark the link up, which lets the writer flush what
//! was queued meanwhile; then apply every message until the connection ends, or a health check
//! fails (a `PING` on both the subscription and the command connection every
//! [`CHECK_INTERVAL`], and at once when the writer saw a batch fail). Then the link is down
//! (logged once per outage, `status.rs`) and the next attempt follows after a back-off of
//! 100 ms doubling to 2 s. Subscribing before reconciling means nothing published meanwhile is
//! missed: it waits in the subscription until the reconcile is done.
//!
//! Messages: an update batch from this very process is skipped (its sender id carries a
//! per-process nonce, so two instances configured with the same id still hear each other);
//! each update of another's is applied with `Forwarder::apply_shared` and counted; what does
//! not decode is counted as ignored and logged at debug. An operator message from another
//! instance bumps the operator notifier, so the application's poller reads the operator state
//! at once; every (re)connection bumps it too (a message may have been missed).
//!
//! The task is spawned by `RedisCluster::start`, holds a clone of the forwarder and ends when
//! the `ClusterTask`'s token is cancelled.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ccf_proxy::Forwarder;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::Msg;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::link::Link;
use crate::wire::WireUpdate;

/// First wait before connecting again; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Period of the health check while linked.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for a health check's `PING`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for connecting and subscribing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a reconcile (a large deployment may hold many bindings).
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message on the updates channel, each update decoded on its own so that one kind this
/// version does not know does not hide the others.
#[derive(Deserialize)]
struct RawEnvelope {
    from: String,
    updates: Vec<serde_json::Value>,
}

/// The supervisor task's state.
pub(crate) struct Supervisor {
    pub(crate) link: Arc<Link>,
    pub(crate) client: redis::Client,
    pub(crate) manager: ConnectionManager,
    pub(crate) forwarder: Forwarder,
}

impl Supervisor {
    /// Keeps the link up until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut was_up = false;
            let reason = tokio::select! {
                () = stop.cancelled() => break,
                reason = self.session(&mut was_up) => reason,
            };
            self.link.state.down(&reason);
            if was_up {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection, from connecting to its loss; returns why it ended. Sets `was_up` once
    /// the link was marked up.
    async fn session(&mut self, was_up: &mut bool) -> String {
        let names = self.link.names.clone();
        let pubsub =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => return format!("connecting: {error}"),
                Err(_) => return format!("connecting: no answer within {CONNECT_TIMEOUT:?}"),
            };
        let (mut sink, mut stream) = pubsub.split();
        let channels = [names.updates_channel(), names.operator_channel()];
        match tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return format!("subscribing: {error}"),
            Err(_) => return format!("subscribing: no answer within {CONNECT_TIMEOUT:?}"),
        }
        // The command connection reconnects on its first failed command after a loss: give it
        // that one command before reading through it.
        if ping(&mut self.manager).await.is_err() {
            if let Err(error) = ping(&mut self.manager).await {
                return error;
            }
        }
        let mut manager = self.manager.clone();
        let pending = self.link.outbox.pending();
        match tokio::time::timeout(
            RECONCILE_TIMEOUT,
            crate::reconcile::reconcile(&mut manager, &names, &self.forwarder, &pending),
        )
        .await
        {
            Ok(Ok(applied)) => {
                if applied > 0 {
                    info!(applied, "cluster: shared routing state read from Redis");
                }
            }
            Ok(Err(error)) => return format!("reading the shared state: {error}"),
            Err(_) => {
                return format!("reading the shared state: no answer within {RECONCILE_TIMEOUT:?}")
            }
        }
        self.link.state.up();
        *was_up = true;
        self.link
            .operator_changes
            .send_modify(|version| *version = version.wrapping_add(1));

        let mut ticker = tokio::time::interval(CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.receive(&message),
                    None => return "the subscription connection closed".to_string(),
                },
                _ = ticker.tick() => {
                    if let Err(reason) = self.check(&mut sink).await {
                        return reason;
                    }
                }
                () = self.link.check_now.notified() => {
                    if let Err(reason) = self.check(&mut sink).await {
                        return reason;
                    }
                }
            }
        }
    }

    /// Both connections answer a `PING` in time.
    async fn check(&mut self, sink: &mut PubSubSink) -> Result<(), String> {
        let subscription = async {
            match tokio::time::timeout(CHECK_TIMEOUT, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("subscription ping: {error}")),
                Err(_) => Err(format!(
                    "subscription ping: no answer within {CHECK_TIMEOUT:?}"
                )),
            }
        };
        let mut manager = self.manager.clone();
        let (subscription, commands) = tokio::join!(subscription, ping(&mut manager));
        subscription.and(commands)
    }

    /// Applies one message.
    fn receive(&self, message: &Msg) {
        let names = &self.link.names;
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if channel == names.operator_channel() {
            if payload != self.link.sender.as_bytes() {
                self.link
                    .operator_changes
                    .send_modify(|version| *version = version.wrapping_add(1));
            }
            return;
        }
        if channel != names.updates_channel() {
            return;
        }
        let envelope = match serde_json::from_slice::<RawEnvelope>(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.ignored(1, &error.to_string());
                return;
            }
        };
        if envelope.from == self.link.sender {
            return;
        }
        for update in envelope.updates {
            let update = serde_json::from_value::<WireUpdate>(update)
                .ok()
                .and_then(WireUpdate::into_update);
            match update {
                Some(update) => {
                    self.forwarder.apply_shared(&update);
                    self.link.state.applied.fetch_add(1, Ordering::Relaxed);
                }
                None => self.ignored(1, "an update of a kind or shape this version does not know"),
            }
        }
    }

    fn ignored(&self, count: u64, why: &str) {
        self.link.state.ignored.fetch_add(count, Ordering::Relaxed);
        debug!("cluster: message ignored: {why}");
    }
}

/// A `PING` on the command connection, bounded.
async fn ping(manager: &mut ConnectionManager) -> Result<(), String> {
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        redis::cmd("PING").query_async::<redis::Value>(manager),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("ping: {error}")),
        Err(_) => Err(format!("ping: no answer within {CHECK_TIMEOUT:?}")),
    }
}
