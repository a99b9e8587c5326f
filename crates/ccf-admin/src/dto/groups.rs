//! Groups and endpoints on the wire: one group of `GET /api/v1/groups` (and the stream's `group`
//! event) from ccf-router's [`GroupView`], and one endpoint of `GET /api/v1/endpoints` (and the
//! stream's `endpoint` event) from the configured endpoint, ccf-router's [`EndpointView`] and
//! ccf-health's [`EndpointHealth`].

use std::time::Duration;

use ccf_config::Endpoint;
use ccf_health::EndpointHealth;
use ccf_router::{EndpointView, GroupStatus, GroupView};
use serde::Serialize;

use crate::http_util::{go_duration, rfc3339};
use crate::views::mask_url;

/// A group's one-word status on the wire.
pub(crate) fn group_status_word(status: GroupStatus) -> &'static str {
    match status {
        GroupStatus::Active => "active",
        GroupStatus::Paused => "paused",
        GroupStatus::Cooldown => "cooldown",
        GroupStatus::NoHealthyEndpoints => "no_healthy_endpoints",
        GroupStatus::Available => "available",
    }
}

/// The dashboard's label and colour for a status (the Go original's Chinese labels).
fn group_status_label(status: GroupStatus) -> (&'static str, &'static str) {
    match status {
        GroupStatus::Active => ("活跃", "success"),
        GroupStatus::Paused => ("手动暂停", "warning"),
        GroupStatus::Cooldown => ("冷却中", "danger"),
        GroupStatus::NoHealthyEndpoints => ("无健康端点", "danger"),
        GroupStatus::Available => ("可用", "secondary"),
    }
}

/// One group, in the Go original's shape plus the actions that would succeed.
#[derive(Debug, Serialize)]
pub(crate) struct GroupDto<'a> {
    name: &'a str,
    priority: u32,
    is_active: bool,
    status: &'static str,
    status_text: &'static str,
    status_color: &'static str,
    total_endpoints: usize,
    healthy_endpoints: usize,
    unhealthy_endpoints: usize,
    /// The names of the group's endpoints, in configuration order.
    endpoints: Vec<&'a str>,
    manually_paused: bool,
    in_cooldown: bool,
    /// Whole seconds left, as a Go duration (`4m59s`).
    cooldown_remaining: String,
    cooldown_remaining_seconds: u64,
    needs_attention: bool,
    can_activate: bool,
    can_force_activate: bool,
    can_pause: bool,
    can_resume: bool,
    forced_activation: bool,
    /// `forced` or `normal`.
    activation_type: &'static str,
}

impl<'a> GroupDto<'a> {
    /// `group` with the names of its configured `endpoints`.
    pub(crate) fn new(group: &'a GroupView, endpoints: Vec<&'a str>) -> Self {
        let (status_text, status_color) = group_status_label(group.status);
        let cooldown_seconds = group.cooldown_remaining.as_secs();
        GroupDto {
            name: &group.name,
            priority: group.priority,
            is_active: group.is_active,
            status: group_status_word(group.status),
            status_text,
            status_color,
            total_endpoints: group.total_endpoints,
            healthy_endpoints: group.healthy_endpoints,
            unhealthy_endpoints: group
                .total_endpoints
                .saturating_sub(group.healthy_endpoints),
            endpoints,
            manually_paused: group.paused,
            in_cooldown: group.in_cooldown,
            cooldown_remaining: go_duration(Duration::from_secs(cooldown_seconds)),
            cooldown_remaining_seconds: cooldown_seconds,
            needs_attention: group.needs_attention,
            can_activate: group.can_activate,
            can_force_activate: group.can_force_activate,
            can_pause: group.can_pause,
            can_resume: group.can_resume,
            forced_activation: group.forced,
            activation_type: if group.forced { "forced" } else { "normal" },
        }
    }
}

/// One endpoint, in the Go original's shape plus routing details.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointDto<'a> {
    name: &'a str,
    /// The URL with any password masked.
    url: String,
    /// Effective priority (an operator's override, else the configured one).
    priority: u32,
    config_priority: u32,
    group: &'a str,
    group_priority: u32,
    timeout: String,
    healthy: bool,
    /// RFC 3339, `""` before the first check.
    last_check: String,
    /// Go duration of the last check's latency, `0s` before it.
    response_time: String,
    response_time_ms: Option<u64>,
    never_checked: bool,
    /// `""` when healthy.
    error: String,
    consecutive_fails: u32,
    auth_failed: bool,
    latency_ewma_ms: Option<u64>,
    rate_limited: bool,
    honesty_demoted: bool,
    supports_count_tokens: bool,
}

impl<'a> EndpointDto<'a> {
    /// The configured `endpoint` with what routing (`view`, absent before the router knows it)
    /// and health checks (`health`) say about it.
    pub(crate) fn new(
        endpoint: &'a Endpoint,
        view: Option<&EndpointView>,
        health: &EndpointHealth,
    ) -> Self {
        EndpointDto {
            name: &endpoint.name,
            url: mask_url(endpoint.url.as_str()),
            priority: view.map_or(endpoint.priority, |view| view.priority),
            config_priority: endpoint.priority,
            group: &endpoint.group,
            group_priority: endpoint.group_priority,
            timeout: go_duration(endpoint.timeout),
            healthy: health.healthy,
            last_check: health.last_check.map(rfc3339).unwrap_or_default(),
            response_time: health
                .last_latency
                .map(go_duration)
                .unwrap_or_else(|| "0s".into()),
            response_time_ms: health.last_latency.map(millis),
            never_checked: health.never_checked,
            error: health.last_error.clone().unwrap_or_default(),
            consecutive_fails: health.consecutive_failures,
            auth_failed: health.auth_failed,
            latency_ewma_ms: view.and_then(|view| view.latency_ewma).map(millis),
            rate_limited: view.is_some_and(|view| view.blocked_until.is_some()),
            honesty_demoted: view.is_some_and(|view| view.demoted),
            supports_count_tokens: endpoint.supports_count_tokens,
        }
    }
}

/// The answer of `POST /api/v1/endpoints/{name}/health-check`: the fresh check's result.
#[derive(Debug, Serialize)]
pub(crate) struct HealthCheckDto<'a> {
    success: bool,
    message: String,
    endpoint: &'a str,
    healthy: bool,
    response_time: String,
    response_time_ms: Option<u64>,
    last_check: String,
    never_checked: bool,
    error: String,
    consecutive_fails: u32,
}

impl<'a> HealthCheckDto<'a> {
    /// The check of `endpoint` that ended in `health`.
    pub(crate) fn new(endpoint: &'a str, health: &EndpointHealth) -> Self {
        let verdict = if health.healthy {
            "healthy"
        } else {
            "unhealthy"
        };
        HealthCheckDto {
            success: true,
            message: format!("endpoint {endpoint} is {verdict}"),
            endpoint,
            healthy: health.healthy,
            response_time: health
                .last_latency
                .map(go_duration)
                .unwrap_or_else(|| "0s".into()),
            response_time_ms: health.last_latency.map(millis),
            last_check: health.last_check.map(rfc3339).unwrap_or_default(),
            never_checked: health.never_checked,
            error: health.last_error.clone().unwrap_or_default(),
            consecutive_fails: health.consecutive_failures,
        }
    }
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dto::to_json;
    use serde_json::json;

    fn group(status: GroupStatus, forced: bool) -> GroupView {
        GroupView {
            name: "main".into(),
            priority: 1,
            is_active: status == GroupStatus::Active,
            paused: status == GroupStatus::Paused,
            paused_until: None,
            in_cooldown: status == GroupStatus::Cooldown,
            cooldown_until: None,
            cooldown_remaining: Duration::from_millis(61_500),
            needs_attention: false,
            forced,
            total_endpoints: 3,
            healthy_endpoints: 1,
            status,
            can_activate: true,
            can_force_activate: false,
            can_pause: true,
            can_resume: false,
        }
    }

    #[test]
    fn a_group_is_spelled_like_the_go_original() {
        let view = group(GroupStatus::Active, false);
        assert_eq!(
            to_json(&GroupDto::new(&view, vec!["a", "b", "c"])),
            json!({
                "name": "main",
                "priority": 1,
                "is_active": true,
                "status": "active",
                "status_text": "活跃",
                "status_color": "success",
                "total_endpoints": 3,
                "healthy_endpoints": 1,
                "unhealthy_endpoints": 2,
                "endpoints": ["a", "b", "c"],
                "manually_paused": false,
                "in_cooldown": false,
                "cooldown_remaining": "1m1s",
                "cooldown_remaining_seconds": 61,
                "needs_attention": false,
                "can_activate": true,
                "can_force_activate": false,
                "can_pause": true,
                "can_resume": false,
                "forced_activation": false,
                "activation_type": "normal",
            })
        );
    }

    #[test]
    fn every_group_status_has_its_word_label_and_colour() {
        for (status, word, color) in [
            (GroupStatus::Active, "active", "success"),
            (GroupStatus::Paused, "paused", "warning"),
            (GroupStatus::Cooldown, "cooldown", "danger"),
            (
                GroupStatus::NoHealthyEndpoints,
                "no_healthy_endpoints",
                "danger",
            ),
            (GroupStatus::Available, "available", "secondary"),
        ] {
            let view = group(status, true);
            let value = to_json(&GroupDto::new(&view, Vec::new()));
            assert_eq!(value["status"], word);
            assert_eq!(value["status_color"], color);
            assert_eq!(value["activation_type"], "forced");
        }
    }
}
