//! Model name patterns (issue 20): the globs of `endpoints[].model_map` keys and
//! `routing.model_rules[].match`, and the resolved per-endpoint [`ModelMap`].
//!
//! A pattern is a model name in which `*` stands for any run of characters (possibly none);
//! every other character matches itself, case-sensitively. A pattern without `*` is an exact
//! name. In a [`ModelMap`] an exact name wins over every glob; among the globs that match, the
//! most specific wins: the longest pattern, then the one with fewer `*`, then the first in key
//! order. Pure: no IO.

use std::collections::BTreeMap;

/// Whether `model` matches `pattern` (`*` matches any run of characters, possibly empty).
pub fn glob_matches(pattern: &str, model: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one item.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = model.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No `*`: the whole name must be the pattern.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether `pattern` holds a `*`.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains('*')
}

/// Why a model pattern or model name cannot be used; the text completes "must ...".
pub(crate) fn pattern_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("must not be empty")
    } else if text.trim() != text {
        Some("must not start or end with white space (no model name does, so it would never match)")
    } else if text.chars().any(char::is_control) {
        Some("must not contain control characters (no model name does, so it would never match)")
    } else if text.contains("**") {
        Some("must not contain `**`: a single `*` already matches any run of characters")
    } else {
        None
    }
}

/// One endpoint's `model_map`: request model (exact name or glob) to the model name sent to
/// that endpoint. Empty when the endpoint sets none (maps are never inherited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    exact: BTreeMap<String, String>,
    /// Glob entries, most specific first (see the module docs).
    globs: Vec<(String, String)>,
}

impl ModelMap {
    /// A map from `(pattern, upstream model)` entries (already validated).
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> ModelMap {
        let mut map = ModelMap::default();
        for (pattern, target) in entries {
            if is_glob(&pattern) {
                map.globs.push((pattern, target));
            } else {
                map.exact.insert(pattern, target);
            }
        }
        map.globs.sort_by(|(a, _), (b, _)| {
            let stars = |pattern: &str| pattern.matches('*').count();
            b.len()
                .cmp(&a.len())
                .then(stars(a).cmp(&stars(b)))
                .then(a.cmp(b))
        });
        map
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// The upstream model for `model`: the exact entry, else the most specific matching glob;
    /// `None` when nothing matches (the model passes unchanged).
    pub fn lookup(&self, model: &str) -> Option<&str> {
        self.lookup_entry(model).map(|(_, target)| target)
    }

    /// Like [`ModelMap::lookup`], with the entry's key (the exact name or the glob) that matched:
    /// `(pattern, upstream model)`.
    pub fn lookup_entry(&self, model: &str) -> Option<(&str, &str)> {
        if let Some((pattern, target)) = self.exact.get_key_value(model) {
            return Some((pattern, target));
        }
        self.globs
            .iter()
            .find(|(pattern, _)| glob_matches(pattern, model))
            .map(|(pattern, target)| (pattern.as_str(), target.as_str()))
    }

    /// Every entry, exact names first (in name order), then the globs in the order they are
    /// tried.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.exact
            .iter()
            .chain(self.globs.iter().map(|(pattern, target)| (pattern, target)))
            .map(|(pattern, target)| (pattern.as_str(), target.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_any_run_of_characters() {
        let cases = [
            (
                "claude-3-5-haiku-20241022",
                "claude-3-5-haiku-20241022",
                true,
            ),
            ("claude-3-5-haiku", "claude-3-5-haiku-20241022", false),
            ("*haiku*", "claude-3-5-haiku-20241022", true),
            ("*haiku*", "claude-sonnet-4-5", false),
            ("claude-*", "claude-", true),
            ("claude-*", "claude", false),
            ("*", "", true),
            ("*", "anything", true),
            ("claude-*-4-5", "claude-sonnet-4-5", true),
            ("claude-*-4-5", "claude-sonnet-4-5-20250929", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*-4-5*", "claude-opus-4-5-20251101", true),
            ("Claude-*", "claude-x", false),
        ];
        for (pattern, model, expected) in cases {
            assert_eq!(
                glob_matches(pattern, model),
                expected,
                "{pattern} vs {model}"
            );
        }
    }

    #[test]
    fn exact_names_win_then_the_longest_glob() {
        let map = ModelMap::new([
            ("*".to_string(), "fallback".to_string()),
            ("claude-*".to_string(), "claude-any".to_string()),
            ("claude-*-haiku-*".to_string(), "haiku-any".to_string()),
            ("claude-3-5-haiku-20241022".to_string(), "exact".to_string()),
        ]);
        assert_eq!(map.lookup("claude-3-5-haiku-20241022"), Some("exact"));
        assert_eq!(map.lookup("claude-3-haiku-20240307"), Some("haiku-any"));
        assert_eq!(map.lookup("claude-sonnet-4-5"), Some("claude-any"));
        assert_eq!(map.lookup("gpt-4"), Some("fallback"));
        assert_eq!(ModelMap::default().lookup("claude"), None);
        let first: Vec<&str> = map.entries().map(|(pattern, _)| pattern).collect();
        assert_eq!(
            first,
            [
                "claude-3-5-haiku-20241022",
                "claude-*-haiku-*",
                "claude-*",
                "*"
            ]
        );
    }

    #[test]
    fn equally_long_globs_prefer_fewer_stars() {
        let map = ModelMap::new([
            ("*-haiku-*".to_string(), "two".to_string()),
            ("claude-h*".to_string(), "one".to_string()),
        ]);
        // Both are 9 characters; `claude-h*` has one `*`.
        assert_eq!(map.lookup("claude-haiku-1"), Some("one"));
    }

    #[test]
    fn pattern_problems() {
        assert!(pattern_problem("claude-*").is_none());
        assert!(pattern_problem("").is_some());
        assert!(pattern_problem(" claude").is_some());
        assert!(pattern_problem("claude\n").is_some());
        assert!(pattern_problem("claude-**").is_some());
    }
}
