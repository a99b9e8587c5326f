//! Stats from `usage_summary` for whole days and from `request_logs` only where it must: the
//! same plan and the same arithmetic in every adapter.
//!
//! [`plan_stats`] splits a [`StatsQuery`]'s time range at the days of the store's [`DayZone`]:
//! the whole days inside it are read from `usage_summary` (one row per day, model, endpoint and
//! group), the partial days at its edges (today, usually) from raw rows, and so are the rows of
//! the whole days that the summary does not count (`summarized = 0`: requests still in flight or
//! never finished). An adapter reads the summary as [`SummarySlice`]s and raw rows grouped by UTC
//! quarter-hour as [`RawSlice`]s; [`compose_stats`] adds them up into [`Stats`]. Every UTC
//! offset in use is a multiple of 15 minutes, so a quarter-hour lies inside one local hour of any
//! zone and raw rows land on the right local day and hour.
//!
//! `by_api_key` reads whole days from `usage_key_summary` (by day and API key) the same way,
//! unless the query names a model, endpoint or group (that table has no such columns): then the
//! key buckets come from raw rows of the whole range. Filters the summaries cannot answer
//! (status, request id, instance, API key) read raw rows for the whole range. The hourly buckets
//! cover the range's last day (today, for a range open to now: the raw rows read anyway) and the
//! p95 the latest [`P95_SAMPLE`] requests of the range.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;

use crate::query::{Aggregate, Bucket, Stats, StatsQuery};
use crate::time::DayZone;

/// The p95 is taken over at most this many of the range's latest requests with a duration.
pub const P95_SAMPLE: u32 = 10_000;

/// Seconds in a raw slice.
pub const QUARTER_HOUR_SECS: i64 = 900;

/// Additive counts over a set of rows (what a slice holds; [`Sums::aggregate`] finishes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    /// Rows.
    pub request_count: i64,
    /// Completed rows.
    pub success_count: i64,
    /// Failed-family rows.
    pub failed_count: i64,
    /// Cancelled rows.
    pub cancelled_count: i64,
    /// Sum of `duration_ms` of the rows that have one.
    pub duration_sum_ms: i64,
    /// Rows with a `duration_ms`.
    pub duration_count: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache-write tokens.
    pub cache_creation_tokens: i64,
    /// Cache-read tokens.
    pub cache_read_tokens: i64,
    /// Cost in nano-USD.
    pub cost_nano_usd: i64,
}

impl Sums {
    /// Adds `other` in.
    pub fn add(&mut self, other: &Sums) {
        self.request_count += other.request_count;
        self.success_count += other.success_count;
        self.failed_count += other.failed_count;
        self.cancelled_count += other.cancelled_count;
        self.duration_sum_ms += other.duration_sum_ms;
        self.duration_count += other.duration_count;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_tokens += other.cache_creation_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
    }

    /// The finished [`Aggregate`].
    pub fn aggregate(&self) -> Aggregate {
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        Aggregate {
            request_count: count(self.request_count),
            success_count: count(self.success_count),
            failed_count: count(self.failed_count),
            cancelled_count: count(self.cancelled_count),
            avg_duration_ms: (self.duration_count > 0)
                .then(|| self.duration_sum_ms as f64 / self.duration_count as f64),
            input_tokens: count(self.input_tokens),
            output_tokens: count(self.output_tokens),
            cache_creation_tokens: count(self.cache_creation_tokens),
            cache_read_tokens: count(self.cache_read_tokens),
            total_cost_nano_usd: self.cost_nano_usd,
            ..Aggregate::default()
        }
        .finish()
    }
}

/// Summary rows of one day, model, endpoint and group (names as the summary holds them:
/// `unknown` for a missing model or endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummarySlice {
    /// `YYYY-MM-DD` in the store's day zone.
    pub date: String,
    /// Model.
    pub model: String,
    /// Endpoint.
    pub endpoint: String,
    /// Group (`""` for none).
    pub group: String,
    /// The counts.
    pub sums: Sums,
}

/// `usage_key_summary` rows of one day and API key (`""` for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySummarySlice {
    /// `YYYY-MM-DD` in the store's day zone.
    pub date: String,
    /// API key name.
    pub api_key: String,
    /// The counts.
    pub sums: Sums,
}

/// Raw rows of one UTC quarter-hour, model, endpoint, group and API key (`""` for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSlice {
    /// Unix seconds of `start_time` divided by [`QUARTER_HOUR_SECS`].
    pub quarter_hour: i64,
    /// Model (`""` for none).
    pub model: String,
    /// Endpoint (`""` for none).
    pub endpoint: String,
    /// Group (`""` for none).
    pub group: String,
    /// API key name (`""` for none).
    pub api_key: String,
    /// The counts.
    pub sums: Sums,
}

/// A range of `start_time`, both ends inclusive, `None` unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeSpan {
    /// First instant.
    pub start: Option<SystemTime>,
    /// Last instant.
    pub end: Option<SystemTime>,
}

/// What to read for a stats query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsPlan {
    /// Whole days read from `usage_summary` (`YYYY-MM-DD`, inclusive), with the rows of the
    /// same span that it does not count read raw (`summarized = 0`, [`StatsPlan::unsummarized`]).
    pub summary_days: Option<(String, String)>,
    /// The instants of those whole days.
    pub unsummarized: Option<TimeSpan>,
    /// Spans read from every raw row (partial days, or the whole range when the summary cannot
    /// answer the filter).
    pub raw: Vec<TimeSpan>,
    /// The span of the hourly buckets.
    pub hourly: TimeSpan,
    /// `by_api_key` needs raw rows of the whole range: the query names a model, endpoint or
    /// group, which `usage_key_summary` cannot filter on.
    pub api_keys_from_raw_rows: bool,
}

/// Whether the summary can answer `query` (it has no status, request, instance or key column).
pub fn summary_answers(query: &StatsQuery) -> bool {
    let empty = |value: &Option<String>| value.as_deref().is_none_or(str::is_empty);
    empty(&query.status)
        && empty(&query.request_id)
        && empty(&query.instance)
        && empty(&query.api_key)
}

/// Splits `query`'s range at the days of `zone` (see the module docs); `now` ends an open range
/// for the hourly window.
pub fn plan_stats(query: &StatsQuery, zone: DayZone, now: SystemTime) -> StatsPlan {
    let range = TimeSpan {
        start: query.start,
        end: query.end,
    };
    // The range's last day: for a range open to now, today, whose raw rows are read anyway.
    let last_day_start = zone.day_start(zone.date_of(query.end.unwrap_or(now)));
    let hourly = TimeSpan {
        start: Some(
            query
                .start
                .map_or(last_day_start, |start| start.max(last_day_start)),
        ),
        end: query.end,
    };
    let whole = whole_days(query, zone);
    let named = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let api_keys_from_raw_rows =
        named(&query.model) || named(&query.endpoint) || named(&query.group);
    match whole.filter(|_| summary_answers(query)) {
        None => StatsPlan {
            summary_days: None,
            unsummarized: None,
            raw: vec![range],
            hourly,
            api_keys_from_raw_rows: false,
        },
        Some((first, last)) => {
            let days_start = first.map(|first| zone.day_start(first));
            let days_end = zone.day_span(last).1;
            let mut raw = Vec::new();
            if let (Some(start), Some(days_start)) = (query.start, days_start) {
                if start < days_start {
                    raw.push(TimeSpan {
                        start: Some(start),
                        end: Some(days_start - Duration::from_micros(1)),
                    });
                }
            }
            let after = days_end + Duration::from_micros(1);
            if query.end.is_none_or(|end| end >= after) {
                raw.push(TimeSpan {
                    start: Some(after),
                    end: query.end,
                });
            }
            StatsPlan {
                summary_days: Some((first.map(format_day).unwrap_or_default(), format_day(last))),
                unsummarized: Some(TimeSpan {
                    start: days_start,
                    end: Some(days_end),
                }),
                raw,
                hourly,
                api_keys_from_raw_rows,
            }
        }
    }
}

fn format_day(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// The first (`None`: since the beginning) and last whole day of `zone` inside the range.
fn whole_days(query: &StatsQuery, zone: DayZone) -> Option<(Option<NaiveDate>, NaiveDate)> {
    let first = match query.start {
        None => None,
        Some(start) => {
            let day = zone.date_of(start);
            Some(if zone.day_start(day) == start {
                day
            } else {
                day.succ_opt()?
            })
        }
    };
    // An open end still leaves today partial: the last whole day is yesterday.
    let end = query.end.unwrap_or_else(SystemTime::now);
    let day = zone.date_of(end);
    let last = if query.end.is_some() && zone.day_span(day).1 <= end {
        day
    } else {
        day.pred_opt()?
    };
    match first {
        Some(first) if first > last => None,
        first => Some((first, last)),
    }
}

/// Names as the raw rows hold them: the summary's `unknown` is a row without a name.
fn raw_name(summary_name: &str) -> &str {
    if summary_name == crate::plan::UNKNOWN {
        ""
    } else {
        summary_name
    }
}

/// What an adapter read for a [`StatsPlan`].
#[derive(Debug, Clone, Default)]
pub struct StatsReadings {
    /// `usage_summary` rows of [`StatsPlan::summary_days`].
    pub summary: Vec<SummarySlice>,
    /// `usage_key_summary` rows of the same days (empty when
    /// [`StatsPlan::api_keys_from_raw_rows`]).
    pub key_summary: Vec<KeySummarySlice>,
    /// Raw slices of [`StatsPlan::raw`] and of [`StatsPlan::unsummarized`].
    pub raw: Vec<RawSlice>,
    /// Raw slices of the whole range when [`StatsPlan::api_keys_from_raw_rows`].
    pub api_keys: Option<Vec<RawSlice>>,
    /// Raw slices of [`StatsPlan::hourly`].
    pub hourly: Vec<RawSlice>,
    /// The p95 of the sample.
    pub p95_duration_ms: Option<u64>,
}

/// Adds the readings up into [`Stats`]: totals and the model, endpoint, group and day buckets
/// from the summary and raw slices, the API-key buckets from the key summary and raw slices (or
/// the whole range's raw slices), the hourly buckets from the hourly raw slices, days and hours
/// in `zone`.
pub fn compose_stats(zone: DayZone, readings: &StatsReadings) -> Stats {
    let StatsReadings {
        summary,
        key_summary,
        raw,
        api_keys,
        hourly,
        p95_duration_ms,
    } = readings;
    let p95_duration_ms = *p95_duration_ms;
    let mut totals = Sums::default();
    let mut by_model: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_group: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_day: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_api_key: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_hour: BTreeMap<(SystemTime, String), Sums> = BTreeMap::new();
    let mut count = |model: &str, endpoint: &str, group: &str, day: String, sums: &Sums| {
        totals.add(sums);
        by_model.entry(model.into()).or_default().add(sums);
        by_endpoint.entry(endpoint.into()).or_default().add(sums);
        by_group.entry(group.into()).or_default().add(sums);
        by_day.entry(day).or_default().add(sums);
    };
    for slice in summary {
        count(
            raw_name(&slice.model),
            raw_name(&slice.endpoint),
            &slice.group,
            slice.date.clone(),
            &slice.sums,
        );
    }
    for slice in raw {
        let day = zone.format_date(slice_start(slice.quarter_hour));
        count(
            &slice.model,
            &slice.endpoint,
            &slice.group,
            day,
            &slice.sums,
        );
    }
    for slice in key_summary {
        by_api_key
            .entry(slice.api_key.clone())
            .or_default()
            .add(&slice.sums);
    }
    for slice in api_keys.as_deref().unwrap_or(raw) {
        by_api_key
            .entry(slice.api_key.clone())
            .or_default()
            .add(&slice.sums);
    }
    for slice in hourly {
        let start = slice_start(slice.quarter_hour);
        // Keyed by the hour's text and ordered by time (the two 01:00 of a DST change differ
        // by their offset).
        let hour = zone.format_hour(start);
        let first = hour_instant(&hour).unwrap_or(start);
        by_hour.entry((first, hour)).or_default().add(&slice.sums);
    }
    let most_requests_first = |buckets: BTreeMap<String, Sums>| {
        let mut buckets = into_buckets(buckets);
        buckets.sort_by(|a, b| {
            b.aggregate
                .request_count
                .cmp(&a.aggregate.request_count)
                .then_with(|| a.key.cmp(&b.key))
        });
        buckets
    };
    Stats {
        totals: totals.aggregate(),
        p95_duration_ms,
        by_model: most_requests_first(by_model),
        by_endpoint: most_requests_first(by_endpoint),
        by_group: most_requests_first(by_group),
        by_api_key: most_requests_first(by_api_key),
        by_day: into_buckets(by_day),
        by_hour: by_hour
            .into_iter()
            .map(|((_, key), sums)| Bucket {
                key,
                aggregate: sums.aggregate(),
            })
            .collect(),
    }
}

fn into_buckets(buckets: BTreeMap<String, Sums>) -> Vec<Bucket> {
    buckets
        .into_iter()
        .filter(|(_, sums)| sums.request_count != 0)
        .map(|(key, sums)| Bucket {
            key,
            aggregate: sums.aggregate(),
        })
        .collect()
}

fn hour_instant(hour: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(hour)
        .ok()
        .map(|time| crate::time::system_time(time.with_timezone(&chrono::Utc)))
}

/// The first instant of a raw slice.
pub fn slice_start(quarter_hour: i64) -> SystemTime {
    let seconds = quarter_hour.saturating_mul(QUARTER_HOUR_SECS);
    chrono::DateTime::<chrono::Utc>::from_timestamp(seconds, 0)
        .map(crate::time::system_time)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The nearest-rank 95th percentile of `durations` (sorted here).
pub fn p95(mut durations: Vec<u64>) -> Option<u64> {
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let rank = (durations.len() * 95).div_ceil(100);
    durations.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests;
