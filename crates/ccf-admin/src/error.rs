//! [`ApiError`]: the one error type of the routes, and the only place that turns errors into
//! responses (`{"error": {"code": "...", "message": "..."}}`).

use ccf_router::RouterError;
use ccf_store::StoreError;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::http_util::{json_response, AdminResponse};

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Methods the path accepts (405 only).
    pub(crate) allow: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn method_not_allowed(allow: &[&str]) -> Self {
        let allow = allow.join(", ");
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("this route accepts {allow} only"),
            allow: Some(allow),
        }
    }

    pub(crate) fn tracking_disabled() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_tracking_disabled",
            "usage tracking is disabled (usage_tracking.enabled: false): no usage database to query",
        )
    }

    pub(crate) fn store(error: &StoreError) -> Self {
        if error.is_retryable() {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the usage database is unavailable: {error}"),
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                format!("the usage database query failed: {error}"),
            )
        }
    }

    pub(crate) fn router(error: &RouterError) -> Self {
        let (status, code) = match error {
            RouterError::UnknownGroup { .. } => (StatusCode::NOT_FOUND, "unknown_group"),
            RouterError::UnknownEndpoint { .. } => (StatusCode::NOT_FOUND, "unknown_endpoint"),
            RouterError::InCooldown { .. } => (StatusCode::CONFLICT, "group_in_cooldown"),
            RouterError::NoHealthyEndpoints { .. } => {
                (StatusCode::CONFLICT, "no_healthy_endpoints")
            }
            RouterError::NotPaused { .. } => (StatusCode::CONFLICT, "group_not_paused"),
        };
        Self::new(status, code, error.to_string())
    }

    pub(crate) fn into_response(self) -> AdminResponse {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cc-forwarder admin\""),
            );
        }
        response
    }
}
