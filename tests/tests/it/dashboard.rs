//! Browser tests of the web dashboard: the real app (proxy + admin listener with the embedded
//! dashboard) on loopback, two groups in front of mock upstreams, driven by
//! `web/tests/dashboard.mjs` (playwright-core with Debian's `/usr/bin/chromium`); the Usage
//! page's export with an admin token, over rows seeded across three months, by
//! `web/tests/export.mjs`.
//!
//! Builds nothing itself: the dashboard is embedded by `crates/ccf-admin/build.rs` and
//! `web/node_modules` comes from `npm ci` (`.ci/run`, `cargo xtask web`). When Chromium, Node.js,
//! `web/node_modules` or the built dashboard are missing the test is skipped through
//! [`ccf_testkit::skip_unless_ci`]: a counted skip outside CI, a failure under CI.
//! Screenshots go to `target/dashboard-screenshots/`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ccf_config::Config;
use ccf_testkit::MockUpstream;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use support::Forwarder;

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// What is missing to run the browser tests, if anything.
fn missing_prerequisites(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing.push(format!(
            "Chromium at {chromium} (apt-get install -y chromium)"
        ));
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !node_ok {
        missing.push("Node.js (`node`)".into());
    }
    if !root.join("web/node_modules/playwright-core").is_dir() {
        missing.push("web/node_modules (cd web && npm ci)".into());
    }
    if !root.join("web/dist/index.html").is_file() {
        missing.push("the built dashboard web/dist (cargo xtask web)".into());
    }
    missing
}

/// The dashboard's forwarder: two groups, usage in SQLite at `db`, and a Redis link under
/// `redis` (so the Overview shows its Cluster card).
fn dashboard_config(
    primary: &MockUpstream,
    backup: &MockUpstream,
    db: &std::path::Path,
    redis: &ccf_testkit::RedisKeyPrefix,
) -> Config {
    let yaml = format!(
        "cluster:\n  redis_url: redis://127.0.0.1:6379\n  redis_prefix: {prefix}\n\
         server:\n  host: 127.0.0.1\n  port: 0\n\
         web:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n\
         retry:\n  max_attempts: 2\n  base_delay: 10ms\n  max_delay: 50ms\n\
         usage_tracking:\n  enabled: true\n  database_path: {db}\n  batch_size: 1\n  flush_interval: 50ms\n\
         routing:\n  model_rules:\n    - {{match: 'claude-3-haiku-*', group: backup}}\n\
         endpoints:\n\
         \x20 - name: primary-1\n    url: {primary}\n    group: primary\n    group-priority: 1\n    priority: 1\n    token: sk-primary\n\
         \x20 - name: backup-1\n    url: {backup}\n    group: backup\n    group-priority: 2\n    priority: 1\n    token: sk-backup\n    model_map: {{'claude-3-haiku-*': backup-haiku}}\n",
        db = db.display(),
        prefix = redis.as_str(),
        primary = primary.url(),
        backup = backup.url(),
    );
    match Config::from_yaml_str(&yaml) {
        Ok(config) => config,
        Err(error) => panic!("dashboard test config is invalid: {error}\n{yaml}"),
    }
}

/// Waits until the admin listener answers `/api/v1/status` (with `token` as a bearer, if any).
async fn wait_for_admin(
    forwarder: &Forwarder,
    admin: &str,
    token: Option<&str>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut request = Request::get(format!("{admin}/api/v1/status"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        match tokio::time::timeout(Duration::from_secs(2), forwarder.client.request(request)).await
        {
            Ok(Ok(response)) if response.status().is_success() => {
                let _ = response.into_body().collect().await;
                return Ok(());
            }
            Ok(Ok(response)) => last = format!("status {}", response.status()),
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Whether Chromium and the dashboard's npm packages are there; otherwise the test named `test`
/// is skipped (a failure under CI, see `ccf_testkit::skip_unless_ci`).
fn browser_prerequisites_present(root: &Path, test: &str) -> bool {
    let missing = missing_prerequisites(root);
    if missing.is_empty() {
        return true;
    }
    ccf_testkit::skip_unless_ci(test, &format!("missing {}", missing.join(", ")));
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let root = repo_root();
    if !browser_prerequisites_present(&root, "dashboard_in_a_real_browser") {
        return;
    }

    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let redis = ccf_testkit::RedisKeyPrefix::new("dashboard");
    let forwarder = Forwarder::start(dashboard_config(
        &primary,
        &backup,
        &folder.path().join("usage.db"),
        &redis,
    ))
    .await;
    let admin = forwarder
        .admin
        .clone()
        .expect("web.enabled starts the admin listener");
    if let Err(why) = wait_for_admin(&forwarder, &admin, None).await {
        panic!("the admin listener at {admin} never answered /api/v1/status ({why}): is web.enabled wired into ccf-app?");
    }

    let screenshots = root.join("target/dashboard-screenshots");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(root.join("web/tests/dashboard.mjs"))
        .arg(&admin)
        .arg(&forwarder.base)
        .env("CCF_SCREENSHOT_DIR", &screenshots)
        .current_dir(root.join("web"))
        .kill_on_drop(true);
    // Each wait in the script has its own hang bound; this one only catches a stuck browser.
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the browser tests finish (10 minute hang bound)")
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "dashboard browser tests failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // One request before the pause (primary group), one during it (backup group).
    assert_eq!(
        (primary.requests().len(), backup.requests().len()),
        (1, 1),
        "the browser tests' requests reached the group they were meant for"
    );
    forwarder.stop().await;
}

/// The admin token of [`dashboard_export_follows_the_period_through_a_download_ticket`].
const EXPORT_ADMIN_TOKEN: &str = "dashboard-export-admin-token-4711";

/// Seeded rows: (how long before now the request started, how many). Chosen well inside each
/// period of the Usage page, so a period's rows are exact whatever the seconds between seeding
/// and clicking.
const SEEDED_ROWS: [(Duration, usize); 5] = [
    (Duration::from_secs(20 * 60), 3),
    (Duration::from_secs(6 * 3600), 4),
    (Duration::from_secs(3 * 86_400), 5),
    (Duration::from_secs(20 * 86_400), 2),
    (Duration::from_secs(60 * 86_400), 1),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_export_follows_the_period_through_a_download_ticket() {
    let root = repo_root();
    if !browser_prerequisites_present(
        &root,
        "dashboard_export_follows_the_period_through_a_download_ticket",
    ) {
        return;
    }

    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let redis = ccf_testkit::RedisKeyPrefix::new("dashboard");
    let mut config = dashboard_config(&primary, &backup, &folder.path().join("usage.db"), &redis);
    config.web.auth_token = Some(ccf_config::Secret::new(EXPORT_ADMIN_TOKEN));
    let forwarder = Forwarder::start(config).await;
    let admin = forwarder
        .admin
        .clone()
        .expect("web.enabled starts the admin listener");
    if let Err(why) = wait_for_admin(&forwarder, &admin, Some(EXPORT_ADMIN_TOKEN)).await {
        panic!("the admin listener at {admin} never answered /api/v1/status ({why})");
    }

    // Rows spread over three months, written straight to the app's store.
    let usage = forwarder.usage.as_ref().expect("usage tracking is on");
    let now = std::time::SystemTime::now();
    let mut batch = Vec::new();
    for (age, count) in SEEDED_ROWS {
        for index in 0..count {
            let start = now - age;
            let mut record =
                ccf_store::UsageRecord::new(format!("req-seeded-{}-{index}", age.as_secs()), start);
            record.status = ccf_store::status::COMPLETED.into();
            record.is_final = true;
            record.end_time = Some(start + Duration::from_millis(800));
            record.duration_ms = Some(800);
            record.http_status_code = Some(200);
            record.endpoint_name = Some("primary-1".into());
            record.group_name = Some("primary".into());
            record.model_name = Some("claude-sonnet-4-20250514".into());
            batch.push(ccf_store::StoredRecord::price(
                record,
                &ccf_store::Pricing::default(),
            ));
        }
    }
    usage.store.write_batch(&batch).await.expect("seed rows");
    // Each period counts the rows younger than it.
    let periods = [
        ("1h", 3600),
        ("1d", 86_400),
        ("7d", 7 * 86_400),
        ("30d", 30 * 86_400),
        ("90d", 90 * 86_400),
    ];
    let expected: serde_json::Map<String, serde_json::Value> = periods
        .iter()
        .map(|(period, seconds)| {
            let rows: usize = SEEDED_ROWS
                .iter()
                .filter(|(age, _)| age.as_secs() < *seconds)
                .map(|(_, count)| count)
                .sum();
            (period.to_string(), rows.into())
        })
        .collect();
    assert_eq!(
        serde_json::Value::Object(expected.clone()),
        serde_json::json!({"1h": 3, "1d": 7, "7d": 12, "30d": 14, "90d": 15})
    );

    let mut command = tokio::process::Command::new("node");
    command
        .arg(root.join("web/tests/export.mjs"))
        .arg(&admin)
        .arg(EXPORT_ADMIN_TOKEN)
        .arg(serde_json::Value::Object(expected).to_string())
        .current_dir(root.join("web"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the browser test finishes (10 minute hang bound)")
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "dashboard export browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    forwarder.stop().await;
}
