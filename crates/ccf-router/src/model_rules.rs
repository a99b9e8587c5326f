//! Routing by model (`routing.model_rules`, issue 20): the first rule whose `match` fits the
//! request's model names the group the request starts in ([`model_route`]); that group's
//! endpoints are planned by the usual strategy ([`Router::plan_group`]). The request then fails
//! over as usual, unless the rule says `only: true`. Session affinity reorders inside the plan
//! only, so a bound session wins inside the rule's group, never outside it.
//!
//! Pure: the rules come from the configuration in force (hot reload swaps them), time and
//! health are passed in.

use std::time::Instant;

use ccf_config::{glob_matches, ModelRuleConfig};

use crate::{RoutePlan, Router};

/// The rule a request's model matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// Its position in `routing.model_rules`.
    pub rule: usize,
    /// Its `match` pattern.
    pub pattern: String,
    /// The group the request starts in.
    pub group: String,
    /// No failover to other groups.
    pub only: bool,
}

/// The first rule of `rules` whose pattern matches `model`.
pub fn model_route(rules: &[ModelRuleConfig], model: &str) -> Option<ModelRoute> {
    rules
        .iter()
        .enumerate()
        .find(|(_, rule)| glob_matches(&rule.pattern, model))
        .map(|(index, rule)| ModelRoute {
            rule: index,
            pattern: rule.pattern.clone(),
            group: rule.group.clone(),
            only: rule.only,
        })
}

impl Router {
    /// The plan of the named group rather than the active one: its unblocked endpoints in
    /// strategy order (healthy ones, else all marked unhealthy), as [`Router::plan`] orders the
    /// active group's. Empty (with `group: None`) when the group is unknown, paused, has no
    /// unblocked endpoint, or is cooling down and `allow_cooldown` is false (a rule that may
    /// fail over leaves a cooling group to the usual routing; an `only` rule tries it, as the
    /// usual routing tries a cooling group as the last resort). The evaluation runs as for
    /// [`Router::plan`], so timed states expire and its events are reported.
    pub fn plan_group(
        &mut self,
        group: &str,
        allow_cooldown: bool,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> RoutePlan {
        let mut events = Vec::new();
        self.begin_evaluation(healthy, now, &mut events);
        self.finish_evaluation(healthy, now, &mut events);
        let usable = self.group_position(group).filter(|position| {
            let state = &self.groups[*position];
            !state.is_paused(now)
                && (allow_cooldown || !state.in_cooldown(now))
                && self.has_unblocked(*position, now)
        });
        let endpoints = usable
            .map(|position| self.group_candidates(position, healthy, now))
            .unwrap_or_default();
        RoutePlan {
            group: usable.map(|position| self.groups[position].name.clone()),
            endpoints,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_support::{endpoint, AUTO};

    fn rule(pattern: &str, group: &str, only: bool) -> ModelRuleConfig {
        ModelRuleConfig {
            pattern: pattern.into(),
            group: group.into(),
            only,
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = [
            rule("claude-3-5-haiku-20241022", "exact", true),
            rule("*haiku*", "cheap", false),
            rule("claude-opus-*", "official", true),
        ];
        let route = |model: &str| model_route(&rules, model).map(|r| (r.rule, r.group, r.only));
        assert_eq!(
            route("claude-3-5-haiku-20241022"),
            Some((0, "exact".into(), true))
        );
        assert_eq!(
            route("claude-3-haiku-20240307"),
            Some((1, "cheap".into(), false))
        );
        assert_eq!(route("claude-opus-4-5"), Some((2, "official".into(), true)));
        assert_eq!(route("claude-sonnet-4-5"), None);
    }

    #[test]
    fn plans_the_named_group_not_the_active_one() {
        let endpoints = [
            endpoint(("official-a", "official", 1, 0)),
            endpoint(("official-b", "official", 1, 1)),
            endpoint(("relay-b", "cheap", 2, 1)),
            endpoint(("relay-a", "cheap", 2, 0)),
        ];
        let mut router = Router::new(&endpoints, AUTO);
        let now = Instant::now();
        let all = |_: &str| true;
        assert_eq!(router.plan(&all, now).group.as_deref(), Some("official"));
        let plan = router.plan_group("cheap", false, &all, now);
        assert_eq!(plan.group.as_deref(), Some("cheap"));
        let names: Vec<&str> = plan.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["relay-a", "relay-b"]);
        assert!(router
            .plan_group("nowhere", true, &all, now)
            .endpoints
            .is_empty());

        // A cooling group is left to the usual routing unless the rule is `only`.
        router.record_group_failure("cheap", now);
        let later = now + Duration::from_secs(1);
        let cooling = router.plan_group("cheap", false, &all, later);
        assert_eq!((cooling.group, cooling.endpoints.len()), (None, 0));
        assert_eq!(
            router
                .plan_group("cheap", true, &all, later)
                .endpoints
                .len(),
            2
        );
        // The active group is not changed by planning another one.
        assert_eq!(router.plan(&all, later).group.as_deref(), Some("official"));
    }
}
