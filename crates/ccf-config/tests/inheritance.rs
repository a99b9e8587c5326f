//! Endpoint inheritance: group and group-priority from the previous endpoint; timeout and headers
//! from the first endpoint; token and api-key from the first endpoint of the same group.

use std::time::Duration;

use ccf_config::{Config, Endpoint};

fn endpoints(yaml: &str) -> Vec<Endpoint> {
    Config::from_yaml_str(yaml)
        .unwrap_or_else(|error| panic!("{error}\n{yaml}"))
        .endpoints
}

/// Builds an `endpoints:` list from one-line flow mappings.
fn list(entries: &[&str]) -> String {
    let mut yaml = String::from("endpoints:\n");
    for entry in entries {
        yaml.push_str(&format!("  - {entry}\n"));
    }
    yaml
}

fn expose(secret: &Option<ccf_config::Secret>) -> Option<&str> {
    secret.as_ref().map(|s| s.expose())
}

#[test]
fn group_and_group_priority_come_from_the_previous_endpoint() {
    let resolved = endpoints(&list(&[
        "{name: a, url: 'https://a.example'}",
        "{name: b, url: 'https://b.example', group: main, group-priority: 4}",
        "{name: c, url: 'https://c.example'}",
        // Starting a new group without a group-priority keeps the previous one (as in Go).
        "{name: d, url: 'https://d.example', group: other}",
        "{name: e, url: 'https://e.example', group-priority: 7}",
        // An empty group name is treated as absent.
        "{name: f, url: 'https://f.example', group: ''}",
    ]));
    let got: Vec<(&str, &str, u32)> = resolved
        .iter()
        .map(|e| (e.name.as_str(), e.group.as_str(), e.group_priority))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "Default", 1),
            ("b", "main", 4),
            ("c", "main", 4),
            ("d", "other", 4),
            ("e", "other", 7),
            ("f", "other", 7),
        ]
    );
}

#[test]
fn timeout_comes_from_the_endpoint_then_the_first_endpoint_then_global_timeout() {
    let check = |yaml: String, expected: &[u64]| {
        let got: Vec<u64> = endpoints(&yaml)
            .iter()
            .map(|e| e.timeout.as_secs())
            .collect();
        assert_eq!(got, expected, "{yaml}");
    };
    check(
        list(&[
            "{name: a, url: 'https://a.example', timeout: 45s}",
            "{name: b, url: 'https://b.example'}",
            "{name: c, url: 'https://c.example', timeout: 1m30s}",
        ]),
        &[45, 45, 90],
    );
    check(
        format!(
            "global_timeout: 120s\n{}",
            list(&[
                "{name: a, url: 'https://a.example'}",
                "{name: b, url: 'https://b.example', timeout: 10s}",
                "{name: c, url: 'https://c.example'}",
            ])
        ),
        // c does not inherit b's timeout: only the first endpoint's is inherited.
        &[120, 10, 120],
    );
    let resolved = endpoints(&list(&[
        "{name: a, url: 'https://a.example', timeout: 500ms}",
    ]));
    assert_eq!(resolved[0].timeout, Duration::from_millis(500));
}

#[test]
fn headers_are_copied_or_merged_from_the_first_endpoint() {
    let yaml = "endpoints:\n\
                \x20 - name: a\n    url: https://a.example\n    headers:\n      User-Agent: ccf/1\n      X-Team: red\n\
                \x20 - name: b\n    url: https://b.example\n\
                \x20 - name: c\n    url: https://c.example\n    headers:\n      x-team: blue\n      Authorization: Bearer override\n\
                \x20 - name: d\n    url: https://d.example\n    headers: {}\n";
    let resolved = endpoints(yaml);
    let headers = |index: usize| -> Vec<(&str, &str)> {
        resolved[index]
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    };
    let first = vec![("User-Agent", "ccf/1"), ("X-Team", "red")];
    assert_eq!(headers(0), first);
    assert_eq!(headers(1), first);
    assert_eq!(
        headers(2),
        [
            ("Authorization", "Bearer override"),
            ("User-Agent", "ccf/1"),
            ("x-team", "blue"),
        ]
    );
    assert_eq!(headers(3), first);
}

#[test]
fn credentials_come_from_the_first_endpoint_of_the_same_group() {
    let resolved = endpoints(&list(&[
        "{name: a1, url: 'https://a.example', group: a, token: ta, api-key: ka}",
        "{name: a2, url: 'https://a.example'}",
        "{name: a3, url: 'https://a.example', token: ta3}",
        // An explicit empty string means "no credential" and does not inherit.
        "{name: a4, url: 'https://a.example', token: '', api-key: ''}",
        // `null` means absent, so it inherits.
        "{name: a5, url: 'https://a.example', token: null}",
        "{name: b1, url: 'https://b.example', group: b}",
        "{name: b2, url: 'https://b.example', api-key: kb}",
        "{name: b3, url: 'https://b.example'}",
        // Back in group a later in the file: still group a's first credentials.
        "{name: a6, url: 'https://a.example', group: a}",
    ]));
    let got: Vec<(&str, Option<&str>, Option<&str>)> = resolved
        .iter()
        .map(|e| (e.name.as_str(), expose(&e.token), expose(&e.api_key)))
        .collect();
    assert_eq!(
        got,
        [
            ("a1", Some("ta"), Some("ka")),
            ("a2", Some("ta"), Some("ka")),
            ("a3", Some("ta3"), Some("ka")),
            ("a4", None, None),
            ("a5", Some("ta"), Some("ka")),
            ("b1", None, Some("kb")),
            ("b2", None, Some("kb")),
            ("b3", None, Some("kb")),
            ("a6", Some("ta"), Some("ka")),
        ]
    );
}

#[test]
fn priority_defaults_to_zero_and_other_fields_are_kept() {
    let resolved = endpoints(&list(&[
        "{name: a, url: 'https://a.example/prefix/', supports_count_tokens: true}",
        "{name: b, url: 'https://b.example', priority: 3}",
    ]));
    assert_eq!(resolved[0].priority, 0);
    assert!(resolved[0].supports_count_tokens);
    assert_eq!(resolved[0].url.path(), "/prefix/");
    assert_eq!(resolved[1].priority, 3);
    assert!(!resolved[1].supports_count_tokens);
}
