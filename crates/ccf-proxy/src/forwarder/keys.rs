//! Per-key limits at admission (`auth.tokens[].limits`, [`crate::key_limits`]): the one call
//! admission makes for a request's API key, and what the application and the UIs read or feed
//! (views, the budget calendar, spend seeded from the store).
//!
//! With a cluster link the admission of a key with a rate or concurrency limit also asks the
//! link's shared counters (each ask bounded by `cluster.redis_timeout`, then decided locally);
//! the views stay this instance's own numbers.
//!
//! It must not decide what a limit means (that is `key_limits.rs`) nor anything of routing.

use std::sync::Arc;
use std::time::SystemTime;

use http::Response;
use tracing::info;

use super::Forwarder;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::key_limits::{BudgetCalendar, KeyLimitView, KeyPermit};

impl Forwarder {
    /// Admits a request made with `api_key_name` against its key's limits: a permit to hold
    /// until the answer ends, or the 429 to answer (logged and counted here). Requests without a
    /// key (inbound auth off) are not limited.
    pub(super) async fn key_permit(
        &self,
        api_key_name: Option<&str>,
    ) -> Result<Option<KeyPermit>, Response<ProxyBody>> {
        let Some(key) = api_key_name else {
            return Ok(None);
        };
        match self.shared.key_limits.admit(key).await {
            Ok(permit) => Ok(permit),
            Err(refusal) => {
                let reason = refusal.reason();
                self.shared.metrics.record_key_rejected(key, reason);
                let error = ProxyError::from(refusal);
                info!(status = 429, api_key = %key, reason, "rejected: {error}");
                self.shared.metrics.record_request("", error.status());
                Err(error.to_response())
            }
        }
    }

    /// Every configured API key's limits and usage now (spend against budgets, rate, requests in
    /// flight and queued), in configuration order. Names only, never the keys.
    pub fn key_limit_views(&self) -> Vec<KeyLimitView> {
        self.shared.key_limits.views()
    }

    /// Installs the calendar budget periods are counted in (the configured `timezone`; UTC
    /// until then).
    pub fn set_budget_calendar(&self, calendar: BudgetCalendar) {
        self.shared.key_limits.set_calendar(calendar);
    }

    /// The budget day and month `now` falls in (the installed calendar).
    pub fn budget_periods(&self, now: SystemTime) -> crate::key_limits::BudgetPeriods {
        self.shared.key_limits.periods(now)
    }

    /// Seeds `key`'s spend today and this month from the store at start, before traffic.
    pub fn seed_key_spend(&self, key: &str, today_usd: f64, this_month_usd: f64, at: SystemTime) {
        self.shared
            .key_limits
            .seed_spend(key, today_usd, this_month_usd, at);
    }

    /// The per-key limits, shared (what the cost counter adds spend to).
    pub fn key_limits(&self) -> Arc<crate::key_limits::KeyLimits> {
        Arc::clone(&self.shared.key_limits)
    }
}
