//! Writing priority edits back into the configuration file without touching anything else.
//!
//! A YAML library would re-emit the whole document and lose comments, quoting and layout, so this
//! is a careful line-based edit: find the top-level `endpoints:` block sequence, find each item by
//! its `name:` key, and rewrite only the scalar of its own `priority:` key (keeping the key, the
//! spacing and any trailing comment), or insert a `priority:` line right after `name:` when the
//! item has none. Every other byte of the file stays as it was, line endings included.
//!
//! Supported: block-style items (`- name: x` or `-` followed by indented keys), plain, single- or
//! double-quoted names, comments and blank lines anywhere, `endpoints:` items indented or at
//! column 0. Not supported (an error, the file is left alone): flow-style items (`- {name: x}`),
//! names written through `${VAR}` that expand to something else, documents without a top-level
//! `endpoints:` block.

use std::path::{Path, PathBuf};

/// One edited priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityEdit {
    /// Endpoint name, as in the resolved configuration.
    pub endpoint: String,
    /// The new priority.
    pub priority: u32,
}

/// Why the edits could not be written back.
#[derive(Debug, thiserror::Error)]
pub enum YamlEditError {
    /// The file has no top-level block `endpoints:` sequence.
    #[error("no top-level `endpoints:` list found")]
    NoEndpoints,
    /// No block-style item has this `name:`.
    #[error("endpoint `{endpoint}` not found as a `- name: {endpoint}` item under `endpoints:`")]
    EndpointNotFound {
        /// The name looked for.
        endpoint: String,
    },
    /// The configuration was not loaded from a file.
    #[error("the configuration was not loaded from a file")]
    NoFile,
    /// Reading or writing the file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Applies `edits` to `path` in place (see the module docs). The file is written only when its
/// text changes.
pub fn save_priority_edits(path: &Path, edits: &[PriorityEdit]) -> Result<(), YamlEditError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlEditError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let updated = update_priorities(&text, edits)?;
    if updated != text {
        std::fs::write(path, updated).map_err(|source| YamlEditError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// One physical line: its text without the line break, and the break itself.
struct Line<'a> {
    text: &'a str,
    ending: &'a str,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, ending, next) = match rest.find('\n') {
            Some(at) if at > 0 && rest.as_bytes()[at - 1] == b'\r' => {
                (&rest[..at - 1], &rest[at - 1..=at], &rest[at + 1..])
            }
            Some(at) => (&rest[..at], &rest[at..=at], &rest[at + 1..]),
            None => (rest, "", ""),
        };
        lines.push(Line { text: line, ending });
        rest = next;
    }
    lines
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank or comment-only.
fn is_insignificant(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// A `key: value` found at byte `key_at` of a line: the key, and the byte range of the value's
/// scalar (empty when there is none), comment excluded.
struct KeyValue<'a> {
    key: &'a str,
    value_start: usize,
    value_end: usize,
}

/// Parses `key: value  # comment` starting at byte `at` of `line`.
fn key_value(line: &str, at: usize) -> Option<KeyValue<'_>> {
    let rest = &line[at..];
    let colon = rest.find(':')?;
    let key = rest[..colon].trim_end();
    let key = unquote(key);
    let after = &rest[colon + 1..];
    // `key:value` without a space is a plain scalar, not a mapping entry.
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    let leading = after.len() - after.trim_start().len();
    let value_start = at + colon + 1 + leading;
    let value_end = value_start + scalar_len(&line[value_start..]);
    Some(KeyValue {
        key,
        value_start,
        value_end,
    })
}

/// Length of the scalar at the start of `text`: a quoted string through its closing quote, else
/// up to a ` #` comment, trailing spaces excluded.
fn scalar_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'"') => {
            let mut index = 1;
            while index < bytes.len() {
                match bytes[index] {
                    b'\\' => index += 2,
                    b'"' => return index + 1,
                    _ => index += 1,
                }
            }
            text.len()
        }
        Some(b'\'') => {
            let mut index = 1;
            while index < bytes.len() {
                if bytes[index] == b'\'' {
                    if bytes.get(index + 1) == Some(&b'\'') {
                        index += 2;
                        continue;
                    }
                    return index + 1;
                }
                index += 1;
            }
            text.len()
        }
        _ => {
            let end = text
                .match_indices('#')
                .find(|(at, _)| *at == 0 || text.as_bytes()[at - 1] == b' ')
                .map_or(text.len(), |(at, _)| at);
            text[..end].trim_end().len()
        }
    }
}

/// The value of a scalar as written: quotes removed (with `''` and simple `\"` escapes).
fn unquote(scalar: &str) -> &str {
    let scalar = scalar.trim();
    if scalar.len() >= 2
        && ((scalar.starts_with('"') && scalar.ends_with('"'))
            || (scalar.starts_with('\'') && scalar.ends_with('\'')))
    {
        &scalar[1..scalar.len() - 1]
    } else {
        scalar
    }
}

fn scalar_value(scalar: &str) -> String {
    let trimmed = scalar.trim();
    if trimmed.starts_with('\'') {
        unquote(trimmed).replace("''", "'")
    } else if trimmed.starts_with('"') {
        unquote(trimmed).replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        trimmed.to_string()
    }
}

/// One item of the `endpoints:` sequence.
struct Item {
    /// Column of the item's keys.
    key_column: usize,
    /// Line and value of its `name:` key.
    name: Option<(usize, String)>,
    /// Line of its `priority:` key.
    priority: Option<usize>,
}

/// Returns `text` with `edits` applied (see the module docs).
pub fn update_priorities(text: &str, edits: &[PriorityEdit]) -> Result<String, YamlEditError> {
    let lines = split_lines(text);
    let items = endpoint_items(&lines)?;
    let ending = lines
        .iter()
        .map(|line| line.ending)
        .find(|ending| !ending.is_empty())
        .unwrap_or("\n");
    // Replacement text per line, and lines to insert after a line.
    let mut replaced: Vec<Option<String>> = vec![None; lines.len()];
    let mut inserted: Vec<Option<String>> = vec![None; lines.len()];
    for edit in edits {
        let item = items
            .iter()
            .find(|item| {
                item.name
                    .as_ref()
                    .is_some_and(|(_, name)| *name == edit.endpoint)
            })
            .ok_or_else(|| YamlEditError::EndpointNotFound {
                endpoint: edit.endpoint.clone(),
            })?;
        match (item.priority, &item.name) {
            (Some(line_index), _) => {
                let line = lines[line_index].text;
                let Some(found) = key_value(line, item.key_column) else {
                    continue;
                };
                replaced[line_index] = Some(format!(
                    "{}{}{}",
                    &line[..found.value_start],
                    edit.priority,
                    &line[found.value_end..]
                ));
            }
            (None, Some((name_line, _))) => {
                inserted[*name_line] = Some(format!(
                    "{}priority: {}",
                    " ".repeat(item.key_column),
                    edit.priority
                ));
            }
            (None, None) => {}
        }
    }
    let mut output = String::with_capacity(text.len() + 32);
    for (index, line) in lines.iter().enumerate() {
        match &replaced[index] {
            Some(text) => output.push_str(text),
            None => output.push_str(line.text),
        }
        if let Some(extra) = &inserted[index] {
            // The name line may be the last one, without a line break.
            output.push_str(if line.ending.is_empty() {
                ending
            } else {
                line.ending
            });
            output.push_str(extra);
        }
        output.push_str(line.ending);
    }
    Ok(output)
}

/// Finds the items of the top-level `endpoints:` block sequence.
fn endpoint_items(lines: &[Line<'_>]) -> Result<Vec<Item>, YamlEditError> {
    let start = lines
        .iter()
        .position(|line| {
            indent_of(line.text) == 0
                && key_value(line.text, 0).is_some_and(|found| {
                    found.key == "endpoints" && found.value_start == found.value_end
                })
        })
        .ok_or(YamlEditError::NoEndpoints)?;
    let mut items: Vec<Item> = Vec::new();
    let mut dash_column: Option<usize> = None;
    for (index, line) in lines.iter().enumerate().skip(start + 1) {
        let text = line.text;
        if is_insignificant(text) {
            continue;
        }
        let indent = indent_of(text);
        let trimmed = &text[indent..];
        let is_dash = trimmed == "-" || trimmed.starts_with("- ");
        let column = *dash_column.get_or_insert(indent);
        if indent < column || (indent == column && !is_dash) {
            // The next top-level key (or the end of an indented sequence).
            break;
        }
        if indent == column && is_dash {
            let after_dash = &trimmed[1..];
            let content = after_dash.trim_start();
            let key_column = indent + 1 + (after_dash.len() - content.len());
            if content.starts_with('{') {
                // A flow mapping: not edited.
                items.push(Item {
                    key_column,
                    name: None,
                    priority: None,
                });
                continue;
            }
            let mut item = Item {
                key_column,
                name: None,
                priority: None,
            };
            if content.is_empty() {
                // `-` alone: the keys follow on the next lines; the first one sets the column.
                item.key_column = usize::MAX;
            } else {
                note_key(&mut item, index, text);
            }
            items.push(item);
            continue;
        }
        // A line inside the current item.
        let Some(item) = items.last_mut() else {
            continue;
        };
        if item.key_column == usize::MAX {
            item.key_column = indent;
        }
        if indent == item.key_column {
            note_key(item, index, text);
        }
    }
    if dash_column.is_none() {
        return Err(YamlEditError::NoEndpoints);
    }
    Ok(items)
}

/// Records a `name:` or `priority:` key of `item` found on line `index`.
fn note_key(item: &mut Item, index: usize, text: &str) {
    let Some(found) = key_value(text, item.key_column) else {
        return;
    };
    match found.key {
        "name" if item.name.is_none() => {
            item.name = Some((
                index,
                scalar_value(&text[found.value_start..found.value_end]),
            ));
        }
        "priority" if item.priority.is_none() => item.priority = Some(index),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(endpoint: &str, priority: u32) -> PriorityEdit {
        PriorityEdit {
            endpoint: endpoint.to_string(),
            priority,
        }
    }

    const COMMENTED: &str = "\
# cc-forwarder configuration
server:
  host: 127.0.0.1   # loopback only
  port: 8087

endpoints:
  # The official API first.
  - name: primary          # main account
    url: https://api.anthropic.com
    priority: 1            # keep this first
    group: main
    group-priority: 1
    token: sk-ant-xxxxxxxxxxxxxxxx
    headers:
      priority: not-this-one

  - name: \"relay b\"
    url: https://relay.example   # inherits group and token
    priority: '2'

  -
    url: https://mirror.example
    name: 'mirror''s'
    # no priority: inherited default 0

  - name: backup
    url: https://backup.example
    group: backup
    group-priority: 2
    priority: 3
tui:
  save_priority_edits: true # keep
";

    #[test]
    fn rewrites_only_the_priority_scalars_and_keeps_comments() {
        let updated = update_priorities(
            COMMENTED,
            &[
                edit("primary", 12),
                edit("relay b", 7),
                edit("mirror's", 5),
                edit("backup", 30),
            ],
        )
        .unwrap();
        let expected = COMMENTED
            .replace(
                "    priority: 1            # keep this first",
                "    priority: 12            # keep this first",
            )
            .replace("    priority: '2'", "    priority: 7")
            .replace(
                "    name: 'mirror''s'\n",
                "    name: 'mirror''s'\n    priority: 5\n",
            )
            .replace("    priority: 3\n", "    priority: 30\n");
        assert_eq!(updated, expected);
        // Nested keys named `priority` are not endpoint priorities.
        assert!(updated.contains("      priority: not-this-one"));
    }

    #[test]
    fn no_edits_change_nothing_and_unknown_names_are_errors() {
        assert_eq!(update_priorities(COMMENTED, &[]).unwrap(), COMMENTED);
        let error = update_priorities(COMMENTED, &[edit("nope", 1)]).unwrap_err();
        assert!(matches!(error, YamlEditError::EndpointNotFound { .. }));
        let error = update_priorities("server:\n  port: 1\n", &[edit("a", 1)]).unwrap_err();
        assert!(matches!(error, YamlEditError::NoEndpoints));
    }

    #[test]
    fn handles_column_zero_items_crlf_and_a_last_line_without_break() {
        let text = "endpoints:\r\n- name: a\r\n  url: http://a\r\n- name: b\r\n  priority: 4";
        let updated = update_priorities(text, &[edit("a", 2), edit("b", 9)]).unwrap();
        assert_eq!(
            updated,
            "endpoints:\r\n- name: a\r\n  priority: 2\r\n  url: http://a\r\n- name: b\r\n  priority: 9"
        );
        let last = "endpoints:\n  - url: http://a\n    name: a";
        assert_eq!(
            update_priorities(last, &[edit("a", 1)]).unwrap(),
            "endpoints:\n  - url: http://a\n    name: a\n    priority: 1"
        );
    }

    #[test]
    fn stops_at_the_next_top_level_key() {
        let text = "endpoints:\n  - name: a\n    url: http://a\nother:\n  - name: b\n";
        let error = update_priorities(text, &[edit("b", 1)]).unwrap_err();
        assert!(matches!(error, YamlEditError::EndpointNotFound { .. }));
    }

    #[test]
    fn saves_in_place() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("config.yaml");
        std::fs::write(&path, COMMENTED).unwrap();
        save_priority_edits(&path, &[edit("backup", 8)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            COMMENTED.replace("    priority: 3\n", "    priority: 8\n")
        );
        assert!(matches!(
            save_priority_edits(&folder.path().join("missing.yaml"), &[]),
            Err(YamlEditError::Io { action: "read", .. })
        ));
    }
}
