//! The live event stream: initial frames, request events after traffic, heartbeats, event
//! filters, and coalescing under a burst without losing a final outcome.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use support::{Harness, Options, SseReader, UPSTREAM_TOKEN, WAIT};

#[tokio::test]
async fn the_stream_opens_with_snapshots_then_sends_request_events() {
    let harness = Harness::start().await;
    let mut stream = SseReader::open(&harness, "/api/v1/stream", &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(
        stream
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert!(stream.headers.get("access-control-allow-origin").is_none());
    let mut initial = Vec::new();
    while initial.len() < 5 {
        let frame = stream.next(WAIT).await.expect("initial frame");
        if let Some(event) = frame.event.clone() {
            initial.push((event, frame.json()));
        }
    }
    let names: Vec<&str> = initial.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["connection", "status", "endpoints", "group", "connections"]
    );
    assert_eq!(initial[0].1["status"], "established");
    assert_eq!(initial[1].1["status"], "running");
    assert_eq!(initial[2].1["total"], 2);
    assert_eq!(initial[3].1["total_groups"], 2);
    for (_, data) in &initial {
        assert!(!data.to_string().contains(UPSTREAM_TOKEN));
    }

    let (_, id) = harness.send_message(true).await;
    let (frame, _) = stream
        .until(WAIT, |frame| {
            let value = frame.json();
            frame.event.as_deref() == Some("connection")
                && value["data"]["request_id"] == id.as_str()
                && value["data"]["is_final"] == true
        })
        .await
        .expect("the request's final event");
    let value = frame.json();
    assert_eq!(value["type"], "connection");
    assert!(value["timestamp"].is_u64());
    assert!(frame.raw.contains("\nid: "));
    let data = &value["data"];
    assert_eq!(data["change_type"], "request_completed");
    assert_eq!(data["status"], "completed");
    assert_eq!(data["endpoint_name"], "primary");
    assert_eq!(data["request"]["input_tokens"], 12);
    assert_eq!(data["request"]["attempts"][0]["endpoint"], "primary");
    // Connection stats follow within about a second.
    stream
        .until(WAIT, |frame| {
            frame.json()["data"]["change_type"] == "connection_stats_updated"
        })
        .await
        .expect("connection stats");
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open() {
    let harness = Harness::start_with(Options {
        heartbeat: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let mut stream = SseReader::open(&harness, "/api/v1/stream?events=group", &[]).await;
    let (ping, _) = stream
        .until(WAIT, |frame| frame.event.is_none() && frame.raw == ": ping")
        .await
        .expect("a heartbeat");
    assert_eq!(ping.raw, ": ping");
    stream
        .until(WAIT, |frame| frame.raw == ": ping")
        .await
        .expect("a second heartbeat");
}

#[tokio::test]
async fn event_filters_select_types_and_unknown_types_are_refused() {
    let harness = Harness::start().await;
    let answer = harness.get("/api/v1/stream?events=status,bogus").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid_event_type");

    let mut stream = SseReader::open(&harness, "/api/v1/stream?events=group,log", &[]).await;
    for _ in 0..5 {
        stream.next(WAIT).await.expect("initial frame");
    }
    harness.send_message(false).await;
    assert_eq!(
        harness.post("/api/v1/groups/main/pause", "").await.status,
        StatusCode::OK
    );
    let (group, skipped) = stream
        .until(WAIT, |frame| frame.event.as_deref() == Some("group"))
        .await
        .expect("a group event");
    assert!(skipped
        .iter()
        .all(|frame| frame.event.as_deref() != Some("connection")));
    let data = &group.json()["data"];
    assert_eq!(data["change_type"], "group_status_changed");
    assert_eq!(data["active_group"], "spare");
    assert!(data["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["type"] == "group_paused")));
    stream
        .until(WAIT, |frame| {
            frame.event.as_deref() == Some("log")
                && frame.json()["data"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("group main paused"))
        })
        .await
        .expect("a log line about the pause");
}

#[tokio::test]
async fn a_burst_is_coalesced_without_losing_any_final_outcome() {
    let harness = Harness::start().await;
    let mut stream = SseReader::open(&harness, "/api/v1/stream?events=connection", &[]).await;
    for _ in 0..5 {
        stream.next(WAIT).await.expect("initial frame");
    }
    const BURST: usize = 30;
    let mut tasks = Vec::new();
    let harness = std::sync::Arc::new(harness);
    for _ in 0..BURST {
        let harness = std::sync::Arc::clone(&harness);
        tasks.push(tokio::spawn(
            async move { harness.send_message(true).await },
        ));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let (status, id) = task.await.expect("request task");
        assert_eq!(status, StatusCode::OK);
        ids.push(id);
    }
    let mut finals: HashMap<String, usize> = HashMap::new();
    let mut request_events = 0;
    while finals.len() < BURST {
        let frame = stream.next(WAIT).await.expect("more events");
        let value = frame.json();
        let data = &value["data"];
        let Some(id) = data["request_id"].as_str() else {
            continue;
        };
        request_events += 1;
        assert!(
            !finals.contains_key(id),
            "an event for {id} came after its final one"
        );
        if data["is_final"] == true {
            *finals.entry(id.to_string()).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(finals.get(id), Some(&1), "final of {id}");
    }
    // Each request makes at least four changes (started, forwarding, processing, completed);
    // coalescing sends fewer.
    assert!(
        request_events < BURST * 4,
        "{request_events} request events for {BURST} requests: nothing was coalesced"
    );
}
