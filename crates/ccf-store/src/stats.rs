//! Stats from `usage_summary` for whole days and from `request_logs` only where it must: the
//! same plan and the same arithmetic in every adapter.
//!
//! [`plan_stats`] splits a [`StatsQuery`]'s time range at the hours and days of the store's
//! [`DayZone`]: the whole days inside it are read from `usage_summary` (one row per day, model,
//! endpoint and group), the whole local hours of the partial days at its edges from
//! `usage_hourly_summary` (the same rows per local hour), only the partial hours at the range's
//! two ends from raw rows, and so are the rows of the summarised span that the summaries do not
//! count (`summarized = 0`: requests still in flight or never finished, found by index). An adapter reads the summary as [`SummarySlice`]s and raw rows grouped by UTC
//! quarter-hour as [`RawSlice`]s; [`compose_stats`] adds them up into [`Stats`]. Every UTC
//! offset in use is a multiple of 15 minutes, so a quarter-hour lies inside one local hour of any
//! zone and raw rows land on the right local day and hour.
//!
//! `by_api_key` reads whole days from `usage_key_summary` (by day and API key) and whole hours
//! from `usage_hourly_key_summary` the same way,
//! unless the query names a model, endpoint or group (that table has no such columns): then the
//! key buckets come from raw rows of the whole range. Filters the summaries cannot answer
//! (status, request id, instance, API key) read raw rows for the whole range, and so does a day
//! with a daylight-saving change at an edge hour (its local hours are not an hour apart). The
//! hourly buckets cover the range's last day (today, for a range open to now), whose whole hours
//! are always read from the hourly summary (never its daily row), from the same readings, and
//! the p95 the latest [`P95_SAMPLE`] requests of the range.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;

use crate::query::{Aggregate, Bucket, Stats, StatsQuery};
use crate::time::DayZone;

/// The p95 is taken over at most this many of the range's latest requests with a duration.
pub const P95_SAMPLE: u32 = 10_000;

/// A summary rebuild (migration, new day zone) writes the hourly summary rows out (upserts add
/// up) whenever it holds this many, so that its memory stays bounded: a year of traffic has 24
/// times as many hourly rows as daily ones.
pub const HOURLY_REBUILD_FLUSH: usize = 50_000;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsPlan {
    /// Whole days read from `usage_summary` (`YYYY-MM-DD`, inclusive), with the rows of the
    /// same span that it does not count read raw (`summarized = 0`, [`StatsPlan::unsummarized`]).
    pub summary_days: Option<(String, String)>,
    /// Whole local hours read from `usage_hourly_summary` (and `usage_hourly_key_summary`), by
    /// their first instant in Unix seconds ([`hour_start`]): the hours of the partial days
    /// inside the range.
    pub summary_hours: Vec<i64>,
    /// The instants the summaries serve (whole days and hours): its rows that they do not count
    /// are read raw.
    pub unsummarized: Option<TimeSpan>,
    /// Spans read from every raw row (the partial hours at the range's ends, or the whole range
    /// when the summaries cannot answer the filter).
    pub raw: Vec<TimeSpan>,
    /// The first instant of the hourly buckets: the start of the range's last day.
    pub hours_from: SystemTime,
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

/// Splits `query`'s range at the hours and days of `zone` (see the module docs); `now` ends an
/// open range.
pub fn plan_stats(query: &StatsQuery, zone: DayZone, now: SystemTime) -> StatsPlan {
    let range = TimeSpan {
        start: query.start,
        end: query.end,
    };
    let last_day_start = zone.day_start(zone.date_of(query.end.unwrap_or(now)));
    let named = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let all_raw = StatsPlan {
        summary_days: None,
        summary_hours: Vec::new(),
        unsummarized: None,
        raw: vec![range],
        hours_from: last_day_start,
        api_keys_from_raw_rows: false,
    };
    if !summary_answers(query) {
        return all_raw;
    }
    // The served span [served_start, served_end): whole local hours inside the range.
    let served_start = match query.start {
        None => None,
        Some(start) => match hour_ceil(zone, start) {
            Some(hour) => Some(hour),
            None => return all_raw,
        },
    };
    let Some(served_end) = hour_floor(zone, query.end.unwrap_or(now) + Duration::from_micros(1))
    else {
        return all_raw;
    };
    if served_start.is_some_and(|start| start >= served_end) {
        return all_raw;
    }
    // The range's last day is read by the hour even when whole: it makes the hourly buckets.
    let days_end_limit = served_end.min(last_day_start);
    let whole = if served_start.is_some_and(|start| start >= days_end_limit) {
        None
    } else {
        whole_days_between(zone, served_start, days_end_limit)
    };
    let (summary_days, hour_spans) = match whole {
        Some((first, last)) => {
            let days_start = first.map(|first| zone.day_start(first));
            let days_end = zone.day_span(last).1 + Duration::from_micros(1);
            let mut hours = Vec::new();
            if let (Some(start), Some(days_start)) = (served_start, days_start) {
                hours.push((start, days_start));
            }
            hours.push((days_end, served_end));
            (
                Some((first.map(format_day).unwrap_or_default(), format_day(last))),
                hours,
            )
        }
        // No whole day: `served_start` is set (an open start has every earlier day).
        None => (None, vec![(served_start.unwrap_or(served_end), served_end)]),
    };
    let mut summary_hours = Vec::new();
    for (from, to) in hour_spans {
        match local_hours(zone, from, to) {
            Some(hours) => summary_hours.extend(hours),
            None => return all_raw,
        }
    }
    let mut raw = Vec::new();
    if let (Some(start), Some(served_start)) = (query.start, served_start) {
        if start < served_start {
            raw.push(TimeSpan {
                start: Some(start),
                end: Some(served_start - Duration::from_micros(1)),
            });
        }
    }
    if query.end.is_none_or(|end| end >= served_end) {
        raw.push(TimeSpan {
            start: Some(served_end),
            end: query.end,
        });
    }
    StatsPlan {
        summary_days,
        summary_hours,
        unsummarized: Some(TimeSpan {
            start: served_start,
            end: Some(served_end - Duration::from_micros(1)),
        }),
        raw,
        hours_from: last_day_start,
        api_keys_from_raw_rows: named(&query.model)
            || named(&query.endpoint)
            || named(&query.group),
    }
}

fn format_day(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    crate::time::datetime(time).timestamp()
}

pub(crate) fn from_unix_seconds(seconds: i64) -> Option<SystemTime> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(seconds, 0).map(crate::time::system_time)
}

/// Whether `time` is the first instant of a local hour of `zone`.
fn is_hour_start(zone: DayZone, time: SystemTime) -> bool {
    let offset = i64::from(zone.offset_at(time).local_minus_utc());
    crate::time::datetime(time).timestamp_subsec_micros() == 0
        && (unix_seconds(time) + offset).rem_euclid(3600) == 0
}

/// The start of the local hour holding `time` (`None` when it is not one, around a
/// daylight-saving change that is not a whole hour).
fn hour_floor(zone: DayZone, time: SystemTime) -> Option<SystemTime> {
    let offset = i64::from(zone.offset_at(time).local_minus_utc());
    let local = unix_seconds(time) + offset;
    let hour = from_unix_seconds(local.div_euclid(3600) * 3600 - offset)?;
    (hour <= time && is_hour_start(zone, hour)).then_some(hour)
}

/// The first local hour start at or after `time`.
fn hour_ceil(zone: DayZone, time: SystemTime) -> Option<SystemTime> {
    let floor = hour_floor(zone, time)?;
    if floor == time {
        return Some(time);
    }
    let next = floor + Duration::from_secs(3600);
    is_hour_start(zone, next).then_some(next)
}

/// The first instant (Unix seconds) of the local hour of `zone` holding `time`: the key of the
/// hourly summary rows.
pub fn hour_start(zone: DayZone, time: SystemTime) -> i64 {
    let offset = i64::from(zone.offset_at(time).local_minus_utc());
    (unix_seconds(time) + offset).div_euclid(3600) * 3600 - offset
}

/// The hourly stats bucket ([`DayZone::format_hour`]) of an hourly summary row's hour start.
pub fn hour_key(zone: DayZone, hour_start: i64) -> String {
    zone.format_hour(from_unix_seconds(hour_start).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// The starts ([`hour_start`]) of the local hours in `[from, to)`, both hour starts; `None`
/// when a step of an hour misses a local hour start (a daylight-saving change that is not a
/// whole hour).
fn local_hours(zone: DayZone, from: SystemTime, to: SystemTime) -> Option<Vec<i64>> {
    let mut hours = Vec::new();
    let mut hour = from;
    while hour < to {
        if !is_hour_start(zone, hour) {
            return None;
        }
        hours.push(unix_seconds(hour));
        hour += Duration::from_secs(3600);
    }
    Some(hours)
}

/// The first (`None`: since the beginning) and last whole day of `zone` in
/// `[start, end_exclusive)`.
fn whole_days_between(
    zone: DayZone,
    start: Option<SystemTime>,
    end_exclusive: SystemTime,
) -> Option<(Option<NaiveDate>, NaiveDate)> {
    let first = match start {
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
    // The day holding `end_exclusive` is partial, or starts there: either way not inside.
    let last = zone.date_of(end_exclusive).pred_opt()?;
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
    /// `usage_hourly_summary` rows of [`StatsPlan::summary_hours`] (`date` holds the hour).
    pub hour_summary: Vec<SummarySlice>,
    /// `usage_hourly_key_summary` rows of the same hours (empty when
    /// [`StatsPlan::api_keys_from_raw_rows`]).
    pub hour_key_summary: Vec<KeySummarySlice>,
    /// Raw slices of [`StatsPlan::raw`] and of [`StatsPlan::unsummarized`].
    pub raw: Vec<RawSlice>,
    /// Raw slices of the whole range when [`StatsPlan::api_keys_from_raw_rows`].
    pub api_keys: Option<Vec<RawSlice>>,
    /// [`StatsPlan::hours_from`]: the slices from here on make the hourly buckets.
    pub hours_from: Option<SystemTime>,
    /// The p95 of the sample.
    pub p95_duration_ms: Option<u64>,
}

/// Adds the readings up into [`Stats`]: totals and the model, endpoint, group and day buckets
/// from the summary, hourly summary and raw slices, the API-key buckets from the key summaries
/// and raw slices (or the whole range's raw slices), the hourly buckets from the hourly summary
/// and raw slices from [`StatsReadings::hours_from`] on, days and hours in `zone`.
pub fn compose_stats(zone: DayZone, readings: &StatsReadings) -> Stats {
    let StatsReadings {
        summary,
        key_summary,
        hour_summary,
        hour_key_summary,
        raw,
        api_keys,
        hours_from,
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
    for slice in hour_summary {
        count(
            raw_name(&slice.model),
            raw_name(&slice.endpoint),
            &slice.group,
            slice.date.get(..10).unwrap_or_default().to_string(),
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
    for slice in key_summary.iter().chain(hour_key_summary) {
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
    // Keyed by the hour's text and ordered by time (the two 01:00 of a DST change differ by
    // their offset).
    let in_hours = |start: SystemTime| hours_from.is_some_and(|from| start >= from);
    for slice in raw {
        let start = slice_start(slice.quarter_hour);
        if in_hours(start) {
            let hour = zone.format_hour(start);
            let first = hour_instant(&hour).unwrap_or(start);
            by_hour.entry((first, hour)).or_default().add(&slice.sums);
        }
    }
    for slice in hour_summary {
        if let Some(first) = hour_instant(&slice.date).filter(|first| in_hours(*first)) {
            by_hour
                .entry((first, slice.date.clone()))
                .or_default()
                .add(&slice.sums);
        }
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
