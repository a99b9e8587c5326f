//! The wire-shape snapshot: a JSON answer reduced to one line per leaf (`path: type`), so a test
//! can pin every field name, its nesting, number vs string, integer vs float and null vs absent
//! without pinning values that change from run to run (times, ids, latencies).
//!
//! Arrays are the union of their elements' lines (`path[]…`), plus one `keys` line per distinct
//! key set of their object elements, so the order and number of elements do not matter, but
//! every shape an element takes does. Keys in [`WORD_KEYS`] hold
//! enum-like words (`status`, `type`, `reason`…): their value is pinned too, so renaming a
//! variant changes the snapshot like renaming a field does.
//!
//! [`Shapes`] gathers a test's sections (status and headers, shape, or whole body per answer);
//! [`FixedReloader`] stands in for the application's configuration reader.
//!
//! The checked-in snapshot lives in `tests/snapshots/`; run the test with
//! `CCF_UPDATE_SNAPSHOTS=1` to rewrite it after a deliberate API change, and review the diff.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use super::Answer;

/// Keys whose string values are vocabulary words, pinned in the snapshot.
pub const WORD_KEYS: &[&str] = &[
    "activation_type",
    "backend",
    "change_type",
    "code",
    "dimension",
    "error_state",
    "level",
    "reason",
    "signal",
    "source",
    "status",
    "status_color",
    "strategy",
    "type",
];

/// The shape lines of `value`, each prefixed with `prefix`.
pub fn shape(prefix: &str, value: &Value) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    collect(prefix, None, value, &mut lines);
    lines
}

fn collect(path: &str, key: Option<&str>, value: &Value, lines: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if map.is_empty() => {
            lines.insert(format!("{path}: {{}}"));
        }
        Value::Object(map) => {
            for (child_key, child) in map {
                collect(
                    &format!("{path}.{child_key}"),
                    Some(child_key),
                    child,
                    lines,
                );
            }
        }
        Value::Array(items) if items.is_empty() => {
            lines.insert(format!("{path}: []"));
        }
        Value::Array(items) => {
            for item in items {
                if let Value::Object(map) = item {
                    // Which keys each element has: the union of the leaf lines alone would not
                    // tell a field absent from some elements from one present in all.
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    lines.insert(format!("{path}[] keys {}", keys.join(",")));
                }
                collect(&format!("{path}[]"), key, item, lines);
            }
        }
        Value::Null => {
            lines.insert(format!("{path}: null"));
        }
        Value::Bool(_) => {
            lines.insert(format!("{path}: bool"));
        }
        Value::Number(number) if number.is_f64() => {
            lines.insert(format!("{path}: float"));
        }
        Value::Number(_) => {
            lines.insert(format!("{path}: int"));
        }
        Value::String(text) if key.is_some_and(|key| WORD_KEYS.contains(&key)) => {
            lines.insert(format!("{path}: {text:?}"));
        }
        Value::String(_) => {
            lines.insert(format!("{path}: string"));
        }
    }
}

/// Compares `actual` with the snapshot file `tests/snapshots/<name>`, or rewrites the file when
/// `CCF_UPDATE_SNAPSHOTS` is set. A mismatch panics with the lines missing and the lines added.
pub fn check_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(name);
    if std::env::var_os("CCF_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("snapshot directory")).expect("mkdir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {} ({error}); run with CCF_UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let expected_lines: BTreeSet<&str> = expected.lines().collect();
    let actual_lines: BTreeSet<&str> = actual.lines().collect();
    let missing: Vec<&str> = expected_lines.difference(&actual_lines).copied().collect();
    let added: Vec<&str> = actual_lines.difference(&expected_lines).copied().collect();
    panic!(
        "the admin API's wire shapes changed ({}).\nmissing now:\n  {}\nnew:\n  {}\n\
         If the change is deliberate, rerun with CCF_UPDATE_SNAPSHOTS=1 and review the diff.",
        path.display(),
        missing.join("\n  "),
        added.join("\n  ")
    );
}

/// Reports one applied change and one that waits for a restart, like the application's reloader
/// after an edit of `retry` and `server.port`.
pub struct FixedReloader {
    pub forwarder: ccf_proxy::Forwarder,
}

impl ccf_proxy::Reloader for FixedReloader {
    fn reload(&self, trigger: &str) -> ccf_proxy::ReloadStatus {
        let status = ccf_proxy::ReloadStatus::applied(
            trigger,
            ccf_proxy::ReloadReport {
                applied: vec!["retry changed".into()],
                restart_required: vec!["server.port changed".into()],
            },
        );
        self.forwarder.record_reload(status.clone());
        status
    }
}

/// The pinned wire shapes, one section per answer, in the order the test asks.
#[derive(Default)]
pub struct Shapes {
    pub lines: Vec<String>,
}

impl Shapes {
    /// The status and the headers a client relies on; digits in `content-disposition` are
    /// masked (the file name carries the time).
    pub fn head(&mut self, label: &str, answer: &Answer) {
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| {
                    if name == "content-disposition" {
                        value.replace(|c: char| c.is_ascii_digit(), "#")
                    } else {
                        value.to_string()
                    }
                })
                .unwrap_or_else(|| "-".into())
        };
        self.lines.push(format!(
            "{label} -> {} | content-type={} cache-control={} allow={} content-disposition={} \
             nosniff={} frame={} referrer={}",
            answer.status.as_u16(),
            header("content-type"),
            header("cache-control"),
            header("allow"),
            header("content-disposition"),
            header("x-content-type-options"),
            header("x-frame-options"),
            header("referrer-policy"),
        ));
    }

    /// The head and the JSON shape of an answer.
    pub fn answer(&mut self, label: &str, answer: &Answer) {
        self.head(label, answer);
        self.json(label, &answer.json());
    }

    /// The head and the exact body of an answer (errors: their code and message are pinned).
    pub fn exact(&mut self, label: &str, answer: &Answer) {
        self.head(label, answer);
        self.lines.push(format!("{label} body {}", answer.text()));
    }

    pub fn json(&mut self, label: &str, value: &Value) {
        self.lines.extend(
            shape("", value)
                .into_iter()
                .map(|line| format!("{label} {line}")),
        );
    }

    pub fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}
