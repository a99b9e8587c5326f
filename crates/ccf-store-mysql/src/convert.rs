//! mysql_async errors and values to store types.

use std::time::SystemTime;

use ccf_store::columns::{ColumnRow, ColumnValue};
use ccf_store::time::{from_parts, parse_timestamp, to_parts, DateTimeParts};
use ccf_store::{LegacyZone, StoreError};
use mysql_async::{Row, Value};

/// Classifies a driver error: lost connections, unknown databases, lock waits, deadlocks and
/// read-only servers are retryable.
pub(crate) fn mysql_error(error: mysql_async::Error) -> StoreError {
    match &error {
        mysql_async::Error::Io(_) => StoreError::unavailable("mysql connection failed", error),
        mysql_async::Error::Driver(_) => StoreError::unavailable("mysql driver error", error),
        mysql_async::Error::Server(server) => match server.code {
            1205 | 1213 => StoreError::locked("mysql lock wait timeout or deadlock", error),
            1290 | 1792 | 1036 | 1021 | 1114 => {
                StoreError::read_only("mysql database is read-only or full", error)
            }
            1040 | 1044 | 1045 | 1046 | 1049 | 1053 | 1146 | 1152 | 1158 | 1159 | 1160 | 1161
            | 1317 | 1927 | 2002 | 2003 | 2006 | 2013 | 4031 | 4151 => {
                StoreError::unavailable("mysql database unavailable", error)
            }
            // Unknown column: the schema is older than this binary (a restored dump, or another
            // instance still migrating). Retry until it is migrated; never drop records for it.
            1054 => StoreError::unavailable("mysql schema not migrated yet", error),
            _ => StoreError::database("mysql statement failed", error),
        },
        _ => StoreError::database("mysql error", error),
    }
}

/// A UTC instant as a DATETIME(6) parameter.
pub(crate) fn datetime(time: SystemTime) -> Value {
    let p = to_parts(time);
    Value::Date(p.year, p.month, p.day, p.hour, p.minute, p.second, p.micros)
}

pub(crate) fn opt_datetime(time: Option<SystemTime>) -> Value {
    time.map_or(Value::NULL, datetime)
}

/// A DATETIME read back (binary protocol `Date` or text), in `zone` (UTC once migrated).
pub(crate) fn as_time(value: &Value, zone: LegacyZone) -> Option<SystemTime> {
    match value {
        Value::Date(year, month, day, hour, minute, second, micros) => from_parts(
            DateTimeParts {
                year: *year,
                month: *month,
                day: *day,
                hour: *hour,
                minute: *minute,
                second: *second,
                micros: *micros,
            },
            zone,
        ),
        Value::Bytes(bytes) => parse_timestamp(&String::from_utf8_lossy(bytes), zone),
        _ => None,
    }
}

pub(crate) fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::UInt(n) => i64::try_from(*n).ok(),
        Value::Float(f) => Some(f.round() as i64),
        Value::Double(f) => Some(f.round() as i64),
        Value::Bytes(bytes) => {
            let text = std::str::from_utf8(bytes).ok()?.trim();
            text.parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().map(|f| f.round() as i64))
        }
        _ => None,
    }
}

pub(crate) fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Int(n) => Some(*n as f64),
        Value::UInt(n) => Some(*n as f64),
        Value::Float(f) => Some(f64::from(*f)),
        Value::Double(f) => Some(*f),
        Value::Bytes(bytes) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(f) => Some(f.to_string()),
        Value::Date(..) | Value::Time(..) => {
            Some(value.as_sql(true).trim_matches('\'').to_string())
        }
    }
}

pub(crate) fn as_bool(value: &Value) -> bool {
    as_i64(value).is_some_and(|n| n != 0)
}

pub(crate) fn u64_or_zero(value: &Value) -> u64 {
    as_i64(value)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

pub(crate) fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

pub(crate) fn opt_int(value: Option<u64>) -> Value {
    value.map_or(Value::NULL, int)
}

pub(crate) fn opt_text(value: Option<&str>) -> Value {
    value.map_or(Value::NULL, |text| Value::Bytes(text.as_bytes().to_vec()))
}

pub(crate) fn text(value: &str) -> Value {
    Value::Bytes(value.as_bytes().to_vec())
}

/// The value at `index` of a row (NULL when absent).
pub(crate) fn at(row: &mysql_async::Row, index: usize) -> &Value {
    row.as_ref(index).unwrap_or(&Value::NULL)
}

/// Nano-USD as an exact decimal string for a DECIMAL column (rounded by the column's scale).
pub(crate) fn usd(nano: i64) -> Value {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    text(&format!(
        "{sign}{}.{:09}",
        abs / 1_000_000_000,
        abs % 1_000_000_000
    ))
}

/// A column's value as MySQL is sent it: text as bytes, instants as DATETIME(6), counts, flags
/// (0/1) and nano-USD as integers, legacy USD as an exact decimal string.
pub(crate) fn column_value(value: ColumnValue<'_>) -> Value {
    match value {
        ColumnValue::Text(value) => opt_text(value),
        ColumnValue::Time(time) => opt_datetime(time),
        ColumnValue::Count(count) => opt_int(count),
        ColumnValue::Flag(flag) => Value::from(flag),
        ColumnValue::NanoUsd(nano) => Value::Int(nano),
        ColumnValue::Usd(nano) => usd(nano),
    }
}

/// A result row read by position in the column list it was selected with; DATETIMEs are read
/// in `zone`.
pub(crate) struct MysqlRow<'a> {
    pub(crate) row: &'a Row,
    pub(crate) zone: LegacyZone,
}

impl ColumnRow for MysqlRow<'_> {
    fn text(&self, position: usize) -> Option<String> {
        as_text(at(self.row, position))
    }

    fn int(&self, position: usize) -> Option<i64> {
        as_i64(at(self.row, position))
    }

    fn flag(&self, position: usize) -> bool {
        as_bool(at(self.row, position))
    }

    fn time(&self, position: usize) -> Option<SystemTime> {
        as_time(at(self.row, position), self.zone)
    }
}
