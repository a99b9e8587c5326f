//! The configuration file's schema: one serde type per YAML section, with the defaults that apply
//! when a key is absent. An explicit value, `0` and `false` included, is always honoured (the Go
//! original replaced zero values by defaults; this port does not).

use ccf_types::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::units::{ByteSize, GoDuration};

/// The whole file as written by the user, before inheritance and validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// IANA time zone used to show times to people; `None` means the machine's local zone.
    pub timezone: Option<String>,
    /// Identifier of this forwarder instance, written on every usage row (default: host name + port).
    pub instance_id: Option<String>,
    /// The proxy listener.
    pub server: ServerConfig,
    /// How endpoints are ordered inside the active group.
    pub strategy: StrategyConfig,
    /// Attempts per endpoint and back-off.
    pub retry: RetryConfig,
    /// Active health checks.
    pub health: HealthConfig,
    /// Log level, format and file output.
    pub logging: LoggingConfig,
    /// Streaming timeouts.
    pub streaming: StreamingConfig,
    /// Group failover.
    pub group: GroupConfig,
    /// Holding requests while no group can serve them (manual mode).
    pub request_suspend: RequestSuspendConfig,
    /// Default endpoint timeout when neither the endpoint nor the first endpoint sets one
    /// (default `300s`).
    pub global_timeout: Option<GoDuration>,
    /// Inbound authentication on the proxy port.
    pub auth: AuthConfig,
    /// The terminal UI.
    pub tui: TuiConfig,
    /// The admin API and web dashboard listener.
    pub web: WebConfig,
    /// Local handling of `/v1/messages/count_tokens`.
    pub token_counting: TokenCountingConfig,
    /// Outbound proxy for every upstream connection.
    pub proxy: OutboundProxyConfig,
    /// Certificates trusted for upstream TLS besides the system and bundled roots.
    pub tls: TlsConfig,
    /// Upstream connection behaviour: HTTP/2 streams per connection and keep-alive PINGs.
    pub upstream: UpstreamConfig,
    /// Usage storage and pricing.
    pub usage_tracking: UsageTrackingConfig,
    /// Smart-routing settings (session affinity and friends).
    pub routing: RoutingConfig,
    /// The upstream endpoints, in file order.
    pub endpoints: Vec<RawEndpoint>,
    /// Webhook receivers of routing, health, budget, quota and reload events.
    pub webhooks: Vec<RawWebhook>,
    /// State shared by several instances through Redis (docs/multi-instance.md).
    pub cluster: ClusterConfig,
}

/// `server.*`: the proxy listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Listen host (default `localhost`).
    pub host: String,
    /// Listen port (default 8080; the example uses 8087).
    pub port: u16,
    /// Largest request body accepted (default `32MB`); larger bodies get a 413.
    pub max_request_body_size: ByteSize,
    /// How long a client may take to send its request headers (default `30s`).
    pub header_read_timeout: GoDuration,
    /// How long in-flight requests may run after a shutdown signal (default `30s`).
    pub shutdown_timeout: GoDuration,
    /// Largest request head (request line plus headers) accepted (default `64KB`); larger heads
    /// get a 431.
    pub max_header_bytes: ByteSize,
    /// Most request headers accepted (default 100); more get a 431.
    pub max_headers: u32,
    /// Most client connections open at once (default 4096); connections beyond it wait in the
    /// listen backlog until one closes.
    pub max_connections: u32,
    /// Most proxied requests in flight at once (default 1024); beyond it the proxy answers 529
    /// `overloaded_error`.
    pub max_in_flight: u32,
    /// How long a client may take to send its whole request body once the head arrived
    /// (default `60s`, the Go original's read timeout); a slower body gets a 408 and frees its
    /// in-flight slot.
    pub body_read_timeout: GoDuration,
    /// Start even when a listener is reachable from other machines without authentication
    /// (`auth.enabled: false` on a non-loopback `server.host`, or `web.enabled` on a non-loopback
    /// `web.host` without `web.auth_token`). Default false: such a start is refused.
    pub allow_insecure: bool,
    /// How many per-core runtimes serve the proxy listener (thread-per-core): absent (the
    /// default) means one per available core; `0` serves the proxy on the runtime that runs the
    /// application instead (the binary then builds one multi-threaded runtime, as before #19);
    /// `N` starts `N` current-thread runtimes, each on its own thread with its own
    /// `SO_REUSEPORT` listener and upstream connections. Read at start only.
    pub threads: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 8080,
            max_request_body_size: ByteSize(32 * 1024 * 1024),
            header_read_timeout: GoDuration::secs(30),
            shutdown_timeout: GoDuration::secs(30),
            max_header_bytes: ByteSize(64 * 1024),
            max_headers: 100,
            max_connections: 4096,
            max_in_flight: 1024,
            body_read_timeout: GoDuration::secs(60),
            allow_insecure: false,
            threads: None,
        }
    }
}

/// Most per-core runtimes `server.threads` may ask for.
pub const MAX_SERVER_THREADS: u32 = 256;

impl ServerConfig {
    /// The number of per-core runtimes to serve the proxy on: `None` for "on the application's
    /// own runtime" (`server.threads: 0`), else `server.threads` or, when absent, the number of
    /// cores this process may use (`std::thread::available_parallelism`, 1 if unknown).
    pub fn per_core_runtimes(&self) -> Option<usize> {
        match self.threads {
            Some(0) => None,
            Some(threads) => usize::try_from(threads).ok(),
            None => Some(std::thread::available_parallelism().map_or(1, usize::from)),
        }
    }
}

/// Endpoint ordering strategy inside a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StrategyType {
    /// Ascending `priority`, ties in file order.
    #[default]
    Priority,
    /// Ascending measured latency.
    Fastest,
}

/// `strategy.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategyConfig {
    /// `priority` or `fastest`.
    #[serde(rename = "type")]
    pub kind: StrategyType,
    /// With `fastest`, probe endpoints before routing.
    pub fast_test_enabled: bool,
    /// How long a probe result stays fresh (default `3s`).
    pub fast_test_cache_ttl: GoDuration,
    /// Timeout of one probe (default `1s`).
    pub fast_test_timeout: GoDuration,
    /// Probe path; `None` means `health.health_path`.
    pub fast_test_path: Option<String>,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            kind: StrategyType::Priority,
            fast_test_enabled: false,
            fast_test_cache_ttl: GoDuration::secs(3),
            fast_test_timeout: GoDuration::secs(1),
            fast_test_path: None,
        }
    }
}

/// `retry.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts per endpoint, the first included (default 3).
    pub max_attempts: u32,
    /// Back-off base (default `1s`).
    pub base_delay: GoDuration,
    /// Back-off cap (default `30s`).
    pub max_delay: GoDuration,
    /// Back-off factor (default 2.0).
    #[serde(deserialize_with = "decimal::required")]
    pub multiplier: f64,
    /// Retry budget (Envoy's): retries in flight are at most this percentage of the requests in
    /// flight, 0 to 100 (default 20).
    #[serde(deserialize_with = "decimal::required")]
    pub budget_percent: f64,
    /// Retry budget floor: this many retries may always be in flight (default 3).
    pub min_retry_concurrency: u32,
    /// Upstream statuses that move the request to the next endpoint at once, without retrying
    /// the endpoint (a relay answering 404 or 400 when it lacks the model). 400 to 599 but 401,
    /// 403 and 429, which have their own handling (default none). See docs/failover.md.
    pub failover_on_status: Vec<u16>,
    /// A 200 with no content and zero output tokens is a failure of the endpoint: the request
    /// moves to the next endpoint (default false). See docs/failover.md.
    pub failover_on_empty_answer: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: GoDuration::secs(1),
            max_delay: GoDuration::secs(30),
            multiplier: 2.0,
            budget_percent: 20.0,
            min_retry_concurrency: 3,
            failover_on_status: Vec::new(),
            failover_on_empty_answer: false,
        }
    }
}

/// `health.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Period between checks (default `30s`).
    pub check_interval: GoDuration,
    /// Timeout of one check (default `5s`).
    pub timeout: GoDuration,
    /// Path probed with `GET` (default `/v1/models`).
    pub health_path: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_interval: GoDuration::secs(30),
            timeout: GoDuration::secs(5),
            health_path: "/v1/models".into(),
        }
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-chunk details.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems worth a look.
    #[serde(alias = "warning")]
    Warn,
    /// Failures only.
    Error,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `logging.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    /// `debug`, `info`, `warn` or `error` (default `info`).
    pub level: LogLevel,
    /// `text` or `json` (default `text`).
    pub format: LogFormat,
    /// Also write logs to `file_path`, rotated by size.
    pub file_enabled: bool,
    /// Log file (default `logs/app.log`).
    pub file_path: String,
    /// Rotate when the file reaches this size (default `100MB`, base 1024).
    pub max_file_size: ByteSize,
    /// Rotated files kept (default 10).
    pub max_files: u32,
    /// gzip rotated files.
    pub compress_rotated: bool,
    /// Do not truncate long lines in the file log.
    pub disable_response_limit: bool,
    /// Dumps of responses whose usage could not be parsed.
    pub token_debug: TokenDebugConfig,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
            file_enabled: false,
            file_path: "logs/app.log".into(),
            max_file_size: ByteSize(100 * 1024 * 1024),
            max_files: 10,
            compress_rotated: false,
            disable_response_limit: false,
            token_debug: TokenDebugConfig::default(),
        }
    }
}

/// `logging.token_debug.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenDebugConfig {
    /// Write a debug dump when usage parsing fails.
    pub enabled: bool,
    /// Folder of the dumps (default `logs`).
    pub save_path: String,
    /// Dumps kept (default 50).
    pub max_files: u32,
    /// Dumps older than this many days are removed (default 7).
    pub auto_cleanup_days: u32,
}

impl Default for TokenDebugConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            save_path: "logs".into(),
            max_files: 50,
            auto_cleanup_days: 7,
        }
    }
}

/// `streaming.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamingConfig {
    /// Accepted for compatibility; the forwarder never injects bytes into a stream (default `30s`).
    pub heartbeat_interval: GoDuration,
    /// Accepted for compatibility (default `10s`); `max_idle_time` bounds stalled streams.
    pub read_timeout: GoDuration,
    /// A stream that sends no byte for this long is cut (default `120s`).
    pub max_idle_time: GoDuration,
    /// Time allowed for upstream response headers, for every request (default `60s`).
    pub response_header_timeout: GoDuration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: GoDuration::secs(30),
            read_timeout: GoDuration::secs(10),
            max_idle_time: GoDuration::secs(120),
            response_header_timeout: GoDuration::secs(60),
        }
    }
}

/// `group.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupConfig {
    /// How long a failed group stays out of rotation in auto mode (default `600s`).
    pub cooldown: GoDuration,
    /// Auto mode (`true`, the default when the key is absent) or manual mode (`false`).
    pub auto_switch_between_groups: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            cooldown: GoDuration::secs(600),
            auto_switch_between_groups: true,
        }
    }
}

/// `request_suspend.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestSuspendConfig {
    /// Hold requests while an operator can switch to a healthy group.
    pub enabled: bool,
    /// Longest time a request stays held (default `300s`).
    pub timeout: GoDuration,
    /// Most requests held at once (default 100, at most 10000).
    pub max_suspended_requests: u32,
}

impl Default for RequestSuspendConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            timeout: GoDuration::secs(300),
            max_suspended_requests: 100,
        }
    }
}

/// `auth.*`: inbound authentication on the proxy port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Require the token on every proxied request.
    pub enabled: bool,
    /// The token clients must send as `Authorization: Bearer` or `x-api-key` (the Go key; it
    /// acts as a token named `default`).
    pub token: Option<Secret>,
    /// Named tokens, one per person or client: the matching token's name is recorded on each
    /// request row (`api_key_name`) so usage can be split by key.
    pub tokens: Vec<AuthToken>,
    /// How long a request waits for one of its key's `limits.concurrency` slots before it is
    /// refused with 429 (default 30s).
    pub queue_timeout: GoDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token: None,
            tokens: Vec::new(),
            queue_timeout: GoDuration::secs(30),
        }
    }
}

/// `auth.tokens[].limits`: what one key may use. Every limit is optional; an absent one does not
/// limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyLimitsConfig {
    /// Requests admitted per rolling minute; over it: 429 with `retry-after`.
    pub requests_per_minute: Option<u32>,
    /// Requests of this key in flight at once; more wait (FIFO) up to `auth.queue_timeout`.
    pub concurrency: Option<u32>,
    /// USD the key may spend per day (midnight to midnight in `timezone`).
    #[serde(default, deserialize_with = "decimal::optional")]
    pub daily_budget_usd: Option<f64>,
    /// USD the key may spend per calendar month (in `timezone`).
    #[serde(default, deserialize_with = "decimal::optional")]
    pub monthly_budget_usd: Option<f64>,
}

impl KeyLimitsConfig {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == KeyLimitsConfig::default()
    }
}

/// The name `auth.token` is recorded under.
pub const DEFAULT_AUTH_TOKEN_NAME: &str = "default";

/// One `auth.tokens[]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthToken {
    /// Name recorded on the requests made with this token (not secret).
    pub name: String,
    /// The token itself.
    pub token: Secret,
    /// Per-key rate, concurrency and budget limits (`docs/keys.md`).
    pub limits: KeyLimitsConfig,
}

impl AuthConfig {
    /// Every accepted token with its name: `auth.token` (named [`DEFAULT_AUTH_TOKEN_NAME`]) first,
    /// then `auth.tokens` in file order. Empty tokens are skipped.
    pub fn named_tokens(&self) -> Vec<(String, Secret)> {
        let legacy = self
            .token
            .iter()
            .filter(|token| !token.is_empty())
            .map(|token| (DEFAULT_AUTH_TOKEN_NAME.to_string(), token.clone()));
        let named = self
            .tokens
            .iter()
            .filter(|entry| !entry.token.is_empty())
            .map(|entry| (entry.name.clone(), entry.token.clone()));
        legacy.chain(named).collect()
    }
}

/// `tui.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TuiConfig {
    /// Start the terminal UI (default false).
    pub enabled: bool,
    /// Refresh period (default `2s`).
    pub update_interval: GoDuration,
    /// Write priority edits back to the YAML file.
    pub save_priority_edits: bool,
}

impl Default for TuiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            update_interval: GoDuration::secs(2),
            save_priority_edits: false,
        }
    }
}

/// `web.*`: the admin API and dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Serve the admin API and dashboard (default false).
    pub enabled: bool,
    /// Listen host (default `localhost`).
    pub host: String,
    /// Listen port (default 8088).
    pub port: u16,
    /// Token required by the admin API when bound to a non-loopback address.
    pub auth_token: Option<Secret>,
    /// Extra host names the admin API answers to (its `Host` header), besides `localhost` and
    /// IP literals; any other name is refused so a DNS-rebinding page cannot reach the API.
    /// Bare names without port, compared case-insensitively (default empty).
    pub allowed_hosts: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: 8088,
            auth_token: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `token_counting.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenCountingConfig {
    /// Answer `/v1/messages/count_tokens` (forwarded or estimated) instead of proxying blindly.
    pub enabled: bool,
    /// Characters per token for the local estimate (default 4.0).
    #[serde(deserialize_with = "decimal::required")]
    pub estimation_ratio: f64,
}

impl Default for TokenCountingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            estimation_ratio: 4.0,
        }
    }
}

/// Outbound proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboundProxyType {
    /// HTTP proxy (CONNECT for https upstreams).
    #[default]
    Http,
    /// HTTP proxy reached over TLS.
    Https,
    /// SOCKS5 proxy.
    Socks5,
}

/// `proxy.*`: outbound proxy for all upstream traffic. `Debug` masks the password, including
/// one written inside `url`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboundProxyConfig {
    /// Use the proxy.
    pub enabled: bool,
    /// `http`, `https` or `socks5`.
    #[serde(rename = "type")]
    pub kind: OutboundProxyType,
    /// Full proxy URL; wins over `host` and `port`.
    pub url: Option<String>,
    /// Proxy host.
    pub host: Option<String>,
    /// Proxy port.
    pub port: Option<u16>,
    /// Proxy user name.
    pub username: Option<String>,
    /// Proxy password.
    pub password: Option<Secret>,
    /// PEM file of CA certificates trusted for the proxy's own certificate (`type: https`), in
    /// addition to the built-in webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for OutboundProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundProxyConfig")
            .field("enabled", &self.enabled)
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(mask_url_password))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `tls.*`: trust for upstream TLS connections. The system's certificate store and the bundled
/// webpki roots are always trusted; `ca_file` adds more (a relay with a private CA).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted for every upstream (optional).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `upstream.*`: how upstream connections are used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// Most concurrent requests sent on one HTTP/2 connection (default 100); when every
    /// connection to an origin carries this many, another connection is opened instead of
    /// queueing behind them. Set it at or below the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams_per_connection: u32,
    /// Interval of HTTP/2 keep-alive PINGs (default `30s`; `0s` turns them off).
    pub keep_alive_interval: GoDuration,
    /// How long a PING may go unanswered before the connection is closed (default `20s`).
    pub keep_alive_timeout: GoDuration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            keep_alive_interval: GoDuration::secs(30),
            keep_alive_timeout: GoDuration::secs(20),
        }
    }
}

/// `cluster.*`: hot routing state shared by several instances through Redis (issue #21,
/// docs/multi-instance.md). Without `redis_url` nothing is shared through Redis: a single
/// instance, or several sharing usage rows and operator actions through MySQL only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` URL of the Redis server every instance shares (a password in
    /// it is masked wherever it is shown); absent: nothing is shared through Redis.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel (default `ccf`): instances that share state use
    /// the same prefix, separate deployments on one Redis use different ones.
    pub redis_prefix: String,
    /// Longest wait for Redis where a request waits for it (a key's shared rate or concurrency
    /// counter); past it the instance decides from its local state (default `50ms`).
    pub redis_timeout: GoDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_prefix: "ccf".into(),
            redis_timeout: GoDuration::millis(50),
        }
    }
}

/// `url` with the password of its user info masked (`http://bob:***@proxy:3128`); anything
/// that does not parse as a URL is masked whole when it could hold credentials (contains `@`).
pub fn mask_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                "***".to_string()
            }
        }
        Ok(_) => url.to_string(),
        Err(_) if url.contains('@') => "***".to_string(),
        Err(_) => url.to_string(),
    }
}

/// `usage_tracking.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageTrackingConfig {
    /// Record every request (default true: embedded SQLite at `database_path`).
    pub enabled: bool,
    /// Legacy SQLite path, used when `database` is absent (default `data/usage.db`).
    pub database_path: String,
    /// Database selection; absent means SQLite at `database_path`.
    pub database: Option<DatabaseConfig>,
    /// Most usage records the recorder keeps in memory while the database is slow or down
    /// (default 1000); final outcomes past it go to the journal file.
    pub buffer_size: u32,
    /// Folder of the recorder's journal (default: the SQLite file's folder; with MySQL the
    /// folder of `database_path`, `data` by default).
    pub journal_dir: Option<String>,
    /// Longest time the recorder writes at shutdown, after the drain; what is left goes to the
    /// journal and is written at the next start (default `10s`).
    pub shutdown_flush_timeout: GoDuration,
    /// Outcomes written per batch (default 100).
    pub batch_size: u32,
    /// Longest time an outcome waits before it is written (default `1s`).
    pub flush_interval: GoDuration,
    /// Attempts at a record the database rejects as invalid data, after its batch was split
    /// (default 3); unavailable, locked or read-only databases are retried without limit.
    pub max_retry: u32,
    /// Days of rows kept; `0` keeps everything (default 90).
    pub retention_days: u32,
    /// Period of the retention clean-up (default `24h`).
    pub cleanup_interval: GoDuration,
    /// USD per million tokens, keyed by model id (family match when the exact id is absent).
    pub model_pricing: BTreeMap<String, ModelPricing>,
    /// Prices for models not listed in `model_pricing`.
    pub default_pricing: ModelPricing,
}

impl Default for UsageTrackingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database_path: "data/usage.db".into(),
            database: None,
            buffer_size: 1000,
            journal_dir: None,
            shutdown_flush_timeout: GoDuration::secs(10),
            batch_size: 100,
            flush_interval: GoDuration::secs(1),
            max_retry: 3,
            retention_days: 90,
            cleanup_interval: GoDuration::secs(24 * 3600),
            model_pricing: BTreeMap::new(),
            default_pricing: ModelPricing::default(),
        }
    }
}

/// Storage back-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    /// Embedded SQLite file.
    Sqlite,
    /// MySQL or MariaDB server.
    Mysql,
}

/// `usage_tracking.database.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite` or `mysql`; absent means `mysql` when `host` or `database` is set, else `sqlite`.
    #[serde(rename = "type")]
    pub kind: Option<DatabaseType>,
    /// SQLite file (default: `usage_tracking.database_path`).
    pub path: Option<String>,
    /// MySQL host.
    pub host: Option<String>,
    /// MySQL port (default 3306).
    pub port: Option<u16>,
    /// MySQL database name.
    pub database: Option<String>,
    /// MySQL user.
    pub username: Option<String>,
    /// MySQL password.
    pub password: Option<Secret>,
    /// Character set (default `utf8mb4`).
    pub charset: Option<String>,
    /// Session time zone for display (default: the global `timezone`).
    pub timezone: Option<String>,
    /// Pool size (default 10).
    pub max_open_conns: Option<u32>,
    /// Idle connections kept (default 5).
    pub max_idle_conns: Option<u32>,
    /// Longest life of a connection (default `1h`).
    pub conn_max_lifetime: Option<GoDuration>,
    /// Longest idle time of a connection (default `10m`).
    pub conn_max_idle_time: Option<GoDuration>,
}

/// USD per million tokens for one model.
///
/// In the file, an absent `input` or `output` is 0, an absent `cache_creation` is 1.25 x `input`
/// and an absent `cache_read` is 0.1 x `input` (Anthropic's cache multipliers). The
/// [`Default`] (3 / 15 / 3.75 / 0.30) applies only when the whole entry is absent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "ModelPricingRepr")]
pub struct ModelPricing {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes (5-minute TTL).
    pub cache_creation: f64,
    /// Cache reads.
    pub cache_read: f64,
    /// Cache writes with the 1-hour TTL; absent means 2x input.
    pub cache_creation_1h: Option<f64>,
    /// The higher prices of a long request (`long_context`), for models that have such a tier;
    /// absent (as in every Go config): one price at every length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPricing>,
}

/// Input tokens above which [`LongContextPricing`] applies when the entry does not say
/// (Anthropic's 200K tier).
pub const DEFAULT_LONG_CONTEXT_THRESHOLD: u64 = 200_000;

/// `model_pricing.<model>.long_context`: USD per million tokens for every token of a request
/// whose input (input + cache writes + cache reads, as Anthropic counts it) exceeds
/// `threshold_input_tokens`.
///
/// `input` and `output` are required; absent cache prices follow this tier's own `input`:
/// `cache_creation` 1.25 x, `cache_read` 0.1 x, `cache_creation_1h` 2 x `input`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LongContextPricingRepr")]
pub struct LongContextPricing {
    /// The tier applies when the request's input tokens exceed this (default 200000).
    pub threshold_input_tokens: u64,
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes (5-minute TTL).
    pub cache_creation: f64,
    /// Cache reads.
    pub cache_read: f64,
    /// Cache writes with the 1-hour TTL; absent means 2x this tier's input.
    pub cache_creation_1h: Option<f64>,
}

/// A long-context tier as written.
#[derive(Deserialize)]
struct LongContextPricingRepr {
    #[serde(default)]
    threshold_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    input: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    output: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_creation: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_read: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_creation_1h: Option<f64>,
}

impl TryFrom<LongContextPricingRepr> for LongContextPricing {
    type Error = String;

    /// Unlike an entry, a tier must write its `input` and `output`: a misspelt key would
    /// otherwise price every long request's tokens at 0.
    fn try_from(repr: LongContextPricingRepr) -> Result<Self, String> {
        let (Some(input), Some(output)) = (repr.input, repr.output) else {
            return Err(
                "a long_context tier needs its own `input` and `output` prices \
                        (USD per million tokens)"
                    .into(),
            );
        };
        Ok(Self {
            threshold_input_tokens: repr
                .threshold_input_tokens
                .unwrap_or(DEFAULT_LONG_CONTEXT_THRESHOLD),
            input,
            output,
            cache_creation: repr.cache_creation.unwrap_or(input * 1.25),
            cache_read: repr.cache_read.unwrap_or(input * 0.1),
            cache_creation_1h: repr.cache_creation_1h,
        })
    }
}

/// A pricing entry as written, so absent prices can be told from explicit zeros.
#[derive(Deserialize)]
struct ModelPricingRepr {
    #[serde(default, deserialize_with = "decimal::optional")]
    input: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    output: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_creation: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_read: Option<f64>,
    #[serde(default, deserialize_with = "decimal::optional")]
    cache_creation_1h: Option<f64>,
    #[serde(default)]
    long_context: Option<LongContextPricing>,
}

impl From<ModelPricingRepr> for ModelPricing {
    fn from(repr: ModelPricingRepr) -> Self {
        let input = repr.input.unwrap_or(0.0);
        Self {
            input,
            output: repr.output.unwrap_or(0.0),
            cache_creation: repr.cache_creation.unwrap_or(input * 1.25),
            cache_read: repr.cache_read.unwrap_or(input * 0.1),
            cache_creation_1h: repr.cache_creation_1h,
            long_context: repr.long_context,
        }
    }
}

impl Default for ModelPricing {
    fn default() -> Self {
        Self {
            input: 3.0,
            output: 15.0,
            cache_creation: 3.75,
            cache_read: 0.30,
            cache_creation_1h: None,
            long_context: None,
        }
    }
}

/// `routing.*`: smart-routing switches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Keep a conversation on the endpoint holding its prompt cache (`on`/`off`, default on).
    pub session_affinity: OnOff,
    /// How long a session stays bound to its endpoint after a turn (default `5m`, the prompt
    /// cache's TTL; turns that ask for the 1-hour cache keep it for `1h`, or this when longer).
    pub affinity_ttl: GoDuration,
    /// Most sessions remembered at once (default 10000); past it the binding closest to expiry
    /// is dropped.
    pub affinity_max_sessions: u64,
    /// Compare what endpoints report (model, usage, stream pacing) with what was asked and sent,
    /// and keep per-endpoint honesty scores (`on`/`off`, default on).
    pub relay_honesty: OnOff,
    /// Try endpoints whose honesty score fell below `honesty_threshold` after the honest ones
    /// of their group (default false).
    pub demote_dishonest: bool,
    /// Honesty score (between 0 and 1, exclusive) below which `demote_dishonest` demotes an endpoint (default 0.5).
    pub honesty_threshold: f64,
    /// How many times more (or fewer) input tokens than the local estimate an endpoint may
    /// report before its usage is called wrong (default 2.5).
    pub usage_tolerance: f64,
    /// Subscription accounts (`anthropic-ratelimit-unified-*`): new sessions avoid an endpoint
    /// whose representative window is used at or above this fraction (0 < x <= 1, default 0.9);
    /// bound sessions stay.
    #[serde(deserialize_with = "decimal::required")]
    pub quota_drain_at: f64,
    /// On a 400 naming an invalid `signature` in a `thinking` block, drop the thinking blocks
    /// of earlier assistant turns and retry once on the same endpoint (default false). See
    /// docs/failover.md.
    pub repair_thinking_signatures: bool,
    /// Routing by model: the first rule whose `match` fits the request's model picks the group
    /// the request starts in (default none). See docs/models.md.
    pub model_rules: Vec<ModelRuleConfig>,
}

/// One `routing.model_rules[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelRuleConfig {
    /// The request model this rule applies to: an exact name or a `*` glob.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The group the request starts in (an `endpoints[].group`).
    pub group: String,
    /// Only that group: no failover to other groups when it fails (default false).
    pub only: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            relay_honesty: OnOff(true),
            demote_dishonest: false,
            honesty_threshold: 0.5,
            usage_tolerance: 2.5,
            session_affinity: OnOff(true),
            affinity_ttl: GoDuration::secs(5 * 60),
            affinity_max_sessions: 10_000,
            quota_drain_at: 0.9,
            repair_thinking_signatures: false,
            model_rules: Vec::new(),
        }
    }
}

/// A switch written `on`/`off` (YAML booleans are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OnOffRepr", into = "bool")]
pub struct OnOff(pub bool);

#[derive(Deserialize)]
#[serde(untagged)]
enum OnOffRepr {
    Bool(bool),
    Text(String),
}

impl TryFrom<OnOffRepr> for OnOff {
    type Error = String;
    fn try_from(repr: OnOffRepr) -> Result<Self, Self::Error> {
        match repr {
            OnOffRepr::Bool(value) => Ok(OnOff(value)),
            OnOffRepr::Text(text) => match text.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" => Ok(OnOff(true)),
                "off" | "false" | "no" => Ok(OnOff(false)),
                other => Err(format!("expected `on` or `off`, found `{other}`")),
            },
        }
    }
}

impl From<OnOff> for bool {
    fn from(value: OnOff) -> bool {
        value.0
    }
}

/// One `endpoints[]` entry as written; unset keys are inherited (see [`crate::Endpoint`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEndpoint {
    /// Unique name (required).
    pub name: String,
    /// Base URL, possibly with a path prefix (required).
    pub url: String,
    /// Order inside the group; lower is preferred (default 0).
    pub priority: Option<u32>,
    /// Group; inherited from the previous endpoint, the first defaults to `Default`.
    pub group: Option<String>,
    /// Group order; inherited from the previous endpoint, the first defaults to 1.
    #[serde(rename = "group-priority")]
    pub group_priority: Option<u32>,
    /// Sent as `Authorization: Bearer <token>`; inherited from the group's first endpoint with one.
    pub token: Option<Secret>,
    /// Sent as `x-api-key`; inherited like `token`.
    #[serde(rename = "api-key")]
    pub api_key: Option<Secret>,
    /// Total time for a non-streaming request; inherited from the first endpoint, else `global_timeout`.
    pub timeout: Option<GoDuration>,
    /// Extra headers applied last (they win); merged over the first endpoint's headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// The endpoint answers `/v1/messages/count_tokens`.
    pub supports_count_tokens: bool,
    /// PEM file of CA certificates trusted for this endpoint's TLS, besides `tls.ca_file`, the
    /// system store and the bundled roots (optional; not inherited).
    pub ca_file: Option<std::path::PathBuf>,
    /// Outbound proxy for this endpoint's connections, in the forms of the global `proxy`;
    /// inherited from the first endpoint of the same group that sets one, else the global
    /// `proxy`. `proxy: {enabled: false}` connects directly whatever the global `proxy` says.
    pub proxy: Option<OutboundProxyConfig>,
    /// Request model (exact name or `*` glob) to the model name this endpoint is sent
    /// (optional; not inherited: a map speaks one upstream's model names). See docs/models.md.
    pub model_map: Option<BTreeMap<String, String>>,
}

/// Decimal numbers read from their text with full `f64` precision. The loader hands YAML
/// scalars over as text (so string keys keep what the user wrote), and figment's lossy number
/// conversion would go through `f32` first and turn a price of `0.08` into `0.0799999982`.
mod decimal {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    struct DecimalVisitor;

    impl Visitor<'_> for DecimalVisitor {
        type Value = f64;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a number")
        }

        fn visit_f64<E: Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_f32<E: Error>(self, value: f32) -> Result<f64, E> {
            // Through its shortest decimal text, so 0.08f32 becomes 0.08, not 0.0799999982.
            value
                .to_string()
                .parse()
                .map_err(|_| E::custom(format!("invalid number `{value}`")))
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<f64, E> {
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|value| value.is_finite())
                .ok_or_else(|| E::custom(format!("expected a number, found `{text}`")))
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(DecimalVisitor)
    }

    pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        struct OptionalVisitor;
        impl<'de> Visitor<'de> for OptionalVisitor {
            type Value = Option<f64>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a number")
            }
            fn visit_none<E: Error>(self) -> Result<Option<f64>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<f64>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Option<f64>, D::Error> {
                required(deserializer).map(Some)
            }
        }
        deserializer.deserialize_option(OptionalVisitor)
    }
}

#[cfg(test)]
mod secret_masking_tests {
    use super::*;

    #[test]
    fn proxy_debug_masks_the_password_in_the_url_and_the_field() {
        let proxy = OutboundProxyConfig {
            enabled: true,
            url: Some("http://bob:hunter2-long-password@proxy.example:3128".into()),
            password: Some(Secret::new("field-password-value")),
            ..OutboundProxyConfig::default()
        };
        let debug = format!("{proxy:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("field-password-value"), "{debug}");
        assert!(
            debug.contains("http://bob:***@proxy.example:3128"),
            "{debug}"
        );
    }

    #[test]
    fn url_masking_keeps_urls_without_credentials() {
        assert_eq!(
            mask_url_password("socks5://127.0.0.1:1080"),
            "socks5://127.0.0.1:1080"
        );
        assert_eq!(mask_url_password("not a url @ with secret"), "***");
    }
}

// --- webhooks (issue #20, point 6) ---

/// One `webhooks[]` entry as written: where to POST which events, signed with `secret` when set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawWebhook {
    /// The receiver's URL (`http` or `https`).
    pub url: String,
    /// The event names delivered to it (see [`WebhookEvent`]).
    pub events: Vec<String>,
    /// Key of the `x-ccf-signature` HMAC-SHA256 header; no signature when absent or empty.
    pub secret: Option<Secret>,
}

/// One validated webhook receiver (`webhooks[]`). `Debug` masks the secret and any password in
/// the URL.
#[derive(Clone, PartialEq)]
pub struct Webhook {
    /// The receiver's URL, `http` or `https`.
    pub url: url::Url,
    /// The events delivered to it, in file order, without repeats.
    pub events: Vec<WebhookEvent>,
    /// Key of the signature header; `None` means unsigned.
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.masked_url())
            .field("events", &self.events)
            .field("secret", &self.secret)
            .finish()
    }
}

impl Webhook {
    /// The URL to show people: a password in the user info and every query value masked (query
    /// strings often carry a receiver's token).
    pub fn masked_url(&self) -> String {
        let mut shown = self.url.clone();
        if let Some(password) = shown.password().map(ccf_types::mask_secret) {
            let _ = shown.set_password(Some(&password));
        }
        if shown.query().is_some() {
            let pairs: Vec<(String, String)> = self
                .url
                .query_pairs()
                .map(|(name, value)| (name.into_owned(), ccf_types::mask_secret(&value)))
                .collect();
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        shown.to_string()
    }

    /// Whether `event` is delivered to this receiver.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

/// An event a webhook can subscribe to; the names are the `events` values and the `event` field
/// of the delivered body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// An endpoint turned unhealthy.
    EndpointUnhealthy,
    /// An unhealthy endpoint turned healthy again.
    EndpointRecovered,
    /// Requests now go to another group.
    GroupSwitched,
    /// A group failed and cools down.
    GroupCooldown,
    /// An inbound key reached its daily or monthly budget.
    KeyBudgetExceeded,
    /// A subscription quota window reached `routing.quota_drain_at` or was rejected.
    QuotaLow,
    /// A configuration reload was rejected (the old configuration stays).
    ConfigReloadFailed,
}

impl WebhookEvent {
    /// Every event, in documentation order.
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::EndpointUnhealthy,
        WebhookEvent::EndpointRecovered,
        WebhookEvent::GroupSwitched,
        WebhookEvent::GroupCooldown,
        WebhookEvent::KeyBudgetExceeded,
        WebhookEvent::QuotaLow,
        WebhookEvent::ConfigReloadFailed,
    ];

    /// The configuration and wire name, e.g. `endpoint_unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::EndpointUnhealthy => "endpoint_unhealthy",
            WebhookEvent::EndpointRecovered => "endpoint_recovered",
            WebhookEvent::GroupSwitched => "group_switched",
            WebhookEvent::GroupCooldown => "group_cooldown",
            WebhookEvent::KeyBudgetExceeded => "key_budget_exceeded",
            WebhookEvent::QuotaLow => "quota_low",
            WebhookEvent::ConfigReloadFailed => "config_reload_failed",
        }
    }

    /// The event named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
    }
}
