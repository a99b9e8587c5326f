//! Reading what smart routing needs from requests: the session a request belongs to and
//! whether it asks for the 1-hour prompt cache. (The rate-limit headers of every upstream answer
//! are read in `ratelimit.rs`.)
//!
//! Sessions ([`identify`]): an explicit session header (`x-claude-code-session-id`, then
//! `x-session-id`), else the body's `metadata.user_id`, else a hash of the system prompt and the
//! first message. Only the 64-bit FNV-1a hash is kept ([`SessionKey`]), never the text. The body
//! pieces ([`BodySession::read`]) come from the one parse of the body the forwarder makes at
//! admission (`forwarder/admit.rs`, a [`Json`] tree borrowing from the body). `cache_control`
//! objects are left out of the prompt hash (clients move their cache breakpoints from turn to
//! turn) and scanned for `ttl: "1h"`.

use ccf_router::{SessionKey, SessionRequest, SessionSource, TurnTokens};
use ccf_tokens::tree::Json;
use http::{HeaderMap, HeaderName};

/// Session headers, in the order they are looked at. Typed names: a lookup by `&str` parses
/// and lower-cases the name on every request (about 370 instructions each, issue 19).
pub const SESSION_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-claude-code-session-id"),
    HeaderName::from_static("x-session-id"),
];

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

/// What a walk of the body found.
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

    fn hash(&mut self, hashing: Hashing, tag: u8, bytes: &[u8]) {
        if hashing == Hashing::All {
            self.hash.piece(tag, bytes);
            self.hashed_anything = true;
        }
    }

    /// Walks `value` in document order, hashing it as told and noting `cache_control.ttl:
    /// "1h"`. `in_cache_control`: `value` is the object of a `cache_control` key. The pieces and
    /// their tags are those of the serde walk of earlier versions, so a conversation keeps its
    /// key across an upgrade and between instances of two versions.
    fn walk(&mut self, value: &Json<'_>, hashing: Hashing, in_cache_control: bool) {
        match value {
            Json::Null => self.hash(hashing, b'n', &[]),
            Json::Bool(value) => self.hash(hashing, b'b', &[u8::from(*value)]),
            Json::Number(number) => {
                if let Some(unsigned) = number.as_u64() {
                    self.hash(hashing, b'u', &unsigned.to_le_bytes());
                } else if let Some(signed) = number.as_i64() {
                    self.hash(hashing, b'i', &signed.to_le_bytes());
                } else {
                    let float = number.as_f64().unwrap_or(f64::NAN);
                    self.hash(hashing, b'f', &float.to_le_bytes());
                }
            }
            Json::String(text) => self.hash(hashing, b's', text.as_bytes()),
            Json::Array(items) => {
                self.hash(hashing, b'[', &[]);
                for (index, item) in items.iter().enumerate() {
                    let below = match hashing {
                        Hashing::All => Hashing::All,
                        Hashing::FirstElement if index == 0 => Hashing::All,
                        Hashing::FirstElement | Hashing::Nothing => Hashing::Nothing,
                    };
                    self.walk(item, below, false);
                }
                self.hash(hashing, b']', &[]);
            }
            Json::Object(members) => {
                self.hash(hashing, b'{', &[]);
                // Inside an object, `FirstElement` has no meaning left: hash all or nothing.
                let below = match hashing {
                    Hashing::All => Hashing::All,
                    Hashing::FirstElement | Hashing::Nothing => Hashing::Nothing,
                };
                for (key, member) in members {
                    let key = key.as_ref();
                    if key == "cache_control" {
                        // Left out of the hash: clients move their breakpoints between turns.
                        self.walk(member, Hashing::Nothing, true);
                        continue;
                    }
                    self.hash(below, b'k', key.as_bytes());
                    match key {
                        "ttl" if in_cache_control => match member.as_str() {
                            Some(ttl) => self.long_ttl |= ttl.trim() == "1h",
                            None => self.walk(member, Hashing::Nothing, false),
                        },
                        // Text and data values hold no `cache_control`: not walked unless hashed.
                        "text" | "thinking" | "signature" | "data" if below == Hashing::Nothing => {
                        }
                        _ => self.walk(member, below, false),
                    }
                }
                self.hash(hashing, b'}', &[]);
            }
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

/// A hashed body part (`system`, or the first of `messages`), plus whether it asks for the
/// 1-hour cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PromptHash {
    /// FNV-1a of the part; `None` when nothing was hashed (an empty array).
    pub(crate) hash: Option<u64>,
    /// A `cache_control` with `ttl: "1h"` was seen in it.
    pub(crate) long_ttl: bool,
}

impl PromptHash {
    fn of(part: &Json<'_>, hashing: Hashing) -> PromptHash {
        let mut scan = Scan::new();
        scan.walk(part, hashing, false);
        PromptHash {
            hash: scan.hashed_anything.then_some(scan.hash.0),
            long_ttl: scan.long_ttl,
        }
    }
}

/// Whether a body part that may carry `cache_control` (`tools`, a top-level `cache_control`)
/// asks for the 1-hour cache.
fn asks_long_ttl(part: &Json<'_>) -> bool {
    let mut scan = Scan::new();
    // A top-level `cache_control` object is itself a cache_control.
    scan.walk(part, Hashing::Nothing, true);
    scan.long_ttl
}

/// A member of `request` that is there and not `null`.
fn present<'t, 'a>(request: &'t Json<'a>, name: &str) -> Option<&'t Json<'a>> {
    request
        .get(name)
        .filter(|value| !matches!(value, Json::Null))
}

/// The body parts a session is identified by, read from the forwarder's one parse of the body.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodySession {
    /// `metadata.user_id`, when it is a string.
    pub(crate) user_id: Option<String>,
    /// `system`.
    pub(crate) system: Option<PromptHash>,
    /// `messages`.
    pub(crate) messages: Option<PromptHash>,
    /// `ttl: "1h"` in some other `cache_control` of the body.
    pub(crate) long_ttl_elsewhere: bool,
}

impl BodySession {
    /// Reads the parts of a parsed request body (anything but an object has none): the system
    /// prompt hashed whole, the first message hashed and every message scanned for the 1-hour
    /// cache, `tools` and a top-level `cache_control` scanned for it.
    pub(crate) fn read(request: &Json<'_>) -> BodySession {
        BodySession {
            user_id: request
                .get("metadata")
                .and_then(|metadata| metadata.get("user_id"))
                .and_then(Json::as_str)
                .map(str::to_string),
            // A `null` part is an absent one, as it was for the serde walk.
            system: present(request, "system").map(|system| PromptHash::of(system, Hashing::All)),
            messages: present(request, "messages")
                .map(|messages| PromptHash::of(messages, Hashing::FirstElement)),
            long_ttl_elsewhere: ["tools", "cache_control"]
                .iter()
                .filter_map(|name| request.get(name))
                .any(asks_long_ttl),
        }
    }
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
    body: &BodySession,
) -> Option<SessionRequest> {
    if method != http::Method::POST || !path.ends_with("/messages") {
        return None;
    }
    let long_ttl = body.long_ttl_elsewhere
        || body.system.is_some_and(|part| part.long_ttl)
        || body.messages.is_some_and(|part| part.long_ttl);
    let from_header = SESSION_HEADERS.iter().find_map(|name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    });
    let (key, source) = if let Some(value) = from_header {
        (key_of(b'h', value), SessionSource::Header)
    } else if let Some(user_id) = body
        .user_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
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
