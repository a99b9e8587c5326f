//! The prices shipped in `config/example.yaml` load and price a fixed usage to the exact
//! nano-USD, 1-hour cache writes included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use ccf_config::ConfigLoader;
use ccf_store::{Cost, Pricing};
use ccf_types::Usage;

fn example_pricing() -> Pricing {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/example.yaml");
    let loaded = ConfigLoader::new()
        .file(path)
        .env_vars([("ANTHROPIC_API_KEY", "sk-ant-test")])
        .load()
        .expect("config/example.yaml must load");
    Pricing::from_config(&loaded.config.usage_tracking)
}

#[test]
fn shipped_prices_cost_a_fixed_usage_exactly() {
    let pricing = example_pricing();
    // 1000 input, 100 output, 2000 cache writes (500 of them 5-minute, 1500 1-hour), 4000 reads.
    let usage = Usage {
        input_tokens: 1_000,
        output_tokens: 100,
        cache_creation_input_tokens: 2_000,
        cache_creation_5m_input_tokens: 500,
        cache_creation_1h_input_tokens: 1_500,
        cache_read_input_tokens: 4_000,
        ..Usage::default()
    };
    // (model, input, output, cache writes = 500 x 5m + 1500 x 1h, cache reads), nano-USD.
    let cases: [(&str, i64, i64, i64, i64); 8] = [
        (
            "claude-sonnet-4-5-20250929",
            3_000_000,
            1_500_000,
            10_875_000,
            1_200_000,
        ),
        (
            "claude-sonnet-4-20250514",
            3_000_000,
            1_500_000,
            10_875_000,
            1_200_000,
        ),
        (
            "claude-haiku-4-5-20251001",
            1_000_000,
            500_000,
            3_625_000,
            400_000,
        ),
        (
            "claude-3-5-haiku-20241022",
            800_000,
            400_000,
            2_900_000,
            320_000,
        ),
        (
            "claude-opus-4-5-20251101",
            5_000_000,
            2_500_000,
            18_125_000,
            2_000_000,
        ),
        (
            "claude-opus-4-1-20250805",
            15_000_000,
            7_500_000,
            54_375_000,
            6_000_000,
        ),
        (
            "claude-opus-4-20250514",
            15_000_000,
            7_500_000,
            54_375_000,
            6_000_000,
        ),
        // Not listed: default_pricing (3 / 15 / 3.75 / 0.30 / 6.00).
        (
            "some-other-model",
            3_000_000,
            1_500_000,
            10_875_000,
            1_200_000,
        ),
    ];
    for (model, input, output, cache_creation, cache_read) in cases {
        assert_eq!(
            pricing.cost(Some(model), &usage),
            Cost::new(input, output, cache_creation, cache_read),
            "{model}"
        );
    }
}
