//! `${VAR}` / `${VAR:-default}` expansion in string values, and the conversion of the parsed YAML
//! tree into figment's value tree.
//!
//! Expansion works on the parsed tree, not on the raw text, so comments and keys are never
//! touched and an expanded value can never inject YAML syntax.

use figment::value::{Dict, Empty, Tag, Value};

use crate::path::KeyPath;

/// Expands `${NAME}` and `${NAME:-default}` in `text`.
///
/// - `${NAME}`: the variable's value (empty if set to the empty string); an error if it is unset.
/// - `${NAME:-default}`: the variable's value, or `default` if it is unset or empty.
/// - `$${`: a literal `${`. Any other `$` is kept as written.
pub(crate) fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let tail = &rest[dollar..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let close = after.find('}').ok_or_else(|| {
                "unterminated `${` in value (write `$${` for a literal `${`)".to_string()
            })?;
            let expression = &after[..close];
            let (name, default) = match expression.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expression, None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "invalid variable reference `${{{expression}}}`: expected `${{NAME}}` or `${{NAME:-default}}` \
                     where NAME is letters, digits and `_` (write `$${{` for a literal `${{`)"
                ));
            }
            let value = match (lookup(name), default) {
                (Some(value), Some(default)) if value.is_empty() => default.to_string(),
                (Some(value), _) => value,
                (None, Some(default)) => default.to_string(),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` to give a default)"
                    ))
                }
            };
            out.push_str(&value);
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Converts a parsed YAML document into a figment dictionary, expanding `${VAR}` in every string
/// value. Problems (unset variables, non-scalar keys) are collected with their key paths; `Err` is
/// returned only when the top level is not a mapping.
///
/// A `null` mapping value (`token:` with nothing after it) is dropped, so it means the same as an
/// absent key, as it did for the Go original.
pub(crate) fn yaml_to_dict(
    document: serde_yaml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<(KeyPath, String)>,
) -> Result<Dict, String> {
    match document {
        serde_yaml::Value::Null => Ok(Dict::new()),
        serde_yaml::Value::Mapping(mapping) => {
            Ok(mapping_to_dict(mapping, &KeyPath::root(), lookup, problems))
        }
        serde_yaml::Value::Tagged(tagged) => yaml_to_dict(tagged.value, lookup, problems),
        _ => Err("the top level must be a mapping of keys to values".to_string()),
    }
}

fn mapping_to_dict(
    mapping: serde_yaml::Mapping,
    path: &KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<(KeyPath, String)>,
) -> Dict {
    let mut dict = Dict::new();
    for (key, value) in mapping {
        let key = match key {
            serde_yaml::Value::String(key) => key,
            serde_yaml::Value::Number(number) => number.to_string(),
            serde_yaml::Value::Bool(flag) => flag.to_string(),
            other => {
                problems.push((
                    path.clone(),
                    format!("mapping keys must be strings, found {}", describe(&other)),
                ));
                continue;
            }
        };
        let child_path = path.key(&key);
        if let Some(value) = convert(value, &child_path, lookup, problems) {
            dict.insert(key, value);
        }
    }
    dict
}

fn convert(
    value: serde_yaml::Value,
    path: &KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<(KeyPath, String)>,
) -> Option<Value> {
    Some(match value {
        serde_yaml::Value::Null => return None,
        // Scalars stay text, as the Go original's YAML library read them into string fields:
        // `X-Version: 1.0` is the header value "1.0" and `group: 2` the group "2". Numeric and
        // boolean keys read them back through figment's lossy extraction.
        serde_yaml::Value::Bool(flag) => Value::from(flag.to_string()),
        serde_yaml::Value::Number(number) => Value::from(number.to_string()),
        serde_yaml::Value::String(text) => match expand(&text, lookup) {
            Ok(expanded) => Value::from(expanded),
            Err(message) => {
                problems.push((path.clone(), message));
                Value::from(text)
            }
        },
        serde_yaml::Value::Sequence(items) => Value::Array(
            Tag::Default,
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    convert(item, &path.index(index), lookup, problems)
                        .unwrap_or(Value::Empty(Tag::Default, Empty::None))
                })
                .collect(),
        ),
        serde_yaml::Value::Mapping(mapping) => {
            Value::from(mapping_to_dict(mapping, path, lookup, problems))
        }
        serde_yaml::Value::Tagged(tagged) => return convert(tagged.value, path, lookup, problems),
    })
}

fn describe(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a sequence",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references() {
        let check = |input: &str, expected: Result<&str, &str>| {
            let got = expand(input, &lookup);
            match expected {
                Ok(text) => assert_eq!(got.as_deref(), Ok(text), "input {input:?}"),
                Err(fragment) => {
                    let message = got.expect_err(input);
                    assert!(message.contains(fragment), "{input:?}: {message}");
                }
            }
        };
        check("plain", Ok("plain"));
        check("${KEY}", Ok("sk-123"));
        check("Bearer ${KEY}!", Ok("Bearer sk-123!"));
        check("${KEY}${KEY}", Ok("sk-123sk-123"));
        check("${EMPTY}", Ok(""));
        check("${MISSING:-fallback}", Ok("fallback"));
        check("${EMPTY:-fallback}", Ok("fallback"));
        check("${KEY:-fallback}", Ok("sk-123"));
        check("${MISSING:-}", Ok(""));
        check("${MISSING:-a:-b}", Ok("a:-b"));
        check("pa$$word", Ok("pa$$word"));
        check("cost $5", Ok("cost $5"));
        check("trailing $", Ok("trailing $"));
        check("$${KEY}", Ok("${KEY}"));
        check("$$${KEY}", Ok("$${KEY}"));
        check(
            "${MISSING}",
            Err("environment variable `MISSING` is not set"),
        );
        check("${KEY", Err("unterminated `${`"));
        check("${}", Err("invalid variable reference `${}`"));
        check("${1ABC}", Err("invalid variable reference"));
        check("${A B}", Err("invalid variable reference"));
    }

    #[test]
    fn collects_every_unset_variable_with_its_key_path() {
        let document: serde_yaml::Value = serde_yaml::from_str(
            "auth:\n  token: ${NOPE}\nendpoints:\n  - name: a\n    token: ${ALSO_NOPE}\n  - name: ${KEY}\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let dict = yaml_to_dict(document, &lookup, &mut problems).unwrap();
        let keys: Vec<String> = problems.iter().map(|(key, _)| key.to_string()).collect();
        assert_eq!(keys, ["auth.token", "endpoints[0].token"]);
        let second = KeyPath::root().key("endpoints").index(1).key("name");
        assert_eq!(
            second.find(&Value::from(dict)).and_then(|v| v.as_str()),
            Some("sk-123")
        );
    }

    #[test]
    fn drops_null_values_and_rejects_a_non_mapping_top_level() {
        let mut problems = Vec::new();
        let document: serde_yaml::Value = serde_yaml::from_str("auth:\n  token:\n").unwrap();
        let dict = yaml_to_dict(document, &lookup, &mut problems).unwrap();
        assert!(KeyPath::keys(&["auth", "token"])
            .find(&Value::from(dict))
            .is_none());

        let document: serde_yaml::Value = serde_yaml::from_str("- a\n- b\n").unwrap();
        assert!(yaml_to_dict(document, &lookup, &mut problems).is_err());
        let document: serde_yaml::Value = serde_yaml::from_str("").unwrap();
        assert!(yaml_to_dict(document, &lookup, &mut problems)
            .unwrap()
            .is_empty());
    }
}
