//! Which engine events become webhook notifications, and the JSON body a receiver gets.
//!
//! The mapping is the one place that knows both the engine's event vocabulary
//! ([`ForwarderEvent`]) and the webhook event names ([`WebhookEvent`]); the body's shape
//! (`{"event", "timestamp", "instance_id", "data"}`) is documented in `docs/webhooks.md`. Every
//! other engine event (requests, probes' latencies, operator pauses...) is not a notification.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ccf_config::WebhookEvent;
use ccf_health::HealthEvent;
use ccf_proxy::ForwarderEvent;
use ccf_router::RouterEvent;
use serde_json::{json, Value};

/// One event to deliver: its name and its `data` object, with when it was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The webhook event.
    pub event: WebhookEvent,
    /// When the dispatcher saw it.
    pub at: SystemTime,
    /// The event's `data` object.
    pub data: Value,
}

impl Notification {
    /// The notification for `event`, if it is one a webhook can subscribe to. `secrets` are
    /// masked wherever they occur in free text (a rejected reload's error message).
    pub fn from_event(event: &ForwarderEvent, secrets: &[String]) -> Option<Notification> {
        let at = SystemTime::now();
        let (event, data) = match event {
            ForwarderEvent::Health(HealthEvent::EndpointUnhealthy {
                endpoint,
                reason,
                consecutive_failures,
            }) => (
                WebhookEvent::EndpointUnhealthy,
                json!({
                    "endpoint": endpoint,
                    "reason": ccf_types::sweep_secrets(reason.clone(), secrets),
                    "consecutive_failures": consecutive_failures,
                }),
            ),
            ForwarderEvent::Health(HealthEvent::EndpointHealthy { endpoint, latency }) => (
                WebhookEvent::EndpointRecovered,
                json!({
                    "endpoint": endpoint,
                    "latency_ms": latency.map(|latency| latency.as_millis()),
                }),
            ),
            ForwarderEvent::Router(RouterEvent::ActiveGroupChanged { from, to }) => (
                WebhookEvent::GroupSwitched,
                json!({ "from": from, "to": to }),
            ),
            ForwarderEvent::Router(RouterEvent::GroupCooldown { group, until }) => (
                WebhookEvent::GroupCooldown,
                json!({ "group": group, "until": rfc3339(system_time_of(*until, at)) }),
            ),
            ForwarderEvent::KeyBudgetExceeded {
                key_name,
                period,
                budget_usd,
                spent_usd,
                resets_at,
            } => (
                WebhookEvent::KeyBudgetExceeded,
                json!({
                    "key_name": key_name,
                    "period": period.as_str(),
                    "budget_usd": budget_usd,
                    "spent_usd": spent_usd,
                    "resets_at": rfc3339(*resets_at),
                }),
            ),
            ForwarderEvent::QuotaLow {
                endpoint,
                window,
                utilization,
                rejected,
                resets_at,
            } => (
                WebhookEvent::QuotaLow,
                json!({
                    "endpoint": endpoint,
                    "window": window,
                    "utilization": utilization,
                    "rejected": rejected,
                    "resets_at": resets_at.map(rfc3339),
                }),
            ),
            ForwarderEvent::ConfigReloaded(status) if !status.ok => (
                WebhookEvent::ConfigReloadFailed,
                json!({
                    "trigger": status.trigger,
                    "error": status
                        .error
                        .clone()
                        .map(|error| ccf_types::sweep_secrets(error, secrets)),
                }),
            ),
            _ => return None,
        };
        Some(Notification { event, at, data })
    }

    /// The request body: `{"event", "timestamp", "instance_id", "data"}`.
    pub fn body(&self, instance_id: &str) -> Bytes {
        let body = json!({
            "event": self.event.as_str(),
            "timestamp": rfc3339(self.at),
            "instance_id": instance_id,
            "data": self.data,
        });
        Bytes::from(body.to_string())
    }
}

/// RFC 3339 in UTC with milliseconds, like the admin API.
fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The wall-clock time of a monotonic `instant`, taking `now` as the wall-clock time of
/// `Instant::now()`.
fn system_time_of(instant: Instant, now: SystemTime) -> SystemTime {
    let monotonic_now = Instant::now();
    if instant >= monotonic_now {
        now + (instant - monotonic_now)
    } else {
        now.checked_sub(monotonic_now - instant).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_proxy::ReloadStatus;
    use std::time::Duration;

    #[test]
    fn health_router_reload_budget_and_quota_events_map_to_their_webhook_events() {
        let until = Instant::now() + Duration::from_secs(600);
        let cases: Vec<(ForwarderEvent, Option<WebhookEvent>)> = vec![
            (
                ForwarderEvent::Health(HealthEvent::EndpointUnhealthy {
                    endpoint: "a".into(),
                    reason: "503".into(),
                    consecutive_failures: 3,
                }),
                Some(WebhookEvent::EndpointUnhealthy),
            ),
            (
                ForwarderEvent::Health(HealthEvent::EndpointHealthy {
                    endpoint: "a".into(),
                    latency: None,
                }),
                Some(WebhookEvent::EndpointRecovered),
            ),
            (
                ForwarderEvent::Health(HealthEvent::ProbeLatency {
                    endpoint: "a".into(),
                    latency: Duration::from_millis(5),
                }),
                None,
            ),
            (
                ForwarderEvent::Router(RouterEvent::ActiveGroupChanged {
                    from: Some("main".into()),
                    to: Some("backup".into()),
                }),
                Some(WebhookEvent::GroupSwitched),
            ),
            (
                ForwarderEvent::Router(RouterEvent::GroupCooldown {
                    group: "main".into(),
                    until,
                }),
                Some(WebhookEvent::GroupCooldown),
            ),
            (
                ForwarderEvent::Router(RouterEvent::GroupResumed {
                    group: "main".into(),
                }),
                None,
            ),
            (
                ForwarderEvent::ConfigReloaded(ReloadStatus::rejected("api", "bad".into())),
                Some(WebhookEvent::ConfigReloadFailed),
            ),
            (
                ForwarderEvent::KeyBudgetExceeded {
                    key_name: "alice".into(),
                    period: ccf_proxy::BudgetPeriod::Daily,
                    budget_usd: 5.0,
                    spent_usd: 5.01,
                    resets_at: SystemTime::UNIX_EPOCH,
                },
                Some(WebhookEvent::KeyBudgetExceeded),
            ),
            (
                ForwarderEvent::QuotaLow {
                    endpoint: "max".into(),
                    window: "five_hour".into(),
                    utilization: 0.93,
                    rejected: false,
                    resets_at: None,
                },
                Some(WebhookEvent::QuotaLow),
            ),
        ];
        for (event, expected) in cases {
            let mapped = Notification::from_event(&event, &[]).map(|n| n.event);
            assert_eq!(mapped, expected, "{event:?}");
        }
    }

    #[test]
    fn the_body_carries_event_timestamp_instance_and_data_with_secrets_swept() {
        let status = ReloadStatus::rejected(
            "file",
            "config.yaml: endpoints[0].url: bad value sk-ant-secret-token-value".into(),
        );
        let notification = Notification::from_event(
            &ForwarderEvent::ConfigReloaded(status),
            &["sk-ant-secret-token-value".to_string()],
        )
        .expect("a rejected reload is a notification");
        let body: Value =
            serde_json::from_slice(&notification.body("host:8080")).expect("json body");
        assert_eq!(body["event"], "config_reload_failed");
        assert_eq!(body["instance_id"], "host:8080");
        assert_eq!(body["data"]["trigger"], "file");
        let error = body["data"]["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("config.yaml: endpoints[0].url"),
            "{error}"
        );
        assert!(!error.contains("sk-ant-secret-token-value"), "{error}");
        let timestamp = body["timestamp"].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
    }

    #[test]
    fn an_applied_reload_is_not_a_notification() {
        let status = ReloadStatus::applied("api", ccf_proxy::ReloadReport::default());
        assert!(Notification::from_event(&ForwarderEvent::ConfigReloaded(status), &[]).is_none());
    }
}
