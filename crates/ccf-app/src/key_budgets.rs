//! What the per-key budgets (`auth.tokens[].limits`, enforced by ccf-proxy's `key_limits`) learn
//! from the rest of the program: the calendar their days and months are counted in (the
//! configured `timezone`, the same [`DayZone`] as the usage store's days) and, at start, each
//! key's spend today and this month read from the store, so that a restart does not forget
//! what was spent. After that the engine counts spend itself as outcomes finish.
//!
//! A `timezone` change applies to budget periods after a restart, as it does to usage days.

use std::sync::Arc;
use std::time::SystemTime;

use ccf_config::Config;
use ccf_proxy::key_limits::BudgetPeriods;
use ccf_proxy::Forwarder;
use ccf_store::{DayZone, StatsQuery, UsageStore};
use tracing::{info, warn};

/// Whether any key has a daily or monthly budget (then outcomes must be priced even without
/// usage tracking or the admin API).
pub(crate) fn any_budget(config: &Config) -> bool {
    config.auth.tokens.iter().any(|entry| {
        entry.limits.daily_budget_usd.is_some() || entry.limits.monthly_budget_usd.is_some()
    })
}

/// Installs the budget calendar of `config.timezone` on the engine.
pub(crate) fn install_calendar(forwarder: &Forwarder, config: &Config) {
    let zone = DayZone::from_config(config.timezone.as_deref());
    forwarder.set_budget_calendar(Arc::new(move |now| {
        BudgetPeriods::from_zone(
            now,
            |time| zone.date_of(time),
            |date| zone.day_start(date),
            |time| zone.offset_at(time),
        )
    }));
}

/// Seeds every key's spend today and this month from `store` (per-key sums of the stored costs
/// since the day's and the month's first instant). Without configured keys nothing is read; a
/// failed read is logged and the budgets start from zero.
pub(crate) async fn seed_spend(
    forwarder: &Forwarder,
    config: &Config,
    store: &Arc<dyn UsageStore>,
) {
    if !any_budget(config) {
        return;
    }
    let views = forwarder.key_limit_views();
    let now = SystemTime::now();
    let periods = forwarder.budget_periods(now);
    let spent_since = |start: SystemTime| {
        let store = Arc::clone(store);
        async move {
            let query = StatsQuery {
                start: Some(start),
                ..StatsQuery::default()
            };
            store.stats(&query).await.map(|stats| stats.by_api_key)
        }
    };
    let (today, month) = match (
        spent_since(periods.day.start).await,
        spent_since(periods.month.start).await,
    ) {
        (Ok(today), Ok(month)) => (today, month),
        (Err(error), _) | (_, Err(error)) => {
            warn!(%error, "could not read the API keys' spend from the usage store: budgets count from zero");
            return;
        }
    };
    let usd = |buckets: &[ccf_store::Bucket], name: &str| {
        buckets
            .iter()
            .find(|bucket| bucket.key == name)
            .map_or(0.0, |bucket| {
                bucket.aggregate.total_cost_nano_usd as f64 / 1_000_000_000.0
            })
    };
    for view in &views {
        let today_usd = usd(&today, &view.name);
        let month_usd = usd(&month, &view.name);
        if today_usd > 0.0 || month_usd > 0.0 {
            info!(
                api_key = %view.name,
                today_usd, month_usd, "API key spend read from the usage store"
            );
            forwarder.seed_key_spend(&view.name, today_usd, month_usd, now);
        }
    }
}
