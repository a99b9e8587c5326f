//! Reconcile: on every (re)connection the instance reads the shared state keys under its prefix
//! (cooldowns, blocks, quota readings, session bindings; `names::StateKind`) and applies them
//! with `Forwarder::apply_shared`, so an instance that starts learns what the others know, and
//! one back from an outage catches up on what it missed while its subscription was down.
//!
//! The keys are found with `SCAN` (never `KEYS`: it would stall Redis for every other client)
//! and read with `MGET` in chunks. A key that expired between the two reads is skipped; a value
//! that does not decode (another version's format) is skipped and logged at debug. Applying is
//! idempotent: blocks and cooldowns only grow, a binding is the same binding again. A session
//! binding or quota reading this instance made while the link was down, still waiting in the
//! outbox, is newer than Redis's: that key is skipped ([`Pending`]), and the writer sends the
//! local one right after.

use ccf_proxy::cluster::SharedUpdate;
use ccf_proxy::Forwarder;
use redis::aio::ConnectionManager;
use redis::RedisResult;
use tracing::debug;

use crate::names::{Names, StateKind};
use crate::outbox::Pending;
use crate::wire::{from_unix_ms, parse_session, StoredBinding, StoredQuota};

/// Keys asked per `SCAN` step and read per `MGET`.
const CHUNK: usize = 500;

/// Applies every shared state key to `forwarder`, but those `pending` holds newer; returns
/// how many were applied.
pub(crate) async fn reconcile(
    manager: &mut ConnectionManager,
    names: &Names,
    forwarder: &Forwarder,
    pending: &Pending,
) -> RedisResult<usize> {
    let mut applied = 0;
    for kind in StateKind::ALL {
        let keys = scan(manager, &names.pattern(kind)).await?;
        for chunk in keys.chunks(CHUNK) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(manager).await?;
            for (key, value) in chunk.iter().zip(values) {
                let Some(value) = value else {
                    continue;
                };
                let update = names
                    .subject(kind, key)
                    .and_then(|subject| decode(kind, subject, &value));
                match update {
                    Some(update) if pending.supersedes(&update) => {}
                    Some(update) => {
                        forwarder.apply_shared(&update);
                        applied += 1;
                    }
                    None => debug!(key = %key, "cluster: shared state not understood; skipped"),
                }
            }
        }
    }
    Ok(applied)
}

/// Every key matching `pattern`, each once.
async fn scan(manager: &mut ConnectionManager, pattern: &str) -> RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(manager)
            .await?;
        keys.extend(found);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key twice.
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// The update a state key of `kind` about `subject` holding `value` stands for.
pub(crate) fn decode(kind: StateKind, subject: &str, value: &str) -> Option<SharedUpdate> {
    Some(match kind {
        StateKind::Block => SharedUpdate::EndpointBlocked {
            endpoint: subject.to_string(),
            until: from_unix_ms(value.trim().parse().ok()?),
        },
        StateKind::Cooldown => SharedUpdate::GroupCooldown {
            group: subject.to_string(),
            until: from_unix_ms(value.trim().parse().ok()?),
        },
        StateKind::Session => serde_json::from_str::<StoredBinding>(value)
            .ok()?
            .into_update(parse_session(subject)?),
        StateKind::Quota => serde_json::from_str::<StoredQuota>(value)
            .ok()?
            .into_update(subject.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_router::SessionSource;

    #[test]
    fn state_values_decode_to_their_updates() {
        assert_eq!(
            decode(StateKind::Block, "a", "1500"),
            Some(SharedUpdate::EndpointBlocked {
                endpoint: "a".into(),
                until: from_unix_ms(1500)
            })
        );
        assert_eq!(
            decode(
                StateKind::Session,
                "00000000000000ff",
                r#"{"source":"prompt","long_ttl":true,"endpoint":"b"}"#
            ),
            Some(SharedUpdate::SessionBound {
                session: 0xff,
                source: SessionSource::Prompt,
                long_ttl: true,
                endpoint: "b".into()
            })
        );
        assert_eq!(decode(StateKind::Cooldown, "main", "soon"), None);
        assert_eq!(decode(StateKind::Session, "zz", "{}"), None);
        assert_eq!(decode(StateKind::Quota, "a", "[1,2]"), None);
    }
}
