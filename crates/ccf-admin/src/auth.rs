//! Who may use the admin API: the bearer token policy and the `Origin` check of state-changing
//! routes.
//!
//! Policy: on a loopback `web.host` the API is open unless `web.auth_token` is set; on any other
//! host every `/api/v1` route needs `Authorization: Bearer <token>` with `web.auth_token`, else
//! the inbound `auth.token`; with neither the admin listener refuses to start. Tokens are
//! compared in constant time.

use ccf_config::{is_loopback_host, Config, Secret};
use http::{header, HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AdminError;

/// The token the API requires, if any.
#[derive(Debug, Clone)]
pub(crate) struct AuthPolicy {
    token: Option<Secret>,
}

fn non_empty(secret: &Option<Secret>) -> Option<Secret> {
    secret
        .clone()
        .filter(|secret| !secret.expose().trim().is_empty())
}

impl AuthPolicy {
    /// The policy for `config`, or why the admin listener must not start.
    pub(crate) fn from_config(config: &Config) -> Result<AuthPolicy, AdminError> {
        if let Some(token) = non_empty(&config.web.auth_token) {
            return Ok(AuthPolicy { token: Some(token) });
        }
        if is_loopback_host(&config.web.host) {
            return Ok(AuthPolicy { token: None });
        }
        match non_empty(&config.auth.token) {
            Some(token) => Ok(AuthPolicy { token: Some(token) }),
            None => Err(AdminError::NoToken {
                host: config.web.host.clone(),
            }),
        }
    }

    /// Whether a token is required.
    pub(crate) fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The secret, for masking sweeps.
    pub(crate) fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Checks the request's credentials. `query_token` is the `access_token` query parameter,
    /// accepted only where a browser cannot set headers (EventSource, download links).
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .or(query_token);
        match presented {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin API needs a token: send `Authorization: Bearer <web.auth_token>`",
            )),
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                Ok(())
            }
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin token is wrong",
            )),
        }
    }
}

/// The `Host` a request names must be one this server is known by: `localhost`, an IP literal
/// (IPv4, or bracketed IPv6), or a name in `web.allowed_hosts`; with or without a port. Any
/// other name means a page reached us through a name that merely resolves here (DNS
/// rebinding): such a page is same-origin with itself and passes the `Origin` check, so the
/// name itself is what gives it away. Only `localhost` among loopback names is accepted: it is
/// the name the dashboard is opened by, and `*.localhost` adds nothing but surface. A request
/// without any `Host` (non-browser HTTP/1.0 clients) passes: browsers always send one.
pub(crate) fn check_host(
    headers: &HeaderMap,
    authority: Option<&str>,
    allowed_hosts: &[String],
) -> Result<(), ApiError> {
    let refused = |why: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!(
                "{why}: the admin API answers only to localhost, IP addresses and the names in \
                 web.allowed_hosts"
            ),
        ))
    };
    let host = match headers.get(header::HOST) {
        Some(value) => match value.to_str() {
            Ok(text) => Some(text),
            Err(_) => return refused("unreadable Host header".into()),
        },
        None => authority,
    };
    let Some(host) = host else {
        return Ok(());
    };
    let host = host.trim();
    if host_is_allowed(host, allowed_hosts) {
        Ok(())
    } else {
        refused(format!("host `{host}` refused"))
    }
}

/// Whether `host` (a `Host` header value, port optional) is one [`check_host`] accepts.
fn host_is_allowed(host: &str, allowed_hosts: &[String]) -> bool {
    let port_ok = |port: &str| port.is_empty() || port.parse::<u16>().is_ok();
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((address, rest)) = bracketed.split_once(']') else {
            return false;
        };
        let port = match rest.strip_prefix(':') {
            Some(port) if !port.is_empty() => port,
            Some(_) => return false,
            None if rest.is_empty() => "",
            None => return false,
        };
        return port_ok(port) && address.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) if !port.is_empty() => (name, port),
        Some(_) => return false,
        None => (host, ""),
    };
    if !port_ok(port) || name.is_empty() {
        return false;
    }
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// A state-changing request from a browser must come from a page of this server: its `Origin`
/// (when present) must name the same host and port as its `Host`. Non-browser clients send no
/// `Origin` and pass.
pub(crate) fn check_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refused = |why: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("cross-origin request refused: {why}"),
        ))
    };
    let Ok(origin) = origin.to_str() else {
        return refused("unreadable Origin header");
    };
    let Ok(origin_url) = url::Url::parse(origin) else {
        return refused("Origin is not a URL");
    };
    let (Some(origin_host), Some(origin_port)) =
        (origin_url.host_str(), origin_url.port_or_known_default())
    else {
        return refused("Origin has no host");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or(authority);
    let Some(host) = host else {
        return refused("no Host header to compare the Origin with");
    };
    let Ok(host_url) = url::Url::parse(&format!("{}://{host}", origin_url.scheme())) else {
        return refused("unreadable Host header");
    };
    let same_host = host_url
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
    if same_host && host_url.port_or_known_default() == Some(origin_port) {
        Ok(())
    } else {
        refused(&format!("Origin `{origin}` does not match Host `{host}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn only_known_host_names_pass() {
        let allowed = vec!["dash.lan".to_string()];
        let cases = [
            ("127.0.0.1:8088", true),
            ("127.0.0.1", true),
            ("localhost:8088", true),
            ("LOCALHOST", true),
            ("[::1]:8088", true),
            ("[::1]", true),
            ("192.168.1.20:8088", true),
            ("dash.lan:8088", true),
            ("DASH.LAN", true),
            ("evil.example:8088", false),
            ("evil.example", false),
            ("app.localhost:8088", false),
            ("localhost.evil.example", false),
            ("127.0.0.1.evil.example", false),
            ("[::1", false),
            ("[::1]x", false),
            ("[evil]:80", false),
            ("localhost:", false),
            ("localhost:99999", false),
            (":8088", false),
        ];
        for (host, expected) in cases {
            assert_eq!(
                check_host(&headers(&[("host", host)]), None, &allowed).is_ok(),
                expected,
                "{host}"
            );
        }
        assert!(check_host(&HeaderMap::new(), None, &allowed).is_ok());
        assert!(check_host(&HeaderMap::new(), Some("evil.example:1"), &allowed).is_err());
    }

    #[test]
    fn origin_must_match_host() {
        let cases = [
            (vec![], true),
            (
                vec![
                    ("origin", "http://127.0.0.1:8088"),
                    ("host", "127.0.0.1:8088"),
                ],
                true,
            ),
            (
                vec![("origin", "http://example.com"), ("host", "example.com:80")],
                true,
            ),
            (
                vec![("origin", "http://evil.test"), ("host", "127.0.0.1:8088")],
                false,
            ),
            (
                vec![
                    ("origin", "http://127.0.0.1:9999"),
                    ("host", "127.0.0.1:8088"),
                ],
                false,
            ),
            (vec![("origin", "null"), ("host", "127.0.0.1:8088")], false),
            (vec![("origin", "http://127.0.0.1:8088")], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                check_origin(&headers(&pairs), None).is_ok(),
                expected,
                "{pairs:?}"
            );
        }
    }
}
