//! Issue 20 configuration: `endpoints[].model_map` (per endpoint, never inherited) and
//! `routing.model_rules` (groups must exist; a rule hidden by an earlier one is refused), with
//! errors naming the file and the key.

use ccf_config::{ConfigError, ConfigLoader};

fn load(yaml: &str) -> Result<ccf_config::Config, ConfigError> {
    ConfigLoader::new()
        .yaml_str(yaml)
        .load()
        .map(|loaded| loaded.config)
}

fn error_lines(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(error) => error.to_string().lines().map(str::to_string).collect(),
    }
}

fn assert_error(yaml: &str, expected: &str) {
    let lines = error_lines(yaml);
    let expected = format!("<inline>: {expected}");
    assert!(
        lines.iter().any(|line| line == &expected),
        "expected the line\n  {expected}\nin\n{}",
        lines.join("\n")
    );
}

const TWO_GROUPS: &str = "
endpoints:
  - name: official
    url: https://api.anthropic.com
    group: official
    model_map:
      'claude-3-5-haiku-*': claude-3-5-haiku-20241022
  - name: official-2
    url: https://api2.example
  - name: relay
    url: https://relay.example
    group: cheap
    group-priority: 2
";

#[test]
fn model_maps_are_per_endpoint_and_not_inherited() {
    let config = load(TWO_GROUPS).unwrap();
    let map = |name: &str| {
        config
            .endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
            .unwrap()
            .model_map
            .clone()
    };
    assert_eq!(
        map("official").lookup("claude-3-5-haiku-latest"),
        Some("claude-3-5-haiku-20241022")
    );
    assert!(map("official-2").is_empty(), "never inherited");
    assert!(map("relay").is_empty());
}

#[test]
fn model_rules_are_read_with_their_defaults() {
    let config = load(&format!(
        "{TWO_GROUPS}routing:\n  model_rules:\n    - {{match: '*haiku*', group: cheap}}\n    - {{match: claude-opus-4-5, group: official, only: true}}\n"
    ))
    .unwrap();
    let rules = &config.routing.model_rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        (
            rules[0].pattern.as_str(),
            rules[0].group.as_str(),
            rules[0].only
        ),
        ("*haiku*", "cheap", false)
    );
    assert!(rules[1].only);
}

#[test]
fn model_rule_problems_name_the_key() {
    assert_error(
        &format!("{TWO_GROUPS}routing:\n  model_rules:\n    - {{match: '*haiku*', group: cheap}}\n    - {{match: 'x', group: cheap}}\n    - {{match: '*opus*', group: nowhere}}\n"),
        "routing.model_rules[2].group: unknown group `nowhere`: no endpoint has it (groups: cheap, official)",
    );
    assert_error(
        &format!("{TWO_GROUPS}routing:\n  model_rules:\n    - {{match: '', group: cheap}}\n"),
        "routing.model_rules[0].match: must not be empty",
    );
    assert_error(
        &format!("{TWO_GROUPS}routing:\n  model_rules:\n    - {{match: '*', group: cheap}}\n    - {{match: 'claude-*', group: official}}\n"),
        "routing.model_rules[1].match: `claude-*` can never match: routing.model_rules[0] (`*`) catches every such model first (the first matching rule wins)",
    );
    assert_error(
        &format!("{TWO_GROUPS}routing:\n  model_rules:\n    - {{match: '*haiku*', group: cheap}}\n    - {{match: 'claude-3-5-haiku-latest', group: official}}\n"),
        "routing.model_rules[1].match: `claude-3-5-haiku-latest` can never match: routing.model_rules[0] (`*haiku*`) catches every such model first (the first matching rule wins)",
    );
}

#[test]
fn model_map_problems_name_the_key() {
    let with_map = |map: &str| {
        format!("endpoints:\n  - name: a\n    url: https://a.example\n    model_map: {map}\n")
    };
    assert_error(
        &with_map("{'': x}"),
        "endpoints[0].model_map[\"\"]: the request model pattern must not be empty",
    );
    assert_error(
        &with_map("{'claude-*': ''}"),
        "endpoints[0].model_map.claude-*: the upstream model `` must be a model name: not empty, no `*`, no surrounding white space or control characters",
    );
    assert_error(
        &with_map("{'claude-**': x}"),
        "endpoints[0].model_map.claude-**: the request model pattern must not contain `**`: a single `*` already matches any run of characters",
    );
    assert_error(
        &with_map("{'claude-*': 'other-*'}"),
        "endpoints[0].model_map.claude-*: the upstream model `other-*` must be a model name: not empty, no `*`, no surrounding white space or control characters",
    );
}
