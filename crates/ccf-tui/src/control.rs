//! Carrying out the UI's [`Action`]s on the forwarder: the operator actions of
//! `docs/routing.md` and saving priority edits.

use ccf_proxy::Forwarder;

use crate::app::{Action, Notice};
use crate::yaml_edit::{save_priority_edits, PriorityEdit, YamlEditError};

/// Performs `action` (everything but [`Action::Quit`], which the runtime handles) and says how it
/// went, for the status bar. Every result is also logged.
pub fn perform(forwarder: &Forwarder, action: &Action) -> Option<Notice> {
    let notice = match action {
        Action::Quit => return None,
        Action::ActivateGroup { group, force } => match forwarder.activate_group(group, *force) {
            Ok(()) if *force => Notice::info(format!("group {group} force-activated")),
            Ok(()) => Notice::info(format!("group {group} activated")),
            Err(error) => Notice::error(format!("cannot activate: {error}")),
        },
        Action::PauseGroup { group } => match forwarder.pause_group(group, None) {
            Ok(()) => Notice::info(format!("group {group} paused until resumed")),
            Err(error) => Notice::error(format!("cannot pause: {error}")),
        },
        Action::ResumeGroup { group } => match forwarder.resume_group(group) {
            Ok(()) => Notice::info(format!("group {group} resumed")),
            Err(error) => Notice::error(format!("cannot resume: {error}")),
        },
        Action::ApplyPriorities { edits } => apply_priorities(forwarder, edits),
    };
    if notice.error {
        tracing::warn!("terminal UI: {}", notice.text);
    } else {
        tracing::info!("terminal UI: {}", notice.text);
    }
    Some(notice)
}

/// Applies the edits at once (health kept); with `tui.save_priority_edits`, writes the applied
/// ones back to the configuration file.
fn apply_priorities(forwarder: &Forwarder, edits: &[PriorityEdit]) -> Notice {
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    for edit in edits {
        match forwarder.set_endpoint_priority(&edit.endpoint, edit.priority) {
            Ok(()) => applied.push(edit.clone()),
            Err(error) => errors.push(error.to_string()),
        }
    }
    let described: Vec<String> = applied
        .iter()
        .map(|edit| format!("{}={}", edit.endpoint, edit.priority))
        .collect();
    let mut text = format!("applied priorities {}", described.join(", "));
    let mut error = !errors.is_empty();
    if error {
        text.push_str(&format!("; failed: {}", errors.join("; ")));
    }
    let config = forwarder.config();
    if config.tui.save_priority_edits && !applied.is_empty() {
        let saved = match &config.source {
            Some(path) => save_priority_edits(path, &applied).map(|()| path.display().to_string()),
            None => Err(YamlEditError::NoFile),
        };
        match saved {
            Ok(path) => text.push_str(&format!("; saved to {path}")),
            Err(save_error) => {
                error = true;
                text.push_str(&format!("; not saved: {save_error}"));
            }
        }
    }
    if error {
        Notice::error(text)
    } else {
        Notice::info(text)
    }
}
