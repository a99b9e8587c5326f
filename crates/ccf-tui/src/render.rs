//! Drawing [`App`] into a ratatui [`Frame`]: header, tab bar, the tab's page, status bar.
//!
//! Rendering reads the state and never changes it, so any backend (the real terminal or
//! ratatui's `TestBackend`) shows the same thing for the same state.

use std::time::{Duration, SystemTime};

use ccf_config::Config;
use ccf_lifecycle::{AttemptOutcome, RequestRecord, Status};
use ccf_proxy::cluster::ClusterStatus;
use ccf_proxy::key_limits::KeyLimitView;
use ccf_proxy::BudgetPeriod;
use ccf_router::GroupStatus;
use ccf_types::mask_secret;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs, Wrap,
};
use ratatui::Frame;

use crate::app::{App, Tab};
use crate::logs::LogLevel;

const HIGHLIGHT: Style = Style::new().add_modifier(Modifier::REVERSED);

impl App {
    /// Draws the whole UI into `frame`.
    pub fn render(&self, frame: &mut Frame<'_>) {
        let [header, tabs, body, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        self.render_header(frame, header);
        self.render_tabs(frame, tabs);
        match self.tab {
            Tab::Overview => self.render_overview(frame, body),
            Tab::Endpoints => self.render_endpoints(frame, body),
            Tab::Groups => self.render_groups(frame, body),
            Tab::Requests => self.render_requests(frame, body),
            Tab::Logs => self.render_logs(frame, body),
            Tab::Config => self.render_config(frame, body),
        }
        self.render_status(frame, status);
    }

    fn active_group(&self) -> Option<&str> {
        self.snapshot
            .groups
            .iter()
            .find(|group| group.is_active)
            .map(|group| group.name.as_str())
    }

    fn render_header(&self, frame: &mut Frame<'_>, area: Rect) {
        let uptime = self.now.saturating_duration_since(self.started);
        let line = Line::from(vec![
            Span::styled(
                format!(" cc-forwarder {} ", self.info.version),
                Style::new().bold().fg(Color::Cyan),
            ),
            Span::raw(format!(
                "│ {} │ up {} │ active group: {} │ in flight: {} │ held: {}",
                self.info.base_url,
                format_duration(uptime),
                self.active_group().unwrap_or("none"),
                self.requests.in_flight(),
                self.snapshot.held.len(),
            )),
        ]);
        frame.render_widget(Paragraph::new(line), area);
    }

    fn render_tabs(&self, frame: &mut Frame<'_>, area: Rect) {
        let titles: Vec<String> = Tab::ALL
            .iter()
            .enumerate()
            .map(|(index, tab)| format!("{} {}", index + 1, tab.title()))
            .collect();
        let selected = Tab::ALL.iter().position(|tab| *tab == self.tab);
        let tabs = Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::new().bold().fg(Color::Yellow).reversed())
            .divider("│");
        frame.render_widget(tabs, area);
    }

    fn render_status(&self, frame: &mut Frame<'_>, area: Rect) {
        let help = match (self.tab, self.editing.is_some()) {
            (Tab::Endpoints, true) => {
                "EDIT: digits type a priority · Backspace · ↑/↓ move · Ctrl+S apply · Esc discard"
            }
            (Tab::Endpoints, false) => {
                "↑/↓ select · Enter/e edit priorities · Tab/1-6 tabs · q quit"
            }
            (Tab::Groups, _) => {
                "↑/↓ select · a activate · f force-activate · p pause · r resume · q quit"
            }
            (Tab::Requests, _) => "↑/↓ select · Enter attempt trail · Esc close · q quit",
            (Tab::Logs, _) => "↑/↓ PgUp/PgDn scroll · End follow · l level (a/d/i/w/e) · q quit",
            (Tab::Config, _) => "↑/↓ scroll · secrets are masked · q quit",
            (Tab::Overview, _) => "Tab/Shift+Tab or 1-6 switch tabs · q or Ctrl+C quit",
        };
        let line = match &self.notice {
            Some(notice) => Line::from(vec![
                Span::styled(
                    format!(" {} ", notice.text),
                    if notice.error {
                        Style::new().fg(Color::White).bg(Color::Red)
                    } else {
                        Style::new().fg(Color::Black).bg(Color::Green)
                    },
                ),
                Span::raw(format!(" {help}")),
            ]),
            None => Line::from(format!(" {help}")),
        };
        frame.render_widget(Paragraph::new(line).style(Style::new().dim()), area);
    }

    fn render_overview(&self, frame: &mut Frame<'_>, area: Rect) {
        let keys = self.limited_keys();
        let keys_height = panel_height(keys.len());
        let webhooks_height = panel_height(self.snapshot.webhooks.len());
        let cluster_height = u16::from(self.snapshot.cluster.is_some());
        let [top, cluster_area, keys_area, webhooks_area, bottom] = Layout::vertical([
            Constraint::Length(10),
            Constraint::Length(cluster_height),
            Constraint::Length(keys_height),
            Constraint::Length(webhooks_height),
            Constraint::Min(3),
        ])
        .areas(area);
        if let Some(cluster) = &self.snapshot.cluster {
            frame.render_widget(Paragraph::new(cluster_line(cluster)), cluster_area);
        }
        if !keys.is_empty() {
            self.render_key_limits(frame, keys_area, &keys);
        }
        if !self.snapshot.webhooks.is_empty() {
            self.render_webhooks(frame, webhooks_area);
        }
        let [requests_area, tokens_area, routing_area] = Layout::horizontal([
            Constraint::Percentage(34),
            Constraint::Percentage(33),
            Constraint::Percentage(33),
        ])
        .areas(top);
        let stats = &self.stats;
        let requests = vec![
            kv("Requests", stats.finished.to_string()),
            kv("In flight", self.requests.in_flight().to_string()),
            kv("Completed", stats.completed.to_string()),
            kv("Failed", stats.failed.to_string()),
            kv("Cancelled", stats.cancelled.to_string()),
            kv(
                "Success rate",
                stats
                    .success_rate()
                    .map_or("-".to_string(), |rate| format!("{rate:.1}%")),
            ),
            kv(
                "Avg latency",
                stats
                    .average_duration()
                    .map_or("-".to_string(), format_duration),
            ),
            kv("Requests/s", stats.last_rate().to_string()),
        ];
        frame.render_widget(
            Paragraph::new(requests).block(Block::bordered().title(" Requests ")),
            requests_area,
        );
        let tokens = vec![
            kv("Input", format_count(stats.tokens.input)),
            kv("Output", format_count(stats.tokens.output)),
            kv("Cache write", format_count(stats.tokens.cache_creation)),
            kv("Cache read", format_count(stats.tokens.cache_read)),
            kv(
                "Total",
                format_count(
                    stats.tokens.input
                        + stats.tokens.output
                        + stats.tokens.cache_creation
                        + stats.tokens.cache_read,
                ),
            ),
            kv(
                "Cost today",
                stats
                    .cost_today_nano
                    .map_or_else(|| "-".to_string(), format_cost),
            ),
        ];
        frame.render_widget(
            Paragraph::new(tokens).block(Block::bordered().title(" Tokens ")),
            tokens_area,
        );
        let healthy = self
            .snapshot
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.healthy)
            .count();
        let routing = vec![
            kv(
                "Active group",
                self.active_group().unwrap_or("none").to_string(),
            ),
            kv(
                "Endpoints",
                format!("{healthy}/{} healthy", self.snapshot.endpoints.len()),
            ),
            kv("Groups", self.snapshot.groups.len().to_string()),
            kv(
                "Strategy",
                format!("{:?}", self.config.strategy.kind).to_lowercase(),
            ),
            kv(
                "Auto switch",
                on_off(self.config.group.auto_switch_between_groups).to_string(),
            ),
            kv("Held", self.snapshot.held.len().to_string()),
        ];
        frame.render_widget(
            Paragraph::new(routing).block(Block::bordered().title(" Routing ")),
            routing_area,
        );
        let history = self.stats.rate_history();
        let width = usize::from(bottom.width.saturating_sub(2));
        let shown = &history[history.len().saturating_sub(width)..];
        let peak = shown.iter().copied().max().unwrap_or(0);
        let sparkline = Sparkline::default()
            .block(
                Block::bordered()
                    .title(format!(" Requests/s (last {}s, peak {peak}) ", shown.len())),
            )
            .data(shown)
            .style(Style::new().fg(Color::Green));
        frame.render_widget(sparkline, bottom);
    }

    /// API keys with at least one limit, in configuration order.
    fn limited_keys(&self) -> Vec<&KeyLimitView> {
        self.snapshot
            .key_limits
            .iter()
            .filter(|view| {
                let limits = &view.limits;
                limits.requests_per_minute.is_some()
                    || limits.concurrency.is_some()
                    || limits.daily_budget_usd.is_some()
                    || limits.monthly_budget_usd.is_some()
            })
            .collect()
    }

    /// The Keys panel: per key name (never the key), spend against its budgets, the request
    /// rate, concurrency, the queue, and a budget that refuses it now with when it resets.
    fn render_key_limits(&self, frame: &mut Frame<'_>, area: Rect, keys: &[&KeyLimitView]) {
        let rows: Vec<Row<'_>> = keys
            .iter()
            .map(|view| {
                let limits = &view.limits;
                let state = key_state_text(view, self.wall);
                let style = if view.budget_exceeded.is_some() {
                    Style::new().fg(Color::Red)
                } else if view.queued > 0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                };
                Row::new(vec![
                    Cell::from(view.name.clone()),
                    Cell::from(spend_text(view.spent_today_usd, limits.daily_budget_usd)),
                    Cell::from(spend_text(
                        view.spent_this_month_usd,
                        limits.monthly_budget_usd,
                    )),
                    Cell::from(of_limit(
                        view.requests_last_minute,
                        limits.requests_per_minute,
                    )),
                    Cell::from(of_limit(view.in_flight, limits.concurrency)),
                    Cell::from(view.queued.to_string()),
                    Cell::from(state),
                ])
                .style(style)
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(16),
                Constraint::Length(18),
                Constraint::Length(18),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Fill(1),
            ],
        )
        .header(
            Row::new(vec![
                "Key",
                "Today",
                "This month",
                "Req/min",
                "In flight",
                "Queued",
                "State",
            ])
            .style(Style::new().bold().underlined()),
        )
        .block(Block::bordered().title(" Keys (limits per API key) "));
        frame.render_widget(table, area);
    }

    /// The Webhooks panel: per receiver its URL (no user-info, no query), delivered / failed / dropped counts,
    /// the queue and the last delivery error.
    fn render_webhooks(&self, frame: &mut Frame<'_>, area: Rect) {
        let rows: Vec<Row<'_>> = self
            .snapshot
            .webhooks
            .iter()
            .map(|webhook| {
                let style = if webhook.failed > 0 || webhook.dropped > 0 {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                };
                let last_error = match (&webhook.last_error, webhook.last_error_at) {
                    (Some(error), Some(at)) => format!("{} {error}", clock_time(at)),
                    (Some(error), None) => error.clone(),
                    (None, _) => "-".to_string(),
                };
                Row::new(vec![
                    // Already masked by the dispatcher; the UI also drops user-info and query,
                    // as for endpoint URLs.
                    Cell::from(display_url(&webhook.url)),
                    Cell::from(if webhook.signed { "yes" } else { "no" }),
                    Cell::from(webhook.delivered.to_string()),
                    Cell::from(webhook.failed.to_string()),
                    Cell::from(webhook.dropped.to_string()),
                    Cell::from(webhook.queued.to_string()),
                    Cell::from(last_error),
                ])
                .style(style)
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(40),
                Constraint::Length(7),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Fill(1),
            ],
        )
        .header(
            Row::new(vec![
                "Webhook",
                "Signed",
                "Delivered",
                "Failed",
                "Dropped",
                "Queued",
                "Last error",
            ])
            .style(Style::new().bold().underlined()),
        )
        .block(Block::bordered().title(" Webhooks "));
        frame.render_widget(table, area);
    }

    fn render_endpoints(&self, frame: &mut Frame<'_>, area: Rect) {
        let details = self.endpoint_details();
        let details_height = u16::try_from(details.len() + 2).unwrap_or(u16::MAX).max(9);
        let [table_area, details_area] =
            Layout::vertical([Constraint::Min(4), Constraint::Length(details_height)]).areas(area);
        let editing = self.editing.as_ref();
        let mut rows = Vec::new();
        let mut selected_row = None;
        let endpoints = self.endpoint_order();
        for group in self.group_order() {
            rows.push(
                Row::new(vec![
                    Cell::from(""),
                    Cell::from(format!(
                        "▸ {} (group priority {})",
                        group.name, group.priority
                    )),
                    Cell::from(""),
                    Cell::from(group_status_text(group)),
                ])
                .style(Style::new().bold().fg(Color::Cyan)),
            );
            for endpoint in endpoints.iter().filter(|e| e.group == group.name) {
                let health = self.snapshot.health.get(&endpoint.name);
                let status = match health {
                    Some(health) if health.never_checked => "? new",
                    _ if endpoint.healthy => "● up",
                    _ => "✗ down",
                };
                let pending = editing.and_then(|editing| editing.pending.get(&endpoint.name));
                let is_selected = self.selected_endpoint.as_deref() == Some(&endpoint.name);
                let priority = match pending {
                    Some(new) if *new != endpoint.priority => {
                        format!("{} → {new}*", endpoint.priority)
                    }
                    Some(new) => format!("{new}*"),
                    None if editing.is_some() && is_selected => format!("{} ✎", endpoint.priority),
                    None => endpoint.priority.to_string(),
                };
                let latency = endpoint
                    .latency_ewma
                    .or(endpoint.probe_latency)
                    .or(health.and_then(|health| health.last_latency))
                    .map_or("-".to_string(), format_duration);
                let counts = self
                    .stats
                    .endpoints
                    .get(&endpoint.name)
                    .copied()
                    .unwrap_or_default();
                if is_selected {
                    selected_row = Some(rows.len());
                }
                let style = if pending.is_some() {
                    Style::new().fg(Color::Yellow)
                } else if endpoint.healthy {
                    Style::new()
                } else {
                    Style::new().fg(Color::Red)
                };
                rows.push(
                    Row::new(vec![
                        Cell::from(status),
                        Cell::from(format!("  {}", endpoint.name)),
                        Cell::from(priority),
                        Cell::from(latency),
                        Cell::from(counts.requests.to_string()),
                        Cell::from(counts.failures.to_string()),
                    ])
                    .style(style),
                );
            }
        }
        let title = if editing.is_some() {
            " Endpoints — EDITING priorities (Ctrl+S apply, Esc discard) ".to_string()
        } else {
            " Endpoints ".to_string()
        };
        let table = Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Min(24),
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new(vec!["Status", "Name", "Priority", "Resp", "Reqs", "Fails"])
                .style(Style::new().bold().underlined()),
        )
        .block(
            Block::bordered()
                .title(title)
                .border_style(if editing.is_some() {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                }),
        )
        .row_highlight_style(HIGHLIGHT);
        let mut state = TableState::default().with_selected(selected_row);
        frame.render_stateful_widget(table, table_area, &mut state);
        frame.render_widget(
            Paragraph::new(details)
                .block(Block::bordered().title(" Details "))
                .wrap(Wrap { trim: false }),
            details_area,
        );
    }

    fn endpoint_details(&self) -> Vec<Line<'static>> {
        let Some(name) = self.selected_endpoint.as_deref() else {
            return vec![Line::from("no endpoint")];
        };
        let Some(view) = self
            .snapshot
            .endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
        else {
            return vec![Line::from("no endpoint")];
        };
        let configured = self.config.endpoint(name);
        let health = self.snapshot.health.get(name);
        let mut lines = vec![
            kv("Endpoint", format!("{} (group {})", view.name, view.group)),
            kv(
                "URL",
                configured.map_or("-".to_string(), |endpoint| {
                    display_url(endpoint.url.as_str())
                }),
            ),
            kv(
                "Priority",
                format!(
                    "{} (configured {}){}",
                    view.priority,
                    view.config_priority,
                    if view.blocked_until.is_some_and(|until| until > self.now) {
                        " · rate limited"
                    } else {
                        ""
                    }
                ),
            ),
            kv(
                "Latency",
                format!(
                    "avg {} · probe {}",
                    view.latency_ewma.map_or("-".to_string(), format_duration),
                    view.probe_latency.map_or("-".to_string(), format_duration)
                ),
            ),
        ];
        if let Some(health) = health {
            lines.push(kv(
                "Health",
                format!(
                    "{}{} · {} consecutive failure(s){}",
                    if health.never_checked {
                        "not checked yet"
                    } else if health.healthy {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    if health.auth_failed {
                        " (credentials rejected)"
                    } else {
                        ""
                    },
                    health.consecutive_failures,
                    health
                        .last_error
                        .as_deref()
                        .map_or(String::new(), |error| format!(" · last error: {error}")),
                ),
            ));
        }
        if let Some(quota) = self
            .snapshot
            .quota
            .iter()
            .find(|quota| quota.endpoint == name)
            .and_then(quota_text)
        {
            lines.push(kv("Quota", quota));
        }
        if let Some(endpoint) = configured.filter(|endpoint| !endpoint.model_map.is_empty()) {
            lines.push(kv("Model map", model_map_text(&endpoint.model_map)));
        }
        if let Some(endpoint) = configured {
            lines.push(kv(
                "Credentials",
                format!(
                    "token {} · api-key {} · timeout {}",
                    endpoint
                        .token
                        .as_ref()
                        .map_or("-".to_string(), |secret| secret.masked()),
                    endpoint
                        .api_key
                        .as_ref()
                        .map_or("-".to_string(), |secret| secret.masked()),
                    format_duration(endpoint.timeout)
                ),
            ));
        }
        lines
    }

    fn render_groups(&self, frame: &mut Frame<'_>, area: Rect) {
        let groups = self.group_order();
        let selected = groups
            .iter()
            .position(|group| self.selected_group.as_deref() == Some(&group.name));
        let rows: Vec<Row<'_>> = groups
            .iter()
            .map(|group| {
                let mut notes = Vec::new();
                if group.forced {
                    notes.push("forced".to_string());
                }
                if group.needs_attention {
                    notes.push("needs attention".to_string());
                }
                if group.paused {
                    notes.push(match group.paused_until {
                        Some(until) => format!(
                            "paused for {}",
                            format_duration(until.saturating_duration_since(self.now))
                        ),
                        None => "paused until resumed".to_string(),
                    });
                }
                let actions: Vec<&str> = [
                    (group.can_activate, "a"),
                    (group.can_force_activate, "f"),
                    (group.can_pause, "p"),
                    (group.can_resume, "r"),
                ]
                .iter()
                .filter(|(allowed, _)| *allowed)
                .map(|(_, key)| *key)
                .collect();
                let style = match group.status {
                    GroupStatus::Active => Style::new().fg(Color::Green).bold(),
                    GroupStatus::Paused => Style::new().fg(Color::Yellow),
                    GroupStatus::Cooldown | GroupStatus::NoHealthyEndpoints => {
                        Style::new().fg(Color::Red)
                    }
                    GroupStatus::Available => Style::new(),
                };
                Row::new(vec![
                    Cell::from(group.name.clone()),
                    Cell::from(group.priority.to_string()),
                    Cell::from(group_status_text(group)),
                    Cell::from(format!(
                        "{}/{}",
                        group.healthy_endpoints, group.total_endpoints
                    )),
                    Cell::from(if group.in_cooldown {
                        format!("{}s", group.cooldown_remaining.as_secs())
                    } else {
                        "-".to_string()
                    }),
                    Cell::from(actions.join(" ")),
                    Cell::from(notes.join(", ")),
                ])
                .style(style)
            })
            .collect();
        let mode = if self.config.group.auto_switch_between_groups {
            "auto"
        } else {
            "manual"
        };
        let table = Table::new(
            rows,
            [
                Constraint::Min(14),
                Constraint::Length(8),
                Constraint::Length(18),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Min(16),
            ],
        )
        .header(
            Row::new(vec![
                "Group", "Priority", "State", "Healthy", "Cooldown", "Keys", "Notes",
            ])
            .style(Style::new().bold().underlined()),
        )
        .block(Block::bordered().title(format!(" Groups ({mode} switching) ")))
        .row_highlight_style(HIGHLIGHT);
        let mut state = TableState::default().with_selected(selected);
        let rules = &self.config.routing.model_rules;
        if rules.is_empty() {
            frame.render_stateful_widget(table, area, &mut state);
            return;
        }
        let [table_area, rules_area] = Layout::vertical([
            Constraint::Min(4),
            Constraint::Length(panel_height(rules.len()).saturating_sub(1)),
        ])
        .areas(area);
        frame.render_stateful_widget(table, table_area, &mut state);
        let lines: Vec<Line<'_>> = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Line::from(model_rule_text(index, rule)))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::bordered().title(" Model rules (first match picks the start group) "),
            ),
            rules_area,
        );
    }

    fn render_requests(&self, frame: &mut Frame<'_>, area: Rect) {
        let (table_area, trail_area) = if self.show_trail {
            let [table, trail] =
                Layout::vertical([Constraint::Min(4), Constraint::Length(10)]).areas(area);
            (table, Some(trail))
        } else {
            (area, None)
        };
        let rows: Vec<Row<'_>> = self
            .requests
            .iter()
            .map(|record| {
                let tokens = record.usage.as_ref().map_or("-".to_string(), |usage| {
                    format!(
                        "{}/{}",
                        format_count(
                            usage.input_tokens
                                + usage.cache_read_input_tokens
                                + usage.cache_creation_input_tokens
                        ),
                        format_count(usage.output_tokens)
                    )
                });
                let cost = record.usage.as_ref().map_or("-".to_string(), |usage| {
                    format_cost(self.pricing.cost(record.model(), usage).total)
                });
                let duration = match record.duration {
                    Some(duration) => format_duration(duration),
                    None => format!(
                        "{}…",
                        format_duration(
                            SystemTime::now()
                                .duration_since(record.started_at)
                                .unwrap_or_default()
                        )
                    ),
                };
                Row::new(vec![
                    Cell::from(clock_time(record.started_at)),
                    Cell::from(status_text(record)),
                    Cell::from(record.model().unwrap_or("-").to_string()),
                    Cell::from(record.endpoint.clone().unwrap_or_else(|| "-".to_string())),
                    Cell::from(tokens),
                    Cell::from(cost),
                    Cell::from(duration),
                    Cell::from(record.id.to_string()),
                ])
                .style(status_style(record))
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(16),
                Constraint::Min(18),
                Constraint::Length(14),
                Constraint::Length(13),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(20),
            ],
        )
        .header(
            Row::new(vec![
                "Time",
                "Status",
                "Model",
                "Endpoint",
                "Tokens in/out",
                "Cost",
                "Duration",
                "ID",
            ])
            .style(Style::new().bold().underlined()),
        )
        .block(Block::bordered().title(format!(
            " Requests (newest first, {} kept) ",
            self.requests.len()
        )))
        .row_highlight_style(HIGHLIGHT);
        let mut state = TableState::default().with_selected(self.selected_request_index());
        frame.render_stateful_widget(table, table_area, &mut state);
        if let (Some(area), Some(record)) = (
            trail_area,
            self.selected_request_index()
                .and_then(|index| self.requests.get(index)),
        ) {
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(trail_lines(record))
                    .block(Block::bordered().title(format!(" Attempt trail of {} ", record.id)))
                    .wrap(Wrap { trim: false }),
                area,
            );
        }
    }

    fn render_logs(&self, frame: &mut Frame<'_>, area: Rect) {
        let lines = self.filtered_logs();
        let height = usize::from(area.height.saturating_sub(2));
        // Scrolled back as far as possible, the oldest lines still fill the panel.
        let end = lines
            .len()
            .saturating_sub(self.log_scroll)
            .max(height.min(lines.len()));
        let start = end.saturating_sub(height);
        let shown: Vec<Line<'_>> = lines[start..end]
            .iter()
            .map(|line| {
                let style = match line.level {
                    LogLevel::Error => Style::new().fg(Color::Red),
                    LogLevel::Warn => Style::new().fg(Color::Yellow),
                    LogLevel::Info => Style::new(),
                    LogLevel::Debug | LogLevel::Trace => Style::new().dim(),
                };
                Line::styled(line.text.clone(), style)
            })
            .collect();
        let filter = if self.log_filter == LogLevel::Trace {
            "all levels".to_string()
        } else {
            format!("{} and above", self.log_filter)
        };
        let position = if self.log_scroll == 0 {
            "following".to_string()
        } else {
            format!("{} lines up", self.log_scroll)
        };
        frame.render_widget(
            Paragraph::new(shown).block(Block::bordered().title(format!(
                " Logs ({filter}, {} lines, {position}) ",
                lines.len()
            ))),
            area,
        );
    }

    fn render_config(&self, frame: &mut Frame<'_>, area: Rect) {
        let lines: Vec<Line<'_>> = self
            .config_lines
            .iter()
            .skip(self.config_scroll)
            .map(|line| Line::from(line.as_str()))
            .collect();
        let source = self
            .config
            .source
            .as_ref()
            .map_or("(no file)".to_string(), |path| path.display().to_string());
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(format!(" Config: {source} (secrets masked) ")),
            ),
            area,
        );
    }
}

fn kv(key: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{key:<13}"), Style::new().bold()),
        Span::raw(value),
    ])
}

fn on_off(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}

fn group_status_text(group: &ccf_router::GroupView) -> String {
    match group.status {
        GroupStatus::Active => "active".to_string(),
        GroupStatus::Paused => "paused".to_string(),
        GroupStatus::Cooldown => format!("Cooldown {}s", group.cooldown_remaining.as_secs()),
        GroupStatus::NoHealthyEndpoints => "no healthy endpoints".to_string(),
        GroupStatus::Available => "available".to_string(),
    }
}

fn status_text(record: &RequestRecord) -> String {
    let mut text = record.status.to_string();
    if let Some(state) = record.error_state {
        text.push_str(&format!("/{state}"));
    }
    if let Some(code) = record.http_status {
        text.push_str(&format!(" {code}"));
    }
    text
}

fn status_style(record: &RequestRecord) -> Style {
    match record.status {
        Status::Completed => Style::new().fg(Color::Green),
        Status::Failed => Style::new().fg(Color::Red),
        Status::Cancelled => Style::new().fg(Color::Yellow),
        _ => Style::new().fg(Color::Cyan),
    }
}

fn trail_lines(record: &RequestRecord) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(format!(
        "{} {} · model {} · {} attempt(s) · {}",
        record.method,
        record.path,
        record.model().unwrap_or("-"),
        record.attempts.len(),
        record
            .failure_reason
            .map_or("no failure".to_string(), |reason| format!(
                "failure: {reason}{}",
                record
                    .last_failure_reason
                    .as_deref()
                    .map_or(String::new(), |detail| format!(" ({detail})"))
            )),
    ))];
    if record.attempts.is_empty() {
        lines.push(Line::from("no upstream attempt yet"));
    }
    for (number, attempt) in record.attempts.iter().enumerate() {
        let outcome = match &attempt.outcome {
            AttemptOutcome::Status { status } => format!("HTTP {status}"),
            AttemptOutcome::ConnectError { message } => format!("connect error: {message}"),
            AttemptOutcome::HeaderTimeout => "no response headers in time".to_string(),
        };
        lines.push(Line::from(format!(
            "#{} {} {} (group {}) → {outcome} in {}",
            number + 1,
            clock_time(attempt.started_at),
            attempt.endpoint,
            attempt.group,
            format_duration(attempt.duration),
        )));
    }
    if let Some(usage) = &record.usage {
        lines.push(Line::from(format!(
            "usage: input {} · output {} · cache write {} · cache read {}{}",
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            if record.partial { " (partial)" } else { "" }
        )));
    }
    lines
}

/// The Overview's line about the link to the other instances (`cluster.redis_url`): the
/// backend's state in colour, then the details an operator acts on.
fn cluster_line(status: &ClusterStatus) -> Line<'static> {
    let (state, details) = cluster_text(status);
    let colour = if status.connected {
        Color::Green
    } else {
        Color::Red
    };
    let mut spans = vec![Span::styled(
        format!(" {state}"),
        Style::new().bold().fg(colour),
    )];
    if !details.is_empty() {
        spans.push(Span::raw(format!(" · {details}")));
    }
    Line::from(spans)
}

/// `Redis: connected` or `Redis: down, local state since 12:03:04`, and the details after it:
/// the address, the last error while down, and the counters that are not zero.
pub(crate) fn cluster_text(status: &ClusterStatus) -> (String, String) {
    let mut backend = match status.backend {
        "" => "cluster".to_string(),
        named => named.to_string(),
    };
    if let Some(first) = backend.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let state = match (status.connected, status.since) {
        (true, _) => format!("{backend}: connected"),
        (false, Some(since)) => format!("{backend}: down, local state since {}", clock_time(since)),
        (false, None) => format!("{backend}: down, local state"),
    };
    let mut details = vec![display_url(&status.address)];
    if !status.connected {
        if let Some(error) = &status.last_error {
            details.push(error.clone());
        }
    }
    for (count, word) in [
        (status.fallbacks, "fallbacks"),
        (status.reconnects, "reconnects"),
        (status.published, "sent"),
        (status.applied, "applied"),
        (status.dropped, "dropped"),
    ] {
        if count > 0 {
            details.push(format!("{} {word}", format_count(count)));
        }
    }
    details.retain(|detail| !detail.is_empty());
    (state, details.join(" · "))
}

/// Local wall-clock time `HH:MM:SS`.
fn clock_time(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(time)
        .format("%H:%M:%S")
        .to_string()
}

/// `850ms`, `1.25s`, `2m05s`, `1h02m`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.2}s", duration.as_secs_f64())
    } else if millis < 3_600_000 {
        let seconds = duration.as_secs();
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        let minutes = duration.as_secs() / 60;
        format!("{}h{:02}m", minutes / 60, minutes % 60)
    }
}

/// An endpoint's subscription account in one line: its status, each window's utilization and
/// reset (the representative window marked `*`), then whether new sessions are drained and how
/// long the endpoint stays blocked. `None` without a subscription account or a block.
pub(crate) fn quota_text(quota: &ccf_router::EndpointQuotaView) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(subscription) = &quota.subscription {
        parts.push(
            subscription
                .status
                .map_or("status -", |status| status.as_str())
                .to_string(),
        );
        for window in subscription.windows.iter().filter(|window| window.current) {
            parts.push(format!(
                "{}{} {} resets in {}",
                window.window,
                if window.representative { "*" } else { "" },
                window
                    .utilization
                    .map_or("-".to_string(), |used| format!("{:.0}%", used * 100.0)),
                window.reset_in.map_or("-".to_string(), format_duration),
            ));
        }
        if subscription.draining && !subscription.rejected {
            parts.push(format!(
                "new sessions drained (>= {:.0}%)",
                subscription.drain_at * 100.0
            ));
        }
    }
    if let Some(blocked) = quota.blocked_for {
        let why = if quota
            .subscription
            .as_ref()
            .is_some_and(|subscription| subscription.rejected)
        {
            "rejected: "
        } else {
            ""
        };
        parts.push(format!("{why}blocked for {}", format_duration(blocked)));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// Height of a bordered table with a header row and `rows` rows (0 without rows: not shown).
fn panel_height(rows: usize) -> u16 {
    if rows == 0 {
        0
    } else {
        u16::try_from(rows + 3).unwrap_or(u16::MAX)
    }
}

/// `$1.23 / $5.00` (spend against a budget), or the spend alone without one.
fn spend_text(spent: f64, budget: Option<f64>) -> String {
    match budget {
        Some(budget) => format!("{} / {}", format_usd(spent), format_usd(budget)),
        None => format_usd(spent),
    }
}

/// USD for people: cents, or four decimals for amounts under a cent.
fn format_usd(value: f64) -> String {
    if value != 0.0 && value.abs() < 0.01 {
        format!("${value:.4}")
    } else {
        format!("${value:.2}")
    }
}

/// `3/60` (a count against its limit), or the count alone without a limit.
fn of_limit(count: u32, limit: Option<u32>) -> String {
    match limit {
        Some(limit) => format!("{count}/{limit}"),
        None => count.to_string(),
    }
}

/// What a key's limits do to its requests now: the budget refusing them and when it resets
/// (local time and how long from `wall`), a full rate or concurrency, else `ok`.
fn key_state_text(view: &KeyLimitView, wall: SystemTime) -> String {
    if let Some(period) = view.budget_exceeded {
        let resets_at = match period {
            BudgetPeriod::Daily => view.day_resets_at,
            BudgetPeriod::Monthly => view.month_resets_at,
        };
        let local = chrono::DateTime::<chrono::Local>::from(resets_at).format("%Y-%m-%d %H:%M");
        let left = resets_at.duration_since(wall).unwrap_or_default();
        return format!(
            "budget reached ({}) until {local} (in {})",
            period.as_str(),
            format_duration(left)
        );
    }
    let limits = &view.limits;
    let mut notes = Vec::new();
    if limits
        .requests_per_minute
        .is_some_and(|limit| view.requests_last_minute >= limit)
    {
        notes.push("rate limit reached".to_string());
    }
    if limits
        .concurrency
        .is_some_and(|limit| view.in_flight >= limit)
    {
        notes.push("all slots busy".to_string());
    }
    if notes.is_empty() {
        "ok".to_string()
    } else {
        notes.join(", ")
    }
}

/// `claude-* → glm-4.6 · opus → x`: an endpoint's model map, in the order it is tried.
fn model_map_text(map: &ccf_config::ModelMap) -> String {
    map.entries()
        .map(|(pattern, target)| format!("{pattern} → {target}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `1. *haiku* → group cheap (only)`: one `routing.model_rules` entry.
fn model_rule_text(index: usize, rule: &ccf_config::ModelRuleConfig) -> String {
    format!(
        "{}. {} → group {}{}",
        index + 1,
        rule.pattern,
        rule.group,
        if rule.only {
            " (only: no failover to other groups)"
        } else {
            ""
        }
    )
}

/// `1,234,567`.
pub(crate) fn format_count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    // Digits left before the next comma: the leading group has 1 to 3 of them.
    let mut until_comma = match digits.len() % 3 {
        0 => 3,
        leading => leading,
    };
    for digit in digits.chars() {
        if until_comma == 0 {
            out.push(',');
            until_comma = 3;
        }
        out.push(digit);
        until_comma -= 1;
    }
    out
}

/// Nano-USD as `$0.0123`.
pub(crate) fn format_cost(nano: i64) -> String {
    format!("${:.4}", nano as f64 / 1e9)
}

/// A URL without credentials, query or fragment.
fn display_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// The configuration as text lines, every credential masked.
pub(crate) fn config_lines(config: &Config) -> Vec<String> {
    let secret = |value: Option<&ccf_types::Secret>| {
        value.map_or("(none)".to_string(), ccf_types::Secret::masked)
    };
    let mut lines = vec![
        "server:".to_string(),
        format!("  host: {}", config.server.host),
        format!("  port: {}", config.server.port),
        format!(
            "  max_request_body_size: {}",
            config.server.max_request_body_size
        ),
        format!("  shutdown_timeout: {}", config.server.shutdown_timeout),
        "strategy:".to_string(),
        format!(
            "  type: {}",
            format!("{:?}", config.strategy.kind).to_lowercase()
        ),
        format!("  fast_test_enabled: {}", config.strategy.fast_test_enabled),
        "retry:".to_string(),
        format!("  max_attempts: {}", config.retry.max_attempts),
        format!("  base_delay: {}", config.retry.base_delay),
        format!("  max_delay: {}", config.retry.max_delay),
        format!("  multiplier: {}", config.retry.multiplier),
        "health:".to_string(),
        format!("  check_interval: {}", config.health.check_interval),
        format!("  timeout: {}", config.health.timeout),
        format!("  health_path: {}", config.health.health_path),
        "group:".to_string(),
        format!("  cooldown: {}", config.group.cooldown),
        format!(
            "  auto_switch_between_groups: {}",
            config.group.auto_switch_between_groups
        ),
        "request_suspend:".to_string(),
        format!("  enabled: {}", config.request_suspend.enabled),
        format!("  timeout: {}", config.request_suspend.timeout),
        format!(
            "  max_suspended_requests: {}",
            config.request_suspend.max_suspended_requests
        ),
        "streaming:".to_string(),
        format!(
            "  response_header_timeout: {}",
            config.streaming.response_header_timeout
        ),
        format!("  max_idle_time: {}", config.streaming.max_idle_time),
        format!("global_timeout: {}", format_duration(config.global_timeout)),
        "auth:".to_string(),
        format!("  enabled: {}", config.auth.enabled),
        format!("  token: {}", secret(config.auth.token.as_ref())),
        format!("  queue_timeout: {}", config.auth.queue_timeout),
        "web:".to_string(),
        format!("  enabled: {}", config.web.enabled),
        format!("  host: {}", config.web.host),
        format!("  port: {}", config.web.port),
        format!("  auth_token: {}", secret(config.web.auth_token.as_ref())),
        "tui:".to_string(),
        format!("  enabled: {}", config.tui.enabled),
        format!("  update_interval: {}", config.tui.update_interval),
        format!("  save_priority_edits: {}", config.tui.save_priority_edits),
        "logging:".to_string(),
        format!(
            "  level: {}",
            format!("{:?}", config.logging.level).to_lowercase()
        ),
        format!(
            "  format: {}",
            format!("{:?}", config.logging.format).to_lowercase()
        ),
        format!("  file_enabled: {}", config.logging.file_enabled),
        "proxy:".to_string(),
        format!("  enabled: {}", config.proxy.enabled),
    ];
    if config.proxy.enabled {
        lines.push(format!(
            "  type: {}",
            format!("{:?}", config.proxy.kind).to_lowercase()
        ));
        if let Some(url) = &config.proxy.url {
            lines.push(format!("  url: {}", display_url(url)));
        }
        if let Some(host) = &config.proxy.host {
            lines.push(format!("  host: {host}"));
        }
        if let Some(username) = &config.proxy.username {
            lines.push(format!("  username: {username}"));
        }
        lines.push(format!(
            "  password: {}",
            secret(config.proxy.password.as_ref())
        ));
    }
    // `endpoints[].proxy` (set or inherited in the group): where each such endpoint connects.
    for (endpoint, proxy) in &config.endpoint_proxies {
        let target = if !proxy.enabled {
            "direct (opts out of proxy)".to_string()
        } else {
            let kind = format!("{:?}", proxy.kind).to_lowercase();
            let address = match (&proxy.url, &proxy.host, proxy.port) {
                (Some(url), _, _) => display_url(url),
                (None, Some(host), Some(port)) => format!("{host}:{port}"),
                _ => "-".to_string(),
            };
            format!("{kind} {address}")
        };
        lines.push(format!("  endpoint {endpoint}: {target}"));
    }
    // `auth.tokens[]` by name with their limits (the tokens masked); `routing.model_rules`;
    // `webhooks[]` without user-info, query or secret.
    for token in &config.auth.tokens {
        let limits = &token.limits;
        let mut parts = vec![format!("token {}", token.token.masked())];
        if let Some(rate) = limits.requests_per_minute {
            parts.push(format!("requests_per_minute {rate}"));
        }
        if let Some(concurrency) = limits.concurrency {
            parts.push(format!("concurrency {concurrency}"));
        }
        if let Some(budget) = limits.daily_budget_usd {
            parts.push(format!("daily_budget_usd {budget}"));
        }
        if let Some(budget) = limits.monthly_budget_usd {
            parts.push(format!("monthly_budget_usd {budget}"));
        }
        lines.push(format!("  key {}: {}", token.name, parts.join(", ")));
    }
    if !config.routing.model_rules.is_empty() {
        lines.push("routing.model_rules:".to_string());
        for (index, rule) in config.routing.model_rules.iter().enumerate() {
            lines.push(format!("  {}", model_rule_text(index, rule)));
        }
    }
    if !config.webhooks.is_empty() {
        lines.push(format!("webhooks: ({})", config.webhooks.len()));
        for webhook in &config.webhooks {
            lines.push(format!("  - url: {}", display_url(webhook.url.as_str())));
            lines.push(format!(
                "    events: {}",
                webhook
                    .events
                    .iter()
                    .map(|event| event.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            lines.push(format!("    secret: {}", secret(webhook.secret.as_ref())));
        }
    }
    if let Some(url) = &config.cluster.redis_url {
        lines.push("cluster:".to_string());
        lines.push(format!("  redis_url: {}", display_url(url.expose())));
        lines.push(format!("  redis_prefix: {}", config.cluster.redis_prefix));
        lines.push(format!("  redis_timeout: {}", config.cluster.redis_timeout));
    }
    lines.push("usage_tracking:".to_string());
    lines.push(format!("  enabled: {}", config.usage_tracking.enabled));
    match &config.usage_tracking.database {
        Some(database) => {
            lines.push(format!(
                "  database: {}",
                database
                    .kind
                    .map_or("sqlite".to_string(), |kind| format!("{kind:?}")
                        .to_lowercase())
            ));
            if let Some(host) = &database.host {
                lines.push(format!("    host: {host}"));
            }
            if let Some(name) = &database.database {
                lines.push(format!("    database: {name}"));
            }
            if let Some(username) = &database.username {
                lines.push(format!("    username: {username}"));
            }
            lines.push(format!(
                "    password: {}",
                secret(database.password.as_ref())
            ));
        }
        None => lines.push(format!(
            "  database_path: {}",
            config.usage_tracking.database_path
        )),
    }
    lines.push(format!("endpoints: ({})", config.endpoints.len()));
    for endpoint in &config.endpoints {
        lines.push(format!("  - name: {}", endpoint.name));
        lines.push(format!("    url: {}", display_url(endpoint.url.as_str())));
        lines.push(format!(
            "    group: {} (group-priority {})",
            endpoint.group, endpoint.group_priority
        ));
        lines.push(format!("    priority: {}", endpoint.priority));
        lines.push(format!("    token: {}", secret(endpoint.token.as_ref())));
        lines.push(format!(
            "    api-key: {}",
            secret(endpoint.api_key.as_ref())
        ));
        lines.push(format!(
            "    timeout: {}",
            format_duration(endpoint.timeout)
        ));
        if !endpoint.model_map.is_empty() {
            lines.push(format!(
                "    model_map: {}",
                model_map_text(&endpoint.model_map)
            ));
        }
        for (name, value) in &endpoint.headers {
            // Header values are often credentials: never shown in full.
            lines.push(format!("    header {name}: {}", mask_secret(value)));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_line_says_connected_or_down_and_masks_the_address() {
        let status = ClusterStatus {
            backend: "redis",
            address: "rediss://user:pass-word-1@redis.internal:6380/0".to_string(),
            connected: true,
            since: Some(SystemTime::now()),
            last_error: Some("an old error".to_string()),
            published: 1_234,
            applied: 56,
            ..ClusterStatus::default()
        };
        assert_eq!(
            cluster_text(&status),
            (
                "Redis: connected".to_string(),
                "rediss://***@redis.internal:6380/0 · 1,234 sent · 56 applied".to_string()
            )
        );
        let since = SystemTime::now();
        let down = ClusterStatus {
            connected: false,
            since: Some(since),
            dropped: 2,
            ..status.clone()
        };
        assert_eq!(
            cluster_text(&down).0,
            format!("Redis: down, local state since {}", clock_time(since))
        );
        assert!(cluster_text(&down).1.contains("an old error · "));
        assert!(cluster_text(&down).1.ends_with("2 dropped"));
        let unknown = ClusterStatus {
            since: None,
            backend: "",
            ..down
        };
        assert_eq!(cluster_text(&unknown).0, "Cluster: down, local state");
    }

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(1234567), "1,234,567");
        assert_eq!(format_cost(12_300_000), "$0.0123");
        assert_eq!(
            display_url("https://user:pw@relay.example:8443/v1?key=s#x"),
            "https://***@relay.example:8443/v1"
        );
    }

    #[test]
    fn keys_rules_maps_and_webhooks_are_listed_without_secrets() {
        let config = Config::from_yaml_str(
            "auth:\n  enabled: true\n  tokens:\n    - name: alice\n      token: alice-token-0123456789\n      limits: {daily_budget_usd: 5, concurrency: 2}\nrouting:\n  model_rules:\n    - match: \"*haiku*\"\n      group: cheap\nwebhooks:\n  - url: https://bob:hook-pass-55@hooks.example/ccf?key=query-66\n    events: [group_switched, key_budget_exceeded]\n    secret: whsec-secret-77\nendpoints:\n  - name: relay\n    url: https://relay.example\n    group: cheap\n    model_map: {\"claude-*\": glm-4.6}\n",
        )
        .unwrap();
        let lines = config_lines(&config).join("\n");
        for expected in [
            "  key alice: token alic",
            "concurrency 2, daily_budget_usd 5",
            "routing.model_rules:\n  1. *haiku* → group cheap",
            "  - url: https://***@hooks.example/ccf",
            "    events: group_switched, key_budget_exceeded",
            "    model_map: claude-* → glm-4.6",
        ] {
            assert!(lines.contains(expected), "missing {expected:?} in\n{lines}");
        }
        for secret in [
            "alice-token-0123456789",
            "hook-pass-55",
            "query-66",
            "whsec-secret-77",
        ] {
            assert!(!lines.contains(secret), "{secret} shown in\n{lines}");
        }
    }

    #[test]
    fn the_cluster_section_is_listed_with_the_redis_password_masked() {
        let config = Config::from_yaml_str(
            "cluster:\n  redis_url: rediss://default:redis-pass-4242@redis.internal:6380/0\n  redis_prefix: team-a\nendpoints:\n  - name: relay\n    url: https://relay.example\n",
        )
        .unwrap();
        let lines = config_lines(&config).join("\n");
        let expected = "cluster:\n  redis_url: rediss://***@redis.internal:6380/0\n  redis_prefix: team-a\n  redis_timeout: 50ms";
        assert!(lines.contains(expected), "missing {expected:?} in\n{lines}");
        assert!(!lines.contains("redis-pass-4242"), "{lines}");
        // Without a Redis URL there is no section.
        let plain =
            Config::from_yaml_str("endpoints:\n  - name: relay\n    url: https://relay.example\n")
                .unwrap();
        assert!(!config_lines(&plain).join("\n").contains("cluster:"));
    }

    #[test]
    fn endpoint_proxies_are_listed_without_credentials() {
        let config = Config::from_yaml_str(
            "endpoints:\n  - name: relay\n    url: https://relay.example\n    proxy:\n      enabled: true\n      url: socks5://bob:tunnel-pass-77@127.0.0.1:1080\n  - name: official\n    url: https://api.anthropic.com\n    group: main\n    proxy:\n      enabled: false\n",
        )
        .unwrap();
        let lines = config_lines(&config).join("\n");
        assert!(
            lines.contains("  endpoint relay: http socks5://***@127.0.0.1:1080"),
            "{lines}"
        );
        assert!(
            lines.contains("  endpoint official: direct (opts out of proxy)"),
            "{lines}"
        );
        assert!(!lines.contains("tunnel-pass-77"), "{lines}");
    }
}
