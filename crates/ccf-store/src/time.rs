//! Timestamps as stored: written in UTC, read back from whatever the Go original wrote.
//!
//! New values are written as fixed-width RFC 3339 UTC text (`2025-09-28T04:34:56.123456Z`), so
//! that text order is time order and SQL range filters can compare strings. Legacy values without
//! a zone (the Go forwarder wrote `'YYYY-MM-DD HH:MM:SS.ffffff'` in its configured time zone) are
//! interpreted in a [`LegacyZone`] chosen by whoever opens the store.
//!
//! Calendar days and hours (the `usage_summary.date` key, the daily and hourly stats, "today")
//! are days of a [`DayZone`]: the configured `timezone`, else the machine's zone. It is a
//! different thing from the [`LegacyZone`], which only says how to read what the Go forwarder
//! wrote.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::StoreError;

/// The zone in which zone-less legacy timestamps are interpreted.
///
/// The Go forwarder wrote local times in `usage_tracking.database.timezone`, else the global
/// `timezone`, else `Asia/Shanghai`; pass that zone here when opening a database it wrote.
/// The default is UTC.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyZone {
    /// Zone-less values are UTC.
    #[default]
    Utc,
    /// A fixed offset from UTC.
    Fixed(FixedOffset),
    /// An IANA zone (daylight-saving aware; an ambiguous local time takes the earlier instant).
    Named(chrono_tz::Tz),
}

impl fmt::Debug for LegacyZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LegacyZone::Utc => f.write_str("UTC"),
            LegacyZone::Fixed(offset) => write!(f, "{offset}"),
            LegacyZone::Named(zone) => f.write_str(zone.name()),
        }
    }
}

impl LegacyZone {
    /// Parses `UTC`/`Z`, a fixed offset (`+08:00`, `-0530`) or an IANA name (`Asia/Shanghai`).
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("utc") || name == "Z" {
            return Ok(LegacyZone::Utc);
        }
        if name.starts_with('+') || name.starts_with('-') {
            if let Some(offset) = parse_offset(name) {
                return Ok(LegacyZone::Fixed(offset));
            }
        }
        name.parse::<chrono_tz::Tz>()
            .map(LegacyZone::Named)
            .map_err(|_| StoreError::InvalidInput(format!("unknown time zone `{name}`")))
    }

    /// Whether zone-less values are already UTC (nothing to convert).
    pub fn is_utc(&self) -> bool {
        match self {
            LegacyZone::Utc => true,
            LegacyZone::Fixed(offset) => offset.local_minus_utc() == 0,
            LegacyZone::Named(_) => false,
        }
    }

    /// The zone to use given the adapter's and the global configuration, Go's precedence:
    /// the database's `timezone`, then the global `timezone`, then `Asia/Shanghai` (the Go
    /// forwarder's default, which is what an existing database holds). Unknown names fall back to
    /// UTC with a warning.
    pub fn from_config(database_timezone: Option<&str>, global_timezone: Option<&str>) -> Self {
        let name = database_timezone
            .filter(|name| !name.trim().is_empty())
            .or(global_timezone.filter(|name| !name.trim().is_empty()))
            .unwrap_or("Asia/Shanghai");
        match LegacyZone::parse(name) {
            Ok(zone) => zone,
            Err(error) => {
                tracing::warn!(%error, "legacy timestamps will be read as UTC");
                LegacyZone::Utc
            }
        }
    }

    /// The instant of a zone-less local date-time read in this zone.
    pub fn resolve(&self, naive: NaiveDateTime) -> SystemTime {
        let utc: Option<DateTime<Utc>> = match self {
            LegacyZone::Utc => Some(naive.and_utc()),
            LegacyZone::Fixed(offset) => earliest(offset.from_local_datetime(&naive)),
            LegacyZone::Named(zone) => earliest(zone.from_local_datetime(&naive))
                // A local time skipped by a DST jump: read it as standard time an hour later.
                .or_else(|| {
                    earliest(zone.from_local_datetime(&(naive + chrono::Duration::hours(1))))
                }),
        };
        system_time(utc.unwrap_or_else(|| naive.and_utc()))
    }
}

fn earliest<Z: TimeZone>(result: LocalResult<DateTime<Z>>) -> Option<DateTime<Utc>> {
    match result {
        LocalResult::Single(time) => Some(time.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

fn parse_offset(text: &str) -> Option<FixedOffset> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = text[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// Formats an instant as stored: fixed-width RFC 3339 in UTC with microseconds,
/// `2025-09-28T04:34:56.123456Z`.
pub fn format_timestamp(time: SystemTime) -> String {
    datetime(time).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The UTC calendar date of an instant, `YYYY-MM-DD`.
pub fn format_date(time: SystemTime) -> String {
    datetime(time).format("%Y-%m-%d").to_string()
}

/// An instant as a chrono UTC date-time (microsecond precision is what the databases keep).
pub fn datetime(time: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(time)
}

/// A chrono UTC date-time back to a [`SystemTime`].
pub fn system_time(time: DateTime<Utc>) -> SystemTime {
    let seconds = time.timestamp();
    let nanos = time.timestamp_subsec_nanos();
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            + Duration::from_nanos(nanos.into())
    }
}

/// Reads a stored timestamp, whoever wrote it:
/// - RFC 3339 with `Z` or an offset, `T` or space separated (`2025-09-28 12:34:56.123456+08:00`);
/// - Go's `time.Time.String()` (`2025-09-28 12:34:56.123456 +0800 CST`, with or without `m=+…`);
/// - zone-less `YYYY-MM-DD HH:MM:SS[.ffffff]` or `YYYY-MM-DDTHH:MM:SS[.ffffff]`, and a bare date,
///   read in `zone`;
/// - Unix seconds.
///
/// Returns `None` for text in none of these forms.
pub fn parse_timestamp(text: &str, zone: LegacyZone) -> Option<SystemTime> {
    parse_with(text, |naive| zone.resolve(naive))
}

/// Reads a time given to the API: like [`parse_timestamp`], with zone-less values (`2025-09-28`,
/// `2025-09-28 12:00`) read in the [`DayZone`] usage days are counted in.
pub fn parse_in_day_zone(text: &str, zone: DayZone) -> Option<SystemTime> {
    parse_with(text, |naive| zone.resolve(naive))
}

fn parse_with(text: &str, resolve: impl Fn(NaiveDateTime) -> SystemTime) -> Option<SystemTime> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // Go's String() may append the monotonic clock reading.
    let text = match text.find(" m=") {
        Some(index) => text[..index].trim_end(),
        None => text,
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(system_time(time.with_timezone(&Utc)));
    }
    let normalised = text.replacen(' ', "T", 1);
    if let Ok(time) = DateTime::parse_from_rfc3339(&normalised) {
        return Some(system_time(time.with_timezone(&Utc)));
    }
    // Go's String(): "<date> <time> <+hhmm> <ABBR>".
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() >= 3 {
        if let Some(offset) = parse_offset(parts[2]) {
            if let Ok(naive) = parse_naive(&format!("{} {}", parts[0], parts[1])) {
                return earliest(offset.from_local_datetime(&naive)).map(system_time);
            }
        }
    }
    if let Ok(naive) = parse_naive(text) {
        return Some(resolve(naive));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(resolve);
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return DateTime::<Utc>::from_timestamp(seconds, 0).map(system_time);
    }
    None
}

/// Calendar fields of an instant in UTC, as a database DATETIME holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeParts {
    /// Year.
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day, 1-31.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute.
    pub minute: u8,
    /// Second.
    pub second: u8,
    /// Microsecond.
    pub micros: u32,
}

/// The UTC calendar fields of `time` (years outside 0..=9999 are clamped).
pub fn to_parts(time: SystemTime) -> DateTimeParts {
    use chrono::{Datelike, Timelike};
    let utc = datetime(time);
    DateTimeParts {
        year: u16::try_from(utc.year().clamp(0, 9999)).unwrap_or(0),
        month: u8::try_from(utc.month()).unwrap_or(1),
        day: u8::try_from(utc.day()).unwrap_or(1),
        hour: u8::try_from(utc.hour()).unwrap_or(0),
        minute: u8::try_from(utc.minute()).unwrap_or(0),
        second: u8::try_from(utc.second().min(59)).unwrap_or(0),
        micros: utc.timestamp_subsec_micros().min(999_999),
    }
}

/// The instant of zone-less calendar fields read in `zone`; `None` if they are not a date.
pub fn from_parts(parts: DateTimeParts, zone: LegacyZone) -> Option<SystemTime> {
    let date =
        NaiveDate::from_ymd_opt(i32::from(parts.year), parts.month.into(), parts.day.into())?;
    let naive = date.and_hms_micro_opt(
        parts.hour.into(),
        parts.minute.into(),
        parts.second.into(),
        parts.micros,
    )?;
    Some(zone.resolve(naive))
}

/// The zone whose calendar days and hours usage is counted in: `usage_summary.date`, the daily
/// and hourly stats buckets, "today" and zone-less dates given to the API.
///
/// Built from the configured `timezone` ([`DayZone::from_config`]); without one it is the
/// machine's zone, resolved to its IANA name once so that a database can record which zone its
/// summary rows were counted in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DayZone {
    /// UTC days.
    Utc,
    /// A fixed offset from UTC.
    Fixed(FixedOffset),
    /// An IANA zone (daylight-saving aware).
    Named(chrono_tz::Tz),
    /// The machine's zone when its IANA name cannot be found (offsets from the C library).
    MachineLocal,
}

impl Default for DayZone {
    fn default() -> Self {
        DayZone::machine()
    }
}

impl fmt::Debug for DayZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl DayZone {
    /// The machine's zone: its IANA name when the system tells it, else the C library's local
    /// offsets.
    pub fn machine() -> Self {
        iana_time_zone::get_timezone()
            .ok()
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .map(DayZone::Named)
            .unwrap_or(DayZone::MachineLocal)
    }

    /// Parses `UTC`/`Z`, a fixed offset (`+08:00`) or an IANA name; `""` and `Local` are the
    /// machine's zone.
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("local") {
            return Ok(DayZone::machine());
        }
        Ok(match LegacyZone::parse(name)? {
            LegacyZone::Utc => DayZone::Utc,
            LegacyZone::Fixed(offset) => DayZone::Fixed(offset),
            LegacyZone::Named(zone) => DayZone::Named(zone),
        })
    }

    /// The zone of the configured global `timezone` (validated by ccf-config); absent, empty,
    /// `Local` or unknown means the machine's zone.
    pub fn from_config(timezone: Option<&str>) -> Self {
        match DayZone::parse(timezone.unwrap_or("")) {
            Ok(zone) => zone,
            Err(error) => {
                tracing::warn!(%error, "usage days will be counted in the machine's zone");
                DayZone::machine()
            }
        }
    }

    /// The name recorded with the summary rows (`UTC`, `+08:00`, `Asia/Shanghai`, `Local`).
    pub fn name(&self) -> String {
        match self {
            DayZone::Utc => "UTC".into(),
            DayZone::Fixed(offset) => offset.to_string(),
            DayZone::Named(zone) => zone.name().into(),
            DayZone::MachineLocal => "Local".into(),
        }
    }

    /// The offset from UTC in force at `time`.
    pub fn offset_at(&self, time: SystemTime) -> FixedOffset {
        use chrono::Offset;
        let utc = datetime(time);
        match self {
            DayZone::Utc => Utc.fix(),
            DayZone::Fixed(offset) => *offset,
            DayZone::Named(zone) => zone.offset_from_utc_datetime(&utc.naive_utc()).fix(),
            DayZone::MachineLocal => chrono::Local.offset_from_utc_datetime(&utc.naive_utc()),
        }
    }

    fn local(&self, time: SystemTime) -> DateTime<FixedOffset> {
        datetime(time).with_timezone(&self.offset_at(time))
    }

    /// The local calendar date of `time`.
    pub fn date_of(&self, time: SystemTime) -> NaiveDate {
        self.local(time).date_naive()
    }

    /// The local calendar date of `time`, `YYYY-MM-DD` (the `usage_summary.date` key and the
    /// daily stats bucket).
    ///
    /// Every row written computes its summary day here, so the digits of years 0-9999 are
    /// written directly instead of through chrono's formatting (the same text, test
    /// `a_date_formats_as_chrono_formats_it`); other years keep chrono's signed form.
    pub fn format_date(&self, time: SystemTime) -> String {
        use chrono::Datelike;
        let date = self.date_of(time);
        let Ok(year) = u32::try_from(date.year()) else {
            return date.format("%Y-%m-%d").to_string();
        };
        if year > 9999 {
            return date.format("%Y-%m-%d").to_string();
        }
        let mut text = String::with_capacity(10);
        for (value, width) in [(year, 4), (date.month(), 2), (date.day(), 2)] {
            if !text.is_empty() {
                text.push('-');
            }
            let mut divisor = 10u32.pow(width - 1);
            while divisor > 0 {
                text.push(char::from(b'0' + (value / divisor % 10) as u8));
                divisor /= 10;
            }
        }
        text
    }

    /// The local hour of `time` with its offset, `YYYY-MM-DDTHH:00:00+08:00`, `Z` for UTC (the
    /// hourly stats bucket; the offset keeps the two 01:00 hours of a daylight-saving change
    /// apart).
    pub fn format_hour(&self, time: SystemTime) -> String {
        let local = self.local(time);
        if local.offset().local_minus_utc() == 0 {
            local.format("%Y-%m-%dT%H:00:00Z").to_string()
        } else {
            local.format("%Y-%m-%dT%H:00:00%:z").to_string()
        }
    }

    /// The instant of a local date-time in this zone (an ambiguous one takes the earlier
    /// instant; one skipped by a daylight-saving jump, the first local time after it).
    pub fn resolve(&self, naive: NaiveDateTime) -> SystemTime {
        let exact = |naive: NaiveDateTime| -> Option<DateTime<Utc>> {
            match self {
                DayZone::Utc => Some(naive.and_utc()),
                DayZone::Fixed(offset) => earliest(offset.from_local_datetime(&naive)),
                DayZone::Named(zone) => earliest(zone.from_local_datetime(&naive)),
                DayZone::MachineLocal => earliest(chrono::Local.from_local_datetime(&naive)),
            }
        };
        let utc = (0..=8)
            .find_map(|quarter| exact(naive + chrono::Duration::minutes(15 * quarter)))
            .unwrap_or_else(|| naive.and_utc());
        system_time(utc)
    }

    /// The first instant of a local calendar day (a midnight skipped by a daylight-saving jump
    /// starts the day at the first local time that exists).
    pub fn day_start(&self, date: NaiveDate) -> SystemTime {
        self.resolve(date.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// The first and the last instant (to the microsecond, as stored) of a local calendar day.
    pub fn day_span(&self, date: NaiveDate) -> (SystemTime, SystemTime) {
        let start = self.day_start(date);
        let next = date
            .succ_opt()
            .map(|next| self.day_start(next))
            .unwrap_or(start + Duration::from_secs(86_400));
        (start, next - Duration::from_micros(1))
    }

    /// Today's local date.
    pub fn today(&self) -> NaiveDate {
        self.date_of(SystemTime::now())
    }
}

fn parse_naive(text: &str) -> Result<NaiveDateTime, chrono::ParseError> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        system_time(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .unwrap(),
        )
    }

    #[test]
    fn a_date_formats_as_chrono_formats_it() {
        let zones = [
            DayZone::Utc,
            DayZone::Fixed(FixedOffset::east_opt(8 * 3600).expect("offset")),
            DayZone::Fixed(FixedOffset::west_opt(5 * 3600 + 1800).expect("offset")),
        ];
        let mut instants = vec![
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 2_000),
            UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 1_971),
            UNIX_EPOCH + Duration::from_secs(253_402_300_800 - 1),
            UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400 * 40),
        ];
        instants
            .extend((0..4_000u64).map(|day| UNIX_EPOCH + Duration::from_secs(day * 86_399 * 3)));
        for zone in zones {
            for &instant in &instants {
                assert_eq!(
                    zone.format_date(instant),
                    zone.date_of(instant).format("%Y-%m-%d").to_string(),
                    "{instant:?}"
                );
            }
        }
    }

    #[test]
    fn formats_fixed_width_utc() {
        let time = at("2025-09-28T12:34:56.123456+08:00");
        assert_eq!(format_timestamp(time), "2025-09-28T04:34:56.123456Z");
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_date(time), "2025-09-28");
    }

    #[test]
    fn parses_every_form_the_go_original_wrote() {
        let shanghai = LegacyZone::parse("Asia/Shanghai").unwrap();
        let expected = at("2025-09-28T04:34:56.123456Z");
        let check = |text: &str, zone: LegacyZone, expected: SystemTime| {
            assert_eq!(parse_timestamp(text, zone), Some(expected), "{text}");
        };
        check("2025-09-28T04:34:56.123456Z", shanghai, expected);
        check(
            "2025-09-28T12:34:56.123456+08:00",
            LegacyZone::Utc,
            expected,
        );
        check(
            "2025-09-28 12:34:56.123456+08:00",
            LegacyZone::Utc,
            expected,
        );
        check(
            "2025-09-28 12:34:56.123456 +0800 CST",
            LegacyZone::Utc,
            expected,
        );
        check(
            "2025-09-28 12:34:56.123456 +0800 CST m=+12.5",
            LegacyZone::Utc,
            expected,
        );
        check("2025-09-28 12:34:56.123456", shanghai, expected);
        check("2025-09-28T12:34:56.123456", shanghai, expected);
        check("2025-09-28 04:34:56.123456", LegacyZone::Utc, expected);
        check(
            "2025-09-28 12:34:56.123456",
            LegacyZone::parse("+08:00").unwrap(),
            expected,
        );
        check("2025-09-28 12:34:56", shanghai, at("2025-09-28T04:34:56Z"));
        check("2025-09-28", LegacyZone::Utc, at("2025-09-28T00:00:00Z"));
        check("1759034096", LegacyZone::Utc, at("2025-09-28T04:34:56Z"));
        assert_eq!(parse_timestamp("yesterday", LegacyZone::Utc), None);
        assert_eq!(parse_timestamp("", LegacyZone::Utc), None);
    }

    #[test]
    fn zone_names_and_precedence() {
        assert_eq!(LegacyZone::parse("utc").unwrap(), LegacyZone::Utc);
        assert!(LegacyZone::parse("Mars/Olympus").is_err());
        assert_eq!(
            LegacyZone::from_config(None, None),
            LegacyZone::Named(chrono_tz::Tz::Asia__Shanghai)
        );
        assert_eq!(
            LegacyZone::from_config(Some("UTC"), Some("Asia/Tokyo")),
            LegacyZone::Utc
        );
        assert_eq!(
            LegacyZone::from_config(Some(" "), Some("Asia/Tokyo")),
            LegacyZone::Named(chrono_tz::Tz::Asia__Tokyo)
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_resolve() {
        let berlin = LegacyZone::parse("Europe/Berlin").unwrap();
        // 02:30 does not exist on 2025-03-30 in Berlin; 02:30 exists twice on 2025-10-26.
        assert!(parse_timestamp("2025-03-30 02:30:00", berlin).is_some());
        assert_eq!(
            parse_timestamp("2025-10-26 02:30:00", berlin),
            Some(at("2025-10-26T00:30:00Z"))
        );
    }
}
