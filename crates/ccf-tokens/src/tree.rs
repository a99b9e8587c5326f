//! [`Json`]: a request body parsed once into a tree that borrows its strings from the body.
//!
//! `serde_json::Value` copies every key and string into its own `String` and every object into
//! a `BTreeMap`; a request is only read, so this tree keeps the body's text where it can
//! (strings without escapes) and objects as plain lists in document order. The forwarder parses
//! each request body into it once at admission and reads everything it needs from it: the
//! request's fields, its session, and the input estimate of [`crate::estimate_parsed_request`]
//! (issue 19: the body used to be parsed twice, once more when the answer ended).
//!
//! [`Node`] is what the estimate reads: it is implemented for this tree and for
//! `serde_json::Value`, and the two are checked to give the same estimate (tests).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

/// One JSON value whose strings borrow from the parsed text when they have no escapes.
#[derive(Debug)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it (an unsigned, a negative or a float).
    Number(Number),
    /// A string, borrowed unless it had escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// Members in document order, duplicates included (the last one counts, as in
    /// `serde_json::Value`).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON text; strings without escapes borrow from `text`.
    pub fn parse(text: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        from_json_bytes(text)
    }

    /// The string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// The boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(value) => Some(*value),
            _ => None,
        }
    }

    /// The items, when it is an array.
    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// An object's member (the last one of that name); `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members
                .iter()
                .rev()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value),
            _ => None,
        }
    }
}

/// `serde_json::from_slice`, with the text's UTF-8 checked once, up front, rather than string by
/// string: parsed from bytes, `serde_json` validates every string and key it reads on its own
/// (about 100 instructions each, a third of a short string's cost), while one check of the whole
/// text runs word by word over ASCII. Text that is not UTF-8 is parsed from bytes as before, so
/// the error is the one `serde_json` reports.
pub(crate) fn from_json_bytes<'a, T: Deserialize<'a>>(text: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(text) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(text),
    }
}

/// What the estimate reads of a JSON value.
pub(crate) trait Node: Sized {
    /// The string, when it is one.
    fn as_str(&self) -> Option<&str>;
    /// The items, when it is an array.
    fn as_array(&self) -> Option<&[Self]>;
    /// Whether it is an object.
    fn is_object(&self) -> bool;
    /// Whether it is `null`.
    fn is_null(&self) -> bool;
    /// An object's member (the last one of that name); `None` for anything else.
    fn get(&self, key: &str) -> Option<&Self>;
    /// An object's members, one per name (the last one), ordered by name as in
    /// `serde_json::Value` (the estimate adds floats in this order); nothing for anything else.
    fn members(&self) -> Vec<(&str, &Self)>;
    /// The compact JSON text of the value, as `serde_json` writes it (member order aside).
    fn serialized(&self) -> String;
}

impl Node for Json<'_> {
    fn as_str(&self) -> Option<&str> {
        Json::as_str(self)
    }

    fn as_array(&self) -> Option<&[Self]> {
        Json::as_array(self)
    }

    fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    fn get(&self, key: &str) -> Option<&Self> {
        Json::get(self, key)
    }

    fn members(&self) -> Vec<(&str, &Self)> {
        match self {
            Json::Object(members) => {
                let mut unique: Vec<(&str, &Self)> = unique_members(members).collect();
                unique.sort_unstable_by_key(|(name, _)| *name);
                unique
            }
            _ => Vec::new(),
        }
    }

    fn serialized(&self) -> String {
        // Serializing a tree of strings, numbers and containers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An object's members without those a later member of the same name replaces.
fn unique_members<'t, 'a>(
    members: &'t [(Cow<'a, str>, Json<'a>)],
) -> impl Iterator<Item = (&'t str, &'t Json<'a>)> {
    members
        .iter()
        .enumerate()
        .filter(|(index, (name, _))| !members[index + 1..].iter().any(|(later, _)| later == name))
        .map(|(_, (name, value))| (name.as_ref(), value))
}

impl Node for Value {
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }

    fn as_array(&self) -> Option<&[Self]> {
        Value::as_array(self).map(Vec::as_slice)
    }

    fn is_object(&self) -> bool {
        Value::is_object(self)
    }

    fn is_null(&self) -> bool {
        Value::is_null(self)
    }

    fn get(&self, key: &str) -> Option<&Self> {
        Value::as_object(self).and_then(|members| members.get(key))
    }

    fn members(&self) -> Vec<(&str, &Self)> {
        Value::as_object(self)
            .map(|members: &Map<String, Value>| {
                members
                    .iter()
                    .map(|(name, value)| (name.as_str(), value))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn serialized(&self) -> String {
        self.to_string()
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(value) => serializer.serialize_bool(*value),
            Json::Number(number) => number.serialize(serializer),
            Json::String(text) => serializer.serialize_str(text),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(None)?;
                for (name, value) in unique_members(members) {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json<'de>, E> {
        // As `serde_json::Value`: a float that is not finite is `null`.
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value.to_string())))
    }

    fn visit_string<E>(self, value: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(name) = map.next_key_seed(NameSeed)? {
            members.push((name, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// A member name, borrowed when it has no escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked once up front or string by string, a text parses to the same value, and a text
    /// that is not UTF-8 fails with the error `serde_json` gives when it reads bytes.
    #[test]
    fn text_checked_once_parses_and_fails_as_bytes_do() {
        let valid =
            b"{\"a\":\"caf\\u00e9 \\\"x\\\"\",\"b\":[\"\xc3\xa9\",1,-2.5,null,true],\"c\":{}}";
        let once: Value = from_json_bytes(valid).expect("valid JSON");
        assert_eq!(
            once,
            serde_json::from_slice::<Value>(valid).expect("valid JSON")
        );
        for invalid in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"a\":1,\xc3}",
            b"[\"\xe2\x82\"]",
            b"{\"a\":\"ok\"",
        ] {
            let once = from_json_bytes::<Value>(invalid).expect_err("invalid");
            let bytes = serde_json::from_slice::<Value>(invalid).expect_err("invalid");
            assert_eq!(once.to_string(), bytes.to_string());
        }
    }
}
