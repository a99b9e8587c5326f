//! Inbound authentication on the proxy port (`auth.enabled`).
//!
//! Claude Code sends its credential either as `Authorization: Bearer <token>` (from
//! `ANTHROPIC_AUTH_TOKEN`) or as `x-api-key: <token>` (from `ANTHROPIC_API_KEY`), so both are
//! accepted. Comparison is constant-time. `/health*` and `/metrics` never ask for it.

use ccf_types::Secret;
use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::error::ProxyError;
use crate::headers::X_API_KEY;

/// The inbound credential check.
#[derive(Debug, Clone)]
pub struct InboundAuth {
    token: Secret,
}

impl InboundAuth {
    /// Checks requests against `token`.
    pub fn new(token: Secret) -> Self {
        InboundAuth { token }
    }

    /// Accepts the request or says why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
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
        if bool::from(presented.as_bytes().ct_eq(self.token.expose().as_bytes())) {
            Ok(())
        } else {
            Err(ProxyError::Unauthorized {
                reason: "invalid token",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(pairs: &[(&'static str, &'static str)]) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        InboundAuth::new(Secret::new("s3cret"))
            .check(&headers)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        assert_eq!(check(&[("authorization", "Bearer s3cret")]), Ok(()));
        assert_eq!(check(&[("authorization", "bearer s3cret")]), Ok(()));
        assert_eq!(check(&[("x-api-key", "s3cret")]), Ok(()));
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
