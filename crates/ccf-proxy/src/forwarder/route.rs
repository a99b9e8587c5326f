//! Phase 3, route: the rounds of one request. Each round asks the router for the active group's
//! plan, re-ranks it by the fast test (`strategy: fastest`), lets session affinity and quota
//! draining order it last, and hands it to the forward phase (`attempts.rs`). A group whose
//! every endpoint failed fails over (auto mode: cooldown, and the same request continues on the
//! next group; manual mode: marked as needing attention). When nothing is left the request is
//! held (`request_suspend`) until something may have changed, or at the latest until it looks
//! again on its own (1 s doubling to 5 s), or it ends with the final failure: the last upstream
//! answer verbatim, else an Anthropic-format error. A success on a group in cooldown (tried as
//! the last resort) ends that cooldown.
//!
//! It must not know what an attempt's result means (that is [`crate::retry`]) nor how an answer
//! is relayed; ordering rules belong to ccf-router, this file only feeds them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccf_health::HealthSnapshot;
use ccf_lifecycle::FailureReason;
use ccf_router::{RoutePlan, RouterEvent};
use ccf_tokens::BodyTap;
use http::{header, Response, StatusCode};
use tracing::{debug, info, warn};

use super::attempts::{BufferedAnswer, GroupOutcome};
use super::{Forwarder, RequestContext, Shared};
use crate::body::{full_body, ProxyBody};
use crate::cluster::{wall_of, SharedUpdate};
use crate::error::{anthropic_error_response, mark_already_retried, ProxyError};
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
        let mut recheck = HOLD_RECHECK_FIRST;
        loop {
            // Subscribe before routing so that a wake-up during the round, or between the round
            // and taking a hold slot, is not lost (`Suspension::wake` always bumps the counter).
            let mut wakes = shared.suspension.subscribe();
            // One round: the active group, then each group it fails over to.
            let mut tried_groups: Vec<String> = Vec::new();
            // The model rule's group first, when the request matched one (model_rules.rs).
            while let Some(mut plan) = self.round_plan(context, &tried_groups) {
                if plan.group.is_none() {
                    break;
                }
                self.rank_by_fast_test(&mut plan).await;
                // Session affinity and quota draining reorder the plan last, so they win.
                context.decision =
                    shared
                        .router()
                        .arrange(&mut plan, context.session.as_ref(), Instant::now());
                let Some(group) = plan.group.as_deref() else {
                    break;
                };
                if tried_groups.iter().any(|tried| tried == group) {
                    break;
                }
                tried_groups.push(group.to_string());
                match self
                    .try_group(context, &plan, &mut last_answer, &mut last_error)
                    .await
                {
                    GroupOutcome::Answered(response) => {
                        if response.status().is_success() {
                            shared.group_served(group);
                        }
                        if let Some(permit) = permit.take() {
                            self.note_resumed(context, &permit);
                        }
                        return response;
                    }
                    GroupOutcome::Exhausted => {
                        if !self.fail_over(group) {
                            break;
                        }
                    }
                    // The retry budget refused an attempt: the group did not fail; the round
                    // ends without failover (held requests look again later).
                    GroupOutcome::RetryDenied => break,
                    GroupOutcome::GiveUp => {
                        return self.final_failure(context, last_answer, last_error)
                    }
                }
            }
            // Nothing (more) to try: hold the request when allowed (again after a re-route).
            match &permit {
                None => permit = self.hold(context),
                Some(_) => {
                    if let Some(tracker) = context.tracker() {
                        tracker.transition(|lifecycle| lifecycle.suspended());
                    }
                }
            }
            let Some(held) = &permit else { break };
            let deadline = held_deadline(held, shared.suspension.timeout());
            // Route again on a signal, at the router's next scheduled change, or on our own after
            // `recheck` at the latest: an overloaded upstream that serves again may send no
            // signal at all (its probes passed all along), and only real traffic can tell.
            let recheck_at = tokio::time::Instant::now() + recheck;
            recheck = (recheck * 2).min(HOLD_RECHECK_MAX);
            if !self.wait_for_change(&mut wakes, recheck_at, deadline).await {
                return self.suspension_timed_out(context, held.waited());
            }
            // Each re-route's attempts count against the retry budget (`try_group`): when it
            // refuses, the round ends with `RetryDenied` and the request waits again.
            if let Some(tracker) = context.tracker() {
                tracker.transition(|lifecycle| lifecycle.resumed());
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
            for event in &events {
                if let RouterEvent::GroupCooldown { group, until } = event {
                    shared.share(|| SharedUpdate::GroupCooldown {
                        group: group.clone(),
                        until: wall_of(*until),
                    });
                }
            }
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

    /// A held request was answered (its lifecycle shows `resumed` since it routed again).
    fn note_resumed(&self, context: &RequestContext, permit: &HoldPermit) {
        let shared = &self.shared;
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
        let mut response = anthropic_error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            &message,
        );
        mark_already_retried(&mut response, context.attempt_count);
        response
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

    /// Waits until something may have changed (a wake-up, the router's next scheduled change,
    /// or `recheck_at`, when the held request looks again on its own) or the deadline; `false`
    /// when the deadline passed.
    async fn wait_for_change(
        &self,
        wakes: &mut crate::suspend::Wakes,
        recheck_at: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> bool {
        let now = Instant::now();
        let next_change = self
            .shared
            .router()
            .next_change_at(now)
            .map(tokio::time::Instant::from_std);
        let wake_at = next_change.map_or(deadline, |next| next.min(deadline));
        let wake_at = wake_at.min(recheck_at);
        tokio::select! {
            () = self.shared.suspension.changed(wakes) => true,
            () = tokio::time::sleep_until(wake_at) => tokio::time::Instant::now() < deadline,
        }
    }

    /// The answer when nothing succeeded: the last upstream answer verbatim, else an
    /// Anthropic-format error; with `x-should-retry: false` when the forwarder already retried,
    /// so that the client's SDK does not multiply the attempts again.
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
            let mut response = Response::from_parts(answer.parts, full_body(answer.body));
            mark_already_retried(&mut response, attempts);
            return response;
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
        let mut response = error.to_response();
        mark_already_retried(&mut response, attempts);
        response
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

    /// Real traffic on `group` succeeded: a cooldown it is in (it served as the last resort)
    /// ends, and held requests look again. Probes never do this (`Router::record_group_success`).
    fn group_served(&self, group: &str) {
        let events = self.router().record_group_success(group, Instant::now());
        if !events.is_empty() {
            info!(group = %group, "real traffic succeeded on a cooling group: cooldown ended");
            self.share(|| SharedUpdate::GroupCooldownEnded {
                group: group.to_string(),
            });
            self.publish_router(events);
            self.suspension.wake();
        }
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

/// A held request routes again on its own after this long without a signal, then after twice
/// that, and so on up to [`HOLD_RECHECK_MAX`] (always within its hold time): 1 s, 2 s, 4 s, 5 s,
/// 5 s, ... Fast enough that a request held through a brown-out is served about a second after
/// the upstream serves again; slow enough that a few hundred held requests add a small share of
/// the traffic (each re-route's attempts also count against the retry budget).
const HOLD_RECHECK_FIRST: Duration = Duration::from_secs(1);
/// The longest a held request waits before routing again on its own.
const HOLD_RECHECK_MAX: Duration = Duration::from_secs(5);

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
