//! The cc-forwarder terminal UI.
//!
//! This crate owns everything shown in the terminal: six tabs (Overview, Endpoints, Groups,
//! Requests, Logs, Config), priority editing with optional write-back into the YAML file
//! ([`yaml_edit`]), and group actions. It observes a [`ccf_proxy::Forwarder`] (its event bus, its
//! views, its operator actions) and must not know how the forwarder is served, stored or logged:
//! the binary hands it a [`LogBuffer`] that its logging layer fills.
//!
//! The design keeps the terminal at the edge. [`App`] is the whole state; [`App::handle_key`]
//! turns a key into [`Action`]s, [`App::render`] draws into any ratatui frame, and [`perform`]
//! carries an action out on the forwarder, so all of it is tested with ratatui's `TestBackend`
//! and no terminal. [`run`] is the thin loop over a real terminal.
//!
//! Main types: [`App`], [`Action`], [`Snapshot`], [`LogBuffer`], [`run`].

mod app;
mod control;
pub mod logs;
mod render;
mod runtime;
pub mod stats;
pub mod yaml_edit;

pub use app::{Action, App, AppInfo, Notice, PriorityEditing, Snapshot, Tab};
pub use control::perform;
pub use logs::{LogBuffer, LogLevel, LogLine, DEFAULT_LOG_CAPACITY};
pub use runtime::{cost_today, run, stdout_is_terminal, Exit, TuiError, COST_TODAY_EVERY, FRAME};
pub use yaml_edit::{save_priority_edits, update_priorities, PriorityEdit, YamlEditError};

/// Re-exported so callers build key events with the same crossterm version.
pub use crossterm;
