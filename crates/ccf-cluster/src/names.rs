//! Every Redis key and channel name, in one place, under the configured prefix
//! (`cluster.redis_prefix`, default `ccf`), so two deployments on one Redis never meet and a
//! test owns its own prefix.
//!
//! The state keys a starting instance reads back ([`StateKind`]: blocks, cooldowns, session
//! bindings, quota readings) are `<prefix>:<kind>:<subject>`; [`Names::pattern`] and
//! [`Names::subject`] are the two directions of that mapping, so the reconcile scan and the
//! writer cannot disagree on it.

/// A kind of state key that a (re)connecting instance reads back and applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateKind {
    /// [`Names::block`].
    Block,
    /// [`Names::cooldown`].
    Cooldown,
    /// [`Names::session`].
    Session,
    /// [`Names::quota`].
    Quota,
}

impl StateKind {
    /// Every kind, in the order a reconcile applies them.
    pub(crate) const ALL: [StateKind; 4] = [
        StateKind::Cooldown,
        StateKind::Block,
        StateKind::Quota,
        StateKind::Session,
    ];

    fn word(self) -> &'static str {
        match self {
            StateKind::Block => "block",
            StateKind::Cooldown => "cooldown",
            StateKind::Session => "session",
            StateKind::Quota => "quota",
        }
    }
}

/// The names of one deployment's keys and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    prefix: String,
}

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

    /// `SCAN MATCH` pattern of every key of `kind` (the prefix holds no glob characters: the
    /// configuration allows letters, digits, `-`, `_`, `.` and `:` only).
    pub(crate) fn pattern(&self, kind: StateKind) -> String {
        format!("{}:{}:*", self.prefix, kind.word())
    }

    /// What a key of `kind` is about (the endpoint, group or session hex), when `key` is one.
    pub(crate) fn subject<'k>(&self, kind: StateKind, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?
            .strip_prefix(kind.word())?
            .strip_prefix(':')
            .filter(|subject| !subject.is_empty())
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
    #[allow(dead_code)] // reserved: announcing a budget crossing once per deployment
    pub(crate) fn budget_announced(&self, key: &str, period: &str, start_unix: u64) -> String {
        format!("{}:announced:{key}:{period}:{start_unix}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_map_back_to_their_subject() {
        let names = Names::new("ccf-test:a.b");
        let cases = [
            (StateKind::Block, names.block("relay:eu"), "relay:eu"),
            (StateKind::Cooldown, names.cooldown("main"), "main"),
            (StateKind::Session, names.session(0xabc), "0000000000000abc"),
            (StateKind::Quota, names.quota("official"), "official"),
        ];
        for (kind, key, subject) in cases {
            assert_eq!(names.subject(kind, &key), Some(subject), "{key}");
            let pattern = names.pattern(kind);
            assert!(
                key.starts_with(pattern.trim_end_matches('*')),
                "{pattern} {key}"
            );
            for other in StateKind::ALL.into_iter().filter(|other| *other != kind) {
                assert_eq!(names.subject(other, &key), None, "{key} is not a {other:?}");
            }
        }
        assert_eq!(names.subject(StateKind::Block, "ccf-test:a.b:block:"), None);
        assert_eq!(names.subject(StateKind::Block, "other:block:x"), None);
    }
}
