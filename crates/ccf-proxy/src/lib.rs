//! The cc-forwarder forwarding engine.
//!
//! This crate owns the request path: admit (inbound auth, bounded body read, request id), route
//! (the router's candidate endpoints, group failover, suspension), forward (header rewriting, credentials, the shared pooled rustls
//! client, timeouts), relay (upstream frames to the client untouched, with idle and total
//! timeouts) and finish (logs, metrics, health observations). It never buffers a response body and
//! never reads a database; storage, dashboards and the TUI observe it.
//!
//! It is a library first: build a [`Forwarder`] from a [`ccf_config::Config`], then either
//! [`serve`] it on your own listener or call it as a hyper `Service` from your own server (see
//! `examples/embed.rs`).
//!
//! Main types: [`Forwarder`], [`ProxyError`] (typed failures mapped to Anthropic-format
//! responses), [`RelayBody`] (the streaming body), [`serve`] (graceful listener).

mod auth;
pub mod body;
pub mod classify;
mod client;
mod error;
pub mod events;
mod forwarder;
pub mod headers;
mod honesty;
mod limits;
pub mod monitoring;
mod probe;
pub mod reload;
mod server;
mod session;
mod suspend;
mod tracking;

pub use auth::InboundAuth;
pub use body::{ProxyBody, RelayBody, RelayEnd, RelayObserver};
pub use client::{build_upstream_client, ClientBuildError, UpstreamClient};
pub use error::{anthropic_error_response, ErrorOrigin, ProxyError};
pub use events::{EventBus, ForwarderEvent};
pub use forwarder::{BackgroundTasks, BuildError, Forwarder, OperatorAction, OperatorObserver};
pub use probe::UpstreamProber;
pub use reload::{ReloadError, ReloadReport, ReloadStatus, Reloader};
pub use server::{
    serve, serve_connections, serve_connections_with_limits, ClientAddr, ConnectionLimits,
    ServeOptions, ServeReport,
};
pub use tracking::RequestObserver;
