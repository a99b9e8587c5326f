//! [`ClusterError`]: what can stop the Redis link from being set up. Nothing here is about
//! Redis being down: the link connects in the background and reports an outage in its status
//! instead (see `status.rs`), so an unreachable Redis never stops an instance from starting.

/// The Redis link cannot be set up from this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis_url` is not set: there is nothing to link to.
    #[error("cluster.redis_url is not set")]
    NoUrl,
    /// The URL is not one the Redis client accepts (the password in it is masked).
    #[error("invalid cluster.redis_url `{url}`: {message}")]
    InvalidUrl {
        /// The URL, password masked.
        url: String,
        /// Why, password masked.
        message: String,
    },
    /// Called outside a Tokio runtime (the link's connection is bound to one).
    #[error("the Redis link must be created inside a Tokio runtime")]
    NoRuntime,
}
