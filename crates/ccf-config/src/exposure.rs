//! Refusing to start an open door: a listener reachable from other machines without
//! authentication.
//!
//! Loading a configuration never fails for these reasons (the Go original's sample binds
//! `0.0.0.0` without auth and must still load); starting does: the application calls
//! [`Config::check_exposure`] before it binds anything. Host names other than `localhost` count
//! as reachable from other machines, because what they resolve to can change.

use std::fmt;
use std::net::IpAddr;

use crate::Config;

/// One listener that would be reachable without authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureProblem {
    /// The key to change, e.g. `auth.enabled`.
    pub key: &'static str,
    /// Why the start is refused and how to fix it.
    pub message: String,
}

impl fmt::Display for ExposureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why the forwarder refuses to start with this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to start: {}", ProblemLines(problems))]
pub struct InsecureExposure {
    /// Every problem found.
    pub problems: Vec<ExposureProblem>,
}

struct ProblemLines<'a>(&'a [ExposureProblem]);

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Whether `host` (as written in `server.host` or `web.host`) only accepts connections from this
/// machine: `localhost` or a loopback IP address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    if bare.eq_ignore_ascii_case("localhost") || bare.eq_ignore_ascii_case("ip6-localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// Checks that no listener is reachable from other machines without authentication:
    /// - the proxy on a non-loopback `server.host` needs `auth.enabled: true`, unless
    ///   `server.allow_insecure: true`;
    /// - the admin API (`web.enabled`) on a non-loopback `web.host` needs `web.auth_token` (or
    ///   the inbound `auth.token`, which it then accepts); `server.allow_insecure` does not lift
    ///   this one: an open admin API lets anyone change routing and read all usage.
    pub fn check_exposure(&self) -> Result<(), InsecureExposure> {
        let mut problems = Vec::new();
        if !self.auth.enabled && !self.server.allow_insecure && !is_loopback_host(&self.server.host)
        {
            problems.push(ExposureProblem {
                key: "auth.enabled",
                message: format!(
                    "server.host `{}` accepts connections from other machines but inbound auth is \
                     off, so anyone who can reach it spends your upstream credits; set \
                     `auth.enabled: true` with `auth.token` or `auth.tokens`, bind \
                     `server.host: 127.0.0.1`, or set `server.allow_insecure: true` if another \
                     layer (firewall, authenticating reverse proxy) protects the port",
                    self.server.host
                ),
            });
        }
        let has_web_token = self
            .web
            .auth_token
            .as_ref()
            .is_some_and(|token| !token.expose().trim().is_empty());
        let has_inbound_token = self
            .auth
            .token
            .as_ref()
            .is_some_and(|token| !token.expose().trim().is_empty());
        if self.web.enabled
            && !is_loopback_host(&self.web.host)
            && !has_web_token
            && !has_inbound_token
        {
            problems.push(ExposureProblem {
                key: "web.auth_token",
                message: format!(
                    "web.host `{}` exposes the admin API (routing changes, all usage) to other \
                     machines without a token; set `web.auth_token`, or bind \
                     `web.host: 127.0.0.1`",
                    self.web.host
                ),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InsecureExposure { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<(), String> {
        let yaml = format!("{yaml}\nendpoints: [{{name: a, url: \"https://api.example.com\"}}]");
        Config::from_yaml_str(&yaml)
            .expect("valid config")
            .check_exposure()
            .map_err(|error| error.to_string())
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (host, expected) in [
            ("localhost", true),
            ("127.0.0.1", true),
            ("127.0.0.2", true),
            ("::1", true),
            ("[::1]", true),
            ("0.0.0.0", false),
            ("::", false),
            ("192.168.1.10", false),
            ("forwarder.example.com", false),
        ] {
            assert_eq!(is_loopback_host(host), expected, "{host}");
        }
    }

    #[test]
    fn loopback_without_auth_may_start() {
        assert_eq!(check("server: {host: 127.0.0.1}"), Ok(()));
        assert_eq!(check("server: {}"), Ok(()));
    }

    #[test]
    fn public_proxy_without_auth_is_refused_naming_the_key_and_the_fix() {
        let error = check("server: {host: 0.0.0.0}").expect_err("refused");
        assert!(error.contains("auth.enabled"), "{error}");
        assert!(error.contains("server.allow_insecure: true"), "{error}");
        assert!(error.contains("0.0.0.0"), "{error}");
    }

    #[test]
    fn public_proxy_with_auth_or_explicit_opt_out_may_start() {
        assert_eq!(
            check("server: {host: 0.0.0.0}\nauth: {enabled: true, token: abc}"),
            Ok(())
        );
        assert_eq!(
            check("server: {host: 0.0.0.0}\nauth: {enabled: true, tokens: [{name: a, token: t}]}"),
            Ok(())
        );
        assert_eq!(
            check("server: {host: 0.0.0.0, allow_insecure: true}"),
            Ok(())
        );
    }

    #[test]
    fn public_admin_api_needs_a_token_even_with_allow_insecure() {
        let error = check(
            "server: {host: 127.0.0.1, allow_insecure: true}\nweb: {enabled: true, host: 0.0.0.0}",
        )
        .expect_err("refused");
        assert!(error.contains("web.auth_token"), "{error}");
        assert_eq!(
            check("web: {enabled: true, host: 0.0.0.0, auth_token: admin-secret}"),
            Ok(())
        );
        assert_eq!(check("web: {enabled: true, host: 127.0.0.1}"), Ok(()));
    }
}
