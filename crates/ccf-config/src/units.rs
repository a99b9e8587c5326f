//! Value types written as strings in the file: Go-syntax durations and `100MB`-style sizes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in Go syntax: `300s`, `1m30s`, `500ms`, `1.5h`, `2h45m`, `0`.
///
/// Units: `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`; each number may carry a decimal fraction.
/// Negative durations are rejected. A bare integer is read as seconds (env variables and
/// hand-written files often say `timeout: 30`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Whole seconds.
    pub const fn secs(seconds: u64) -> Self {
        GoDuration(Duration::from_secs(seconds))
    }

    /// Whole milliseconds.
    pub const fn millis(milliseconds: u64) -> Self {
        GoDuration(Duration::from_millis(milliseconds))
    }

    /// The std duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses Go duration syntax; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_go_duration(text).map(GoDuration)
    }
}

impl From<GoDuration> for Duration {
    fn from(value: GoDuration) -> Duration {
        value.0
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for GoDuration {
    /// Formats like Go's `Duration.String()`: `1h30m0s`, `2.5s`, `300ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_nanos = self.0.as_nanos();
        if total_nanos == 0 {
            return f.write_str("0s");
        }
        if total_nanos < 1_000 {
            return write!(f, "{total_nanos}ns");
        }
        if total_nanos < 1_000_000 {
            return write!(f, "{}µs", trim_fraction(total_nanos, 1_000));
        }
        if total_nanos < 1_000_000_000 {
            return write!(f, "{}ms", trim_fraction(total_nanos, 1_000_000));
        }
        let hours = total_nanos / 3_600_000_000_000;
        let rest = total_nanos % 3_600_000_000_000;
        let minutes = rest / 60_000_000_000;
        let second_nanos = rest % 60_000_000_000;
        let seconds = trim_fraction(second_nanos, 1_000_000_000);
        if hours > 0 {
            write!(f, "{hours}h{minutes}m{seconds}s")
        } else if minutes > 0 {
            write!(f, "{minutes}m{seconds}s")
        } else {
            write!(f, "{seconds}s")
        }
    }
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as `30s`, `1m30s`, `500ms` or `1.5h`";
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty duration: {expected}"));
    }
    if trimmed.starts_with('-') {
        return Err(format!("negative duration `{trimmed}`: {expected}"));
    }
    let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = body
            .parse()
            .map_err(|_| format!("duration `{trimmed}` is too large"))?;
        return Ok(Duration::from_secs(seconds));
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration `{trimmed}`: {expected}"))?;
        if number_len == 0 {
            return Err(format!("invalid duration `{trimmed}`: {expected}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("invalid number in duration `{trimmed}`: {expected}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in duration `{trimmed}`: {expected}"
                ))
            }
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(format!("duration `{trimmed}` is too large"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Seconds(u64),
            Text(String),
        }
        match Repr::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration such as `30s`, `1m30s`, `500ms` or `1.5h`",
            )
        })? {
            Repr::Seconds(seconds) => Ok(GoDuration::secs(seconds)),
            Repr::Text(text) => GoDuration::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A size written as `100MB`, `512KB`, `1GB` or a plain number of bytes; units are base 1024
/// and case-insensitive, as in the Go original.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `100MB`-style sizes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected a size such as `100MB`, `512KB`, `1GB` or a number of bytes";
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(format!("invalid size `{trimmed}`: {expected}"));
        }
        let number: f64 = number
            .parse()
            .map_err(|_| format!("invalid size `{trimmed}`: {expected}"))?;
        let multiplier: f64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1.0,
            "K" | "KB" | "KIB" => 1024.0,
            "M" | "MB" | "MIB" => 1024.0 * 1024.0,
            "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
            "T" | "TB" | "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(format!("unknown unit in size `{trimmed}`: {expected}")),
        };
        let bytes = number * multiplier;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(format!("size `{trimmed}` is too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TB", 1 << 40),
            ("GB", 1 << 30),
            ("MB", 1 << 20),
            ("KB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bytes(u64),
            Text(String),
        }
        match Repr::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size such as `100MB`, `512KB` or `1GB`")
        })? {
            Repr::Bytes(bytes) => Ok(ByteSize(bytes)),
            Repr::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}
