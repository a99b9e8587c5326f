//! Shared vocabulary of cc-forwarder.
//!
//! This crate owns the small value types every other crate speaks in: [`Secret`], a wrapper that
//! keeps tokens, API keys and passwords from ever being printed, [`mask_secret`], the one
//! masking rule used wherever a credential has to be shown to a person, and [`Usage`], the token
//! counts an upstream reports for one request. It does no IO and knows nothing about
//! configuration files, HTTP or storage.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `bits` as 16 lowercase hex digits (ASCII), written straight into an array: ids are written
/// for every request (a response header, a usage row, a record's session), and `{:016x}`
/// through the formatting machinery costs several times this (about 450 instructions, issue
/// 19).
pub fn hex16(bits: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'0'; 16];
    for (index, byte) in text.iter_mut().enumerate() {
        let shift = 60 - 4 * index;
        *byte = HEX[((bits >> shift) & 0xf) as usize];
    }
    text
}

/// [`hex16`]'s digits as a `String`: the 16 bytes copied at once, as [`write_hex16`] writes
/// them, rather than pushed one `char` at a time.
pub fn hex16_string(bits: u64) -> String {
    // Only ASCII was written: the fallback is never taken.
    String::from_utf8(hex16(bits).to_vec()).unwrap_or_default()
}

/// Writes [`hex16`]'s digits to a formatter.
pub fn write_hex16(f: &mut fmt::Formatter<'_>, bits: u64) -> fmt::Result {
    // Only ASCII was written.
    f.write_str(std::str::from_utf8(&hex16(bits)).map_err(|_| fmt::Error)?)
}

/// A value that must never appear unmasked in logs, `Debug` output or API answers.
///
/// `Debug` and `Display` print a masked form. `Serialize` writes the real value on purpose: the
/// configuration loader round-trips values through figment, and masking there would corrupt them.
/// Anything shown to a person must go through [`Secret::masked`] instead.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the few places that must send it (an upstream request header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The masked form shown to people: see [`mask_secret`].
    pub fn masked(&self) -> String {
        mask_secret(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Masks a credential for display: at most the first four characters of a value of twelve or more
/// characters stay visible (enough to tell two keys apart), the rest is replaced by `***`. Shorter
/// values are fully hidden, empty ones print as empty.
pub fn mask_secret(value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    let visible: String = if value.chars().count() >= 12 {
        value.chars().take(4).collect()
    } else {
        String::new()
    };
    format!("{visible}***")
}

/// Secrets at least this long are swept wherever they occur, even inside longer text.
pub const SWEEP_SUBSTRING_MIN_CHARS: usize = 6;

/// Replaces every configured secret found in `text` (JSON or CSV an API is about to send) by its
/// masked form.
///
/// The rule, and why: a secret of [`SWEEP_SUBSTRING_MIN_CHARS`] characters or more is replaced
/// wherever it occurs, since such a string inside other text is almost surely the secret itself.
/// A shorter secret (`abc`, `on`) is too likely to be part of ordinary words, dates or numbers to
/// be cut out of arbitrary text, so it is replaced only where it is a whole JSON string *value*:
/// `"abc"` not followed by `:` (that would be an object key, part of the answer's shape) and not
/// opened by an escaped quote (that would be inside another string).
pub fn sweep_secrets(mut text: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        let masked = mask_secret(secret);
        if secret.chars().count() >= SWEEP_SUBSTRING_MIN_CHARS {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), &masked);
            }
            // The form the secret takes inside a JSON string, when escaping changes it.
            let escaped = json_string(secret);
            let inner = &escaped[1..escaped.len() - 1];
            if inner != secret && text.contains(inner) {
                text = text.replace(inner, &masked);
            }
        } else {
            text = replace_json_string_values(&text, &json_string(secret), &json_string(&masked));
        }
    }
    text
}

/// `value` as a quoted JSON string, escaped the way `serde_json` writes it.
fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    push_json_string(&mut out, value);
    out
}

/// Appends `value` as a quoted JSON string, escaped the way `serde_json` writes it (for JSON
/// written by hand on a hot path, such as a usage row's attempts trail). Text with nothing to
/// escape, the usual case, is copied as it is.
pub fn push_json_string(out: &mut String, value: &str) {
    if value
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Replaces each occurrence of the quoted JSON string `quoted` that is a whole value (not a key,
/// not inside another string) by `replacement`.
fn replace_json_string_values(text: &str, quoted: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(quoted) {
        let before = &rest[..at];
        let after = &rest[at + quoted.len()..];
        let escaped_open = before.ends_with('\\') || (before.is_empty() && out.ends_with('\\'));
        let is_key = after.trim_start().starts_with(':');
        out.push_str(before);
        if escaped_open || is_key {
            out.push_str(quoted);
        } else {
            out.push_str(replacement);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The token usage an upstream reported for one request (Anthropic `usage` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// `input_tokens`.
    pub input_tokens: u64,
    /// `output_tokens`.
    pub output_tokens: u64,
    /// `cache_creation_input_tokens`: all cache writes, whatever their TTL.
    pub cache_creation_input_tokens: u64,
    /// `cache_read_input_tokens`.
    pub cache_read_input_tokens: u64,
    /// `cache_creation.ephemeral_5m_input_tokens`: cache writes with the 5-minute TTL.
    pub cache_creation_5m_input_tokens: u64,
    /// `cache_creation.ephemeral_1h_input_tokens`: cache writes with the 1-hour TTL.
    pub cache_creation_1h_input_tokens: u64,
    /// `server_tool_use.web_search_requests`.
    pub web_search_requests: u64,
    /// `service_tier`, when reported.
    pub service_tier: Option<String>,
}

impl Usage {
    /// Whether no token at all was reported.
    pub fn is_empty(&self) -> bool {
        self.input_tokens == 0
            && self.output_tokens == 0
            && self.cache_creation_input_tokens == 0
            && self.cache_read_input_tokens == 0
    }

    /// Input, output and both cache counts added up.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_replaces_long_secrets_anywhere_and_short_ones_as_whole_values() {
        let secrets = vec!["sk-long-secret-1".to_string(), "abc".to_string()];
        let text = r#"{"abc":"abc","reason":"upstream said sk-long-secret-1 abc","list":["abc"],"quoted":"say \"abc\""}"#;
        let swept = sweep_secrets(text.to_string(), &secrets);
        assert_eq!(
            swept,
            r#"{"abc":"***","reason":"upstream said sk-l*** abc","list":["***"],"quoted":"say \"abc\""}"#
        );
    }

    #[test]
    fn json_string_matches_serde_json() {
        for value in ["plain", "q\"b\\s", "nl\n\t\r\u{1}\u{8}\u{c}", "ünï"] {
            assert_eq!(
                json_string(value),
                serde_json::to_string(value).expect("json")
            );
        }
    }

    #[test]
    fn sweep_handles_secrets_that_json_escapes() {
        let secrets = vec!["pa\"ss\\word".to_string()];
        let text = serde_json::json!({"reason": "got pa\"ss\\word back"}).to_string();
        let swept = sweep_secrets(text, &secrets);
        assert!(!swept.contains("ss\\\\word"), "{swept}");
        assert!(swept.contains("***"), "{swept}");
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("sk-ant-api03-very-secret-value");
        assert_eq!(format!("{secret}"), "sk-a***");
        assert_eq!(format!("{secret:?}"), "Secret(sk-a***)");
        assert!(!format!("{secret:?}").contains("secret-value"));
    }

    #[test]
    fn short_values_are_fully_hidden() {
        assert_eq!(mask_secret("abc"), "***");
        assert_eq!(mask_secret(""), "");
    }

    #[test]
    fn serde_round_trips_the_real_value() {
        let secret: Secret = serde_json::from_str("\"tok\"").unwrap();
        assert_eq!(secret.expose(), "tok");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"tok\"");
    }
}
