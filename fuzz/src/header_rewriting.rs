//! Oracle for the `header_rewriting` target: `ccf_proxy::headers::rewrite_request_headers` (and
//! `remove_hop_by_hop` under it) on arbitrary client headers and endpoint settings.
//!
//! Properties: no panic; on success the upstream request carries no hop-by-hop header and no
//! header the client's `Connection` named, no `Host`, none of the client's credentials, exactly
//! the endpoint's credentials (unless an endpoint header overrides them), every endpoint header
//! as configured, and every other client header unchanged (all values, in order). An endpoint
//! header that is not valid HTTP is an error naming it.
//!
//! Input format: `\n`-separated lines. `T<token>` sets the endpoint's bearer token, `K<key>` its
//! API key, `+<name>:<value>` adds an endpoint header; any other line is a client header
//! `<name>:<value>`, kept only if `http` accepts the name and value (as a server would).

use ccf_config::{Endpoint, Secret};
use ccf_proxy::headers::{remove_hop_by_hop, rewrite_request_headers};
use http::header::{HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [&str; 9] = [
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

/// Runs one input through the oracle; panics on a property violation.
pub fn check(data: &[u8]) {
    let mut client = HeaderMap::new();
    let mut token: Option<String> = None;
    let mut api_key: Option<String> = None;
    let mut custom: Vec<(String, String)> = Vec::new();
    for line in data.split(|&byte| byte == b'\n') {
        match line.split_first() {
            Some((b'T', rest)) => token = Some(String::from_utf8_lossy(rest).into_owned()),
            Some((b'K', rest)) => api_key = Some(String::from_utf8_lossy(rest).into_owned()),
            Some((b'+', rest)) => {
                let text = String::from_utf8_lossy(rest);
                let (name, value) = text.split_once(':').unwrap_or((&text, ""));
                custom.push((name.to_string(), value.to_string()));
            }
            _ => {
                let colon = line.iter().position(|&byte| byte == b':');
                let (name, value) = match colon {
                    Some(at) => (&line[..at], &line[at + 1..]),
                    None => (line, &[][..]),
                };
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                {
                    client.append(name, value);
                }
            }
        }
    }
    // Custom headers are applied in name order by the config loader; keep the last of a name.
    custom.sort_by(|a, b| a.0.cmp(&b.0));

    // `remove_hop_by_hop` alone.
    let mut stripped = client.clone();
    remove_hop_by_hop(&mut stripped);
    for name in HOP_BY_HOP {
        assert!(stripped.get(name).is_none(), "{name} survived");
    }

    let endpoint = Endpoint {
        name: "fuzz".into(),
        url: url::Url::parse("https://upstream.invalid/").expect("a valid URL"),
        priority: 1,
        group: "fuzz".into(),
        group_priority: 1,
        token: token.clone().map(Secret::new),
        api_key: api_key.clone().map(Secret::new),
        timeout: std::time::Duration::from_secs(1),
        headers: custom.clone(),
        supports_count_tokens: false,
        model_map: ccf_config::ModelMap::default(),
    };
    let out = match rewrite_request_headers(&client, &endpoint) {
        Ok(out) => out,
        Err(error) => {
            let message = error.to_string();
            let named = custom
                .iter()
                .any(|(name, _)| message.contains(name.as_str()))
                || message.contains("(token)")
                || message.contains("(api-key)");
            assert!(named, "the error does not name the bad header: {message}");
            return;
        }
    };

    let custom_names: Vec<HeaderName> = custom
        .iter()
        .map(|(name, _)| HeaderName::from_bytes(name.as_bytes()).expect("accepted above"))
        .collect();
    let is_custom = |name: &HeaderName| custom_names.contains(name);
    let named_by_connection: Vec<HeaderName> = client
        .get_all("connection")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();

    for name in HOP_BY_HOP.iter().chain(&["host"]) {
        let name = HeaderName::from_static(name);
        if !is_custom(&name) {
            assert!(out.get(&name).is_none(), "{name} reached upstream");
        }
    }
    for name in &named_by_connection {
        if !is_custom(name) {
            assert!(
                out.get(name).is_none(),
                "{name}, named by Connection, reached upstream"
            );
        }
    }
    // Credentials: exactly the endpoint's.
    for (name, expected) in [
        (
            "authorization",
            token
                .as_deref()
                .filter(|token| !token.is_empty())
                .map(|token| format!("Bearer {token}")),
        ),
        (
            "x-api-key",
            api_key
                .as_deref()
                .filter(|key| !key.is_empty())
                .map(str::to_string),
        ),
    ] {
        let header = HeaderName::from_static(name);
        if is_custom(&header) {
            continue;
        }
        let values: Vec<&[u8]> = out
            .get_all(&header)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        match &expected {
            Some(expected) => {
                assert_eq!(
                    values,
                    vec![expected.as_bytes()],
                    "{name} is not the endpoint's"
                );
                assert!(
                    out[&header].is_sensitive(),
                    "{name} is not marked sensitive"
                );
            }
            None => assert!(values.is_empty(), "the client's {name} reached upstream"),
        }
    }
    // Endpoint headers as configured (the last one of a name wins).
    for (name, value) in &custom {
        let last = custom
            .iter()
            .rev()
            .find(|(other, _)| {
                HeaderName::from_bytes(other.as_bytes()).ok()
                    == HeaderName::from_bytes(name.as_bytes()).ok()
            })
            .map(|(_, value)| value)
            .unwrap_or(value);
        let values: Vec<&[u8]> = out
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(
            values,
            vec![last.as_bytes()],
            "endpoint header {name} not applied"
        );
    }
    // Everything else passes through unchanged.
    for name in client.keys() {
        let dropped = HOP_BY_HOP.contains(&name.as_str())
            || ["host", "authorization", "x-api-key"].contains(&name.as_str())
            || named_by_connection.contains(name)
            || is_custom(name);
        if dropped {
            continue;
        }
        let before: Vec<&HeaderValue> = client.get_all(name).iter().collect();
        let after: Vec<&HeaderValue> = out.get_all(name).iter().collect();
        assert_eq!(before, after, "client header {name} changed on the way");
    }
}
