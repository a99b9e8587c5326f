//! Model mapping per endpoint (`endpoints[].model_map`, issue 20): the request body's top-level
//! `model` is rewritten for one attempt on one endpoint, by that endpoint's map only, so a
//! failover to another endpoint uses that one's map (or none).
//!
//! The rewrite splices the body: the byte span of the `model` string value (quotes included) is
//! replaced by the new name as a JSON string (escaped by serde_json); every other byte stays as
//! the client sent it. The span is found once per request ([`ModelField::find`]) and each
//! attempt to a mapping endpoint makes its own copy. A body that is not a JSON object, whose
//! `model` is not a string, or that names `model` twice is never rewritten. The `Content-Length`
//! sent follows the body (`attempts.rs`).
//!
//! It must not know routing or retries: it answers "what body does this endpoint get".

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use ccf_config::Endpoint;
use serde_json::value::RawValue;

/// Where the request's top-level `model` string is in the body, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelField {
    /// The model the client asked for (unescaped).
    pub(crate) model: String,
    /// The byte span of its JSON string value, quotes included.
    span: Range<usize>,
}

/// Only the `model` key, borrowed as raw JSON; every other key is skipped.
#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
}

impl ModelField {
    /// Finds the top-level `model` string of a JSON object body; `None` when there is none (not
    /// JSON, not an object, no `model`, not a string, `model` given twice).
    pub(crate) fn find(body: &[u8]) -> Option<ModelField> {
        let parsed: ModelOnly<'_> = serde_json::from_slice(body).ok()?;
        let raw = parsed.model?.get();
        if !raw.starts_with('"') {
            return None;
        }
        let model: String = serde_json::from_str(raw).ok()?;
        // `raw` borrows from `body`: its offset is the distance between the two pointers.
        let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
        let span = start..start.checked_add(raw.len())?;
        (span.end <= body.len() && body.get(span.clone()) == Some(raw.as_bytes()))
            .then_some(ModelField { model, span })
    }

    /// `body` with the model replaced by `model` (escaped as a JSON string).
    pub(crate) fn splice(&self, body: &Bytes, model: &str) -> Bytes {
        let Ok(quoted) = serde_json::to_string(model) else {
            return body.clone();
        };
        let (Some(head), Some(tail)) = (body.get(..self.span.start), body.get(self.span.end..))
        else {
            return body.clone();
        };
        let mut spliced = BytesMut::with_capacity(head.len() + quoted.len() + tail.len());
        spliced.extend_from_slice(head);
        spliced.extend_from_slice(quoted.as_bytes());
        spliced.extend_from_slice(tail);
        spliced.freeze()
    }
}

/// What one endpoint is sent for a request whose model field is `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappedRequest {
    /// The body to send.
    pub(crate) body: Bytes,
    /// The model the endpoint's map rewrote the request to; `None` when it passes unchanged.
    pub(crate) mapped_to: Option<String>,
    /// The map key (exact name or glob) that matched, when it rewrote the request.
    pub(crate) pattern: Option<String>,
}

/// One request's model mapping across its attempts: the model field, found the first time an
/// endpoint with a map is tried, and the model sent by the latest attempt.
#[derive(Debug, Default)]
pub(crate) struct RequestModelMapping {
    /// `None` until an endpoint with a map needed it; then the field, if the body has one.
    field: Option<Option<ModelField>>,
    /// What the latest attempt sent in place of the request's model (`None`: unchanged).
    sent: Option<String>,
}

impl RequestModelMapping {
    /// The body for an attempt on `endpoint`, and whether the model sent differs from the
    /// previous attempt's (the lifecycle and the honesty watch are then told).
    pub(crate) fn prepare(&mut self, endpoint: &Endpoint, body: &Bytes) -> (MappedRequest, bool) {
        if self.field.is_none() && !endpoint.model_map.is_empty() {
            self.field = Some(ModelField::find(body));
        }
        let field = self.field.as_ref().and_then(Option::as_ref);
        let mapped = for_endpoint(endpoint, field, body);
        let changed = mapped.mapped_to != self.sent;
        self.sent.clone_from(&mapped.mapped_to);
        (mapped, changed)
    }

    /// The request's model as the client sent it, once a map needed it.
    pub(crate) fn requested(&self) -> Option<&str> {
        self.field
            .as_ref()
            .and_then(Option::as_ref)
            .map(|field| field.model.as_str())
    }
}

/// `ccf_model_mapped_total{endpoint,pattern,to}`: requests an endpoint's `model_map` rewrote, by
/// the map key that matched (labels come from the configuration only, so they stay bounded).
#[derive(Debug, Default)]
pub(crate) struct ModelRoutingMetrics {
    mapped: prometheus_client::metrics::family::Family<
        MappedLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    rule_matches: prometheus_client::metrics::family::Family<
        RuleLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MappedLabels {
    endpoint: String,
    pattern: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RuleLabels {
    rule_group: String,
}

impl ModelRoutingMetrics {
    /// Registers the model mapping and model rule counters.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "ccf_model_mapped",
            "Attempts whose request model an endpoint's model_map rewrote, by endpoint, matching map key and upstream model",
            self.mapped.clone(),
        );
        registry.register(
            "ccf_model_rule_matches",
            "Requests a routing.model_rules entry started in its group, by that group",
            self.rule_matches.clone(),
        );
    }

    /// An attempt on `endpoint` was rewritten by its map entry `pattern` to `to`.
    pub(crate) fn record_mapped(&self, endpoint: &str, pattern: &str, to: &str) {
        self.mapped
            .get_or_create(&MappedLabels {
                endpoint: endpoint.to_string(),
                pattern: pattern.to_string(),
                to: to.to_string(),
            })
            .inc();
    }

    /// A request matched a model rule routing to `group`.
    pub(crate) fn record_rule_match(&self, group: &str) {
        self.rule_matches
            .get_or_create(&RuleLabels {
                rule_group: group.to_string(),
            })
            .inc();
    }
}

/// The body `endpoint` gets: rewritten by its `model_map` when the request's model is in it
/// (and differs), else `body` itself (no copy).
pub(crate) fn for_endpoint(
    endpoint: &Endpoint,
    field: Option<&ModelField>,
    body: &Bytes,
) -> MappedRequest {
    let unchanged = || MappedRequest {
        body: body.clone(),
        mapped_to: None,
        pattern: None,
    };
    let Some(field) = field else {
        return unchanged();
    };
    match endpoint.model_map.lookup_entry(&field.model) {
        Some((pattern, target)) if target != field.model => MappedRequest {
            body: field.splice(body, target),
            mapped_to: Some(target.to_string()),
            pattern: Some(pattern.to_string()),
        },
        _ => unchanged(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice(body: &str, model: &str) -> Option<String> {
        let bytes = Bytes::from(body.to_string());
        let field = ModelField::find(&bytes)?;
        String::from_utf8(field.splice(&bytes, model).to_vec()).ok()
    }

    #[test]
    fn rewrites_only_the_model_value_keeping_every_other_byte() {
        assert_eq!(
            splice(r#"{"model":"claude-3-5-haiku","max_tokens":5}"#, "glm-4.5").as_deref(),
            Some(r#"{"model":"glm-4.5","max_tokens":5}"#)
        );
        // Not the first key, white space around, other keys mentioning "model".
        let body = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"\\\"model\\\":\\\"x\\\"\"}],\n  \"model\" :\t\"claude-opus-4-5\" , \"metadata\":{\"model\":\"inner\"} }";
        let expected = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"\\\"model\\\":\\\"x\\\"\"}],\n  \"model\" :\t\"upstream-opus\" , \"metadata\":{\"model\":\"inner\"} }";
        assert_eq!(splice(body, "upstream-opus").as_deref(), Some(expected));
    }

    #[test]
    fn reads_escaped_names_and_escapes_the_new_one() {
        let body = r#"{"model":"claude\u002dhaiku","stream":true}"#;
        let field = ModelField::find(body.as_bytes()).unwrap();
        assert_eq!(field.model, "claude-haiku");
        assert_eq!(
            splice(body, "a\"b\\c\u{1}é").as_deref(),
            Some(r#"{"model":"a\"b\\c\u0001é","stream":true}"#)
        );
        // The result is still JSON with the new name.
        let spliced = splice(body, "a\"b").unwrap();
        let value: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(value["model"], "a\"b");
    }

    #[test]
    fn bodies_without_a_model_string_are_not_rewritten() {
        for body in [
            r#"{"max_tokens":5}"#,
            r#"{"model":null}"#,
            r#"{"model":5}"#,
            r#"[{"model":"x"}]"#,
            r#"{"model":"a","model":"b"}"#,
            "not json",
            r#"{"model":"x""#,
            "",
        ] {
            assert_eq!(ModelField::find(body.as_bytes()), None, "{body}");
        }
    }

    #[test]
    fn endpoints_map_with_their_own_map_only() {
        let config = ccf_config::Config::from_yaml_str(
            "endpoints:\n  - {name: e, url: 'https://e.example'}\n",
        )
        .unwrap();
        let mut endpoint = config.endpoints[0].clone();
        let body = Bytes::from_static(br#"{"model":"claude-3-5-haiku-latest","max_tokens":1}"#);
        let field = ModelField::find(&body);
        let unmapped = for_endpoint(&endpoint, field.as_ref(), &body);
        assert_eq!(unmapped.mapped_to, None);
        assert_eq!(unmapped.body, body);
        endpoint.model_map = ccf_config::ModelMap::new([
            ("*haiku*".to_string(), "glm-4.5-air".to_string()),
            (
                "claude-3-5-haiku-latest".to_string(),
                "haiku-exact".to_string(),
            ),
        ]);
        let mapped = for_endpoint(&endpoint, field.as_ref(), &body);
        assert_eq!(mapped.mapped_to.as_deref(), Some("haiku-exact"));
        assert_eq!(
            &mapped.body[..],
            br#"{"model":"haiku-exact","max_tokens":1}"#
        );
        // A map to the same name is no rewrite.
        endpoint.model_map = ccf_config::ModelMap::new([(
            "claude-3-5-haiku-latest".to_string(),
            "claude-3-5-haiku-latest".to_string(),
        )]);
        assert_eq!(
            for_endpoint(&endpoint, field.as_ref(), &body).mapped_to,
            None
        );
    }
}
