//! Tests of [`Router::reconfigure`] (hot reload): which live state survives a new configuration.

use std::time::{Duration, Instant};

use ccf_config::Endpoint;

use super::*;

use crate::test_support::{endpoint, Spec, AUTO, MANUAL};

fn endpoints(specs: &[Spec]) -> Vec<Endpoint> {
    specs.iter().copied().map(endpoint).collect()
}

const AB: &[Spec] = &[("a1", "A", 1, 1), ("a2", "A", 1, 2), ("b1", "B", 2, 1)];

fn all_healthy(_: &str) -> bool {
    true
}

fn no_reset(_: &str) -> bool {
    false
}

/// The plan's endpoint names, in order.
fn plan_names(router: &mut Router, now: Instant) -> Vec<String> {
    router
        .plan(&all_healthy, now)
        .endpoints
        .into_iter()
        .map(|planned| planned.name)
        .collect()
}

fn group_view(router: &Router, name: &str, now: Instant) -> GroupView {
    router
        .groups(&all_healthy, now)
        .into_iter()
        .find(|group| group.name == name)
        .expect("group exists")
}

#[test]
fn added_endpoint_is_routed_and_removed_endpoint_is_forgotten() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    assert_eq!(plan_names(&mut router, t0), ["a1", "a2"]);
    router.reconfigure(
        &endpoints(&[("a0", "A", 1, 0), ("a2", "A", 1, 2), ("b1", "B", 2, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert_eq!(plan_names(&mut router, t0), ["a0", "a2"]);
    assert!(router.set_priority("a1", 3).is_err(), "a1 is gone");
}

#[test]
fn paused_and_cooling_groups_stay_so() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router
        .pause("B", None, &all_healthy, t0)
        .expect("B can be paused");
    router.record_group_failure("A", t0);
    assert!(group_view(&router, "A", t0).in_cooldown);
    router.reconfigure(
        &endpoints(&[("a1", "A", 1, 1), ("b1", "B", 2, 1), ("c1", "C", 3, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0 + Duration::from_secs(1),
    );
    let now = t0 + Duration::from_secs(2);
    assert!(group_view(&router, "A", now).in_cooldown, "cooldown kept");
    assert!(group_view(&router, "B", now).paused, "pause kept");
    assert_eq!(plan_names(&mut router, now), ["c1"]);
    // The cooldown still ends when it was going to.
    assert_eq!(
        plan_names(&mut router, t0 + Duration::from_secs(601)),
        ["a1"]
    );
}

#[test]
fn file_priority_change_wins_over_an_operator_edit_and_unchanged_keeps_it() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router.set_priority("a2", 0).expect("a2 exists");
    router.set_priority("a1", 5).expect("a1 exists");
    assert_eq!(plan_names(&mut router, t0), ["a2", "a1"]);
    // a1's priority changes in the file (1 -> 4): the file wins; a2's does not: the edit stays.
    let events = router.reconfigure(
        &endpoints(&[("a1", "A", 1, 4), ("a2", "A", 1, 2), ("b1", "B", 2, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert!(events.contains(&RouterEvent::PriorityChanged {
        endpoint: "a1".into(),
        priority: 4
    }));
    let views = router.endpoints(&all_healthy, t0);
    let priority = |name: &str| {
        views
            .iter()
            .find(|view| view.name == name)
            .map(|view| view.priority)
            .expect("endpoint exists")
    };
    assert_eq!(priority("a1"), 4);
    assert_eq!(priority("a2"), 0);
}

#[test]
fn priority_change_in_the_file_reorders_the_group() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    assert_eq!(plan_names(&mut router, t0), ["a1", "a2"]);
    router.reconfigure(
        &endpoints(&[("a1", "A", 1, 3), ("a2", "A", 1, 2), ("b1", "B", 2, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert_eq!(plan_names(&mut router, t0), ["a2", "a1"]);
}

#[test]
fn group_priority_change_moves_traffic_and_reports_it() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    assert_eq!(plan_names(&mut router, t0), ["a1", "a2"]);
    let events = router.reconfigure(
        &endpoints(&[("a1", "A", 3, 1), ("a2", "A", 3, 2), ("b1", "B", 2, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert!(events.contains(&RouterEvent::ActiveGroupChanged {
        from: Some("A".into()),
        to: Some("B".into())
    }));
    assert_eq!(plan_names(&mut router, t0), ["b1"]);
}

#[test]
fn removing_the_active_group_reports_the_change_from_it() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    plan_names(&mut router, t0);
    let events = router.reconfigure(
        &endpoints(&[("b1", "B", 2, 1)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert!(events.contains(&RouterEvent::ActiveGroupChanged {
        from: Some("A".into()),
        to: Some("B".into())
    }));
}

#[test]
fn operator_pin_and_manual_choice_survive() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router
        .activate("B", false, &all_healthy, t0)
        .expect("B can be activated");
    router.reconfigure(&endpoints(AB), AUTO, &no_reset, &all_healthy, t0);
    assert_eq!(plan_names(&mut router, t0), ["b1"], "auto-mode pin kept");

    let mut manual = Router::new(&endpoints(AB), MANUAL);
    plan_names(&mut manual, t0);
    manual
        .activate("B", false, &all_healthy, t0)
        .expect("B can be activated");
    manual.reconfigure(&endpoints(AB), MANUAL, &no_reset, &all_healthy, t0);
    assert_eq!(plan_names(&mut manual, t0), ["b1"], "manual choice kept");
}

#[test]
fn rate_limit_block_is_kept_unless_the_endpoint_was_reset() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router.block_until("a1", t0 + Duration::from_secs(60));
    router.reconfigure(&endpoints(AB), AUTO, &no_reset, &all_healthy, t0);
    assert_eq!(plan_names(&mut router, t0), ["a2"], "block kept");
    router.reconfigure(&endpoints(AB), AUTO, &|name| name == "a1", &all_healthy, t0);
    assert_eq!(
        plan_names(&mut router, t0),
        ["a1", "a2"],
        "new credentials: block dropped"
    );
}

#[test]
fn prefer_endpoint_override_survives_an_unrelated_change() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router.prefer_endpoint("a2").expect("a2 exists");
    assert_eq!(plan_names(&mut router, t0), ["a2", "a1"]);
    router.reconfigure(
        &endpoints(&[("a1", "A", 1, 1), ("a2", "A", 1, 2), ("b1", "B", 2, 7)]),
        AUTO,
        &no_reset,
        &all_healthy,
        t0,
    );
    assert_eq!(plan_names(&mut router, t0), ["a2", "a1"]);
}

#[test]
fn settings_change_applies() {
    let t0 = Instant::now();
    let mut router = Router::new(&endpoints(AB), AUTO);
    router.reconfigure(
        &endpoints(AB),
        RouterSettings {
            cooldown: Duration::from_secs(5),
            ..AUTO
        },
        &no_reset,
        &all_healthy,
        t0,
    );
    assert_eq!(router.settings().cooldown, Duration::from_secs(5));
    router.record_group_failure("A", t0);
    assert_eq!(
        plan_names(&mut router, t0 + Duration::from_secs(6)),
        ["a1", "a2"],
        "the new, shorter cooldown applies"
    );
}

#[test]
fn the_quota_drain_threshold_comes_from_the_config_and_a_reload() {
    let yaml = |drain_at: &str| {
        format!(
            "routing:\n  quota_drain_at: {drain_at}\nendpoints:\n  - name: one\n    url: https://one.invalid\n"
        )
    };
    let config = ccf_config::Config::from_yaml_str(&yaml("0.75")).expect("valid config");
    let mut router = Router::from_config(&config);
    assert_eq!(router.quota().drain_at(), 0.75);
    let reloaded = ccf_config::Config::from_yaml_str(&yaml("0.95")).expect("valid config");
    router.reconfigure_from_config(&reloaded, &no_reset, &all_healthy, Instant::now());
    assert_eq!(router.quota().drain_at(), 0.95);
    let defaults = ccf_config::Config::from_yaml_str(
        "endpoints:\n  - name: one\n    url: https://one.invalid\n",
    )
    .expect("valid config");
    assert_eq!(
        Router::from_config(&defaults).quota().drain_at(),
        crate::DEFAULT_QUOTA_DRAIN_AT
    );
}
