//! Key paths as users read them: `server.port`, `endpoints[2].url`,
//! `usage_tracking.model_pricing["claude-3.5"].input`.

use std::fmt;

use figment::value::Value;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the document root to one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// A path of mapping keys, e.g. `KeyPath::keys(&["server", "port"])`.
    pub(crate) fn keys(keys: &[&str]) -> Self {
        KeyPath(
            keys.iter()
                .map(|key| Segment::Key((*key).to_string()))
                .collect(),
        )
    }

    /// This path extended by a mapping key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_string()));
        KeyPath(segments)
    }

    /// This path extended by a sequence index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    /// Converts the path serde_ignored reports for an ignored key.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
            match path {
                serde_ignored::Path::Root => {}
                serde_ignored::Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Segment::Index(*index));
                }
                serde_ignored::Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Segment::Key(key.clone()));
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut segments = Vec::new();
        walk(path, &mut segments);
        KeyPath(segments)
    }

    /// Converts a figment error path (`["endpoints", "2", "url"]`), using the merged value tree
    /// to tell sequence indices from mapping keys that happen to be numeric.
    pub(crate) fn from_figment(root: &Value, path: &[String]) -> Self {
        let mut segments = Vec::with_capacity(path.len());
        let mut current = Some(root);
        for part in path {
            match current {
                Some(Value::Array(_, items)) => match part.parse::<usize>() {
                    Ok(index) => {
                        segments.push(Segment::Index(index));
                        current = items.get(index);
                    }
                    Err(_) => {
                        segments.push(Segment::Key(part.clone()));
                        current = None;
                    }
                },
                Some(Value::Dict(_, dict)) => {
                    segments.push(Segment::Key(part.clone()));
                    current = dict.get(part);
                }
                _ => {
                    segments.push(Segment::Key(part.clone()));
                    current = None;
                }
            }
        }
        KeyPath(segments)
    }

    /// The value at this path in a figment value tree, if present.
    pub(crate) fn find<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut current = root;
        for segment in &self.0 {
            current = match (segment, current) {
                (Segment::Key(key), Value::Dict(_, dict)) => dict.get(key)?,
                (Segment::Index(index), Value::Array(_, items)) => items.get(*index)?,
                _ => return None,
            };
        }
        Some(current)
    }

    /// The mapping keys of the path, for figment's metadata interpolation.
    pub(crate) fn raw_keys(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => key.clone(),
                Segment::Index(index) => index.to_string(),
            })
            .collect()
    }
}

fn needs_quotes(key: &str) -> bool {
    key.is_empty()
        || key
            .chars()
            .any(|c| c == '.' || c == '[' || c == ']' || c == '"' || c.is_whitespace())
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<root>");
        }
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) if needs_quotes(key) => write!(f, "[{key:?}]")?,
                Segment::Key(key) if position == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_keys_indices_and_awkward_keys() {
        let check = |path: KeyPath, expected: &str| assert_eq!(path.to_string(), expected);
        check(KeyPath::keys(&["server", "port"]), "server.port");
        check(
            KeyPath::root().key("endpoints").index(2).key("url"),
            "endpoints[2].url",
        );
        check(
            KeyPath::keys(&["usage_tracking", "model_pricing", "claude-3.5", "input"]),
            "usage_tracking.model_pricing[\"claude-3.5\"].input",
        );
        check(KeyPath::root(), "<root>");
    }
}
