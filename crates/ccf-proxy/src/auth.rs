//! Inbound authentication on the proxy port (`auth.enabled`).
//!
//! Claude Code sends its credential either as `Authorization: Bearer <token>` (from
//! `ANTHROPIC_AUTH_TOKEN`) or as `x-api-key: <token>` (from `ANTHROPIC_API_KEY`), so both are
//! accepted. Several named tokens may be configured (`auth.tokens`, plus the Go `auth.token`
//! named `default`); the name of the one presented is returned so that it can be recorded on the
//! request's row. Every configured token is compared, each in constant time, whichever matches, so
//! the time taken does not tell which token (or how much of one) was right.
//!
//! What is covered is decided by the forwarder: every proxied path, `/health/detailed`,
//! `/health/usage-tracker` and `/metrics`; only `/health` and Claude Code's credential-less
//! reachability checks (`HEAD /`, `HEAD /api/hello`) stay open.

use ccf_types::Secret;
use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::error::ProxyError;
use crate::headers::X_API_KEY;

/// The one path that stays open when inbound auth is on: the `/health` summary (status and
/// endpoint counts, nothing else) that load balancers and container health checks poll without
/// credentials.
pub(crate) fn is_open_path(path: &str) -> bool {
    path == "/health"
}

/// The inbound credential check.
#[derive(Debug, Clone)]
pub struct InboundAuth {
    /// `(name, token)` pairs; `Secret` keeps the tokens masked in `Debug`.
    tokens: Vec<(String, Secret)>,
}

impl InboundAuth {
    /// Checks requests against one token, named `default`.
    pub fn new(token: Secret) -> Self {
        Self::named(vec![(
            ccf_config::DEFAULT_AUTH_TOKEN_NAME.to_string(),
            token,
        )])
    }

    /// Checks requests against several named tokens.
    pub fn named(tokens: Vec<(String, Secret)>) -> Self {
        InboundAuth { tokens }
    }

    /// The check `auth.*` asks for, or `None` when inbound auth is off.
    pub fn from_config(auth: &ccf_config::AuthConfig) -> Option<Self> {
        let tokens = auth.named_tokens();
        (auth.enabled && !tokens.is_empty()).then(|| Self::named(tokens))
    }

    /// Accepts the request, answering the matching token's name, or says why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<&str, ProxyError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| {
                        let (scheme, rest) = text.split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                    })
                    .ok_or(ProxyError::Unauthorized {
                        reason: "invalid authorization header: expected `Bearer <token>`",
                    })
            })
            .transpose()?;
        let api_key = headers
            .get(X_API_KEY)
            .map(|value| value.to_str().map(str::trim).unwrap_or_default());
        let presented = match (bearer, api_key) {
            (None, None) => {
                return Err(ProxyError::Unauthorized {
                    reason: "missing credential: send `Authorization: Bearer <token>` or `x-api-key: <token>`",
                })
            }
            (Some(token), _) => token,
            (None, Some(key)) => key,
        };
        // No early exit: every token is compared whichever matches.
        let mut matched: Option<&str> = None;
        for (name, token) in &self.tokens {
            let equal = presented.as_bytes().ct_eq(token.expose().as_bytes());
            if bool::from(equal) && matched.is_none() {
                matched = Some(name);
            }
        }
        matched.ok_or(ProxyError::Unauthorized {
            reason: "invalid token",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(pairs: &[(&'static str, &'static str)]) -> Result<String, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        InboundAuth::new(Secret::new("s3cret"))
            .check(&headers)
            .map(str::to_string)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let default = Ok("default".to_string());
        assert_eq!(check(&[("authorization", "Bearer s3cret")]), default);
        assert_eq!(check(&[("authorization", "bearer s3cret")]), default);
        assert_eq!(check(&[("x-api-key", "s3cret")]), default);
    }

    #[test]
    fn answers_the_name_of_the_matching_named_token() {
        let auth = InboundAuth::named(vec![
            ("default".into(), Secret::new("legacy-token")),
            ("alice".into(), Secret::new("alice-token")),
            ("bob".into(), Secret::new("bob-token")),
        ]);
        let name_for = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(X_API_KEY, HeaderValue::from_static(value));
            auth.check(&headers).map(str::to_string).ok()
        };
        assert_eq!(name_for("bob-token").as_deref(), Some("bob"));
        assert_eq!(name_for("alice-token").as_deref(), Some("alice"));
        assert_eq!(name_for("legacy-token").as_deref(), Some("default"));
        assert_eq!(name_for("alice-token2"), None);
        assert_eq!(name_for("alice-toke"), None);
    }

    #[test]
    fn from_config_is_off_unless_enabled_and_debug_masks_tokens() {
        let mut config = ccf_config::AuthConfig {
            enabled: false,
            token: Some(Secret::new("legacy-token-value")),
            tokens: vec![ccf_config::AuthToken {
                name: "alice".into(),
                token: Secret::new("alice-token-value"),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(InboundAuth::from_config(&config).is_none());
        config.enabled = true;
        let auth = InboundAuth::from_config(&config).expect("auth on");
        let debug = format!("{auth:?}");
        assert!(!debug.contains("legacy-token-value"), "{debug}");
        assert!(!debug.contains("alice-token-value"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }

    #[test]
    fn rejects_missing_malformed_and_wrong_credentials() {
        assert!(check(&[]).unwrap_err().contains("missing credential"));
        assert!(check(&[("authorization", "Basic s3cret")])
            .unwrap_err()
            .contains("Bearer"));
        assert_eq!(
            check(&[("authorization", "Bearer wrong")]).unwrap_err(),
            "invalid token"
        );
        assert_eq!(
            check(&[("x-api-key", "s3cre")]).unwrap_err(),
            "invalid token"
        );
    }
}
