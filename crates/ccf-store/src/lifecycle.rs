//! The row of a request: how a ccf-lifecycle [`RequestRecord`] (live or final) becomes the
//! [`UsageRecord`] the recorder writes. It lives with the row so that adding a `request_logs`
//! column touches the row type, this mapping and the adapters' column lists, all in the storage
//! crates. The admin API's live view uses the same mapping, so a live request and its stored row
//! show the same values.

use std::net::IpAddr;
use std::time::Duration;

use ccf_lifecycle::{Attempt, AttemptOutcome, ErrorState, RequestRecord};

use crate::UsageRecord;

/// Whole milliseconds, saturating (a row column is a `u64`).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl UsageRecord {
    /// The row for `record` as it is now, written by the forwarder instance `instance_id`.
    ///
    /// While the request is live, its error dimension goes in the status column (`retry`,
    /// `suspended`), as the Go original stored it; the attempts trail is stored as JSON, and
    /// not at all when there was no attempt.
    pub fn from_request(record: &RequestRecord, instance_id: Option<&str>) -> UsageRecord {
        UsageRecord::from_texts(record, RecordTexts::copied(record), instance_id)
    }

    /// [`UsageRecord::from_request`] for a record nobody else reads any more (a final state
    /// handed to the recorder): its texts are moved into the row instead of copied (issue 19:
    /// a dozen allocations and as many frees per row on the writer's thread).
    pub fn from_final_request(mut record: RequestRecord, instance_id: Option<&str>) -> UsageRecord {
        let texts = RecordTexts::taken(&mut record);
        UsageRecord::from_texts(&record, texts, instance_id)
    }

    /// The row of `record`, whose texts come in `texts` (copied or moved out of it).
    fn from_texts(
        record: &RequestRecord,
        texts: RecordTexts,
        instance_id: Option<&str>,
    ) -> UsageRecord {
        let RecordTexts {
            user_agent,
            method,
            path,
            endpoint,
            group,
            model,
            requested_model,
            last_failure_reason,
            cancel_reason,
            usage,
            api_key_name,
        } = texts;
        // Built field by field (not `UsageRecord::new` and then overwritten): every row written
        // comes through here, and `new`'s default texts would be allocated only to be dropped.
        UsageRecord {
            request_id: record.id.text().as_str().to_owned(),
            client_ip: record.client_ip.map(ip_text),
            user_agent,
            method,
            path,
            start_time: record.started_at,
            end_time: record.ended_at,
            duration_ms: record.duration.map(millis),
            endpoint_name: endpoint,
            group_name: group,
            model_name: model,
            requested_model,
            is_streaming: record.is_streaming,
            // The Go original stored the error dimension in the status column while a request
            // was live.
            status: match (record.status.is_final(), record.error_state) {
                (false, Some(ErrorState::Retry)) => "retry".to_string(),
                (false, Some(ErrorState::Suspended)) => "suspended".to_string(),
                _ => record.status.as_str().to_string(),
            },
            http_status_code: record.http_status,
            retry_count: record.retry_count,
            failure_reason: record
                .failure_reason
                .map(|reason| reason.as_str().to_string()),
            last_failure_reason,
            cancel_reason,
            usage: usage.unwrap_or_default(),
            time_to_first_byte_ms: record.time_to_first_byte.map(millis),
            attempts_json: (!record.attempts.is_empty()).then(|| attempts_json(&record.attempts)),
            model_mismatch: record.model_mismatch,
            partial: record.partial,
            instance_id: instance_id.map(str::to_string),
            api_key_name,
            is_final: record.is_final(),
        }
    }
}

/// The texts of a row that come from its record as they are: copied from a record still read
/// elsewhere, moved out of one that is not.
struct RecordTexts {
    user_agent: Option<String>,
    method: String,
    path: String,
    endpoint: Option<String>,
    group: Option<String>,
    /// [`RequestRecord::model`].
    model: Option<String>,
    requested_model: Option<String>,
    last_failure_reason: Option<String>,
    cancel_reason: Option<String>,
    usage: Option<ccf_types::Usage>,
    api_key_name: Option<String>,
}

impl RecordTexts {
    fn copied(record: &RequestRecord) -> RecordTexts {
        RecordTexts {
            user_agent: record.user_agent.clone(),
            method: record.method.clone(),
            path: record.path.clone(),
            endpoint: record.endpoint.clone(),
            group: record.group.clone(),
            model: record.model().map(str::to_string),
            requested_model: record.request_model.clone(),
            last_failure_reason: record.last_failure_reason.clone(),
            cancel_reason: record.cancel_reason.clone(),
            usage: record.usage.clone(),
            api_key_name: record.api_key_name.clone(),
        }
    }

    /// Moves the texts out of `record`, leaving empty ones (the rest of the row is read from
    /// it afterwards: nothing else it is read for is a text taken here).
    fn taken(record: &mut RequestRecord) -> RecordTexts {
        // The model first: it reads the requested name, taken below.
        let model = record.take_model();
        RecordTexts {
            user_agent: record.user_agent.take(),
            method: std::mem::take(&mut record.method),
            path: std::mem::take(&mut record.path),
            endpoint: record.endpoint.take(),
            group: record.group.take(),
            model,
            requested_model: record.request_model.take(),
            last_failure_reason: record.last_failure_reason.take(),
            cancel_reason: record.cancel_reason.take(),
            usage: record.usage.take(),
            api_key_name: record.api_key_name.take(),
        }
    }
}

/// An address as `IpAddr`'s `Display` writes it; an IPv4 address (the usual client) without the
/// formatting machinery, which cost about 1,300 instructions a row.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The attempts trail as stored: `serde_json::to_string(attempts)` byte for byte (test
/// `the_attempts_json_is_serde_jsons`), written directly. serde_json escapes every key and goes
/// through its generic serializer, about 1,770 instructions a row for one attempt (issue 19);
/// here the keys are literals, numbers go through `itoa` as in serde_json, and texts are
/// escaped as serde_json escapes them (`ccf_types::push_json_string`).
fn attempts_json(attempts: &[Attempt]) -> String {
    let mut out = String::with_capacity(128 * attempts.len());
    out.push('[');
    for (index, attempt) in attempts.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"endpoint\":");
        ccf_types::push_json_string(&mut out, &attempt.endpoint);
        out.push_str(",\"group\":");
        ccf_types::push_json_string(&mut out, &attempt.group);
        out.push_str(",\"started_at\":");
        out.push_str(itoa::Buffer::new().format(attempt.started_at_millis()));
        out.push_str(",\"duration\":");
        out.push_str(itoa::Buffer::new().format(attempt.duration_millis()));
        out.push_str(",\"outcome\":{\"kind\":\"");
        out.push_str(attempt.outcome.kind());
        out.push('"');
        match &attempt.outcome {
            AttemptOutcome::Status { status } => {
                out.push_str(",\"status\":");
                out.push_str(itoa::Buffer::new().format(*status));
            }
            AttemptOutcome::ConnectError { message } => {
                out.push_str(",\"message\":");
                ccf_types::push_json_string(&mut out, message);
            }
            AttemptOutcome::HeaderTimeout => {}
        }
        out.push_str("}}");
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use ccf_lifecycle::{
        Attempt, AttemptOutcome, FailureReason, Lifecycle, RequestId, RequestStart,
    };
    use ccf_types::Usage;

    use crate::UsageRecord;

    fn start() -> (Lifecycle, SystemTime) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let start = RequestStart {
            id: RequestId::generate(),
            client_ip: Some([127, 0, 0, 1].into()),
            user_agent: Some("claude-cli/1.0".into()),
            method: "POST".into(),
            path: "/v1/messages".into(),
            is_streaming: true,
            request_model: Some("claude-sonnet-4".into()),
            api_key_name: Some("team".into()),
        };
        let (lifecycle, _started) = Lifecycle::start(start, now);
        (lifecycle, now)
    }

    #[test]
    fn addresses_read_as_their_display() {
        let mut addresses: Vec<std::net::IpAddr> = Vec::new();
        for a in [0u8, 1, 9, 10, 42, 99, 100, 127, 199, 200, 255] {
            for b in [0u8, 7, 10, 100, 255] {
                addresses.push([a, b, 255 - b, a.wrapping_mul(7)].into());
            }
        }
        addresses.push("::1".parse().expect("v6"));
        addresses.push("2001:db8::7:1".parse().expect("v6"));
        addresses.push("::ffff:10.0.0.7".parse().expect("v6"));
        for address in addresses {
            assert_eq!(super::ip_text(address), address.to_string());
        }
    }

    #[test]
    fn a_live_request_shows_its_error_dimension_as_the_status() {
        let (mut lifecycle, _) = start();
        lifecycle.forwarding("a", "main").expect("forward");
        lifecycle
            .retrying(FailureReason::RateLimited, "429 from a")
            .expect("retry");
        let row = UsageRecord::from_request(lifecycle.record(), Some("node-1"));
        assert_eq!(row.status, "retry");
        assert_eq!(row.failure_reason.as_deref(), Some("rate_limited"));
        assert_eq!(row.last_failure_reason.as_deref(), Some("429 from a"));
        assert!(!row.is_final);

        lifecycle.suspended().expect("suspend");
        let row = UsageRecord::from_request(lifecycle.record(), None);
        assert_eq!(row.status, "suspended");
        assert_eq!(row.instance_id, None);

        lifecycle.resumed().expect("resume");
        let row = UsageRecord::from_request(lifecycle.record(), None);
        assert_eq!(row.status, "forwarding");
        assert_eq!(row.attempts_json, None, "no attempt yet, no trail");
    }

    /// A request forwarded to endpoint `a` of group `main`, whose attempt got `status`.
    fn forwarded(status: u16) -> (Lifecycle, SystemTime) {
        let (mut lifecycle, started) = start();
        lifecycle.forwarding("a", "main").expect("forward");
        lifecycle.attempt_finished(Attempt {
            endpoint: "a".into(),
            group: "main".into(),
            started_at: started,
            duration: Duration::from_millis(40),
            outcome: AttemptOutcome::Status { status },
        });
        (lifecycle, started)
    }

    #[test]
    fn a_finished_request_maps_every_column() {
        let (mut lifecycle, started) = forwarded(200);
        lifecycle
            .processing(200, Duration::from_millis(45))
            .expect("process");
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 20,
            ..Usage::default()
        };
        lifecycle.set_usage(usage.clone(), false);
        let outcome = lifecycle.complete(started + Duration::from_millis(1_250));
        let row = UsageRecord::from_request(outcome.record(), Some("node-1"));

        assert_eq!(row.request_id, outcome.record().id.to_string());
        assert_eq!(row.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(row.user_agent.as_deref(), Some("claude-cli/1.0"));
        assert_eq!(
            (row.method.as_str(), row.path.as_str()),
            ("POST", "/v1/messages")
        );
        assert_eq!(row.start_time, started);
        assert_eq!(row.end_time, Some(started + Duration::from_millis(1_250)));
        assert_eq!(row.duration_ms, Some(1_250));
        assert_eq!(row.endpoint_name.as_deref(), Some("a"));
        assert_eq!(row.group_name.as_deref(), Some("main"));
        assert_eq!(row.model_name.as_deref(), Some("claude-sonnet-4"));
        assert!(row.is_streaming);
        assert_eq!(row.status, "completed");
        assert_eq!(row.http_status_code, Some(200));
        assert_eq!(row.retry_count, 0);
        assert_eq!(row.usage, usage);
        assert_eq!(row.time_to_first_byte_ms, Some(45));
        let attempts: serde_json::Value =
            serde_json::from_str(row.attempts_json.as_deref().expect("trail")).expect("json");
        assert_eq!(attempts[0]["endpoint"], "a");
        assert_eq!(attempts[0]["outcome"]["status"], 200);
        assert_eq!(row.instance_id.as_deref(), Some("node-1"));
        assert_eq!(row.api_key_name.as_deref(), Some("team"));
        assert!(row.is_final);
    }

    #[test]
    fn a_final_record_moved_into_its_row_gives_the_row_a_copy_gives() {
        let (mut lifecycle, started) = forwarded(529);
        lifecycle
            .retrying(FailureReason::RateLimited, "529 from a")
            .expect("retry");
        lifecycle.set_usage(
            Usage {
                input_tokens: 3,
                service_tier: Some("standard".into()),
                ..Usage::default()
            },
            true,
        );
        let finished = lifecycle.complete(started + Duration::from_millis(900));
        let base = finished.record().clone();
        let mut variants = vec![base.clone()];
        let models = [
            (Some("answered"), Some("sent"), Some("asked")),
            (None, Some("sent"), Some("asked")),
            (None, None, Some("asked")),
            (Some(""), Some("sent"), None),
            (None, None, None),
        ];
        for (answered, sent, asked) in models {
            let mut record = base.clone();
            record.response_model = answered.map(str::to_string);
            record.sent_model = sent.map(str::to_string);
            record.request_model = asked.map(str::to_string);
            variants.push(record);
        }
        let mut bare = base.clone();
        bare.user_agent = None;
        bare.api_key_name = None;
        bare.cancel_reason = Some("client went away".into());
        bare.last_failure_reason = None;
        bare.usage = None;
        bare.endpoint = None;
        bare.group = None;
        variants.push(bare);
        for record in variants {
            let copied = UsageRecord::from_request(&record, Some("node-1"));
            let moved = UsageRecord::from_final_request(record.clone(), Some("node-1"));
            assert_eq!(moved, copied, "{record:#?}");
        }
    }

    #[test]
    fn the_attempts_json_is_serde_jsons() {
        let at = |seconds: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
        let attempt = |endpoint: &str, group: &str, outcome: AttemptOutcome| Attempt {
            endpoint: endpoint.to_string(),
            group: group.to_string(),
            started_at: at(1_700_000_000, 123_456_789),
            duration: Duration::from_micros(12_345),
            outcome,
        };
        let awkward = [
            "",
            "primary",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "line\nbreak",
            "bell\u{7}and\u{1f}unit",
            "del\u{7f}",
            "caf\u{e9} \u{1f680}",
            "</script>",
        ];
        let mut cases: Vec<Vec<Attempt>> = vec![
            vec![attempt(
                "primary",
                "main",
                AttemptOutcome::Status { status: 200 },
            )],
            vec![
                attempt("a", "g1", AttemptOutcome::HeaderTimeout),
                attempt(
                    "b",
                    "g2",
                    AttemptOutcome::ConnectError {
                        message: "connection refused".into(),
                    },
                ),
                attempt("c", "g2", AttemptOutcome::Status { status: 529 }),
            ],
            vec![Attempt {
                started_at: SystemTime::UNIX_EPOCH - Duration::from_secs(5),
                duration: Duration::MAX,
                ..attempt("before 1970", "x", AttemptOutcome::Status { status: 0 })
            }],
            vec![Attempt {
                started_at: at(0, 999_999),
                duration: Duration::ZERO,
                ..attempt("epoch", "x", AttemptOutcome::Status { status: u16::MAX })
            }],
        ];
        for text in awkward {
            cases.push(vec![
                attempt(
                    text,
                    text,
                    AttemptOutcome::ConnectError {
                        message: text.to_string(),
                    },
                ),
                attempt("ok", text, AttemptOutcome::HeaderTimeout),
            ]);
        }
        for attempts in cases {
            assert_eq!(
                super::attempts_json(&attempts),
                serde_json::to_string(&attempts).unwrap(),
                "{attempts:?}"
            );
        }
    }
}
