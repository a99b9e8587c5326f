//! The `request_logs` columns by name: which columns a snapshot writes and with which value,
//! which ones an upsert keeps, and how a row read back becomes a [`RequestRow`] or an
//! [`ExistingRow`]. Both adapters share the Go forwarder's column names, so the names and the
//! mapping live here once; an adapter only builds its statements from these lists, encodes a
//! [`ColumnValue`] for its driver and reads its driver's row through [`ColumnRow`].
//!
//! Adding a `request_logs` column: a migration in each adapter, the field on [`UsageRecord`]
//! (filled in [`UsageRecord::from_request`]), its name in [`SNAPSHOT`] and its value in
//! [`StoredRecord::column_value`], and, to read it back, its name in [`REQUEST_ROW`] and its
//! field in [`RequestRow::from_columns`].

use std::time::SystemTime;

use ccf_types::Usage;

use crate::plan::{ContributionParts, ExistingRow, SummaryContribution};
use crate::pricing::Cost;
use crate::record::{status, RequestRow, StoredRecord, UsageRecord};

/// Every column a snapshot writes, in the order adapters bind the values
/// ([`StoredRecord::column_value`] gives each one's value).
pub const SNAPSHOT: [&str; 44] = [
    "request_id",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "start_time",
    "end_time",
    "duration_ms",
    "endpoint_name",
    "group_name",
    "model_name",
    "is_streaming",
    "status",
    "http_status_code",
    "retry_count",
    "failure_reason",
    "last_failure_reason",
    "cancel_reason",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "cache_creation_cost_usd",
    "cache_read_cost_usd",
    "total_cost_usd",
    "input_cost_nano_usd",
    "output_cost_nano_usd",
    "cache_creation_cost_nano_usd",
    "cache_read_cost_nano_usd",
    "total_cost_nano_usd",
    "time_to_first_byte_ms",
    "attempts_json",
    "model_mismatch",
    "partial",
    "instance_id",
    "is_final",
    "summarized",
    "created_at",
    "updated_at",
    "api_key_name",
];

/// Columns of [`SNAPSHOT`] that a later snapshot of the same request leaves as first written.
pub const KEPT_ON_UPDATE: [&str; 3] = ["request_id", "start_time", "created_at"];

/// The columns a stored row is read back from ([`RequestRow::from_columns`]), in SELECT order.
pub const REQUEST_ROW: [&str; 39] = [
    "id",
    "request_id",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "start_time",
    "end_time",
    "duration_ms",
    "endpoint_name",
    "group_name",
    "model_name",
    "is_streaming",
    "status",
    "http_status_code",
    "retry_count",
    "failure_reason",
    "last_failure_reason",
    "cancel_reason",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "input_cost_nano_usd",
    "output_cost_nano_usd",
    "cache_creation_cost_nano_usd",
    "cache_read_cost_nano_usd",
    "total_cost_nano_usd",
    "time_to_first_byte_ms",
    "attempts_json",
    "model_mismatch",
    "partial",
    "instance_id",
    "is_final",
    "created_at",
    "updated_at",
    "api_key_name",
];

/// The columns read, inside a write transaction, for what a store already holds for a request
/// id ([`ExistingRow::from_columns`]), in SELECT order.
pub const EXISTING_ROW: [&str; 14] = [
    "request_id",
    "is_final",
    "summarized",
    "start_time",
    "model_name",
    "endpoint_name",
    "group_name",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "total_cost_nano_usd",
    "duration_ms",
];

/// The position of `name` in `columns`. Used in `const` blocks, so a name missing from the list
/// is a compile error, not a wrong column.
const fn position(columns: &[&str], name: &str) -> usize {
    let mut index = 0;
    while index < columns.len() {
        if same(columns[index], name) {
            return index;
        }
        index += 1;
    }
    panic!("not a column of this list");
}

/// `a == b` for `const` evaluation.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// The position of a column in [`REQUEST_ROW`], resolved at compile time.
macro_rules! request_row {
    ($name:literal) => {
        const { position(&REQUEST_ROW, $name) }
    };
}

/// The position of a column in [`EXISTING_ROW`], resolved at compile time.
macro_rules! existing_row {
    ($name:literal) => {
        const { position(&EXISTING_ROW, $name) }
    };
}

/// One column's value as the row type knows it; each adapter encodes it for its driver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnValue<'a> {
    /// Text; NULL when `None`.
    Text(Option<&'a str>),
    /// An instant, in the adapter's timestamp encoding; NULL when `None`.
    Time(Option<SystemTime>),
    /// A count, size or code, stored as a signed 64-bit integer (saturating); NULL when `None`.
    Count(Option<u64>),
    /// A boolean, stored as 0 or 1.
    Flag(bool),
    /// An exact amount in nano-USD (the `*_cost_nano_usd` columns).
    NanoUsd(i64),
    /// The same amount for a legacy `*_cost_usd` column (REAL in SQLite, DECIMAL in MySQL).
    Usd(i64),
}

impl StoredRecord {
    /// The value of the [`SNAPSHOT`] column `column` for this snapshot written at `now`
    /// (`created_at` and `updated_at`; the upsert keeps the first `created_at`). `None` for a
    /// name that is not in [`SNAPSHOT`].
    pub fn column_value(&self, column: &str, now: SystemTime) -> Option<ColumnValue<'_>> {
        use ColumnValue::{Count, Flag, NanoUsd, Text, Time, Usd};
        let record = self.record();
        let cost = self.cost();
        let usage = &record.usage;
        Some(match column {
            "request_id" => Text(Some(&record.request_id)),
            "client_ip" => Text(record.client_ip.as_deref()),
            "user_agent" => Text(record.user_agent.as_deref()),
            "method" => Text(Some(&record.method)),
            "path" => Text(Some(&record.path)),
            "start_time" => Time(Some(record.start_time)),
            "end_time" => Time(record.end_time),
            "duration_ms" => Count(record.duration_ms),
            "endpoint_name" => Text(record.endpoint_name.as_deref()),
            "group_name" => Text(record.group_name.as_deref()),
            "model_name" => Text(record.model_name.as_deref()),
            "is_streaming" => Flag(record.is_streaming),
            "status" => Text(Some(&record.status)),
            "http_status_code" => Count(record.http_status_code.map(u64::from)),
            "retry_count" => Count(Some(u64::from(record.retry_count))),
            "failure_reason" => Text(record.failure_reason.as_deref()),
            "last_failure_reason" => Text(record.last_failure_reason.as_deref()),
            "cancel_reason" => Text(record.cancel_reason.as_deref()),
            "input_tokens" => Count(Some(usage.input_tokens)),
            "output_tokens" => Count(Some(usage.output_tokens)),
            "cache_creation_tokens" => Count(Some(usage.cache_creation_input_tokens)),
            "cache_read_tokens" => Count(Some(usage.cache_read_input_tokens)),
            "cache_creation_5m_tokens" => Count(Some(usage.cache_creation_5m_input_tokens)),
            "cache_creation_1h_tokens" => Count(Some(usage.cache_creation_1h_input_tokens)),
            "input_cost_usd" => Usd(cost.input),
            "output_cost_usd" => Usd(cost.output),
            "cache_creation_cost_usd" => Usd(cost.cache_creation),
            "cache_read_cost_usd" => Usd(cost.cache_read),
            "total_cost_usd" => Usd(cost.total),
            "input_cost_nano_usd" => NanoUsd(cost.input),
            "output_cost_nano_usd" => NanoUsd(cost.output),
            "cache_creation_cost_nano_usd" => NanoUsd(cost.cache_creation),
            "cache_read_cost_nano_usd" => NanoUsd(cost.cache_read),
            "total_cost_nano_usd" => NanoUsd(cost.total),
            "time_to_first_byte_ms" => Count(record.time_to_first_byte_ms),
            "attempts_json" => Text(record.attempts_json.as_deref()),
            "model_mismatch" => Flag(record.model_mismatch),
            "partial" => Flag(record.partial),
            "instance_id" => Text(record.instance_id.as_deref()),
            "is_final" => Flag(record.is_final),
            // A final row is counted in `usage_summary` in the same transaction that writes it.
            "summarized" => Flag(record.is_final),
            "created_at" | "updated_at" => Time(Some(now)),
            "api_key_name" => Text(record.api_key_name.as_deref()),
            _ => return None,
        })
    }

    /// The values of [`SNAPSHOT`], in its order, for this snapshot written at `now`.
    pub fn snapshot_values(&self, now: SystemTime) -> impl Iterator<Item = ColumnValue<'_>> {
        SNAPSHOT.iter().map(move |column| {
            // Every SNAPSHOT column has a value (tested below); a NULL would only show a bug.
            self.column_value(column, now)
                .unwrap_or(ColumnValue::Text(None))
        })
    }
}

/// One row selected with one of this module's column lists, read by position in that list.
/// Each adapter implements it over its driver's row with its own value conversions; a value
/// that cannot be read (or a position past the row) reads as NULL.
pub trait ColumnRow {
    /// The value as text (numbers as their decimal text); `None` for NULL.
    fn text(&self, position: usize) -> Option<String>;
    /// The value as an integer (reals rounded, numeric text parsed); `None` for NULL.
    fn int(&self, position: usize) -> Option<i64>;
    /// The value as a boolean (non-zero numbers, `1`/`true`-like text); `false` for NULL.
    fn flag(&self, position: usize) -> bool;
    /// The value as an instant (stored timestamps, legacy zone applied); `None` for NULL.
    fn time(&self, position: usize) -> Option<SystemTime>;
}

/// A non-negative integer, else `None`.
fn unsigned(row: &impl ColumnRow, position: usize) -> Option<u64> {
    row.int(position).and_then(|n| u64::try_from(n).ok())
}

/// A non-negative integer, else 0.
fn count(row: &impl ColumnRow, position: usize) -> u64 {
    unsigned(row, position).unwrap_or(0)
}

impl RequestRow {
    /// A row selected with [`REQUEST_ROW`]. Missing values read as they did in the Go
    /// forwarder: method `POST`, path `/v1/messages`, status `pending`, zero counts and costs;
    /// an unreadable `start_time` reads as the Unix epoch (and is logged).
    pub fn from_columns(row: &impl ColumnRow) -> RequestRow {
        let request_id = row.text(request_row!("request_id")).unwrap_or_default();
        let start_time = row.time(request_row!("start_time")).unwrap_or_else(|| {
            tracing::warn!(request_id = %request_id, "unreadable start_time; shown as the Unix epoch");
            SystemTime::UNIX_EPOCH
        });
        let cost = |position: usize| row.int(position).unwrap_or(0);
        let record = UsageRecord {
            request_id,
            client_ip: row.text(request_row!("client_ip")),
            user_agent: row.text(request_row!("user_agent")),
            method: row
                .text(request_row!("method"))
                .unwrap_or_else(|| "POST".into()),
            path: row
                .text(request_row!("path"))
                .unwrap_or_else(|| "/v1/messages".into()),
            start_time,
            end_time: row.time(request_row!("end_time")),
            duration_ms: unsigned(row, request_row!("duration_ms")),
            endpoint_name: row.text(request_row!("endpoint_name")),
            group_name: row.text(request_row!("group_name")),
            model_name: row.text(request_row!("model_name")),
            is_streaming: row.flag(request_row!("is_streaming")),
            status: row
                .text(request_row!("status"))
                .unwrap_or_else(|| status::PENDING.into()),
            http_status_code: row
                .int(request_row!("http_status_code"))
                .and_then(|n| u16::try_from(n).ok()),
            retry_count: row
                .int(request_row!("retry_count"))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            failure_reason: row.text(request_row!("failure_reason")),
            last_failure_reason: row.text(request_row!("last_failure_reason")),
            cancel_reason: row.text(request_row!("cancel_reason")),
            usage: Usage {
                input_tokens: count(row, request_row!("input_tokens")),
                output_tokens: count(row, request_row!("output_tokens")),
                cache_creation_input_tokens: count(row, request_row!("cache_creation_tokens")),
                cache_read_input_tokens: count(row, request_row!("cache_read_tokens")),
                cache_creation_5m_input_tokens: count(
                    row,
                    request_row!("cache_creation_5m_tokens"),
                ),
                cache_creation_1h_input_tokens: count(
                    row,
                    request_row!("cache_creation_1h_tokens"),
                ),
                ..Usage::default()
            },
            time_to_first_byte_ms: unsigned(row, request_row!("time_to_first_byte_ms")),
            attempts_json: row.text(request_row!("attempts_json")),
            model_mismatch: row.flag(request_row!("model_mismatch")),
            partial: row.flag(request_row!("partial")),
            instance_id: row.text(request_row!("instance_id")),
            api_key_name: row.text(request_row!("api_key_name")),
            is_final: row.flag(request_row!("is_final")),
        };
        RequestRow {
            id: row.int(request_row!("id")).unwrap_or(0),
            record,
            cost: Cost {
                input: cost(request_row!("input_cost_nano_usd")),
                output: cost(request_row!("output_cost_nano_usd")),
                cache_creation: cost(request_row!("cache_creation_cost_nano_usd")),
                cache_read: cost(request_row!("cache_read_cost_nano_usd")),
                total: cost(request_row!("total_cost_nano_usd")),
            },
            created_at: row.time(request_row!("created_at")),
            updated_at: row.time(request_row!("updated_at")),
        }
    }
}

impl ExistingRow {
    /// A row selected with [`EXISTING_ROW`], with its request id; `None` when the request id
    /// is NULL. An unreadable `start_time` reads as the Unix epoch. The row's summary
    /// contribution is read only when it is final and counted (`summarized`).
    pub fn from_columns(row: &impl ColumnRow) -> Option<(String, ExistingRow)> {
        let request_id = row.text(existing_row!("request_id"))?;
        let is_final = row.flag(existing_row!("is_final"));
        let summarized = row.flag(existing_row!("summarized"));
        let start_time = row
            .time(existing_row!("start_time"))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let counted = (is_final && summarized).then(|| {
            let model = row.text(existing_row!("model_name"));
            let endpoint = row.text(existing_row!("endpoint_name"));
            let group = row.text(existing_row!("group_name"));
            let status = row.text(existing_row!("status")).unwrap_or_default();
            SummaryContribution::from_parts(ContributionParts {
                start_time,
                model_name: model.as_deref(),
                endpoint_name: endpoint.as_deref(),
                group_name: group.as_deref(),
                status: &status,
                input_tokens: count(row, existing_row!("input_tokens")),
                output_tokens: count(row, existing_row!("output_tokens")),
                cache_creation_tokens: count(row, existing_row!("cache_creation_tokens")),
                cache_read_tokens: count(row, existing_row!("cache_read_tokens")),
                cost_nano_usd: row.int(existing_row!("total_cost_nano_usd")).unwrap_or(0),
                duration_ms: unsigned(row, existing_row!("duration_ms")),
            })
        });
        Some((
            request_id,
            ExistingRow {
                is_final,
                start_time,
                counted,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::pricing::Pricing;

    /// A row held as the adapters' drivers would hand it over, keyed by column name.
    struct NamedRow<'a> {
        columns: &'static [&'static str],
        values: BTreeMap<&'static str, ColumnValue<'a>>,
    }

    impl<'a> NamedRow<'a> {
        fn value(&self, position: usize) -> Option<ColumnValue<'a>> {
            self.columns
                .get(position)
                .and_then(|name| self.values.get(name))
                .copied()
        }
    }

    impl ColumnRow for NamedRow<'_> {
        fn text(&self, position: usize) -> Option<String> {
            match self.value(position)? {
                ColumnValue::Text(text) => text.map(str::to_string),
                other => panic!("text read from {other:?}"),
            }
        }
        fn int(&self, position: usize) -> Option<i64> {
            match self.value(position)? {
                ColumnValue::Count(count) => count.map(|n| i64::try_from(n).expect("small")),
                ColumnValue::NanoUsd(nano) => Some(nano),
                other => panic!("int read from {other:?}"),
            }
        }
        fn flag(&self, position: usize) -> bool {
            match self.value(position) {
                Some(ColumnValue::Flag(flag)) => flag,
                None => false,
                other => panic!("flag read from {other:?}"),
            }
        }
        fn time(&self, position: usize) -> Option<SystemTime> {
            match self.value(position)? {
                ColumnValue::Time(time) => time,
                other => panic!("time read from {other:?}"),
            }
        }
    }

    fn full_record() -> StoredRecord {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_759_034_096);
        let mut record = UsageRecord::new("req-0123456789abcdef", start);
        record.client_ip = Some("10.0.0.7".into());
        record.user_agent = Some("claude-cli/1.0".into());
        record.end_time = Some(start + Duration::from_millis(1_500));
        record.duration_ms = Some(1_500);
        record.endpoint_name = Some("primary".into());
        record.group_name = Some("main".into());
        record.model_name = Some("claude-sonnet-4-5".into());
        record.is_streaming = true;
        record.status = status::COMPLETED.into();
        record.http_status_code = Some(200);
        record.retry_count = 2;
        record.failure_reason = Some("rate_limited".into());
        record.last_failure_reason = Some("429".into());
        record.usage = Usage {
            input_tokens: 1_000,
            output_tokens: 200,
            cache_creation_input_tokens: 30,
            cache_read_input_tokens: 40,
            cache_creation_5m_input_tokens: 10,
            cache_creation_1h_input_tokens: 20,
            ..Usage::default()
        };
        record.time_to_first_byte_ms = Some(120);
        record.attempts_json = Some("[]".into());
        record.model_mismatch = true;
        record.partial = true;
        record.instance_id = Some("node-1".into());
        record.api_key_name = Some("team".into());
        record.is_final = true;
        StoredRecord::price(record, &Pricing::default())
    }

    #[test]
    fn every_listed_column_has_a_value_and_no_list_names_a_column_twice() {
        let stored = full_record();
        let now = SystemTime::UNIX_EPOCH;
        for column in SNAPSHOT {
            assert!(stored.column_value(column, now).is_some(), "{column}");
        }
        assert_eq!(stored.column_value("id", now), None, "id is the database's");
        assert_eq!(stored.snapshot_values(now).count(), SNAPSHOT.len());
        for list in [&SNAPSHOT[..], &KEPT_ON_UPDATE, &REQUEST_ROW, &EXISTING_ROW] {
            let mut names = list.to_vec();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), list.len(), "{list:?}");
        }
        for column in REQUEST_ROW
            .iter()
            .chain(&EXISTING_ROW)
            .chain(&KEPT_ON_UPDATE)
        {
            assert!(
                *column == "id" || SNAPSHOT.contains(column),
                "{column} is read but never written"
            );
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_as_the_same_row() {
        let stored = full_record();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_759_040_000);
        let mut values: BTreeMap<&'static str, ColumnValue<'_>> = SNAPSHOT
            .into_iter()
            .zip(stored.snapshot_values(now))
            .collect();
        values.insert("id", ColumnValue::Count(Some(42)));
        let row = RequestRow::from_columns(&NamedRow {
            columns: &REQUEST_ROW,
            values: values.clone(),
        });
        assert_eq!(row.id, 42);
        assert_eq!(&row.record, stored.record());
        assert_eq!(&row.cost, stored.cost());
        assert!(row.cost.total > 0, "a priced row");
        assert_eq!((row.created_at, row.updated_at), (Some(now), Some(now)));

        let (request_id, existing) = ExistingRow::from_columns(&NamedRow {
            columns: &EXISTING_ROW,
            values,
        })
        .expect("an id");
        assert_eq!(request_id, "req-0123456789abcdef");
        assert!(existing.is_final);
        assert_eq!(existing.start_time, stored.record().start_time);
        assert_eq!(
            existing.counted,
            Some(SummaryContribution::of(stored.record(), stored.cost()))
        );
    }

    #[test]
    fn missing_values_read_as_the_go_forwarder_defaults() {
        let empty = NamedRow {
            columns: &REQUEST_ROW,
            values: BTreeMap::new(),
        };
        let row = RequestRow::from_columns(&empty);
        assert_eq!(row.id, 0);
        assert_eq!(row.record.method, "POST");
        assert_eq!(row.record.path, "/v1/messages");
        assert_eq!(row.record.status, status::PENDING);
        assert_eq!(row.record.start_time, SystemTime::UNIX_EPOCH);
        assert_eq!(row.cost, Cost::default());
        assert_eq!(
            ExistingRow::from_columns(&NamedRow {
                columns: &EXISTING_ROW,
                values: BTreeMap::new(),
            }),
            None
        );
    }
}
