//! The terminal UI against a real `Forwarder` (built from a YAML file whose endpoints are
//! `ccf_testkit::MockUpstream`s): every tab rendered into ratatui's `TestBackend`, key handling
//! for priority edits and group actions, and writing priority edits back to a commented file.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ccf_config::ConfigLoader;
use ccf_lifecycle::RequestRecord;
use ccf_proxy::Forwarder;
use ccf_testkit::MockUpstream;
use ccf_tui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ccf_tui::{perform, Action, App, AppInfo, LogBuffer, LogLevel, PriorityEdit, Snapshot, Tab};
use http_body_util::{BodyExt, Full};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const SECRET_TOKEN: &str = "sk-ant-supersecret-0123456789";
const AUTH_TOKEN: &str = "inbound-token-abcdefghijkl";

/// A commented configuration with two groups; `backup` inherits nothing, `secondary` inherits
/// its group and token from `primary` and has no `priority:` line.
fn config_yaml(main_url: &str, backup_url: &str, save: bool) -> String {
    format!(
        "\
# Test configuration for the terminal UI.
server:
  host: 127.0.0.1   # loopback only
  port: 0
auth:
  enabled: true
  token: {AUTH_TOKEN}
usage_tracking:
  enabled: false
tui:
  enabled: true
  save_priority_edits: {save}

endpoints:
  # The main group.
  - name: primary          # first choice
    url: {main_url}
    priority: 1            # keep
    group: main
    group-priority: 1
    token: {SECRET_TOKEN}
  - name: \"secondary\"
    url: {main_url}
    # group and token inherited from primary

  - name: backup
    url: {backup_url}
    group: backup
    group-priority: 2
    priority: 5
"
    )
}

struct Fixture {
    _folder: tempfile::TempDir,
    path: PathBuf,
    main: MockUpstream,
    forwarder: Forwarder,
    logs: LogBuffer,
}

impl Fixture {
    async fn new(save: bool) -> Self {
        let main = MockUpstream::start().await;
        let backup = MockUpstream::start().await;
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("config.yaml");
        std::fs::write(&path, config_yaml(&main.url(), &backup.url(), save)).unwrap();
        let loaded = ConfigLoader::new()
            .file(&path)
            .without_env_overrides()
            .load()
            .unwrap();
        let forwarder = Forwarder::build(Arc::new(loaded.config)).unwrap();
        Fixture {
            _folder: folder,
            path,
            main,
            forwarder,
            logs: LogBuffer::new(100),
        }
    }

    /// A UI whose clock stands still at its start (so the header's uptime is `0ms`).
    fn app(&self) -> App {
        let now = Instant::now();
        let mut app = App::new(
            self.forwarder.config(),
            AppInfo {
                base_url: "http://127.0.0.1:8087".to_string(),
                version: "0.1.0".to_string(),
            },
            self.logs.clone(),
            now,
        );
        app.refresh(Snapshot::capture(&self.forwarder), now, SystemTime::now());
        app
    }

    fn refresh(&self, app: &mut App) {
        app.refresh(
            Snapshot::capture(&self.forwarder),
            Instant::now(),
            SystemTime::now(),
        );
    }

    /// Sends one request through the forwarder and reads the whole answer.
    async fn send(&self, model: &str) {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let request = http::Request::post("/v1/messages")
            .header("content-type", "application/json")
            .header("x-api-key", AUTH_TOKEN)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.forwarder.handle(request).await;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
}

/// Sends `models` in order, feeds their final records to `app`, and returns them.
async fn traffic(fixture: &Fixture, app: &mut App, models: &[&str]) -> Vec<RequestRecord> {
    let mut subscription = fixture.forwarder.events().subscribe_requests();
    let mut finals = Vec::new();
    for model in models {
        fixture.send(model).await;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
                .await
                .unwrap();
            app.on_request(event.record());
            if event.is_final() {
                finals.push(event.record().clone());
                break;
            }
        }
    }
    finals
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(character: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(character), KeyModifiers::CONTROL)
}

fn press(app: &mut App, keys: &[KeyEvent]) -> Vec<Action> {
    keys.iter().flat_map(|key| app.handle_key(*key)).collect()
}

/// The screen as text lines.
fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| app.render(frame)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}

fn text(lines: &[String]) -> String {
    lines.join("\n")
}

#[track_caller]
fn assert_shows(screen: &[String], expected: &[&str]) {
    let text = text(screen);
    for needle in expected {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn overview_shows_totals_tokens_cost_and_the_request_rate() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    let finals = traffic(
        &fixture,
        &mut app,
        &["claude-sonnet-4-5", "claude-sonnet-4-5"],
    )
    .await;
    let input: u64 = finals
        .iter()
        .map(|record| record.usage.as_ref().unwrap().input_tokens)
        .sum();
    let output: u64 = finals
        .iter()
        .map(|record| record.usage.as_ref().unwrap().output_tokens)
        .sum();
    // Cost today is the store's figure, not what this process saw: none until it answers.
    assert_eq!(app.stats().cost_today_nano, None);
    assert_shows(&screen(&app, 110, 24), &["Cost today   -"]);
    app.set_cost_today(Some(1_234_500_000));
    let lines = screen(&app, 110, 24);
    assert_eq!(lines[0], " cc-forwarder 0.1.0 │ http://127.0.0.1:8087 │ up 0ms │ active group: main │ in flight: 0 │ held: 0");
    assert_shows(
        &lines,
        &[
            "1 Overview",
            "6 Config",
            "Requests     2",
            "Completed    2",
            "Failed       0",
            "Success rate 100.0%",
            &format!("Input        {input}"),
            &format!("Output       {output}"),
            "Cost today   $1.2345",
            "Active group main",
            "Endpoints    3/3 healthy",
            "Requests/s (last",
        ],
    );
}

#[tokio::test]
async fn endpoints_tab_groups_endpoints_and_details_mask_the_token() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    traffic(&fixture, &mut app, &["claude-haiku-4-5"]).await;
    press(&mut app, &[key(KeyCode::Char('2'))]);
    assert_eq!(app.tab(), Tab::Endpoints);
    let lines = screen(&app, 110, 30);
    assert_shows(
        &lines,
        &[
            "Status Name",
            "Priority",
            "Resp",
            "Reqs",
            "Fails",
            "▸ main (group priority 1)",
            "active",
            "▸ backup (group priority 2)",
            "available",
            "Endpoint     secondary (group main)",
            &format!("URL          {}", fixture.main.url()),
            "token sk-a***",
        ],
    );
    let text = text(&lines);
    assert!(!text.contains(SECRET_TOKEN), "{text}");
    // Rows: group header, then endpoints by priority (secondary's default 0 comes first).
    let row = |name: &str| lines.iter().position(|line| line.contains(name)).unwrap();
    assert!(row("▸ main") < row("  secondary"));
    assert!(row("  secondary") < row("  primary"));
    assert!(row("  primary") < row("▸ backup"));
    // Never probed yet; the `secondary` row (priority 0, first choice) counts the request it
    // served.
    let served = lines
        .iter()
        .find(|line| line.contains("  secondary "))
        .unwrap();
    assert!(served.starts_with("│? new"), "{served}");
    assert!(served.ends_with("1       0      │"), "{served}");
}

#[tokio::test]
async fn endpoint_details_show_a_subscription_accounts_windows_and_their_resets() {
    let fixture = Fixture::new(false).await;
    let in_an_hour = (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    fixture.main.set_default(
        ccf_testkit::Reply::auto()
            .header("anthropic-ratelimit-unified-status", "allowed_warning")
            .header("anthropic-ratelimit-unified-reset", &in_an_hour)
            .header(
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            )
            .header("anthropic-ratelimit-unified-5h-utilization", "0.95")
            .header("anthropic-ratelimit-unified-5h-reset", &in_an_hour)
            .header("anthropic-ratelimit-unified-7d-utilization", "0.3")
            .header("anthropic-ratelimit-unified-7d-reset", &in_an_hour),
    );
    let mut app = fixture.app();
    traffic(&fixture, &mut app, &["claude-sonnet-4-5"]).await;
    fixture.refresh(&mut app);
    press(&mut app, &[key(KeyCode::Char('2'))]);
    assert_eq!(app.selected_endpoint(), Some("secondary"));
    let lines = screen(&app, 160, 30);
    assert_shows(
        &lines,
        &[
            "Quota        allowed_warning · 5h* 95% resets in 59m",
            "7d 30% resets in 59m",
            "new sessions drained (>= 90%)",
        ],
    );
}

#[tokio::test]
async fn groups_tab_snapshot() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    press(&mut app, &[key(KeyCode::Char('3'))]);
    let lines = screen(&app, 100, 8);
    let expected = [
        " cc-forwarder 0.1.0 │ http://127.0.0.1:8087 │ up 0ms │ active group: main │ in flight: 0 │ held: 0",
        " 1 Overview │ 2 Endpoints │ 3 Groups │ 4 Requests │ 5 Logs │ 6 Config",
        "┌ Groups (auto switching) ─────────────────────────────────────────────────────────────────────────┐",
        "│Group                Priority State              Healthy   Cooldown  Keys      Notes              │",
        "│main                 1        active             2/2       -         p                            │",
        "│backup               2        available          1/1       -         a p                          │",
        "└──────────────────────────────────────────────────────────────────────────────────────────────────┘",
        " ↑/↓ select · a activate · f force-activate · p pause · r resume · q quit",
    ];
    assert_eq!(lines, expected, "\n{}", text(&lines));
}

#[tokio::test]
async fn requests_tab_lists_newest_first_and_enter_shows_the_attempt_trail() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    let finals = traffic(&fixture, &mut app, &["claude-haiku-4-5", "claude-opus-4-1"]).await;
    press(&mut app, &[key(KeyCode::Char('4'))]);
    let lines = screen(&app, 130, 24);
    assert_shows(
        &lines,
        &[
            "Requests (newest first, 2 kept)",
            "Time",
            "Status",
            "Model",
            "Tokens in/out",
            "Cost",
            "Duration",
            "completed 200",
        ],
    );
    let row = |needle: &str| lines.iter().position(|line| line.contains(needle)).unwrap();
    assert!(row("claude-opus-4-1") < row("claude-haiku-4-5"));
    assert!(!text(&lines).contains("Attempt trail"));

    // Down selects the older request; Enter opens its trail; Esc closes it.
    press(&mut app, &[key(KeyCode::Down), key(KeyCode::Enter)]);
    let lines = screen(&app, 130, 24);
    assert_shows(
        &lines,
        &[
            &format!("Attempt trail of {}", finals[0].id),
            "POST /v1/messages · model claude-haiku-4-5 · 1 attempt(s) · no failure",
            "secondary (group main) → HTTP 200",
            "usage: input",
        ],
    );
    press(&mut app, &[key(KeyCode::Esc)]);
    assert!(!text(&screen(&app, 130, 24)).contains("Attempt trail"));
}

#[tokio::test]
async fn logs_tab_scrolls_and_filters_by_level() {
    let fixture = Fixture::new(false).await;
    fixture.logs.push(LogLevel::Debug, "debug detail line");
    fixture.logs.push(LogLevel::Info, "request finished ok");
    fixture.logs.push(LogLevel::Warn, "endpoint slow");
    fixture.logs.push(LogLevel::Error, "endpoint down");
    let mut app = fixture.app();
    press(&mut app, &[key(KeyCode::Char('5'))]);
    let lines = screen(&app, 80, 12);
    assert_shows(
        &lines,
        &[
            "Logs (all levels, 4 lines, following)",
            "debug detail line",
            "request finished ok",
            "endpoint down",
        ],
    );
    press(&mut app, &[key(KeyCode::Char('w'))]);
    let lines = screen(&app, 80, 12);
    assert_shows(
        &lines,
        &[
            "Logs (WARN and above, 2 lines",
            "endpoint slow",
            "endpoint down",
        ],
    );
    assert!(!text(&lines).contains("request finished ok"));
    // `l` cycles: WARN -> ERROR.
    press(&mut app, &[key(KeyCode::Char('l'))]);
    let lines = screen(&app, 80, 12);
    assert!(!text(&lines).contains("endpoint slow"));
    // Scrolling up leaves the tail; End follows it again.
    for number in 0..20 {
        fixture
            .logs
            .push(LogLevel::Info, &format!("filler {number:02}"));
    }
    press(&mut app, &[key(KeyCode::Char('a')), key(KeyCode::Up)]);
    let lines = screen(&app, 80, 12);
    assert_shows(&lines, &["1 lines up", "filler 18"]);
    assert!(!text(&lines).contains("filler 19"));
    press(&mut app, &[key(KeyCode::Home)]);
    let lines = screen(&app, 80, 12);
    assert_shows(&lines, &["debug detail line", "filler 02"]);
    assert!(!text(&lines).contains("filler 03"));
    press(&mut app, &[key(KeyCode::End)]);
    let lines = screen(&app, 80, 12);
    assert_shows(&lines, &["following", "filler 19"]);
}

#[tokio::test]
async fn config_tab_masks_every_secret() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    press(&mut app, &[key(KeyCode::Char('6'))]);
    let mut seen = String::new();
    // Scroll through the whole configuration.
    for _ in 0..10 {
        seen.push_str(&text(&screen(&app, 100, 20)));
        press(&mut app, &[key(KeyCode::PageDown)]);
    }
    for needle in [
        "(secrets masked)",
        "auth:",
        "  token: inbo***",
        "  - name: primary",
        "    token: sk-a***",
        "  - name: secondary",
        "    group: main (group-priority 1)",
        "    priority: 5",
    ] {
        assert!(seen.contains(needle), "missing {needle:?} in\n{seen}");
    }
    assert!(!seen.contains(SECRET_TOKEN));
    assert!(!seen.contains(AUTH_TOKEN));
}

#[tokio::test]
async fn tab_keys_cycle_and_jump_and_q_quits() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    assert_eq!(app.tab(), Tab::Overview);
    press(&mut app, &[key(KeyCode::Tab)]);
    assert_eq!(app.tab(), Tab::Endpoints);
    press(&mut app, &[key(KeyCode::BackTab), key(KeyCode::BackTab)]);
    assert_eq!(app.tab(), Tab::Config);
    press(&mut app, &[key(KeyCode::Char('4'))]);
    assert_eq!(app.tab(), Tab::Requests);
    assert_eq!(press(&mut app, &[key(KeyCode::Char('q'))]), [Action::Quit]);
    assert!(app.is_quitting());
}

#[tokio::test]
async fn priority_edit_types_multiple_digits_and_ctrl_s_applies_keeping_health() {
    let fixture = Fixture::new(false).await;
    // An unhealthy endpoint stays unhealthy through the edit.
    for _ in 0..3 {
        fixture
            .forwarder
            .health()
            .record_failure("backup", ccf_health::PassiveFailure::Connect);
    }
    assert!(!fixture.forwarder.health().is_healthy("backup"));
    let mut app = fixture.app();
    press(&mut app, &[key(KeyCode::Char('2'))]);
    assert_eq!(app.selected_endpoint(), Some("secondary"));
    // Enter edit mode; `secondary`: 1, 2, Backspace, 7 -> 17; move to `primary`: 3.
    let actions = press(
        &mut app,
        &[
            key(KeyCode::Enter),
            key(KeyCode::Char('1')),
            key(KeyCode::Char('2')),
            key(KeyCode::Backspace),
            key(KeyCode::Char('7')),
            key(KeyCode::Down),
            key(KeyCode::Char('3')),
            // Tab and number keys are digits or ignored while editing.
            key(KeyCode::Tab),
            key(KeyCode::Char('q')),
        ],
    );
    assert!(actions.is_empty());
    assert_eq!(app.tab(), Tab::Endpoints);
    let editing = app.editing().unwrap();
    assert_eq!(editing.pending.get("secondary"), Some(&17));
    assert_eq!(editing.pending.get("primary"), Some(&3));
    let lines = screen(&app, 110, 30);
    assert_shows(
        &lines,
        &["EDITING priorities", "0 → 17*", "1 → 3*", "EDIT:"],
    );

    let actions = press(&mut app, &[ctrl('s')]);
    assert_eq!(
        actions,
        [Action::ApplyPriorities {
            edits: vec![
                PriorityEdit {
                    endpoint: "secondary".to_string(),
                    priority: 17
                },
                PriorityEdit {
                    endpoint: "primary".to_string(),
                    priority: 3
                },
            ]
        }]
    );
    assert!(app.editing().is_none());
    let notice = perform(&fixture.forwarder, &actions[0]).unwrap();
    assert!(!notice.error, "{notice:?}");
    assert_eq!(notice.text, "applied priorities secondary=17, primary=3");
    let priorities: Vec<(String, u32)> = fixture
        .forwarder
        .endpoints()
        .into_iter()
        .map(|endpoint| (endpoint.name, endpoint.priority))
        .collect();
    assert_eq!(
        priorities,
        [
            ("primary".to_string(), 3),
            ("secondary".to_string(), 17),
            ("backup".to_string(), 5)
        ]
    );
    assert!(!fixture.forwarder.health().is_healthy("backup"));
    // Without save_priority_edits the file is untouched.
    let text = std::fs::read_to_string(&fixture.path).unwrap();
    assert!(text.contains("    priority: 1            # keep"));

    // The new order shows at the next refresh.
    app.notify(notice);
    fixture.refresh(&mut app);
    let lines = screen(&app, 110, 30);
    let row = |name: &str| lines.iter().position(|line| line.contains(name)).unwrap();
    assert!(row("  primary") < row("  secondary"));
    assert_shows(&lines, &["applied priorities secondary=17, primary=3"]);
}

#[tokio::test]
async fn escape_discards_priority_edits() {
    let fixture = Fixture::new(true).await;
    let mut app = fixture.app();
    let actions = press(
        &mut app,
        &[
            key(KeyCode::Char('2')),
            key(KeyCode::Char('e')),
            key(KeyCode::Char('9')),
            key(KeyCode::Char('9')),
            key(KeyCode::Esc),
        ],
    );
    assert!(actions.is_empty());
    assert!(app.editing().is_none());
    assert_eq!(app.notice().unwrap().text, "discarded 1 priority edit(s)");
    assert!(fixture
        .forwarder
        .endpoints()
        .iter()
        .all(|endpoint| endpoint.priority == endpoint.config_priority));
    // Ctrl+S with nothing typed applies nothing.
    let actions = press(&mut app, &[key(KeyCode::Enter), ctrl('s')]);
    assert!(actions.is_empty());
    // Ctrl+C quits even while editing.
    let actions = press(&mut app, &[key(KeyCode::Enter), ctrl('c')]);
    assert_eq!(actions, [Action::Quit]);
}

#[tokio::test]
async fn applied_edits_are_saved_into_the_commented_yaml_file() {
    let fixture = Fixture::new(true).await;
    let before = std::fs::read_to_string(&fixture.path).unwrap();
    let mut app = fixture.app();
    // secondary (first row, no priority line) -> 4; then backup (third row) -> 12.
    let actions = press(
        &mut app,
        &[
            key(KeyCode::Char('2')),
            key(KeyCode::Enter),
            key(KeyCode::Char('4')),
            key(KeyCode::Down),
            key(KeyCode::Down),
            key(KeyCode::Char('1')),
            key(KeyCode::Char('2')),
            ctrl('s'),
        ],
    );
    assert_eq!(actions.len(), 1);
    let notice = perform(&fixture.forwarder, &actions[0]).unwrap();
    assert!(!notice.error, "{notice:?}");
    assert!(notice.text.contains("saved to"), "{}", notice.text);
    let after = std::fs::read_to_string(&fixture.path).unwrap();
    let expected = before
        .replace(
            "  - name: \"secondary\"\n",
            "  - name: \"secondary\"\n    priority: 4\n",
        )
        .replace("    priority: 5\n", "    priority: 12\n");
    assert_eq!(after, expected);
    // The saved file still loads, with the new priorities.
    let reloaded = ConfigLoader::new()
        .file(&fixture.path)
        .without_env_overrides()
        .load()
        .unwrap()
        .config;
    assert_eq!(reloaded.endpoint("secondary").unwrap().priority, 4);
    assert_eq!(reloaded.endpoint("backup").unwrap().priority, 12);
    assert_eq!(reloaded.endpoint("primary").unwrap().priority, 1);
}

#[tokio::test]
async fn group_keys_activate_pause_and_resume() {
    let fixture = Fixture::new(false).await;
    let mut app = fixture.app();
    press(&mut app, &[key(KeyCode::Char('3'))]);
    assert_eq!(app.selected_group(), Some("main"));
    let run = |app: &mut App, keys: &[KeyEvent]| {
        let actions = press(app, keys);
        for action in &actions {
            if let Some(notice) = perform(&fixture.forwarder, action) {
                app.notify(notice);
            }
        }
        fixture.refresh(app);
        actions
    };
    let active = || {
        fixture
            .forwarder
            .groups()
            .into_iter()
            .find(|group| group.is_active)
            .map(|group| group.name)
    };

    let actions = run(&mut app, &[key(KeyCode::Down), key(KeyCode::Char('a'))]);
    assert_eq!(
        actions,
        [Action::ActivateGroup {
            group: "backup".to_string(),
            force: false
        }]
    );
    assert_eq!(active().as_deref(), Some("backup"));
    assert_eq!(app.notice().unwrap().text, "group backup activated");

    run(&mut app, &[key(KeyCode::Up), key(KeyCode::Char('p'))]);
    let main = fixture
        .forwarder
        .groups()
        .into_iter()
        .find(|group| group.name == "main")
        .unwrap();
    assert!(main.paused);
    assert_shows(
        &screen(&app, 100, 8),
        &["paused until resumed", "group main paused until resumed"],
    );

    run(&mut app, &[key(KeyCode::Char('r'))]);
    assert!(fixture.forwarder.groups().iter().all(|group| !group.paused));
    // Resuming a group that is not paused is refused, and said so.
    run(&mut app, &[key(KeyCode::Char('r'))]);
    let notice = app.notice().unwrap();
    assert!(notice.error);
    assert_eq!(notice.text, "cannot resume: group `main` is not paused");

    // Force-activation works even without a healthy endpoint.
    for _ in 0..3 {
        fixture
            .forwarder
            .health()
            .record_failure("primary", ccf_health::PassiveFailure::Connect);
        fixture
            .forwarder
            .health()
            .record_failure("secondary", ccf_health::PassiveFailure::Connect);
    }
    run(&mut app, &[key(KeyCode::Char('a'))]);
    assert!(app.notice().unwrap().error);
    run(&mut app, &[key(KeyCode::Char('f'))]);
    assert_eq!(active().as_deref(), Some("main"));
    assert_eq!(app.notice().unwrap().text, "group main force-activated");
}

/// "Cost today" is read from the usage store, today being a day of the configured zone: a
/// request a minute before today's midnight there is not counted, one this process never saw is.
#[tokio::test]
async fn cost_today_is_the_store_figure_for_the_configured_zones_day() {
    use ccf_store::{DayZone, Pricing, StoredRecord, UsageRecord, UsageStore};
    let dir = tempfile::tempdir().unwrap();
    let zone = DayZone::parse("Asia/Shanghai").unwrap();
    let store = ccf_store_sqlite::SqliteStore::open(
        dir.path().join("usage.db"),
        ccf_store_sqlite::SqliteOptions {
            day_zone: zone,
            ..ccf_store_sqlite::SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(ccf_tui::cost_today(&store, zone).await, Some(0));
    let pricing = Pricing::default();
    let finished = |id: &str, start: std::time::SystemTime, input: u64| {
        let mut record = UsageRecord::new(id, start);
        record.status = "completed".into();
        record.is_final = true;
        record.model_name = Some("claude-sonnet-4-5".into());
        record.usage = ccf_types::Usage {
            input_tokens: input,
            output_tokens: 10,
            ..ccf_types::Usage::default()
        };
        StoredRecord::price(record, &pricing)
    };
    let today_start = zone.day_start(zone.today());
    let today = finished("req-today", std::time::SystemTime::now(), 1000);
    let yesterday = finished("req-yesterday", today_start - Duration::from_secs(60), 5000);
    let expected = today.cost().total;
    assert!(expected > 0);
    store.write_batch(&[today, yesterday]).await.unwrap();
    assert_eq!(ccf_tui::cost_today(&store, zone).await, Some(expected));
}

/// A UI for `forwarder` (its clock standing still at its start), on the Overview tab.
fn app_for(forwarder: &Forwarder, snapshot: Snapshot) -> App {
    let now = Instant::now();
    let mut app = App::new(
        forwarder.config(),
        AppInfo {
            base_url: "http://127.0.0.1:8087".to_string(),
            version: "0.1.0".to_string(),
        },
        LogBuffer::new(10),
        now,
    );
    app.refresh(snapshot, now, SystemTime::now());
    app
}

fn forwarder_from(yaml: &str) -> Forwarder {
    let config = ccf_config::Config::from_yaml_str(yaml).unwrap();
    Forwarder::build(Arc::new(config)).unwrap()
}

const ALICE_TOKEN: &str = "alice-key-0123456789abcdef";
const CAROL_TOKEN: &str = "carol-key-0123456789abcdef";

#[tokio::test]
async fn overview_shows_per_key_limits_and_a_reached_budget_by_name_only() {
    let upstream = MockUpstream::start().await;
    let forwarder = forwarder_from(&format!(
        "\
auth:
  enabled: true
  tokens:
    - name: alice
      token: {ALICE_TOKEN}
      limits: {{daily_budget_usd: 1.00, monthly_budget_usd: 20}}
    - name: carol
      token: {CAROL_TOKEN}
      limits: {{requests_per_minute: 60, concurrency: 2}}
    - name: unlimited-dave
      token: dave-key-0123456789abcdef
usage_tracking:
  enabled: false
endpoints:
  - name: main
    url: {}
",
        upstream.url()
    ));
    // Alice spent past her daily budget (as the store would seed it at start).
    forwarder.seed_key_spend("alice", 1.5, 3.25, SystemTime::now());
    // One request of carol's, counted against her rate.
    let request = http::Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", CAROL_TOKEN)
        .body(Full::new(Bytes::from(
            r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let response = forwarder.handle(request).await;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();

    let app = app_for(&forwarder, Snapshot::capture(&forwarder));
    let lines = screen(&app, 150, 30);
    assert_shows(
        &lines,
        &[
            "Keys (limits per API key)",
            "Key",
            "Today",
            "This month",
            "Req/min",
            "In flight",
            "alice",
            "$1.50 / $1.00",
            "$3.25 / $20.00",
            "budget reached (daily) until ",
            "carol",
            "1/60",
            "0/2",
        ],
    );
    let text = text(&lines);
    let alice = lines.iter().find(|line| line.contains("alice")).unwrap();
    assert!(alice.contains("(in "), "{alice}");
    let carol = lines.iter().find(|line| line.contains("carol")).unwrap();
    assert!(carol.contains(" ok"), "{carol}");
    // A key without limits has no row; no key itself is ever shown.
    assert!(!text.contains("unlimited-dave"), "{text}");
    for secret in [
        ALICE_TOKEN,
        CAROL_TOKEN,
        "alice-key",
        "carol-key",
        "dave-key",
    ] {
        assert!(!text.contains(secret), "{secret} shown in\n{text}");
    }
}

#[tokio::test]
async fn overview_has_no_keys_panel_without_limits() {
    let fixture = Fixture::new(false).await;
    let app = fixture.app();
    let text = text(&screen(&app, 110, 24));
    assert!(!text.contains("Keys (limits"), "{text}");
    assert!(!text.contains("Webhooks"), "{text}");
}

#[tokio::test]
async fn model_rules_on_the_groups_tab_and_an_endpoints_model_map_in_its_details() {
    let cheap = MockUpstream::start().await;
    let official = MockUpstream::start().await;
    let forwarder = forwarder_from(&format!(
        "\
routing:
  model_rules:
    - match: \"*haiku*\"
      group: cheap
      only: true
    - match: claude-opus-*
      group: official
endpoints:
  - name: official-api
    url: {}
    group: official
    group-priority: 1
  - name: cheap-relay
    url: {}
    group: cheap
    group-priority: 2
    model_map:
      \"claude-3-5-haiku*\": glm-4.5-air
      claude-haiku-4-5: glm-4.5-air-x
",
        official.url(),
        cheap.url()
    ));
    let mut app = app_for(&forwarder, Snapshot::capture(&forwarder));
    press(&mut app, &[key(KeyCode::Char('3'))]);
    assert_shows(
        &screen(&app, 120, 16),
        &[
            "Model rules (first match picks the start group)",
            "1. *haiku* → group cheap (only: no failover to other groups)",
            "2. claude-opus-* → group official",
        ],
    );
    press(&mut app, &[key(KeyCode::Char('2')), key(KeyCode::Down)]);
    assert_eq!(app.selected_endpoint(), Some("cheap-relay"));
    let lines = screen(&app, 140, 30);
    // Exact names first, then the globs in the order they are tried.
    assert_shows(
        &lines,
        &["Model map    claude-haiku-4-5 → glm-4.5-air-x · claude-3-5-haiku* → glm-4.5-air"],
    );
    press(&mut app, &[key(KeyCode::Up)]);
    let text = text(&screen(&app, 140, 30));
    assert!(
        !text.contains("Model map"),
        "an endpoint without a map: {text}"
    );
}

#[tokio::test]
async fn overview_shows_a_webhooks_failures_with_its_url_masked() {
    let upstream = MockUpstream::start().await;
    let receiver = MockUpstream::start().await;
    // The receiver refuses every delivery (a 4xx: failed at once, not retried).
    receiver.set_default(ccf_testkit::Reply::error(
        400,
        "invalid_request_error",
        "bad hook",
    ));
    let hook_url = receiver
        .url()
        .replace("http://", "http://hookuser:hook-password-77@")
        + "/hook?token=query-secret-88";
    let forwarder = forwarder_from(&format!(
        "\
webhooks:
  - url: {hook_url}
    events: [group_switched]
    secret: whsec-signing-secret-99
endpoints:
  - name: main
    url: {}
    group: main
    group-priority: 1
  - name: backup
    url: {}
    group: backup
    group-priority: 2
",
        upstream.url(),
        upstream.url()
    ));
    let task = ccf_webhooks::Webhooks::spawn(
        forwarder.clone(),
        "test-instance".to_string(),
        ccf_webhooks::DeliveryPolicy {
            max_tries: 1,
            ..ccf_webhooks::DeliveryPolicy::default()
        },
    );
    let webhooks = task.webhooks();
    // An operator switch is a `group_switched` notification.
    let notice = perform(
        &forwarder,
        &Action::ActivateGroup {
            group: "backup".to_string(),
            force: false,
        },
    );
    assert!(notice.is_some_and(|notice| !notice.error));
    receiver.wait_for_requests(1, Duration::from_secs(10)).await;
    let mut stats = webhooks.stats();
    for _ in 0..200 {
        if stats[0].failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        stats = webhooks.stats();
    }
    assert_eq!(stats[0].failed, 1, "{stats:?}");

    let app = app_for(
        &forwarder,
        Snapshot::capture(&forwarder).with_webhooks(Some(&webhooks)),
    );
    let lines = screen(&app, 160, 30);
    assert_shows(
        &lines,
        &[
            "Webhooks",
            "Signed",
            "Delivered",
            "Failed",
            "Dropped",
            "Last error",
        ],
    );
    let row = lines
        .iter()
        .find(|line| line.contains(&receiver.addr().to_string()))
        .unwrap_or_else(|| panic!("no webhook row in\n{}", text(&lines)));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // URL, signed, delivered 0, failed 1, dropped 0, queued 0, then the error.
    assert_eq!(&cells[1..6], ["yes", "0", "1", "0", "0"], "{row}");
    assert!(row.contains("400"), "{row}");
    assert!(
        row.contains(&format!("│http://***@{}/hook ", receiver.addr())),
        "{row}"
    );
    let text = text(&lines);
    for secret in [
        "hookuser",
        "hook-password",
        "query-secret",
        "whsec-signing-secret-99",
    ] {
        assert!(!text.contains(secret), "{secret} shown in\n{text}");
    }
    task.stop().await;
}

/// A link to the other instances whose status the test sets.
struct FakeClusterLink(std::sync::Mutex<ccf_proxy::cluster::ClusterStatus>);

impl ccf_proxy::cluster::ClusterLink for FakeClusterLink {
    fn publish(&self, _update: ccf_proxy::cluster::SharedUpdate) {
        self.0.lock().unwrap().published += 1;
    }

    fn key_counters(&self) -> Option<Arc<dyn ccf_proxy::cluster::SharedKeyCounters>> {
        None
    }

    fn status(&self) -> ccf_proxy::cluster::ClusterStatus {
        self.0.lock().unwrap().clone()
    }

    fn note_fallback(&self) {
        self.0.lock().unwrap().fallbacks += 1;
    }
}

#[tokio::test]
async fn overview_shows_one_line_for_the_cluster_link_connected_or_down() {
    let fixture = Fixture::new(false).await;
    // No link: no line.
    let mut app = fixture.app();
    let text_before = text(&screen(&app, 120, 24));
    assert!(!text_before.contains("Redis"), "{text_before}");

    let link = Arc::new(FakeClusterLink(std::sync::Mutex::new(
        ccf_proxy::cluster::ClusterStatus {
            backend: "redis",
            address: "redis://default:redis-password-31337@10.0.0.5:6379".to_string(),
            connected: true,
            since: Some(SystemTime::now()),
            ..ccf_proxy::cluster::ClusterStatus::default()
        },
    )));
    assert!(fixture.forwarder.set_cluster_link(link.clone()));
    fixture.refresh(&mut app);
    let lines = screen(&app, 120, 24);
    let line = lines
        .iter()
        .find(|line| line.contains("Redis:"))
        .unwrap_or_else(|| panic!("no Redis line in\n{}", text(&lines)));
    assert_eq!(line, " Redis: connected · redis://***@10.0.0.5:6379");
    // The line sits between the three panels and the request-rate chart.
    let at = lines.iter().position(|l| l == line).unwrap();
    assert!(lines[at - 1].starts_with('└'), "{}", text(&lines));
    assert!(lines[at + 1].starts_with('┌'), "{}", text(&lines));

    let lost = SystemTime::now();
    {
        let mut status = link.0.lock().unwrap();
        status.connected = false;
        status.since = Some(lost);
        status.last_error = Some("connection refused".to_string());
        status.fallbacks = 12;
        status.reconnects = 3;
    }
    fixture.refresh(&mut app);
    let lines = screen(&app, 160, 24);
    let clock = chrono::DateTime::<chrono::Local>::from(lost)
        .format("%H:%M:%S")
        .to_string();
    assert_shows(
        &lines,
        &[&format!(
            " Redis: down, local state since {clock} · redis://***@10.0.0.5:6379 · connection refused · 12 fallbacks · 3 reconnects"
        )],
    );
    assert!(!text(&lines).contains("redis-password-31337"));
}
