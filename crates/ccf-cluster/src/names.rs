//! Every Redis key and channel name, in one place, under the configured prefix
//! (`cluster.redis_prefix`, default `ccf`), so two deployments on one Redis never meet and a
//! test owns its own prefix.

/// The names of one deployment's keys and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    prefix: String,
}

#[allow(dead_code)] // filled in by the modules that use them
impl Names {
    /// Names under `prefix`.
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix itself.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Channel of routing updates (`SharedUpdate`s) between instances.
    pub(crate) fn updates_channel(&self) -> String {
        format!("{}:updates", self.prefix)
    }

    /// Channel that says "operator state changed: read it now".
    pub(crate) fn operator_channel(&self) -> String {
        format!("{}:operator", self.prefix)
    }

    /// Hash of the operator state (scope -> versioned JSON) when no MySQL store holds it.
    pub(crate) fn operator_state(&self) -> String {
        format!("{}:operator:state", self.prefix)
    }

    /// An endpoint's rate-limit block (value: end, unix ms; expires with it).
    pub(crate) fn block(&self, endpoint: &str) -> String {
        format!("{}:block:{endpoint}", self.prefix)
    }

    /// A group's cooldown (value: end, unix ms; expires with it).
    pub(crate) fn cooldown(&self, group: &str) -> String {
        format!("{}:cooldown:{group}", self.prefix)
    }

    /// A session's binding (value: the binding; expires with the affinity TTL).
    pub(crate) fn session(&self, session: u64) -> String {
        format!("{}:session:{session:016x}", self.prefix)
    }

    /// An endpoint's last rate-limit headers (value: the headers; expires after their windows).
    pub(crate) fn quota(&self, endpoint: &str) -> String {
        format!("{}:quota:{endpoint}", self.prefix)
    }

    /// A key's shared rolling-minute admissions (sorted set, score: unix ms).
    pub(crate) fn rate(&self, key: &str) -> String {
        format!("{}:rate:{key}", self.prefix)
    }

    /// A key's shared concurrency leases (sorted set, score: lease end, unix ms).
    pub(crate) fn slots(&self, key: &str) -> String {
        format!("{}:slots:{key}", self.prefix)
    }

    /// A key's spend in the budget day starting at `start_unix` (seconds), USD.
    pub(crate) fn spend_day(&self, key: &str, start_unix: u64) -> String {
        format!("{}:spend:{key}:day:{start_unix}", self.prefix)
    }

    /// A key's spend in the budget month starting at `start_unix` (seconds), USD.
    pub(crate) fn spend_month(&self, key: &str, start_unix: u64) -> String {
        format!("{}:spend:{key}:month:{start_unix}", self.prefix)
    }

    /// Marks that a key's budget crossing in a period was announced by one instance.
    pub(crate) fn budget_announced(&self, key: &str, period: &str, start_unix: u64) -> String {
        format!("{}:announced:{key}:{period}:{start_unix}", self.prefix)
    }
}
