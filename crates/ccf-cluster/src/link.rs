//! [`RedisCluster`]: the engine's `ClusterLink` on Redis, and [`ClusterTask`], its running tasks.
//!
//! Shape: [`RedisCluster::new`] checks the URL and prepares the connections without touching
//! the network (an unreachable Redis never stops an instance from starting);
//! [`RedisCluster::start`] installs the link in the forwarder and spawns two tasks, the writer
//! (`writer.rs`: outbox -> Redis) and the supervisor (`subscriber.rs`: connection, reconcile,
//! Redis -> forwarder), then waits a bounded moment for the first reconcile so a starting
//! instance routes with what the others know; [`ClusterTask::stop`] flushes and ends them.
//!
//! Connections: commands go through one `redis::aio::ConnectionManager` (multiplexed,
//! reconnecting by itself), each call bounded by a timeout; the subscription is its own
//! connection, made again by the supervisor. The request path only ever touches the outbox
//! (`publish`) and an atomic (`key_counters`, `status`).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccf_config::ClusterConfig;
use ccf_proxy::cluster::{ClusterLink, ClusterStatus, SharedKeyCounters, SharedUpdate};
use ccf_proxy::Forwarder;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::counters::{key_store, KeyStore};
use crate::error::ClusterError;
use crate::names::Names;
use crate::operator::{OperatorNotifier, RedisSharedState};
use crate::outbox::{Outbox, Outgoing, OUTBOX_CAPACITY};
use crate::status::LinkState;
use crate::subscriber::Supervisor;
use crate::writer::{Writer, COMMAND_TIMEOUT, FLUSH_TIMEOUT};

/// Longest [`RedisCluster::start`] waits for the first reconcile.
pub const START_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for one connection attempt of the command connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// What the link's parts share: names, state, outbox, counters.
pub(crate) struct Link {
    /// Key and channel names under the prefix.
    pub(crate) names: Names,
    /// This process on the channels: the instance id and a per-process nonce.
    pub(crate) sender: String,
    /// Connected or not, counters, last error.
    pub(crate) state: LinkState,
    /// Updates waiting for the writer.
    pub(crate) outbox: Outbox,
    /// The per-key counters, when available (`counters.rs`).
    pub(crate) key_store: Option<Arc<dyn KeyStore>>,
    /// Bumped when another instance changed the operator state (see `OperatorNotifier`).
    pub(crate) operator_changes: watch::Sender<u64>,
    /// The writer saw a batch fail: the supervisor checks the link at once.
    pub(crate) check_now: Notify,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.state.address())
            .field("prefix", &self.names.prefix())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl ClusterLink for Link {
    fn publish(&self, update: SharedUpdate) {
        self.outbox.push(Outgoing::Update(update));
    }

    fn key_counters(&self) -> Option<Arc<dyn SharedKeyCounters>> {
        if !self.state.is_connected() || self.state.cooling_off() {
            return None;
        }
        self.key_store.as_ref().map(|store| store.counters())
    }

    fn status(&self) -> ClusterStatus {
        let mut status = self.state.status();
        status.dropped = self.outbox.dropped();
        status
    }

    fn is_connected(&self) -> bool {
        self.state.is_connected()
    }

    fn note_fallback(&self) {
        self.state.fall_back();
    }
}

#[cfg(test)]
impl Link {
    /// A link under `prefix` with these key counters, disconnected, for unit tests.
    pub(crate) fn for_tests(prefix: &str, key_store: Option<Arc<dyn KeyStore>>) -> Arc<Link> {
        Arc::new(Link {
            names: Names::new(prefix),
            sender: format!("test#{:016x}", process_nonce()),
            state: LinkState::new("redis://127.0.0.1:6379".into(), Vec::new()),
            outbox: Outbox::new(OUTBOX_CAPACITY),
            key_store,
            operator_changes: watch::channel(0).0,
            check_now: Notify::new(),
        })
    }
}

/// The Redis link of one instance, prepared but not running (see the module docs).
pub struct RedisCluster {
    link: Arc<Link>,
    client: redis::Client,
    manager: ConnectionManager,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("address", &self.link.state.address())
            .field("prefix", &self.link.names.prefix())
            .field("sender", &self.link.sender)
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Checks `config.redis_url` and prepares the connections for instance `instance_id`.
    /// Never fails because Redis is down: nothing connects before [`RedisCluster::start`].
    /// Must be called inside a Tokio runtime.
    pub fn new(config: &ClusterConfig, instance_id: &str) -> Result<RedisCluster, ClusterError> {
        let url = config.redis_url.as_ref().ok_or(ClusterError::NoUrl)?;
        let url = url.expose().trim();
        let address = ccf_config::mask_url_password(url);
        let secrets = url_secrets(url);
        let masked = |text: String| {
            secrets
                .iter()
                .fold(text, |text, secret| text.replace(secret.as_str(), "***"))
        };
        let client = redis::Client::open(url).map_err(|error| ClusterError::InvalidUrl {
            url: address.clone(),
            message: masked(error.to_string()),
        })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ClusterError::NoRuntime);
        }
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // One quick retry inside the manager; the supervisor paces the rest.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|error| ClusterError::InvalidUrl {
                url: address.clone(),
                message: masked(error.to_string()),
            })?;
        let names = Names::new(&config.redis_prefix);
        let sender = format!("{instance_id}#{:016x}", process_nonce());
        let key_store = key_store(&manager, &names, &sender);
        let link = Arc::new(Link {
            names,
            sender,
            state: LinkState::new(address, secrets),
            outbox: Outbox::new(OUTBOX_CAPACITY),
            key_store,
            operator_changes: watch::channel(0).0,
            check_now: Notify::new(),
        });
        Ok(RedisCluster {
            link,
            client,
            manager,
        })
    }

    /// The operator state on Redis (`ccf_store::SharedState`), for deployments where no MySQL
    /// store holds `cluster_state`.
    pub fn shared_state(&self) -> Arc<dyn ccf_store::SharedState> {
        Arc::new(RedisSharedState::new(
            self.manager.clone(),
            Arc::clone(&self.link),
        ))
    }

    /// Says and hears "operator state changed" (see [`OperatorNotifier`]).
    pub fn operator_notifier(&self) -> OperatorNotifier {
        OperatorNotifier::new(Arc::clone(&self.link))
    }

    /// The link as the engine sees it, for status before [`RedisCluster::start`].
    pub fn status(&self) -> ClusterStatus {
        self.link.status()
    }

    /// Installs the link in `forwarder`, starts the writer and the supervisor, and waits up to
    /// [`START_WAIT`] for the first connection and reconcile (Redis down: it goes on at once
    /// after that wait, on local state, and catches up when Redis is reachable).
    pub async fn start(self, forwarder: Forwarder) -> ClusterTask {
        let link: Arc<dyn ClusterLink> = Arc::clone(&self.link) as Arc<dyn ClusterLink>;
        if !forwarder.set_cluster_link(link) {
            warn!("cluster: the forwarder already has a cluster link; this one only writes");
        }
        let stop_supervisor = CancellationToken::new();
        let stop_writer = CancellationToken::new();
        let mut connected = self.link.state.watch();
        let supervisor = tokio::spawn(
            Supervisor {
                link: Arc::clone(&self.link),
                client: self.client.clone(),
                manager: self.manager.clone(),
                forwarder: forwarder.clone(),
            }
            .run(stop_supervisor.clone()),
        );
        let writer = tokio::spawn(
            Writer {
                link: Arc::clone(&self.link),
                manager: self.manager.clone(),
                forwarder,
            }
            .run(stop_writer.clone()),
        );
        let lease_refresh = self
            .link
            .key_store
            .as_ref()
            .and_then(|store| store.spawn_lease_refresh());
        let _ = tokio::time::timeout(START_WAIT, connected.wait_for(|up| *up)).await;
        ClusterTask {
            link: self.link,
            stop_supervisor,
            stop_writer,
            supervisor,
            writer,
            lease_refresh,
        }
    }
}

/// The running link; [`ClusterTask::stop`] flushes queued updates and ends its tasks.
#[derive(Debug)]
pub struct ClusterTask {
    link: Arc<Link>,
    stop_supervisor: CancellationToken,
    stop_writer: CancellationToken,
    supervisor: JoinHandle<()>,
    writer: JoinHandle<()>,
    lease_refresh: Option<JoinHandle<()>>,
}

impl ClusterTask {
    /// How the link is doing now.
    pub fn status(&self) -> ClusterStatus {
        self.link.status()
    }

    /// Messages from the channels that could not be read (garbled or of an unknown kind).
    pub fn ignored_messages(&self) -> u64 {
        self.link.state.ignored.load(Ordering::Relaxed)
    }

    /// Flushes the queued updates (the batch being sent, then what is left: a few seconds at
    /// most when Redis does not answer), then stops every task and waits for them.
    pub async fn stop(self) {
        self.stop_writer.cancel();
        // The writer finishes the batch it is sending (bounded by its command timeout), then
        // flushes (bounded): this only guards against a hang.
        let mut writer = self.writer;
        if tokio::time::timeout(COMMAND_TIMEOUT + FLUSH_TIMEOUT * 2, &mut writer)
            .await
            .is_err()
        {
            warn!("cluster: the writer did not stop in time");
            writer.abort();
        }
        self.stop_supervisor.cancel();
        let _ = self.supervisor.await;
        if let Some(refresh) = self.lease_refresh {
            refresh.abort();
            let _ = refresh.await;
        }
        self.link.state.closed();
    }
}

/// The password of `url`, as written and percent-decoded (both forms may appear in errors).
fn url_secrets(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let Some(password) = parsed.password() else {
        return Vec::new();
    };
    let mut secrets = vec![password.to_string()];
    if let Ok(decoded) = percent_decode(password) {
        if decoded != password {
            secrets.push(decoded);
        }
    }
    secrets
}

/// `%XX` sequences decoded (the URL crate keeps the password encoded).
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, hex) {
            (b'%', Some(value)) => {
                out.push(value);
                index += 3;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// A number that differs between processes (and between links of one process).
fn process_nonce() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one((
        SystemTime::now(),
        std::process::id(),
        std::thread::current().id(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_types::Secret;

    fn config(url: &str) -> ClusterConfig {
        ClusterConfig {
            redis_url: Some(Secret::new(url.to_string())),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn key_counters_are_offered_only_while_connected() {
        let link = Link::for_tests(
            "ccf-test-unit",
            Some(crate::counters::tests::FakeStore::new()),
        );
        assert!(link.key_counters().is_none());
        link.state.up();
        assert!(link.key_counters().is_some());
        link.state.down("lost");
        assert!(link.key_counters().is_none());
        assert!(Link::for_tests("ccf-test-unit", None)
            .key_counters()
            .is_none());
        link.note_fallback();
        assert_eq!(link.status().fallbacks, 1);
    }

    #[test]
    fn a_fallback_while_connected_stops_asking_the_counters_for_a_cool_off() {
        let link = Link::for_tests(
            "ccf-test-unit",
            Some(crate::counters::tests::FakeStore::new()),
        );
        // Disconnected: counted, no cool-off (there is nothing to ask anyway).
        link.note_fallback();
        assert!(!link.state.cooling_off());
        link.state.up();
        assert!(link.key_counters().is_some());
        // Connected, and a request did not get its answer in time: the next requests decide
        // locally without waiting, and counting them does not push the end further.
        link.note_fallback();
        assert!(link.state.cooling_off());
        assert!(link.key_counters().is_none());
        let until = link.state.cooling_until_for_tests();
        link.note_fallback();
        assert_eq!(link.state.cooling_until_for_tests(), until);
        assert_eq!(link.status().fallbacks, 3);
        let left = until.saturating_sub(crate::wire::unix_ms(SystemTime::now()));
        assert!(left <= 1_000, "{left} ms");
    }

    /// A random prefix of this test's own.
    fn test_prefix() -> String {
        format!("ccf-test-{:016x}", process_nonce())
    }

    async fn delete_prefix(prefix: &str) {
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            let () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }

    fn forwarder() -> Forwarder {
        let config = ccf_config::Config::from_yaml_str(
            "endpoints:\n  - name: a\n    url: http://127.0.0.1:9\n    token: t\n",
        )
        .unwrap();
        Forwarder::build(Arc::new(config)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_linked_instances_share_one_rate_window_and_add_up_spend() {
        let prefix = test_prefix();
        let cluster_config = ClusterConfig {
            redis_url: Some(Secret::new("redis://127.0.0.1:6379")),
            redis_prefix: prefix.clone(),
            ..ClusterConfig::default()
        };
        let a = RedisCluster::new(&cluster_config, "a")
            .unwrap()
            .start(forwarder())
            .await;
        let b = RedisCluster::new(&cluster_config, "b")
            .unwrap()
            .start(forwarder())
            .await;
        assert!(a.status().connected && b.status().connected);
        let (counters_a, counters_b) = (
            a.link.key_counters().expect("offered while connected"),
            b.link.key_counters().expect("offered while connected"),
        );
        for counters in [&counters_a, &counters_a, &counters_b] {
            assert_eq!(
                counters.admit_rate("alice", 3).await.unwrap(),
                ccf_proxy::cluster::RateAdmission::Admitted
            );
        }
        let full = counters_b.admit_rate("alice", 3).await.unwrap();
        assert!(
            matches!(full, ccf_proxy::cluster::RateAdmission::Full { retry_after }
                if retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60)),
            "{full:?}"
        );

        // Spend: each instance's amount is added once to the shared totals.
        let at = SystemTime::now();
        let spend = |usd: f64, local: f64| SharedUpdate::Spend {
            key: "alice".into(),
            usd,
            at,
            day_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000),
            day_usd: local,
            month_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_759_000_000),
            month_usd: local,
        };
        let store_a = a.link.key_store.clone().unwrap();
        let store_b = b.link.key_store.clone().unwrap();
        let first = store_a.record_spend(&spend(1.5, 1.5)).await.unwrap();
        let second = store_b.record_spend(&spend(0.25, 0.25)).await.unwrap();
        assert!(matches!(first, Some(SharedUpdate::Spend { day_usd, .. }) if day_usd == 1.5));
        assert!(
            matches!(second, Some(SharedUpdate::Spend { usd, day_usd, month_usd, .. })
                if usd == 0.0 && day_usd == 1.75 && month_usd == 1.75),
            "{second:?}"
        );
        a.stop().await;
        b.stop().await;
        delete_prefix(&prefix).await;
    }

    #[test]
    fn the_password_is_found_in_both_forms() {
        assert_eq!(
            url_secrets("redis://user:p%40ss@host:6379/0"),
            vec!["p%40ss".to_string(), "p@ss".to_string()]
        );
        assert!(url_secrets("redis://host:6379").is_empty());
        assert_eq!(percent_decode("a%2Fb%zz").unwrap(), "a/b%zz");
    }

    #[tokio::test]
    async fn a_url_is_checked_without_connecting_and_shown_masked() {
        // Nothing listens on port 1: new() still succeeds (it does not connect).
        let cluster = RedisCluster::new(&config("redis://default:hunter22@127.0.0.1:1/0"), "a")
            .expect("prepared without connecting");
        let status = cluster.status();
        assert!(!status.connected);
        assert_eq!(status.address, "redis://default:***@127.0.0.1:1/0");
        assert!(!format!("{cluster:?}").contains("hunter22"));

        let tls = RedisCluster::new(&config("rediss://default:hunter22@127.0.0.1:1"), "a")
            .expect("rediss:// is accepted");
        assert!(tls.status().address.starts_with("rediss://"));

        let error = RedisCluster::new(&config("http://default:hunter22@127.0.0.1:1"), "a")
            .expect_err("not a Redis URL");
        assert!(
            matches!(error, ClusterError::InvalidUrl { .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("hunter22"), "{error}");
        assert!(matches!(
            RedisCluster::new(&ClusterConfig::default(), "a"),
            Err(ClusterError::NoUrl)
        ));
    }

    #[test]
    fn outside_a_runtime_it_says_so_instead_of_panicking() {
        let error = RedisCluster::new(&config("redis://127.0.0.1:1"), "a").expect_err("no runtime");
        assert!(matches!(error, ClusterError::NoRuntime), "{error:?}");
    }
}
