//! What the engine's metrics learn from the usage store: the recorder's health
//! (`/health/usage-tracker`, the `ccf_recorder_backlog` gauge) and the pricing behind
//! `ccf_cost_usd_total`. ccf-proxy knows no store, so the composition root, which knows both,
//! installs them: at start and, for pricing, again on every reload.

use std::sync::Arc;

use ccf_proxy::monitoring::UsageHealth;
use ccf_proxy::Forwarder;
use ccf_store::{Pricing, RecorderHandle};

/// Reports `recorder` through the engine's metrics: `/health/usage-tracker` and the
/// `ccf_recorder_backlog` gauge read it when they are served.
pub(crate) fn install_recorder_health(forwarder: &Forwarder, recorder: RecorderHandle) {
    forwarder.metrics().set_usage_health(Arc::new(move || {
        let last_error = recorder.last_error();
        UsageHealth {
            healthy: last_error.is_none(),
            backlog: recorder.backlog(),
            last_error: last_error.map(|error| error.message),
        }
    }));
}

/// Makes `ccf_cost_usd_total` price every outcome with `pricing` (the recorder's rules), and
/// lets the models it prices be `model` label values, replacing any earlier pricing.
pub(crate) fn install_cost_metric(forwarder: &Forwarder, pricing: Pricing) {
    let catalog = pricing.clone();
    forwarder
        .metrics()
        .set_model_catalog(Arc::new(move |model| catalog.prices(model)));
    forwarder
        .metrics()
        .set_cost_model(Arc::new(move |model, usage| {
            pricing.cost(model, usage).total_usd()
        }));
}
