//! The credentials the secrets tests configure and send, and the search for them in any output.
//!
//! Shared by the end-to-end secrets test (the app in process: logs, API answers, `Debug`, the
//! terminal UI) and `bins/cc-forwarder/tests/secrets_logging.rs` (the real binary's console and
//! file logs).
//!
//! Every credential carries three markers, and none may appear in any output:
//! - a start marker, its first [`START_MARKER_CHARS`] characters: `mask_secret` shows at most the
//!   first four characters of a credential, so any longer leaked prefix contains the whole marker;
//! - `SECRET` in the middle;
//! - an end marker, its last [`END_MARKER_CHARS`] characters, so that a leaked suffix (a
//!   "last four" style mask included) is caught too.
//!
//! The markers contain `~`, which request ids, base62 message ids, timestamps and hex digests never
//! do: a marker found in an output is a leak, not chance. Each credential has its own start and end
//! marker, so a failure names which one leaked; the wrong credentials a client sends share the
//! start marker of the real one they imitate and have their own end marker.

/// Length of the start marker: one more than `mask_secret` ever shows.
pub const START_MARKER_CHARS: usize = 5;
/// Length of the end marker.
pub const END_MARKER_CHARS: usize = 4;
/// The marker in the middle of every credential.
pub const MIDDLE_MARKER: &str = "SECRET";

/// `token` of the endpoint that answers.
pub const ENDPOINT_TOKEN: &str = "Ka~1~endpoint-token-SECRET-~e1Z";
/// `api-key` of the endpoint that answers.
pub const ENDPOINT_API_KEY: &str = "Kb~2~endpoint-apikey-SECRET-~e2Z";
/// `token` of the endpoint whose upstream refuses it.
pub const REJECTED_TOKEN: &str = "Kc~3~rejected-token-SECRET-~e3Z";
/// `auth.token` (the legacy single inbound token).
pub const INBOUND_LEGACY: &str = "Kd~4~inbound-legacy-SECRET-~e4Z";
/// `auth.tokens[alice]`.
pub const INBOUND_ALICE: &str = "Ke~5~inbound-alice-SECRET-~e5Z";
/// `web.auth_token`.
pub const WEB_TOKEN: &str = "Kf~6~web-admin-token-SECRET-~e6Z";
/// `usage_tracking.database.password`.
pub const DATABASE_PASSWORD: &str = "Kg~7~db-password-SECRET-~e7Z";
/// `proxy.password`.
pub const PROXY_PASSWORD: &str = "Kh~8~proxy-password-SECRET-~e8Z";
/// The password in the user info of `proxy.url`.
pub const PROXY_URL_PASSWORD: &str = "Ki~9~proxy-url-password-SECRET-~e9Z";
/// The password in the user info of an endpoint's `url`.
pub const ENDPOINT_URL_PASSWORD: &str = "Kj~0~endpoint-url-password-SECRET-~e0Z";
/// The value of an endpoint's custom header with a credential name (`x-relay-token`).
pub const RELAY_HEADER: &str = "Kk~1~relay-header-SECRET-~f1Z";
/// `webhooks[].secret` (the signing key).
pub const WEBHOOK_SECRET: &str = "Kl~2~webhook-secret-SECRET-~f2Z";
/// The password in the user info of a `webhooks[].url`.
pub const WEBHOOK_URL_PASSWORD: &str = "Km~3~webhook-url-password-SECRET-~f3Z";
/// A wrong inbound key that looks like alice's (same start, another end).
pub const WRONG_ALICE: &str = "Ke~5~inbound-alice-SECRET-~w5Z";
/// A wrong inbound bearer token that looks like the legacy one.
pub const WRONG_LEGACY: &str = "Kd~4~inbound-legacy-SECRET-~w4Z";
/// A wrong admin token that looks like `web.auth_token`.
pub const WRONG_WEB_TOKEN: &str = "Kf~6~web-admin-token-SECRET-~w6Z";

/// Every credential, with what it is.
pub const CREDENTIALS: &[(&str, &str)] = &[
    ("endpoint token", ENDPOINT_TOKEN),
    ("endpoint api-key", ENDPOINT_API_KEY),
    ("rejected endpoint token", REJECTED_TOKEN),
    ("auth.token", INBOUND_LEGACY),
    ("auth.tokens[alice]", INBOUND_ALICE),
    ("web.auth_token", WEB_TOKEN),
    ("database password", DATABASE_PASSWORD),
    ("proxy.password", PROXY_PASSWORD),
    ("proxy.url password", PROXY_URL_PASSWORD),
    ("endpoint url password", ENDPOINT_URL_PASSWORD),
    ("x-relay-token header", RELAY_HEADER),
    ("webhooks[].secret", WEBHOOK_SECRET),
    ("webhooks[].url password", WEBHOOK_URL_PASSWORD),
    ("wrong inbound key", WRONG_ALICE),
    ("wrong inbound bearer token", WRONG_LEGACY),
    ("wrong admin token", WRONG_WEB_TOKEN),
];

/// The start and end markers of `credential`.
pub fn markers(credential: &str) -> [&str; 2] {
    [
        &credential[..START_MARKER_CHARS],
        &credential[credential.len() - END_MARKER_CHARS..],
    ]
}

/// A marker found in an output.
#[derive(Debug)]
pub struct Leak {
    /// The marker.
    pub marker: String,
    /// Which credentials carry it.
    pub credentials: Vec<&'static str>,
    /// Byte offset of the marker in the text.
    pub at: usize,
}

/// The first marker of any credential found in `text`, if any.
pub fn find_leak(text: &str) -> Option<Leak> {
    let mut every_marker = vec![MIDDLE_MARKER];
    for (_, value) in CREDENTIALS {
        every_marker.extend(markers(value));
    }
    every_marker
        .into_iter()
        .filter_map(|marker| text.find(marker).map(|at| (marker, at)))
        .min_by_key(|(_, at)| *at)
        .map(|(marker, at)| Leak {
            marker: marker.to_string(),
            credentials: CREDENTIALS
                .iter()
                .filter(|(_, value)| value.contains(marker))
                .map(|(what, _)| *what)
                .collect(),
            at,
        })
}

/// Fails the test when `text`, read from `place`, holds a marker of any credential; the message
/// shows the text around it.
#[track_caller]
pub fn assert_clean(place: &str, text: &str) {
    let Some(leak) = find_leak(text) else {
        return;
    };
    let before = text[..leak.at]
        .char_indices()
        .rev()
        .nth(120)
        .map_or(0, |(index, _)| index);
    let after = (leak.at + leak.marker.len() + 60).min(text.len());
    let after = (after..=text.len())
        .find(|index| text.is_char_boundary(*index))
        .unwrap_or(text.len());
    panic!(
        "a secret leaked in {place}: marker `{}` of {:?}: …{}…",
        leak.marker,
        leak.credentials,
        &text[before..after]
    );
}
