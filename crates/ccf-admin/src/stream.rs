//! `GET /api/v1/stream`: the live event stream (Server-Sent Events).
//!
//! Each client gets a writer task that owns its connection's sending side. The writer waits for
//! its [`ClientQueue`] to be notified, lets changes gather for a short batch window (so a burst
//! of updates to the same request or endpoint goes out as its latest state), renders what waits
//! from current state, and sends it; a `: ping` comment goes out every heartbeat interval. A
//! client that reads slowly only makes its own writer wait: its queue keeps coalescing (requests
//! by id, everything else as "send the current state" flags). The writer ends when the client
//! disconnects or the server shuts down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::dispatch::{Answer, Handled};
use crate::dto::events::{MinuteDto, RouterEventDto};
use crate::dto::to_json;
use crate::error::ApiError;
use crate::http_util::{channel_body, unix_now};
use crate::live::{ClientQueue, EventKind, EventMask, Pending};
use crate::{views, Shared};

/// How long changes gather before a client's batch is rendered.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Frames waiting in the connection's channel before the writer waits for the client.
const CHANNEL_FRAMES: usize = 8;

fn parse_mask(query: &HashMap<String, String>) -> Result<EventMask, ApiError> {
    let Some(list) = query
        .get("events")
        .map(|text| text.trim())
        .filter(|t| !t.is_empty())
    else {
        return Ok(EventMask::default_kinds());
    };
    let mut mask = EventMask::empty();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        // `endpoints` and `connections` are accepted as aliases of the singular names.
        let name = match name {
            "endpoints" => "endpoint",
            "connections" => "connection",
            "groups" => "group",
            other => other,
        };
        let kind = EventKind::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_event_type",
                format!("unknown event type `{name}` (known: status, endpoint, group, connection, log, chart, suspended, config)"),
            )
        })?;
        mask.insert(kind);
    }
    Ok(mask)
}

/// Opens a stream: validates `events`, registers the client, starts its writer.
pub(crate) fn open(shared: &Arc<Shared>, query: &HashMap<String, String>) -> Handled {
    let mask = parse_mask(query)?;
    let client_id = query
        .get("client_id")
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .cloned()
        .unwrap_or_else(|| format!("client-{:016x}", rand_id()));
    let client = shared.hub.register(mask);
    let (sender, receiver) = mpsc::channel(CHANNEL_FRAMES);
    let initial = initial_frames(shared, "established", &client_id, mask);
    tokio::spawn(writer(
        Arc::clone(shared),
        client,
        client_id,
        sender,
        initial,
    ));
    let mut response = Response::new(channel_body(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(Answer::Response(response))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// An initial (or resync) frame: the original's format, the data object without an envelope.
fn raw_frame(shared: &Shared, out: &mut String, event: &str, data: &Value) {
    let text = shared.sweep(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()));
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\ndata: ");
    out.push_str(&text);
    out.push_str("\n\n");
}

/// A live event: `{"type", "data", "timestamp"}` with an `id`.
fn event_frame(shared: &Shared, out: &mut String, seq: &mut u64, kind: EventKind, data: Value) {
    *seq += 1;
    let envelope = json!({"type": kind.as_str(), "data": data, "timestamp": unix_now()});
    let text = shared.sweep(serde_json::to_string(&envelope).unwrap_or_else(|_| "{}".into()));
    out.push_str("event: ");
    out.push_str(kind.as_str());
    out.push_str("\ndata: ");
    out.push_str(&text);
    out.push_str("\nid: ");
    out.push_str(&seq.to_string());
    out.push_str("\n\n");
}

fn initial_frames(shared: &Shared, status: &str, client_id: &str, mask: EventMask) -> Bytes {
    let mut out = String::from("retry: 3000\n\n");
    let events: Vec<&str> = crate::live::EventKind::ALL
        .into_iter()
        .filter(|kind| mask.contains(*kind))
        .map(EventKind::as_str)
        .collect();
    let message = if status == "established" {
        "live stream connected".to_string()
    } else {
        format!("live stream resynchronised ({status}): the following frames are current snapshots")
    };
    raw_frame(
        shared,
        &mut out,
        "connection",
        &json!({"status": status, "message": message, "client_id": client_id, "events": events, "timestamp": unix_now()}),
    );
    raw_frame(shared, &mut out, "status", &views::status_view(shared));
    raw_frame(
        shared,
        &mut out,
        "endpoints",
        &views::endpoints_view(shared),
    );
    raw_frame(shared, &mut out, "group", &views::groups_view(shared));
    raw_frame(
        shared,
        &mut out,
        "connections",
        &views::connections_view(shared),
    );
    if mask.contains(EventKind::Config) {
        raw_frame(shared, &mut out, "config", &views::config_view(shared));
    }
    Bytes::from(out)
}

fn render(
    shared: &Shared,
    pending: Pending,
    client_id: &str,
    mask: EventMask,
    seq: &mut u64,
) -> String {
    let mut out = String::new();
    if let Some(reason) = pending.resync {
        out.push_str(&String::from_utf8_lossy(&initial_frames(
            shared,
            &format!("resync:{reason}"),
            client_id,
            mask,
        )));
    }
    let mut requests = pending.requests;
    while let Some(event) = requests.pop() {
        event_frame(
            shared,
            &mut out,
            seq,
            EventKind::Connection,
            views::request_event(shared, &event),
        );
    }
    if pending.stats {
        let mut data = views::connections_view(shared);
        if let Value::Object(map) = &mut data {
            map.insert("change_type".into(), json!("connection_stats_updated"));
        }
        event_frame(shared, &mut out, seq, EventKind::Connection, data);
    }
    for name in &pending.endpoints {
        if let Some(data) = views::endpoint_event(shared, name) {
            event_frame(shared, &mut out, seq, EventKind::Endpoint, data);
        }
    }
    if pending.group {
        let mut data = views::groups_view(shared);
        if let Value::Object(map) = &mut data {
            map.insert("change_type".into(), json!("group_status_changed"));
            map.insert(
                "events".into(),
                to_json(
                    &pending
                        .router_events
                        .iter()
                        .map(RouterEventDto::from)
                        .collect::<Vec<_>>(),
                ),
            );
        }
        event_frame(shared, &mut out, seq, EventKind::Group, data);
    }
    if pending.status {
        event_frame(
            shared,
            &mut out,
            seq,
            EventKind::Status,
            views::status_view(shared),
        );
    }
    if pending.suspended {
        let held: Vec<Value> = shared
            .forwarder
            .held_requests()
            .iter()
            .map(|(id, waited)| json!({"request_id": id.to_string(), "waited_ms": waited.as_millis() as u64}))
            .collect();
        let connections = views::connections_view(shared);
        event_frame(
            shared,
            &mut out,
            seq,
            EventKind::Suspended,
            json!({
                "suspended_requests": held.len(),
                "held": held,
                "stats": connections.get("suspended").cloned().unwrap_or(Value::Null),
                "change_type": "suspended_changed",
            }),
        );
    }
    if pending.chart {
        let samples = shared.hub.state().samples(2);
        event_frame(
            shared,
            &mut out,
            seq,
            EventKind::Chart,
            json!({
                "change_type": "chart_updated",
                "previous_minute": samples.first().map(MinuteDto::from),
                "current_minute": samples.last().map(MinuteDto::from),
            }),
        );
    }
    if pending.logs_dropped > 0 {
        event_frame(
            shared,
            &mut out,
            seq,
            EventKind::Log,
            json!({"level": "warn", "message": format!("{} log lines were dropped: this client reads too slowly", pending.logs_dropped), "timestamp": unix_now(), "dropped": pending.logs_dropped}),
        );
    }
    for line in &pending.logs {
        event_frame(shared, &mut out, seq, EventKind::Log, to_json(line));
    }
    out
}

async fn writer(
    shared: Arc<Shared>,
    client: Arc<ClientQueue>,
    client_id: String,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    initial: Bytes,
) {
    if sender.send(Ok(initial)).await.is_err() {
        return;
    }
    let mut seq = 0u64;
    let heartbeat = shared.heartbeat;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = client.notify.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(BATCH_WINDOW) => {}
                    () = sender.closed() => return,
                }
                let pending = client.take();
                let frames = render(&shared, pending, &client_id, client.mask, &mut seq);
                if !frames.is_empty() && sender.send(Ok(Bytes::from(frames))).await.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {
                if sender.send(Ok(Bytes::from_static(b": ping\n\n"))).await.is_err() {
                    return;
                }
            }
            () = sender.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}
