//! The cc-forwarder forwarding engine.
//!
//! This crate owns the request path, one file per phase under `forwarder/` (the driver is
//! `Forwarder::handle` in `forwarder/mod.rs`): admit (`admit.rs`: in-flight slot, inbound auth,
//! bounded body read, request fields, request id), route (`route.rs`: the router's candidate
//! endpoints, group failover, suspension), forward (`attempts.rs`: header rewriting,
//! credentials, the shared pooled rustls client, timeouts; what each attempt's result leads to is
//! the retry policy in `retry.rs`), relay and finish (`finish.rs`: upstream frames to the client
//! untouched, with idle and total timeouts; then logs, metrics, health observations). It never
//! buffers a response body and never reads a database; storage, dashboards and the TUI observe
//! it.
//!
//! It is a library first: build a [`Forwarder`] from a [`ccf_config::Config`], then either
//! [`serve`] it on your own listener or call it as a hyper `Service` from your own server (see
//! `examples/embed.rs`).
//!
//! The `cc-forwarder` binary serves it thread-per-core instead: [`bind_reuseport_listeners`]
//! and [`serve_per_core`] (one current-thread runtime per core, each with its own listener and
//! upstream connections; `server/per_core.rs`).
//!
//! Main types: [`Forwarder`], [`ProxyError`] (typed failures mapped to Anthropic-format
//! responses), [`RelayBody`] (the streaming body), [`serve`] (graceful listener).

mod auth;
pub mod body;
pub mod classify;
mod client;
pub mod cluster;
mod error;
pub mod events;
mod forwarder;
pub mod headers;
mod honesty;
pub mod key_limits;
mod limits;
mod model_map;
pub mod monitoring;
mod probe;
mod ratelimit;
pub mod reload;
mod retry;
mod server;
mod session;
mod suspend;
mod thinking_repair;
mod tracking;

pub use auth::InboundAuth;
pub use body::{ProxyBody, RelayBody, RelayEnd, RelayObserver};
pub use client::{
    build_upstream_client, ClientBuildError, UpstreamBody, UpstreamClient, UpstreamRequestError,
};
pub use error::{anthropic_error_response, ErrorOrigin, ProxyError};
pub use events::{BudgetPeriod, EventBus, ForwarderEvent};
pub use forwarder::{BackgroundTasks, BuildError, Forwarder, OperatorAction, OperatorObserver};
pub use probe::UpstreamProber;
pub use reload::{ReloadError, ReloadReport, ReloadStatus, Reloader};
pub use server::per_core::{bind_reuseport_listeners, serve_per_core, PerCoreError};
pub use server::{
    serve, serve_connections, serve_connections_with_limits, ClientAddr, ConnectionLimits,
    ServeOptions, ServeReport,
};
pub use tracking::{LiveRequest, RequestObserver};
