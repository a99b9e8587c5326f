//! Serde helpers: times as Unix milliseconds and durations as milliseconds, saturating, so every
//! record serializes whatever clock value it holds (a time before 1970 writes 0).

use std::time::{Duration, SystemTime};

use serde::Serializer;

/// Milliseconds since the Unix epoch, 0 for earlier times.
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(duration_millis)
        .unwrap_or(0)
}

/// Whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `SystemTime` as Unix milliseconds.
pub(crate) mod unix {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(unix_millis(*time))
    }
}

/// `Option<SystemTime>` as Unix milliseconds or `null`.
pub(crate) mod unix_option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => s.serialize_some(&unix_millis(*time)),
            None => s.serialize_none(),
        }
    }
}

/// `Duration` as milliseconds.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(duration_millis(*duration))
    }
}

/// `Option<Duration>` as milliseconds or `null`.
pub(crate) mod duration_option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => s.serialize_some(&duration_millis(*duration)),
            None => s.serialize_none(),
        }
    }
}
