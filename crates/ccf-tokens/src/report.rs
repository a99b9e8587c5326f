//! The Anthropic JSON shapes this crate reads, parsed leniently: [`ApiError`] and
//! [`UsageReport`] (with the stream's merge rule), and, for the tests only, the reference reading
//! of every payload through `serde_json::Value`.
//!
//! One payload type serves every case: a `message_start` event (`message.{id, model, usage}`), a
//! `message_delta` event (`usage`), an `error` event or error body (`error`), and a whole
//! non-streaming message (top-level `id`, `model`, `usage`). Fields this crate does not read
//! (`content`, `delta`, ...) are skipped without being built. The reference takes the small
//! objects that are read as `serde_json::Value` and picks them apart by hand, so a number sent as
//! a float or a string, a `null`, or an unexpected type never makes the whole payload
//! unreadable; what runs is the typed, borrowed parse in `extract.rs` (issue 19), which the
//! tests hold to the reference on odd shapes, fixtures, the fuzz corpus and random payloads.

use ccf_types::Usage;
#[cfg(test)]
use serde::Deserialize;
#[cfg(test)]
use serde_json::Value;

#[cfg(test)]
use crate::extract::UNKNOWN_ERROR;

/// Every field of interest in any event or body; all optional.
#[cfg(test)]
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Payload {
    #[serde(rename = "type")]
    pub(crate) kind: Option<Value>,
    pub(crate) id: Option<Value>,
    pub(crate) model: Option<Value>,
    pub(crate) usage: Option<Value>,
    pub(crate) error: Option<Value>,
    pub(crate) message: Option<MessageObject>,
}

/// `message_start`'s `message` object.
#[cfg(test)]
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct MessageObject {
    pub(crate) id: Option<Value>,
    pub(crate) model: Option<Value>,
    pub(crate) usage: Option<Value>,
}

/// An error the upstream reported, in a body or as an SSE `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// `error.type`, e.g. `overloaded_error`; `unknown_error` when absent.
    pub error_type: String,
    /// `error.message`; empty when absent.
    pub message: String,
}

impl ApiError {
    /// Reads `{"type": .., "message": ..}`, or a bare string used as the message.
    #[cfg(test)]
    pub(crate) fn from_value(value: &Value) -> Self {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        match value {
            Value::String(message) => Self {
                error_type: UNKNOWN_ERROR.to_string(),
                message: message.clone(),
            },
            _ => Self {
                error_type: text("type").unwrap_or_else(|| UNKNOWN_ERROR.to_string()),
                message: text("message").unwrap_or_default(),
            },
        }
    }
}

/// A `usage` object as reported, keeping "absent" apart from "zero" (the merge rule needs it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UsageReport {
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cache_creation_input_tokens: Option<u64>,
    pub(crate) cache_read_input_tokens: Option<u64>,
    pub(crate) cache_creation_5m_input_tokens: Option<u64>,
    pub(crate) cache_creation_1h_input_tokens: Option<u64>,
    pub(crate) web_search_requests: Option<u64>,
    pub(crate) service_tier: Option<String>,
}

impl UsageReport {
    /// Reads a `usage` value; `None` when it is not an object.
    #[cfg(test)]
    pub(crate) fn from_value(value: &Value) -> Option<Self> {
        let object = value.as_object()?;
        let cache_creation = object.get("cache_creation");
        let server_tool_use = object.get("server_tool_use");
        Some(Self {
            input_tokens: count(object.get("input_tokens")),
            output_tokens: count(object.get("output_tokens")),
            cache_creation_input_tokens: count(object.get("cache_creation_input_tokens")),
            cache_read_input_tokens: count(object.get("cache_read_input_tokens")),
            cache_creation_5m_input_tokens: count(
                cache_creation.and_then(|c| c.get("ephemeral_5m_input_tokens")),
            ),
            cache_creation_1h_input_tokens: count(
                cache_creation.and_then(|c| c.get("ephemeral_1h_input_tokens")),
            ),
            web_search_requests: count(server_tool_use.and_then(|s| s.get("web_search_requests"))),
            service_tier: object
                .get("service_tier")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The report on its own (a non-streaming body, or a stream cut before `message_delta`).
    pub(crate) fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_creation_input_tokens: self.cache_creation_input_tokens.unwrap_or(0),
            cache_read_input_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_creation_5m_input_tokens: self.cache_creation_5m_input_tokens.unwrap_or(0),
            cache_creation_1h_input_tokens: self.cache_creation_1h_input_tokens.unwrap_or(0),
            web_search_requests: self.web_search_requests.unwrap_or(0),
            service_tier: self.service_tier.clone(),
        }
    }

    /// The final usage of a stream: `self` is a `message_delta`'s usage, `start` the
    /// `message_start`'s.
    ///
    /// Output comes from the delta (it is cumulative). Input, cache and web-search counts come
    /// from the delta when it reports them as non-zero, otherwise from `message_start`: newer
    /// upstreams repeat them in the delta, some relays send zeros there, and a zero must never
    /// erase what `message_start` reported.
    pub(crate) fn merged_over(&self, start: Option<&UsageReport>) -> Usage {
        let empty = UsageReport::default();
        let start = start.unwrap_or(&empty);
        let non_zero_or = |delta: Option<u64>, start: Option<u64>| {
            delta
                .filter(|value| *value > 0)
                .or(start)
                .or(delta)
                .unwrap_or(0)
        };
        Usage {
            input_tokens: non_zero_or(self.input_tokens, start.input_tokens),
            output_tokens: self.output_tokens.or(start.output_tokens).unwrap_or(0),
            cache_creation_input_tokens: non_zero_or(
                self.cache_creation_input_tokens,
                start.cache_creation_input_tokens,
            ),
            cache_read_input_tokens: non_zero_or(
                self.cache_read_input_tokens,
                start.cache_read_input_tokens,
            ),
            cache_creation_5m_input_tokens: non_zero_or(
                self.cache_creation_5m_input_tokens,
                start.cache_creation_5m_input_tokens,
            ),
            cache_creation_1h_input_tokens: non_zero_or(
                self.cache_creation_1h_input_tokens,
                start.cache_creation_1h_input_tokens,
            ),
            web_search_requests: non_zero_or(self.web_search_requests, start.web_search_requests),
            service_tier: self
                .service_tier
                .clone()
                .or_else(|| start.service_tier.clone()),
        }
    }
}

/// A token count: a non-negative integer, tolerating floats and numeric strings. Anything else
/// (absent, `null`, negative, text) is "not reported".
#[cfg(test)]
fn count(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.is_finite() && *float >= 0.0)
                // `as` saturates: a float beyond u64::MAX becomes u64::MAX, never UB or a panic.
                .map(|float| float as u64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A string field; `None` for absent, `null`, empty or non-string values.
#[cfg(test)]
pub(crate) fn text(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(value: Value) -> UsageReport {
        UsageReport::from_value(&value).unwrap()
    }

    #[test]
    fn counts_are_read_leniently() {
        let parsed = report(json!({
            "input_tokens": 12.0, "output_tokens": "7", "cache_read_input_tokens": -3,
            "cache_creation_input_tokens": null, "unknown": {"nested": [1, 2]},
            "cache_creation": "not an object", "server_tool_use": {"web_search_requests": 2},
            "service_tier": 5
        }));
        assert_eq!(
            parsed.to_usage(),
            Usage {
                input_tokens: 12,
                output_tokens: 7,
                web_search_requests: 2,
                ..Usage::default()
            }
        );
        assert_eq!(UsageReport::from_value(&json!([1])), None);
    }

    #[test]
    fn merge_rule_prefers_non_zero_delta_counts_and_keeps_start_counts_otherwise() {
        let start = report(json!({
            "input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 30, "service_tier": "standard",
            "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 0}
        }));
        let zeros = report(json!({
            "input_tokens": 0, "output_tokens": 50, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0
        }));
        let merged = zeros.merged_over(Some(&start));
        assert_eq!(
            (merged.input_tokens, merged.output_tokens),
            (10, 50),
            "zeros keep start"
        );
        assert_eq!(
            (
                merged.cache_creation_input_tokens,
                merged.cache_read_input_tokens
            ),
            (20, 30)
        );
        assert_eq!(merged.cache_creation_5m_input_tokens, 20);
        assert_eq!(merged.service_tier.as_deref(), Some("standard"));

        let repeated = report(json!({"input_tokens": 11, "output_tokens": 60,
            "cache_read_input_tokens": 31}));
        let merged = repeated.merged_over(Some(&start));
        assert_eq!(
            (
                merged.input_tokens,
                merged.output_tokens,
                merged.cache_read_input_tokens
            ),
            (11, 60, 31)
        );

        let only_delta = report(json!({"output_tokens": 5, "input_tokens": 0}));
        assert_eq!(
            only_delta.merged_over(None),
            Usage {
                output_tokens: 5,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn api_errors_read_objects_and_strings() {
        assert_eq!(
            ApiError::from_value(&json!({"type": "overloaded_error", "message": "Overloaded"})),
            ApiError {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );
        assert_eq!(
            ApiError::from_value(&json!("boom")),
            ApiError {
                error_type: "unknown_error".into(),
                message: "boom".into()
            }
        );
        assert_eq!(
            ApiError::from_value(&json!(42)).error_type,
            "unknown_error".to_string()
        );
    }
}
