//! `GET /api/v1/keys`: every configured inbound API key by name (never the key itself) with its
//! limits (`auth.tokens[].limits`) and its usage against them now: spend today and this month
//! against the budgets and when each resets, requests in the last minute against the rate,
//! requests in flight against the concurrency limit, and requests queued.

use serde::Serialize;

use ccf_proxy::key_limits::KeyLimitView;
use ccf_proxy::BudgetPeriod;

use crate::http_util::rfc3339;

/// The answer of `GET /api/v1/keys`.
#[derive(Serialize)]
pub(crate) struct KeysDto {
    keys: Vec<KeyDto>,
}

/// One key.
#[derive(Serialize)]
struct KeyDto {
    name: String,
    requests_per_minute: Option<u32>,
    requests_last_minute: u32,
    concurrency: Option<u32>,
    in_flight: u32,
    queued: u32,
    daily_budget_usd: Option<f64>,
    spent_today_usd: f64,
    day_resets_at: String,
    monthly_budget_usd: Option<f64>,
    spent_this_month_usd: f64,
    month_resets_at: String,
    /// `daily` or `monthly` while that budget refuses the key's requests.
    budget_exceeded: Option<&'static str>,
}

impl KeysDto {
    /// The DTO of the engine's key views, in configuration order.
    pub(crate) fn new(views: &[KeyLimitView]) -> KeysDto {
        KeysDto {
            keys: views
                .iter()
                .map(|view| KeyDto {
                    name: view.name.clone(),
                    requests_per_minute: view.limits.requests_per_minute,
                    requests_last_minute: view.requests_last_minute,
                    concurrency: view.limits.concurrency,
                    in_flight: view.in_flight,
                    queued: view.queued,
                    daily_budget_usd: view.limits.daily_budget_usd,
                    spent_today_usd: view.spent_today_usd,
                    day_resets_at: rfc3339(view.day_resets_at),
                    monthly_budget_usd: view.limits.monthly_budget_usd,
                    spent_this_month_usd: view.spent_this_month_usd,
                    month_resets_at: rfc3339(view.month_resets_at),
                    budget_exceeded: view.budget_exceeded.map(budget_word),
                })
                .collect(),
        }
    }
}

/// The wire word of a budget period.
fn budget_word(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Daily => "daily",
        BudgetPeriod::Monthly => "monthly",
    }
}
