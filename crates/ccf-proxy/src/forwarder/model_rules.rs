//! Routing by model in the route phase (`routing.model_rules`, issue 20): the rule a request's
//! model matches is found at admission ([`Forwarder::model_route`], counted in
//! `ccf_model_rule_matches_total`); each group round then plans the rule's group first, then the
//! usual active group (failover), or nothing more for an `only` rule
//! ([`Forwarder::round_plan`]). The rules are read from the configuration in force, so hot
//! reload applies them to the next request. Which group and order is ccf-router's
//! (`model_rules.rs`); this file only asks.

use std::sync::Arc;
use std::time::Instant;

use ccf_health::HealthSnapshot;
use ccf_router::{ModelRoute, RoutePlan};
use tracing::debug;

use super::{Forwarder, RequestContext};

impl Forwarder {
    /// The `routing.model_rules` entry `model` matches, if any (counted).
    pub(super) fn model_route(&self, model: Option<&str>) -> Option<ModelRoute> {
        let current = self.shared.current();
        let route = ccf_router::model_route(&current.config.routing.model_rules, model?)?;
        debug!(rule = route.rule, group = %route.group, only = route.only, "model rule matched");
        self.shared
            .metrics
            .model_routing
            .record_rule_match(&route.group);
        Some(route)
    }

    /// The plan of the next group a round tries: the model rule's group while the round has
    /// not tried it (and it can take traffic), else the active group as usual, else `None` for
    /// a request whose `only` rule allows nothing more.
    pub(super) fn round_plan(
        &self,
        context: &RequestContext,
        tried_groups: &[String],
    ) -> Option<RoutePlan> {
        let shared = &self.shared;
        let Some(route) = context.model_route.as_ref() else {
            return Some(shared.plan());
        };
        if !tried_groups.contains(&route.group) {
            let health: Arc<HealthSnapshot> = shared.health.snapshot();
            let plan = shared.router().plan_group(
                &route.group,
                route.only,
                &|name| health.is_healthy(name),
                Instant::now(),
            );
            shared.publish_router(plan.events.clone());
            if plan.group.is_some() {
                return Some(plan);
            }
        }
        if route.only {
            return None;
        }
        Some(shared.plan())
    }
}
