//! Response bodies, JSON answers, query strings and bounded request bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// The body of every admin response: whole (JSON, assets) or streamed (SSE, exports).
pub type AdminBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A response of the admin API.
pub type AdminResponse = Response<AdminBody>;

/// Largest request body accepted by the POST routes.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body fed by a channel; the sender's task owns the stream and ends it by dropping the sender.
pub(crate) fn channel_body(receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> AdminBody {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|item| (item.map(Frame::data), receiver))
    });
    StreamBody::new(stream).boxed_unsync()
}

pub(crate) fn json_response(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, bytes, "application/json")
}

pub(crate) fn bytes_response(
    status: StatusCode,
    bytes: impl Into<Bytes>,
    content_type: &'static str,
) -> AdminResponse {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The query string as a map (the last value of a repeated key wins).
pub(crate) fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Reads a small request body; an empty body reads as `None`.
pub(crate) async fn read_json_body<B>(body: B) -> Result<Option<serde_json::Value>, ApiError>
where
    B: HttpBody,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_body",
                format!("cannot read the request body (at most {MAX_BODY} bytes): {error}"),
            )
        })?
        .to_bytes();
    if collected.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&collected)
        .map(Some)
        .map_err(|error| {
            ApiError::bad_request("invalid_json", format!("invalid JSON body: {error}"))
        })
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

pub(crate) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    ccf_proxy::monitoring::rfc3339(time)
}

/// Go's `Duration.String()` form (`5m0s`, `123ms`).
pub(crate) fn go_duration(duration: std::time::Duration) -> String {
    ccf_config::GoDuration(duration).to_string()
}
