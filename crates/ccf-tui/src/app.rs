//! [`App`]: the whole state of the terminal UI, and what keys and events do to it.
//!
//! Pure: no terminal, no clock, no forwarder calls. Keys become [`Action`]s that the runtime
//! carries out (see [`crate::perform`]) and reports back with [`App::notify`]; forwarder state
//! comes in as a [`Snapshot`] and request events through [`App::on_event`]. Tests drive it
//! directly and render it into ratatui's `TestBackend`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ccf_config::Config;
use ccf_health::HealthSnapshot;
use ccf_lifecycle::{RequestId, RequestRecord};
use ccf_proxy::cluster::ClusterStatus;
use ccf_proxy::key_limits::KeyLimitView;
use ccf_proxy::{Forwarder, ForwarderEvent};
use ccf_router::{EndpointQuotaView, EndpointView, GroupView};
use ccf_store::Pricing;
use ccf_webhooks::{WebhookStats, Webhooks};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::logs::{LogBuffer, LogLevel, LogLine};
use crate::stats::{unix_seconds, RecentRequests, Stats};
use crate::yaml_edit::PriorityEdit;

/// The tabs, in order (number keys 1 to 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tab {
    /// Totals, tokens, cost and the request rate.
    Overview,
    /// Endpoints by group; priority editing.
    Endpoints,
    /// Group states and operator actions.
    Groups,
    /// Live requests and their attempt trails.
    Requests,
    /// The log panel.
    Logs,
    /// The configuration, masked.
    Config,
}

impl Tab {
    /// Every tab, in order.
    pub const ALL: [Tab; 6] = [
        Tab::Overview,
        Tab::Endpoints,
        Tab::Groups,
        Tab::Requests,
        Tab::Logs,
        Tab::Config,
    ];

    /// The tab's title.
    pub const fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Endpoints => "Endpoints",
            Tab::Groups => "Groups",
            Tab::Requests => "Requests",
            Tab::Logs => "Logs",
            Tab::Config => "Config",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|tab| *tab == self).unwrap_or(0)
    }
}

/// Something the runtime must do for the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave the UI and shut the forwarder down.
    Quit,
    /// Make a group the active one.
    ActivateGroup {
        /// The group.
        group: String,
        /// Even without a healthy endpoint.
        force: bool,
    },
    /// Take a group out of rotation until resumed.
    PauseGroup {
        /// The group.
        group: String,
    },
    /// Put a paused group back.
    ResumeGroup {
        /// The group.
        group: String,
    },
    /// Apply priority edits at once (health kept), and save them when configured.
    ApplyPriorities {
        /// The edits, in endpoint display order.
        edits: Vec<PriorityEdit>,
    },
}

/// A one-line message in the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// Shown as an error.
    pub error: bool,
}

impl Notice {
    /// An informational notice.
    pub fn info(text: impl Into<String>) -> Self {
        Notice {
            text: text.into(),
            error: false,
        }
    }

    /// An error notice.
    pub fn error(text: impl Into<String>) -> Self {
        Notice {
            text: text.into(),
            error: true,
        }
    }
}

/// Forwarder state read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every group.
    pub groups: Vec<GroupView>,
    /// Every endpoint.
    pub endpoints: Vec<EndpointView>,
    /// Endpoint health.
    pub health: Arc<HealthSnapshot>,
    /// Held requests and how long each has waited.
    pub held: Vec<(RequestId, Duration)>,
    /// Every endpoint that reported rate limits or a subscription account's windows.
    pub quota: Vec<EndpointQuotaView>,
    /// Every configured API key's limits and usage (`auth.tokens[].limits`), in configuration
    /// order; names only, never the keys.
    pub key_limits: Vec<KeyLimitView>,
    /// Every webhook receiver's delivery counters (`webhooks:`), in configuration order; empty
    /// until the dispatcher runs.
    pub webhooks: Vec<WebhookStats>,
    /// The link to the other instances (`cluster.redis_url`); `None` without one.
    pub cluster: Option<ClusterStatus>,
}

impl Snapshot {
    /// Reads the forwarder's current state (no webhook counters: see
    /// [`Snapshot::with_webhooks`]).
    pub fn capture(forwarder: &Forwarder) -> Self {
        Snapshot {
            groups: forwarder.groups(),
            endpoints: forwarder.endpoints(),
            health: forwarder.health().snapshot(),
            held: forwarder.held_requests(),
            quota: forwarder.quota(),
            key_limits: forwarder.key_limit_views(),
            webhooks: Vec::new(),
            cluster: forwarder.cluster_status(),
        }
    }

    /// Adds the webhook dispatcher's delivery counters, when it runs.
    pub fn with_webhooks(mut self, webhooks: Option<&Webhooks>) -> Self {
        self.webhooks = webhooks.map(Webhooks::stats).unwrap_or_default();
        self
    }
}

/// Priority edit mode on the Endpoints tab.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorityEditing {
    /// Edited priorities by endpoint name.
    pub pending: std::collections::BTreeMap<String, u32>,
    /// The digits typed for the selected endpoint.
    pub input: String,
}

/// Static facts about the running forwarder the UI shows.
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// The URL clients use (`ANTHROPIC_BASE_URL`).
    pub base_url: String,
    /// The version string.
    pub version: String,
}

/// The terminal UI's state.
#[derive(Debug)]
pub struct App {
    pub(crate) info: AppInfo,
    pub(crate) config: Arc<Config>,
    pub(crate) pricing: Pricing,
    pub(crate) tab: Tab,
    pub(crate) snapshot: Snapshot,
    pub(crate) stats: Stats,
    pub(crate) requests: RecentRequests,
    pub(crate) logs: LogBuffer,
    pub(crate) config_lines: Vec<String>,
    pub(crate) started: Instant,
    pub(crate) now: Instant,
    /// The wall clock at the last refresh (budget reset times are shown against it).
    pub(crate) wall: SystemTime,
    pub(crate) selected_endpoint: Option<String>,
    pub(crate) selected_group: Option<String>,
    pub(crate) selected_request: Option<RequestId>,
    pub(crate) show_trail: bool,
    pub(crate) editing: Option<PriorityEditing>,
    pub(crate) notice: Option<Notice>,
    pub(crate) log_filter: LogLevel,
    /// Lines scrolled up from the newest log line (0 follows the tail).
    pub(crate) log_scroll: usize,
    pub(crate) config_scroll: usize,
    pub(crate) quitting: bool,
}

impl App {
    /// A UI for `config`, showing `logs`, started at `now`.
    pub fn new(config: Arc<Config>, info: AppInfo, logs: LogBuffer, now: Instant) -> Self {
        let pricing = Pricing::from_config(&config.usage_tracking);
        let config_lines = crate::render::config_lines(&config);
        App {
            info,
            pricing,
            config_lines,
            config,
            tab: Tab::Overview,
            snapshot: Snapshot::default(),
            stats: Stats::default(),
            requests: RecentRequests::default(),
            logs,
            started: now,
            now,
            wall: SystemTime::now(),
            selected_endpoint: None,
            selected_group: None,
            selected_request: None,
            show_trail: false,
            editing: None,
            notice: None,
            log_filter: LogLevel::Trace,
            log_scroll: 0,
            config_scroll: 0,
            quitting: false,
        }
    }

    /// The tab shown.
    pub fn tab(&self) -> Tab {
        self.tab
    }

    /// The priority edit in progress, if any.
    pub fn editing(&self) -> Option<&PriorityEditing> {
        self.editing.as_ref()
    }

    /// The status bar message.
    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref()
    }

    /// The totals.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Today's cost as the usage store counts it (`None`: no store, or it did not answer).
    pub fn set_cost_today(&mut self, nano: Option<i64>) {
        self.stats.cost_today_nano = nano;
    }

    /// Whether the user asked to quit.
    pub fn is_quitting(&self) -> bool {
        self.quitting
    }

    /// The selected endpoint's name.
    pub fn selected_endpoint(&self) -> Option<&str> {
        self.selected_endpoint.as_deref()
    }

    /// The selected group's name.
    pub fn selected_group(&self) -> Option<&str> {
        self.selected_group.as_deref()
    }

    /// Replaces the forwarder state and the clock (called on every tick and after changes).
    pub fn refresh(&mut self, snapshot: Snapshot, now: Instant, wall: SystemTime) {
        self.snapshot = snapshot;
        self.now = now;
        self.wall = wall;
        self.stats.advance(unix_seconds(wall));
        if self.selected_endpoint.is_none()
            || !self
                .snapshot
                .endpoints
                .iter()
                .any(|endpoint| Some(&endpoint.name) == self.selected_endpoint.as_ref())
        {
            self.selected_endpoint = self
                .endpoint_order()
                .first()
                .map(|endpoint| endpoint.name.clone());
        }
        if self.selected_group.is_none()
            || !self
                .snapshot
                .groups
                .iter()
                .any(|group| Some(&group.name) == self.selected_group.as_ref())
        {
            self.selected_group = self.group_order().first().map(|group| group.name.clone());
        }
    }

    /// Takes in one forwarder event. Returns whether routing or health changed, so the caller
    /// should refresh the [`Snapshot`].
    pub fn on_event(&mut self, event: &ForwarderEvent) -> bool {
        match event {
            ForwarderEvent::Request(event) => {
                self.on_request(event.record());
                false
            }
            _ => true,
        }
    }

    /// Takes in a request's latest state.
    pub fn on_request(&mut self, record: &RequestRecord) {
        let was_final = self
            .requests
            .iter()
            .any(|existing| existing.id == record.id && existing.is_final());
        if self.requests.upsert(record) {
            self.stats.count_arrival(unix_seconds(record.started_at));
        }
        if record.is_final() && !was_final {
            self.stats.record_final(record);
        }
    }

    /// Shows the result of an action.
    pub fn notify(&mut self, notice: Notice) {
        self.notice = Some(notice);
    }

    /// Groups in display order: group priority, then name.
    pub(crate) fn group_order(&self) -> Vec<&GroupView> {
        let mut groups: Vec<&GroupView> = self.snapshot.groups.iter().collect();
        groups.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
        groups
    }

    /// Endpoints in display order: by group (in group order), then effective priority, then
    /// file order.
    pub(crate) fn endpoint_order(&self) -> Vec<&EndpointView> {
        let groups = self.group_order();
        let group_rank = |name: &str| {
            groups
                .iter()
                .position(|group| group.name == name)
                .unwrap_or(usize::MAX)
        };
        let mut endpoints: Vec<&EndpointView> = self.snapshot.endpoints.iter().collect();
        endpoints.sort_by(|a, b| {
            group_rank(&a.group)
                .cmp(&group_rank(&b.group))
                .then(a.priority.cmp(&b.priority))
                .then(a.index.cmp(&b.index))
        });
        endpoints
    }

    /// The request selected on the Requests tab (the newest when none was picked).
    pub(crate) fn selected_request_index(&self) -> Option<usize> {
        if self.requests.is_empty() {
            return None;
        }
        Some(
            self.selected_request
                .and_then(|id| self.requests.position(id))
                .unwrap_or(0),
        )
    }

    /// Log lines that pass the level filter.
    pub(crate) fn filtered_logs(&self) -> Vec<LogLine> {
        self.logs
            .lines()
            .into_iter()
            .filter(|line| line.level >= self.log_filter)
            .collect()
    }

    /// Handles one key; returns what the runtime must do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let control = key.modifiers.contains(KeyModifiers::CONTROL);
        if control && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
            self.quitting = true;
            return vec![Action::Quit];
        }
        if self.editing.is_some() {
            return self.edit_key(key, control);
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') if !control => {
                self.quitting = true;
                return vec![Action::Quit];
            }
            KeyCode::Tab => {
                self.switch_tab(Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()]);
                return Vec::new();
            }
            KeyCode::BackTab => {
                self.switch_tab(Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]);
                return Vec::new();
            }
            KeyCode::Char(digit @ '1'..='6') if !control => {
                let index = usize::from(digit as u8 - b'1');
                self.switch_tab(Tab::ALL[index]);
                return Vec::new();
            }
            _ => {}
        }
        match self.tab {
            Tab::Overview => Vec::new(),
            Tab::Endpoints => self.endpoints_key(key),
            Tab::Groups => self.groups_key(key),
            Tab::Requests => self.requests_key(key),
            Tab::Logs => self.logs_key(key),
            Tab::Config => self.config_key(key),
        }
    }

    fn switch_tab(&mut self, tab: Tab) {
        self.tab = tab;
        self.show_trail = false;
    }

    fn endpoints_key(&mut self, key: KeyEvent) -> Vec<Action> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_endpoint(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_endpoint(1),
            KeyCode::Enter | KeyCode::Char('e') if self.selected_endpoint.is_some() => {
                self.editing = Some(PriorityEditing::default());
                self.notice = Some(Notice::info(
                    "editing priorities: type digits, Backspace, ↑/↓ to move, Ctrl+S applies, Esc discards",
                ));
            }
            _ => {}
        }
        Vec::new()
    }

    fn move_endpoint(&mut self, step: isize) {
        let names: Vec<String> = self
            .endpoint_order()
            .iter()
            .map(|endpoint| endpoint.name.clone())
            .collect();
        self.selected_endpoint = step_selection(&names, self.selected_endpoint.as_ref(), step);
    }

    fn edit_key(&mut self, key: KeyEvent, control: bool) -> Vec<Action> {
        let Some(selected) = self.selected_endpoint.clone() else {
            self.editing = None;
            return Vec::new();
        };
        match key.code {
            KeyCode::Esc => {
                let discarded = self
                    .editing
                    .take()
                    .map_or(0, |editing| editing.pending.len());
                self.notice = Some(Notice::info(if discarded == 0 {
                    "left edit mode".to_string()
                } else {
                    format!("discarded {discarded} priority edit(s)")
                }));
            }
            KeyCode::Char('s') | KeyCode::Char('S') if control => {
                let Some(editing) = self.editing.take() else {
                    return Vec::new();
                };
                let edits: Vec<PriorityEdit> = self
                    .endpoint_order()
                    .iter()
                    .filter_map(|endpoint| {
                        editing
                            .pending
                            .get(&endpoint.name)
                            .map(|priority| PriorityEdit {
                                endpoint: endpoint.name.clone(),
                                priority: *priority,
                            })
                    })
                    .collect();
                if edits.is_empty() {
                    self.notice = Some(Notice::info("no priority changes to apply"));
                    return Vec::new();
                }
                self.notice = Some(Notice::info(format!(
                    "applying {} priority edit(s)…",
                    edits.len()
                )));
                return vec![Action::ApplyPriorities { edits }];
            }
            KeyCode::Up | KeyCode::Down => {
                self.move_endpoint(if key.code == KeyCode::Up { -1 } else { 1 });
                let selected = self.selected_endpoint.clone();
                if let Some(editing) = self.editing.as_mut() {
                    editing.input = selected
                        .and_then(|name| editing.pending.get(&name).map(u32::to_string))
                        .unwrap_or_default();
                }
            }
            KeyCode::Char(digit) if digit.is_ascii_digit() && !control => {
                if let Some(editing) = self.editing.as_mut() {
                    let mut input = editing.input.clone();
                    input.push(digit);
                    match input.parse::<u32>() {
                        Ok(priority) => {
                            editing.input = input;
                            editing.pending.insert(selected, priority);
                        }
                        Err(_) => {
                            self.notice = Some(Notice::error("priority too large"));
                        }
                    }
                }
            }
            KeyCode::Backspace => {
                if let Some(editing) = self.editing.as_mut() {
                    editing.input.pop();
                    match editing.input.parse::<u32>() {
                        Ok(priority) => {
                            editing.pending.insert(selected, priority);
                        }
                        Err(_) => {
                            editing.pending.remove(&selected);
                        }
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn groups_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let names: Vec<String> = self
            .group_order()
            .iter()
            .map(|group| group.name.clone())
            .collect();
        let Some(group) = self.selected_group.clone() else {
            return Vec::new();
        };
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected_group = step_selection(&names, Some(&group), -1);
                Vec::new()
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected_group = step_selection(&names, Some(&group), 1);
                Vec::new()
            }
            KeyCode::Char('a') => vec![Action::ActivateGroup {
                group,
                force: false,
            }],
            KeyCode::Char('f') => vec![Action::ActivateGroup { group, force: true }],
            KeyCode::Char('p') => vec![Action::PauseGroup { group }],
            KeyCode::Char('r') => vec![Action::ResumeGroup { group }],
            _ => Vec::new(),
        }
    }

    fn requests_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let Some(index) = self.selected_request_index() else {
            return Vec::new();
        };
        let last = self.requests.len().saturating_sub(1);
        let target = match key.code {
            KeyCode::Up | KeyCode::Char('k') => index.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => (index + 1).min(last),
            KeyCode::PageUp => index.saturating_sub(10),
            KeyCode::PageDown => (index + 10).min(last),
            KeyCode::Home => 0,
            KeyCode::End => last,
            KeyCode::Enter => {
                self.show_trail = !self.show_trail;
                index
            }
            KeyCode::Esc => {
                self.show_trail = false;
                index
            }
            _ => index,
        };
        self.selected_request = self.requests.get(target).map(|record| record.id);
        Vec::new()
    }

    fn logs_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let total = self.filtered_logs().len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.log_scroll += 1,
            KeyCode::Down | KeyCode::Char('j') => {
                self.log_scroll = self.log_scroll.saturating_sub(1)
            }
            KeyCode::PageUp => self.log_scroll += 10,
            KeyCode::PageDown => self.log_scroll = self.log_scroll.saturating_sub(10),
            KeyCode::Home => self.log_scroll = total,
            KeyCode::End => self.log_scroll = 0,
            KeyCode::Char('l') => {
                let next = LogLevel::ALL
                    .iter()
                    .position(|level| *level == self.log_filter)
                    .map_or(0, |index| (index + 1) % LogLevel::ALL.len());
                self.log_filter = LogLevel::ALL[next];
                self.log_scroll = 0;
            }
            KeyCode::Char('d') => self.log_filter = LogLevel::Debug,
            KeyCode::Char('i') => self.log_filter = LogLevel::Info,
            KeyCode::Char('w') => self.log_filter = LogLevel::Warn,
            KeyCode::Char('e') => self.log_filter = LogLevel::Error,
            KeyCode::Char('a') => self.log_filter = LogLevel::Trace,
            _ => {}
        }
        self.log_scroll = self.log_scroll.min(total.saturating_sub(1));
        Vec::new()
    }

    fn config_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let last = self.config_lines.len().saturating_sub(1);
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.config_scroll = self.config_scroll.saturating_sub(1)
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.config_scroll = (self.config_scroll + 1).min(last)
            }
            KeyCode::PageUp => self.config_scroll = self.config_scroll.saturating_sub(10),
            KeyCode::PageDown => self.config_scroll = (self.config_scroll + 10).min(last),
            KeyCode::Home => self.config_scroll = 0,
            _ => {}
        }
        Vec::new()
    }

    /// Where priority edits are saved, when `tui.save_priority_edits` is on.
    pub fn save_path(&self) -> Option<&PathBuf> {
        self.config
            .tui
            .save_priority_edits
            .then_some(self.config.source.as_ref())
            .flatten()
    }
}

/// The name `step` places away from `current` in `names`, clamped to the ends.
fn step_selection(names: &[String], current: Option<&String>, step: isize) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let index = current
        .and_then(|current| names.iter().position(|name| name == current))
        .unwrap_or(0);
    let target = index
        .saturating_add_signed(step)
        .min(names.len().saturating_sub(1));
    names.get(target).cloned()
}
