//! Prices and costs in exact integer nano-USD.
//!
//! Configured prices are USD per million tokens (`f64` in the file). Each is converted once to an
//! integer number of nano-USD per token (`price_per_million × 1000`, rounded), and every cost is
//! `tokens × nano-USD`, so sums over any number of rows are exact.

use std::collections::BTreeMap;

use ccf_config::{ModelPricing, UsageTrackingConfig};
use ccf_types::Usage;

/// Nano-USD in one USD.
pub const NANO_PER_USD: i64 = 1_000_000_000;

/// One model's prices in nano-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    /// Input tokens.
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Cache writes with the 5-minute TTL, and cache writes the upstream did not split by TTL.
    pub cache_creation: i64,
    /// Cache writes with the 1-hour TTL: the entry's `cache_creation_1h`, else 2 x `input`.
    pub cache_creation_1h: i64,
    /// Cache reads.
    pub cache_read: i64,
    /// The higher prices of a request whose input exceeds a threshold (`long_context`).
    pub long_context: Option<LongContextPrice>,
}

/// A long-context tier in nano-USD per token: every token of a request whose input tokens
/// (input + cache writes + cache reads, as Anthropic counts them) exceed
/// `threshold_input_tokens` is priced at these rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongContextPrice {
    /// The tier applies above this many input tokens (200,000 is priced at the base rates,
    /// 200,001 at these).
    pub threshold_input_tokens: u64,
    /// The tier's rates (its own `long_context` is `None`).
    pub rates: Rates,
}

/// Rates of one tier in nano-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    /// Input tokens.
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Cache writes with the 5-minute TTL, and cache writes not split by TTL.
    pub cache_creation: i64,
    /// Cache writes with the 1-hour TTL.
    pub cache_creation_1h: i64,
    /// Cache reads.
    pub cache_read: i64,
}

impl Rates {
    fn from_usd(
        input: f64,
        output: f64,
        cache_creation: f64,
        cache_read: f64,
        cache_creation_1h: Option<f64>,
    ) -> Self {
        let input = nano_per_token(input);
        Self {
            input,
            output: nano_per_token(output),
            cache_creation: nano_per_token(cache_creation),
            cache_creation_1h: cache_creation_1h
                .map(nano_per_token)
                .unwrap_or_else(|| input.saturating_mul(2)),
            cache_read: nano_per_token(cache_read),
        }
    }

    /// The cost of `usage` at these rates.
    fn cost(&self, usage: &Usage) -> Cost {
        let input = mul(usage.input_tokens, self.input);
        let output = mul(usage.output_tokens, self.output);
        let cache_read = mul(usage.cache_read_input_tokens, self.cache_read);
        let all_writes = cache_writes(usage);
        let one_hour = usage.cache_creation_1h_input_tokens.min(all_writes);
        let cache_creation = mul(all_writes - one_hour, self.cache_creation)
            .saturating_add(mul(one_hour, self.cache_creation_1h));
        Cost::new(input, output, cache_creation, cache_read)
    }
}

/// Cache writes of `usage`: the upstream's total, or the sum of its per-TTL split if larger.
fn cache_writes(usage: &Usage) -> u64 {
    usage.cache_creation_input_tokens.max(
        usage
            .cache_creation_5m_input_tokens
            .saturating_add(usage.cache_creation_1h_input_tokens),
    )
}

/// The input tokens Anthropic compares with a long-context threshold: input + cache writes +
/// cache reads.
pub fn context_input_tokens(usage: &Usage) -> u64 {
    usage
        .input_tokens
        .saturating_add(cache_writes(usage))
        .saturating_add(usage.cache_read_input_tokens)
}

impl Price {
    /// Converts a configured entry (USD per million tokens). An entry without a 1-hour price
    /// prices 1-hour cache writes at 2 x input, Anthropic's multiplier (docs/configuration.md);
    /// the same holds inside its `long_context` tier.
    pub fn from_config(pricing: &ModelPricing) -> Self {
        let base = Rates::from_usd(
            pricing.input,
            pricing.output,
            pricing.cache_creation,
            pricing.cache_read,
            pricing.cache_creation_1h,
        );
        Self {
            input: base.input,
            output: base.output,
            cache_creation: base.cache_creation,
            cache_creation_1h: base.cache_creation_1h,
            cache_read: base.cache_read,
            long_context: pricing.long_context.map(|long| LongContextPrice {
                threshold_input_tokens: long.threshold_input_tokens,
                rates: Rates::from_usd(
                    long.input,
                    long.output,
                    long.cache_creation,
                    long.cache_read,
                    long.cache_creation_1h,
                ),
            }),
        }
    }

    /// The base tier's rates.
    pub fn base_rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_creation: self.cache_creation,
            cache_creation_1h: self.cache_creation_1h,
            cache_read: self.cache_read,
        }
    }

    /// The rates `usage` is priced at: the long-context tier's when the request's input tokens
    /// ([`context_input_tokens`]) exceed its threshold, else the base rates.
    pub fn rates_for(&self, usage: &Usage) -> Rates {
        match self.long_context {
            Some(long) if context_input_tokens(usage) > long.threshold_input_tokens => long.rates,
            _ => self.base_rates(),
        }
    }

    /// The cost of `usage` at these prices.
    ///
    /// 1-hour cache writes cost `cache_creation_1h`; every other cache write (5-minute, or not
    /// split by the upstream) costs `cache_creation`. A request over the long-context threshold
    /// is priced wholly at the tier's rates (every component, every token).
    pub fn cost(&self, usage: &Usage) -> Cost {
        self.rates_for(usage).cost(usage)
    }
}

/// USD per million tokens to nano-USD per token; negative or non-finite prices count as 0.
fn nano_per_token(usd_per_million: f64) -> i64 {
    if !usd_per_million.is_finite() || usd_per_million <= 0.0 {
        return 0;
    }
    // 1 USD per million tokens = 1e9 nano-USD / 1e6 tokens = 1000 nano-USD per token.
    (usd_per_million * 1000.0).round().min(i64::MAX as f64) as i64
}

fn mul(tokens: u64, nano_per_token: i64) -> i64 {
    i64::try_from(tokens)
        .unwrap_or(i64::MAX)
        .saturating_mul(nano_per_token)
}

/// The cost of one request in nano-USD, by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Input tokens.
    pub input: i64,
    /// Output tokens.
    pub output: i64,
    /// Cache writes (both TTLs).
    pub cache_creation: i64,
    /// Cache reads.
    pub cache_read: i64,
    /// The four components added up.
    pub total: i64,
}

impl Cost {
    /// A cost from its four components; `total` is their sum.
    pub fn new(input: i64, output: i64, cache_creation: i64, cache_read: i64) -> Self {
        Self {
            input,
            output,
            cache_creation,
            cache_read,
            total: input
                .saturating_add(output)
                .saturating_add(cache_creation)
                .saturating_add(cache_read),
        }
    }

    /// Nano-USD as (lossy) USD, for the legacy `*_cost_usd` REAL/DECIMAL columns.
    pub fn usd(nano: i64) -> f64 {
        nano as f64 / NANO_PER_USD as f64
    }

    /// USD as nano-USD, rounded (reading legacy `*_cost_usd` columns).
    pub fn nano_from_usd(usd: f64) -> i64 {
        if !usd.is_finite() {
            return 0;
        }
        (usd * NANO_PER_USD as f64).round() as i64
    }

    /// The total in USD.
    pub fn total_usd(&self) -> f64 {
        Cost::usd(self.total)
    }
}

/// Every configured price, ready for lookup: exact model name, then the longest configured
/// prefix that ends at a word boundary (`claude-sonnet-4-5-20250929` is priced by a
/// `claude-sonnet-4-5` entry), then `default_pricing`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    models: BTreeMap<String, Price>,
    default: Price,
}

impl Default for Pricing {
    /// No model prices; the default price is `default_pricing`'s default (3 / 15 / 3.75 / 0.30).
    fn default() -> Self {
        Self::from_config(&UsageTrackingConfig::default())
    }
}

impl Pricing {
    /// Prices from `usage_tracking.model_pricing` and `default_pricing`.
    pub fn from_config(config: &UsageTrackingConfig) -> Self {
        Self {
            models: config
                .model_pricing
                .iter()
                .map(|(model, price)| (model.clone(), Price::from_config(price)))
                .collect(),
            default: Price::from_config(&config.default_pricing),
        }
    }

    /// The price for `model` (absent or empty model: the default price).
    pub fn price(&self, model: Option<&str>) -> Price {
        let Some(model) = model.map(str::trim).filter(|model| !model.is_empty()) else {
            return self.default;
        };
        if let Some(price) = self.models.get(model) {
            return *price;
        }
        self.models
            .iter()
            .filter(|(prefix, _)| is_family_prefix(prefix, model))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| *price)
            .unwrap_or(self.default)
    }

    /// Whether `model` has a price of its own: a configured name or family, not the default
    /// price.
    pub fn prices(&self, model: &str) -> bool {
        let model = model.trim();
        self.models.contains_key(model)
            || self
                .models
                .keys()
                .any(|prefix| is_family_prefix(prefix, model))
    }

    /// The cost of `usage` for `model`.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> Cost {
        self.price(model).cost(usage)
    }
}

/// `prefix` names the family of `model`: `model` starts with it (ASCII case-insensitively) and
/// the next character is not a letter or digit.
fn is_family_prefix(prefix: &str, model: &str) -> bool {
    if prefix.is_empty() || prefix.len() >= model.len() || !model.is_char_boundary(prefix.len()) {
        return false;
    }
    let (head, rest) = model.split_at(prefix.len());
    head.eq_ignore_ascii_case(prefix)
        && rest
            .chars()
            .next()
            .is_some_and(|next| !next.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccf_config::LongContextPricing;

    fn entry(input: f64, output: f64, cache_creation: f64, cache_read: f64) -> ModelPricing {
        ModelPricing {
            input,
            output,
            cache_creation,
            cache_read,
            cache_creation_1h: None,
            long_context: None,
        }
    }

    fn pricing() -> Pricing {
        let mut config = UsageTrackingConfig::default();
        config
            .model_pricing
            .insert("claude-sonnet-4-5".into(), entry(3.0, 15.0, 3.75, 0.30));
        config
            .model_pricing
            .insert("claude-sonnet".into(), entry(1.0, 1.0, 1.0, 1.0));
        let mut opus = entry(15.0, 75.0, 18.75, 1.50);
        opus.cache_creation_1h = Some(30.0);
        config.model_pricing.insert("claude-opus-4-1".into(), opus);
        config.model_pricing.insert(
            "claude-haiku-4-5-20251001".into(),
            entry(1.0, 5.0, 1.25, 0.10),
        );
        config.default_pricing = entry(2.0, 2.0, 2.0, 2.0);
        let mut sonnet_4 = entry(3.0, 15.0, 3.75, 0.30);
        sonnet_4.cache_creation_1h = Some(6.0);
        sonnet_4.long_context = Some(LongContextPricing {
            threshold_input_tokens: 200_000,
            input: 6.0,
            output: 22.5,
            cache_creation: 7.5,
            cache_read: 0.6,
            cache_creation_1h: Some(12.0),
        });
        config
            .model_pricing
            .insert("claude-sonnet-4".into(), sonnet_4);
        let mut no_1h = entry(3.0, 15.0, 3.75, 0.30);
        no_1h.long_context = Some(LongContextPricing {
            threshold_input_tokens: 1_000,
            input: 6.0,
            output: 22.5,
            cache_creation: 7.5,
            cache_read: 0.6,
            cache_creation_1h: None,
        });
        config.model_pricing.insert("tiered-no-1h".into(), no_1h);
        Pricing::from_config(&config)
    }

    /// One row of [`prices_the_long_context_tier_above_the_threshold_only`].
    struct TierCase {
        name: &'static str,
        model: &'static str,
        usage: Usage,
        expected: Cost,
    }

    #[test]
    fn prices_the_long_context_tier_above_the_threshold_only() {
        let pricing = pricing();
        let cases = [
            TierCase {
                // 200,000 input tokens is not above the threshold: base rates.
                name: "200,000 input tokens",
                model: "claude-sonnet-4-20250514",
                usage: Usage {
                    input_tokens: 200_000,
                    output_tokens: 1_000,
                    ..Usage::default()
                },
                // 200000 x 3000, 1000 x 15000
                expected: Cost::new(600_000_000, 15_000_000, 0, 0),
            },
            TierCase {
                // One more: every token at the tier's rates.
                name: "200,001 input tokens",
                model: "claude-sonnet-4-20250514",
                usage: Usage {
                    input_tokens: 200_001,
                    output_tokens: 1_000,
                    ..Usage::default()
                },
                // 200001 x 6000, 1000 x 22500
                expected: Cost::new(1_200_006_000, 22_500_000, 0, 0),
            },
            TierCase {
                // input + cache writes + cache reads = 100000 + 50000 + 50000 = 200,000: base.
                name: "200,000 with caches",
                model: "claude-sonnet-4",
                usage: Usage {
                    input_tokens: 100_000,
                    output_tokens: 10,
                    cache_creation_input_tokens: 50_000,
                    cache_creation_5m_input_tokens: 30_000,
                    cache_creation_1h_input_tokens: 20_000,
                    cache_read_input_tokens: 50_000,
                    ..Usage::default()
                },
                // 100000 x 3000; 10 x 15000; 30000 x 3750 + 20000 x 6000; 50000 x 300
                expected: Cost::new(300_000_000, 150_000, 232_500_000, 15_000_000),
            },
            TierCase {
                // One more cache read: 200,001, the whole request at the tier's rates.
                name: "200,001 with caches",
                model: "claude-sonnet-4",
                usage: Usage {
                    input_tokens: 100_000,
                    output_tokens: 10,
                    cache_creation_input_tokens: 50_000,
                    cache_creation_5m_input_tokens: 30_000,
                    cache_creation_1h_input_tokens: 20_000,
                    cache_read_input_tokens: 50_001,
                    ..Usage::default()
                },
                // 100000 x 6000; 10 x 22500; 30000 x 7500 + 20000 x 12000; 50001 x 600
                expected: Cost::new(600_000_000, 225_000, 465_000_000, 30_000_600),
            },
            TierCase {
                // A model without a tier keeps its rates at any length.
                name: "no tier",
                model: "claude-sonnet-4-5",
                usage: Usage {
                    input_tokens: 500_000,
                    ..Usage::default()
                },
                expected: Cost::new(1_500_000_000, 0, 0, 0),
            },
            TierCase {
                // The tier's 1-hour writes without a price: 2 x the tier's input (12000).
                name: "tier without a 1-hour price",
                model: "tiered-no-1h",
                usage: Usage {
                    input_tokens: 1,
                    cache_creation_input_tokens: 1_000,
                    cache_creation_1h_input_tokens: 1_000,
                    ..Usage::default()
                },
                expected: Cost::new(6_000, 0, 12_000_000, 0),
            },
        ];
        for case in cases {
            assert_eq!(
                pricing.cost(Some(case.model), &case.usage),
                case.expected,
                "{}",
                case.name
            );
        }
        assert_eq!(
            context_input_tokens(&Usage {
                input_tokens: 1,
                cache_creation_input_tokens: 2,
                cache_read_input_tokens: 4,
                ..Usage::default()
            }),
            7
        );
    }

    #[test]
    fn looks_up_exact_then_longest_family_then_default() {
        let pricing = pricing();
        let check = |model: Option<&str>, expected_input: i64| {
            assert_eq!(pricing.price(model).input, expected_input, "{model:?}");
        };
        check(Some("claude-haiku-4-5-20251001"), 1000);
        check(Some("claude-sonnet-4-5-20250929"), 3000);
        check(Some("claude-sonnet-4-5@20250929"), 3000);
        check(Some("claude-sonnet-4-20250514"), 3000);
        check(Some("claude-sonnet-3-7-20250219"), 1000);
        // "claude-sonnet-45" is not "claude-sonnet-4-5": it falls back to the family.
        check(Some("claude-sonnet-45"), 1000);
        check(Some("claude-sonnetx"), 2000);
        check(Some("claude-opus-4-1-20250805"), 15000);
        check(Some("gpt-4o"), 2000);
        check(Some(""), 2000);
        check(None, 2000);
    }

    #[test]
    fn converts_prices_to_integer_nano_usd() {
        assert_eq!(nano_per_token(3.0), 3000);
        assert_eq!(nano_per_token(0.30), 300);
        assert_eq!(nano_per_token(3.75), 3750);
        assert_eq!(nano_per_token(0.08), 80);
        assert_eq!(nano_per_token(-1.0), 0);
        assert_eq!(nano_per_token(f64::NAN), 0);
    }

    #[test]
    fn costs_every_component_exactly() {
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 2_000,
            cache_creation_input_tokens: 10_000,
            cache_read_input_tokens: 50_000,
            ..Usage::default()
        };
        let cost = pricing().cost(Some("claude-sonnet-4-5-20250929"), &usage);
        assert_eq!(
            cost,
            Cost {
                input: 3_000_000_000,
                output: 30_000_000,
                cache_creation: 37_500_000,
                cache_read: 15_000_000,
                total: 3_082_500_000,
            }
        );
        assert!((cost.total_usd() - 3.0825).abs() < 1e-12);
    }

    /// One row of [`prices_cache_writes_by_ttl_in_exact_nano_usd`].
    struct CacheWriteCase {
        name: &'static str,
        model: &'static str,
        unsplit: u64,
        five_minute: u64,
        one_hour: u64,
        expected_cache_creation: i64,
    }

    #[test]
    fn prices_cache_writes_by_ttl_in_exact_nano_usd() {
        let pricing = pricing();
        let cases = [
            CacheWriteCase {
                // No 1h price: 2 x input = 6000 nano-USD per token.
                name: "1h writes without an explicit 1h price",
                model: "claude-sonnet-4-5-20250929",
                unsplit: 1_000,
                five_minute: 0,
                one_hour: 1_000,
                expected_cache_creation: 6_000_000,
            },
            CacheWriteCase {
                // 1000 x 3750 + 2000 x 6000
                name: "5m and 1h writes without an explicit 1h price",
                model: "claude-sonnet-4-5",
                unsplit: 3_000,
                five_minute: 1_000,
                one_hour: 2_000,
                expected_cache_creation: 15_750_000,
            },
            CacheWriteCase {
                // Explicit 1h price 30 USD/M = 30000 nano-USD per token.
                name: "1h writes with an explicit 1h price",
                model: "claude-opus-4-1-20250805",
                unsplit: 1_000,
                five_minute: 0,
                one_hour: 1_000,
                expected_cache_creation: 30_000_000,
            },
            CacheWriteCase {
                // 1000 x 1250
                name: "5m writes only",
                model: "claude-haiku-4-5-20251001",
                unsplit: 1_000,
                five_minute: 1_000,
                one_hour: 0,
                expected_cache_creation: 1_250_000,
            },
            CacheWriteCase {
                // The default price (input 2) has no 1h price either: 500 x 2000 + 500 x 4000.
                name: "1h writes at the default price",
                model: "gpt-4o",
                unsplit: 1_000,
                five_minute: 500,
                one_hour: 500,
                expected_cache_creation: 3_000_000,
            },
        ];
        for case in cases {
            let usage = Usage {
                input_tokens: 10,
                cache_creation_input_tokens: case.unsplit,
                cache_creation_5m_input_tokens: case.five_minute,
                cache_creation_1h_input_tokens: case.one_hour,
                ..Usage::default()
            };
            let cost = pricing.cost(Some(case.model), &usage);
            assert_eq!(
                cost.cache_creation, case.expected_cache_creation,
                "{}",
                case.name
            );
            assert_eq!(
                cost.total,
                cost.input + case.expected_cache_creation,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn prices_cache_writes_per_ttl_when_the_entry_has_a_one_hour_price() {
        let pricing = pricing();
        let usage = Usage {
            cache_creation_input_tokens: 3_000,
            cache_creation_5m_input_tokens: 1_000,
            cache_creation_1h_input_tokens: 2_000,
            ..Usage::default()
        };
        // 1000 × 18750 + 2000 × 30000
        assert_eq!(
            pricing.cost(Some("claude-opus-4-1"), &usage).cache_creation,
            78_750_000
        );
        // Without a 1h price 1-hour writes cost 2 x input: 1000 × 3750 + 2000 × 6000.
        assert_eq!(
            pricing
                .cost(Some("claude-sonnet-4-5"), &usage)
                .cache_creation,
            15_750_000
        );
        // Writes not split by the upstream count as 5-minute writes.
        let unsplit = Usage {
            cache_creation_input_tokens: 3_000,
            ..Usage::default()
        };
        assert_eq!(
            pricing
                .cost(Some("claude-opus-4-1"), &unsplit)
                .cache_creation,
            56_250_000
        );
    }
}
