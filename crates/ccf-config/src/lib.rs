//! cc-forwarder configuration.
//!
//! This crate owns the YAML schema (compatible with the Go cc-forwarder's `config.yaml`, every key),
//! the defaults, the endpoint inheritance rules, validation, `${VAR}` interpolation and layered
//! loading with figment (defaults < file < `CCF_` environment < command-line overrides). Its output
//! is a validated [`Config`] whose [`Endpoint`]s have every inherited value resolved, so no other
//! crate needs to know the inheritance rules. It does no network IO and knows nothing of HTTP.
//!
//! Main types: [`RawConfig`] (the file as written), [`Config`] and [`Endpoint`] (validated),
//! [`ConfigLoader`] (layered loading), [`ConfigError`] (names the file and key path).

mod error;
mod exposure;
mod interpolate;
mod loader;
mod model_glob;
mod path;
mod resolve;
mod schema;
mod storage;
mod units;

use std::path::PathBuf;
use std::time::Duration;

pub use ccf_types::Secret;
pub use error::{ConfigError, ConfigWarning, Problem};
pub use exposure::{is_loopback_host, ExposureProblem, InsecureExposure};
pub use loader::{
    CliOverrides, ConfigLoader, LoadedConfig, CLI_SOURCE, DEFAULT_ENV_PREFIX, ENV_KEY_SEPARATOR,
    ENV_SOURCE, INLINE_SOURCE,
};
pub use model_glob::{glob_matches, is_glob, ModelMap};
pub use schema::*;
pub use storage::{MysqlTarget, StorageTarget, DEFAULT_MYSQL_PORT};
pub use units::{ByteSize, GoDuration};

/// A validated configuration: every section with its defaults applied and every endpoint resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
    /// IANA time zone for display; `None` means the machine's local zone.
    pub timezone: Option<String>,
    /// Identifier of this instance (default host name + port, filled by the application).
    pub instance_id: Option<String>,
    /// `server.*`.
    pub server: ServerConfig,
    /// `strategy.*`.
    pub strategy: StrategyConfig,
    /// `retry.*`.
    pub retry: RetryConfig,
    /// `health.*`.
    pub health: HealthConfig,
    /// `logging.*`.
    pub logging: LoggingConfig,
    /// `streaming.*`.
    pub streaming: StreamingConfig,
    /// `group.*`.
    pub group: GroupConfig,
    /// `request_suspend.*`.
    pub request_suspend: RequestSuspendConfig,
    /// `global_timeout` (default 300 s).
    pub global_timeout: Duration,
    /// `auth.*`.
    pub auth: AuthConfig,
    /// `tui.*`.
    pub tui: TuiConfig,
    /// `web.*`.
    pub web: WebConfig,
    /// `token_counting.*`.
    pub token_counting: TokenCountingConfig,
    /// `proxy.*`.
    pub proxy: OutboundProxyConfig,
    /// `tls.*`.
    pub tls: TlsConfig,
    /// `upstream.*`.
    pub upstream: UpstreamConfig,
    /// `endpoints[].ca_file` by endpoint name. Kept beside the endpoints rather than in
    /// [`Endpoint`] because only the upstream client reads it (the client is rebuilt when it
    /// changes, the router never looks at it).
    pub endpoint_ca_files: std::collections::BTreeMap<String, PathBuf>,
    /// The outbound proxy of each endpoint that has its own (`endpoints[].proxy`, set or
    /// inherited within its group) by endpoint name; an endpoint not listed uses [`Config::proxy`].
    /// Kept beside the endpoints for the same reason as `endpoint_ca_files`.
    pub endpoint_proxies: std::collections::BTreeMap<String, OutboundProxyConfig>,
    /// `usage_tracking.*`.
    pub usage_tracking: UsageTrackingConfig,
    /// `routing.*`.
    pub routing: RoutingConfig,
    /// The endpoints in file order, inheritance resolved.
    pub endpoints: Vec<Endpoint>,
    /// `webhooks[]`, validated.
    pub webhooks: Vec<Webhook>,
    /// `cluster.*`, validated (a `redis_url` is `redis://` or `rediss://`).
    pub cluster: ClusterConfig,
}

/// One upstream endpoint with every inherited value resolved. `Debug` masks the credentials,
/// including a password in the URL's user info.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    /// Unique name.
    pub name: String,
    /// Base URL; may carry a path prefix that request paths are appended to.
    pub url: url::Url,
    /// Order inside the group; lower is preferred.
    pub priority: u32,
    /// Group name.
    pub group: String,
    /// Group order; lower is preferred.
    pub group_priority: u32,
    /// Bearer token sent upstream, resolved within the group.
    pub token: Option<Secret>,
    /// `x-api-key` sent upstream, resolved within the group.
    pub api_key: Option<Secret>,
    /// Total time for a non-streaming request.
    pub timeout: Duration,
    /// Headers applied after the credentials (they win), in name order.
    pub headers: Vec<(String, String)>,
    /// The endpoint answers `/v1/messages/count_tokens`.
    pub supports_count_tokens: bool,
    /// Request model to the model this endpoint is sent (`model_map`; never inherited).
    pub model_map: ModelMap,
}

impl Endpoint {
    /// The URL to send requests to: [`Endpoint::url`] without any user info (hyper does not
    /// turn it into credentials, and it must not reach connection pool keys or logs), with no
    /// trailing `/`.
    pub fn request_base(&self) -> std::borrow::Cow<'_, str> {
        if self.url.username().is_empty() && self.url.password().is_none() {
            // Borrowed: this is read for every forwarded request.
            return std::borrow::Cow::Borrowed(self.url.as_str().trim_end_matches('/'));
        }
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        std::borrow::Cow::Owned(url.as_str().trim_end_matches('/').to_string())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &mask_url_password(self.url.as_str()))
            .field("priority", &self.priority)
            .field("group", &self.group)
            .field("group_priority", &self.group_priority)
            .field("token", &self.token)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("headers", &MaskedHeaders(&self.headers))
            .field("supports_count_tokens", &self.supports_count_tokens)
            .field("model_map", &self.model_map)
            .finish()
    }
}

/// Custom endpoint headers in `Debug`, values of credential-like names masked.
struct MaskedHeaders<'a>(&'a [(String, String)]);

impl std::fmt::Debug for MaskedHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (name, value) in self.0 {
            let lower = name.to_ascii_lowercase().replace('-', "_");
            let sensitive = [
                "token",
                "auth",
                "password",
                "secret",
                "key",
                "cookie",
                "signature",
            ]
            .iter()
            .any(|word| lower.contains(word));
            if sensitive {
                list.entry(&(name, ccf_types::mask_secret(value)));
            } else {
                list.entry(&(name, value));
            }
        }
        list.finish()
    }
}

impl Config {
    /// Parses a YAML document (no file, no `CCF_` environment overrides) into a validated config.
    /// For tests and embedders; `${VAR}` references are expanded from the process environment.
    /// Warnings (unknown keys) are dropped: use [`ConfigLoader`] to see them.
    pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
        ConfigLoader::new()
            .yaml_str(yaml)
            .without_env_overrides()
            .load()
            .map(|loaded| loaded.config)
    }

    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|endpoint| endpoint.name == name)
    }

    /// `-p <name>`: that endpoint gets priority 1 and every other endpoint with priority <= 1 is
    /// moved back by 2, so the named one is preferred inside its group.
    pub fn prefer_endpoint(&mut self, name: &str) -> Result<(), ConfigError> {
        if self.endpoint(name).is_none() {
            return Err(ConfigError::UnknownPrimaryEndpoint {
                name: name.to_string(),
                known: self.endpoints.iter().map(|e| e.name.clone()).collect(),
            });
        }
        for endpoint in &mut self.endpoints {
            if endpoint.name == name {
                endpoint.priority = 1;
            } else if endpoint.priority <= 1 {
                endpoint.priority += 2;
            }
        }
        Ok(())
    }
}
