//! [`RequestStart`] (what is known when a request arrives) and [`RequestRecord`] (the full state
//! of one request: what the store writes and the UIs show).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ccf_types::Usage;
use serde::Serialize;

use crate::millis;
use crate::{Attempt, ErrorState, FailureReason, RequestId, Status};

/// What is known about a request when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStart {
    /// The request's id.
    pub id: RequestId,
    /// The client's address, without its port.
    pub client_ip: Option<IpAddr>,
    /// The client's `user-agent`.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query string, which may carry credentials).
    pub path: String,
    /// Whether the client asked for a streamed (SSE) response.
    pub is_streaming: bool,
    /// The `model` of the request body, when there is one.
    pub request_model: Option<String>,
    /// The name of the inbound auth key the client presented (`auth.tokens[].name`, `default`
    /// for `auth.token`); `None` when inbound auth is off.
    pub api_key_name: Option<String>,
}

/// The full state of one request.
///
/// A record is a snapshot: the running request's lives inside its [`Lifecycle`](crate::Lifecycle)
/// and only the lifecycle changes it. A record with a final status exists only inside an
/// [`Outcome`](crate::Outcome) or an event made from one.
///
/// Serialized with times as Unix milliseconds and durations as milliseconds (like [`Attempt`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// The request's id.
    pub id: RequestId,
    /// The client's address, without its port.
    pub client_ip: Option<IpAddr>,
    /// The client's `user-agent`.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Whether the client asked for a streamed response.
    pub is_streaming: bool,
    /// Business status.
    pub status: Status,
    /// Error dimension while in flight (`retry` / `suspended`); always `None` once final.
    pub error_state: Option<ErrorState>,
    /// The endpoint last forwarded to (the one that answered, for a processed request).
    pub endpoint: Option<String>,
    /// The group of [`endpoint`](Self::endpoint).
    pub group: Option<String>,
    /// The `model` the client asked for.
    pub request_model: Option<String>,
    /// The `model` the upstream reported; it wins for billing.
    pub response_model: Option<String>,
    /// The `model` sent to [`endpoint`](Self::endpoint) when its `model_map` rewrote the
    /// request's (issue 20); `None` when the request's model was sent unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_model: Option<String>,
    /// The upstream answered with another model than the one sent to it (the mapped name when
    /// a `model_map` rewrote it, else the one asked for; see [`models_match`]).
    pub model_mismatch: bool,
    /// Every attempt, in order, with its endpoint, group and result.
    pub attempts: Vec<Attempt>,
    /// Attempts beyond the first.
    pub retry_count: u32,
    /// The status the client got (or is getting): the upstream's, 499 for a cancel, the
    /// forwarder's own for a failure it answered itself. A stream that failed after it started
    /// keeps its 200.
    pub http_status: Option<u16>,
    /// When the request arrived.
    #[serde(with = "millis::unix")]
    pub started_at: SystemTime,
    /// When it finished; set exactly when the status is final.
    #[serde(with = "millis::unix_option")]
    pub ended_at: Option<SystemTime>,
    /// `ended_at - started_at` (0 if the clock went backwards).
    #[serde(with = "millis::duration_option")]
    pub duration: Option<Duration>,
    /// From arrival until the upstream's response began.
    #[serde(with = "millis::duration_option")]
    pub time_to_first_byte: Option<Duration>,
    /// The latest usage the upstream reported; kept on failure and cancel, so the tokens actually
    /// consumed are billed once, whatever the end.
    pub usage: Option<Usage>,
    /// The usage is incomplete (for example a stream cut before its `message_delta`).
    pub partial: bool,
    /// Why the request failed, or why its last attempt failed before a retry.
    pub failure_reason: Option<FailureReason>,
    /// Detail text for [`failure_reason`](Self::failure_reason).
    pub last_failure_reason: Option<String>,
    /// Why the request was cancelled; set exactly when the status is `cancelled`.
    pub cancel_reason: Option<String>,
    /// The name of the inbound auth key the request was made with (never the key itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_name: Option<String>,
    /// The conversation the request belongs to, as routing identified it: a 64-bit hash in
    /// 16 hex digits (never the text it was computed from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Session affinity moved the conversation to this request's endpoint from this one (the
    /// endpoint that served its previous turn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_moved_from: Option<String>,
}

impl RequestRecord {
    pub(crate) fn new(start: RequestStart, now: SystemTime) -> Self {
        RequestRecord {
            id: start.id,
            client_ip: start.client_ip,
            user_agent: start.user_agent,
            method: start.method,
            path: start.path,
            is_streaming: start.is_streaming,
            status: Status::Pending,
            error_state: None,
            endpoint: None,
            group: None,
            request_model: start.request_model.filter(|model| !model.is_empty()),
            response_model: None,
            sent_model: None,
            model_mismatch: false,
            attempts: Vec::new(),
            retry_count: 0,
            http_status: None,
            started_at: now,
            ended_at: None,
            duration: None,
            time_to_first_byte: None,
            usage: None,
            partial: false,
            failure_reason: None,
            last_failure_reason: None,
            cancel_reason: None,
            api_key_name: start.api_key_name,
            session_id: None,
            affinity_moved_from: None,
        }
    }

    /// The model to bill and show: the upstream's if it reported one, else the one sent to
    /// it (a `model_map`'s name), else the request's.
    pub fn model(&self) -> Option<&str> {
        self.response_model
            .as_deref()
            .or(self.sent_model.as_deref())
            .or(self.request_model.as_deref())
    }

    /// [`RequestRecord::model`], moved out of a record that is not read again (the row of a
    /// final state): the answered or sent name is taken, the request's copied, since the row
    /// keeps it as the requested model too.
    pub fn take_model(&mut self) -> Option<String> {
        self.response_model
            .take()
            .or_else(|| self.sent_model.take())
            .or_else(|| self.request_model.clone())
    }

    /// Whether the status is final (completed, failed or cancelled).
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }

    /// One log line about the request, `key=value` separated by spaces, `-` for what is not known
    /// (yet). Free text (reasons) is quoted. Example:
    ///
    /// `req-00000000000000ab completed http_status=200 endpoint=primary group=main
    /// model=claude-sonnet-4-5 input_tokens=12 output_tokens=34 cache_creation_input_tokens=0
    /// cache_read_input_tokens=0 retry_count=1 duration_ms=1500`
    pub fn summary(&self) -> String {
        fn or_dash(value: Option<&str>) -> &str {
            value.unwrap_or("-")
        }
        let mut line = format!("{} {}", self.id, self.status);
        if let Some(error_state) = self.error_state {
            let _ = write!(line, " error_state={error_state}");
        }
        match self.http_status {
            Some(code) => {
                let _ = write!(line, " http_status={code}");
            }
            None => line.push_str(" http_status=-"),
        }
        let _ = write!(
            line,
            " endpoint={} group={} model={}",
            or_dash(self.endpoint.as_deref()),
            or_dash(self.group.as_deref()),
            or_dash(self.model()),
        );
        if self.model_mismatch {
            let _ = write!(
                line,
                " request_model={}",
                or_dash(self.request_model.as_deref())
            );
        }
        match &self.usage {
            Some(usage) => {
                let _ = write!(
                    line,
                    " input_tokens={} output_tokens={} cache_creation_input_tokens={} \
                     cache_read_input_tokens={}",
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_creation_input_tokens,
                    usage.cache_read_input_tokens
                );
            }
            None => line.push_str(" tokens=-"),
        }
        if self.partial {
            line.push_str(" partial=true");
        }
        let _ = write!(line, " retry_count={}", self.retry_count);
        match self.duration {
            Some(duration) => {
                let _ = write!(line, " duration_ms={}", millis::duration_millis(duration));
            }
            None => line.push_str(" duration_ms=-"),
        }
        if let Some(reason) = self.failure_reason {
            let _ = write!(line, " failure_reason={reason}");
        }
        if let Some(detail) = &self.last_failure_reason {
            let _ = write!(line, " detail={detail:?}");
        }
        if let Some(reason) = &self.cancel_reason {
            let _ = write!(line, " cancel_reason={reason:?}");
        }
        line
    }
}

/// Whether the model the upstream reported is the one that was asked for.
///
/// Anthropic answers an alias with a dated id (`claude-sonnet-4-5` →
/// `claude-sonnet-4-5-20250929`, `claude-3-5-sonnet-latest` → `claude-3-5-sonnet-20241022`), so
/// an undated request matches any dated version of its name; a dated request matches only itself.
/// ASCII case and surrounding spaces are ignored. Anything else that differs is a substitution
/// the user wants to see.
pub fn models_match(requested: &str, responded: &str) -> bool {
    fn split_date(model: &str) -> (&str, Option<&str>) {
        match model.rsplit_once('-') {
            Some((stem, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => {
                (stem, Some(date))
            }
            _ => (model, None),
        }
    }
    let requested = requested.trim();
    let responded = responded.trim();
    if requested.eq_ignore_ascii_case(responded) {
        return true;
    }
    let requested = requested.strip_suffix("-latest").unwrap_or(requested);
    match (split_date(requested), split_date(responded)) {
        ((stem, None), (responded_stem, _)) => {
            !stem.is_empty() && stem.eq_ignore_ascii_case(responded_stem)
        }
        ((_, Some(_)), _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_match_their_dated_ids_and_substitutions_do_not() {
        let cases = [
            ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", true),
            (
                "claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5-20250929",
                true,
            ),
            (
                "claude-3-5-sonnet-latest",
                "claude-3-5-sonnet-20241022",
                true,
            ),
            ("Claude-Opus-4-1", "claude-opus-4-1", true),
            ("claude-opus-4-1", "claude-sonnet-4-5-20250929", false),
            (
                "claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5-20240101",
                false,
            ),
            ("claude-opus-4", "claude-opus-4-1", false),
            ("gpt-4o", "claude-sonnet-4-5", false),
            ("", "claude-sonnet-4-5", false),
        ];
        for (requested, responded, expected) in cases {
            assert_eq!(
                models_match(requested, responded),
                expected,
                "{requested} vs {responded}"
            );
        }
    }
}
