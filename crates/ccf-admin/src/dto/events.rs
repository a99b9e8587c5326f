//! The live stream's payloads and the reload status on the wire: routing changes from
//! ccf-router's [`RouterEvent`] (the `events` of a `group` event), request changes from
//! ccf-lifecycle's [`LifecycleEvent`] (the `connection` event), log lines, per-minute chart
//! samples, and ccf-proxy's [`ReloadStatus`] (`status.config_reload`, `config/status`,
//! `config/reload`).

use ccf_lifecycle::LifecycleEvent;
use ccf_proxy::ReloadStatus;
use ccf_router::RouterEvent;
use serde::Serialize;
use serde_json::Value;

use crate::http_util::{unix_millis, unix_now, unix_secs};
use crate::live::MinuteSample;

/// One routing change. The wire word is the variant name in snake_case (`group_paused`); the
/// times the router keeps (`until`) are not sent.
#[derive(Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum RouterEventDto<'a> {
    /// Requests now go to another group (or to none).
    ActiveGroupChanged {
        from: Option<&'a str>,
        to: Option<&'a str>,
    },
    /// An operator activated a group.
    GroupActivated { group: &'a str, forced: bool },
    /// An operator paused a group.
    GroupPaused { group: &'a str },
    /// A pause ended.
    GroupResumed { group: &'a str },
    /// A group failed and is out of rotation for a while.
    GroupCooldown { group: &'a str },
    /// A cooldown expired.
    GroupCooldownEnded { group: &'a str },
    /// Every endpoint of the active group failed in manual mode.
    GroupNeedsAttention { group: &'a str },
    /// An endpoint's effective priority changed.
    PriorityChanged { endpoint: &'a str, priority: u32 },
    /// An endpoint is rate limited for a while.
    EndpointBlocked { endpoint: &'a str },
    /// An endpoint was demoted for a low honesty score, or restored.
    EndpointDemoted { endpoint: &'a str, demoted: bool },
}

impl<'a> From<&'a RouterEvent> for RouterEventDto<'a> {
    fn from(event: &'a RouterEvent) -> Self {
        match event {
            RouterEvent::ActiveGroupChanged { from, to } => RouterEventDto::ActiveGroupChanged {
                from: from.as_deref(),
                to: to.as_deref(),
            },
            RouterEvent::GroupActivated { group, forced } => RouterEventDto::GroupActivated {
                group,
                forced: *forced,
            },
            RouterEvent::GroupPaused { group, until: _ } => RouterEventDto::GroupPaused { group },
            RouterEvent::GroupResumed { group } => RouterEventDto::GroupResumed { group },
            RouterEvent::GroupCooldown { group, until: _ } => {
                RouterEventDto::GroupCooldown { group }
            }
            RouterEvent::GroupCooldownEnded { group } => {
                RouterEventDto::GroupCooldownEnded { group }
            }
            RouterEvent::GroupNeedsAttention { group } => {
                RouterEventDto::GroupNeedsAttention { group }
            }
            RouterEvent::PriorityChanged { endpoint, priority } => {
                RouterEventDto::PriorityChanged {
                    endpoint,
                    priority: *priority,
                }
            }
            RouterEvent::EndpointBlocked { endpoint, until: _ } => {
                RouterEventDto::EndpointBlocked { endpoint }
            }
            RouterEvent::EndpointDemoted { endpoint, demoted } => RouterEventDto::EndpointDemoted {
                endpoint,
                demoted: *demoted,
            },
        }
    }
}

/// The `connection` event of one request change: the Go original's fields plus the whole
/// request (`request`, a live row).
#[derive(Debug, Serialize)]
pub(crate) struct RequestEventDto<'a> {
    request_id: String,
    change_type: &'static str,
    client_ip: Option<String>,
    user_agent: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    is_streaming: bool,
    endpoint_name: Option<&'a str>,
    group_name: Option<&'a str>,
    status: &'static str,
    error_state: Option<&'static str>,
    retry_count: u32,
    http_status: Option<u16>,
    model_name: Option<&'a str>,
    start_timestamp_ms: u64,
    is_final: bool,
    /// The request as a live row ([`crate::dto::usage::LiveRequestDto`]).
    request: Value,
    timestamp: u64,
}

impl<'a> RequestEventDto<'a> {
    /// `event`, with `request` its live row.
    pub(crate) fn new(event: &'a LifecycleEvent, request: Value) -> Self {
        let record = event.record();
        RequestEventDto {
            request_id: record.id.to_string(),
            change_type: event.change_type().as_str(),
            client_ip: record.client_ip.map(|ip| ip.to_string()),
            user_agent: record.user_agent.as_deref(),
            method: &record.method,
            path: &record.path,
            is_streaming: record.is_streaming,
            endpoint_name: record.endpoint.as_deref(),
            group_name: record.group.as_deref(),
            // The lifecycle vocabulary's words are the stable ones of the database columns.
            status: record.status.as_str(),
            error_state: record.error_state.map(|state| state.as_str()),
            retry_count: record.retry_count,
            http_status: record.http_status,
            model_name: record.model(),
            start_timestamp_ms: unix_millis(record.started_at),
            is_final: event.is_final(),
            request,
            timestamp: unix_now(),
        }
    }
}

/// One log line of the live stream (`log` event).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogLine {
    /// `info`, `warn` or `error`.
    pub(crate) level: &'static str,
    pub(crate) message: String,
    /// Unix seconds.
    pub(crate) timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
}

/// One minute of traffic in the `chart` event.
#[derive(Debug, Serialize)]
pub(crate) struct MinuteDto {
    /// Unix time of the minute's start, in seconds.
    timestamp: u64,
    started: u64,
    finished: u64,
    success: u64,
    failed: u64,
    cancelled: u64,
    duration_sum_ms: u64,
    duration_count: u64,
    min_ms: Option<u64>,
    max_ms: Option<u64>,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_tokens: u64,
    cache_read_tokens: u64,
    suspended: u64,
    peak_in_flight: u64,
}

impl From<&MinuteSample> for MinuteDto {
    fn from(sample: &MinuteSample) -> Self {
        MinuteDto {
            timestamp: sample.timestamp,
            started: sample.started,
            finished: sample.finished,
            success: sample.success,
            failed: sample.failed,
            cancelled: sample.cancelled,
            duration_sum_ms: sample.duration_sum_ms,
            duration_count: sample.duration_count,
            min_ms: sample.min_ms,
            max_ms: sample.max_ms,
            input_tokens: sample.input_tokens,
            output_tokens: sample.output_tokens,
            cache_creation_tokens: sample.cache_creation_tokens,
            cache_read_tokens: sample.cache_read_tokens,
            suspended: sample.suspended,
            peak_in_flight: sample.peak_in_flight,
        }
    }
}

/// The last reload attempt.
#[derive(Debug, Serialize)]
pub(crate) struct ReloadStatusDto<'a> {
    /// Unix seconds.
    at: u64,
    /// `file`, `sighup` or `api`.
    trigger: &'a str,
    ok: bool,
    error: Option<&'a str>,
    applied: &'a [String],
    restart_required: &'a [String],
}

impl<'a> From<&'a ReloadStatus> for ReloadStatusDto<'a> {
    fn from(status: &'a ReloadStatus) -> Self {
        ReloadStatusDto {
            at: unix_secs(status.at),
            trigger: &status.trigger,
            ok: status.ok,
            error: status.error.as_deref(),
            applied: &status.applied,
            restart_required: &status.restart_required,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::to_json;
    use serde_json::json;
    use std::time::{Instant, SystemTime};

    /// Every routing change, and what the stream says for it.
    fn every_event() -> Vec<(RouterEvent, Value)> {
        let group = || "g1".to_string();
        let endpoint = || "e1".to_string();
        vec![
            (
                RouterEvent::ActiveGroupChanged {
                    from: None,
                    to: Some("B".into()),
                },
                json!({"type": "active_group_changed", "from": null, "to": "B"}),
            ),
            (
                RouterEvent::GroupActivated {
                    group: group(),
                    forced: true,
                },
                json!({"type": "group_activated", "group": "g1", "forced": true}),
            ),
            (
                RouterEvent::GroupPaused {
                    group: group(),
                    until: Some(Instant::now()),
                },
                json!({"type": "group_paused", "group": "g1"}),
            ),
            (
                RouterEvent::GroupResumed { group: group() },
                json!({"type": "group_resumed", "group": "g1"}),
            ),
            (
                RouterEvent::GroupCooldown {
                    group: group(),
                    until: Instant::now(),
                },
                json!({"type": "group_cooldown", "group": "g1"}),
            ),
            (
                RouterEvent::GroupCooldownEnded { group: group() },
                json!({"type": "group_cooldown_ended", "group": "g1"}),
            ),
            (
                RouterEvent::GroupNeedsAttention { group: group() },
                json!({"type": "group_needs_attention", "group": "g1"}),
            ),
            (
                RouterEvent::PriorityChanged {
                    endpoint: endpoint(),
                    priority: 3,
                },
                json!({"type": "priority_changed", "endpoint": "e1", "priority": 3}),
            ),
            (
                RouterEvent::EndpointBlocked {
                    endpoint: endpoint(),
                    until: Instant::now(),
                },
                json!({"type": "endpoint_blocked", "endpoint": "e1"}),
            ),
            (
                RouterEvent::EndpointDemoted {
                    endpoint: endpoint(),
                    demoted: false,
                },
                json!({"type": "endpoint_demoted", "endpoint": "e1", "demoted": false}),
            ),
        ]
    }

    #[test]
    fn every_router_event_has_its_wire_form() {
        for (event, expected) in every_event() {
            assert_eq!(
                to_json(&RouterEventDto::from(&event)),
                expected,
                "{event:?}"
            );
        }
    }

    #[test]
    fn a_reload_status_is_sent_with_unix_seconds() {
        let status = ReloadStatus {
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_900),
            trigger: "api".into(),
            ok: false,
            error: Some("bad file".into()),
            applied: Vec::new(),
            restart_required: vec!["server.port changed".into()],
        };
        assert_eq!(
            to_json(&ReloadStatusDto::from(&status)),
            json!({
                "at": 1_700_000_000u64,
                "trigger": "api",
                "ok": false,
                "error": "bad file",
                "applied": [],
                "restart_required": ["server.port changed"],
            })
        );
    }
}
