//! What the engine's metrics learn from the usage store: the recorder's health
//! (`/health/usage-tracker`, the `ccf_recorder_backlog`, `ccf_recorder_journal_records` and
//! `ccf_recorder_journal_bytes` gauges) and the pricing behind `ccf_cost_usd_total`. ccf-proxy
//! knows no store, so the composition root, which knows both, installs them: at start and, for
//! pricing, again on every reload.
//!
//! With usage tracking on, the recorder prices each outcome once, when it is final, and the
//! store observer adds that same cost to the metric ([`crate::usage::StoreObserver`]): the
//! engine gets no cost model then, only the model catalog for its labels. Without usage tracking
//! (the admin API alone), the engine prices outcomes itself with the configured pricing.

use std::sync::Arc;

use ccf_proxy::monitoring::UsageHealth;
use ccf_proxy::Forwarder;
use ccf_store::{Pricing, RecorderHandle};

/// Reports `recorder` through the engine's metrics: `/health/usage-tracker` and the recorder
/// gauges read it when they are served.
pub(crate) fn install_recorder_health(forwarder: &Forwarder, recorder: RecorderHandle) {
    forwarder.metrics().set_usage_health(Arc::new(move || {
        let last_error = recorder.last_error();
        UsageHealth {
            healthy: last_error.is_none(),
            backlog: recorder.backlog(),
            journal_records: recorder.journal_records(),
            journal_bytes: recorder.journal_bytes(),
            last_error: last_error.map(|error| error.message),
        }
    }));
}

/// Lets the models `pricing` prices be `model` label values of the cost and token metrics, and,
/// when `recorder_prices` is false (no usage recorder), makes `ccf_cost_usd_total` price every
/// outcome with `pricing` itself. Replaces any earlier pricing.
pub(crate) fn install_cost_metric(forwarder: &Forwarder, pricing: Pricing, recorder_prices: bool) {
    let catalog = pricing.clone();
    forwarder
        .metrics()
        .set_model_catalog(Arc::new(move |model| catalog.prices(model)));
    if recorder_prices {
        return;
    }
    forwarder
        .metrics()
        .set_cost_model(Arc::new(move |model, usage| {
            ccf_store::final_cost(&pricing, model, usage).total_usd()
        }));
}
