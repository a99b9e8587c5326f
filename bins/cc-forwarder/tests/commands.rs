//! The operator commands of the real binary: `export`, `env`, and the hidden `completions` and
//! `manpage` that `cargo xtask dist` packages.
//!
//! Each test works in its own temporary folder; export tests write rows through the store API
//! into a SQLite database there, then read them back through the binary.

// Test helpers outside `#[test]` functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use ccf_store::{Pricing, StoredRecord, UsageRecord};

const BINARY: &str = env!("CARGO_BIN_EXE_cc-forwarder");

fn run(folder: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .current_dir(folder)
        .env_remove("RUST_LOG")
        .env_remove("CCF_LOG")
        .stdin(Stdio::null())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const ENDPOINTS: &str = "endpoints:\n  - name: main\n    url: http://127.0.0.1:9\n    group: main\n    group-priority: 1\n";

fn write_config(folder: &Path, yaml: &str) {
    std::fs::write(folder.join("config.yaml"), yaml).unwrap();
}

/// 2025-01-01T00:00:00Z.
fn jan_1() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

const DAY: Duration = Duration::from_secs(86_400);

fn final_row(id: &str, start: SystemTime, user_agent: &str) -> UsageRecord {
    let mut record = UsageRecord::new(id, start);
    record.status = "completed".into();
    record.http_status_code = Some(200);
    record.model_name = Some("claude-sonnet-4-20250514".into());
    record.endpoint_name = Some("main".into());
    record.group_name = Some("main".into());
    record.user_agent = Some(user_agent.into());
    record.usage.input_tokens = 100;
    record.usage.output_tokens = 20;
    record.duration_ms = Some(1500);
    record.end_time = Some(start + Duration::from_millis(1500));
    record.is_final = true;
    record
}

/// A folder with `config.yaml` and `data/usage.db` holding three final rows: Jan 1, 2 and 3
/// 2025 at 12:00 UTC.
fn folder_with_usage() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    let yaml = format!(
        "timezone: UTC\nserver:\n  host: 127.0.0.1\n  port: 8087\n{ENDPOINTS}\
         usage_tracking:\n  enabled: true\n  database_path: data/usage.db\n"
    );
    write_config(folder.path(), &yaml);
    let mut config = ccf_config::Config::from_yaml_str(&yaml).unwrap();
    config.usage_tracking.database_path = folder
        .path()
        .join("data/usage.db")
        .to_string_lossy()
        .into_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = ccf_app::usage::open_store(&config).await.unwrap();
        store.migrate().await.unwrap();
        let pricing = Pricing::from_config(&config.usage_tracking);
        let noon = Duration::from_secs(12 * 3600);
        let rows: Vec<StoredRecord> = [
            final_row("req-1", jan_1() + noon, "claude-cli/1.0"),
            final_row("req-2", jan_1() + DAY + noon, "agent, \"quoted\""),
            final_row("req-3", jan_1() + 2 * DAY + noon, "claude-cli/1.0"),
        ]
        .into_iter()
        .map(|record| StoredRecord::price(record, &pricing))
        .collect();
        store.write_batch(&rows).await.unwrap();
    });
    assert!(folder.path().join("data/usage.db").exists());
    folder
}

fn exported_ids(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row["request_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn export_writes_every_row_as_csv_with_the_go_columns_first() {
    let folder = folder_with_usage();
    let output = run(folder.path(), &["export", "--config", "config.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let csv = text(&output.stdout);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("request_id,client_ip,user_agent,method,path,start_time"),
        "{header}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("req-1,"), "{csv}");
    assert!(
        rows[1].contains("\"agent, \"\"quoted\"\"\""),
        "RFC 4180 quoting: {csv}"
    );
    assert!(text(&output.stderr).contains("exported 3 row(s)"));
}

#[test]
fn export_json_filters_by_since_and_until() {
    let folder = folder_with_usage();
    let all = run(
        folder.path(),
        &["--config", "config.yaml", "export", "--format", "json"],
    );
    assert_eq!(exported_ids(&all), ["req-1", "req-2", "req-3"]);
    let rows: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(rows[0]["model_name"], "claude-sonnet-4-20250514");
    assert_eq!(rows[0]["input_tokens"], 100);

    let since_date = run(
        folder.path(),
        &[
            "export",
            "--config",
            "config.yaml",
            "--format",
            "json",
            "--since",
            "2025-01-02",
        ],
    );
    assert_eq!(exported_ids(&since_date), ["req-2", "req-3"]);

    // A bare `--until` date includes that whole day.
    let window = run(
        folder.path(),
        &[
            "export",
            "--config",
            "config.yaml",
            "--format=json",
            "--since=2025-01-01T13:00:00Z",
            "--until=2025-01-02",
        ],
    );
    assert_eq!(exported_ids(&window), ["req-2"]);

    // The rows are from 2025: none started in the last week.
    let recent = run(
        folder.path(),
        &[
            "export",
            "--config",
            "config.yaml",
            "--format",
            "json",
            "--since",
            "7d",
        ],
    );
    assert!(exported_ids(&recent).is_empty());
    assert_eq!(text(&recent.stdout).trim(), "[]");
}

#[test]
fn export_rejects_bad_bounds_and_a_missing_database() {
    let folder = folder_with_usage();
    let bad = run(
        folder.path(),
        &["export", "--config", "config.yaml", "--since", "yesterday"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--since `yesterday`"),
        "{}",
        text(&bad.stderr)
    );
    let bad_format = run(
        folder.path(),
        &["export", "--config", "config.yaml", "--format", "xml"],
    );
    assert_eq!(bad_format.status.code(), Some(2));

    std::fs::remove_dir_all(folder.path().join("data")).unwrap();
    let missing = run(folder.path(), &["export", "--config", "config.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("no usage database at data/usage.db"),
        "{}",
        text(&missing.stderr)
    );
    assert!(
        !folder.path().join("data").exists(),
        "export never creates a database"
    );
}

#[test]
fn env_prints_the_base_url_and_the_real_token_when_auth_is_on() {
    let folder = tempfile::tempdir().unwrap();
    write_config(
        folder.path(),
        &format!(
            "server:\n  host: 0.0.0.0\n  port: 8087\nauth:\n  enabled: true\n  token: \"s3cret-token\"\n{ENDPOINTS}"
        ),
    );
    let sh = run(folder.path(), &["env", "--config", "config.yaml"]);
    assert!(sh.status.success(), "{}", text(&sh.stderr));
    assert_eq!(
        text(&sh.stdout),
        "export ANTHROPIC_BASE_URL=http://127.0.0.1:8087\nexport ANTHROPIC_AUTH_TOKEN=s3cret-token\n"
    );

    let fish = run(
        folder.path(),
        &["env", "--config", "config.yaml", "--shell", "fish"],
    );
    assert!(text(&fish.stdout).contains("set -gx ANTHROPIC_AUTH_TOKEN s3cret-token\n"));
    let powershell = run(
        folder.path(),
        &["env", "--config", "config.yaml", "--shell", "powershell"],
    );
    assert!(
        text(&powershell.stdout).contains("$env:ANTHROPIC_BASE_URL = 'http://127.0.0.1:8087'\n")
    );

    let json = run(
        folder.path(),
        &[
            "--port",
            "9100",
            "env",
            "--config",
            "config.yaml",
            "--shell",
            "json",
        ],
    );
    assert!(json.status.success(), "{}", text(&json.stderr));
    let settings: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"env": {
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9100",
            "ANTHROPIC_AUTH_TOKEN": "s3cret-token",
        }})
    );
}

/// Inbound auth with only named tokens (`auth.tokens`) is on: `env` says so and names the keys,
/// and prints none of the tokens.
#[test]
fn env_with_only_named_tokens_says_auth_is_on_and_names_the_keys() {
    let folder = tempfile::tempdir().unwrap();
    write_config(
        folder.path(),
        &format!(
            "server:\n  host: 127.0.0.1\n  port: 8087\nauth:\n  enabled: true\n  tokens:\n    - name: alice\n      token: alice-TOKEN-MARKER-123\n    - name: ci-bot\n      token: bot-TOKEN-MARKER-456\n{ENDPOINTS}"
        ),
    );
    let sh = run(folder.path(), &["env", "--config", "config.yaml"]);
    assert!(sh.status.success(), "{}", text(&sh.stderr));
    let stdout = text(&sh.stdout);
    assert!(!stdout.contains("auth is off"), "{stdout}");
    assert!(!stdout.contains("TOKEN-MARKER"), "{stdout}");
    assert!(
        stdout.contains("# inbound auth is on with named tokens (alice, ci-bot)"),
        "{stdout}"
    );
    assert!(!stdout.contains("ANTHROPIC_AUTH_TOKEN="), "{stdout}");

    // JSON stays a valid document; the note goes to stderr.
    let json = run(
        folder.path(),
        &["env", "--config", "config.yaml", "--shell", "json"],
    );
    assert!(json.status.success(), "{}", text(&json.stderr));
    let settings: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8087"}})
    );
    assert!(text(&json.stderr).contains("alice, ci-bot"), "{json:?}");
    assert!(!text(&json.stderr).contains("TOKEN-MARKER"), "{json:?}");
}

#[test]
fn env_without_auth_prints_no_token_and_help_warns_about_the_token() {
    let folder = tempfile::tempdir().unwrap();
    write_config(
        folder.path(),
        &format!("server:\n  host: \"::1\"\n  port: 8087\n{ENDPOINTS}"),
    );
    let output = run(folder.path(), &["env", "--config", "config.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        // Quoted: `[` is a glob character in zsh.
        stdout.starts_with("export ANTHROPIC_BASE_URL='http://[::1]:8087'\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("export ANTHROPIC_AUTH_TOKEN"), "{stdout}");
    let json = run(
        folder.path(),
        &["env", "--config", "config.yaml", "--shell", "json"],
    );
    let settings: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"env": {"ANTHROPIC_BASE_URL": "http://[::1]:8087"}})
    );

    let help = run(folder.path(), &["env", "--help"]);
    assert!(
        text(&help.stdout).contains("REAL token"),
        "{}",
        text(&help.stdout)
    );
    let missing = run(folder.path(), &["env", "--config", "nope.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn completions_and_man_page_come_from_the_clap_definitions() {
    let folder = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cc-forwarder"),
        ("fish", "complete -c cc-forwarder"),
    ] {
        let output = run(folder.path(), &["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for subcommand in ["check-config", "migrate", "export", "env"] {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
    }
    let man = run(folder.path(), &["manpage"]);
    assert!(man.status.success(), "{}", text(&man.stderr));
    let page = text(&man.stdout);
    assert!(page.contains(".TH cc-forwarder 1"), "{page}");
    assert!(page.contains("export"), "{page}");
    // Hidden helpers stay out of the user-facing help.
    let help = text(&run(folder.path(), &["--help"]).stdout);
    assert!(
        !help.contains("completions") && !help.contains("manpage"),
        "{help}"
    );
}
