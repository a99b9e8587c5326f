//! What an upstream answer is: classification by status code and headers, never by matching
//! strings (the Go original matched substrings such as `"400"` or `"limit"`). What follows from
//! each class (health signal, lifecycle reason, metric, next step) is the retry policy, in one
//! place: the crate's `retry.rs`, which also classifies attempts that got no answer.
//!
//! | result | class |
//! |---|---|
//! | 2xx, 3xx | [`AttemptClass::Success`]: relay it |
//! | connect error, reset before response, no headers in time | no answer to classify: `retry.rs` makes each a verdict of its own (a timeout after the request was sent gets one last attempt elsewhere) |
//! | 500, 502, 503, 504, 520-525, 529 | [`AttemptClass::Retry`] |
//! | 429 with `anthropic-ratelimit-unified-status: rejected` | [`AttemptClass::QuotaRejected`]: the subscription account is spent until its reset ([`subscription_rejected`]) |
//! | 429 | [`AttemptClass::RateLimited`] with the wait the upstream asked for ([`retry_after`]: `retry-after`, else the reset of the exhausted limit) |
//! | 401, 403 | [`AttemptClass::NextEndpoint`]: this endpoint's credentials are bad |
//! | any other status | [`AttemptClass::Final`]: the request itself is wrong; relay verbatim |

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

/// What to do after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptClass {
    /// The upstream accepted the request.
    Success,
    /// Transient: retry the same endpoint after a back-off, then move on.
    Retry,
    /// Rate limited; `retry_after` is the wait the upstream asked for, when it said.
    RateLimited {
        /// From `retry-after` or the earliest `anthropic-ratelimit-*-reset`.
        retry_after: Option<Duration>,
    },
    /// The endpoint refused our credentials: move to the next endpoint at once.
    NextEndpoint,
    /// 429 from a subscription account that said `rejected`: it is spent until its reset (the
    /// router blocks the endpoint until then); no retry against it.
    QuotaRejected,
    /// The upstream judged the request itself: relay its answer, try nothing else.
    Final,
}

/// Classifies an upstream answer.
pub fn classify_status(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> AttemptClass {
    match status.as_u16() {
        200..=399 => AttemptClass::Success,
        429 if subscription_rejected(headers) => AttemptClass::QuotaRejected,
        429 => AttemptClass::RateLimited {
            retry_after: retry_after(headers, now),
        },
        401 | 403 => AttemptClass::NextEndpoint,
        500 | 502 | 503 | 504 | 520..=525 | 529 => AttemptClass::Retry,
        _ => AttemptClass::Final,
    }
}

/// The per-minute rate-limit dimensions: `anthropic-ratelimit-<dimension>-{remaining,reset}`.
const RATE_LIMIT_DIMENSIONS: [&str; 4] = ["requests", "input-tokens", "output-tokens", "tokens"];

/// The wait a 429 asks for, in this order:
/// 1. `retry-after` (seconds or an HTTP date);
/// 2. the reset of the limits it exhausted: the latest `anthropic-ratelimit-<d>-reset` (RFC 3339)
///    of the dimensions whose `-remaining` is `0` (every exhausted one must have reset);
/// 3. a subscription account's `anthropic-ratelimit-unified-reset` (epoch seconds) when its
///    `-status` is `rejected`;
/// 4. when no answer says which limit is exhausted, the latest reset of all: an earlier one may
///    belong to a limit with room left, and retrying then only meets the same 429.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text(http::header::RETRY_AFTER.as_str()) {
        if let Ok(seconds) = value.parse::<f64>() {
            if seconds.is_finite() && seconds >= 0.0 {
                return Some(Duration::from_secs_f64(seconds.min(86_400.0)));
            }
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or_default());
        }
    }
    let mut exhausted: Option<Duration> = None;
    let mut any: Option<Duration> = None;
    for dimension in RATE_LIMIT_DIMENSIONS {
        let Some(reset) = text(&format!("anthropic-ratelimit-{dimension}-reset"))
            .and_then(|value| humantime::parse_rfc3339_weak(value).ok())
            .and_then(|reset| reset.duration_since(now).ok())
        else {
            continue;
        };
        any = any.max(Some(reset));
        let remaining = text(&format!("anthropic-ratelimit-{dimension}-remaining"))
            .and_then(|value| value.parse::<u64>().ok());
        if remaining == Some(0) {
            exhausted = exhausted.max(Some(reset));
        }
    }
    if exhausted.is_some() {
        return exhausted;
    }
    if subscription_rejected(headers) {
        let unified_reset =
            text("anthropic-ratelimit-unified-reset").and_then(|value| epoch_reset_in(value, now));
        if unified_reset.is_some() {
            return unified_reset;
        }
    }
    any
}

/// The time from `now` to a unified reset written as Unix seconds (`anthropic-ratelimit-unified-
/// reset`, `-<window>-reset`); zero when it has passed, `None` when it is not a number.
pub(crate) fn epoch_reset_in(value: &str, now: SystemTime) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(|epoch| {
        (SystemTime::UNIX_EPOCH + Duration::from_secs(epoch))
            .duration_since(now)
            .unwrap_or_default()
    })
}

/// A subscription account said `anthropic-ratelimit-unified-status: rejected` (any answer):
/// it is spent until its `anthropic-ratelimit-unified-reset`.
pub fn subscription_rejected(headers: &HeaderMap) -> bool {
    headers
        .get("anthropic-ratelimit-unified-status")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|status| status.trim().eq_ignore_ascii_case("rejected"))
}

/// `min(base * multiplier^(attempt-1), max)`, then jittered into `[d/2, d]` so that many
/// clients retrying together do not hit the upstream in lockstep. `attempt` starts at 1.
pub fn backoff(
    attempt: u32,
    base: Duration,
    multiplier: f64,
    max: Duration,
    jitter_unit: f64,
) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let raw = base.as_secs_f64() * multiplier.max(1.0).powi(exponent);
    let capped = raw.min(max.as_secs_f64()).max(0.0);
    let jitter = jitter_unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_map_to_the_table() {
        let now = SystemTime::now();
        let check = |status: u16, expected: AttemptClass| {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify_status(status, &HeaderMap::new(), now),
                expected,
                "{status}"
            );
        };
        for status in [200, 201, 204, 301, 304] {
            check(status, AttemptClass::Success);
        }
        for status in [500, 502, 503, 504, 520, 521, 522, 523, 524, 525, 529] {
            check(status, AttemptClass::Retry);
        }
        for status in [401, 403] {
            check(status, AttemptClass::NextEndpoint);
        }
        for status in [400, 404, 405, 408, 409, 413, 422, 501, 505, 526] {
            check(status, AttemptClass::Final);
        }
        check(429, AttemptClass::RateLimited { retry_after: None });
    }

    #[test]
    fn a_rejected_subscription_is_quota_rejected_and_a_529_is_not() {
        let now = SystemTime::now();
        let rejected = headers(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", "1700003600"),
        ]);
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &rejected, now),
            AttemptClass::QuotaRejected
        );
        // A 529 is a transient throttle whatever the account says.
        assert_eq!(
            classify_status(StatusCode::from_u16(529).unwrap(), &rejected, now),
            AttemptClass::Retry
        );
        let warning = headers(&[("anthropic-ratelimit-unified-status", "allowed_warning")]);
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &warning, now),
            AttemptClass::RateLimited { retry_after: None }
        );
        assert!(subscription_rejected(&headers(&[(
            "anthropic-ratelimit-unified-status",
            " Rejected "
        )])));
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_ratelimit_resets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let reset_soon = humantime::format_rfc3339(now + Duration::from_secs(12)).to_string();
        let reset_later = humantime::format_rfc3339(now + Duration::from_secs(50)).to_string();
        // The exhausted limit decides, not the earliest reset.
        assert_eq!(
            retry_after(
                &headers(&[
                    ("anthropic-ratelimit-tokens-reset", &reset_later),
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", &reset_soon),
                    ("anthropic-ratelimit-requests-remaining", "40"),
                ]),
                now
            ),
            Some(Duration::from_secs(50))
        );
        assert_eq!(
            retry_after(
                &headers(&[
                    ("anthropic-ratelimit-tokens-reset", &reset_later),
                    ("anthropic-ratelimit-tokens-remaining", "9000"),
                    ("anthropic-ratelimit-requests-reset", &reset_soon),
                    ("anthropic-ratelimit-requests-remaining", "0"),
                ]),
                now
            ),
            Some(Duration::from_secs(12))
        );
        // Nothing says which is exhausted: the latest reset, when every limit has room again.
        assert_eq!(
            retry_after(
                &headers(&[
                    ("anthropic-ratelimit-tokens-reset", &reset_later),
                    ("anthropic-ratelimit-requests-reset", &reset_soon),
                ]),
                now
            ),
            Some(Duration::from_secs(50))
        );
        // A subscription account spent until its unified reset (epoch seconds).
        let epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs()
            + 3600;
        let epoch = epoch.to_string();
        let unified = [
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", epoch.as_str()),
        ];
        assert_eq!(
            retry_after(&headers(&unified), now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            retry_after(
                &headers(&[
                    ("anthropic-ratelimit-unified-status", "allowed_warning"),
                    ("anthropic-ratelimit-unified-reset", epoch.as_str()),
                ]),
                now
            ),
            None
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_half_to_full() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, base, 2.0, max, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, base, 2.0, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, base, 2.0, max, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(10, base, 2.0, max, 1.0), max);
        assert_eq!(backoff(2, base, 2.0, max, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(1, Duration::ZERO, 2.0, max, 0.5), Duration::ZERO);
    }
}
