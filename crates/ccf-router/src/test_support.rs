//! Builders shared by the crate's unit tests.

use std::time::Duration;

use ccf_config::{Endpoint, StrategyType};

use crate::RouterSettings;

/// `(name, group, group_priority, priority)`.
pub(crate) type Spec = (&'static str, &'static str, u32, u32);

/// A resolved endpoint as the configuration would produce it, with no credentials.
pub(crate) fn endpoint((name, group, group_priority, priority): Spec) -> Endpoint {
    Endpoint {
        name: name.to_string(),
        url: url::Url::parse("https://upstream.invalid/").expect("static url"),
        priority,
        group: group.to_string(),
        group_priority,
        token: None,
        api_key: None,
        timeout: Duration::from_secs(300),
        headers: Vec::new(),
        supports_count_tokens: false,
        model_map: ccf_config::ModelMap::default(),
    }
}

/// Automatic group switching, 10-minute cooldown, priority order.
pub(crate) const AUTO: RouterSettings = RouterSettings {
    auto_switch: true,
    cooldown: Duration::from_secs(600),
    strategy: StrategyType::Priority,
};

/// [`AUTO`] without automatic group switching.
pub(crate) const MANUAL: RouterSettings = RouterSettings {
    auto_switch: false,
    ..AUTO
};
