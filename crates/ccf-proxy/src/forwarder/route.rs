//! Phase 3, route: the rounds of one request. Each round asks the router for the active group's
//! plan, re-ranks it by the fast test (`strategy: fastest`), lets session affinity and quota
//! draining order it last, and hands it to the forward phase (`attempts.rs`). A group whose
//! every endpoint failed fails over (auto mode: cooldown, and the same request continues on the
//! next group; manual mode: marked as needing attention). When nothing is left the request is
//! held (`request_suspend`) until something may have changed, or it ends with the final
//! failure: the last upstream answer verbatim, else an Anthropic-format error.
//!
//! It must not know what an attempt's result means (that is [`crate::retry`]) nor how an answer
//! is relayed; ordering rules belong to ccf-router, this file only feeds them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccf_health::HealthSnapshot;
use ccf_lifecycle::FailureReason;
use ccf_router::RoutePlan;
use ccf_tokens::BodyTap;
use http::{header, Response, StatusCode};
use tracing::{debug, info, warn};

use super::attempts::{BufferedAnswer, GroupOutcome};
use super::{Forwarder, RequestContext, Shared};
use crate::body::{full_body, ProxyBody};
use crate::error::{anthropic_error_response, ProxyError};
use crate::events::ForwarderEvent;
use crate::suspend::HoldPermit;

impl Forwarder {
    /// Routes the request until an answer exists: rounds of plans, groups failing over, and
    /// when nothing is left the request is held until something may have changed, or it ends
    /// with the final failure.
    pub(super) async fn route_and_forward(
        &self,
        context: &mut RequestContext,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let mut last_answer: Option<BufferedAnswer> = None;
        let mut last_error: Option<ProxyError> = None;
        let mut permit: Option<HoldPermit> = None;
        loop {
            // Subscribe before routing so that a wake-up during the round is not lost.
            let mut wakes = shared.suspension.subscribe();
            // One round: the active group, then each group it fails over to.
            let mut tried_groups: Vec<String> = Vec::new();
            loop {
                let mut plan = shared.plan();
                let Some(group) = plan.group.clone() else {
                    break;
                };
                self.rank_by_fast_test(&mut plan).await;
                // Session affinity and quota draining reorder the plan last, so they win.
                context.decision =
                    shared
                        .router()
                        .arrange(&mut plan, context.session.as_ref(), Instant::now());
                if tried_groups.contains(&group) {
                    break;
                }
                tried_groups.push(group.clone());
                match self
                    .try_group(context, &plan, &mut last_answer, &mut last_error)
                    .await
                {
                    GroupOutcome::Answered(response) => {
                        if let Some(permit) = permit.take() {
                            self.note_resumed(context, &permit);
                        }
                        return response;
                    }
                    GroupOutcome::Exhausted => {
                        if !self.fail_over(&group) {
                            break;
                        }
                    }
                }
            }
            // Nothing (more) to try: hold the request when allowed.
            if permit.is_none() {
                permit = self.hold(context);
            }
            let Some(held) = &permit else { break };
            let deadline = held_deadline(held, shared.suspension.timeout());
            if !self.wait_for_change(&mut wakes, deadline).await {
                return self.suspension_timed_out(context, held.waited());
            }
            debug!("held request routes again");
        }
        self.final_failure(context, last_answer, last_error)
    }

    /// Every endpoint of `group` failed. Auto mode: the group cools down (unless no other group
    /// could take over) and the request continues on the next group (`true`). Manual mode: the
    /// group is marked as needing attention and the round ends (`false`).
    fn fail_over(&self, group: &str) -> bool {
        let shared = &self.shared;
        warn!(group = %group, "every endpoint of the group failed");
        if !shared.router().is_auto() {
            // Manual mode: mark the group as needing attention, never switch.
            let events = shared.router().record_group_failure(group, Instant::now());
            shared.publish_router(events);
            return false;
        }
        if shared.another_group_available(group) {
            let events = shared.router().record_group_failure(group, Instant::now());
            shared.publish_router(events);
        } else {
            // Cooling down the last available group would turn every request away until the
            // cooldown ends while it may recover any second.
            info!(group = %group, "no other group to fail over to: no cooldown");
        }
        true
    }

    /// Holds the request (`request_suspend`) when allowed: the permit, or `None` when holding is
    /// off or full.
    fn hold(&self, context: &mut RequestContext) -> Option<HoldPermit> {
        let shared = &self.shared;
        let permit = shared.suspension.try_hold(context.request_id)?;
        if let Some(tracker) = context.tracker() {
            tracker.transition(|lifecycle| lifecycle.suspended());
        }
        info!(
            held = shared.suspension.held(),
            "no upstream available: request held"
        );
        shared.metrics.record_suspension("held");
        shared.events.publish(ForwarderEvent::RequestSuspended {
            request_id: context.request_id,
            held: shared.suspension.held(),
        });
        Some(permit)
    }

    /// A held request was answered.
    fn note_resumed(&self, context: &mut RequestContext, permit: &HoldPermit) {
        let shared = &self.shared;
        if let Some(tracker) = context.tracker() {
            tracker.transition(|lifecycle| lifecycle.resumed());
        }
        shared.metrics.record_suspension("resumed");
        shared.events.publish(ForwarderEvent::RequestResumed {
            request_id: context.request_id,
            waited: permit.waited(),
        });
    }

    /// A held request waited `request_suspend.timeout` for nothing: 503 `overloaded_error`.
    fn suspension_timed_out(
        &self,
        context: &mut RequestContext,
        waited: Duration,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        warn!(waited_ms = waited.as_millis(), "held request timed out");
        shared.metrics.record_suspension("timed_out");
        shared
            .events
            .publish(ForwarderEvent::RequestSuspensionTimedOut {
                request_id: context.request_id,
                waited,
            });
        shared
            .metrics
            .record_request("", StatusCode::SERVICE_UNAVAILABLE);
        let message = format!(
            "no upstream endpoint became available within {:?}",
            shared.suspension.timeout()
        );
        if let Some(tracker) = context.tracker() {
            tracker.finish(|lifecycle, now| {
                lifecycle.fail(FailureReason::NoHealthy, &message, Some(503), now)
            });
        }
        anthropic_error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            &message,
        )
    }

    /// With `strategy: fastest` and `fast_test_enabled`, probes the plan's endpoints (results
    /// cached for `fast_test_cache_ttl`), feeds their latencies to the router and re-ranks the
    /// plan by the router's fast-test rule ([`ccf_router::rank_by_fast_test`]).
    async fn rank_by_fast_test(&self, plan: &mut RoutePlan) {
        let shared = &self.shared;
        let current = shared.current();
        let strategy = &current.config.strategy;
        if strategy.kind != ccf_config::StrategyType::Fastest
            || !strategy.fast_test_enabled
            || plan.endpoints.len() < 2
        {
            return;
        }
        let names: Vec<String> = plan.endpoints.iter().map(|e| e.name.clone()).collect();
        let reachable = shared.health.fast_test(&names).await;
        if reachable.is_empty() {
            return;
        }
        {
            let mut router = shared.router();
            for (name, latency) in &reachable {
                router.record_probe_latency(name, *latency);
            }
        }
        let demoted: Vec<String> = shared
            .honesty
            .demotions()
            .into_iter()
            .filter_map(|(name, demoted)| demoted.then_some(name))
            .collect();
        ccf_router::rank_by_fast_test(&mut plan.endpoints, &reachable, &|name| {
            demoted.iter().any(|demoted| demoted == name)
        });
    }

    /// Waits until something may have changed (a wake-up, or the router's next scheduled
    /// change) or the deadline; `false` when the deadline passed.
    async fn wait_for_change(
        &self,
        wakes: &mut tokio::sync::watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let now = Instant::now();
        let next_change = self
            .shared
            .router()
            .next_change_at(now)
            .map(tokio::time::Instant::from_std);
        let wake_at = next_change.map_or(deadline, |next| next.min(deadline));
        tokio::select! {
            changed = wakes.changed() => changed.is_ok() || tokio::time::Instant::now() < deadline,
            () = tokio::time::sleep_until(wake_at) => tokio::time::Instant::now() < deadline,
        }
    }

    /// The answer when nothing succeeded: the last upstream answer verbatim, else an
    /// Anthropic-format error.
    fn final_failure(
        &self,
        context: &mut RequestContext,
        last_answer: Option<BufferedAnswer>,
        last_error: Option<ProxyError>,
    ) -> Response<ProxyBody> {
        let shared = &self.shared;
        let attempts = context.attempt_count;
        if let Some(answer) = last_answer {
            let status = answer.parts.status;
            warn!(
                status = status.as_u16(),
                attempts, "every attempt failed: relaying the last upstream answer"
            );
            shared.metrics.record_request("", status);
            if let Some(tracker) = context.tracker() {
                // Error answers (429, 5xx) may carry usage: it is billed once, here.
                let extraction = extract_buffered(&answer);
                tracker.observe(
                    extraction.model.as_deref(),
                    extraction.usage,
                    extraction.partial,
                );
                let detail = match &extraction.error {
                    Some(error) => format!(
                        "every attempt failed; last answer HTTP {}: {}: {}",
                        status.as_u16(),
                        error.error_type,
                        error.message
                    ),
                    None => format!("every attempt failed; last answer HTTP {}", status.as_u16()),
                };
                tracker.finish(|lifecycle, now| {
                    lifecycle.fail(
                        FailureReason::EndpointExhausted,
                        &detail,
                        Some(status.as_u16()),
                        now,
                    )
                });
            }
            return Response::from_parts(answer.parts, full_body(answer.body));
        }
        let error = last_error.unwrap_or(ProxyError::NoEndpoint);
        warn!(
            status = error.status().as_u16(),
            attempts, "request failed: {error}"
        );
        shared.metrics.record_request("", error.status());
        if let Some(tracker) = context.tracker() {
            let reason = match &error {
                ProxyError::Connect { .. } => FailureReason::NetworkError,
                ProxyError::HeaderTimeout { .. } => FailureReason::Timeout,
                ProxyError::NoEndpoint => FailureReason::NoHealthy,
                _ => FailureReason::UnknownError,
            };
            let message = error.to_string();
            let status = error.status().as_u16();
            tracker.finish(|lifecycle, now| lifecycle.fail(reason, &message, Some(status), now));
        }
        error.to_response()
    }
}

impl Shared {
    /// The router's plan for a new round, with the current health.
    pub(super) fn plan(&self) -> RoutePlan {
        let health: Arc<HealthSnapshot> = self.health.snapshot();
        let plan = self
            .router()
            .plan(&|name| health.is_healthy(name), Instant::now());
        self.publish_router(plan.events.clone());
        plan
    }

    /// Whether a group other than `group` could take traffic now (not paused, not cooling down).
    fn another_group_available(&self, group: &str) -> bool {
        let health = self.health.snapshot();
        self.router()
            .groups(&|name| health.is_healthy(name), Instant::now())
            .iter()
            .any(|view| {
                view.name != group && !view.paused && !view.in_cooldown && view.total_endpoints > 0
            })
    }
}

fn held_deadline(permit: &HoldPermit, timeout: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout.saturating_sub(permit.waited())
}

/// Reads usage, model and error out of a buffered upstream answer.
fn extract_buffered(answer: &BufferedAnswer) -> ccf_tokens::Extraction {
    let header_text = |name: header::HeaderName| {
        answer
            .parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let mut tap = BodyTap::new(
        header_text(header::CONTENT_TYPE),
        header_text(header::CONTENT_ENCODING),
    );
    tap.feed(&answer.body);
    tap.finish()
}
