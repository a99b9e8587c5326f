//! `config/example.yaml`, `config/demo.yaml` and `config/docker.yaml` load cleanly and say what
//! they promise.

use std::path::PathBuf;
use std::time::Duration;

use ccf_config::{ConfigLoader, LoadedConfig, StorageTarget};

fn workspace_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn load(relative: &str, env: &[(&str, &str)]) -> LoadedConfig {
    ConfigLoader::new()
        .file(workspace_file(relative))
        .env_vars(env.iter().copied())
        .load()
        .unwrap_or_else(|error| panic!("{relative} must load:\n{error}"))
}

#[test]
fn example_config_loads_without_warnings() {
    let loaded = load(
        "config/example.yaml",
        &[("ANTHROPIC_API_KEY", "sk-ant-test")],
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;

    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("127.0.0.1", 8087)
    );
    assert!(config.web.enabled);
    assert_eq!(
        (config.web.host.as_str(), config.web.port),
        ("127.0.0.1", 8088)
    );
    assert!(config.usage_tracking.enabled);
    assert_eq!(
        config.usage_tracking.storage(),
        StorageTarget::Sqlite {
            path: "data/usage.db".into()
        }
    );

    let official = config.endpoint("anthropic").unwrap();
    assert_eq!(official.url.as_str(), "https://api.anthropic.com/");
    assert_eq!(
        official.api_key.as_ref().map(|k| k.expose()),
        Some("sk-ant-test")
    );
    assert_eq!(official.token, None);
    assert_eq!(official.timeout, Duration::from_secs(300));

    let pricing = &config.usage_tracking.model_pricing;
    // input, output, 5-minute write, read, 1-hour write (USD per million tokens).
    let check = |model: &str, expected: [f64; 5]| {
        let price = pricing
            .get(model)
            .unwrap_or_else(|| panic!("no pricing for {model}"));
        assert_eq!(
            [
                price.input,
                price.output,
                price.cache_creation,
                price.cache_read,
                price.cache_creation_1h.unwrap_or(f64::NAN),
            ],
            expected,
            "{model}"
        );
    };
    check("claude-sonnet-4-6", [3.0, 15.0, 3.75, 0.30, 6.0]);
    check("claude-sonnet-4-5", [3.0, 15.0, 3.75, 0.30, 6.0]);
    check("claude-sonnet-4", [3.0, 15.0, 3.75, 0.30, 6.0]);
    check("claude-opus-4-6", [5.0, 25.0, 6.25, 0.50, 10.0]);
    check("claude-haiku-4-5", [1.0, 5.0, 1.25, 0.10, 2.0]);
    check("claude-3-5-haiku", [0.80, 4.0, 1.00, 0.08, 1.60]);
    check("claude-opus-4-5", [5.0, 25.0, 6.25, 0.50, 10.0]);
    check("claude-opus-4-1", [15.0, 75.0, 18.75, 1.50, 30.0]);
    check("claude-opus-4", [15.0, 75.0, 18.75, 1.50, 30.0]);
    assert_eq!(
        config.usage_tracking.default_pricing.cache_creation_1h,
        Some(6.0)
    ); // The >200K-input tier: Sonnet 4 and 4.5 only (input, output, 5-minute write, read, 1-hour
       // write); no other shipped model has one.
    for model in ["claude-sonnet-4-5", "claude-sonnet-4"] {
        let long = pricing[model].long_context.unwrap();
        assert_eq!(long.threshold_input_tokens, 200_000, "{model}");
        assert_eq!(
            [
                long.input,
                long.output,
                long.cache_creation,
                long.cache_read,
                long.cache_creation_1h.unwrap_or(f64::NAN),
            ],
            [6.0, 22.5, 7.5, 0.60, 12.0],
            "{model}"
        );
    }
    // Opus 4.6 and Sonnet 4.6 price their 1M window flat; Sonnet 4.6 has an entry of its own so
    // that the family fallback does not give it the claude-sonnet-4 tier.
    for (model, price) in pricing {
        if !["claude-sonnet-4-5", "claude-sonnet-4"].contains(&model.as_str()) {
            assert_eq!(price.long_context, None, "{model}");
        }
    }
}

#[test]
fn example_config_names_the_missing_api_key() {
    let error = ConfigLoader::new()
        .file(workspace_file("config/example.yaml"))
        .env_vars(Vec::<(String, String)>::new())
        .load()
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("example.yaml: endpoints[0].api-key: environment variable `ANTHROPIC_API_KEY` is not set"), "{message}");
}

#[test]
fn demo_config_loads_without_credentials_or_warnings() {
    let loaded = load("config/demo.yaml", &[]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;

    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("127.0.0.1", 8087)
    );
    assert!(config.web.enabled);
    assert_eq!(
        (config.web.host.as_str(), config.web.port),
        ("127.0.0.1", 8088)
    );
    assert_eq!(
        config.usage_tracking.storage(),
        StorageTarget::Sqlite {
            path: "data/demo-usage.db".into()
        }
    );
    let summary: Vec<(&str, &str, u32, u32, &str)> = config
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.group.as_str(),
                e.group_priority,
                e.priority,
                e.url.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("mock-a", "main", 1, 1, "http://127.0.0.1:8099/"),
            ("mock-b", "main", 1, 2, "http://127.0.0.1:8099/"),
            ("mock-backup", "backup", 2, 1, "http://127.0.0.1:8099/"),
        ]
    );
    assert!(config.endpoints.iter().all(|e| e.token.is_some()));
}

#[test]
fn docker_config_loads_with_its_variables_and_passes_the_exposure_check() {
    let loaded = load(
        "config/docker.yaml",
        &[
            ("FORWARDER_CLIENT_TOKEN", "client-token"),
            ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ],
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("0.0.0.0", 8087)
    );
    assert_eq!(config.web.host.as_str(), "127.0.0.1");
    assert!(config.auth.enabled);
    config.check_exposure().unwrap();
    let upstream = config.endpoint("anthropic").unwrap();
    assert_eq!(upstream.url.as_str(), "https://api.anthropic.com/");
    assert_eq!(
        upstream.api_key.as_ref().map(|k| k.expose()),
        Some("sk-ant-test")
    );
    // The image prices exactly as the example does.
    let example = load(
        "config/example.yaml",
        &[("ANTHROPIC_API_KEY", "sk-ant-test")],
    )
    .config;
    assert_eq!(
        config.usage_tracking.model_pricing,
        example.usage_tracking.model_pricing
    );
    assert_eq!(
        config.usage_tracking.default_pricing,
        example.usage_tracking.default_pricing
    );
}
