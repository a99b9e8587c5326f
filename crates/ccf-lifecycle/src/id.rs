//! [`RequestId`]: the identity of one client request.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity of one client request: `req-` followed by 16 lowercase hex digits.
///
/// It appears in every log line about the request, in the `x-ccf-request-id` response header and
/// on the usage row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh id from 64 random bits (thread-local CSPRNG, no syscall per id).
    pub fn generate() -> Self {
        RequestId(rand::random::<u64>())
    }

    /// The id with these bits (for tests and storage round trips).
    pub const fn from_u64(bits: u64) -> Self {
        RequestId(bits)
    }

    /// The 64 bits behind the id.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `req-` and 16 lowercase hex digits, written straight into a buffer: the id is
        // formatted for every request (response header, log span), and `{:016x}` through the
        // formatting machinery cost several times this.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"req-0000000000000000";
        for (index, byte) in text[4..].iter_mut().enumerate() {
            let shift = 60 - 4 * index;
            *byte = HEX[((self.0 >> shift) & 0xf) as usize];
        }
        // Only ASCII was written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a [`RequestId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequestId(String);

impl fmt::Display for InvalidRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid request id `{}`: expected `req-` and 16 lowercase hex digits",
            self.0
        )
    }
}

impl std::error::Error for InvalidRequestId {}

impl FromStr for RequestId {
    type Err = InvalidRequestId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRequestId(text.to_string());
        let hex = text.strip_prefix("req-").ok_or_else(invalid)?;
        if hex.len() != 16
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        u64::from_str_radix(hex, 16)
            .map(RequestId)
            .map_err(|_| invalid())
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_req_and_sixteen_hex_digits() {
        assert_eq!(
            RequestId::from_u64(0xab).to_string(),
            "req-00000000000000ab"
        );
        assert_eq!(
            RequestId::from_u64(0xfedc_ba98_7654_3210).to_string(),
            "req-fedcba9876543210"
        );
        assert_eq!(
            format!("{:?}", RequestId::from_u64(u64::MAX)),
            "req-ffffffffffffffff"
        );
        let generated = RequestId::generate().to_string();
        assert_eq!(generated.len(), 20);
        assert!(generated.starts_with("req-"));
        assert!(generated[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn parses_what_it_prints_and_rejects_everything_else() {
        let id = RequestId::generate();
        assert_eq!(id.to_string().parse::<RequestId>(), Ok(id));
        for bad in [
            "",
            "req-",
            "req-123",
            "req-00000000000000AB",
            "rq-00000000000000ab",
            "req-00000000000000abc",
            "req-0000000000000g0b",
        ] {
            assert!(
                bad.parse::<RequestId>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn a_million_ids_do_not_collide() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1_000_000 {
            assert!(seen.insert(RequestId::generate()));
        }
    }
}
