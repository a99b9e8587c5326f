//! Turning a batch into writes and `usage_summary` deltas, the same way in every adapter.
//!
//! An adapter reads, inside its write transaction, what it already holds for the batch's request
//! ids ([`ExistingRow`]), calls [`plan_batch`], then upserts [`BatchPlan::writes`] and applies
//! [`BatchPlan::summary`] as increments. This is where "a final row is never overwritten by a
//! non-final one" and "a final row is counted in the summary exactly once" are decided.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::pricing::Cost;
use crate::record::{status, StoredRecord, UsageRecord};
use crate::time::DayZone;

/// Summary model/endpoint name used when a row has none (`usage_summary` columns are NOT NULL).
pub const UNKNOWN: &str = "unknown";

/// The `usage_summary` row a final request counts in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SummaryKey {
    /// Day of `start_time` in the store's [`DayZone`], `YYYY-MM-DD`.
    pub date: String,
    /// Model, or `unknown`.
    pub model_name: String,
    /// Endpoint, or `unknown`.
    pub endpoint_name: String,
    /// Group, or `""`.
    pub group_name: String,
}

/// The `usage_key_summary` row a final request counts in: the requests of one day made with
/// one inbound API key (`""` without one). Kept apart from `usage_summary`, whose unique key
/// cannot take a fifth name column within MySQL's index size limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeySummaryKey {
    /// Day of `start_time` in the store's [`DayZone`], `YYYY-MM-DD`.
    pub date: String,
    /// `api_key_name`, or `""`.
    pub api_key_name: String,
}

/// Increments to one `usage_summary` row (negative when a counted row is replaced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryDelta {
    /// Requests.
    pub request_count: i64,
    /// Completed requests.
    pub success_count: i64,
    /// Failed-family requests.
    pub error_count: i64,
    /// Cancelled requests.
    pub cancelled_count: i64,
    /// Requests with a duration.
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
    /// Duration in milliseconds.
    pub duration_ms: i64,
}

impl SummaryDelta {
    /// Adds `other` times `sign` (1 or -1).
    pub fn add(&mut self, other: &SummaryDelta, sign: i64) {
        self.request_count += sign * other.request_count;
        self.success_count += sign * other.success_count;
        self.error_count += sign * other.error_count;
        self.cancelled_count += sign * other.cancelled_count;
        self.duration_count += sign * other.duration_count;
        self.input_tokens += sign * other.input_tokens;
        self.output_tokens += sign * other.output_tokens;
        self.cache_creation_tokens += sign * other.cache_creation_tokens;
        self.cache_read_tokens += sign * other.cache_read_tokens;
        self.cost_nano_usd += sign * other.cost_nano_usd;
        self.duration_ms += sign * other.duration_ms;
    }

    fn is_zero(&self) -> bool {
        *self == SummaryDelta::default()
    }

    /// What one row with these values adds.
    fn of_row(parts: &ContributionParts<'_>) -> Self {
        SummaryDelta {
            request_count: 1,
            success_count: i64::from(parts.status == status::COMPLETED),
            error_count: i64::from(status::is_failure(parts.status)),
            cancelled_count: i64::from(parts.status == status::CANCELLED),
            duration_count: i64::from(parts.duration_ms.is_some()),
            input_tokens: signed(parts.input_tokens),
            output_tokens: signed(parts.output_tokens),
            cache_creation_tokens: signed(parts.cache_creation_tokens),
            cache_read_tokens: signed(parts.cache_read_tokens),
            cost_nano_usd: parts.cost_nano_usd,
            duration_ms: signed(parts.duration_ms.unwrap_or(0)),
        }
    }
}

/// What one final row adds to `usage_summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryContribution {
    /// The summary row.
    pub key: SummaryKey,
    /// The first instant (Unix seconds) of the local hour of `start_time` in the same zone:
    /// with the names of `key`, its `usage_hourly_summary` row, and with the API key name, its
    /// `usage_hourly_key_summary` row.
    pub hour_start: i64,
    /// The API key name (`""` for none): with `key.date`, its `usage_key_summary` row.
    pub api_key_name: String,
    /// The increments.
    pub delta: SummaryDelta,
}

/// The stored values a contribution is computed from (also read back from an existing row).
#[derive(Debug, Clone, Copy)]
pub struct ContributionParts<'a> {
    /// `start_time`.
    pub start_time: SystemTime,
    /// `model_name`.
    pub model_name: Option<&'a str>,
    /// `endpoint_name`.
    pub endpoint_name: Option<&'a str>,
    /// `group_name`.
    pub group_name: Option<&'a str>,
    /// `api_key_name`.
    pub api_key_name: Option<&'a str>,
    /// `status`.
    pub status: &'a str,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-write tokens.
    pub cache_creation_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// `total_cost_nano_usd`.
    pub cost_nano_usd: i64,
    /// `duration_ms`.
    pub duration_ms: Option<u64>,
}

fn name_or<'a>(value: Option<&'a str>, fallback: &'a str) -> &'a str {
    value.filter(|text| !text.is_empty()).unwrap_or(fallback)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SummaryContribution {
    /// The contribution of a row with these values. Its day is the UTC day of `start_time`;
    /// [`plan_batch`] moves it to the store's [`DayZone`] ([`SummaryContribution::in_zone`]).
    pub fn from_parts(parts: ContributionParts<'_>) -> Self {
        Self::from_parts_in(parts, DayZone::Utc)
    }

    /// The contribution of a row with these values, its day taken in `zone`.
    pub fn from_parts_in(parts: ContributionParts<'_>, zone: DayZone) -> Self {
        Self::from_parts_at(
            parts,
            zone.format_date(parts.start_time),
            crate::stats::hour_start(zone, parts.start_time),
        )
    }

    /// The contribution of a row with these values, counted on `date` and in the hour starting
    /// at `hour_start` (both of `parts.start_time`, computed by the caller).
    fn from_parts_at(parts: ContributionParts<'_>, date: String, hour_start: i64) -> Self {
        SummaryNames::of(&parts).contribution(date, hour_start, SummaryDelta::of_row(&parts))
    }

    /// The same contribution counted on the day of `start_time` in `zone`.
    pub fn in_zone(mut self, start_time: SystemTime, zone: DayZone) -> Self {
        self.key.date = zone.format_date(start_time);
        self.hour_start = crate::stats::hour_start(zone, start_time);
        self
    }

    /// The contribution of a record about to be written with `cost`, on its day in `zone`.
    pub fn of(record: &UsageRecord, cost: &Cost, zone: DayZone) -> Self {
        Self::from_parts_in(Self::parts_of(record, cost), zone)
    }

    fn parts_of<'a>(record: &'a UsageRecord, cost: &Cost) -> ContributionParts<'a> {
        ContributionParts {
            start_time: record.start_time,
            model_name: record.model_name.as_deref(),
            endpoint_name: record.endpoint_name.as_deref(),
            group_name: record.group_name.as_deref(),
            api_key_name: record.api_key_name.as_deref(),
            status: &record.status,
            input_tokens: record.usage.input_tokens,
            output_tokens: record.usage.output_tokens,
            cache_creation_tokens: record.usage.cache_creation_input_tokens,
            cache_read_tokens: record.usage.cache_read_input_tokens,
            cost_nano_usd: cost.total,
            duration_ms: record.duration_ms,
        }
    }
}

/// The names a row counts under in the summary tables: a missing or empty model or endpoint
/// as `unknown`, a missing or empty group or API key as `""`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SummaryNames<'a> {
    model: &'a str,
    endpoint: &'a str,
    group: &'a str,
    api_key: &'a str,
}

impl<'a> SummaryNames<'a> {
    fn of(parts: &ContributionParts<'a>) -> Self {
        SummaryNames {
            model: name_or(parts.model_name, UNKNOWN),
            endpoint: name_or(parts.endpoint_name, UNKNOWN),
            group: name_or(parts.group_name, ""),
            api_key: name_or(parts.api_key_name, ""),
        }
    }

    /// The contribution of `delta` under these names, on `date` and in the hour starting at
    /// `hour_start`: the names are copied here.
    fn contribution(
        self,
        date: String,
        hour_start: i64,
        delta: SummaryDelta,
    ) -> SummaryContribution {
        SummaryContribution {
            key: SummaryKey {
                date,
                model_name: self.model.to_string(),
                endpoint_name: self.endpoint.to_string(),
                group_name: self.group.to_string(),
            },
            hour_start,
            api_key_name: self.api_key.to_string(),
            delta,
        }
    }
}

/// One local hour of a [`DayZone`] over which the zone's offset does not change: every instant
/// in it counts on the same day and in the same hourly row. [`plan_batch`] keeps the last one,
/// so that the rows of a batch (nearly always one hour's) format their day and look up their
/// zone's offset once instead of each (about 1,100 instructions per row, issue 19).
#[derive(Clone)]
struct LocalHour {
    /// Unix seconds of the hour's first instant ([`crate::stats::hour_start`]).
    start: i64,
    /// Its local day, as [`DayZone::format_date`] writes it.
    date: String,
}

impl LocalHour {
    /// The local hour `time` falls in, or `None` when the zone's offset changes inside it (a
    /// daylight-saving change that is not on a whole local hour, such as Lord Howe Island's
    /// half-hour one): rows in such an hour are counted one by one.
    fn of(zone: DayZone, time: SystemTime) -> Option<Self> {
        let start = crate::stats::hour_start(zone, time);
        let offset = zone.offset_at(time);
        let first = crate::stats::from_unix_seconds(start)?;
        let last = crate::stats::from_unix_seconds(start + 3_599)?;
        if zone.offset_at(first) != offset || zone.offset_at(last) != offset {
            return None;
        }
        Some(Self {
            start,
            date: zone.format_date(time),
        })
    }

    fn contains(&self, unix_seconds: i64) -> bool {
        (self.start..self.start + 3_600).contains(&unix_seconds)
    }
}

/// The final rows of a batch summed by the summary rows they count in, their names borrowed
/// from the records: a batch's rows fall on a handful of summary rows (one hour, a few models),
/// and each row counted into [`SummaryTables`] on its own copied its names about seven times
/// (its contribution's key, the hourly tables' keys) only to find the rows already there. The
/// names are copied once per summary row, when the sums go into the tables
/// ([`BatchSums::move_into`]); the total is the same, addition being commutative.
#[derive(Default)]
struct BatchSums<'a> {
    /// The hour of the last row counted: most rows of a batch start in it.
    hour: Option<LocalHour>,
    sums: Vec<BatchSum<'a>>,
}

/// The sum of a batch's rows that count in the same summary rows.
struct BatchSum<'a> {
    hour: LocalHour,
    names: SummaryNames<'a>,
    delta: SummaryDelta,
}

/// Distinct summary rows [`BatchSums`] searches before it moves its sums into the tables.
const BATCH_SUMS: usize = 16;

impl<'a> BatchSums<'a> {
    /// Counts the final `record`, written with `cost`, on its day and hour in `zone`. A row
    /// whose hour cannot be kept ([`LocalHour::of`]) is counted straight into `tables`.
    fn add(
        &mut self,
        record: &'a UsageRecord,
        cost: &Cost,
        zone: DayZone,
        tables: &mut SummaryTables,
    ) {
        let start = crate::stats::unix_seconds(record.start_time);
        let hour = match &mut self.hour {
            Some(current) if current.contains(start) => current,
            slot => match LocalHour::of(zone, record.start_time) {
                Some(found) => slot.insert(found),
                None => return tables.add(&SummaryContribution::of(record, cost, zone), 1),
            },
        };
        let parts = SummaryContribution::parts_of(record, cost);
        let delta = SummaryDelta::of_row(&parts);
        let names = SummaryNames::of(&parts);
        let hour_start = hour.start;
        let same = |sum: &&mut BatchSum<'a>| sum.hour.start == hour_start && sum.names == names;
        if let Some(sum) = self.sums.iter_mut().find(same) {
            return sum.delta.add(&delta, 1);
        }
        let hour = hour.clone();
        if self.sums.len() == BATCH_SUMS {
            self.move_into(tables);
        }
        self.sums.push(BatchSum { hour, names, delta });
    }

    /// Adds the sums to `tables` and forgets them.
    fn move_into(&mut self, tables: &mut SummaryTables) {
        for sum in self.sums.drain(..) {
            let contribution = sum
                .names
                .contribution(sum.hour.date, sum.hour.start, sum.delta);
            tables.add(&contribution, 1);
        }
    }
}

/// Summary rows: `usage_summary`'s and `usage_key_summary`'s, and their hourly twins
/// `usage_hourly_summary` and `usage_hourly_key_summary` (keyed by the first instant of the
/// local hour, Unix seconds, and the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryTables {
    /// By day, model, endpoint and group.
    pub by_model: BTreeMap<SummaryKey, SummaryDelta>,
    /// By day and API key.
    pub by_key: BTreeMap<KeySummaryKey, SummaryDelta>,
    /// By hour start, model, endpoint and group (the key's `date` is the hour's day).
    pub by_model_hour: BTreeMap<(i64, SummaryKey), SummaryDelta>,
    /// By hour start and API key (the key's `date` is the hour's day).
    pub by_key_hour: BTreeMap<(i64, KeySummaryKey), SummaryDelta>,
}

impl SummaryTables {
    /// Counts `contribution` `sign` times (1 or -1).
    ///
    /// Most rows of a batch fall on rows already counted (same day, model, key): the names are
    /// copied only for a row not in the tables yet and for the hourly tables' tuple keys.
    pub fn add(&mut self, contribution: &SummaryContribution, sign: i64) {
        let delta = &contribution.delta;
        match self.by_model.get_mut(&contribution.key) {
            Some(counted) => counted.add(delta, sign),
            None => self
                .by_model
                .entry(contribution.key.clone())
                .or_default()
                .add(delta, sign),
        }
        self.by_model_hour
            .entry((contribution.hour_start, contribution.key.clone()))
            .or_default()
            .add(delta, sign);
        let key = KeySummaryKey {
            date: contribution.key.date.clone(),
            api_key_name: contribution.api_key_name.clone(),
        };
        match self.by_key.get_mut(&key) {
            Some(counted) => counted.add(delta, sign),
            None => self.by_key.entry(key.clone()).or_default().add(delta, sign),
        }
        self.by_key_hour
            .entry((contribution.hour_start, key))
            .or_default()
            .add(delta, sign);
    }
}

/// The summary rows of a set of final rows, each counted on its day in `zone`: what an adapter
/// writes when it rebuilds the summary (a new day zone, or a migration).
pub fn summarise<'a>(
    rows: impl IntoIterator<Item = ContributionParts<'a>>,
    zone: DayZone,
) -> SummaryTables {
    let mut tables = SummaryTables::default();
    for parts in rows {
        tables.add(&SummaryContribution::from_parts_in(parts, zone), 1);
    }
    tables
}

/// What a store holds for a request id, read inside the write transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRow {
    /// The stored row is final.
    pub is_final: bool,
    /// `start_time` as stored (kept by the upsert).
    pub start_time: SystemTime,
    /// Its contribution, when it has been counted in `usage_summary` (`summarized = 1`).
    pub counted: Option<SummaryContribution>,
}

/// The decided writes of a batch.
#[derive(Debug, Default)]
pub struct BatchPlan<'a> {
    /// Records to upsert, one per request id (the latest in the batch), ordered by request id so
    /// that concurrent writers lock rows in the same order. Each is written with
    /// `summarized = is_final`.
    pub writes: Vec<&'a StoredRecord>,
    /// Increments to apply to `usage_summary`, ordered by key, zero deltas left out.
    pub summary: Vec<(SummaryKey, SummaryDelta)>,
    /// Increments to apply to `usage_key_summary`, ordered by key, zero deltas left out.
    pub key_summary: Vec<(KeySummaryKey, SummaryDelta)>,
    /// Increments to apply to `usage_hourly_summary`, by hour start and names.
    pub hourly_summary: Vec<((i64, SummaryKey), SummaryDelta)>,
    /// Increments to apply to `usage_hourly_key_summary`, by hour start and API key.
    pub hourly_key_summary: Vec<((i64, KeySummaryKey), SummaryDelta)>,
    /// Records skipped because the stored row is already final and they are not.
    pub skipped: usize,
}

/// Decides the writes of `batch` given the `existing` rows of its request ids.
///
/// - a non-final record never replaces a final row (stored, or earlier in the batch);
/// - a final record replacing a counted final row takes that row's contribution out of the
///   summary before adding its own, so every final request is counted exactly once;
/// - a final request counts on the day its `start_time` falls on in `zone` (the store's
///   [`DayZone`], the one its summary rows were built in).
pub fn plan_batch<'a>(
    batch: &'a [StoredRecord],
    existing: &HashMap<String, ExistingRow>,
    zone: DayZone,
) -> BatchPlan<'a> {
    /// What a request id's summary rows hold of it.
    enum Counted<'a> {
        /// The stored row's contribution (boxed: most ids are new and have none).
        Stored(Box<SummaryContribution>),
        /// An earlier final record of this batch (in [`BatchSums`] or the tables).
        Batch(&'a StoredRecord),
    }
    struct State<'a> {
        is_final: bool,
        counted: Option<Counted<'a>>,
        write: Option<&'a StoredRecord>,
    }
    let mut states: BTreeMap<&'a str, State<'a>> = BTreeMap::new();
    let mut tables = SummaryTables::default();
    let mut sums = BatchSums::default();
    let mut skipped = 0;
    for stored in batch {
        let record = stored.record();
        let state = states.entry(record.request_id.as_str()).or_insert_with(|| {
            match existing.get(&record.request_id) {
                Some(row) => State {
                    is_final: row.is_final,
                    counted: row.counted.clone().map(|counted| {
                        Counted::Stored(Box::new(counted.in_zone(row.start_time, zone)))
                    }),
                    write: None,
                },
                None => State {
                    is_final: false,
                    counted: None,
                    write: None,
                },
            }
        });
        if state.is_final && !record.is_final {
            skipped += 1;
            continue;
        }
        match state.counted.take() {
            Some(Counted::Stored(old)) => tables.add(&old, -1),
            // Rare (a request finished twice in one batch): its contribution is computed again.
            Some(Counted::Batch(old)) => {
                let old = SummaryContribution::of(old.record(), old.cost(), zone);
                tables.add(&old, -1);
            }
            None => {}
        }
        if record.is_final {
            sums.add(record, stored.cost(), zone, &mut tables);
            state.counted = Some(Counted::Batch(stored));
        }
        state.is_final = record.is_final;
        state.write = Some(stored);
    }
    sums.move_into(&mut tables);
    BatchPlan {
        writes: states
            .into_values()
            .filter_map(|state| state.write)
            .collect(),
        summary: tables
            .by_model
            .into_iter()
            .filter(|(_, delta)| !delta.is_zero())
            .collect(),
        key_summary: tables
            .by_key
            .into_iter()
            .filter(|(_, delta)| !delta.is_zero())
            .collect(),
        hourly_summary: tables
            .by_model_hour
            .into_iter()
            .filter(|(_, delta)| !delta.is_zero())
            .collect(),
        hourly_key_summary: tables
            .by_key_hour
            .into_iter()
            .filter(|(_, delta)| !delta.is_zero())
            .collect(),
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::Pricing;
    use std::time::UNIX_EPOCH;

    fn stored(id: &str, status: &str, is_final: bool, input: u64) -> StoredRecord {
        let mut record = UsageRecord::new(id, UNIX_EPOCH);
        record.status = status.into();
        record.is_final = is_final;
        record.usage.input_tokens = input;
        StoredRecord::price(record, &Pricing::default())
    }

    #[test]
    fn keeps_the_latest_snapshot_and_counts_finals_once() {
        let batch = vec![
            stored("b", "pending", false, 0),
            stored("a", "forwarding", false, 0),
            stored("a", "completed", true, 10),
            stored("a", "processing", false, 0),
        ];
        let plan = plan_batch(&batch, &HashMap::new(), DayZone::Utc);
        let ids: Vec<_> = plan
            .writes
            .iter()
            .map(|s| (s.record().request_id.as_str(), s.record().status.as_str()))
            .collect();
        assert_eq!(ids, vec![("a", "completed"), ("b", "pending")]);
        assert_eq!(plan.skipped, 1);
        assert_eq!(plan.summary.len(), 1);
        assert_eq!(plan.summary[0].1.request_count, 1);
        assert_eq!(plan.summary[0].1.input_tokens, 10);
        assert_eq!(plan.summary[0].1.cost_nano_usd, 30_000);
    }

    /// Rows every seven minutes over the days of Lord Howe Island's half-hour daylight-saving
    /// changes (2025-04-06, 2025-10-05) and Berlin's whole-hour ones (2025-03-30, 2025-10-26),
    /// in time order and reversed, with models, endpoints, groups and API keys mixed: the
    /// batch's summary rows, by day and by hour, are those each row counted alone
    /// ([`summarise`]) gives. Fails when the batch reuses a local hour across a change of
    /// offset inside it, or sums rows of different names together.
    #[test]
    fn a_batch_counts_each_row_on_the_day_and_hour_it_would_count_in_alone() {
        use chrono::TimeZone;
        let days = [
            (chrono_tz::Tz::Australia__Lord_Howe, (2025, 4, 5)),
            (chrono_tz::Tz::Australia__Lord_Howe, (2025, 10, 4)),
            (chrono_tz::Tz::Europe__Berlin, (2025, 3, 29)),
            (chrono_tz::Tz::Europe__Berlin, (2025, 10, 25)),
        ];
        for (tz, (year, month, day)) in days {
            let zone = DayZone::Named(tz);
            let Some(first) = chrono::Utc
                .with_ymd_and_hms(year, month, day, 0, 0, 0)
                .single()
            else {
                panic!("{year}-{month}-{day} is a UTC date");
            };
            let mut batch: Vec<StoredRecord> = (0..2 * 24 * 60 / 7)
                .map(|index| {
                    let start = first + chrono::Duration::minutes(7 * index);
                    let mut record =
                        UsageRecord::new(format!("r{index:04}"), crate::time::system_time(start));
                    record.status = "completed".into();
                    record.is_final = true;
                    record.usage.input_tokens = 1;
                    record.model_name = Some(format!("model-{}", index % 3));
                    record.endpoint_name = Some(format!("endpoint-{}", index % 2));
                    record.group_name = (index % 7 == 0).then(|| "backup".to_string());
                    record.api_key_name = (index % 5 == 0).then(|| "team-a".to_string());
                    StoredRecord::price(record, &Pricing::default())
                })
                .collect();
            for reversed in [false, true] {
                if reversed {
                    batch.reverse();
                }
                let plan = plan_batch(&batch, &HashMap::new(), zone);
                let alone = summarise(
                    batch.iter().map(|stored| {
                        SummaryContribution::parts_of(stored.record(), stored.cost())
                    }),
                    zone,
                );
                let context = format!("{tz} from {first}, reversed: {reversed}");
                assert_eq!(
                    plan.summary,
                    alone.by_model.into_iter().collect::<Vec<_>>(),
                    "{context}"
                );
                assert_eq!(
                    plan.hourly_summary,
                    alone.by_model_hour.into_iter().collect::<Vec<_>>(),
                    "{context}"
                );
                assert_eq!(
                    plan.key_summary,
                    alone.by_key.into_iter().collect::<Vec<_>>(),
                    "{context}"
                );
                assert_eq!(
                    plan.hourly_key_summary,
                    alone.by_key_hour.into_iter().collect::<Vec<_>>(),
                    "{context}"
                );
            }
        }
    }

    /// A request finished twice in one batch (a replayed journal, a corrected row) counts once,
    /// with its last final state, among other rows of the same summary row.
    #[test]
    fn a_request_final_twice_in_a_batch_counts_once_with_its_last_state() {
        let batch = vec![
            stored("a", "failed", true, 5),
            stored("b", "completed", true, 1),
            stored("a", "completed", true, 7),
            stored("c", "cancelled", true, 2),
        ];
        let plan = plan_batch(&batch, &HashMap::new(), DayZone::Utc);
        assert_eq!(plan.summary.len(), 1);
        let delta = plan.summary[0].1;
        assert_eq!(delta.request_count, 3);
        assert_eq!(delta.success_count, 2);
        assert_eq!(delta.error_count, 0);
        assert_eq!(delta.cancelled_count, 1);
        assert_eq!(delta.input_tokens, 10);
        assert_eq!(plan.hourly_summary.len(), 1);
        assert_eq!(plan.hourly_summary[0].1, delta);
        assert_eq!(plan.key_summary[0].1, delta);
        assert_eq!(plan.hourly_key_summary[0].1, delta);
    }

    #[test]
    fn replacing_a_counted_final_row_moves_its_contribution() {
        let old = stored("a", "failed", true, 5);
        let counted = SummaryContribution::of(old.record(), old.cost(), DayZone::Utc);
        let existing = HashMap::from([(
            "a".to_string(),
            ExistingRow {
                is_final: true,
                start_time: UNIX_EPOCH,
                counted: Some(counted),
            },
        )]);
        let batch = vec![stored("a", "pending", false, 0)];
        let plan = plan_batch(&batch, &existing, DayZone::Utc);
        assert!(plan.writes.is_empty());
        assert!(plan.summary.is_empty());

        let batch = vec![stored("a", "completed", true, 7)];
        let plan = plan_batch(&batch, &existing, DayZone::Utc);
        assert_eq!(plan.writes.len(), 1);
        let delta = plan.summary[0].1;
        assert_eq!(delta.request_count, 0);
        assert_eq!(delta.success_count, 1);
        assert_eq!(delta.error_count, -1);
        assert_eq!(delta.input_tokens, 2);
    }
}
