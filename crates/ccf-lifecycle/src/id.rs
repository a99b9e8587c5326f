//! [`RequestId`]: the identity of one client request.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity of one client request: `req-` followed by 16 lowercase hex digits.
///
/// It appears in every log line about the request, in the `x-ccf-request-id` response header and
/// on the usage row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

thread_local! {
    /// The next id this thread hands out: starts at 64 random bits, counts up by one.
    static NEXT_ON_THIS_THREAD: Cell<u64> = Cell::new(rand::random::<u64>());
}

impl RequestId {
    /// A fresh id: each thread counts up from its own random 64-bit start.
    ///
    /// Why not 64 random bits per id, as until issue 19: the usage store keeps a unique index on
    /// `request_id`, and random keys put nearly every new row on its own index page, which
    /// SQLite writes to the WAL at commit and to the database again at the checkpoint (some
    /// 4,300 page writes for a 1,000-row transaction, the writer's main cost under load; InnoDB
    /// pays the same for its secondary index). Ids counting up from a start land next to each
    /// other, a page taking dozens of them. They are also less likely to collide across
    /// instances sharing one store than random ones: two threads' runs collide only if their
    /// ranges overlap, about (ids one run hands out) / 2^63 per pair of runs, where n random
    /// ids collide with probability n² / 2^65. The cost: between two of its own answers, a
    /// client can tell how many requests the same serving thread handled. The ids are names,
    /// never credentials: nothing on either port accepts one as proof of anything.
    pub fn generate() -> Self {
        NEXT_ON_THIS_THREAD.with(|next| {
            let id = next.get();
            next.set(id.wrapping_add(1));
            RequestId(id)
        })
    }

    /// The id with these bits (for tests and storage round trips).
    pub const fn from_u64(bits: u64) -> Self {
        RequestId(bits)
    }

    /// The 64 bits behind the id.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The id's text (`req-` and 16 hex digits) in a buffer on the stack: what `Display`
    /// writes, for the response header and the usage row without a `String` grown through the
    /// formatting machinery (two allocations and about 600 instructions, issue 19).
    pub fn text(self) -> RequestIdText {
        let mut bytes = *b"req-0000000000000000";
        bytes[4..].copy_from_slice(&ccf_types::hex16(self.0));
        RequestIdText(bytes)
    }
}

/// A [`RequestId`]'s text, from [`RequestId::text`].
#[derive(Clone, Copy)]
pub struct RequestIdText([u8; 20]);

impl RequestIdText {
    /// The text: `req-` and 16 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or("req-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
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
        assert_eq!(
            RequestId::from_u64(0x0123_4567_89ab_cdef).text().as_str(),
            "req-0123456789abcdef"
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
    fn ids_from_one_thread_count_up_and_threads_start_apart() {
        let first = RequestId::generate();
        let second = RequestId::generate();
        assert_eq!(second.as_u64(), first.as_u64().wrapping_add(1));
        // Consecutive ids sort as their text does (fixed-width lowercase hex), so the usage
        // store's index sees them in order.
        if first.as_u64() != u64::MAX {
            assert!(first.to_string() < second.to_string());
        }
        let other = std::thread::spawn(RequestId::generate)
            .join()
            .expect("the other thread generated an id");
        // The other thread's start is random: equal to, or one of the next few after, this
        // thread's ids with probability about 2^-60.
        assert!(other.as_u64().wrapping_sub(first.as_u64()) > 16);
    }

    #[test]
    fn a_million_ids_do_not_collide() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1_000_000 {
            assert!(seen.insert(RequestId::generate()));
        }
    }
}
