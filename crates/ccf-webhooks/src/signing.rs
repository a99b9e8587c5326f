//! The `x-ccf-signature` header: `sha256=` and the lowercase hex HMAC-SHA256 of the exact body
//! bytes, keyed with the webhook's `secret`. A receiver recomputes it over the raw body it read
//! (before any JSON parsing) and compares in constant time; see `docs/webhooks.md`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-ccf-signature";

/// The header carrying the event name.
pub const EVENT_HEADER: &str = "x-ccf-event";

/// The signature header's value for `body` under `secret`: `sha256=<64 hex digits>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length (a longer one is hashed first): no input reaches the
    // error, which exists for fixed-key MACs of the same trait.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of every length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut value = String::with_capacity(7 + digest.len() * 2);
    value.push_str("sha256=");
    for byte in digest {
        value.push(hex_digit(byte >> 4));
        value.push(hex_digit(byte & 0x0f));
    }
    value
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_different_body_or_secret_gives_a_different_signature() {
        let body = br#"{"event":"quota_low"}"#;
        let base = signature("secret-one", body);
        assert_eq!(base.len(), 7 + 64);
        assert_ne!(base, signature("secret-two", body));
        assert_ne!(base, signature("secret-one", br#"{"event":"quota_lows"}"#));
    }
}
