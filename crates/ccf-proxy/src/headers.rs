//! Header rewriting between client and upstream (reference section 2.5).
//!
//! Request: the client's `Authorization`, `x-api-key`, `Host` and hop-by-hop headers are dropped,
//! the endpoint's credentials are injected, then the endpoint's custom headers are applied (they
//! win). User info in the endpoint URL (`https://user:pass@relay`) is sent as
//! `Authorization: Basic` when nothing else set `Authorization` (the Go original's `net/http`
//! does the same: a token or a custom `Authorization` header wins). Everything else (`anthropic-version`, `anthropic-beta`, `user-agent`, unknown headers)
//! passes through untouched. Response: hop-by-hop headers are dropped, everything else passes.

use ccf_config::Endpoint;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether `name` describes one connection and is never forwarded (RFC 9110 section 7.6.1), or
/// is `Trailers`, which the Go original also listed: not a real header, dropped for parity.
///
/// A match on the name's text: every header of a request and of its answer is asked, and
/// comparing each with a list of `HeaderName`s (nine comparisons, two of them of text for every
/// header outside the standard set, as most of Claude Code's are) cost about 100 instructions a
/// header (issue 19).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "trailers"
    )
}

/// The client's headers for the forwarder alone: its credentials and the forwarder's host.
const CLIENT_ONLY: [HeaderName; 3] = [header::HOST, header::AUTHORIZATION, X_API_KEY];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, &[]);
}

/// Removes hop-by-hop headers, those the `Connection` header names and those in `also`.
///
/// One pass over the names present finds what goes, and only those are removed: removing each
/// name of the list by lookup (a hash and a probe each, 13 for a request and 9 more for its
/// answer's head, nearly all absent) cost about 4,000 instructions per request (issue 19).
fn remove_hop_by_hop_and(headers: &mut HeaderMap, also: &[HeaderName]) {
    let goes = |name: &HeaderName| is_hop_by_hop(name) || also.contains(name);
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|name| goes(name)).cloned().collect();
    if doomed.contains(&header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !goes(name))
            .collect();
        doomed.extend(named);
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Why an endpoint's configured header cannot be sent.
#[derive(Debug, thiserror::Error)]
#[error("endpoint header `{name}` is not a valid HTTP header")]
pub struct InvalidEndpointHeader {
    /// The header name as configured.
    pub name: String,
}

/// Turns the client's headers into the headers sent to `endpoint`.
pub fn rewrite_request_headers(
    client_headers: &HeaderMap,
    endpoint: &Endpoint,
) -> Result<HeaderMap, InvalidEndpointHeader> {
    let mut headers = client_headers.clone();
    remove_hop_by_hop_and(&mut headers, &CLIENT_ONLY);
    if let Some(token) = endpoint.token.as_ref().filter(|token| !token.is_empty()) {
        let value =
            HeaderValue::try_from(bearer(token.expose())).map_err(|_| InvalidEndpointHeader {
                name: "authorization (token)".into(),
            })?;
        headers.insert(header::AUTHORIZATION, sensitive(value));
    }
    if let Some(key) = endpoint.api_key.as_ref().filter(|key| !key.is_empty()) {
        let value = HeaderValue::try_from(key.expose()).map_err(|_| InvalidEndpointHeader {
            name: "x-api-key (api-key)".into(),
        })?;
        headers.insert(X_API_KEY, sensitive(value));
    }
    for (name, value) in &endpoint.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| InvalidEndpointHeader { name: name.clone() })?;
        let header_value = HeaderValue::try_from(value.as_str())
            .map_err(|_| InvalidEndpointHeader { name: name.clone() })?;
        let header_value = if header_name == header::AUTHORIZATION || header_name == X_API_KEY {
            sensitive(header_value)
        } else {
            header_value
        };
        headers.insert(header_name, header_value);
    }
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(value) = url_basic_auth(&endpoint.url) {
            headers.insert(header::AUTHORIZATION, sensitive(value));
        }
    }
    Ok(headers)
}

/// `Bearer <token>`, written without the formatting machinery (every request).
fn bearer(token: &str) -> String {
    let mut value = String::with_capacity("Bearer ".len() + token.len());
    value.push_str("Bearer ");
    value.push_str(token);
    value
}

/// `Basic base64(user:password)` from a URL's user info (percent-decoded, as Go does), if any.
fn url_basic_auth(url: &url::Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let credentials = format!(
        "{}:{}",
        percent_decode(url.username()),
        percent_decode(url.password().unwrap_or_default())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    HeaderValue::try_from(format!("Basic {encoded}")).ok()
}

/// Decodes `%XX` escapes (user info is kept percent-encoded by the URL parser).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The `x-api-key` header.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The response header carrying the forwarder's request id.
pub const X_CCF_REQUEST_ID: HeaderName = HeaderName::from_static("x-ccf-request-id");

fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_config::Secret;
    use std::time::Duration;

    fn endpoint(token: Option<&str>, api_key: Option<&str>, headers: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            name: "e".into(),
            url: url::Url::parse("https://relay.example/api").unwrap(),
            priority: 1,
            group: "g".into(),
            group_priority: 1,
            token: token.map(Secret::new),
            api_key: api_key.map(Secret::new),
            timeout: Duration::from_secs(5),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            supports_count_tokens: false,
            model_map: ccf_config::ModelMap::default(),
        }
    }

    fn client_headers() -> HeaderMap {
        header_map(&[
            ("host", "127.0.0.1:8087"),
            ("authorization", "Bearer client-secret"),
            ("x-api-key", "client-key"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "a,b,c"),
            ("user-agent", "claude-cli/2"),
            ("x-unknown", "kept"),
            ("connection", "keep-alive, x-per-hop"),
            ("x-per-hop", "dropped"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
        ])
    }

    /// The headers `pairs` name, in order, repeated names appended.
    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_never_reach_upstream() {
        let out =
            rewrite_request_headers(&client_headers(), &endpoint(Some("tok"), None, &[])).unwrap();
        assert_eq!(out["authorization"], "Bearer tok");
        assert!(out.get("x-api-key").is_none());
        assert!(out.get("host").is_none());
        for dropped in [
            "connection",
            "x-per-hop",
            "keep-alive",
            "proxy-authorization",
            "te",
            "upgrade",
        ] {
            assert!(out.get(dropped).is_none(), "{dropped} must be dropped");
        }
        assert_eq!(out["anthropic-version"], "2023-06-01");
        assert_eq!(out["anthropic-beta"], "a,b,c");
        assert_eq!(out["user-agent"], "claude-cli/2");
        assert_eq!(out["x-unknown"], "kept");
    }

    #[test]
    fn exactly_the_hop_by_hop_names_are_dropped() {
        let dropped = [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "trailers",
        ];
        let kept = [
            "connections",
            "keep-alive-x",
            "proxy-authentication",
            "tee",
            "t",
            "trailer-x",
            "transfer-encodings",
            "upgrades",
            "content-length",
            "x-upgrade",
            "host",
        ];
        let mut headers = HeaderMap::new();
        for name in dropped.iter().chain(&kept) {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut expected = kept.to_vec();
        expected.sort_unstable();
        assert_eq!(left, expected);
    }

    #[test]
    fn every_value_of_a_dropped_header_goes_and_nothing_else() {
        let mut headers = header_map(&[
            ("connection", "x-first, keep-alive"),
            ("connection", " X-Second "),
            ("x-first", "one"),
            ("x-first", "two"),
            ("x-second", "three"),
            ("trailers", "legacy"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-kept", "a"),
            ("x-kept", "b"),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("content-type".to_string(), "application/json".to_string()),
                ("x-kept".to_string(), "a".to_string()),
                ("x-kept".to_string(), "b".to_string()),
            ]
        );
    }

    #[test]
    fn both_credentials_are_injected_and_custom_headers_win() {
        let out = rewrite_request_headers(
            &client_headers(),
            &endpoint(
                Some("tok"),
                Some("key"),
                &[("Authorization", "Bearer custom"), ("X-Extra", "1")],
            ),
        )
        .unwrap();
        assert_eq!(out["authorization"], "Bearer custom");
        assert_eq!(out["x-api-key"], "key");
        assert_eq!(out["x-extra"], "1");
        assert!(out["authorization"].is_sensitive());
    }

    #[test]
    fn an_endpoint_without_credentials_sends_none() {
        let out = rewrite_request_headers(&client_headers(), &endpoint(None, None, &[])).unwrap();
        assert!(out.get("authorization").is_none());
        assert!(out.get("x-api-key").is_none());
    }

    #[test]
    fn an_invalid_configured_header_is_an_error_naming_it() {
        let error = rewrite_request_headers(
            &HeaderMap::new(),
            &endpoint(None, None, &[("bad name", "v")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("bad name"));
    }

    #[test]
    fn url_user_info_is_sent_as_basic_auth_unless_authorization_is_set() {
        let mut with_user_info = endpoint(None, Some("key"), &[]);
        with_user_info.url = url::Url::parse("https://us%40er:p%3Ass@relay.example/api").unwrap();
        let out = rewrite_request_headers(&client_headers(), &with_user_info).unwrap();
        // base64("us@er:p:ss")
        assert_eq!(out["authorization"], "Basic dXNAZXI6cDpzcw==");
        assert!(out["authorization"].is_sensitive());
        assert_eq!(out["x-api-key"], "key");
        with_user_info.token = Some(Secret::new("tok"));
        let out = rewrite_request_headers(&client_headers(), &with_user_info).unwrap();
        assert_eq!(out["authorization"], "Bearer tok");
    }
}
