//! The writer task: drains the outbox in batches, writes each update's state key (with its TTL)
//! and publishes the batch on the updates channel, one pipeline per batch.
//!
//! Who owns what: the task is spawned by `RedisCluster::start` and owns its end of the outbox;
//! it is cancelled through the `ClusterTask`, after which it flushes what is left, bounded by
//! [`FLUSH_TIMEOUT`]. While the link is down it does not try: updates wait in the outbox (the
//! oldest dropped past its bound) and go out after the supervisor reconnected and reconciled,
//! so the newest local state lands last. A batch that fails for a transient reason (I/O, a
//! timeout, a server that is loading) goes back to the front of the outbox and the supervisor
//! is asked to check the link; one the server refuses for good (an ACL forbids a command) is
//! dropped, so it cannot block the queue.
//!
//! Per update ([`crate::names`] for the keys):
//!
//! | update | state key | TTL | published |
//! |---|---|---|---|
//! | `EndpointBlocked` | `block:<endpoint>` = end (unix ms), kept when a later end is there | until the end | yes |
//! | `GroupCooldown` | `cooldown:<group>` = end, kept when a later end is there | until the end | yes |
//! | `GroupCooldownEnded` | `cooldown:<group>` deleted | - | yes |
//! | `SessionBound` | `session:<hex>` = binding JSON (only the batch's last per session) | the affinity TTL (`routing.affinity_ttl`, the 1-hour one for `long_ttl`) | yes |
//! | `QuotaHeaders` | `quota:<endpoint>` = headers JSON (only the batch's last per endpoint) | [`QUOTA_TTL`] | yes |
//! | `Spend` | the key's day and month totals, through the key counters (`keys.rs`); the totals are applied here too | theirs | the totals instead of the local amount |
//! | operator change | - | - | the sender's id on the operator channel |

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use ccf_proxy::cluster::SharedUpdate;
use ccf_proxy::Forwarder;
use ccf_router::AffinitySettings;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::link::Link;
use crate::outbox::Outgoing;
use crate::wire::{ttl_millis, unix_ms, Envelope, StoredBinding, StoredQuota, WireUpdate};

/// Most outbox entries written in one pipeline.
pub(crate) const BATCH_MAX: usize = 512;
/// Most updates in one message on the updates channel.
const MESSAGE_MAX_UPDATES: usize = 256;
/// Longest wait for one batch (the writer is off the request path; this only bounds a hang).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the final flush at shutdown may take.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of an endpoint's last rate-limit headers in Redis: fresh readings replace them on
/// every answer, so only an endpoint nobody used for this long loses its shared reading.
pub(crate) const QUOTA_TTL: Duration = Duration::from_secs(6 * 60 * 60);
/// First wait after a failed batch; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait after failed batches.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Sets a state key holding an end time, unless it already holds a later one (blocks and
/// cooldowns only grow, as in the engine): KEYS[1] the key, ARGV[1] the end (unix ms),
/// ARGV[2] its TTL (ms).
static LATER_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1",
    )
});

/// Why a batch was not sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// No answer within [`COMMAND_TIMEOUT`].
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A message could not be encoded (cannot happen with these types; kept typed anyway).
    #[error("encoding an update: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SendError {
    /// Worth sending again later (the connection, not the batch, was the problem).
    fn transient(&self) -> bool {
        match self {
            SendError::Timeout(_) => true,
            SendError::Encode(_) => false,
            SendError::Redis(error) => {
                error.is_io_error()
                    || error.is_unrecoverable_error()
                    || matches!(
                        error.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ReadOnly
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::NoScript
                        )
                    )
            }
        }
    }
}

/// The writer task's state.
pub(crate) struct Writer {
    pub(crate) link: Arc<Link>,
    pub(crate) manager: ConnectionManager,
    /// Read for the affinity TTL of each batch (it follows reloads).
    pub(crate) forwarder: Forwarder,
}

impl Writer {
    /// Drains the outbox until `stop`, then flushes what is left (bounded).
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut connected = self.link.state.watch();
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.link.outbox.len() == 0 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.link.outbox.ready() => continue,
                }
            }
            if !*connected.borrow_and_update() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = connected.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            }
            let mut batch = self.link.outbox.take(BATCH_MAX);
            match self.send_bounded(&mut batch, COMMAND_TIMEOUT).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(error) => {
                    self.failed(error, batch);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.flush().await;
    }

    /// Sends what is left in the outbox within [`FLUSH_TIMEOUT`], whatever the link's state
    /// (one try per batch).
    async fn flush(&mut self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.link.outbox.len() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut batch = self.link.outbox.take(BATCH_MAX);
            if let Err(error) = self.send_bounded(&mut batch, left).await {
                self.failed(error, batch);
                break;
            }
        }
        let left = self.link.outbox.len();
        if left > 0 {
            warn!(
                pending = left,
                "cluster: updates not shared before shutdown"
            );
        }
    }

    /// A batch failed: back in the outbox when worth trying again, else dropped.
    fn failed(&self, error: SendError, batch: Vec<Outgoing>) {
        let text = error.to_string();
        self.link.state.failed(&text);
        if error.transient() {
            debug!(
                updates = batch.len(),
                "cluster: batch not sent, kept for later: {}",
                self.link.state.mask(&text)
            );
            self.link.outbox.requeue(batch);
            self.link.check_now.notify_one();
        } else {
            warn!(
                updates = batch.len(),
                "cluster: batch refused by Redis, dropped: {}",
                self.link.state.mask(&text)
            );
            self.link.outbox.count_dropped(batch.len());
        }
    }

    async fn send_bounded(
        &mut self,
        batch: &mut Vec<Outgoing>,
        limit: Duration,
    ) -> Result<(), SendError> {
        tokio::time::timeout(limit, self.send(batch))
            .await
            .map_err(|_| SendError::Timeout(limit))?
    }

    /// Writes and publishes `batch` (coalesced first). A `Spend` whose amount was added to the
    /// shared totals is replaced in `batch` by the totals, so a retry never adds it twice.
    async fn send(&mut self, batch: &mut Vec<Outgoing>) -> Result<(), SendError> {
        coalesce(batch);
        if let Some(store) = self.link.key_store.clone() {
            for item in batch.iter_mut() {
                if let Outgoing::Update(update @ SharedUpdate::Spend { .. }) = item {
                    let totals = store.record_spend(update).await?;
                    if let Some(totals) = &totals {
                        // This instance's own increment: the cluster-wide totals apply here
                        // too (and a budget it crossed is announced here, once).
                        self.forwarder.apply_own_spend_totals(totals);
                    }
                    *item = Outgoing::SpendTotals(totals.unwrap_or_else(|| update.clone()));
                }
            }
        }
        let names = &self.link.names;
        let affinity = AffinitySettings::from_config(&self.forwarder.config());
        let now = SystemTime::now();
        let mut pipe = redis::pipe();
        if batch
            .iter()
            .any(|item| matches!(item, Outgoing::Update(update) if ends_at(update).is_some()))
        {
            pipe.load_script(&LATER_END).ignore();
        }
        let mut wire = Vec::with_capacity(batch.len());
        let mut operator_changed = false;
        for item in batch.iter() {
            let update = match item {
                Outgoing::OperatorChanged => {
                    operator_changed = true;
                    continue;
                }
                Outgoing::SpendTotals(update) => update,
                Outgoing::Update(update) => {
                    write_state(&mut pipe, names, update, now, &affinity)?;
                    update
                }
            };
            wire.push(WireUpdate::from(update));
        }
        for updates in wire.chunks(MESSAGE_MAX_UPDATES) {
            let envelope = Envelope {
                from: self.link.sender.clone(),
                updates: updates.to_vec(),
            };
            pipe.publish(names.updates_channel(), serde_json::to_string(&envelope)?)
                .ignore();
        }
        if operator_changed {
            pipe.publish(names.operator_channel(), self.link.sender.as_str())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.manager).await?;
        self.link.state.published.fetch_add(
            u64::try_from(wire.len()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
}

/// The end time of a block or cooldown update.
fn ends_at(update: &SharedUpdate) -> Option<SystemTime> {
    match update {
        SharedUpdate::EndpointBlocked { until, .. } | SharedUpdate::GroupCooldown { until, .. } => {
            Some(*until)
        }
        _ => None,
    }
}

/// Adds the commands that write `update`'s state key to `pipe`.
fn write_state(
    pipe: &mut redis::Pipeline,
    names: &crate::names::Names,
    update: &SharedUpdate,
    now: SystemTime,
    affinity: &AffinitySettings,
) -> Result<(), serde_json::Error> {
    match update {
        SharedUpdate::EndpointBlocked { endpoint, until } => {
            later_end(pipe, &names.block(endpoint), *until, now);
        }
        SharedUpdate::GroupCooldown { group, until } => {
            later_end(pipe, &names.cooldown(group), *until, now);
        }
        SharedUpdate::GroupCooldownEnded { group } => {
            pipe.del(names.cooldown(group)).ignore();
        }
        SharedUpdate::SessionBound {
            session,
            source,
            long_ttl,
            endpoint,
        } => {
            let binding = StoredBinding {
                source: (*source).into(),
                long_ttl: *long_ttl,
                endpoint: endpoint.clone(),
            };
            let ttl = if *long_ttl {
                affinity.long_ttl
            } else {
                affinity.ttl
            };
            pipe.pset_ex(
                names.session(*session),
                serde_json::to_string(&binding)?,
                ttl_millis(ttl),
            )
            .ignore();
        }
        SharedUpdate::QuotaHeaders {
            endpoint,
            headers,
            seen_at,
        } => {
            let quota = StoredQuota {
                headers: headers.clone(),
                seen_at_ms: unix_ms(*seen_at),
            };
            pipe.pset_ex(
                names.quota(endpoint),
                serde_json::to_string(&quota)?,
                ttl_millis(QUOTA_TTL),
            )
            .ignore();
        }
        // The key counters wrote it (or, without them, only the message shares it).
        SharedUpdate::Spend { .. } => {}
    }
    Ok(())
}

/// Sets `key` to `until` for as long as it lasts, unless a later end is there; an end already
/// passed writes nothing.
fn later_end(pipe: &mut redis::Pipeline, key: &str, until: SystemTime, now: SystemTime) {
    let Ok(left) = until.duration_since(now) else {
        return;
    };
    if left.is_zero() {
        return;
    }
    pipe.invoke_script(LATER_END.key(key).arg(unix_ms(until)).arg(ttl_millis(left)))
        .ignore();
}

/// Keeps only the last `SessionBound` of each session, the last `QuotaHeaders` of each
/// endpoint and one operator change, in their order.
pub(crate) fn coalesce(batch: &mut Vec<Outgoing>) {
    #[derive(Hash, PartialEq, Eq)]
    enum Slot<'a> {
        Session(u64),
        Quota(&'a str),
        Operator,
    }
    let mut seen = HashSet::new();
    let mut keep = vec![true; batch.len()];
    for (index, item) in batch.iter().enumerate().rev() {
        let slot = match item {
            Outgoing::Update(SharedUpdate::SessionBound { session, .. }) => Slot::Session(*session),
            Outgoing::Update(SharedUpdate::QuotaHeaders { endpoint, .. }) => {
                Slot::Quota(endpoint.as_str())
            }
            Outgoing::OperatorChanged => Slot::Operator,
            _ => continue,
        };
        if !seen.insert(slot) {
            keep[index] = false;
        }
    }
    if keep.iter().all(|kept| *kept) {
        return;
    }
    let mut flags = keep.into_iter();
    batch.retain(|_| flags.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_router::SessionSource;

    fn bound(session: u64, endpoint: &str) -> Outgoing {
        Outgoing::Update(SharedUpdate::SessionBound {
            session,
            source: SessionSource::Header,
            long_ttl: false,
            endpoint: endpoint.into(),
        })
    }

    fn quota(endpoint: &str, value: &str) -> Outgoing {
        Outgoing::Update(SharedUpdate::QuotaHeaders {
            endpoint: endpoint.into(),
            headers: vec![("retry-after".into(), value.into())],
            seen_at: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn a_batch_keeps_the_last_binding_per_session_and_everything_else() {
        let ended = Outgoing::Update(SharedUpdate::GroupCooldownEnded {
            group: "main".into(),
        });
        let mut batch = vec![
            bound(1, "a"),
            quota("a", "1"),
            Outgoing::OperatorChanged,
            bound(2, "a"),
            ended.clone(),
            bound(1, "b"),
            quota("a", "2"),
            ended.clone(),
            Outgoing::OperatorChanged,
            bound(1, "c"),
        ];
        coalesce(&mut batch);
        assert_eq!(
            batch,
            vec![
                bound(2, "a"),
                ended.clone(),
                quota("a", "2"),
                ended,
                Outgoing::OperatorChanged,
                bound(1, "c"),
            ]
        );
    }

    /// A writer on the real Redis under a fresh prefix, with the fake key counters.
    async fn writer(store: Arc<crate::counters::tests::FakeStore>) -> (Writer, String) {
        let prefix = format!("ccf-test-{:016x}", {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(SystemTime::now())
        });
        let link = Link::for_tests(&prefix, Some(store));
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let manager = ConnectionManager::new(client).await.unwrap();
        let config = ccf_config::Config::from_yaml_str(
            "routing:\n  affinity_ttl: 90s\nendpoints:\n  - name: a\n    url: http://127.0.0.1:9\n    token: t\n",
        )
        .unwrap();
        let forwarder = Forwarder::build(Arc::new(config)).unwrap();
        (
            Writer {
                link,
                manager,
                forwarder,
            },
            prefix,
        )
    }

    async fn delete_prefix(manager: &mut ConnectionManager, prefix: &str) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(manager)
            .await
            .unwrap();
        if !keys.is_empty() {
            let () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(manager)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_spend_is_added_once_and_its_totals_are_published() {
        let store = crate::counters::tests::FakeStore::new();
        let (mut writer, prefix) = writer(Arc::clone(&store)).await;
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub
            .subscribe(writer.link.names.updates_channel())
            .await
            .unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000);
        let spend = SharedUpdate::Spend {
            key: "alice".into(),
            usd: 0.5,
            at,
            day_start: at,
            day_usd: 2.0,
            month_start: at,
            month_usd: 20.0,
        };
        let mut batch = vec![Outgoing::Update(spend), bound(7, "a"), bound(7, "b")];
        writer.send(&mut batch).await.unwrap();
        // As if the batch had failed after the spend was recorded: sent again, not added again.
        writer.send(&mut batch).await.unwrap();
        assert_eq!(store.spends.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(batch.len(), 2, "one binding per session");

        let mut messages = pubsub.on_message();
        let first = futures_util::StreamExt::next(&mut messages).await.unwrap();
        let envelope: Envelope = serde_json::from_slice(first.get_payload_bytes()).unwrap();
        assert_eq!(envelope.from, writer.link.sender);
        let updates: Vec<SharedUpdate> = envelope
            .updates
            .into_iter()
            .filter_map(WireUpdate::into_update)
            .collect();
        assert!(
            matches!(&updates[0], SharedUpdate::Spend { usd, day_usd, month_usd, .. }
                if *usd == 0.0 && *day_usd == 10.0 && *month_usd == 100.0),
            "the totals, not the local amount: {updates:?}"
        );
        assert!(
            matches!(&updates[1], SharedUpdate::SessionBound { endpoint, .. } if endpoint == "b")
        );
        drop(messages);

        // The binding's key holds the last endpoint for the affinity TTL.
        let key = writer.link.names.session(7);
        let (value, ttl): (String, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut writer.manager)
            .await
            .unwrap();
        assert!(value.contains(r#""endpoint":"b""#), "{value}");
        assert!(ttl > 0 && ttl <= 90_000, "{ttl}");
        delete_prefix(&mut writer.manager, &prefix).await;
    }

    #[tokio::test]
    async fn a_block_keeps_its_latest_end_and_a_passed_one_writes_nothing() {
        let (mut writer, prefix) = writer(crate::counters::tests::FakeStore::new()).await;
        let now = SystemTime::now();
        let block = |secs: u64| {
            Outgoing::Update(SharedUpdate::EndpointBlocked {
                endpoint: "a".into(),
                until: now + Duration::from_secs(secs),
            })
        };
        let passed = Outgoing::Update(SharedUpdate::GroupCooldown {
            group: "main".into(),
            until: now - Duration::from_secs(1),
        });
        writer.send(&mut vec![block(600), passed]).await.unwrap();
        writer.send(&mut vec![block(60)]).await.unwrap();
        let key = writer.link.names.block("a");
        let (value, ttl): (u64, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut writer.manager)
            .await
            .unwrap();
        assert_eq!(
            value,
            unix_ms(now + Duration::from_secs(600)),
            "the later end stays"
        );
        assert!(ttl > 60_000 && ttl <= 600_000, "{ttl}");
        let cooldown: bool = redis::cmd("EXISTS")
            .arg(writer.link.names.cooldown("main"))
            .query_async(&mut writer.manager)
            .await
            .unwrap();
        assert!(!cooldown, "a passed end writes nothing");
        delete_prefix(&mut writer.manager, &prefix).await;
    }

    #[test]
    fn only_connection_trouble_is_retried() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(SendError::Redis(io).transient());
        assert!(SendError::Timeout(COMMAND_TIMEOUT).transient());
        let refused = RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoPerm),
            "NOPERM this user has no permissions to run the 'publish' command",
        ));
        assert!(!SendError::Redis(refused).transient());
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_secs(2)), 2000);
    }
}
