//! `POST /v1/messages/count_tokens` with `token_counting.enabled`: answered beside the phases,
//! without a routing round. The first `200` of the healthy endpoints that support it (routing
//! order) is relayed verbatim; otherwise the local estimate (`ccf_tokens`) answers, marked with
//! `x-token-estimation: true`. Each upstream exchange, headers and body, is bounded by the
//! endpoint's `timeout` (the body is read whole before it is relayed). Each endpoint is sent the
//! request's model as its `model_map` names it (`model_map.rs`). Not billed, so not
//! tracked: no lifecycle, no retry policy, no health observations.
//!
//! It must not know the retry policy or the request's lifecycle; it only borrows the plan and
//! the upstream send of the forward phase.

use std::time::Instant;

use bytes::Bytes;
use ccf_config::Config;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tracing::{debug, info};

use super::Forwarder;
use crate::body::{full_body, ProxyBody};
use crate::error::anthropic_error_response;
use crate::headers::remove_hop_by_hop;

/// The token counting path answered by the forwarder.
const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

/// Largest upstream token count relayed (`{"input_tokens": N}` is a few bytes).
const MAX_COUNT_TOKENS_BODY: usize = 64 * 1024;

/// Whether this request is a token count the forwarder answers itself.
pub(super) fn answers(config: &Config, parts: &http::request::Parts) -> bool {
    config.token_counting.enabled
        && parts.method == http::Method::POST
        && parts.uri.path() == COUNT_TOKENS_PATH
}

impl Forwarder {
    /// Answers a token count: a supporting healthy endpoint's `200`, else the local estimate.
    pub(super) async fn count_tokens(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let current = shared.current();
        let plan = shared.plan();
        // Each endpoint gets the model its `model_map` names (model_map.rs), as for messages.
        let model_field = current
            .endpoints
            .iter()
            .any(|endpoint| !endpoint.model_map.is_empty())
            .then(|| crate::model_map::ModelField::find(body))
            .flatten();
        for planned in plan.endpoints.iter().filter(|planned| planned.healthy) {
            let Some(endpoint) = current.endpoint(&planned.name) else {
                continue;
            };
            if !endpoint.supports_count_tokens {
                continue;
            }
            // The endpoint's `timeout` bounds the whole exchange, headers and body, as for
            // any non-streaming request.
            let sent = Instant::now();
            let mapped = crate::model_map::for_endpoint(&endpoint, model_field.as_ref(), body);
            match self
                .send_upstream(parts, &mapped.body, false, &endpoint)
                .await
            {
                Ok(response) if response.status() == StatusCode::OK => {
                    let (mut response_parts, upstream_body) = response.into_parts();
                    let left = endpoint.timeout.saturating_sub(sent.elapsed());
                    let read = tokio::time::timeout(
                        left,
                        Limited::new(upstream_body, MAX_COUNT_TOKENS_BODY).collect(),
                    )
                    .await;
                    let Ok(Ok(collected)) = read else {
                        debug!(endpoint = %endpoint.name, "count_tokens body not read within the endpoint timeout or too large: next endpoint");
                        continue;
                    };
                    info!(endpoint = %endpoint.name, "count_tokens answered by upstream");
                    shared
                        .metrics
                        .record_request(&endpoint.name, StatusCode::OK);
                    remove_hop_by_hop(&mut response_parts.headers);
                    response_parts.headers.remove(header::CONTENT_LENGTH);
                    return Response::from_parts(response_parts, full_body(collected.to_bytes()));
                }
                Ok(response) => {
                    debug!(endpoint = %endpoint.name, status = response.status().as_u16(), "count_tokens refused: next endpoint");
                }
                Err(error) => debug!(endpoint = %endpoint.name, "count_tokens failed: {error}"),
            }
        }
        match ccf_tokens::estimate_input_tokens(
            body,
            current.config.token_counting.estimation_ratio,
        ) {
            Ok(tokens) => {
                info!(input_tokens = tokens, "count_tokens estimated locally");
                shared.metrics.record_request("", StatusCode::OK);
                let mut response = Response::new(full_body(
                    serde_json::json!({ "input_tokens": tokens }).to_string(),
                ));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response.headers_mut().insert(
                    http::HeaderName::from_static("x-token-estimation"),
                    HeaderValue::from_static("true"),
                );
                response
            }
            Err(error) => {
                shared.metrics.record_request("", StatusCode::BAD_REQUEST);
                anthropic_error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("cannot count tokens: {error}"),
                )
            }
        }
    }
}
