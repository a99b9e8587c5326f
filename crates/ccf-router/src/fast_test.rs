//! The fast test's ordering rule (`strategy: fastest` with `fast_test_enabled`): how a plan is
//! re-ranked once the endpoints were probed just before routing.
//!
//! Pure, like the rest of the crate: the engine runs the probes (ccf-health's fast test) and
//! passes their results in, with which endpoints are demoted for a low honesty score. It must not
//! know how endpoints are probed, nor when the fast test runs.

use std::time::Duration;

use crate::PlannedEndpoint;

/// Re-ranks a plan's `endpoints` by a fast test: the `reachable` ones (with their measured
/// latency, fastest first, as the fast test returns them) go first in that order, the others
/// after them in their plan order, as a last resort. Endpoints demoted for a low honesty score
/// stay behind every endpoint that is not, as in [`crate::Router::plan`]. An empty `reachable`
/// (no fast-test information) leaves the plan as it is.
pub fn rank_by_fast_test(
    endpoints: &mut [PlannedEndpoint],
    reachable: &[(String, Duration)],
    is_demoted: &dyn Fn(&str) -> bool,
) {
    if reachable.is_empty() {
        return;
    }
    // A stable sort: endpoints with the same key keep their plan order.
    endpoints.sort_by_key(|planned| {
        let rank = reachable
            .iter()
            .position(|(name, _)| *name == planned.name)
            .unwrap_or(usize::MAX);
        (is_demoted(&planned.name), rank)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(name: &str) -> PlannedEndpoint {
        PlannedEndpoint {
            name: name.to_string(),
            group: "g".to_string(),
            index: 0,
            healthy: true,
        }
    }

    /// Names are space-separated; `reachable` is fastest first.
    fn check(plan: &str, reachable: &str, demoted: &str, expected: &str) {
        let mut endpoints: Vec<PlannedEndpoint> = plan.split_whitespace().map(planned).collect();
        let reachable: Vec<(String, Duration)> = reachable
            .split_whitespace()
            .zip(1..)
            .map(|(name, millis)| (name.to_string(), Duration::from_millis(millis * 10)))
            .collect();
        let demoted: Vec<&str> = demoted.split_whitespace().collect();
        rank_by_fast_test(&mut endpoints, &reachable, &|name| demoted.contains(&name));
        let order: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            order.join(" "),
            expected,
            "plan {plan:?}, reachable {reachable:?}, demoted {demoted:?}"
        );
    }

    #[test]
    fn reachable_endpoints_go_first_fastest_first_and_demoted_ones_last() {
        // plan          reachable (fastest first)  demoted  result
        check("a b c d", "c a", "", "c a b d");
        check("a b c d", "c a", "a", "c b d a");
        check("a b c", "b c a", "", "b c a");
        check("a b c", "c", "b", "c a b");
        check("a b c", "a b c", "a c", "b a c");
        // No fast-test information: the plan (already ordered by the router) stays as it is.
        check("a b c d", "", "b", "a b c d");
        // A name the plan does not hold changes nothing.
        check("a b", "x b", "", "b a");
        check("", "a", "", "");
    }
}
