//! What goes over Redis, as JSON: the messages on the updates channel ([`Envelope`]) and the
//! values of the state keys ([`StoredBinding`], [`StoredQuota`]; blocks and cooldowns hold their
//! end as a bare number).
//!
//! These are this crate's own serde types on purpose: the engine's [`SharedUpdate`] has no
//! `Serialize`, so a field renamed inside the engine cannot change what instances of different
//! versions say to each other. Times are unix milliseconds; a session key is its 16 hex digits
//! (as in the key names), so any Redis client can read the values. A message an instance does
//! not understand (a newer variant, garbage) fails to decode and is ignored by the caller.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccf_proxy::cluster::SharedUpdate;
use ccf_router::SessionSource;
use serde::{Deserialize, Serialize};

/// One message on the updates channel: a batch of one instance's updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The sending instance (its id and a per-process nonce): its own messages are skipped.
    pub(crate) from: String,
    /// The updates, oldest first.
    pub(crate) updates: Vec<WireUpdate>,
}

/// A [`SharedUpdate`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireUpdate {
    /// [`SharedUpdate::GroupCooldown`].
    GroupCooldown {
        /// The group.
        group: String,
        /// End, unix ms.
        until_ms: u64,
    },
    /// [`SharedUpdate::GroupCooldownEnded`].
    GroupCooldownEnded {
        /// The group.
        group: String,
    },
    /// [`SharedUpdate::EndpointBlocked`].
    EndpointBlocked {
        /// The endpoint.
        endpoint: String,
        /// End, unix ms.
        until_ms: u64,
    },
    /// [`SharedUpdate::SessionBound`].
    SessionBound {
        /// The session key, 16 hex digits.
        session: String,
        /// The binding.
        #[serde(flatten)]
        binding: StoredBinding,
    },
    /// [`SharedUpdate::QuotaHeaders`].
    QuotaHeaders {
        /// The endpoint.
        endpoint: String,
        /// The reading.
        #[serde(flatten)]
        quota: StoredQuota,
    },
    /// [`SharedUpdate::Spend`].
    Spend {
        /// The key's name.
        key: String,
        /// This outcome's amount, USD.
        usd: f64,
        /// When the outcome finished, unix ms.
        at_ms: u64,
        /// Start of the budget day, unix ms.
        day_start_ms: u64,
        /// Spend in that day, USD.
        day_usd: f64,
        /// Start of the budget month, unix ms.
        month_start_ms: u64,
        /// Spend in that month, USD.
        month_usd: f64,
    },
}

/// A session's binding: the value of a session key, and the body of a `session_bound` update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredBinding {
    /// Where the session's identity came from.
    pub(crate) source: WireSource,
    /// The turn asked for the 1-hour prompt cache.
    pub(crate) long_ttl: bool,
    /// The endpoint the session is bound to.
    pub(crate) endpoint: String,
}

/// An endpoint's last rate-limit headers: the value of a quota key, and the body of a
/// `quota_headers` update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredQuota {
    /// The headers, name (lower case) and value.
    pub(crate) headers: Vec<(String, String)>,
    /// When the answer was received, unix ms.
    pub(crate) seen_at_ms: u64,
}

/// [`SessionSource`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireSource {
    /// [`SessionSource::Header`].
    Header,
    /// [`SessionSource::UserId`].
    UserId,
    /// [`SessionSource::Prompt`].
    Prompt,
}

impl From<SessionSource> for WireSource {
    fn from(source: SessionSource) -> WireSource {
        match source {
            SessionSource::Header => WireSource::Header,
            SessionSource::UserId => WireSource::UserId,
            SessionSource::Prompt => WireSource::Prompt,
        }
    }
}

impl From<WireSource> for SessionSource {
    fn from(source: WireSource) -> SessionSource {
        match source {
            WireSource::Header => SessionSource::Header,
            WireSource::UserId => SessionSource::UserId,
            WireSource::Prompt => SessionSource::Prompt,
        }
    }
}

/// `time` as unix milliseconds (0 before the epoch, saturating far in the future).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// `duration` in whole milliseconds, at least 1 (saturating): what a TTL or a window length
/// is sent to Redis as (a TTL of 0 is refused).
pub(crate) fn ttl_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The instant `ms` unix milliseconds name.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// A session key as written in key names and messages.
pub(crate) fn session_hex(session: u64) -> String {
    format!("{session:016x}")
}

/// The session key of its hex form.
pub(crate) fn parse_session(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

impl From<&SharedUpdate> for WireUpdate {
    fn from(update: &SharedUpdate) -> WireUpdate {
        match update {
            SharedUpdate::GroupCooldown { group, until } => WireUpdate::GroupCooldown {
                group: group.clone(),
                until_ms: unix_ms(*until),
            },
            SharedUpdate::GroupCooldownEnded { group } => WireUpdate::GroupCooldownEnded {
                group: group.clone(),
            },
            SharedUpdate::EndpointBlocked { endpoint, until } => WireUpdate::EndpointBlocked {
                endpoint: endpoint.clone(),
                until_ms: unix_ms(*until),
            },
            SharedUpdate::SessionBound {
                session,
                source,
                long_ttl,
                endpoint,
            } => WireUpdate::SessionBound {
                session: session_hex(*session),
                binding: StoredBinding {
                    source: (*source).into(),
                    long_ttl: *long_ttl,
                    endpoint: endpoint.clone(),
                },
            },
            SharedUpdate::QuotaHeaders {
                endpoint,
                headers,
                seen_at,
            } => WireUpdate::QuotaHeaders {
                endpoint: endpoint.clone(),
                quota: StoredQuota {
                    headers: headers.clone(),
                    seen_at_ms: unix_ms(*seen_at),
                },
            },
            SharedUpdate::Spend {
                key,
                usd,
                at,
                day_start,
                day_usd,
                month_start,
                month_usd,
            } => WireUpdate::Spend {
                key: key.clone(),
                usd: *usd,
                at_ms: unix_ms(*at),
                day_start_ms: unix_ms(*day_start),
                day_usd: *day_usd,
                month_start_ms: unix_ms(*month_start),
                month_usd: *month_usd,
            },
        }
    }
}

impl WireUpdate {
    /// The engine's update; `None` when a field cannot be one (a session that is not hex).
    pub(crate) fn into_update(self) -> Option<SharedUpdate> {
        Some(match self {
            WireUpdate::GroupCooldown { group, until_ms } => SharedUpdate::GroupCooldown {
                group,
                until: from_unix_ms(until_ms),
            },
            WireUpdate::GroupCooldownEnded { group } => SharedUpdate::GroupCooldownEnded { group },
            WireUpdate::EndpointBlocked { endpoint, until_ms } => SharedUpdate::EndpointBlocked {
                endpoint,
                until: from_unix_ms(until_ms),
            },
            WireUpdate::SessionBound { session, binding } => {
                binding.into_update(parse_session(&session)?)
            }
            WireUpdate::QuotaHeaders { endpoint, quota } => quota.into_update(endpoint),
            WireUpdate::Spend {
                key,
                usd,
                at_ms,
                day_start_ms,
                day_usd,
                month_start_ms,
                month_usd,
            } => SharedUpdate::Spend {
                key,
                usd,
                at: from_unix_ms(at_ms),
                day_start: from_unix_ms(day_start_ms),
                day_usd,
                month_start: from_unix_ms(month_start_ms),
                month_usd,
            },
        })
    }
}

impl StoredBinding {
    /// The update that binds `session` this way.
    pub(crate) fn into_update(self, session: u64) -> SharedUpdate {
        SharedUpdate::SessionBound {
            session,
            source: self.source.into(),
            long_ttl: self.long_ttl,
            endpoint: self.endpoint,
        }
    }
}

impl StoredQuota {
    /// The update that records this reading of `endpoint`.
    pub(crate) fn into_update(self, endpoint: String) -> SharedUpdate {
        SharedUpdate::QuotaHeaders {
            endpoint,
            headers: self.headers,
            seen_at: from_unix_ms(self.seen_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        from_unix_ms(ms)
    }

    #[test]
    fn every_update_survives_the_wire() {
        let updates = [
            SharedUpdate::GroupCooldown {
                group: "main".into(),
                until: at(1_760_000_000_123),
            },
            SharedUpdate::GroupCooldownEnded {
                group: "main".into(),
            },
            SharedUpdate::EndpointBlocked {
                endpoint: "relay:eu".into(),
                until: at(1_760_000_060_000),
            },
            SharedUpdate::SessionBound {
                session: u64::MAX - 7,
                source: SessionSource::UserId,
                long_ttl: true,
                endpoint: "official".into(),
            },
            SharedUpdate::QuotaHeaders {
                endpoint: "official".into(),
                headers: vec![
                    (
                        "anthropic-ratelimit-unified-status".into(),
                        "allowed".into(),
                    ),
                    ("retry-after".into(), "30".into()),
                ],
                seen_at: at(1_760_000_000_001),
            },
            SharedUpdate::Spend {
                key: "alice".into(),
                usd: 0.125,
                at: at(1_760_000_000_500),
                day_start: at(1_759_968_000_000),
                day_usd: 3.5,
                month_start: at(1_759_276_800_000),
                month_usd: 42.25,
            },
        ];
        let envelope = Envelope {
            from: "a#01".into(),
            updates: updates.iter().map(WireUpdate::from).collect(),
        };
        let text = serde_json::to_string(&envelope).unwrap();
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, envelope);
        let decoded: Vec<SharedUpdate> = back
            .updates
            .into_iter()
            .map(|update| update.into_update().unwrap())
            .collect();
        assert_eq!(decoded, updates);
    }

    #[test]
    fn the_wire_shape_is_plain_json() {
        let update = WireUpdate::from(&SharedUpdate::SessionBound {
            session: 0xabc,
            source: SessionSource::Header,
            long_ttl: false,
            endpoint: "a".into(),
        });
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            serde_json::json!({
                "type": "session_bound",
                "session": "0000000000000abc",
                "source": "header",
                "long_ttl": false,
                "endpoint": "a"
            })
        );
        let blocked = WireUpdate::from(&SharedUpdate::EndpointBlocked {
            endpoint: "a".into(),
            until: at(5),
        });
        assert_eq!(
            serde_json::to_value(&blocked).unwrap(),
            serde_json::json!({"type": "endpoint_blocked", "endpoint": "a", "until_ms": 5})
        );
    }

    #[test]
    fn what_cannot_be_an_update_is_refused() {
        let unknown = r#"{"from":"x","updates":[{"type":"new_thing","x":1}]}"#;
        assert!(serde_json::from_str::<Envelope>(unknown).is_err());
        let bad_session = WireUpdate::SessionBound {
            session: "not hex".into(),
            binding: StoredBinding {
                source: WireSource::Prompt,
                long_ttl: false,
                endpoint: "a".into(),
            },
        };
        assert_eq!(bad_session.into_update(), None);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
