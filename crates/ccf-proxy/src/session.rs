//! Reading what smart routing needs from requests: the session a request belongs to and
//! whether it asks for the 1-hour prompt cache. (The rate-limit headers of every upstream answer
//! are read in `ratelimit.rs`.)
//!
//! Sessions ([`identify`]): an explicit session header (`x-claude-code-session-id`, then
//! `x-session-id`), else the body's `metadata.user_id`, else a hash of the system prompt and the
//! first message. Only the 64-bit FNV-1a hash is kept ([`SessionKey`]), never the text. The body
//! pieces come from the one JSON parse the forwarder already makes (the request fields,
//! `forwarder/admit.rs`): the
//! [`PromptHash`] and [`CacheScan`] types are `Deserialize` impls that hash or scan a value while
//! serde walks it, so nothing is parsed twice and no value tree is built. `cache_control` objects
//! are left out of the prompt hash (clients move their cache breakpoints from turn to turn) and
//! scanned for `ttl: "1h"`.

use std::fmt;

use ccf_router::{SessionKey, SessionRequest, SessionSource, TurnTokens};
use http::HeaderMap;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Session headers, in the order they are looked at.
pub const SESSION_HEADERS: [&str; 2] = ["x-claude-code-session-id", "x-session-id"];

/// FNV-1a, 64 bits: stable across runs and instances, cheap, no allocation.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv {
        Fnv(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// A tagged, length-prefixed piece, so that `["ab"]` and `["a","b"]` hash differently.
    fn piece(&mut self, tag: u8, bytes: &[u8]) {
        self.write(&[tag]);
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

/// What a JSON walk found.
#[derive(Debug)]
struct Scan {
    hash: Fnv,
    hashed_anything: bool,
    long_ttl: bool,
}

impl Scan {
    fn new() -> Scan {
        Scan {
            hash: Fnv::new(),
            hashed_anything: false,
            long_ttl: false,
        }
    }
}

/// How a walked value is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hashing {
    /// Everything (except `cache_control` objects).
    All,
    /// Only the first element of an array (the first message).
    FirstElement,
    /// Nothing: only scan for the 1-hour cache.
    Nothing,
}

/// Walks one JSON value with serde, hashing it as told and noting `cache_control.ttl: "1h"`.
struct Walk<'a> {
    scan: &'a mut Scan,
    hashing: Hashing,
    /// The value is the object of a `cache_control` key.
    in_cache_control: bool,
}

impl Walk<'_> {
    fn hash(&mut self, tag: u8, bytes: &[u8]) {
        if self.hashing == Hashing::All {
            self.scan.hash.piece(tag, bytes);
            self.scan.hashed_anything = true;
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(mut self, value: bool) -> Result<(), E> {
        self.hash(b'b', &[u8::from(value)]);
        Ok(())
    }

    fn visit_i64<E>(mut self, value: i64) -> Result<(), E> {
        self.hash(b'i', &value.to_le_bytes());
        Ok(())
    }

    fn visit_u64<E>(mut self, value: u64) -> Result<(), E> {
        self.hash(b'u', &value.to_le_bytes());
        Ok(())
    }

    fn visit_f64<E>(mut self, value: f64) -> Result<(), E> {
        self.hash(b'f', &value.to_le_bytes());
        Ok(())
    }

    fn visit_str<E>(mut self, value: &str) -> Result<(), E> {
        self.hash(b's', value.as_bytes());
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.hash(b'n', &[]);
        Ok(())
    }

    fn visit_none<E>(mut self) -> Result<(), E> {
        self.hash(b'n', &[]);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.hash(b'[', &[]);
        let mut index = 0usize;
        loop {
            let hashing = match self.hashing {
                Hashing::All => Hashing::All,
                Hashing::FirstElement if index == 0 => Hashing::All,
                Hashing::FirstElement | Hashing::Nothing => Hashing::Nothing,
            };
            let element = Walk {
                scan: self.scan,
                hashing,
                in_cache_control: false,
            };
            if seq.next_element_seed(element)?.is_none() {
                break;
            }
            index += 1;
        }
        self.hash(b']', &[]);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.hash(b'{', &[]);
        let hashing_below = self.hashing_below();
        loop {
            let seed = KeySeed {
                scan: self.scan,
                hash: hashing_below == Hashing::All,
            };
            let Some(key) = map.next_key_seed(seed)? else {
                break;
            };
            match key {
                Key::CacheControl => map.next_value_seed(Walk {
                    scan: self.scan,
                    hashing: Hashing::Nothing,
                    in_cache_control: true,
                })?,
                Key::Ttl if self.in_cache_control => {
                    if let TtlValue(true) = map.next_value::<TtlValue>()? {
                        self.scan.long_ttl = true;
                    }
                }
                // Big text values cannot hold a cache_control: skipped without unescaping.
                Key::Text if hashing_below == Hashing::Nothing => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Ttl | Key::UserId | Key::Text | Key::Other => map.next_value_seed(Walk {
                    scan: self.scan,
                    hashing: hashing_below,
                    in_cache_control: false,
                })?,
            }
        }
        self.hash(b'}', &[]);
        Ok(())
    }
}

impl Walk<'_> {
    /// Inside an object, `FirstElement` has no meaning left: hash all or nothing.
    fn hashing_below(&self) -> Hashing {
        match self.hashing {
            Hashing::All => Hashing::All,
            Hashing::FirstElement | Hashing::Nothing => Hashing::Nothing,
        }
    }
}

/// An object key, sorted into the ones that matter and the rest (hashed, never copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    CacheControl,
    Ttl,
    UserId,
    /// A content field holding text or data (`text`, `thinking`, `signature`, `data`).
    Text,
    Other,
}

/// Reads an object key without allocating; hashes it (`hash`) unless it is `cache_control`.
struct KeySeed<'a> {
    scan: &'a mut Scan,
    hash: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        let kind = match key {
            "cache_control" => return Ok(Key::CacheControl),
            "ttl" => Key::Ttl,
            "user_id" => Key::UserId,
            "text" | "thinking" | "signature" | "data" => Key::Text,
            _ => Key::Other,
        };
        if self.hash {
            self.scan.hash.piece(b'k', key.as_bytes());
            self.scan.hashed_anything = true;
        }
        Ok(kind)
    }
}

/// A `cache_control.ttl` value: `true` when it is `"1h"`. Any other value is skipped.
struct TtlValue(bool);

impl<'de> Deserialize<'de> for TtlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TtlValue, D::Error> {
        let mut scan = Scan::new();
        let mut found = false;
        struct TtlVisitor<'a>(&'a mut bool, &'a mut Scan);
        impl<'de> Visitor<'de> for TtlVisitor<'_> {
            type Value = ();
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a TTL")
            }
            fn visit_str<E>(self, value: &str) -> Result<(), E> {
                *self.0 = value.trim() == "1h";
                Ok(())
            }
            fn visit_bool<E>(self, _: bool) -> Result<(), E> {
                Ok(())
            }
            fn visit_i64<E>(self, _: i64) -> Result<(), E> {
                Ok(())
            }
            fn visit_u64<E>(self, _: u64) -> Result<(), E> {
                Ok(())
            }
            fn visit_f64<E>(self, _: f64) -> Result<(), E> {
                Ok(())
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
                Walk {
                    scan: self.1,
                    hashing: Hashing::Nothing,
                    in_cache_control: false,
                }
                .visit_seq(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
                Walk {
                    scan: self.1,
                    hashing: Hashing::Nothing,
                    in_cache_control: false,
                }
                .visit_map(map)
            }
        }
        deserializer.deserialize_any(TtlVisitor(&mut found, &mut scan))?;
        Ok(TtlValue(found || scan.long_ttl))
    }
}

/// A hashed body part (`system`, or the first of `messages`), plus whether it asks for the
/// 1-hour cache. Built while serde walks the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PromptHash {
    /// FNV-1a of the part; `None` when nothing was hashed (an empty array).
    pub(crate) hash: Option<u64>,
    /// A `cache_control` with `ttl: "1h"` was seen in it.
    pub(crate) long_ttl: bool,
}

fn walk_part<'de, D: Deserializer<'de>>(
    deserializer: D,
    hashing: Hashing,
) -> Result<PromptHash, D::Error> {
    let mut scan = Scan::new();
    Walk {
        scan: &mut scan,
        hashing,
        in_cache_control: false,
    }
    .deserialize(deserializer)?;
    Ok(PromptHash {
        hash: scan.hashed_anything.then_some(scan.hash.0),
        long_ttl: scan.long_ttl,
    })
}

/// The system prompt, hashed whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SystemPrompt(pub(crate) PromptHash);

impl<'de> Deserialize<'de> for SystemPrompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        walk_part(deserializer, Hashing::All).map(SystemPrompt)
    }
}

/// `messages`: the first message hashed, every message scanned for the 1-hour cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Messages(pub(crate) PromptHash);

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        walk_part(deserializer, Hashing::FirstElement).map(Messages)
    }
}

/// Any other body part that may carry `cache_control` (`tools`, a top-level `cache_control`):
/// scanned for the 1-hour cache only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheScan(pub(crate) bool);

impl<'de> Deserialize<'de> for CacheScan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A top-level `cache_control` object is itself a cache_control.
        let mut scan = Scan::new();
        Walk {
            scan: &mut scan,
            hashing: Hashing::Nothing,
            in_cache_control: true,
        }
        .deserialize(deserializer)?;
        Ok(CacheScan(scan.long_ttl))
    }
}

/// `metadata`: only `user_id` is read; anything else (or a non-string `user_id`) is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub(crate) user_id: Option<String>,
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("the metadata object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut metadata = Metadata::default();
                let mut scan = Scan::new();
                while let Some(key) = map.next_key_seed(KeySeed {
                    scan: &mut scan,
                    hash: false,
                })? {
                    match key {
                        Key::UserId => {
                            metadata.user_id = map.next_value::<UserId>()?.0;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(metadata)
            }
            fn visit_unit<E>(self) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }
        }
        deserializer.deserialize_any(MetadataVisitor)
    }
}

/// A `user_id` string; any other JSON value reads as none.
struct UserId(Option<String>);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut scan = Scan::new();
        struct UserIdVisitor<'a>(&'a mut Scan);
        impl<'de> Visitor<'de> for UserIdVisitor<'_> {
            type Value = Option<String>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a user id")
            }
            fn visit_str<E>(self, value: &str) -> Result<Option<String>, E> {
                Ok(Some(value.to_string()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Option<String>, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Option<String>, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<String>, A::Error> {
                Walk {
                    scan: self.0,
                    hashing: Hashing::Nothing,
                    in_cache_control: false,
                }
                .visit_seq(seq)
                .map(|()| None)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<String>, A::Error> {
                Walk {
                    scan: self.0,
                    hashing: Hashing::Nothing,
                    in_cache_control: false,
                }
                .visit_map(map)
                .map(|()| None)
            }
        }
        deserializer
            .deserialize_any(UserIdVisitor(&mut scan))
            .map(UserId)
    }
}

/// The body parts a session is identified by (filled by the forwarder's one body parse).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodySession<'a> {
    /// `metadata.user_id`.
    pub(crate) user_id: Option<&'a str>,
    /// `system`.
    pub(crate) system: Option<PromptHash>,
    /// `messages`.
    pub(crate) messages: Option<PromptHash>,
    /// `ttl: "1h"` in some other `cache_control` of the body.
    pub(crate) long_ttl_elsewhere: bool,
}

fn key_of(tag: u8, text: &str) -> SessionKey {
    let mut hash = Fnv::new();
    hash.piece(tag, text.as_bytes());
    SessionKey(hash.0)
}

/// The session of a `POST .../messages` request: a session header, else `metadata.user_id`,
/// else the system prompt and first message; `None` for other requests and for bodies with
/// none of these.
pub(crate) fn identify(
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
    body: &BodySession<'_>,
) -> Option<SessionRequest> {
    if method != http::Method::POST || !path.ends_with("/messages") {
        return None;
    }
    let long_ttl = body.long_ttl_elsewhere
        || body.system.is_some_and(|part| part.long_ttl)
        || body.messages.is_some_and(|part| part.long_ttl);
    let from_header = SESSION_HEADERS.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    });
    let (key, source) = if let Some(value) = from_header {
        (key_of(b'h', value), SessionSource::Header)
    } else if let Some(user_id) = body.user_id.map(str::trim).filter(|id| !id.is_empty()) {
        (key_of(b'u', user_id), SessionSource::UserId)
    } else {
        let system = body.system.and_then(|part| part.hash);
        let first = body.messages.and_then(|part| part.hash);
        if system.is_none() && first.is_none() {
            return None;
        }
        let mut hash = Fnv::new();
        hash.write(b"p");
        hash.write(&system.unwrap_or(0).to_le_bytes());
        hash.write(&first.unwrap_or(0).to_le_bytes());
        (SessionKey(hash.0), SessionSource::Prompt)
    };
    Some(SessionRequest {
        key,
        source,
        long_ttl,
    })
}

/// The tokens of a finished turn, from its reported usage.
pub(crate) fn turn_tokens(usage: &ccf_types::Usage) -> TurnTokens {
    TurnTokens {
        input_tokens: usage.input_tokens,
        cache_creation_tokens: usage.cache_creation_input_tokens,
        cache_read_tokens: usage.cache_read_input_tokens,
    }
}

/// Records a finished turn's tokens for the affinity statistics; made when a success is relayed,
/// called once when its body ends.
pub(crate) struct TurnRecorder(Box<RecordTurn>);

/// `(model, tokens)` of a finished turn into the affinity statistics.
type RecordTurn = dyn FnOnce(&str, TurnTokens) + Send;

impl TurnRecorder {
    /// A recorder that hands `(model, tokens)` to `record`.
    pub(crate) fn new(record: impl FnOnce(&str, TurnTokens) + Send + 'static) -> TurnRecorder {
        TurnRecorder(Box::new(record))
    }

    /// The turn ended with this model and usage; nothing is recorded without usage.
    pub(crate) fn finish(self, model: Option<&str>, usage: Option<&ccf_types::Usage>) {
        if let Some(usage) = usage.filter(|usage| !usage.is_empty()) {
            (self.0)(model.unwrap_or(""), turn_tokens(usage));
        }
    }
}

#[cfg(test)]
mod tests;
