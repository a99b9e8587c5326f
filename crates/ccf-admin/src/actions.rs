//! The operator actions (the `POST` routes): set an endpoint's priority, check its health now,
//! activate, pause and resume a group, reload the configuration. Each validates its input,
//! calls the forwarder, and answers what it did.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{json, Value};

use crate::dispatch::{ok, Handled};
use crate::dto::events::ReloadStatusDto;
use crate::dto::groups::HealthCheckDto;
use crate::dto::to_json;
use crate::error::ApiError;
use crate::http_util::{go_duration, rfc3339};
use crate::Shared;

/// `POST /api/v1/endpoints/{name}/priority` with `{"priority": n}`, `n >= 1`: in memory only.
pub(crate) fn set_priority(shared: &Shared, name: &str, body: Option<Value>) -> Handled {
    let priority = body
        .as_ref()
        .and_then(|body| body.get("priority"))
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_priority",
                "the body must be {\"priority\": n} with an integer n >= 1",
            )
        })?;
    let priority = u32::try_from(priority)
        .ok()
        .filter(|priority| *priority >= 1)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_priority", "priority must be an integer >= 1")
        })?;
    shared
        .forwarder
        .set_endpoint_priority(name, priority)
        .map_err(|error| ApiError::router(&error))?;
    ok(json!({
        "success": true,
        "message": format!("endpoint {name} priority set to {priority} (in memory, not saved to the file)"),
        "endpoint": name,
        "priority": priority,
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `POST /api/v1/endpoints/{name}/health-check`: probes the endpoint now and answers the result.
pub(crate) async fn health_check(shared: &Shared, name: &str) -> Handled {
    let Some(health) = shared.forwarder.health().check_now(name).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            format!("unknown endpoint `{name}`"),
        ));
    };
    ok(to_json(&HealthCheckDto::new(name, &health)))
}

/// `POST /api/v1/groups/{name}/activate[?force=true]`.
pub(crate) fn activate_group(shared: &Shared, name: &str, force: bool) -> Handled {
    shared
        .forwarder
        .activate_group(name, force)
        .map_err(|error| ApiError::router(&error))?;
    ok(json!({
        "success": true,
        "message": format!("group {name} activated{}", if force { " (forced)" } else { "" }),
        "group": name,
        "force_activated": force,
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `POST /api/v1/groups/{name}/pause` with an optional `{"duration": "30m"}` (none: until
/// resumed).
pub(crate) fn pause_group(shared: &Shared, name: &str, body: Option<Value>) -> Handled {
    let duration = match body.as_ref().and_then(|body| body.get("duration")) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => None,
        Some(Value::String(text)) => Some(parse_duration(text)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_duration",
                "duration must be a string such as \"30m\" or \"1h30m\"",
            ))
        }
    };
    shared
        .forwarder
        .pause_group(name, duration)
        .map_err(|error| ApiError::router(&error))?;
    let message = match duration {
        Some(duration) => format!("group {name} paused for {}", go_duration(duration)),
        None => format!("group {name} paused until resumed"),
    };
    ok(json!({
        "success": true,
        "message": message,
        "group": name,
        "duration": duration.map(go_duration),
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `POST /api/v1/groups/{name}/resume`.
pub(crate) fn resume_group(shared: &Shared, name: &str) -> Handled {
    shared
        .forwarder
        .resume_group(name)
        .map_err(|error| ApiError::router(&error))?;
    ok(json!({
        "success": true,
        "message": format!("group {name} resumed"),
        "group": name,
        "timestamp": rfc3339(SystemTime::now()),
    }))
}

/// `POST /api/v1/config/reload`: re-reads the configuration file (with the same environment and
/// command-line layers) and applies it; a rejected file answers 422 and changes nothing.
pub(crate) async fn reload_config(shared: &Shared) -> Handled {
    let forwarder = shared.forwarder.clone();
    // Reading and validating the file is blocking IO.
    let status = tokio::task::spawn_blocking(move || forwarder.request_reload("api"))
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("reload task failed: {error}"),
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_unavailable",
                "hot reload is off: the forwarder was not started from a configuration file",
            )
        })?;
    match &status.error {
        None => ok(json!({
            "success": true,
            "message": "configuration reloaded",
            "reload": ReloadStatusDto::from(&status),
        })),
        Some(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "config_rejected",
            format!("the new configuration was rejected, the old one stays: {error}"),
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, ApiError> {
    let duration = ccf_config::GoDuration::parse(text.trim())
        .map_err(|error| {
            ApiError::bad_request(
                "invalid_duration",
                format!("invalid duration `{text}`: {error}"),
            )
        })?
        .get();
    if duration.is_zero() {
        return Err(ApiError::bad_request(
            "invalid_duration",
            "duration must be greater than zero (omit it to pause until resumed)",
        ));
    }
    Ok(duration)
}
