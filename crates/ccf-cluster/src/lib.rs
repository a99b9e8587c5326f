//! State shared by several cc-forwarder instances through Redis (issue #21,
//! `cluster.redis_url`, docs/multi-instance.md).
//!
//! Behind a load balancer that spreads requests, every instance must route as if it were the
//! only one: a conversation keeps its endpoint whichever instance serves the next turn, an
//! endpoint one instance saw exhausted is skipped by all, a key's budget is one budget. This
//! crate is the engine's [`ccf_proxy::cluster::ClusterLink`] on Redis: local changes the engine
//! hands over are written to Redis (keys with TTLs, so nothing needs cleaning) and published;
//! other instances' changes are applied with [`ccf_proxy::Forwarder::apply_shared`]; per-key
//! rate and concurrency counters are atomic Redis scripts. Redis down or slow never fails a
//! request: the engine waits at most `cluster.redis_timeout` and decides locally; the link
//! reports itself disconnected and reconciles when Redis returns.
//!
//! It must not know the application (ccf-app wires it: [`RedisCluster::new`], then
//! [`RedisCluster::start`] with the forwarder, [`ClusterTask::stop`] at shutdown) nor any
//! usage store (the operator state it offers is the `ccf_store::SharedState` trait).
//!
//! Main types: [`RedisCluster`] (the link, prepared), [`ClusterTask`] (its running tasks),
//! [`OperatorNotifier`] (operator actions applied by every instance within milliseconds),
//! [`RedisSharedState`] (operator actions' durable record without MySQL), [`ClusterError`].
//! Inside: `link.rs` (the `ClusterLink`), `outbox.rs` (the bounded queue the request path
//! pushes to), `writer.rs` (outbox -> Redis), `subscriber.rs` (the connection supervisor:
//! Redis -> forwarder), `reconcile.rs` (state read back on every connection), `operator.rs`,
//! `status.rs`, `wire.rs` (the JSON on the wire), `names.rs` (every key and channel name),
//! `counters.rs` + `keys.rs` (the per-key counters).

mod counters;
mod error;
mod keys;
mod link;
mod names;
mod operator;
mod outbox;
mod reconcile;
mod status;
mod subscriber;
mod wire;
mod writer;

pub use error::ClusterError;
pub use keys::RedisKeyCounters;
pub use link::{ClusterTask, RedisCluster, START_WAIT};
pub use operator::{OperatorNotifier, RedisSharedState};
