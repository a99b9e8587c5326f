//! Which endpoints a request may go to, in order.
//!
//! This is the seam the router crate replaces (groups, strategies, cooldowns, health). Until then
//! the order is the static one the configuration implies: group-priority, then priority, then file
//! order; endpoints that failed their last attempt go last, so a dead upstream does not delay
//! every request.

use std::sync::Arc;

use ccf_config::Endpoint;

use crate::monitoring::EndpointStates;

/// The endpoints to try for one request, best first.
pub fn candidates(endpoints: &[Arc<Endpoint>], states: &EndpointStates) -> Vec<Arc<Endpoint>> {
    let mut ordered: Vec<(usize, &Arc<Endpoint>)> = endpoints.iter().enumerate().collect();
    ordered.sort_by_key(|(index, endpoint)| {
        (
            !states.is_healthy(&endpoint.name),
            endpoint.group_priority,
            endpoint.priority,
            *index,
        )
    });
    ordered
        .into_iter()
        .map(|(_, endpoint)| Arc::clone(endpoint))
        .collect()
}
