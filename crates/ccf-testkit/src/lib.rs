//! Test kit for cc-forwarder: [`MockUpstream`], a fast, scriptable mock of the Anthropic
//! Messages API that records every request and how each reply ended.
//!
//! It owns a realistic upstream for integration tests and benchmarks: JSON and SSE messages with
//! full usage blocks, `count_tokens`, the models list, Anthropic error envelopes, and failure
//! modes (hang before headers, stall or drop mid-stream, gzip, malformed SSE). It must not know
//! any other cc-forwarder crate, so every crate can use it as a dev-dependency without cycles.
//!
//! Main types: [`MockUpstream`] (the server handle), [`Reply`] (what to answer),
//! [`RecordedRequest`] (what arrived and what was sent back), [`ReplyOutcome`]; for faults
//! below HTTP (a lying `content-length`, a reset mid-body) [`RawUpstream`] writes scripted
//! bytes ([`RawReply`]). [`RealisticUpstream`] behaves like the real API under real traffic
//! instead of following a script: generation time, TLS with HTTP/2 and a small stream limit,
//! 529 storms that end while `/v1/models` stays healthy, broken streams, rate-limit headers.
//! [`TcpProxy`] sits in front of a real server (MariaDB, Redis) and can be cut and restored on
//! the same port, for outage tests.
//!
//! ```no_run
//! # async fn demo() {
//! use ccf_testkit::{MockUpstream, Reply};
//! use std::time::Duration;
//!
//! let upstream = MockUpstream::start().await;
//! upstream.enqueue(Reply::overloaded().header("retry-after", "1"));
//! // ... point the forwarder at upstream.url() and send two requests ...
//! let requests = upstream.wait_for_requests(2, Duration::from_secs(5)).await;
//! assert_eq!(requests[0].path, "/v1/messages");
//! # }
//! ```

mod body;
pub mod prerequisite;
mod raw;
pub mod realistic;
mod redis_prefix;
mod render;
mod reply;
pub mod secret_markers;
mod server;
mod tcp_proxy;
mod tls_proxy;

pub use prerequisite::{in_ci, skip_unless_ci};
pub use raw::{RawEnd, RawReply, RawRequest, RawUpstream};
pub use realistic::{
    RateLimitFamily, RealisticConfig, RealisticError, RealisticRecord, RealisticUpstream, Storm,
    StormAnswer, StreamFault,
};
pub use redis_prefix::{RedisKeyPrefix, LOCAL_REDIS_URL};
pub use reply::{MockUsage, Reply, ReplyOutcome, DEFAULT_MODEL};
pub use server::{MockConfig, MockUpstream, RecordedRequest};
pub use tcp_proxy::TcpProxy;
pub use tls_proxy::{ConnectRecord, TlsConnectProxy, TlsProxyError, TlsProxyLog};
