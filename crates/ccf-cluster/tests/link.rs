//! The Redis link between real forwarders, on the real Redis at 127.0.0.1:6379: what one
//! instance learns (a 429, a cooldown, a session binding) the others route by; a starting
//! instance reads what is already shared; Redis cut (a TCP proxy in front of it, stopped) never
//! fails a request, shows in the status, and the link catches up when it returns. Operator
//! actions' notifier and their compare-and-set state on Redis.
//!
//! Each test owns a random key prefix (deleted at its end, even when it fails) and its mock
//! upstreams; nothing waits a fixed time: every wait is for a view or a status to change,
//! bounded by [`WAIT`] only to catch hangs.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ccf_cluster::{ClusterTask, RedisCluster};
use ccf_config::Config;
use ccf_proxy::cluster::ClusterStatus;
use ccf_proxy::Forwarder;
use ccf_router::{SessionKey, SessionSource};
use ccf_testkit::{MockUpstream, Reply, TcpProxy};
use http_body_util::{BodyExt, Full};
use redis::AsyncCommands;

const REDIS: &str = "redis://127.0.0.1:6379";
/// Bound of every wait: only a hang reaches it.
const WAIT: Duration = Duration::from_secs(15);

/// A key prefix of the test's own; its keys are deleted when it is dropped.
struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        let nonce = std::collections::hash_map::RandomState::new()
            .hash_one((SystemTime::now(), std::thread::current().id()));
        Prefix(format!("ccf-test-{nonce:016x}"))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(REDIS) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}

/// Two endpoints, `first` preferred, in one group (`two_groups`: `first` in `main`, `second`
/// in `backup`); one attempt per endpoint, so a failure moves on at once.
fn config(
    prefix: &Prefix,
    redis_url: &str,
    first: &MockUpstream,
    second: &MockUpstream,
    two_groups: bool,
) -> Arc<Config> {
    let second_group = if two_groups { "backup" } else { "main" };
    let yaml = format!(
        "retry:
  max_attempts: 1
group:
  cooldown: 600s
  auto_switch_between_groups: true
routing:
  affinity_ttl: 2m
cluster:
  redis_url: \"{redis_url}\"
  redis_prefix: \"{prefix}\"
endpoints:
  - name: first
    url: {first}
    group: main
    group-priority: 1
    priority: 1
    token: token-first
  - name: second
    url: {second}
    group: {second_group}
    group-priority: 2
    priority: 2
    token: token-second
",
        prefix = prefix.0,
        first = first.url(),
        second = second.url(),
    );
    Arc::new(Config::from_yaml_str(&yaml).expect("test config is valid"))
}

/// A forwarder with its own Redis link, started (connected and reconciled when Redis is up).
async fn instance(id: &str, config: Arc<Config>) -> (Forwarder, ClusterTask) {
    let forwarder = Forwarder::build(Arc::clone(&config)).expect("forwarder builds");
    let cluster = RedisCluster::new(&config.cluster, id).expect("link prepared");
    let task = cluster.start(forwarder.clone()).await;
    (forwarder, task)
}

/// Sends one message request (in conversation `session` when given), reads the whole answer
/// (so the turn finishes and binds) and returns its status.
async fn send(forwarder: &Forwarder, session: Option<&str>) -> u16 {
    let mut request = http::Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if let Some(session) = session {
        request = request.header("x-session-id", session);
    }
    let request = request
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .expect("request");
    let response = forwarder.handle(request).await;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .expect("the whole answer arrives");
    status
}

/// Polls `check` until it gives a value; panics naming `what` after [`WAIT`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for an async check.
async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn blocked(forwarder: &Forwarder, endpoint: &str) -> bool {
    forwarder
        .endpoints()
        .iter()
        .any(|view| view.name == endpoint && view.blocked_until.is_some())
}

fn status(forwarder: &Forwarder) -> ClusterStatus {
    forwarder.cluster_status().expect("a link is installed")
}

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("the test's own Redis connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_instance_makes_the_others_skip_that_endpoint() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, false);
    let (a, task_a) = instance("a", Arc::clone(&config)).await;
    let (b, task_b) = instance("b", config).await;
    assert!(
        status(&a).connected && status(&b).connected,
        "{:?}",
        status(&a)
    );

    // A: `first` says 429 for an hour; A skips it and `second` answers.
    first.enqueue(Reply::rate_limited(3600));
    assert_eq!(send(&a, None).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 1));
    assert!(blocked(&a, "first"));

    // B learns it and goes straight to `second`.
    eventually("B to see `first` blocked", || {
        blocked(&b, "first").then_some(())
    })
    .await;
    assert_eq!(send(&b, None).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 2));

    // The block is in Redis until its end.
    let mut redis = connection().await;
    let ttl: i64 = redis.pttl(prefix.key("block:first")).await.unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    assert!(status(&a).published >= 1);
    assert!(status(&b).applied >= 1);
    task_a.stop().await;
    task_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cooldown_on_one_instance_is_seen_by_the_others() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, true);
    let (a, task_a) = instance("a", Arc::clone(&config)).await;
    let (b, task_b) = instance("b", config).await;

    // Every endpoint of `main` fails on A: `main` cools down, `backup` answers.
    first.enqueue(Reply::overloaded());
    assert_eq!(send(&a, None).await, 200);
    let cooling = |forwarder: &Forwarder| {
        forwarder
            .groups()
            .iter()
            .any(|group| group.name == "main" && group.in_cooldown)
    };
    assert!(cooling(&a));
    eventually("B to see `main` cooling down", || cooling(&b).then_some(())).await;
    let until = b
        .groups()
        .into_iter()
        .find(|group| group.name == "main")
        .and_then(|group| group.cooldown_until)
        .expect("a cooldown end");
    assert!(until > std::time::Instant::now() + Duration::from_secs(500));

    // B routes to `backup` without trying `main`.
    assert_eq!(send(&b, None).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 2));
    let mut redis = connection().await;
    assert!(redis
        .exists::<_, bool>(prefix.key("cooldown:main"))
        .await
        .unwrap());
    task_a.stop().await;
    task_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_keeps_its_endpoint_on_another_instance() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, false);
    let (a, task_a) = instance("a", Arc::clone(&config)).await;
    let (b, task_b) = instance("b", config).await;

    // A serves the first turn on `second` (`first` fails once, without being blocked).
    first.enqueue(Reply::overloaded());
    assert_eq!(send(&a, Some("conversation-1")).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 1));

    let bound_on_b = || {
        b.affinity(100)
            .sessions
            .into_iter()
            .find(|session| session.endpoint == "second")
    };
    let session = eventually("B to bind the conversation", bound_on_b).await;
    assert!(!session.long_ttl);

    // The second turn lands on B, which would pick `first`: it stays on `second`.
    assert_eq!(send(&b, Some("conversation-1")).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 2));
    // Another conversation on B goes to `first` as usual.
    assert_eq!(send(&b, Some("conversation-2")).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (2, 2));

    // The binding lives in Redis for the affinity TTL (2m here).
    let mut redis = connection().await;
    let key = prefix.key(&format!("session:{:016x}", session.session.0));
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
    task_a.stop().await;
    task_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_starts_later_reads_what_is_shared() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, false);
    let (a, task_a) = instance("a", Arc::clone(&config)).await;
    first.enqueue(Reply::rate_limited(3600));
    assert_eq!(send(&a, None).await, 200);
    let mut redis = connection().await;
    let key = prefix.key("block:first");
    eventually_async("the block in Redis", || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            redis
                .exists::<_, bool>(&key)
                .await
                .ok()
                .filter(|found| *found)
        }
    })
    .await;
    task_a.stop().await;

    // C starts after the fact: it never saw the message, it reads the key.
    let (c, task_c) = instance("c", config).await;
    eventually("C to see `first` blocked", || {
        blocked(&c, "first").then_some(())
    })
    .await;
    assert_eq!(send(&c, None).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 2));
    let _: () = redis.del(&key).await.unwrap();
    task_c.stop().await;
}

/// The session key `forwarder` bound for a conversation header, other than `except`.
fn header_session(forwarder: &Forwarder, except: Option<SessionKey>) -> SessionKey {
    forwarder
        .affinity(100)
        .sessions
        .into_iter()
        .find(|session| session.source == SessionSource::Header && Some(session.session) != except)
        .expect("a conversation is bound")
        .session
}

/// Where `forwarder` has `session` bound, if anywhere.
fn bound_to(forwarder: &Forwarder, session: SessionKey) -> Option<String> {
    forwarder
        .affinity(100)
        .sessions
        .into_iter()
        .find(|view| view.session == session)
        .map(|view| view.endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_fails_no_request_and_the_link_catches_up_when_it_returns() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let mut proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), redis_addr).await;
    let through_proxy = format!("redis://default:s3cret-pw@{}/0", proxy.addr());
    let (a, task_a) = instance("a", config(&prefix, &through_proxy, &first, &second, false)).await;
    let (b, task_b) = instance("b", config(&prefix, REDIS, &first, &second, false)).await;
    assert!(status(&a).connected, "{:?}", status(&a));
    assert_eq!(
        status(&a).address,
        format!("redis://default:***@{}/0", proxy.addr())
    );
    // A conversation B started on `first`, known to A.
    assert_eq!(send(&b, Some("conversation-shared")).await, 200);
    let shared = header_session(&b, None);
    eventually("A to learn B's binding", || {
        (bound_to(&a, shared).as_deref() == Some("first")).then_some(())
    })
    .await;

    // Redis gone for A: it says so, and serves on its local state.
    proxy.interrupt().await;
    eventually("A to report Redis lost", || {
        (!status(&a).connected).then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(send(&a, None).await, 200, "requests never fail for Redis");
    }
    // What A learns meanwhile waits for the link: `first` blocked, so the shared conversation
    // moves to `second` here.
    first.enqueue(Reply::rate_limited(3600));
    assert_eq!(send(&a, None).await, 200);
    assert!(blocked(&a, "first"));
    assert_eq!(send(&a, Some("conversation-shared")).await, 200);
    assert_eq!(bound_to(&a, shared).as_deref(), Some("second"));
    let down = status(&a);
    let error = down.last_error.clone().expect("the error is shown");
    assert!(!format!("{down:?}").contains("s3cret-pw"), "{down:?}");
    assert!(!error.is_empty());
    assert_eq!((first.request_count(), second.request_count()), (5, 2));
    // And what B learns meanwhile, A misses for now.
    assert_eq!(send(&b, Some("conversation-during-outage")).await, 200);
    let missed = header_session(&b, Some(shared));
    assert_eq!((first.request_count(), second.request_count()), (6, 2));

    // Back: A reconnects and reads what it missed, but keeps what it changed meanwhile (newer
    // than Redis's copy); B learns the block and the move made during the outage.
    proxy
        .resume()
        .await
        .expect("the proxy listens again on its port");
    eventually("A to reconnect", || {
        let up = status(&a);
        (up.connected && up.reconnects >= 1).then_some(())
    })
    .await;
    eventually("A to read the binding B made during the outage", || {
        (bound_to(&a, missed).as_deref() == Some("first")).then_some(())
    })
    .await;
    eventually(
        "B to see the block and the move made during the outage",
        || {
            (blocked(&b, "first") && bound_to(&b, shared).as_deref() == Some("second"))
                .then_some(())
        },
    )
    .await;
    // A's reconcile ran before its queued updates went out: it kept its own newer binding.
    assert_eq!(bound_to(&a, shared).as_deref(), Some("second"));
    assert_eq!(send(&b, Some("conversation-shared")).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (6, 3));
    assert!(!format!("{:?}", status(&a)).contains("s3cret-pw"));
    task_a.stop().await;
    task_b.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_and_unknown_messages_are_ignored_and_counted() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let (b, task_b) = instance("b", config(&prefix, REDIS, &first, &second, false)).await;
    let until = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    let mut redis = connection().await;
    let channel = prefix.key("updates");
    let _: () = redis.publish(&channel, "not json at all").await.unwrap();
    let mixed = serde_json::json!({
        "from": "a-newer-version",
        "updates": [
            {"type": "something_new", "x": 1},
            {"type": "endpoint_blocked", "endpoint": "first", "until_ms": until as u64},
        ]
    });
    let _: () = redis.publish(&channel, mixed.to_string()).await.unwrap();

    // Messages are handled in order: once the block is applied, both others were seen.
    eventually("the known update to be applied", || {
        blocked(&b, "first").then_some(())
    })
    .await;
    assert_eq!(task_b.ignored_messages(), 2);
    assert_eq!(status(&b).applied, 1);
    task_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_change_wakes_the_other_instances() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, false);
    let cluster_a = RedisCluster::new(&config.cluster, "a").unwrap();
    let cluster_b = RedisCluster::new(&config.cluster, "b").unwrap();
    let notify_a = cluster_a.operator_notifier();
    let mut heard_by_b = cluster_b.operator_notifier().subscribe();
    let task_a = cluster_a
        .start(Forwarder::build(Arc::clone(&config)).unwrap())
        .await;
    let task_b = cluster_b.start(Forwarder::build(config).unwrap()).await;
    // Connecting bumps it once (a message may have been missed while away).
    assert!(task_b.status().connected);
    heard_by_b.borrow_and_update();

    notify_a.notify();
    tokio::time::timeout(WAIT, heard_by_b.changed())
        .await
        .expect("B hears A's operator change")
        .unwrap();
    task_a.stop().await;
    task_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_state_on_redis_is_compare_and_set_on_the_version() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let config = config(&prefix, REDIS, &first, &second, false);
    let a = RedisCluster::new(&config.cluster, "a")
        .unwrap()
        .shared_state();
    let b = RedisCluster::new(&config.cluster, "b")
        .unwrap()
        .shared_state();
    ccf_store::contract::shared_state_is_compare_and_set_on_the_version(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_leaves_start_up_and_requests_alone() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    // A port nothing listens on: take a free one and close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("redis://default:s3cret-pw@{free}");
    let config = config(&prefix, &url, &first, &second, false);
    let (a, task_a) = instance("a", config).await;
    let down = eventually("the failed connection in the status", || {
        Some(status(&a)).filter(|status| status.last_error.is_some())
    })
    .await;
    assert!(!down.connected);
    assert!(!format!("{down:?}").contains("s3cret-pw"), "{down:?}");
    first.enqueue(Reply::rate_limited(3600));
    assert_eq!(send(&a, None).await, 200);
    assert_eq!(send(&a, None).await, 200);
    assert_eq!((first.request_count(), second.request_count()), (1, 2));
    task_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_under_load_is_answered_while_redis_is_cut_and_restored() {
    let prefix = Prefix::new();
    let (first, second) = (MockUpstream::start().await, MockUpstream::start().await);
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let mut proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), redis_addr).await;
    let url = format!("redis://{}", proxy.addr());
    let (a, task_a) = instance("a", config(&prefix, &url, &first, &second, false)).await;
    assert!(status(&a).connected);

    // Four clients, each sending turns of its own conversation until told to stop.
    let running = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for client in 0..4 {
        let (a, running) = (a.clone(), running.clone());
        clients.push(tokio::spawn(async move {
            let session = format!("load-{client}");
            let mut statuses = Vec::new();
            while !running.is_cancelled() {
                statuses.push(send(&a, Some(&session)).await);
            }
            statuses
        }));
    }
    let sent = || first.request_count() + second.request_count();
    let before = sent();
    eventually("traffic to flow", || (sent() > before + 20).then_some(())).await;
    proxy.interrupt().await;
    eventually("A to report Redis lost", || {
        (!status(&a).connected).then_some(())
    })
    .await;
    let during = sent();
    eventually("traffic to flow during the outage", || {
        (sent() > during + 20).then_some(())
    })
    .await;
    proxy.resume().await.unwrap();
    eventually("A to reconnect", || status(&a).connected.then_some(())).await;
    let after = sent();
    eventually("traffic to flow after the outage", || {
        (sent() > after + 20).then_some(())
    })
    .await;
    running.cancel();
    let mut answered = 0;
    for client in clients {
        let statuses = client.await.unwrap();
        assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
        answered += statuses.len();
    }
    assert_eq!(u64::try_from(answered).unwrap(), sent());
    // Every conversation's binding is shared, and nothing queued was lost.
    let redis = connection().await;
    eventually_async("the four bindings in Redis", || {
        let mut redis = redis.clone();
        let pattern = prefix.key("session:*");
        async move {
            let keys: Vec<String> = redis.keys(pattern).await.ok()?;
            (keys.len() == 4).then_some(())
        }
    })
    .await;
    assert_eq!(status(&a).dropped, 0);
    task_a.stop().await;
    proxy.stop().await;
}
