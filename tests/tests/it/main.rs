//! Every end-to-end test of cc-forwarder in one test binary: the real app (or the real binary) on
//! loopback sockets against the test kit's mock upstream, one module per area.
//!
//! One binary instead of one per file: a single link instead of fifteen, and the shared support
//! code is compiled once, so an unused helper is a warning instead of an `allow(dead_code)`.
//! Modules run in parallel like any tests of one binary; each test owns its mock upstreams, its
//! app, its temp folders and its MariaDB database.

mod faults_common;
mod log_capture;
mod support;

mod accounting;
mod brownout;
mod brownout_health;
mod connections;
mod count_tokens;
mod dashboard;
mod failover_triggers;
mod faults_client;
mod faults_storage;
mod faults_upstream;
mod forwarding;
mod key_limits;
mod model_routing;
mod outbound_proxy;
mod outcome_health;
mod recorder_journal;
mod relay_honesty;
mod reload;
mod routing;
mod secrets;
mod security;
mod smart_routing;
mod subscription_quota;
mod timeouts;
mod usage_storage;
mod webhooks;
