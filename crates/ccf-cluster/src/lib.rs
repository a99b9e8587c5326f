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

mod keys;
mod names;

pub use keys::RedisKeyCounters;
