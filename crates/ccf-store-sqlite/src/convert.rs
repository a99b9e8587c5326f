//! rusqlite errors and values to store types.

use ccf_store::{LegacyZone, StoreError};
use rusqlite::types::{Value, ValueRef};
use rusqlite::ErrorCode;
use std::time::SystemTime;

/// Classifies a rusqlite error: busy/locked, read-only/full and open/IO failures are retryable.
pub(crate) fn sqlite_error(error: rusqlite::Error) -> StoreError {
    let code = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
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
        _ => StoreError::database("sqlite statement failed", error),
    }
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

pub(crate) fn u64_or_zero(value: ValueRef<'_>) -> u64 {
    as_i64(value)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// An `i64` for SQLite from an unsigned count (saturating).
pub(crate) fn int(value: u64) -> Value {
    Value::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

pub(crate) fn opt_int(value: Option<u64>) -> Value {
    value.map_or(Value::Null, int)
}

pub(crate) fn opt_text(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |text| Value::Text(text.to_string()))
}
