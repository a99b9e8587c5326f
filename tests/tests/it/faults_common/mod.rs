//! The fault-injection suite's rig: the real app with usage tracking on (SQLite in a temp dir,
//! or any database section), and the four checks every scenario makes — what the client got,
//! what upstream saw, what the database holds, and that a normal request still works after.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ccf_config::Config;
use ccf_store::{status, RequestQuery, RequestRow, UsageStore};
use serde_json::json;

use crate::support::{config_with_usage, Answer, Forwarder, WAIT};

/// How often the recorder writes in these tests: short, so rows show up fast.
pub const FLUSH: &str = "50ms";

/// A forwarder whose usage store the test can read.
pub struct Rig {
    /// The running app.
    pub forwarder: Forwarder,
    /// The SQLite file (when the rig uses SQLite).
    pub db_path: PathBuf,
    /// Keeps the temp dir alive as long as the rig.
    _folder: tempfile::TempDir,
}

/// A config with `settings` (top-level YAML, may have its own `server:` section), usage
/// tracking into `database` (YAML lines under `usage_tracking:`), and `endpoints`.
pub fn rig_config(settings: &str, database: &str, endpoints: &[String]) -> Config {
    config_with_usage(
        &format!("  enabled: true\n  flush_interval: {FLUSH}\n{database}"),
        settings,
        endpoints,
    )
}

impl Rig {
    /// The app in front of `endpoints`, recording into a fresh SQLite file.
    pub async fn start(settings: &str, endpoints: &[String]) -> Rig {
        let folder = tempfile::tempdir().expect("temp dir");
        let db_path = folder.path().join("usage.db");
        let database = format!("  database_path: {}\n", db_path.display());
        let forwarder = Forwarder::start(rig_config(settings, &database, endpoints)).await;
        Rig {
            forwarder,
            db_path,
            _folder: folder,
        }
    }

    /// The app in front of `endpoints`, recording into `database` (YAML lines under
    /// `usage_tracking:`, e.g. a `database:` section).
    pub async fn start_with_database(settings: &str, database: &str, endpoints: &[String]) -> Rig {
        let folder = tempfile::tempdir().expect("temp dir");
        let forwarder = Forwarder::start(rig_config(settings, database, endpoints)).await;
        Rig {
            forwarder,
            db_path: PathBuf::new(),
            _folder: folder,
        }
    }

    /// The app in front of one endpoint named `mock` at `url`.
    pub async fn in_front_of(url: &str, settings: &str, endpoint_extra: &str) -> Rig {
        Rig::start(
            settings,
            &[crate::support::endpoint_yaml("mock", url, endpoint_extra)],
        )
        .await
    }

    /// The app's usage store.
    pub fn store(&self) -> Arc<dyn UsageStore> {
        Arc::clone(&self.tracking().store)
    }

    fn tracking(&self) -> &ccf_app::usage::UsageTracking {
        self.forwarder
            .usage
            .as_ref()
            .expect("the rig runs with usage tracking")
    }

    /// Every row in the database (after writing what the recorder holds).
    pub async fn rows(&self) -> Vec<RequestRow> {
        self.tracking().recorder.flush().await;
        let page = self
            .store()
            .list_requests(&RequestQuery {
                limit: 10_000,
                ..RequestQuery::default()
            })
            .await
            .expect("list the rows");
        if std::env::var_os("CCF_FAULTS_DEBUG").is_some() {
            eprintln!("rows: {:#?}", summary(&page.items));
        }
        page.items
    }

    /// Stops the app (see [`Forwarder::stop_settled`]) and returns every row it wrote, oldest
    /// first. Every request has ended and every row is written by then, so the list is final:
    /// "no row for that request" can be asserted on it without waiting for something not to
    /// happen.
    pub async fn stop_settled(self) -> Vec<RequestRow> {
        let store = self.store();
        self.forwarder.stop_settled().await;
        let mut rows = store
            .list_requests(&RequestQuery {
                limit: 10_000,
                ..RequestQuery::default()
            })
            .await
            .expect("list the rows")
            .items;
        rows.sort_by_key(|row| row.id);
        rows
    }

    /// Waits until exactly `count` rows exist and all are final (one more than `count` fails
    /// at once), and returns them oldest first.
    pub async fn final_rows(&self, count: usize) -> Vec<RequestRow> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut rows = self.rows().await;
            assert!(
                rows.len() <= count,
                "expected {count} rows, found {}: {:#?}",
                rows.len(),
                summary(&rows)
            );
            if rows.len() == count
                && rows
                    .iter()
                    .all(|row| status::is_terminal(&row.record.status))
            {
                rows.sort_by_key(|row| row.id);
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {count} final rows: {:#?}",
                summary(&rows)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The one row of a rig that served a single request so far.
    pub async fn only_row(&self) -> RequestRow {
        self.final_rows(1).await.remove(0)
    }

    /// The row of `request_id`, once final.
    pub async fn row(&self, request_id: &str) -> RequestRow {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.tracking().recorder.flush().await;
            let row = self
                .store()
                .get_request(request_id)
                .await
                .expect("read a row");
            if let Some(row) = row.filter(|row| status::is_terminal(&row.record.status)) {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no final row for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fourth check: a normal request still gets a normal answer and a completed row with
    /// the mock's usage. Returns the row.
    pub async fn serves_normally(&self) -> RequestRow {
        let answer = self.forwarder.messages(message(false), &[]).await;
        assert_eq!(answer.status, 200, "a normal request after the fault");
        assert_eq!(answer.json()["type"], "message");
        let row = self.row(&request_id(&answer)).await;
        assert_completed_with_mock_usage(&row);
        row
    }

    /// `/health/usage-tracker` as (status code, JSON).
    pub async fn usage_health(&self) -> (u16, serde_json::Value) {
        let answer = self
            .forwarder
            .send(hyper::Method::GET, "/health/usage-tracker", &[], "")
            .await;
        (answer.status.as_u16(), answer.json())
    }
}

/// A Messages request body.
pub fn message(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "survive this"}],
    })
}

/// The forwarder's request id from an answer.
pub fn request_id(answer: &Answer) -> String {
    answer
        .header("x-ccf-request-id")
        .expect("every answer carries x-ccf-request-id")
        .to_string()
}

/// A completed row carrying the mock's default usage (12 in, 6 out, 5 + 7 cache).
pub fn assert_completed_with_mock_usage(row: &RequestRow) {
    assert_eq!(row.record.status, status::COMPLETED, "{:?}", row.record);
    assert_eq!(row.record.http_status_code, Some(200), "{:?}", row.record);
    assert_eq!(row.record.usage.input_tokens, 12, "{:?}", row.record);
    assert_eq!(row.record.usage.output_tokens, 6, "{:?}", row.record);
    assert_eq!(row.record.usage.cache_creation_input_tokens, 5);
    assert_eq!(row.record.usage.cache_read_input_tokens, 7);
}

/// A failed row (the failed family) whose failure reason mentions `reason_part`.
pub fn assert_failed(row: &RequestRow, reason_part: &str) {
    assert!(
        status::is_failure(&row.record.status),
        "expected a failed row: {:?}",
        row.record
    );
    let reasons = format!(
        "{:?} {:?}",
        row.record.failure_reason, row.record.last_failure_reason
    );
    assert!(
        reasons.to_lowercase().contains(&reason_part.to_lowercase()),
        "failure reason should mention {reason_part:?}: {:?}",
        row.record
    );
}

/// (status, http code, failure reason, cancel reason) per row, for assertion messages.
pub fn summary(rows: &[RequestRow]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            format!(
                "{} {} {:?} fail={:?} last={:?} cancel={:?}",
                row.record.request_id,
                row.record.status,
                row.record.http_status_code,
                row.record.failure_reason,
                row.record.last_failure_reason,
                row.record.cancel_reason
            )
        })
        .collect()
}

/// Text of an SSE body.
pub fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.bytes()).into_owned()
}
