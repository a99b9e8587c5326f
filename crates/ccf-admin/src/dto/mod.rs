//! The admin API's wire formats: every JSON object the routes and the live stream send is a
//! `Serialize` struct here, built from the plain types of the crates below (ccf-router's views and
//! events, ccf-store's rows and stats, ccf-health's endpoint state, ccf-lifecycle's records).
//!
//! Those crates carry no serialisation of their own for the API: a field renamed or a variant
//! added inside the router or the store changes nothing on the wire until a DTO here says so
//! (and `tests/snapshots/wire_shapes.txt` shows the change). Words on the wire (`"paused"`,
//! `"predicted"`, `"group_resumed"`...) are spelled here, in exhaustive `match`es or as a DTO
//! enum's own variant names, so a new variant below is a compile error here, not a silently new
//! word.
//!
//! One file per area: [`groups`] (groups and endpoints), [`routing`] (affinity, quota, honesty),
//! [`keys`] (inbound API keys' limits and usage), [`cluster`] (the link to the other instances),
//! [`usage`] (request rows, stats buckets, summary rows, prices), [`events`] (the live stream's
//! router events, request events, log lines and chart minutes, and the reload status).
//!
//! Two things pass through on purpose. `GET /api/v1/config` shows the configuration sections in
//! the configuration file's own spelling (ccf-config's `Serialize`, the same shape operators
//! write in the YAML file, documented in docs/configuration.md), then masks them. A request's
//! `attempts` are the attempt trail as the store keeps it (ccf-lifecycle's `Attempt` JSON in the
//! `attempts_json` column), parsed and passed on, so a stored row and a live one show the same
//! trail.
//!
//! JSON objects are emitted through `serde_json::Value` (no `preserve_order`): keys come out
//! sorted, whatever the field order of a struct here.

pub(crate) mod cluster;
pub(crate) mod events;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod models;
pub(crate) mod routing;
pub(crate) mod usage;
pub(crate) mod webhooks;

use serde::Serialize;
use serde_json::Value;

/// A DTO as a JSON value (what the routes answer and the stream frames carry). A DTO is built
/// from plain fields and cannot fail to serialise; `Null` stands in if one ever did.
pub(crate) fn to_json(dto: &impl Serialize) -> Value {
    serde_json::to_value(dto).unwrap_or(Value::Null)
}
