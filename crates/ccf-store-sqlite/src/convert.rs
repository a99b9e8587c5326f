//! rusqlite errors and values to store types.

use ccf_store::columns::{ColumnRow, ColumnValue};
use ccf_store::{Cost, LegacyZone, StoreError};
use rusqlite::types::{Null, ValueRef};
use rusqlite::{ErrorCode, Statement};
use std::time::{SystemTime, UNIX_EPOCH};

/// Classifies a rusqlite error: busy/locked, read-only/full and open/IO failures are retryable.
pub(crate) fn sqlite_error(error: rusqlite::Error) -> StoreError {
    let code = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
        rusqlite::Error::SqlInputError { error, .. } => Some(error.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            StoreError::locked("sqlite database is busy", error)
        }
        Some(ErrorCode::ReadOnly) => StoreError::read_only("sqlite database is read-only", error),
        Some(ErrorCode::DiskFull) => StoreError::read_only("disk full", error),
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::SystemIoFailure)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::FileLockingProtocolFailed)
        | Some(ErrorCode::NoLargeFileSupport) => {
            StoreError::unavailable("sqlite database cannot be used", error)
        }
        // The schema is older than this binary (the file was replaced by an older copy, or
        // another process is still migrating it): retry until migrated, never drop records.
        Some(ErrorCode::Unknown) if names_missing_schema(&error) => {
            StoreError::unavailable("sqlite schema not migrated yet", error)
        }
        _ => StoreError::database("sqlite statement failed", error),
    }
}

/// SQLite reports a missing table or column only in the message (`SQLITE_ERROR`).
fn names_missing_schema(error: &rusqlite::Error) -> bool {
    let message = match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message,
        rusqlite::Error::SqlInputError { msg, .. } => msg,
        _ => return false,
    };
    message.starts_with("no such table") || message.starts_with("no such column")
}

/// A reader pool that cannot hand out a connection: the database is unavailable.
pub(crate) fn pool_error(error: r2d2::Error) -> StoreError {
    StoreError::unavailable("no sqlite reader connection", error)
}

pub(crate) fn as_i64(value: ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::Integer(n) => Some(n),
        ValueRef::Real(f) => Some(f.round() as i64),
        ValueRef::Text(t) => {
            let text = std::str::from_utf8(t).ok()?.trim();
            text.parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().map(|f| f.round() as i64))
        }
        _ => None,
    }
}

pub(crate) fn as_f64(value: ValueRef<'_>) -> Option<f64> {
    match value {
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Null => None,
    }
}

/// SQLite booleans as the Go driver wrote them (0/1), or as text.
pub(crate) fn as_bool(value: ValueRef<'_>) -> bool {
    match value {
        ValueRef::Integer(n) => n != 0,
        ValueRef::Real(f) => f != 0.0,
        ValueRef::Text(t) => matches!(
            std::str::from_utf8(t)
                .map(|s| s.trim().to_ascii_lowercase())
                .as_deref(),
            Ok("1" | "true" | "t" | "yes")
        ),
        _ => false,
    }
}

pub(crate) fn as_time(value: ValueRef<'_>, zone: LegacyZone) -> Option<SystemTime> {
    match value {
        ValueRef::Integer(n) => ccf_store::time::parse_timestamp(&n.to_string(), zone),
        other => as_text(other).and_then(|text| ccf_store::time::parse_timestamp(&text, zone)),
    }
}

/// Binds a snapshot's [`ColumnValue`]s by position, parameter `?1` first, with the values
/// the binding through `ToSqlOutput` gave (test
/// `the_binder_binds_what_column_values_bound`), straight from the record: no intermediate `ToSqlOutput`, text bound
/// borrowed (SQLite copies it while binding), timestamps formatted into one reused buffer, and the
/// batch's write time (`created_at`, `updated_at`) formatted once per batch.
pub(crate) struct SnapshotBinder {
    now: SystemTime,
    now_text: String,
    scratch: String,
}

impl SnapshotBinder {
    /// A binder for snapshots written at `now`.
    pub(crate) fn new(now: SystemTime) -> Self {
        Self {
            now,
            now_text: format_timestamp(now),
            scratch: String::with_capacity(32),
        }
    }

    /// Binds every value of `values` to `statement`, in order from `?1`. Every parameter is
    /// bound (a NULL too), so nothing of the statement's previous row is left; the statement must
    /// have exactly as many parameters as `values` (checked once per statement by the caller).
    pub(crate) fn bind<'v>(
        &mut self,
        statement: &mut Statement<'_>,
        values: impl IntoIterator<Item = ColumnValue<'v>>,
    ) -> rusqlite::Result<()> {
        self.bind_from(statement, 1, values, 0)
    }

    /// [`SnapshotBinder::bind`] from parameter `?first` on (the rows of a multi-row insert),
    /// leaving the parameters of the values at the positions set in the bit mask `shared` unbound
    /// (the statement takes those from a parameter all its rows share).
    pub(crate) fn bind_from<'v>(
        &mut self,
        statement: &mut Statement<'_>,
        first: usize,
        values: impl IntoIterator<Item = ColumnValue<'v>>,
        shared: u64,
    ) -> rusqlite::Result<()> {
        for (index, value) in values.into_iter().enumerate() {
            if index < 64 && shared & (1 << index) != 0 {
                continue;
            }
            let position = first + index;
            match value {
                ColumnValue::Text(Some(text)) => statement.raw_bind_parameter(position, text)?,
                ColumnValue::Text(None) | ColumnValue::Time(None) | ColumnValue::Count(None) => {
                    statement.raw_bind_parameter(position, Null)?
                }
                ColumnValue::Time(Some(time)) if time == self.now => {
                    statement.raw_bind_parameter(position, self.now_text.as_str())?
                }
                ColumnValue::Time(Some(time)) => {
                    self.scratch.clear();
                    push_timestamp(&mut self.scratch, time);
                    statement.raw_bind_parameter(position, self.scratch.as_str())?
                }
                ColumnValue::Count(Some(count)) => statement
                    .raw_bind_parameter(position, i64::try_from(count).unwrap_or(i64::MAX))?,
                ColumnValue::Flag(flag) => {
                    statement.raw_bind_parameter(position, i64::from(flag))?
                }
                ColumnValue::NanoUsd(nano) => statement.raw_bind_parameter(position, nano)?,
                ColumnValue::Usd(nano) => {
                    statement.raw_bind_parameter(position, Cost::usd(nano))?
                }
            }
        }
        Ok(())
    }

    /// The batch's write time as stored (what `created_at` and `updated_at` hold).
    pub(crate) fn now_text(&self) -> &str {
        &self.now_text
    }
}

/// A result row read by position in the column list it was selected with; timestamps without a
/// zone are read in `zone`.
pub(crate) struct SqliteRow<'a, 'r> {
    pub(crate) row: &'a rusqlite::Row<'r>,
    pub(crate) zone: LegacyZone,
}

impl SqliteRow<'_, '_> {
    fn value(&self, position: usize) -> Option<ValueRef<'_>> {
        self.row.get_ref(position).ok()
    }
}

impl ColumnRow for SqliteRow<'_, '_> {
    fn text(&self, position: usize) -> Option<String> {
        self.value(position).and_then(as_text)
    }

    fn int(&self, position: usize) -> Option<i64> {
        self.value(position).and_then(as_i64)
    }

    fn flag(&self, position: usize) -> bool {
        self.value(position).is_some_and(as_bool)
    }

    fn time(&self, position: usize) -> Option<SystemTime> {
        self.value(position)
            .and_then(|value| as_time(value, self.zone))
    }
}

/// The first instant whose year has five digits (10000-01-01T00:00:00Z), in Unix seconds.
const YEAR_10000: u64 = 253_402_300_800;

/// Formats an instant as stored, byte for byte what [`ccf_store::time::format_timestamp`] writes
/// (`2025-09-28T04:34:56.123456Z`: UTC, microseconds truncated), without chrono's formatting
/// machinery: the civil date comes from the day count and the digits go into a fixed buffer.
/// Instants before 1970 or from year 10000 on (signed years) are left to chrono.
pub(crate) fn format_timestamp(time: SystemTime) -> String {
    let mut text = String::with_capacity(27);
    push_timestamp(&mut text, time);
    text
}

/// Appends [`format_timestamp`]'s text to `text` (a buffer reused across rows allocates nothing).
pub(crate) fn push_timestamp(text: &mut String, time: SystemTime) {
    let since_epoch = match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000 => since,
        _ => return text.push_str(&ccf_store::time::format_timestamp(time)),
    };
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let micros = since_epoch.subsec_micros();
    // Every digit at its fixed place, two at a time (constant divisors): a row formats two
    // instants, and a digit-by-digit loop cost about 470 instructions each (issue 19).
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_two(&mut out, 0, year / 100);
    put_two(&mut out, 2, year % 100);
    put_two(&mut out, 5, month);
    put_two(&mut out, 8, day);
    put_two(&mut out, 11, (of_day / 3_600) as u32);
    put_two(&mut out, 14, (of_day % 3_600 / 60) as u32);
    put_two(&mut out, 17, (of_day % 60) as u32);
    put_two(&mut out, 20, micros / 10_000);
    put_two(&mut out, 22, micros / 100 % 100);
    put_two(&mut out, 24, micros % 100);
    // Only ASCII digits were written over an ASCII template.
    text.push_str(std::str::from_utf8(&out).unwrap_or_default());
}

/// Writes `value`'s last two decimal digits at `out[at..at + 2]`.
fn put_two(out: &mut [u8; 27], at: usize, value: u32) {
    let value = value % 100;
    out[at] = b'0' + (value / 10) as u8;
    out[at + 1] = b'0' + (value % 10) as u8;
}

/// `(year, month, day)` of the proleptic Gregorian calendar for a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative counts).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    // Shift the epoch to 0000-03-01: leap days fall at the end of each 400-year era.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    // Every value is bounded by the callers (years below 10000), so the narrowing never cuts.
    (
        u32::try_from(year).unwrap_or(u32::MAX),
        u32::try_from(month).unwrap_or(u32::MAX),
        u32::try_from(day).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_store::columns::SNAPSHOT;
    use ccf_store::{Pricing, StoredRecord, UsageRecord};
    use rusqlite::types::{ToSqlOutput, Value};

    /// An `i64` for SQLite from an unsigned count (saturating).
    fn int(value: u64) -> Value {
        Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
    }

    fn opt_int(value: Option<u64>) -> Value {
        value.map_or(Value::Null, int)
    }

    /// A column's value as SQLite stores it: text as TEXT, instants as [`format_timestamp`] text,
    /// counts, flags (0/1) and nano-USD as INTEGER, legacy USD as REAL. Text is bound borrowed from
    /// the record (SQLite copies it while binding): a row has a dozen text columns, and an owned
    /// `Value` would allocate and copy each one first. The writer binds through [`SnapshotBinder`]
    /// instead; this is the reference it is tested against.
    fn column_value(value: ColumnValue<'_>) -> ToSqlOutput<'_> {
        match value {
            ColumnValue::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            ColumnValue::Text(None) => ToSqlOutput::Owned(Value::Null),
            ColumnValue::Time(time) => ToSqlOutput::Owned(
                time.map_or(Value::Null, |time| Value::Text(format_timestamp(time))),
            ),
            ColumnValue::Count(count) => ToSqlOutput::Owned(opt_int(count)),
            ColumnValue::Flag(flag) => ToSqlOutput::Owned(Value::Integer(i64::from(flag))),
            ColumnValue::NanoUsd(nano) => ToSqlOutput::Owned(Value::Integer(nano)),
            ColumnValue::Usd(nano) => ToSqlOutput::Owned(Value::Real(Cost::usd(nano))),
        }
    }

    use std::time::Duration;

    #[test]
    fn a_missing_table_or_column_is_retryable_and_a_bad_statement_is_not() {
        let connection = rusqlite::Connection::open_in_memory().expect("in-memory database");
        connection
            .execute_batch("CREATE TABLE request_logs (id INTEGER)")
            .expect("schema");
        let classify = |sql: &str| {
            sqlite_error(
                connection
                    .execute_batch(sql)
                    .expect_err("the statement fails"),
            )
        };
        let missing = classify("SELECT * FROM usage_summary");
        assert!(missing.is_retryable(), "{missing:?}");
        let column = classify("SELECT total_cost_nano_usd FROM request_logs");
        assert!(column.is_retryable(), "{column:?}");
        assert!(!classify("SELEC 1").is_retryable());
    }

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    /// Every parameter of a `SELECT ?1, ?2, ...` over the snapshot's columns, read back.
    fn selected(statement: &mut Statement<'_>) -> Vec<Value> {
        let mut rows = statement.raw_query();
        let row = rows.next().expect("step").expect("one row");
        (0..SNAPSHOT.len())
            .map(|index| row.get::<_, Value>(index).expect("a value"))
            .collect()
    }

    #[test]
    fn the_binder_binds_what_column_values_bound() {
        let connection = rusqlite::Connection::open_in_memory().expect("in-memory database");
        let placeholders: Vec<String> = (1..=SNAPSHOT.len()).map(|n| format!("?{n}")).collect();
        let sql = format!("SELECT {}", placeholders.join(", "));
        let mut by_binder = connection.prepare(&sql).expect("prepare");
        let mut by_values = connection.prepare(&sql).expect("prepare");
        let now = at(1_759_040_000, 987_654_321);
        let start = at(1_759_034_096, 123_456_789);

        let mut full = UsageRecord::new("req-0123456789abcdef", start);
        full.client_ip = Some("10.0.0.7".into());
        full.user_agent = Some("claude-cli/1.0 é".into());
        full.end_time = Some(now);
        full.duration_ms = Some(u64::MAX);
        full.endpoint_name = Some("primary".into());
        full.group_name = Some("main".into());
        full.model_name = Some("claude-sonnet-4-5".into());
        full.requested_model = Some("sonnet".into());
        full.is_streaming = true;
        full.status = "completed".into();
        full.http_status_code = Some(200);
        full.retry_count = 2;
        full.failure_reason = Some("rate_limited".into());
        full.last_failure_reason = Some(String::new());
        full.cancel_reason = Some("client".into());
        full.usage.input_tokens = 1_000;
        full.usage.output_tokens = 200;
        full.usage.cache_read_input_tokens = 40;
        full.time_to_first_byte_ms = Some(120);
        full.attempts_json = Some("[]".into());
        full.instance_id = Some("node-1".into());
        full.api_key_name = Some("team".into());
        full.is_final = true;
        let full = StoredRecord::price(full, &Pricing::default());
        assert!(full.cost().total > 0, "a priced row");
        // Mostly NULLs, bound after the full row on the same statement: nothing of it is left.
        let sparse = StoredRecord::price(UsageRecord::new("req-2", start), &Pricing::default());
        // Instants the fast formatting leaves to chrono.
        let mut odd = UsageRecord::new("req-3", UNIX_EPOCH - Duration::from_secs(86_400));
        odd.end_time = Some(at(YEAR_10000 + 5, 0));
        let odd = StoredRecord::price(odd, &Pricing::default());

        let mut binder = SnapshotBinder::new(now);
        for stored in [&full, &sparse, &odd, &full] {
            binder
                .bind(&mut by_binder, stored.snapshot_array(now))
                .expect("bind");
            let bound = selected(&mut by_binder);
            let reference = {
                for (index, value) in stored.snapshot_values(now).map(column_value).enumerate() {
                    by_values
                        .raw_bind_parameter(index + 1, value)
                        .expect("bind");
                }
                selected(&mut by_values)
            };
            assert_eq!(bound, reference, "{}", stored.record().request_id);
        }
    }

    #[test]
    fn timestamps_match_chrono_byte_for_byte() {
        let mut instants = vec![
            UNIX_EPOCH,
            at(0, 999_999_999),
            at(951_782_400, 0),             // 2000-02-29
            at(951_868_799, 999_999),       // 2000-02-29T23:59:59.000999
            at(4_107_542_400, 1_000),       // 2100-03-01
            at(1_759_034_096, 123_456_789), // 2025-09-28T04:34:56.123456
            at(YEAR_10000 - 1, 999_999_999),
            at(YEAR_10000, 0),
            at(YEAR_10000 + 86_400 * 400, 5),
            UNIX_EPOCH - Duration::new(1, 1),
            UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 100),
        ];
        // Every day of four whole years around a century, and a pseudo-random spread over the
        // whole fast range.
        let start = 946_684_800 - 86_400 * 366 * 2; // 1998
        instants.extend((0..86_400 * 366 * 4).step_by(86_399).map(|second| {
            at(
                start + second,
                u32::try_from(second % 1_000_000_000).expect("small"),
            )
        }));
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let seconds = (state >> 11) % YEAR_10000;
            let nanos = u32::try_from((state >> 3) % 1_000_000_000).expect("below 1e9");
            instants.push(at(seconds, nanos));
        }
        for instant in instants {
            assert_eq!(
                format_timestamp(instant),
                ccf_store::time::format_timestamp(instant),
                "{instant:?}"
            );
        }
    }
}
