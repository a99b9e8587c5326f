//! Reading the rate-limit headers of every upstream answer (any status) for the router's quota
//! model: `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,
//! reset}` (reset as an RFC 3339 time) and `retry-after` (seconds or an HTTP date), as one
//! [`QuotaObservation`] per answer ([`quota_observation`]). A subscription account's
//! `anthropic-ratelimit-unified-*` family (`-status`, `-reset` in epoch seconds,
//! `-representative-claim`, and per window `-<window>-utilization` / `-<window>-reset`) becomes
//! the observation's [`SubscriptionReading`] ([`subscription_reading`]).
//!
//! It must not know what the readings mean for routing (burn rate, draining: ccf-router's
//! `quota.rs`) nor what a 429 does to the request (the retry policy, `retry.rs`).

use std::time::{Duration, SystemTime};

use ccf_router::subscription::MAX_WINDOWS;
use ccf_router::{
    QuotaDimension, QuotaObservation, QuotaReading, SubscriptionReading, SubscriptionStatus,
    WindowReading,
};
use http::HeaderMap;

/// The prefix every rate-limit header shares.
const RATE_LIMIT_PREFIX: &str = "anthropic-ratelimit-";

/// The three fields one dimension's headers carry.
#[derive(Clone, Copy)]
enum QuotaField {
    /// `-limit`.
    Limit,
    /// `-remaining`.
    Remaining,
    /// `-reset`.
    Reset,
}

/// Every rate-limit header name after [`RATE_LIMIT_PREFIX`], with the dimension (an index into
/// [`QuotaDimension::ALL`]) and field it carries. Names are matched against this fixed table, so
/// reading an answer's headers builds no strings.
const RATE_LIMIT_SUFFIXES: [(&str, usize, QuotaField); 12] = [
    ("requests-limit", 0, QuotaField::Limit),
    ("requests-remaining", 0, QuotaField::Remaining),
    ("requests-reset", 0, QuotaField::Reset),
    ("input-tokens-limit", 1, QuotaField::Limit),
    ("input-tokens-remaining", 1, QuotaField::Remaining),
    ("input-tokens-reset", 1, QuotaField::Reset),
    ("output-tokens-limit", 2, QuotaField::Limit),
    ("output-tokens-remaining", 2, QuotaField::Remaining),
    ("output-tokens-reset", 2, QuotaField::Reset),
    ("tokens-limit", 3, QuotaField::Limit),
    ("tokens-remaining", 3, QuotaField::Remaining),
    ("tokens-reset", 3, QuotaField::Reset),
];

/// The first value of each rate-limit header of one dimension (`None`: header absent; a value
/// that is not visible ASCII counts as present but unreadable, like `HeaderMap::get` + `to_str`).
#[derive(Default, Clone, Copy)]
struct DimensionHeaders<'a> {
    limit: Option<Option<&'a str>>,
    remaining: Option<Option<&'a str>>,
    reset: Option<Option<&'a str>>,
}

/// The rate-limit headers of an upstream answer, seen at `now`.
///
/// One pass over the answer's headers: names without the `anthropic-ratelimit-` prefix are
/// skipped at once, the others are matched against a static table; only the first value of a
/// repeated header counts (as with `HeaderMap::get`).
pub(crate) fn quota_observation(headers: &HeaderMap, now: SystemTime) -> QuotaObservation {
    let mut found = [DimensionHeaders::default(); 4];
    let mut any = false;
    for (name, value) in headers {
        let Some(suffix) = name.as_str().strip_prefix(RATE_LIMIT_PREFIX) else {
            continue;
        };
        let Some(&(_, index, field)) = RATE_LIMIT_SUFFIXES
            .iter()
            .find(|(known, _, _)| *known == suffix)
        else {
            continue;
        };
        let slot = &mut found[index];
        let seen = match field {
            QuotaField::Limit => &mut slot.limit,
            QuotaField::Remaining => &mut slot.remaining,
            QuotaField::Reset => &mut slot.reset,
        };
        if seen.is_none() {
            *seen = Some(value.to_str().ok().map(str::trim));
            any = true;
        }
    }
    let mut observation = QuotaObservation::default();
    if any {
        let number =
            |text: Option<Option<&str>>| text.flatten().and_then(|value| value.parse::<u64>().ok());
        for (dimension, headers) in QuotaDimension::ALL.into_iter().zip(found) {
            let limit = number(headers.limit);
            let remaining = number(headers.remaining);
            let reset_in = headers
                .reset
                .flatten()
                .and_then(|value| humantime::parse_rfc3339_weak(value).ok())
                .map(|reset| reset.duration_since(now).unwrap_or(Duration::ZERO));
            if limit.is_some() || remaining.is_some() || reset_in.is_some() {
                observation.readings.push(QuotaReading {
                    dimension,
                    limit,
                    remaining,
                    reset_in,
                });
            }
        }
    }
    if let Some(value) = headers.get(http::header::RETRY_AFTER) {
        let mut only_retry_after = HeaderMap::with_capacity(1);
        only_retry_after.insert(http::header::RETRY_AFTER, value.clone());
        observation.retry_after = crate::classify::retry_after(&only_retry_after, now);
    }
    observation.subscription = subscription_reading(headers, now);
    observation
}

/// The prefix of a subscription account's headers.
const UNIFIED_PREFIX: &str = "anthropic-ratelimit-unified-";

/// Longest window label accepted from a header name (`5h`, `7d`, `7d_opus`, ...).
const MAX_WINDOW_LABEL: usize = 32;

/// The `anthropic-ratelimit-unified-*` headers of an answer, seen at `now`; `None` when it has
/// none. Resets are epoch seconds (a reset in the past reads as zero); utilizations are clamped
/// to 0-1; unreadable values are ignored. A window is reported when its `-utilization` is
/// readable (other `-<name>-reset` headers, such as an overage's, are not windows); at most
/// [`MAX_WINDOWS`], with labels of ASCII letters, digits and `_` only. Only the first value of a
/// repeated header counts.
pub(crate) fn subscription_reading(
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<SubscriptionReading> {
    let epoch_reset = |value: &str| crate::classify::epoch_reset_in(value, now);
    let mut reading = SubscriptionReading::default();
    let mut seen_status = false;
    let mut seen_reset = false;
    // In header order.
    let mut windows: Vec<WindowHeaders<'_>> = Vec::new();
    for (name, value) in headers {
        let Some(suffix) = name.as_str().strip_prefix(UNIFIED_PREFIX) else {
            continue;
        };
        let Ok(value) = value.to_str().map(str::trim) else {
            continue;
        };
        match suffix {
            "status" if !seen_status => {
                seen_status = true;
                reading.status = SubscriptionStatus::parse(value);
            }
            "reset" if !seen_reset => {
                seen_reset = true;
                reading.reset_in = epoch_reset(value);
            }
            "representative-claim" if reading.representative_claim.is_none() => {
                if is_label(value) {
                    reading.representative_claim = Some(value.to_string());
                }
            }
            _ => {
                let (label, utilization) = if let Some(label) = suffix.strip_suffix("-utilization")
                {
                    (label, true)
                } else if let Some(label) = suffix.strip_suffix("-reset") {
                    (label, false)
                } else {
                    continue;
                };
                if !is_label(label) {
                    continue;
                }
                let position = match windows.iter().position(|known| known.label == label) {
                    Some(position) => position,
                    None => {
                        windows.push(WindowHeaders {
                            label,
                            utilization: None,
                            reset: None,
                        });
                        windows.len() - 1
                    }
                };
                let slot = &mut windows[position];
                if utilization && slot.utilization.is_none() {
                    slot.utilization = Some(
                        value
                            .parse::<f64>()
                            .ok()
                            .filter(|fraction| fraction.is_finite())
                            .map(|fraction| fraction.clamp(0.0, 1.0)),
                    );
                } else if !utilization && slot.reset.is_none() {
                    slot.reset = Some(epoch_reset(value));
                }
            }
        }
    }
    reading.windows = windows
        .into_iter()
        .filter_map(|window| {
            window
                .utilization
                .flatten()
                .map(|utilization| WindowReading {
                    window: window.label.to_string(),
                    utilization: Some(utilization),
                    reset_in: window.reset.flatten(),
                })
        })
        .take(MAX_WINDOWS)
        .collect();
    (!reading.is_empty()).then_some(reading)
}

/// The first value of one window's headers (`None`: absent; `Some(None)`: unreadable).
struct WindowHeaders<'a> {
    label: &'a str,
    utilization: Option<Option<f64>>,
    reset: Option<Option<Duration>>,
}

/// A short name of ASCII letters, digits and `_` (a window label or a claim).
fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_WINDOW_LABEL
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn rate_limit_headers_become_readings() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let reset = humantime::format_rfc3339_seconds(now + Duration::from_secs(42)).to_string();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "7"),
            ("anthropic-ratelimit-requests-reset", reset.as_str()),
            ("anthropic-ratelimit-output-tokens-remaining", "900"),
            ("anthropic-ratelimit-tokens-limit", "not a number"),
            ("retry-after", "3"),
        ] {
            headers.insert(name, HeaderValue::from_str(value).expect("header"));
        }
        let observation = quota_observation(&headers, now);
        assert_eq!(
            observation.readings,
            vec![
                QuotaReading {
                    dimension: QuotaDimension::Requests,
                    limit: Some(50),
                    remaining: Some(7),
                    reset_in: Some(Duration::from_secs(42)),
                },
                QuotaReading {
                    dimension: QuotaDimension::OutputTokens,
                    limit: None,
                    remaining: Some(900),
                    reset_in: None,
                },
            ]
        );
        assert_eq!(observation.retry_after, Some(Duration::from_secs(3)));
        assert!(quota_observation(&HeaderMap::new(), now).is_empty());
    }

    #[test]
    fn unified_headers_become_a_subscription_reading() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("anthropic-ratelimit-unified-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-reset", "1700003600"),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            ),
            ("anthropic-ratelimit-unified-5h-utilization", "0.93"),
            ("anthropic-ratelimit-unified-5h-reset", "1700001800"),
            ("anthropic-ratelimit-unified-7d-utilization", "1.7"),
            ("anthropic-ratelimit-unified-7d-reset", "1600000000"),
            ("anthropic-ratelimit-unified-overage-reset", "1700001800"),
            ("anthropic-ratelimit-unified-bad.name-utilization", "0.5"),
            ("anthropic-ratelimit-unified-30d-utilization", "lots"),
        ] {
            headers.insert(name, HeaderValue::from_str(value).expect("header"));
        }
        let observation = quota_observation(&headers, now);
        assert!(observation.readings.is_empty());
        let reading = observation.subscription.expect("subscription");
        assert_eq!(reading.status, Some(SubscriptionStatus::AllowedWarning));
        assert_eq!(reading.reset_in, Some(Duration::from_secs(3600)));
        assert_eq!(reading.representative_claim.as_deref(), Some("five_hour"));
        assert_eq!(
            reading.windows,
            vec![
                WindowReading {
                    window: "5h".to_string(),
                    utilization: Some(0.93),
                    reset_in: Some(Duration::from_secs(1800)),
                },
                WindowReading {
                    window: "7d".to_string(),
                    utilization: Some(1.0),
                    reset_in: Some(Duration::ZERO),
                },
            ]
        );
        let mut rejected = HeaderMap::new();
        rejected.insert(
            "anthropic-ratelimit-unified-status",
            HeaderValue::from_static("rejected"),
        );
        assert_eq!(
            subscription_reading(&rejected, now).and_then(|reading| reading.status),
            Some(SubscriptionStatus::Rejected)
        );
        assert_eq!(subscription_reading(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_header_table_matches_the_dimensions() {
        for (suffix, index, field) in RATE_LIMIT_SUFFIXES {
            let part = QuotaDimension::ALL[index].header_part();
            let field = match field {
                QuotaField::Limit => "limit",
                QuotaField::Remaining => "remaining",
                QuotaField::Reset => "reset",
            };
            assert_eq!(suffix, format!("{part}-{field}"));
        }
        assert_eq!(RATE_LIMIT_SUFFIXES.len(), QuotaDimension::ALL.len() * 3);
    }

    #[test]
    fn only_the_first_value_of_a_repeated_header_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.append(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("oops"),
        );
        headers.append(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("12"),
        );
        headers.append(
            "anthropic-ratelimit-input-tokens-limit",
            HeaderValue::from_static(" 40 "),
        );
        headers.append(
            "anthropic-ratelimit-input-tokens-limit",
            HeaderValue::from_static("41"),
        );
        headers.insert("anthropic-ratelimit-unknown", HeaderValue::from_static("1"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let observation = quota_observation(&headers, now);
        assert_eq!(
            observation.readings,
            vec![QuotaReading {
                dimension: QuotaDimension::InputTokens,
                limit: Some(40),
                remaining: None,
                reset_in: None,
            }]
        );
        assert_eq!(observation.retry_after, None);
    }
}
